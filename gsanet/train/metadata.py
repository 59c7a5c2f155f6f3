"""The metadata contract of a run, typed: a checkpoint's metadata (:class:`CheckpointMeta`) and ``summary.json``
(:class:`RunSummary`). Each type validates itself: a document read from a file (untrusted input) becomes the type only
through :meth:`CheckpointMeta.from_dict` / :meth:`RunSummary.from_dict`, which check every known key's type and bounds
(unknown keys are dropped). :mod:`gsanet.train.checkpoint` keeps the file format and the training-state codec, and
asks this module to check what it read.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsanet.config import MAX_IMG_SIZE, split_optional, upgrade_config
from gsanet.errors import CheckpointError, ConfigError

from .config import check_model_kwargs

__all__ = [
    "METRIC_KEYS",
    "MODEL_KEYS",
    "RESUME_KEYS",
    "CheckpointMeta",
    "ModelArgs",
    "RunSummary",
    "is_int",
    "require_meta",
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


def is_int(value: Any, low: int = 0, high: int = 2**62) -> bool:
    """``value`` is an int (not a bool) in ``low..high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return math.isfinite(value) and low <= value <= high


def _is_text(value: Any, max_len: int = 4096) -> bool:
    return isinstance(value, str) and len(value) <= max_len


@dataclass(frozen=True)
class ModelArgs:
    """The arguments of :func:`~gsanet.train.engine.create_model` besides the model name, as a checkpoint stores them.

    Attributes:
        num_classes: Classifier outputs (from the data).
        in_chans: Input channels (from the data).
        img_size: Input size the model is built for (None: the model's default).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth rate.
        model_kwargs: Extra ``timm.create_model`` arguments.
    """

    num_classes: int
    in_chans: int
    img_size: int | None
    drop_rate: float
    drop_path_rate: float
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``create_model`` (and the JSON of the checkpoint metadata)."""
        return dataclasses.asdict(self)


def _model_args_problem(args: Any) -> str | None:
    keys = {f.name for f in dataclasses.fields(ModelArgs)}
    if not isinstance(args, dict) or set(args) != keys:
        return f"must be a mapping of exactly {', '.join(sorted(keys))}"
    if not is_int(args["num_classes"], 1, 1_000_000):
        return f"num_classes must be an int in 1..1000000, got {args['num_classes']!r}"
    if not is_int(args["in_chans"], 1, 1024):
        return f"in_chans must be an int in 1..1024, got {args['in_chans']!r}"
    if args["img_size"] is not None and not is_int(args["img_size"], 1, MAX_IMG_SIZE):
        return f"img_size must be an int in 1..{MAX_IMG_SIZE}, got {args['img_size']!r}"
    for key in ("drop_rate", "drop_path_rate"):
        if not _is_number(args[key], 0.0, 1.0):
            return f"{key} must be a number in [0, 1], got {args[key]!r}"
    try:
        check_model_kwargs(args["model_kwargs"], "model_kwargs")
    except ConfigError as e:
        return str(e)
    return None


def _data_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "must be a mapping"
    if not _is_text(data.get("name")):
        return "name must be a string"
    if not is_int(data.get("num_classes"), 1, 1_000_000) or not is_int(data.get("in_chans"), 1, 1024):
        return "num_classes and in_chans must be positive ints"
    if not is_int(data.get("img_size"), 1, MAX_IMG_SIZE):
        return f"img_size must be an int in 1..{MAX_IMG_SIZE}, got {data.get('img_size')!r}"
    for key, low in (("mean", -math.inf), ("std", 1e-12)):
        values = data.get(key)
        if not isinstance(values, list) or len(values) != data["in_chans"] or not all(
            _is_number(v, low) for v in values
        ):
            return f"{key} must be a list of {data['in_chans']} finite numbers" + (" > 0" if key == "std" else "")
    names = data.get("class_names")
    if not isinstance(names, list) or not all(_is_text(n, 1000) for n in names):
        return "class_names must be a list of strings"
    if names and len(names) != data["num_classes"]:
        return f"class_names has {len(names)} names for {data['num_classes']} classes"
    return None


def _history_problem(history: Any) -> str | None:
    if not isinstance(history, list) or len(history) > 1_000_000:
        return "must be a list of epoch rows"
    for row in history:
        if not isinstance(row, dict) or not all(
            isinstance(k, str) and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
            for k, v in row.items()
        ):
            return "rows must be mappings of metric name to number"
    return None


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        return "must be a mapping"
    for key in ("data", "data_dir", "model"):
        if key in config and not _is_text(config[key]):
            return f"{key} must be a string"
    return None


def _check(ok: bool, problem: str) -> str | None:
    return None if ok else problem


_FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "run_id": lambda v: _check(_is_text(v, 200) and bool(v), "must be a non-empty string"),
    "model": lambda v: _check(_is_text(v, 200) and bool(v), "must be a model name"),
    "model_args": _model_args_problem,
    "data": _data_problem,
    "config": _config_problem,
    "world_size": lambda v: _check(is_int(v, 1, 1_000_000), "must be a positive int"),
    "updates_per_epoch": lambda v: _check(is_int(v, 1), "must be a positive int"),
    "versions": lambda v: _check(
        isinstance(v, dict) and all(_is_text(k, 100) and _is_text(x, 200) for k, x in v.items()), "must map str to str"
    ),
    "epoch": lambda v: _check(is_int(v, 0, 10_000_000), "must be an int >= 0"),
    "num_updates": lambda v: _check(is_int(v), "must be an int >= 0"),
    "train_seconds": lambda v: _check(_is_number(v, 0.0), "must be a finite number >= 0"),
    "history": _history_problem,
    "best": lambda v: _check(
        isinstance(v, dict) and set(v) == {"epoch", "top1"} and is_int(v["epoch"]) and _is_number(v["top1"]),
        "must be {epoch: int, top1: number}",
    ),
    "saved": lambda v: _check(_is_text(v, 100), "must be a string"),
}
"""The check of each field of :class:`CheckpointMeta` (None = fine, else what is wrong)."""



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
    model_args: ModelArgs | None = None
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
    def check(cls, meta: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
        """The fields of a metadata document this type knows, each checked for type and bounds (other keys are
        dropped); a ``config`` that uses a former key name (``output``) gets the current one.

        Raises:
            CheckpointError: A field is malformed.
        """
        checked = {}
        for key, check in _FIELD_CHECKS.items():
            if key in meta:
                problem = check(meta[key])
                if problem is not None:
                    raise CheckpointError(f"{path} has malformed metadata: {key} {problem}; use another checkpoint")
                checked[key] = meta[key]
        if "config" in checked:
            checked["config"] = upgrade_config(checked["config"], f"{path}: config")
        return checked

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], path: str | Path, require: Sequence[str] = ()) -> CheckpointMeta:
        """The typed, checked form of a checkpoint's metadata document (:meth:`check`).

        Raises:
            CheckpointError: A field is malformed, or a key of ``require`` is missing.
        """
        checked = cls.check(meta, path)
        require_meta(checked, tuple(require), path)
        values = {k: v for k, v in checked.items() if v is not None}
        if "model_args" in values:
            values["model_args"] = ModelArgs(**values["model_args"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The metadata as stored in a checkpoint (the fields that are set, in field order)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        if self.model_args is not None:
            values["model_args"] = self.model_args.kwargs()
        return values

    @property
    def last_row(self) -> dict[str, Any]:
        """The last epoch row of the history (empty before the first epoch)."""
        return self.history[-1] if self.history else {}


def require_meta(meta: Mapping[str, Any], keys: Sequence[str], path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless the checked metadata ``meta`` has every one of ``keys``."""
    missing = [key for key in keys if key not in meta]
    if missing:
        raise CheckpointError(
            f"{path} lacks the metadata {', '.join(missing)} (not a complete gsanet train checkpoint); use one that "
            "gsanet train wrote"
        )


