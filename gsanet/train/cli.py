"""``gsanet train``: train a timm/gsanet model on Fashion-MNIST, CIFAR or an image folder; resumable, distributed.

Usage::

    gsanet train                                   # configs/fashion_mnist.yaml values: gsa_resnet26_tiny, CPU
    gsanet train --config configs/cifar100.yaml --data-dir data --epochs 100
    gsanet train --resume runs/<run>               # continue an interrupted run (same final weights)
    torchrun --nproc_per_node 2 -m gsanet.cli train --config configs/fashion_mnist.yaml

A run directory ``<output>/<name>`` (default ``<model>-<data>-<timestamp>``) receives ``config.yaml`` (the resolved
config), ``command.txt``, ``checkpoints/{last,best}.safetensors``, ``metrics.csv``, ``tensorboard/``, ``loss.png``,
``accuracy.png`` and ``summary.json``. An existing directory is never reused except by ``--resume``.

Nothing is lost or wrong in silence: ``--resume`` continues a run only from a checkpoint at least as recent as its
``last`` (an older one, e.g. ``best``, is forked into a new directory with ``--name``/``--output``); a run whose
weights or losses become NaN/infinite stops with an error and keeps its last finite checkpoint; SIGTERM is handled
like Ctrl-C; the run directory is checked for writing (and for room for the checkpoints) before the first epoch.

Determinism: every epoch starts by reseeding the global generators, the sampler, the loader's worker seeds and the
augmentation from (seed, epoch, rank), and checkpoints carry the optimizer, scheduler, EMA, scaler and RNG states;
on one CPU, an interrupted run resumed from its last checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, unwrap_model
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

import gsanet

from .checkpoint import (
    Checkpoint,
    atomic_path,
    capture_rng_state,
    check_finite,
    check_state_dict,
    clean_stale_tmp,
    commit_checkpoints,
    ensure_writable,
    json_safe,
    load_checkpoint,
    nonfinite_names,
    read_metadata,
    repair_best,
    require_meta,
    restore_rng_state,
)
from .config import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    TrainConfig,
    TrainError,
    build_parser,
    config_to_dict,
    error_message,
    resolve_config,
    save_yaml,
)
from .data import DataInfo, create_datasets, create_loader, epoch_seed, set_epoch
from .distributed import DistContext, barrier, broadcast_text, cleanup_distributed, init_distributed
from .engine import create_model, evaluate, resolve_amp, seed_everything, train_one_epoch
from .plots import plot_curves

__all__ = ["Terminated", "build_train_parser", "configure_logging", "main", "run_training"]

_logger = logging.getLogger("gsanet.train")

_INVOCATION_ONLY = ("config", "resume", "stop_after")
_RESUME_KEYS = (
    "run_id", "model", "model_args", "data", "config", "epoch", "num_updates", "train_seconds", "history", "best",
    "updates_per_epoch",
)  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs (no temporary file is left)."""
_METRIC_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "train_images_per_s",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_images_per_s",
    "ema_val_loss",
    "ema_val_top1",
    "ema_val_top5",
    "epoch_seconds",
    "train_seconds",
)


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
        "--name/--output: fork it into a new run directory (needed for a checkpoint older than the run's last)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N epochs in this invocation (the schedule still spans --epochs); continue with --resume",
    )
    return parser


