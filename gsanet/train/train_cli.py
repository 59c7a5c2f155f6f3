"""``gsanet train``: train a timm/gsanet model on Fashion-MNIST, CIFAR or an image folder; resumable, distributed.

Usage::

    gsanet train                                   # configs/fashion_mnist.yaml values: gsa_resnet26_tiny, CPU
    gsanet train --config configs/cifar100.yaml --data-dir data --epochs 100
    gsanet train --resume runs/<run>               # continue an interrupted run (same final weights)
    torchrun --nproc_per_node 2 -m gsanet.cli train --config configs/fashion_mnist.yaml

A run directory ``<out>/<name>`` (default ``<model>-<data>-<timestamp>``) receives ``config.yaml`` (the resolved
config), ``command.txt``, ``checkpoints/{last,best}.safetensors``, ``metrics.csv``, ``tensorboard/``, ``loss.png``,
``accuracy.png`` and ``summary.json``. An existing directory is never reused except by ``--resume``, and only while no
other process writes it: the process that trains a run holds its ``run.lock`` (:class:`~.rundir.RunLock`). A
checkpoint outside a run directory is forked into a new one; a run directory without a checkpoint yet is started
again from scratch by ``--resume``.

Nothing is lost or wrong in silence: ``--resume`` continues a run only from a checkpoint at least as recent as its
``last`` (an older one, e.g. ``best``, is forked into a new directory with ``--name``/``--out``); a run whose
weights or losses become NaN/infinite stops with an error and keeps its last finite checkpoint; SIGTERM is handled
like Ctrl-C; the run directory is checked for writing (and for room for the checkpoints) before the first epoch.

Determinism: on one CPU, an interrupted run resumed from its last checkpoint ends with the same weights as an
uninterrupted one (see :mod:`gsanet.train.training`, which runs the training; the run directory's files are described
in :mod:`gsanet.train.rundir`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from gsanet.commands import build_parser, run, setup_logging

from .config import TrainConfig
from .distributed import cleanup_distributed
from .metadata import RunSummary
from .rundir import RunDir
from .training import format_seconds, run_training

__all__ = ["Terminated", "build_train_parser", "main", "run_training"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs (no temporary file is left)."""


def build_train_parser() -> argparse.ArgumentParser:
    """The ``gsanet train`` parser: ``--config``, a flag per config field, ``--resume`` and ``--stop-after``."""
    parser = build_parser(
        TrainConfig,
        "gsanet train",
        "Train a model. Precedence: defaults (configs/fashion_mnist.yaml) < --config YAML < explicit flags.",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_CKPT",
        help="continue a run from its last checkpoint (or the given .safetensors); its config is the base. With "
        "--name/--out: fork it into a new run directory (needed for a checkpoint older than the run's last)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N epochs in this invocation (the schedule still spans --epochs); continue with --resume",
    )
    return parser


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _handle_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` (like Ctrl-C); return the previous handler (None: not installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _interrupt_message(error: KeyboardInterrupt) -> str:
    what = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
    run_dir = getattr(error, "run_dir", None)
    if run_dir is None:
        return f"{what} before a run directory was made; nothing to resume"
    if RunDir(Path(run_dir)).last.is_file():
        return f"{what}; continue with: gsanet train --resume {run_dir}"
    return f"{what} before the first checkpoint of {run_dir}; start it again with: gsanet train --resume {run_dir}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gsanet train``; returns the exit code (0 ok, 2 bad input or diverged, 130 interrupted,
    143 SIGTERM)."""
    return run("train", _main, argv)


def _main(argv: list[str]) -> int:
    args = build_train_parser().parse_args(argv)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    logger = setup_logging(level=logging.INFO if rank == 0 else logging.WARNING, prefix=prefix)
    previous = _handle_sigterm()
    try:
        with logging_redirect_tqdm([logger]):
            summary = run_training(args, argv)
    except KeyboardInterrupt as e:
        print(f"{prefix}gsanet train: {_interrupt_message(e)}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        cleanup_distributed()
    if rank == 0 and summary.epochs:
        _print_summary(summary)
    return 0


def _print_summary(s: RunSummary) -> None:
    """Where the results of a finished invocation are, and what it ended with."""
    print(f"run directory: {s.run_dir}")
    print(
        f"final val top-1 {s.val_top1:.2f}%  top-5 {s.val_top5:.2f}%  loss {s.val_loss:.4f}  (best top-1 "
        f"{s.best_val_top1:.2f}% at epoch {s.best_epoch}; {s.epochs}/{s.epochs_planned} epochs, "
        f"{format_seconds(s.train_seconds)})"
    )
    if s.plots:
        print(f"plots: {s.plots['loss']}  {s.plots['accuracy']}")
    print(f"summary: {RunDir(Path(s.run_dir)).summary}")
    if s.checkpoints:
        print(f"checkpoints: {s.checkpoints['last']}  {s.checkpoints['best']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