def _accepted_types(annotation: Any) -> tuple[type, ...]:
    """The JSON value types a field annotated ``X | None`` accepts (an int is a valid float)."""
    base, _ = split_optional(annotation)
    base = typing.get_origin(base) or base
    return (float, int) if base is float else (base,)


@dataclass
class RunSummary:
    """``summary.json``: what a run ended with (a field is None when the run or an older file does not have it).

    ``val_*`` are the last epoch's validation metrics of the weights the run selects on (``weights``: ``ema`` or
    ``model``); ``best_*`` the best epoch by top-1; ``test_*`` the one evaluation of the final weights on the test
    split (``--final-test``, with ``--holdout``); ``diverged`` the error of a run the training's divergence
    stopped (NaN or infinity; ``finished`` is then false); ``checkpoints`` and ``plots`` map names to file paths.
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
    test_top1: float | None = None
    test_top5: float | None = None
    test_loss: float | None = None
    test_images: int | None = None
    diverged: str | None = None
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
        for key, annotation in typing.get_type_hints(cls).items():
            types, value = _accepted_types(annotation), data.get(key)
            if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
                raise CheckpointError(f"{source} has a malformed {key} ({value!r}); remove it and finish the run again")
            values[key] = value
        if values["finished"] is None and values["epochs"] is not None:
            values["finished"] = values["epochs"] == values["epochs_planned"]
        return cls(**values)