# ----------------------------------------------------------------------------------------------------- run files
def _atomic_write_text(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; free disk space or make it writable") from e


def _write_metrics_csv(history: Sequence[dict[str, Any]], path: Path) -> None:
    columns = [k for k in _METRIC_KEYS if any(k in row for row in history)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    _atomic_write_text(path, buffer.getvalue())


def _resume_paths(resume: str) -> tuple[Path, Path]:
    """``(checkpoint file, run directory)`` of a ``--resume`` argument."""
    path = Path(resume)
    if path.is_dir():
        checkpoint = path / "checkpoints" / "last.safetensors"
        if not checkpoint.is_file():
            raise CheckpointError(
                f"{path} has no checkpoints/last.safetensors (the run stopped before its first epoch ended, or this "
                "is not a run directory); start a new run instead"
            )
        return checkpoint, path
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such run directory or checkpoint; give runs/<run> or a checkpoint")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, run_dir


def _check_resume_lineage(checkpoint: Path, meta: dict[str, Any], run_dir: Path) -> None:
    """Refuse to continue ``run_dir`` from ``checkpoint`` when that would overwrite a more recent ``last``.

    Raises:
        CheckpointError: The run's ``last`` belongs to another run or is more recent than ``checkpoint``.
    """
    last = run_dir / "checkpoints" / "last.safetensors"
    if not last.is_file() or (checkpoint.exists() and last.resolve() == checkpoint.resolve()):
        return
    last_meta = read_metadata(last)
    fork = f"fork it into a new run directory with --resume {checkpoint} --name <new name>"
    if last_meta.get("run_id") != meta["run_id"]:
        raise CheckpointError(f"{checkpoint} is not a checkpoint of the run in {run_dir}; {fork}")
    if last_meta.get("epoch", 0) > meta["epoch"]:
        raise CheckpointError(
            f"{checkpoint} is epoch {meta['epoch']}, older than the run's last checkpoint (epoch "
            f"{last_meta.get('epoch')}): continuing from it would overwrite {last} and drop epochs from metrics.csv; "
            f"continue the run with --resume {run_dir}, or {fork}"
        )


def _new_run_dir(cfg: TrainConfig, info_name: str) -> Path:
    """Create a fresh run directory under ``cfg.output`` and check that files can be written in it.

    Raises:
        ConfigError: The directory exists (with ``--name``), or ``--output`` is not a writable directory.
    """
    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file, not a directory; give the directory for the run directories")
    try:
        output.mkdir(parents=True, exist_ok=True)
        if cfg.name is not None:
            run_dir = output / cfg.name
            try:
                run_dir.mkdir()
            except FileExistsError:
                raise ConfigError(
                    f"run directory {run_dir} already exists; continue it with --resume {run_dir} or choose another "
                    "--name"
                ) from None
        else:
            data = info_name if info_name in ("fashion-mnist", "cifar10", "cifar100") else Path(info_name).name
            stem = f"{cfg.model}-{data}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
            for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
                try:
                    (output / (stem + suffix)).mkdir()
                    run_dir = output / (stem + suffix)
                    break
                except FileExistsError:
                    continue
            else:
                raise ConfigError(f"could not create a fresh run directory {output / stem}; pass --name")
    except OSError as e:
        raise ConfigError(
            f"cannot create a run directory in --output {output}: {e.strerror or e}; give a writable directory"
        ) from e
    try:
        ensure_writable(run_dir / "checkpoints")
    except CheckpointError as e:
        raise ConfigError(f"{e}") from e
    return run_dir


def _broadcast_outcome(fn: Callable[[], object], ctx: DistContext) -> str:
    """Run ``fn`` on rank 0 and give every rank its result as a string, or raise its :class:`ConfigError` everywhere."""
    text = ""
    if ctx.is_main:
        try:
            text = "ok:" + str(fn())
        except TrainError as e:
            if not ctx.distributed:
                raise
            text = f"error:{e}"
    text = broadcast_text(text, ctx)
    if text.startswith("error:"):
        raise ConfigError(text[len("error:") :])
    return text[len("ok:") :]


# ------------------------------------------------------------------------------------------------------ building
def _check_runtime(cfg: TrainConfig, ctx: DistContext) -> None:
    if cfg.sync_bn and ctx.distributed and ctx.device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); on CPU drop it or use a model without "
            "BatchNorm"
        )


