"""Typed configs of the ``train`` and ``eval`` commands and their yaml/flag loading.

Override order: dataclass defaults < a base (the config stored in a checkpoint, on resume) < ``--config file.yaml``
< explicit command-line flags. Unknown keys and values of the wrong type are errors (:class:`ConfigError`), never
silently ignored or coerced: YAML reads ``1e-3`` as a string, so the error message says to write ``1.0e-3``.

The error types (:class:`TrainError` and its kinds) live in :mod:`gsanet.train.errors` and are re-exported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, TrainError, error_message

__all__ = [
    "AMP_CHOICES",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_IMG_SIZE",
    "MAX_WORKERS",
    "RENAMED_KEYS",
    "RESERVED_MODEL_KWARGS",
    "DEFAULT_MAX_PARAMS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EvalConfig",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainError",
    "build_parser",
    "check_model_kwargs",
    "config_to_dict",
    "error_message",
    "load_yaml",
    "parse_yaml",
    "read_config_text",
    "resolve_config",
    "save_yaml",
    "upgrade_config",
]

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "lars", "rmsproptf", "lion")
_SCHEDULERS = ("cosine", "poly", "none")
RENAMED_KEYS = {"output": "out"}
"""Config keys renamed since the first release, former name -> name (read from stored configs, never written)."""
MAX_IMG_SIZE = 2048
"""Largest accepted input size: larger ones ask for allocations no machine has (also bounds checkpoint metadata)."""
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
MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (1 MiB; the shipped ones are under 2 KB): a larger file is a wrong path, not a config."""
MAX_CONFIG_DEPTH = 32
"""Deepest nesting of mappings and lists accepted in a config file."""
MAX_WORKERS = 256
"""Most loader worker processes a config may ask for; at run time they are also bounded by the usable CPUs."""

C = TypeVar("C")


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
    data: str = _help("fashion-mnist, cifar10, cifar100, or a folder with train/ and val/", default="fashion-mnist")
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


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config type {tp}")
        return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    base, optional = _split_optional(tp)
    name = "mapping" if typing.get_origin(base) is dict else base.__name__
    return f"{name} or null" if optional else name


def _check_value(key: str, value: Any, tp: Any, source: str) -> Any:
    """Return ``value`` if it has type ``tp`` (an int is a valid float), else raise :class:`ConfigError`."""
    base, optional = _split_optional(tp)
    if value is None and optional:
        return None
    ok = False
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif base is str:
        ok = isinstance(value, str)
    elif typing.get_origin(base) is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if ok:
        return value
    hint = ""
    if base is float and isinstance(value, str):
        hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
    raise ConfigError(
        f"{source}: {key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}{hint}; fix the value"
    )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (field order), ready for yaml/json."""
    return dataclasses.asdict(cfg)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also refuses aliases, duplicate keys and nesting deeper than
    :data:`MAX_CONFIG_DEPTH`: a config is plain data that a person wrote, and an alias is how a 2 KB file expands
    into billions of values (an "alias bomb")."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed: write the value out", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_CONFIG_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first.line + 1})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str, name: str = "<text>") -> Any:
    """The value of a YAML document, read by the strict loader (no aliases, no duplicate keys, bounded nesting).

    Args:
        text: The document.
        source: What it is, for the error message (e.g. ``"config file x.yaml"``).
        name: The document's name in the error's position (a file's path).

    Raises:
        ConfigError: Invalid YAML, an alias, a duplicate key, or nesting deeper than :data:`MAX_CONFIG_DEPTH`.
    """
    loader = _StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}; fix it") from e
    finally:
        loader.dispose()


def read_config_text(path: str | Path) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_CONFIG_BYTES` bytes of UTF-8.

    The file is opened without blocking, so a FIFO or a device given by mistake is refused instead of waited on.

    Raises:
        ConfigError: The file is missing or unreadable, not a regular file, too large, or not UTF-8.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}; check the path given to --config") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ConfigError(f"config file {path} is {kind}; give the path of a YAML file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}; check the file") from e
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config; check the path"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from e


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping through :func:`read_config_text` and :func:`parse_yaml`: every config and recipe file is
    loaded here.

    Raises:
        ConfigError: See :func:`read_config_text` and :func:`parse_yaml`; or the document is not a mapping.
    """
    path = Path(path)
    data = parse_yaml(read_config_text(path), f"config file {path}", str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(data).__name__}")
    return data


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as yaml (keys in insertion order)."""
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def upgrade_config(values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """``values`` with the keys of :data:`RENAMED_KEYS` under their current names (a stored ``config.yaml`` or
    checkpoint that says ``output`` still loads).

    Raises:
        ConfigError: Both a key and its former name are given.
    """
    upgraded = dict(values)
    for old, new in RENAMED_KEYS.items():
        if old in upgraded:
            if new in upgraded:
                raise ConfigError(f"{source}: {old} is the former name of {new}; give {new} only")
            upgraded[new] = upgraded.pop(old)
    return upgraded


def _validated(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    types_ = _field_types(cls)
    values = upgrade_config(values, source)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(types_)}")
    return {key: _check_value(key, value, types_[key], source) for key, value in values.items()}


def _optional_scalar(base: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null"):
            return None
        return base(text)

    parse.__name__ = base.__name__
    return parse


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, parse_yaml(value, f"the value of {key}")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config`` and one flag per field of ``cls`` (absent flags stay absent)."""
    from gsanet.commands import ArgumentParser, flag_name

    parser = ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False)
    parser.add_argument("--config", metavar="YAML", help="yaml file of config keys (explicit flags override it)")
    defaults = cls()
    for f in dataclasses.fields(cls):
        base, optional = _split_optional(_field_types(cls)[f.name])
        help_ = f"{f.metadata.get('help', '')} (default: {getattr(defaults, f.name)!r})"
        if base is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=help_)
        elif typing.get_origin(base) is dict:
            parser.add_argument(
                flag_name(f.name), dest=f.name, nargs="*", type=_key_value, metavar="KEY=VALUE", help=help_
            )
        else:
            parse = _optional_scalar(base) if optional else base
            parser.add_argument(flag_name(f.name), dest=f.name, type=parse, metavar=base.__name__.upper(), help=help_)
    return parser


def resolve_config(
    cls: type[C],
    explicit: dict[str, Any],
    config_file: str | Path | None = None,
    base: dict[str, Any] | None = None,
) -> C:
    """Merge defaults < ``base`` < ``config_file`` < ``explicit`` into a validated ``cls`` instance.

    Args:
        cls: The config dataclass.
        explicit: Values of the flags given on the command line (``key=value`` lists already parsed).
        config_file: Optional yaml file.
        base: Optional starting values, e.g. the config stored in a checkpoint being resumed.

    Raises:
        ConfigError: An unknown key, a value of the wrong type or out of range.
    """
    values: dict[str, Any] = {}
    if base:
        values.update(_validated(cls, base, "checkpoint config"))
    if config_file is not None:
        values.update(_validated(cls, load_yaml(config_file), f"config file {config_file}"))
    explicit = {k: dict(v) if isinstance(v, list) else v for k, v in explicit.items()}
    values.update(_validated(cls, explicit, "command line"))
    return cls(**values)
