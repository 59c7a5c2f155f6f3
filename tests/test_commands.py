"""The convention every ``gsanet`` command shares (:mod:`gsanet.commands`): flags, config loading, logging, errors."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gsanet import commands
from gsanet.bench import cli as bench_cli
from gsanet.cli import COMMANDS
from gsanet.cli import main as gsanet_main
from gsanet.errors import ConfigError
from gsanet.experiments import cli as exp_cli
from gsanet.models import summary as summary_cmd

BAD_VALUES = {
    "train": ["--batch-size", "0"],
    "eval": ["--batch-size", "0"],
    "summary": ["--models", "no_such_model"],
    "bench": ["module", "--batch-size", "0"],
    "experiment": ["compare", "--jobs", "0"],
    "visualize": ["--model", "gsa_resnet26_tiny", "--out", "{file}"],
}
"""Per command, a value it refuses after parsing (``{file}``: an existing file, not a directory)."""

MALFORMED = {
    "train": ["--epochs", "two"],
    "eval": ["--batch-size", "two"],
    "summary": ["--img-size", "0"],
    "bench": ["module", "--repeats", "two"],
    "experiment": ["compare", "--jobs", "two"],
    "visualize": ["--model", "gsa_resnet26_tiny", "--layer", "two"],
}
"""Per command, a value its parser refuses."""


def _one_error_line(command: str, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = [arg.format(file=a_file) for arg in argv]
    assert gsanet_main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gsanet {command}: error: "), err
    assert err.count("\n") == 1, err
    return err


def test_every_command_is_covered() -> None:
    assert set(BAD_VALUES) == set(MALFORMED) == set(COMMANDS)


@pytest.mark.parametrize("command", list(BAD_VALUES))
def test_bad_value_is_one_line_and_exit_code_2(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the repository
    _one_error_line(command, BAD_VALUES[command], tmp_path, capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", MALFORMED)
def test_malformed_value_is_one_line_and_exit_code_2(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    err = _one_error_line(command, MALFORMED[command], tmp_path, capsys)
    assert f"(see gsanet {command} --help)" in err


def test_unknown_command_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert gsanet_main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("gsanet: error: unknown command 'no-such-command'; commands: train, eval")
        and err.count("\n") == 1
    )


def test_python_dash_m_gsanet_is_the_command_line() -> None:
    """``python -m gsanet`` runs ``gsanet.cli.main`` and exits with its code."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "gsanet", "no-such-command"]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("gsanet: error: unknown command 'no-such-command'; commands: train, eval")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_out_and_no_alias(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert gsanet_main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"--out\b", text) and "--output" not in text and not re.search(r"--batch\b(?!-)", text)


def test_out_is_where_results_go() -> None:
    assert bench_cli.build_parser().parse_args(["module", "--out", "d"]).out == "d"
    assert exp_cli.build_parser().parse_args(["compare", "--out", "d"]).out == "d"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("alias", [["--output", "d"], ["--batch", "3"]])
def test_the_removed_aliases_are_refused(command: str, alias: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``--output`` and ``--batch`` are gone (nor do they pass as abbreviations of ``--out``/``--batch-size``)."""
    required = {"bench": ["module"], "experiment": ["compare"], "visualize": ["--model", "gsa_resnet26_tiny"]}
    first = required.get(command, [])
    assert gsanet_main([command, *first, *alias]) == 2
    assert f"unrecognized arguments: {alias[0]}" in capsys.readouterr().err


def test_batch_size_flag() -> None:
    assert bench_cli.build_parser().parse_args(["module", "--batch-size", "3"]).batch_size == 3


def test_summary_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--models", "gsa_resnet26_tiny", "--img-size", "28", "--in-chans", "1", "--num-classes", "10"]
    assert summary_cmd.main([*argv, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "summary_28.md").exists() and "gsa_resnet26_tiny" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ the helpers
@dataclass
class _Options:
    size: int = 1
    rate: float = 0.5
    name: str | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")


def _parser() -> commands.ArgumentParser:
    parser = commands.ArgumentParser(prog="gsanet test", argument_default=argparse.SUPPRESS)
    commands.add_config_flag(parser)
    parser.add_argument("--size", type=int)
    parser.add_argument("--other", type=int)  # not a config field: ignored by resolve
    return parser


def _raise(error: Exception) -> int:
    raise error


def test_resolve_defaults_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "options.yaml"
    config.write_text("size: 4\nrate: 1\n")
    assert commands.resolve(_Options, _parser().parse_args([])) == _Options()
    assert commands.resolve(_Options, _parser().parse_args(["--config", str(config)])) == _Options(4, 1.0)
    args = _parser().parse_args(["--config", str(config), "--size", "7", "--other", "1"])
    assert commands.resolve(_Options, args) == _Options(7, 1.0)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("colour: red\n", ConfigError, "unknown key"),
        ("rate: fast\n", ConfigError, "rate must be float"),
        ("size: 0\n", commands.UserError, "size must be >= 1"),
        ("- a list\n", ConfigError, "must hold a mapping"),
    ],
)
def test_resolve_refuses(tmp_path: Path, text: str, error: type[Exception], match: str) -> None:
    config = tmp_path / "options.yaml"
    config.write_text(text)
    with pytest.raises(error, match=match):
        commands.resolve(_Options, _parser().parse_args(["--config", str(config)]))


def test_run_reports_user_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def body(argv: list[str]) -> int:
        if argv == ["config"]:
            raise ConfigError("first line\n  second line")
        if argv == ["user"]:
            raise commands.UserError("no such thing")
        _parser().parse_args(argv)
        return 3

    assert commands.run("test", body, ["config"]) == 2
    assert capsys.readouterr().err == "gsanet test: error: first line second line\n"
    assert commands.run("test", body, ["user"]) == 2
    assert capsys.readouterr().err == "gsanet test: error: no such thing\n"
    assert commands.run("test", body, ["--size", "x"]) == 2
    assert capsys.readouterr().err.startswith("gsanet test: error: argument --size: invalid int value: 'x'")
    assert commands.run("test", body, ["--help"]) == 0
    assert commands.run("test", body, []) == 3
    with pytest.raises(RuntimeError):  # a bug stays a traceback
        commands.run("test", lambda argv: _raise(RuntimeError("bug")), [])


def test_run_in_a_distributed_process_names_the_rank(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert commands.rank_prefix() == "[rank 1] "
    assert commands.run("test", lambda argv: _raise(commands.UserError("bad")), []) == 2
    assert capsys.readouterr().err == "[rank 1] gsanet test: error: bad\n"


def test_setup_logging_replaces_its_handler_and_run_restores_the_logger(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("gsanet")
    before = (list(logger.handlers), logger.level, logger.propagate)

    def body(argv: list[str]) -> int:
        commands.setup_logging()
        commands.setup_logging(verbose=True, prefix="> ")
        assert sum(getattr(h, "gsanet_cli", False) for h in logger.handlers) == 1
        logging.getLogger("gsanet.test").debug("a debug message")
        return 0

    assert commands.run("test", body, []) == 0
    assert capsys.readouterr().err == "> a debug message\n"
    assert (list(logger.handlers), logger.level, logger.propagate) == before
