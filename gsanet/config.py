"""Typed configs from YAML files and flags: the loading every ``gsanet`` command shares.

A command's config is a dataclass; :func:`resolve_config` merges its defaults < a base (the config stored in a
checkpoint, on resume) < a ``--config`` YAML file < explicit flags. Unknown keys and values of the wrong type are
errors (:class:`~gsanet.errors.ConfigError`), never silently ignored or coerced: YAML reads ``1e-3`` as a string, so
the error message says to write ``1.0e-3``. YAML is read by a strict loader (no aliases, no duplicate keys, bounded
size and nesting). Keys renamed since the first release (:data:`RENAMED_KEYS`) are read under their former names.

This module imports only the standard library, PyYAML and :mod:`gsanet.errors`: the commands and the training both
build on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_IMG_SIZE",
    "RENAMED_KEYS",
    "config_to_dict",
    "field_types",
    "key_value",
    "load_yaml",
    "optional_scalar",
    "parse_yaml",
    "read_config_text",
    "resolve_config",
    "save_yaml",
    "split_optional",
    "upgrade_config",
]

MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (1 MiB; the shipped ones are under 2 KB): a larger file is a wrong path, not a config."""
MAX_CONFIG_DEPTH = 32
"""Deepest nesting of mappings and lists accepted in a config file."""
MAX_IMG_SIZE = 2048
"""Largest accepted input size: larger ones ask for allocations no machine has (also bounds checkpoint metadata)."""
RENAMED_KEYS = {"output": "out"}
"""Config keys renamed since the first release, former name -> name (read from stored configs, never written)."""

C = TypeVar("C")


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of the config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config type {tp}")
        return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    base, optional = split_optional(tp)
    name = "mapping" if typing.get_origin(base) is dict else base.__name__
    return f"{name} or null" if optional else name


def _check_value(key: str, value: Any, tp: Any, source: str) -> Any:
    """Return ``value`` if it has type ``tp`` (an int is a valid float), else raise :class:`ConfigError`."""
    base, optional = split_optional(tp)
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
    types_ = field_types(cls)
    values = upgrade_config(values, source)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(types_)}")
    return {key: _check_value(key, value, types_[key], source) for key, value in values.items()}


def optional_scalar(base: type) -> Any:
    """An argparse ``type`` for ``base | None``: ``none``/``null`` give None."""
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null"):
            return None
        return base(text)

    parse.__name__ = base.__name__
    return parse


def key_value(text: str) -> tuple[str, Any]:
    """An argparse ``type`` for ``KEY=VALUE`` (the value read as YAML by the strict loader)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, parse_yaml(value, f"the value of {key}")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
