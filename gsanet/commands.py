"""What every ``gsanet`` command shares: its flag names, its config loading, its logging and its error path.

The convention:

- The same flag for the same thing: ``--out DIR`` is where results go, ``--batch-size N`` the batch size,
  ``--config YAML`` a file of config keys; a config field's flag is its name (:func:`flag_name`).
- One config loader, :func:`resolve` (:func:`gsanet.config.resolve_config`): dataclass defaults < the
  ``--config`` YAML < explicit flags; unknown keys, wrong types and values the config refuses are errors.
- One logging set-up, :func:`setup_logging`: the ``gsanet`` loggers write their messages to stderr; results and
  tables go to stdout.
- One error path, :func:`run`: a mistake of the user (a bad flag or value, a missing file, a wrong config) is
  reported as ``gsanet <command>: error: <one line>`` on stderr with exit code 2, never as a traceback. A parser
  made by :class:`ArgumentParser` reports its usage errors the same way.

A command module's ``main(argv)`` is ``return run("<command>", _main, argv)`` with ``_main(argv) -> int``. This
module builds on :mod:`gsanet.errors`, :mod:`gsanet.config` and :mod:`gsanet.files` only; ``gsanet.train`` and the
other command packages build on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import field_types, key_value, optional_scalar, resolve_config, split_optional
from .errors import CheckpointError, UserError, error_message
from .files import ensure_writable

__all__ = [
    "ArgumentParser",
    "add_batch_size_flag",
    "add_config_flag",
    "add_out_flag",
    "build_parser",
    "bounded_int",
    "check_out_dir",
    "error_line",
    "flag_name",
    "rank_prefix",
    "resolve",
    "run",
    "setup_logging",
]

C = TypeVar("C")

class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors raise :class:`UserError`, so that :func:`run` reports them in one line,
    and which takes no abbreviated flags (one spelling per flag: ``--batch`` is not ``--batch-size``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        raise UserError(f"{message} (see {self.prog} --help)")


def flag_name(field: str) -> str:
    """The flag of a config field: ``--field-name``."""
    return "--" + field.replace("_", "-")


def add_out_flag(parser: argparse.ArgumentParser, help_: str, *, dest: str = "out", **kwargs: Any) -> None:
    """``--out DIR``: where the command writes its results."""
    parser.add_argument(flag_name("out"), dest=dest, metavar="DIR", help=help_, **kwargs)


def add_batch_size_flag(parser: argparse.ArgumentParser, help_: str, **kwargs: Any) -> None:
    """``--batch-size N``."""
    parser.add_argument(flag_name("batch_size"), dest="batch_size", type=int, metavar="N", help=help_, **kwargs)


def add_config_flag(
    parser: argparse.ArgumentParser, help_: str = "YAML file of config keys (flags override it)"
) -> None:
    """``--config YAML``: a file of config keys, loaded by :func:`resolve`."""
    parser.add_argument("--config", metavar="YAML", help=help_)


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config`` and one flag per field of ``cls`` (absent flags stay absent)."""
    parser = ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="YAML", help="yaml file of config keys (explicit flags override it)")
    defaults = cls()
    for f in dataclasses.fields(cls):
        base, optional = split_optional(field_types(cls)[f.name])
        help_ = f"{f.metadata.get('help', '')} (default: {getattr(defaults, f.name)!r})"
        if base is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=help_)
        elif typing.get_origin(base) is dict:
            parser.add_argument(
                flag_name(f.name), dest=f.name, nargs="*", type=key_value, metavar="KEY=VALUE", help=help_
            )
        else:
            parse = optional_scalar(base) if optional else base
            parser.add_argument(flag_name(f.name), dest=f.name, type=parse, metavar=base.__name__.upper(), help=help_)
    return parser


def bounded_int(low: int, high: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an int in ``low..high`` (no upper bound when None); ``why`` explains the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}{f' ({why})' if why else ''}")
        return value

    parse.__name__ = "int"
    return parse


def check_out_dir(out: str | Path, what: str = "results", flag: str = "--out") -> None:
    """Create ``out`` if needed and check that a file can be written in it, before the command does its work.

    Raises:
        UserError: It is a file, cannot be created, or is not writable (read-only, ``/proc``, no permission).
    """
    out = Path(out)
    try:
        ensure_writable(out)
    except CheckpointError as e:
        cause = e.__cause__
        problem = "it is a file" if out.is_file() else getattr(cause, "strerror", None) or type(cause).__name__
        raise UserError(f"cannot write {what} to {out}: {problem}; choose another {flag}") from e


def resolve(cls: type[C], args: argparse.Namespace) -> C:
    """A command's typed config: defaults < ``args.config`` (YAML) < the flags in ``args`` that are fields of ``cls``.

    The parser must leave absent flags absent (``argument_default=argparse.SUPPRESS``) so that they do not override the
    file. Other attributes of ``args`` are ignored.

    Raises:
        ConfigError: An unknown key or a value of the wrong type (in the file).
        UserError: A value the config refuses (its ``ValueError``).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    explicit = {k: v for k, v in vars(args).items() if k in names}
    try:
        return resolve_config(cls, explicit, getattr(args, "config", None))
    except ValueError as e:
        raise UserError(str(e)) from e


def rank_prefix() -> str:
    """``"[rank N] "`` in a process of a distributed run (``torchrun`` sets ``RANK``, ``WORLD_SIZE``), else ``""``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"[rank {int(os.environ.get('RANK', '0'))}] "
    return ""


def setup_logging(verbose: bool = False, *, level: int = logging.INFO, prefix: str | None = None) -> logging.Logger:
    """Send the ``gsanet`` loggers' messages to stderr, replacing an earlier call's handler (not the root logger's).

    Args:
        verbose: Log debug messages too.
        level: The least level logged otherwise.
        prefix: Put before every message; default :func:`rank_prefix`.

    Returns:
        The ``gsanet`` logger.
    """
    logger = logging.getLogger("gsanet")
    for handler in list(logger.handlers):
        if getattr(handler, "gsanet_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.gsanet_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter((rank_prefix() if prefix is None else prefix) + "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else level)
    logger.propagate = False
    return logger


def error_line(command: str, error: BaseException) -> str:
    """``gsanet <command>: error: <message>`` (after :func:`rank_prefix`), the message's lines joined into one."""
    message = " ".join(error_message(error).split())
    return f"{rank_prefix()}gsanet {command}: error: {message}"


def run(command: str, body: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``body(argv)`` and return its exit code: a :class:`~gsanet.errors.UserError` is printed by
    :func:`error_line` and gives 2, ``--help`` gives 0. The ``gsanet`` logger is restored afterwards.

    Args:
        command: The command's name, e.g. ``"bench"``.
        body: Parses ``argv``, does the work, returns the exit code (None: 0).
        argv: The command's arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    logger = logging.getLogger("gsanet")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        return int(body(argv) or 0)
    except UserError as e:
        print(error_line(command, e), file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse's --help (0), or a usage error of a plain argparse parser (2, printed)
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        raise
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