def _warn_batchnorm(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> str | None:
    """Warn (rank 0) that BatchNorm statistics are per process in a distributed run without SyncBatchNorm."""
    if not ctx.distributed or cfg.sync_bn or not ctx.is_main:
        return None
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    if ctx.device.type == "cuda":
        fix = "add --sync-bn to normalise over the global batch"
    else:
        fix = "torch has no SyncBatchNorm on CPU; use a larger --batch-size, or a model without BatchNorm"
    message = (
        f"BatchNorm statistics are per process: each of the {ctx.world_size} processes normalises with its own "
        f"batch of {cfg.batch_size}, and the saved running statistics are rank 0's; {fix}"
    )
    _logger.warning(message)
    return message


def _check_disk_space(folder: Path, model: nn.Module, model_ema: Any) -> None:
    """Refuse to start when ``folder``'s disk cannot hold the checkpoints (last, best and one being written).

    The size of a checkpoint is estimated as the weights, the EMA weights and two optimizer moments per parameter.

    Raises:
        CheckpointError: Too little free space.
    """
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    estimate = weights * (2 if model_ema is not None else 1) + 2 * params
    existing = sum(p.stat().st_size for p in folder.glob("*.safetensors") if p.is_file())
    needed = 3 * estimate - existing
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CheckpointError(
            f"{folder} has {free / 2**20:.1f} MiB free, the checkpoints need about {needed / 2**20:.1f} MiB; free "
            "disk space or use another --output"
        )


def _criterion(cfg: TrainConfig) -> nn.Module:
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup applies the label smoothing
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def _mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=num_classes)


def _model_args(cfg: TrainConfig, info: DataInfo) -> dict[str, Any]:
    return {
        "num_classes": info.num_classes,
        "in_chans": info.in_chans,
        "img_size": info.img_size,
        "drop_rate": cfg.drop_rate,
        "drop_path_rate": cfg.drop_path_rate,
        "model_kwargs": dict(cfg.model_kwargs),
    }


def _training_state(optimizer: torch.optim.Optimizer, scaler: Any) -> dict[str, Any]:
    """Everything besides the weights that an exact resume needs (the schedule is a function of the config and the
    update count, so it is rebuilt, not stored)."""
    state: dict[str, Any] = {"optimizer": optimizer.state_dict(), "rng": capture_rng_state()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def _restore(
    checkpoint: Checkpoint,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    scaler: Any,
    model_ema: ModelEmaV3 | None,
    updates_per_epoch: int,
) -> dict[str, Any]:
    """Load the training state of ``checkpoint``; return its progress (epoch, updates, history, best, run id).

    The learning-rate schedule is the one of the resolved config (a larger ``--epochs`` stretches it) at the
    checkpoint's position; when the updates per epoch changed (world size, batch size, subset), the position is
    rescaled to the same epoch.

    Raises:
        CheckpointError: The training state is missing or does not fit the optimizer.
    """
    meta, state = checkpoint.meta, checkpoint.state
    num_updates = meta["num_updates"]
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if model_ema is not None and checkpoint.ema_state is not None:
            model_ema.module.load_state_dict(checkpoint.ema_state)
        restore_rng_state(state["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"{checkpoint.path} has an unusable training state ({type(e).__name__}: {e}); resume from another "
            "checkpoint or start a new run"
        ) from e
    if meta["updates_per_epoch"] != updates_per_epoch:
        rescaled = meta["epoch"] * updates_per_epoch
        _logger.warning(
            "updates per epoch changed from %d to %d (another world size, batch size or subset): the schedule "
            "continues at epoch %d (update %d instead of %d)",
            meta["updates_per_epoch"], updates_per_epoch, meta["epoch"], rescaled, num_updates,
        )  # fmt: skip
        num_updates = rescaled
    if lr_scheduler is not None:
        lr_scheduler.step_update(num_updates=num_updates)
    progress = {key: meta[key] for key in ("epoch", "train_seconds", "history", "best", "run_id")}
    progress["num_updates"] = num_updates
    return progress


def _epoch_line(row: dict[str, Any], epochs: int, remaining_seconds: float) -> str:
    ema = f"  EMA top-1 {row['ema_val_top1']:.2f}%" if "ema_val_top1" in row else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.2f}%"
        f"  val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%{ema}"
        f"  lr {row['lr']:.2e}  {row['train_images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s"
        f"  ETA {_format_seconds(remaining_seconds)}"
    )


