"""Typed configs of the ``train`` and ``eval`` commands.

They are loaded by :func:`gsanet.config.resolve_config` (defaults < a base, the config stored in a checkpoint on
resume < ``--config file.yaml`` < explicit flags) and check their own values (:class:`~gsanet.errors.ConfigError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsanet.config import MAX_IMG_SIZE
from gsanet.datasets import DATASETS
from gsanet.errors import ConfigError

__all__ = [
    "AMP_CHOICES",
    "DEFAULT_MAX_PARAMS",
    "MAX_WORKERS",
    "RESERVED_MODEL_KWARGS",
    "EvalConfig",
    "TrainConfig",
    "check_model_kwargs",
]

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "lars", "rmsproptf", "lion")
_SCHEDULERS = ("cosine", "poly", "none")
RESERVED_MODEL_KWARGS = frozenset(
    {
        "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "pretrained_strict",
        "features_only", "num_classes", "in_chans", "drop_rate", "drop_path_rate",
    }
)  # fmt: skip
"""``model_kwargs`` keys refused: ones that load files or weights from elsewhere, or have their own config key."""
_MAX_SEED = 2**32 - 1
DEFAULT_MAX_PARAMS = 1_000_000_000
"""Largest model accepted by default (4 GiB of float32 weights): a bound on what checkpoint metadata can allocate."""
MAX_WORKERS = 256
"""Most loader worker processes a config may ask for; at run time they are also bounded by the usable CPUs."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """Everything that defines a training run (``gsanet train``); defaults are ``configs/fashion_mnist.yaml``.

    ``batch_size`` is per process (as in timm and the torchvision references): under ``torchrun`` the global batch is
    ``batch_size * world_size``.
    """

    # model
    model: str = _help("timm model name (``import gsanet`` registers the gsa_* models)", default="gsa_resnet26_tiny")
    model_kwargs: dict[str, Any] = _help("extra keyword arguments of timm.create_model", default_factory=dict)
    max_params: int = _help(
        "refuse a model with more parameters (counted before it is built; never taken from a checkpoint)",
        default=DEFAULT_MAX_PARAMS,
    )
    drop_rate: float = _help("dropout before the classifier", default=0.0)
    drop_path_rate: float = _help("stochastic depth rate", default=0.0)
    # data
    data: str = _help(f"{', '.join(DATASETS)}, or a folder with train/ and val/", default="fashion-mnist")
    data_dir: str = _help("where torchvision datasets are looked for and downloaded", default="data")
    download: bool = _help("download fashion-mnist/cifar with torchvision when missing", default=True)
    img_size: int | None = _help(
        "input size; None = the dataset's (28, 32) or the model's (image folders)", default=None
    )
    train_subset: int | None = _help("train on a fixed random subset of this many images", default=None)
    val_subset: int | None = _help("validate on a fixed random subset of this many images", default=None)
    holdout: int | None = _help(
        "validate on a fixed held-out split of this many training images (never trained on) instead of the "
        "dataset's test/val split; train_subset is then taken from the remaining training images",
        default=None,
    )
    final_test: bool = _help(
        "after the last epoch, evaluate the final weights once on the dataset's test split and record test_top1/"
        "test_top5/test_loss in summary.json (needs --holdout: without it the validation split is the test set)",
        default=False,
    )
    workers: int = _help("data loader worker processes per training process", default=0)
    augment: bool = _help(
        "random crop + flip (fashion-mnist, cifar) / timm's train transform (on in the cifar/imagenet recipes)",
        default=False,
    )
    auto_augment: str | None = _help(
        "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (not fashion-mnist)", default=None
    )
    reprob: float = _help("random erasing probability (not fashion-mnist)", default=0.0)
    mixup: float = _help("mixup alpha (0 = off)", default=0.0)
    cutmix: float = _help("cutmix alpha (0 = off)", default=0.0)
    smoothing: float = _help("label smoothing", default=0.1)
    # optimisation
    epochs: int = _help("training epochs", default=2)
    batch_size: int = _help("batch size per process", default=128)
    opt: str = _help(f"optimizer for timm.optim.create_optimizer_v2: {', '.join(_OPTIMIZERS)}", default="adamw")
    lr: float = _help("peak learning rate", default=5.0e-3)
    weight_decay: float = _help("weight decay (not applied to norms and biases)", default=0.05)
    momentum: float = _help("SGD momentum", default=0.9)
    sched: str = _help(f"learning-rate schedule, per step: {', '.join(_SCHEDULERS)}", default="cosine")
    warmup_epochs: float = _help("linear warm-up epochs (fractions allowed)", default=0.1)
    warmup_lr: float = _help("learning rate at the start of warm-up", default=1.0e-5)
    min_lr: float = _help("final learning rate of the schedule", default=1.0e-5)
    clip_grad: float | None = _help("clip the gradient norm to this value", default=None)
    model_ema: bool = _help("keep an EMA of the weights (timm ModelEmaV3); validate and select on it", default=False)
    model_ema_decay: float = _help("EMA decay", default=0.9998)
    # runtime
    seed: int = _help("random seed (weights, sampling, augmentation)", default=0)
    device: str = _help("auto (cuda if available, else cpu), cpu, cuda, cuda:N", default="auto")
    amp: str = _help(
        "autocast: auto (bf16 where the hardware has native bf16, else none), none, bf16, fp16 (CUDA, GradScaler)",
        default="auto",
    )
    compile: bool = _help("torch.compile the model", default=False)
    channels_last: bool = _help("channels-last memory format", default=False)
    sync_bn: bool = _help("SyncBatchNorm across processes (CUDA only)", default=False)
    out: str = _help("parent directory of run directories", default="runs")
    name: str | None = _help("run directory name; default <model>-<data>-<timestamp>", default=None)
    progress: bool = _help("show a progress bar", default=True)

    def __post_init__(self) -> None:
        _check_choice("amp", self.amp, AMP_CHOICES)
        _check_choice("opt", self.opt, _OPTIMIZERS)
        _check_choice("sched", self.sched, _SCHEDULERS)
        for key in ("epochs", "batch_size", "max_params"):
            _check_min(key, getattr(self, key), 1)
        _check_range("workers", self.workers, 0, MAX_WORKERS)
        _check_range("seed", self.seed, 0, _MAX_SEED)
        for key in ("train_subset", "val_subset", "holdout"):
            if getattr(self, key) is not None:
                _check_min(key, getattr(self, key), 1)
        if self.final_test and self.holdout is None:
            raise ConfigError(
                "final_test needs holdout: without a held-out split the validation split already is the test set, "
                "evaluated after every epoch; add --holdout N or drop --final-test"
            )
        if self.img_size is not None:
            _check_range("img_size", self.img_size, 1, MAX_IMG_SIZE)
        for key in ("lr", "warmup_lr", "min_lr", "warmup_epochs", "weight_decay", "momentum", "mixup", "cutmix"):
            _check_finite_min(key, getattr(self, key), 0)
        if self.lr == 0:
            raise ConfigError("lr must be > 0, got 0.0: a zero learning rate trains nothing")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"warmup_epochs ({self.warmup_epochs}) is longer than the run ({self.epochs} epochs): the learning "
                "rate would never reach --lr; lower --warmup-epochs or raise --epochs"
            )
        for key in ("drop_rate", "drop_path_rate", "smoothing"):
            _check_range(key, getattr(self, key), 0, 1, include_max=False)
        _check_range("reprob", self.reprob, 0, 1)
        _check_range("model_ema_decay", self.model_ema_decay, 0, 1, include_max=False)
        if self.clip_grad is not None and not (math.isfinite(self.clip_grad) and self.clip_grad > 0):
            raise ConfigError(
                f"clip_grad must be a finite number > 0 (the largest gradient norm kept), got {self.clip_grad!r}; "
                "use e.g. 1.0, or none for no clipping"
            )
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ConfigError(f"mixup/cutmix need an even batch_size, got {self.batch_size}: use {self.batch_size + 1}")
        if self.name is not None and (not self.name or Path(self.name).name != self.name):
            raise ConfigError(f"name must be a plain directory name, got {self.name!r}: use --out for the parent")
        check_model_kwargs(self.model_kwargs, "model_kwargs")


@dataclass
class EvalConfig:
    """Everything that defines an evaluation (``gsanet eval``); data defaults to the checkpoint's training data."""

    checkpoint: str = _help("checkpoint file (.safetensors) or run directory (uses its best checkpoint)", default="")
    data: str | None = _help("dataset; default: the one the checkpoint was trained on", default=None)
    data_dir: str | None = _help(
        "dataset root; default: the checkpoint's (read, but downloaded into only when it is the default data)",
        default=None,
    )
    download: bool = _help("download fashion-mnist/cifar with torchvision when missing", default=True)
    val_subset: int | None = _help("evaluate on a fixed random subset of this many images", default=None)
    batch_size: int = _help("batch size", default=256)
    workers: int = _help("data loader worker processes", default=0)
    device: str = _help("auto (cuda if available, else cpu), cpu, cuda, cuda:N", default="auto")
    amp: str = _help(
        "autocast: auto (bf16 where the hardware has native bf16), none, bf16, fp16 (CUDA)", default="auto"
    )
    channels_last: bool = _help("channels-last memory format", default=False)
    max_params: int = _help(
        "refuse a checkpoint's model with more parameters (counted before it is built)", default=DEFAULT_MAX_PARAMS
    )
    ema: bool = _help("use the EMA weights when the checkpoint has them", default=True)
    out: str | None = _help(
        "directory for the report and confusion matrix; default: next to the checkpoint", default=None
    )
    progress: bool = _help("show a progress bar", default=True)

    def __post_init__(self) -> None:
        _check_choice("amp", self.amp, AMP_CHOICES)
        _check_min("batch_size", self.batch_size, 1)
        _check_min("max_params", self.max_params, 1)
        _check_range("workers", self.workers, 0, MAX_WORKERS)
        if self.val_subset is not None:
            _check_min("val_subset", self.val_subset, 1)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _check_min(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value!r}")


