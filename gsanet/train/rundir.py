"""The run directory of ``gsanet train`` and the metadata of its checkpoints: one contract for every reader.

A run directory ``<output>/<name>`` holds::

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
``gsanet visualize``). Untrusted files are read through the checkpoint schema (:func:`~.checkpoint.read_metadata`)
and the type checks of :meth:`RunSummary.from_dict`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import (
    atomic_path,
    best_checkpoint,
    check_finite,
    check_state_dict,
    ensure_writable,
    json_safe,
    load_checkpoint,
    read_metadata,
    require_meta,
)
from .config import TrainConfig, config_to_dict, save_yaml
from .engine import create_model
from .errors import CheckpointError, ConfigError

__all__ = [
    "BUILTIN_DATASETS",
    "METRIC_KEYS",
    "MODEL_KEYS",
    "RESUME_KEYS",
    "CheckpointMeta",
    "LoadedModel",
    "RunDir",
    "RunSummary",
    "append_command",
    "atomic_write_text",
    "check_resume_lineage",
    "checkpoint_file",
    "create_run_dir",
    "load_model",
    "read_summary",
    "resume_paths",
    "write_config",
    "write_metrics_csv",
    "write_summary",
]

METRIC_KEYS = (
    "epoch", "lr", "train_loss", "train_top1", "train_images_per_s", "val_loss", "val_top1", "val_top5",
    "val_images_per_s", "ema_val_loss", "ema_val_top1", "ema_val_top5", "epoch_seconds", "train_seconds",
)  # fmt: skip
"""The columns of ``metrics.csv``, in order (an epoch row of the history has a subset of them)."""

MODEL_KEYS = ("model", "model_args", "data")
"""The checkpoint metadata a model is built from."""

RESUME_KEYS = (
    "run_id", "model", "model_args", "data", "config", "epoch", "num_updates", "train_seconds", "history", "best",
    "updates_per_epoch",
)  # fmt: skip
"""The checkpoint metadata ``gsanet train --resume`` continues a run from."""

BUILTIN_DATASETS = ("fashion-mnist", "cifar10", "cifar100")
"""Dataset names used as they are in run directory names (an image folder contributes its last path component)."""


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


# ------------------------------------------------------------------------------------------------ metadata
@dataclass
class CheckpointMeta:
    """The ``gsanet`` metadata of a checkpoint (see :mod:`gsanet.train.checkpoint` for the file format).

    A field is None when the checkpoint does not have it (callers state which they need). ``model_args`` are the
    arguments of :func:`~gsanet.train.engine.create_model`; ``data`` is a :class:`~gsanet.train.data.DataInfo` as a
    mapping; ``config`` the resolved :class:`~gsanet.train.config.TrainConfig` as a mapping; ``history`` the epoch
    rows (``METRIC_KEYS``); ``best`` ``{"epoch": int, "top1": float}``.
    """

    run_id: str | None = None
    model: str | None = None
    model_args: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    world_size: int | None = None
    updates_per_epoch: int | None = None
    versions: dict[str, str] | None = None
    epoch: int | None = None
    num_updates: int | None = None
    train_seconds: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    saved: str | None = None

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], path: str | Path, require: Sequence[str] = ()) -> CheckpointMeta:
        """The typed form of ``meta`` (as :func:`~gsanet.train.checkpoint.read_metadata` checked it).

        Raises:
            CheckpointError: A key of ``require`` is missing.
        """
        require_meta(dict(meta), tuple(require), path)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names and v is not None})

    @classmethod
    def read(cls, path: str | Path, require: Sequence[str] = ()) -> CheckpointMeta:
        """The metadata of the checkpoint file ``path`` (its header only).

        Raises:
            CheckpointError: Missing, unreadable or malformed, or a key of ``require`` is missing.
        """
        return cls.from_dict(read_metadata(path), path, require)

    def to_dict(self) -> dict[str, Any]:
        """The metadata as stored in a checkpoint (the fields that are set, in field order)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @property
    def last_row(self) -> dict[str, Any]:
        """The last epoch row of the history (empty before the first epoch)."""
        return self.history[-1] if self.history else {}


_SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "data": (str,), "epochs": (int,), "epochs_planned": (int,), "finished": (bool,),
    "val_top1": (float, int), "val_top5": (float, int), "val_loss": (float, int), "weights": (str,),
    "best_val_top1": (float, int), "best_epoch": (int,), "params": (int,), "train_seconds": (float, int),
    "images_per_s": (float, int), "eval_images_per_s": (float, int), "world_size": (int,), "device": (str,),
    "amp": (str,), "run_dir": (str,), "checkpoints": (dict,), "metrics_csv": (str,), "plots": (dict,),
}  # fmt: skip


