"""The run directory of ``gsanet train`` and the metadata of its checkpoints: one contract for every reader.

A run directory ``<out>/<name>`` holds::

    run.lock                     held (fcntl.flock) by the process that writes the run: pid, host, start time
    config.yaml                  the resolved config (a TrainConfig as a mapping)
    command.txt                  one line per invocation: timestamp and the gsanet train command
    metrics.csv                  one row per epoch (columns: METRIC_KEYS present in the history)
    summary.json                 the run's summary (RunSummary), written when the run ends
    loss.png, accuracy.png       the curves
    tensorboard/                 TensorBoard logs
    checkpoints/last.safetensors the commit point: weights, EMA, training state and CheckpointMeta
    checkpoints/best.safetensors the best epoch (a copy of last when last is the best)

:class:`RunDir` names these paths; :class:`CheckpointMeta` and :class:`RunSummary` are the typed forms of the checkpoint
metadata and of ``summary.json`` (their ``to_dict`` writes the keys the files have always had, in the same order);
:func:`load_model` builds the model of a run directory or checkpoint, ready for evaluation (``gsanet eval``,
``gsanet visualize``). Untrusted files are read through the checks of the metadata types (:mod:`~.metadata`)
and the type checks of :meth:`RunSummary.from_dict`.

One writer per run directory: :class:`RunLock` is an OS lock (``fcntl.flock``) on ``run.lock``, held for the life of
the process that trains the run; the kernel drops it when that process ends, however it ends (SIGKILL included), so
it is never stale. Every file of a run directory must be a regular file (:func:`check_run_files`): a FIFO or a
device in its place would make a reader or writer block forever.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gsanet.config import config_to_dict, load_yaml, save_yaml
from gsanet.datasets import DATASETS
from gsanet.errors import CheckpointError, ConfigError
from gsanet.files import ensure_writable

from .checkpoint import (
    atomic_path,
    best_checkpoint,
    check_finite,
    check_state_dict,
    json_safe,
    load_checkpoint,
    read_checkpoint_meta,
)
from .config import DEFAULT_MAX_PARAMS, TrainConfig
from .engine import create_model
from .metadata import METRIC_KEYS, MODEL_KEYS, CheckpointMeta, ModelArgs, RunSummary

try:  # POSIX; elsewhere (Windows) a run directory has no lock, see RunLock
    import fcntl
except ImportError:  # pragma: no cover - exercised on platforms without fcntl only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAX_INPUT_ELEMENTS",
    "LoadedModel",
    "ResumeTarget",
    "RunDir",
    "RunLock",
    "append_command",
    "atomic_write_text",
    "check_model_size",
    "check_regular_file",
    "check_resume_lineage",
    "check_run_files",
    "checkpoint_file",
    "create_run_dir",
    "load_model",
    "read_summary",
    "is_run_dir",
    "read_run_config",
    "resume_target",
    "write_config",
    "write_metrics_csv",
    "write_summary",
]

MAX_INPUT_ELEMENTS = 2**26
"""Largest input of one image (channels x height x width, 256 MiB in float32): larger ones exhaust memory."""

_logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class RunDir:
    """The paths of a run directory (nothing is created or checked)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved config."""
        return self.path / "config.yaml"

    @property
    def command(self) -> Path:
        """``command.txt``: the commands that ran in this directory."""
        return self.path / "command.txt"

    @property
    def summary(self) -> Path:
        """``summary.json``."""
        return self.path / "summary.json"

    @property
    def metrics(self) -> Path:
        """``metrics.csv``."""
        return self.path / "metrics.csv"

    @property
    def lock(self) -> Path:
        """``run.lock``: the lock of the process writing the run (:class:`RunLock`)."""
        return self.path / "run.lock"

    @property
    def tensorboard(self) -> Path:
        """``tensorboard/``."""
        return self.path / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``."""
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        """``checkpoints/last.safetensors``: the commit point."""
        return self.checkpoints / "last.safetensors"

    @property
    def best(self) -> Path:
        """``checkpoints/best.safetensors``: the best epoch."""
        return self.checkpoints / "best.safetensors"