def _check_finite_min(key: str, value: float, minimum: float) -> None:
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{key} must be a finite number >= {minimum}, got {value!r}")


def _check_range(key: str, value: float, low: float, high: float, *, include_max: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (``< high`` without ``include_max``); NaN fails."""
    ok = low <= value <= high if include_max else low <= value < high
    if not ok:
        bracket = "]" if include_max else ")"
        raise ConfigError(f"{key} must be in [{low}, {high}{bracket}, got {value!r}")


def _check_json_value(value: Any, where: str, depth: int = 0) -> None:
    if depth > 8:
        raise ConfigError(f"{where} is nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where} has a non-string key {k!r}")
            _check_json_value(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json_value(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise ConfigError(f"{where} must be a number, string, bool, list or mapping, got {type(value).__name__}")


def check_model_kwargs(kwargs: Any, where: str = "model_kwargs") -> None:
    """Raise :class:`ConfigError` unless ``kwargs`` is a mapping of plain values that may go to ``timm.create_model``.

    Refused: keys that make timm load a file or pretrained weights (``checkpoint_path``, ``pretrained_cfg``, ...)
    or duplicate a config key (``num_classes``, ``drop_rate``, ...); non-finite numbers; an ``img_size`` or
    ``feat_size`` above :data:`MAX_IMG_SIZE`.
    """
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(kwargs).__name__}")
    reserved = sorted(RESERVED_MODEL_KWARGS & set(kwargs))
    if reserved:
        raise ConfigError(
            f"{where} may not set {', '.join(reserved)}: these make timm load weights or files, or are set elsewhere "
            "(num_classes and in_chans come from the data, --drop-rate, --drop-path-rate); remove them"
        )
    _check_json_value(kwargs, where)
    for key in ("img_size", "feat_size"):
        if key not in kwargs or kwargs[key] is None:
            continue
        sizes = kwargs[key] if isinstance(kwargs[key], (list, tuple)) else [kwargs[key]]
        ok = all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMG_SIZE for v in sizes)
        if not sizes or not ok:
            raise ConfigError(f"{where}.{key} must be an int (or ints) in 1..{MAX_IMG_SIZE}, got {kwargs[key]!r}")