def _tensorboard_tag(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``ema_val_top1`` -> ``ema_val/top1``, ``lr`` -> ``lr``."""
    for prefix in ("ema_val", "train", "val"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return key


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def configure_logging(level: int = logging.INFO, prefix: str = "") -> logging.Logger:
    """Send the ``gsanet`` loggers to stderr, replacing an earlier call's handler (the root logger is untouched)."""
    logger = logging.getLogger("gsanet")
    for handler in list(logger.handlers):
        if getattr(handler, "gsanet_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.gsanet_cli = True
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


# ---------------------------------------------------------------------------------------------------------- run
def run_training(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Train as ``args`` say; return the summary (also written to ``summary.json`` by rank 0).

    Raises:
        TrainError: Bad config, data or checkpoint, a run directory that cannot be written, or divergence.
        KeyboardInterrupt: Ctrl-C or SIGTERM (:class:`Terminated`); its ``run_dir`` attribute is the run directory
            (None before it exists).
    """
    where: dict[str, Path | None] = {"run_dir": None}
    try:
        return _run_training(args, argv, where)
    except KeyboardInterrupt as e:
        e.run_dir = where["run_dir"]
        raise


def _run_training(args: argparse.Namespace, argv: Sequence[str], where: dict[str, Path | None]) -> dict[str, Any]:
    explicit = {k: v for k, v in vars(args).items() if k not in _INVOCATION_ONLY}
    checkpoint_path, run_dir, base, resume_meta, fork = None, None, None, None, False
    if getattr(args, "resume", None):
        fork = "name" in explicit or "output" in explicit
        checkpoint_path, run_dir = _resume_paths(args.resume)
        resume_meta = read_metadata(checkpoint_path)
        require_meta(resume_meta, _RESUME_KEYS, checkpoint_path)
        base = resume_meta["config"]
        if fork:
            run_dir = None  # a new directory, made below
            base = {k: v for k, v in base.items() if k != "name"}
        else:
            _check_resume_lineage(checkpoint_path, resume_meta, run_dir)
    cfg = resolve_config(TrainConfig, explicit, getattr(args, "config", None), base)
    stop_after = getattr(args, "stop_after", None)
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after must be >= 1, got {stop_after}")

    ctx = init_distributed(cfg.device)
    _check_runtime(cfg, ctx)
    if run_dir is not None:
        where["run_dir"] = run_dir
        if ctx.is_main:
            ensure_writable(run_dir / "checkpoints")  # before any work: a read-only run fails now, not in an hour
    device = ctx.device
    seed_everything(cfg.seed)

    if ctx.distributed and not ctx.is_main:
        barrier(ctx)  # rank 0 downloads first; the others then find the files
    datasets, info = create_datasets(
        cfg.data,
        cfg.data_dir,
        download=cfg.download and ctx.is_main,
        img_size=cfg.img_size,
        model_name=cfg.model,
        augment=cfg.augment,
        auto_augment=cfg.auto_augment,
        reprob=cfg.reprob,
        seed=cfg.seed,
        train_subset=cfg.train_subset,
        val_subset=cfg.val_subset,
        holdout=cfg.holdout,
    )
    if ctx.distributed and ctx.is_main:
        barrier(ctx)
    train_loader = create_loader(
        datasets["train"], cfg.batch_size, train=True, ctx=ctx, seed=cfg.seed, workers=cfg.workers
    )
    val_loader = create_loader(
        datasets["val"], cfg.batch_size, train=False, ctx=ctx, seed=cfg.seed, workers=cfg.workers
    )

    model_args = _model_args(cfg, info)
    model = create_model(cfg.model, **model_args)
    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        check_state_dict(
            model.state_dict(),
            checkpoint.model_state,
            model_name=cfg.model,
            checkpoint_model=checkpoint.meta.get("model"),
            path=checkpoint_path,
        )
        check_finite(checkpoint.model_state, checkpoint_path)
        model.load_state_dict(checkpoint.model_state)
    if cfg.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _warn_batchnorm(model, cfg, ctx)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    model_ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    lr_scheduler = None
    if cfg.sched != "none":
        lr_scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=cfg.sched,
            num_epochs=cfg.epochs,
            warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr,
            min_lr=cfg.min_lr,
            step_on_epochs=False,
            updates_per_epoch=len(train_loader),
        )
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    progress = {"epoch": 0, "num_updates": 0, "train_seconds": 0.0, "history": [], "best": {"epoch": 0, "top1": -1.0}}
    progress["run_id"] = uuid.uuid4().hex
    if checkpoint is not None:
        progress = _restore(checkpoint, optimizer, lr_scheduler, scaler, model_ema, len(train_loader))
        _logger.info("resumed %s at epoch %d/%d", checkpoint_path, progress["epoch"], cfg.epochs)
        if fork:  # a new run: its own id, and its best starts at the fork point (the old best file stays there)
            progress["run_id"] = uuid.uuid4().hex
            row = progress["history"][-1] if progress["history"] else {}
            top1 = row.get("ema_val_top1" if cfg.model_ema else "val_top1", -1.0)
            progress["best"] = {"epoch": progress["epoch"], "top1": -1.0 if top1 is None else float(top1)}
        del checkpoint
    start_epoch, num_updates, train_seconds = progress["epoch"], progress["num_updates"], progress["train_seconds"]
    history, best, run_id = progress["history"], progress["best"], progress["run_id"]

    if cfg.compile:
        model = torch.compile(model)
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    if run_dir is None:
        run_dir = Path(_broadcast_outcome(lambda: _new_run_dir(cfg, info.name), ctx))
        if fork:
            _logger.info("forked %s (epoch %d) into %s", checkpoint_path, start_epoch, run_dir)
    where["run_dir"] = run_dir
    ckpt_dir = run_dir / "checkpoints"
    meta_base = {
        "run_id": run_id,
        "model": cfg.model,
        "model_args": model_args,
        "data": dataclasses.asdict(info),
        "config": config_to_dict(cfg),
        "world_size": ctx.world_size,
        "updates_per_epoch": len(train_loader),
        "versions": {"gsanet": gsanet.__version__, "torch": torch.__version__, "timm": timm.__version__},
    }

    def commit(epoch: int) -> None:
        meta = dict(
            meta_base, epoch=epoch, num_updates=num_updates, train_seconds=train_seconds, history=history,
            best=best, saved=datetime.now().isoformat(timespec="seconds"),
        )  # fmt: skip
        commit_checkpoints(
            ckpt_dir,
            meta,
            unwrap_model(model).state_dict(),
            ema_state=model_ema.module.state_dict() if model_ema is not None else None,
            state=_training_state(optimizer, scaler),
        )

    writer = None
    if ctx.is_main:
        for folder in (run_dir, ckpt_dir):
            for stale in clean_stale_tmp(folder):  # left by a process killed while writing
                _logger.info("removed %s, left by an interrupted write", stale)
        if fork:
            commit(start_epoch)  # the fork point, so that the new run is resumable and has a best file at once
        else:
            repair_best(ckpt_dir)
        _check_disk_space(ckpt_dir, unwrap_model(model), model_ema)
        try:
            save_yaml(config_to_dict(cfg), run_dir / "config.yaml")
            with open(run_dir / "command.txt", "a") as f:
                f.write(f"{datetime.now().isoformat(timespec='seconds')} {shlex.join(['gsanet', 'train', *argv])}\n")
        except OSError as e:
            raise CheckpointError(f"cannot write in {run_dir}: {e.strerror or e}; make it writable") from e
        if history:
            _write_metrics_csv(history, run_dir / "metrics.csv")
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None)
        except ImportError:
            _logger.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        _logger.info(
            "run %s: %s (%.2fM params) on %s, %d train / %d val images, %d x %d process(es), device %s",
            run_dir, cfg.model, params / 1e6, info.name, len(datasets["train"]), len(datasets["val"]),
            cfg.batch_size, ctx.world_size, device,
        )  # fmt: skip

    mixup_fn = _mixup(cfg, info.num_classes)
    criterion = _criterion(cfg)
    epoch_times: list[float] = []
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after is not None and epoch - start_epoch >= stop_after:
                _logger.info("stopping after %d epoch(s) as asked; continue with --resume %s", stop_after, run_dir)
                break
            start = time.perf_counter()
            seed_everything(epoch_seed(cfg.seed, epoch, ctx.rank))
            set_epoch(train_loader, epoch, cfg.seed, ctx.rank)
            train_stats = train_one_epoch(
                model, train_loader, criterion, optimizer, device, epoch,
                ctx=ctx, lr_scheduler=lr_scheduler, num_updates=num_updates, amp_dtype=amp_dtype, scaler=scaler,
                mixup_fn=mixup_fn, model_ema=model_ema, clip_grad=cfg.clip_grad, channels_last=cfg.channels_last,
                progress=cfg.progress and ctx.is_main, desc=f"epoch {epoch + 1}/{cfg.epochs}",
            )  # fmt: skip
            num_updates = int(train_stats["num_updates"])
            eval_kwargs = {
                "num_classes": info.num_classes,
                "ctx": ctx,
                "amp_dtype": amp_dtype,
                "channels_last": cfg.channels_last,
                "progress": cfg.progress and ctx.is_main,
            }
            val_stats = evaluate(model, val_loader, device, desc="validate", **eval_kwargs)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": train_stats["lr"],
                "train_loss": train_stats["loss"],
                "train_top1": train_stats["top1"],
                "train_images_per_s": train_stats["images_per_s"],
                "val_loss": val_stats["loss"],
                "val_top1": val_stats["top1"],
                "val_top5": val_stats["top5"],
                "val_images_per_s": val_stats["images_per_s"],
            }
            selected = val_stats
            if model_ema is not None:
                ema_stats = evaluate(model_ema.module, val_loader, device, desc="validate EMA", **eval_kwargs)
                row.update(
                    ema_val_loss=ema_stats["loss"], ema_val_top1=ema_stats["top1"], ema_val_top5=ema_stats["top5"]
                )
                selected = ema_stats
            _check_diverged(epoch, row, unwrap_model(model), model_ema)
            epoch_seconds = time.perf_counter() - start
            epoch_times.append(epoch_seconds)
            train_seconds += epoch_seconds
            row.update(epoch_seconds=epoch_seconds, train_seconds=train_seconds)
            history.append(row)
            if selected["top1"] > best["top1"]:
                best = {"epoch": epoch + 1, "top1": selected["top1"]}
            if ctx.is_main:
                commit(epoch + 1)
                _write_metrics_csv(history, run_dir / "metrics.csv")
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            writer.add_scalar(_tensorboard_tag(key), value, epoch + 1)
                    writer.flush()
                remaining = sum(epoch_times) / len(epoch_times) * (cfg.epochs - epoch - 1)
                print(_epoch_line(row, cfg.epochs, remaining), flush=True)
    except TrainError as e:
        last = ckpt_dir / "last.safetensors"
        if last.is_file():
            raise type(e)(
                f"{e}\nthe last good checkpoint is {last}; after the fix continue with: gsanet train --resume {run_dir}"
            ) from e
        raise
    finally:
        if writer is not None:
            writer.close()

    summary = _summary(cfg, info, history, best, params, train_seconds, run_dir, ctx, amp_dtype)
    if ctx.is_main and history:
        try:
            paths = plot_curves(history, run_dir, title=f"{cfg.model} on {Path(info.name).name}")
        except OSError as e:
            raise CheckpointError(f"cannot write the plots in {run_dir}: {e.strerror or e}; make it writable") from e
        summary["plots"] = {name: str(path) for name, path in paths.items()}
        _atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    return summary


def _check_diverged(epoch: int, row: dict[str, Any], model: nn.Module, model_ema: Any) -> None:
    """Raise :class:`NonFiniteLossError` when the epoch left NaN/infinite weights or losses (before they are saved).

    The loss is checked before every step by :func:`train_one_epoch`; this catches the last update of the epoch
    and a validation that overflows.
    """
    bad = [f"weights ({', '.join(names[:3])})" for names in [nonfinite_names(model.state_dict())] if names]
    if model_ema is not None and nonfinite_names(model_ema.module.state_dict()):
        bad.append("EMA weights")
    bad += [key for key in ("train_loss", "val_loss", "ema_val_loss") if key in row and not math.isfinite(row[key])]
    if bad:
        raise NonFiniteLossError(
            f"the training diverged in epoch {epoch + 1}: NaN or infinity in the {', '.join(bad)}; nothing of this "
            "epoch was saved. Lower --lr, set --clip-grad (e.g. 1.0), or train without float16 (--amp none or bf16)"
        )


def _summary(
    cfg: TrainConfig,
    info: DataInfo,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    params: int,
    train_seconds: float,
    run_dir: Path,
    ctx: DistContext,
    amp_dtype: torch.dtype | None,
) -> dict[str, Any]:
    last = history[-1] if history else {}
    prefix = "ema_val_" if cfg.model_ema else "val_"
    return {
        "model": cfg.model,
        "data": info.name,
        "epochs": len(history),
        "epochs_planned": cfg.epochs,
        "finished": len(history) >= cfg.epochs,
        "val_top1": last.get(prefix + "top1"),
        "val_top5": last.get(prefix + "top5"),
        "val_loss": last.get(prefix + "loss"),
        "weights": "ema" if cfg.model_ema else "model",
        "best_val_top1": best["top1"] if history else None,
        "best_epoch": best["epoch"] if history else None,
        "params": params,
        "train_seconds": train_seconds,
        "images_per_s": last.get("train_images_per_s"),
        "eval_images_per_s": last.get("val_images_per_s"),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "none",
        "run_dir": str(run_dir),
        "checkpoints": {
            "last": str(run_dir / "checkpoints" / "last.safetensors"),
            "best": str(run_dir / "checkpoints" / "best.safetensors"),
        },
        "metrics_csv": str(run_dir / "metrics.csv"),
    }


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
    if (Path(run_dir) / "checkpoints" / "last.safetensors").is_file():
        return f"{what}; continue with: gsanet train --resume {run_dir}"
    return f"{what} before the first checkpoint of {run_dir}; nothing to resume, start the run again"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gsanet train``; returns the exit code (0 ok, 2 bad input or diverged, 130 interrupted,
    143 SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_train_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the usage error or the help
        return int(e.code or 0)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    logger = configure_logging(logging.INFO if rank == 0 else logging.WARNING, prefix)
    previous = _handle_sigterm()
    try:
        with logging_redirect_tqdm([logger]):
            summary = run_training(args, argv)
    except TrainError as e:
        print(f"{prefix}gsanet train: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"{prefix}gsanet train: {_interrupt_message(e)}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        cleanup_distributed()
    if rank == 0 and summary["epochs"]:
        s = summary
        print(f"run directory: {s['run_dir']}")
        print(
            f"final val top-1 {s['val_top1']:.2f}%  top-5 {s['val_top5']:.2f}%  loss {s['val_loss']:.4f}  (best top-1 "
            f"{s['best_val_top1']:.2f}% at epoch {s['best_epoch']}; {s['epochs']}/{s['epochs_planned']} epochs, "
            f"{_format_seconds(s['train_seconds'])})"
        )
        print(f"plots: {summary['plots']['loss']}  {summary['plots']['accuracy']}")
        print(f"summary: {Path(summary['run_dir']) / 'summary.json'}")
        print(f"checkpoints: {summary['checkpoints']['last']}  {summary['checkpoints']['best']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