@dataclass
class RunSummary:
    """``summary.json``: what a run ended with (a field is None when the run or an older file does not have it).

    ``val_*`` are the last epoch's validation metrics of the weights the run selects on (``weights``: ``ema`` or
    ``model``); ``best_*`` the best epoch by top-1; ``checkpoints`` and ``plots`` map names to file paths.
    """

    model: str | None = None
    data: str | None = None
    epochs: int | None = None
    epochs_planned: int | None = None
    finished: bool | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    val_loss: float | None = None
    weights: str | None = None
    best_val_top1: float | None = None
    best_epoch: int | None = None
    params: int | None = None
    train_seconds: float | None = None
    images_per_s: float | None = None
    eval_images_per_s: float | None = None
    world_size: int | None = None
    device: str | None = None
    amp: str | None = None
    run_dir: str | None = None
    checkpoints: dict[str, str] | None = None
    metrics_csv: str | None = None
    plots: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as ``summary.json`` holds it (``plots`` only once the curves are drawn)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out["plots"] is None:
            del out["plots"]
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "summary") -> RunSummary:
        """The typed form of a ``summary.json`` document; unknown keys are ignored, known ones type-checked.

        ``finished`` is derived from the epoch counts when the document does not say it.

        Raises:
            CheckpointError: Not a mapping, or a known key of the wrong type.
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"{source} is not a JSON object; remove it and finish the run again")
        values = {}
        for key, types in _SUMMARY_TYPES.items():
            value = data.get(key)
            if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
                raise CheckpointError(f"{source} has a malformed {key} ({value!r}); remove it and finish the run again")
            values[key] = value
        if values["finished"] is None and values["epochs"] is not None:
            values["finished"] = values["epochs"] == values["epochs_planned"]
        return cls(**values)


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
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not JSON ({e}); remove it and finish the run again") from e
    return RunSummary.from_dict(data, path)


def write_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as ``config.yaml``."""
    save_yaml(config_to_dict(cfg), path)


def append_command(path: Path, argv: Sequence[str]) -> None:
    """Append ``<timestamp> gsanet train <argv>`` to ``command.txt``."""
    with open(path, "a") as f:
        f.write(f"{datetime.now().isoformat(timespec='seconds')} {shlex.join(['gsanet', 'train', *argv])}\n")


# ------------------------------------------------------------------------------------------- creation, resume
def _make_named(output: Path, name: str) -> Path:
    run_dir = output / name
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise ConfigError(
            f"run directory {run_dir} already exists; continue it with --resume {run_dir} or choose another --name"
        ) from None
    return run_dir


def _make_stamped(output: Path, stem: str) -> Path:
    for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
        try:
            (output / (stem + suffix)).mkdir()
            return output / (stem + suffix)
        except FileExistsError:
            continue
    raise ConfigError(f"could not create a fresh run directory {output / stem}; pass --name")


def create_run_dir(cfg: TrainConfig, data_name: str) -> Path:
    """Create a fresh run directory under ``cfg.output`` (``cfg.name``, or ``<model>-<data>-<timestamp>``) and check
    that files can be written in it.

    Raises:
        ConfigError: The directory exists (with ``--name``), or ``--output`` is not a writable directory.
    """
    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file, not a directory; give the directory for the run directories")
    try:
        output.mkdir(parents=True, exist_ok=True)
        if cfg.name is not None:
            run_dir = _make_named(output, cfg.name)
        else:
            data = data_name if data_name in BUILTIN_DATASETS else Path(data_name).name
            run_dir = _make_stamped(output, f"{cfg.model}-{data}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    except OSError as e:
        raise ConfigError(
            f"cannot create a run directory in --output {output}: {e.strerror or e}; give a writable directory"
        ) from e
    try:
        ensure_writable(RunDir(run_dir).checkpoints)
    except CheckpointError as e:
        raise ConfigError(f"{e}") from e
    return run_dir


def resume_paths(resume: str) -> tuple[Path, Path]:
    """``(checkpoint file, run directory)`` of a ``--resume`` argument (a run directory: its ``last``).

    Raises:
        CheckpointError: Neither a run directory with a last checkpoint nor an existing file.
    """
    path = Path(resume)
    if path.is_dir():
        checkpoint = RunDir(path).last
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


def check_resume_lineage(checkpoint: Path, meta: CheckpointMeta, run_dir: Path) -> None:
    """Refuse to continue ``run_dir`` from ``checkpoint`` when that would overwrite a more recent ``last``.

    Raises:
        CheckpointError: The run's ``last`` belongs to another run or is more recent than ``checkpoint``.
    """
    last = RunDir(run_dir).last
    if not last.is_file() or (checkpoint.exists() and last.resolve() == checkpoint.resolve()):
        return
    last_meta = CheckpointMeta.read(last)
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


def load_model(source: str | Path, *, ema: bool = False, require: Sequence[str] = ()) -> LoadedModel:
    """Build the model of a ``gsanet train`` checkpoint or run directory (its best checkpoint), ready for evaluation.

    The model name and arguments come from the checkpoint's checked metadata; the weights must fit the model and be
    finite.

    Args:
        source: A ``.safetensors`` checkpoint or a run directory.
        ema: Load the EMA weights when the checkpoint has them (else the raw weights).
        require: Metadata the caller needs besides :data:`MODEL_KEYS`.

    Raises:
        CheckpointError: A missing, corrupt, malformed or non-finite checkpoint, or one that does not fit its model.
        ConfigError: The model arguments are refused by the model.
    """
    path = checkpoint_file(source)
    checkpoint = load_checkpoint(path, with_state=ema)
    meta = CheckpointMeta.from_dict(checkpoint.meta, path, (*MODEL_KEYS, *require))
    model = create_model(meta.model, **meta.model_args)
    use_ema = ema and checkpoint.ema_state is not None
    weights = checkpoint.ema_state if use_ema else checkpoint.model_state
    check_state_dict(model.state_dict(), weights, model_name=meta.model, checkpoint_model=meta.model, path=path)
    check_finite(weights, path, "EMA weights" if use_ema else "weights")
    model.load_state_dict(weights)
    return LoadedModel(model.eval(), meta, path, "ema" if use_ema else "model")