# ---------------------------------------------------------------------------------------------------- files
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`~gsanet.train.checkpoint.atomic_path`).

    Raises:
        CheckpointError: The file cannot be written.
    """
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; free disk space or make it writable") from e


def write_metrics_csv(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write the epoch rows as ``metrics.csv`` (the columns of :data:`METRIC_KEYS` that occur)."""
    columns = [k for k in METRIC_KEYS if any(k in row for row in history)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def write_summary(summary: RunSummary, path: Path) -> None:
    """Write ``summary.json`` (NaN and infinity as null)."""
    atomic_write_text(path, json.dumps(json_safe(summary.to_dict()), indent=2, allow_nan=False) + "\n")


def read_summary(run_dir: str | Path) -> RunSummary | None:
    """The ``summary.json`` of a run directory, or None when the run has none (yet).

    Raises:
        CheckpointError: The file is not JSON or malformed.
    """
    path = RunDir(Path(run_dir)).summary
    check_regular_file(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not JSON ({e}); remove it and finish the run again") from e
    return RunSummary.from_dict(data, path)


def write_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as ``config.yaml`` (refusing a FIFO or other non-regular file in its place)."""
    check_regular_file(path)
    save_yaml(config_to_dict(cfg), path)


def append_command(path: Path, argv: Sequence[str]) -> None:
    """Append ``<timestamp> gsanet train <argv>`` to ``command.txt``.

    Raises:
        CheckpointError: ``command.txt`` exists and is not a regular file (a FIFO would block the writer).
    """
    check_regular_file(path)
    with open(path, "a") as f:
        f.write(f"{datetime.now().isoformat(timespec='seconds')} {shlex.join(['gsanet', 'train', *argv])}\n")


def check_regular_file(path: Path) -> None:
    """Raise :class:`CheckpointError` when ``path`` exists and is not a regular file (nor a link to one).

    A FIFO, socket or device where a run file belongs would block its reader or writer forever (a FIFO's ``open``
    waits for the other end), so it is refused before anything opens it.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise CheckpointError(f"cannot inspect {path}: {e.strerror or e}; remove it or fix its permissions") from e
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(f"{path} is {kind}, not a regular file: gsanet reads and writes it; remove it")


def check_run_files(run_dir: Path) -> None:
    """Raise :class:`CheckpointError` unless every file of the run directory is absent or a regular file and
    ``tensorboard`` is absent or a directory (checked before any of them is opened)."""
    paths = RunDir(run_dir)
    for path in (paths.lock, paths.config, paths.command, paths.summary, paths.metrics, paths.last, paths.best):
        check_regular_file(path)
    for name in ("loss.png", "accuracy.png"):
        check_regular_file(paths.path / name)
    for folder in (paths.tensorboard, paths.checkpoints):
        if folder.exists() and not folder.is_dir():
            raise CheckpointError(f"{folder} is a file, not a directory: the run writes into it; remove or rename it")


class RunLock:
    """The lock of a run directory, held by the one process that writes it (rank 0 of a distributed run).

    An exclusive ``fcntl.flock`` on ``run.lock``: the kernel releases it when the process ends, however it ends
    (SIGKILL, a crash, a power-off of the machine), so it is never stale. The file records its holder (pid, host,
    start time) for the message a second writer gets. Where Python has no ``fcntl`` (Windows), no lock is taken: a
    warning says so, and nothing stops two processes writing one run directory.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock ``run_dir`` for this process.

        Raises:
            ConfigError: Another process holds the lock (the message names it).
            CheckpointError: ``run.lock`` cannot be created, or is not a regular file.
        """
        path = RunDir(run_dir).lock
        if fcntl is None:
            _logger.warning("no fcntl here: %s is not locked; run one gsanet train in it at a time", run_dir)
            return cls(path, None)
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as e:
            reason = e.strerror or e
            raise CheckpointError(f"cannot open the lock {path}: {reason}; remove it or make it writable") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CheckpointError(f"{path} is not a regular file: gsanet locks the run with it; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise ConfigError(
                    f"run directory {run_dir} is in use by {holder}: a second writer would mix the two runs' "
                    f"checkpoints and metrics; wait for it to end (or stop it), or fork it with --resume {run_dir} "
                    "--name <new name>"
                ) from e
            holder = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, (holder + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (False after :meth:`release`, or without fcntl)."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (the file stays: removing it would race with a process about to lock it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# ------------------------------------------------------------------------------------------- creation, resume
def _make_named(out: Path, name: str) -> Path:
    run_dir = out / name
    try:
        run_dir.mkdir()
    except FileExistsError:
        started = "" if RunDir(run_dir).last.exists() else " (it has no checkpoint yet: --resume starts it again)"
        raise ConfigError(
            f"run directory {run_dir} already exists{started}; continue it with --resume {run_dir} or choose another "
            "--name"
        ) from None
    return run_dir


def _make_stamped(out: Path, stem: str) -> Path:
    for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
        try:
            (out / (stem + suffix)).mkdir()
            return out / (stem + suffix)
        except FileExistsError:
            continue
    raise ConfigError(f"could not create a fresh run directory {out / stem}; pass --name")


def create_run_dir(cfg: TrainConfig, data_name: str) -> Path:
    """Create a fresh run directory under ``cfg.out`` (``cfg.name``, or ``<model>-<data>-<timestamp>``) and check
    that files can be written in it.

    Raises:
        ConfigError: The directory exists (with ``--name``), or ``--out`` is not a writable directory.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; give the directory for the run directories")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.name is not None:
            run_dir = _make_named(out, cfg.name)
        else:
            data = data_name if data_name in DATASETS else Path(data_name).name  # a folder: its last component
            run_dir = _make_stamped(out, f"{cfg.model}-{data}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    except OSError as e:
        raise ConfigError(
            f"cannot create a run directory in --out {out}: {e.strerror or e}; give a writable directory"
        ) from e
    try:
        ensure_writable(RunDir(run_dir).checkpoints)
    except CheckpointError as e:
        raise ConfigError(f"{e}") from e
    return run_dir


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: a directory with a ``run.lock``, ``config.yaml`` or last checkpoint."""
    paths = RunDir(path)
    return path.is_dir() and any(os.path.lexists(p) for p in (paths.lock, paths.config, paths.last))


@dataclass(frozen=True)
class ResumeTarget:
    """What a ``--resume`` argument names.

    Attributes:
        checkpoint: The checkpoint to continue from; None for an empty run (a run directory that stopped before its
            first checkpoint), which starts from scratch with its ``config.yaml``.
        run_dir: The run directory the checkpoint belongs to; None for a checkpoint outside a run directory, which
            is forked into a new run directory (never written into the folder that holds it).
    """

    checkpoint: Path | None
    run_dir: Path | None

    @property
    def empty(self) -> bool:
        """Whether the target is a run directory without a checkpoint yet."""
        return self.checkpoint is None


def resume_target(resume: str) -> ResumeTarget:
    """The checkpoint and run directory of a ``--resume`` argument (a run directory: its ``last``).

    A checkpoint file belongs to a run directory when it lies in the ``checkpoints/`` folder of one
    (:func:`is_run_dir`); any other file is a checkpoint outside a run directory.

    Raises:
        CheckpointError: Neither a run directory nor a regular file.
    """
    path = Path(resume)
    if path.is_dir():
        if not is_run_dir(path):
            raise CheckpointError(
                f"{path} has no checkpoints/last.safetensors and is not a run directory; give runs/<run> or a "
                "checkpoint, or start a new run"
            )
        check_regular_file(RunDir(path).last)
        return ResumeTarget(RunDir(path).last if RunDir(path).last.exists() else None, path)
    if not os.path.lexists(path):
        raise CheckpointError(f"--resume {path}: no such run directory or checkpoint; give runs/<run> or a checkpoint")
    check_regular_file(path)
    if path.parent.name == "checkpoints" and is_run_dir(path.parent.parent):
        return ResumeTarget(path, path.parent.parent)
    return ResumeTarget(path, None)


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.yaml`` of a run directory as a mapping (empty when it has none).

    Raises:
        CheckpointError: Not a regular file.
        ConfigError: Not a YAML mapping.
    """
    path = RunDir(run_dir).config
    check_regular_file(path)
    return load_yaml(path) if path.exists() else {}


def check_resume_lineage(checkpoint: Path, meta: CheckpointMeta, run_dir: Path) -> None:
    """Refuse to continue ``run_dir`` from ``checkpoint`` when that would overwrite a more recent ``last``.

    Raises:
        CheckpointError: The run's ``last`` belongs to another run or is more recent than ``checkpoint``.
    """
    last = RunDir(run_dir).last
    if not last.is_file() or (checkpoint.exists() and last.resolve() == checkpoint.resolve()):
        return
    last_meta = read_checkpoint_meta(last)
    fork = f"fork it into a new run directory with --resume {checkpoint} --name <new name>"
    if last_meta.run_id != meta.run_id:
        raise CheckpointError(f"{checkpoint} is not a checkpoint of the run in {run_dir}; {fork}")
    if (last_meta.epoch or 0) > meta.epoch:
        raise CheckpointError(
            f"{checkpoint} is epoch {meta.epoch}, older than the run's last checkpoint (epoch {last_meta.epoch}): "
            f"continuing from it would overwrite {last} and drop epochs from metrics.csv; continue the run with "
            f"--resume {run_dir}, or {fork}"
        )


# -------------------------------------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    """A model built from a checkpoint, in eval mode on the CPU.

    Attributes:
        model: The network with the checkpoint's weights.
        meta: The checkpoint's metadata.
        path: The checkpoint file.
        weights: ``ema`` (the EMA weights) or ``model``.
    """

    model: nn.Module
    meta: CheckpointMeta
    path: Path
    weights: str


def checkpoint_file(source: str | Path) -> Path:
    """The checkpoint a run directory stands for (its best, see :func:`~.checkpoint.best_checkpoint`), or ``source``.

    Raises:
        CheckpointError: A run directory without checkpoints.
    """
    path = Path(source)
    return best_checkpoint(path) if path.is_dir() else path


def check_model_size(name: str, model_args: ModelArgs, max_params: int, fix: str) -> nn.Module:
    """Refuse a model that is too large or that its arguments break, before any memory is allocated for it.

    The model is built on the ``meta`` device (shapes only), so the parameters are counted exactly at no cost; the
    input of one image is bounded by :data:`MAX_INPUT_ELEMENTS`. Arguments the model rejects (``heads: 0``,
    ``width_mult: 0``, ...) become a :class:`ConfigError` here instead of a traceback.

    Args:
        name: The model name.
        model_args: The arguments of :func:`~gsanet.train.engine.create_model`.
        max_params: The largest parameter count accepted.
        fix: What the user should change, ending the messages (e.g. ``"fix --model-kwargs"``).

    Returns:
        The model on the ``meta`` device: its state dict has the shapes (and no data) that weights must fit.

    Raises:
        ConfigError: The model rejects its arguments, or is larger than the limits.
    """
    img_size, in_chans = model_args.img_size, model_args.in_chans
    if img_size is not None and in_chans * img_size * img_size > MAX_INPUT_ELEMENTS:
        raise ConfigError(
            f"{in_chans} channels at {img_size}x{img_size} is more than {MAX_INPUT_ELEMENTS} input values per image "
            f"({in_chans * img_size * img_size * 4 / 2**30:.1f} GiB in float32 before the first layer); {fix}"
        )
    try:
        with torch.device("meta"):
            model = create_model(name, **model_args.kwargs())
    except ConfigError:
        raise
    except (ValueError, TypeError, AssertionError, ArithmeticError, RuntimeError, KeyError, IndexError) as e:
        kwargs = dict(model_args.model_kwargs)
        if "meta" in str(e):  # the model reads tensor values while it is built: it cannot be sized without memory
            raise ConfigError(
                f"model {name} cannot be built on the meta device to count its parameters before allocating them "
                f"({e}); use another model"
            ) from e
        raise ConfigError(f"model {name} rejects its arguments {kwargs}: {e}; {fix}") from e
    params = sum(p.numel() for p in model.parameters())
    if params > max_params:
        raise ConfigError(
            f"model {name} with {dict(model_args.model_kwargs)}, {model_args.num_classes} classes and "
            f"{in_chans} input channels has {params:,} parameters ({params * 4 / 2**30:.1f} GiB in float32), more "
            f"than --max-params {max_params:,}; {fix}, or raise --max-params if it is meant"
        )
    return model


def load_model(
    source: str | Path, *, ema: bool = False, require: Sequence[str] = (), max_params: int = DEFAULT_MAX_PARAMS
) -> LoadedModel:
    """Build the model of a ``gsanet train`` checkpoint or run directory (its best checkpoint), ready for evaluation.

    The model name and arguments come from the checkpoint's checked metadata; the model's size is bounded, and the
    weights must fit its shapes, before it is built (:func:`check_model_size`): what is allocated is at most what the
    file holds. The weights must be finite.

    Args:
        source: A ``.safetensors`` checkpoint or a run directory.
        ema: Load the EMA weights when the checkpoint has them (else the raw weights).
        require: Metadata the caller needs besides :data:`MODEL_KEYS`.
        max_params: The largest parameter count accepted.

    Raises:
        CheckpointError: A missing, corrupt, malformed or non-finite checkpoint, or one that does not fit its model.
        ConfigError: The model arguments are refused by the model, or the model is too large.
    """
    path = checkpoint_file(source)
    meta = read_checkpoint_meta(path, (*MODEL_KEYS, *require))
    skeleton = check_model_size(meta.model, meta.model_args, max_params, f"the checkpoint {path} cannot be used")
    checkpoint = load_checkpoint(path, with_state=ema)
    use_ema = ema and checkpoint.ema_state is not None
    weights = checkpoint.ema_state if use_ema else checkpoint.model_state
    check_state_dict(skeleton.state_dict(), weights, model_name=meta.model, checkpoint_model=meta.model, path=path)
    check_finite(weights, path, "EMA weights" if use_ema else "weights")
    model = create_model(meta.model, **meta.model_args.kwargs())
    model.load_state_dict(weights)
    return LoadedModel(model.eval(), meta, path, "ema" if use_ema else "model")
