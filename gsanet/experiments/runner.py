"""The experiment runner: where each run stands, its lock, its ``gsanet train`` subprocess, and the schedule.

Every run is one ``python -m gsanet.cli train --config <recipe> ...`` subprocess writing
``<runs>/<data>/<variant>-s<seed>/`` (summary.json, checkpoints, metrics.csv, command.txt) and a log
``<runs>/<data>/logs/<variant>-s<seed>.log``. A run whose ``summary.json`` says it finished is never started again
nor overwritten; one whose ``config.yaml`` differs from what the plan asks is a conflict and is left alone. An
interrupted run is continued with ``gsanet train --resume`` when the context's ``--resume`` is set (or moved aside to
``<name>.incomplete-<time>`` and restarted if it never finished an epoch). Each run holds an exclusive lock while it
trains, so two experiment commands sharing a runs directory never train the same run twice.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gsanet.train.errors import CheckpointError
from gsanet.train.rundir import RunDir, RunSummary, read_summary

from .plans import RunSpec, data_slug

__all__ = [
    "COMMANDS_FILE",
    "RunStatus",
    "RunnerContext",
    "child_env",
    "execute_run",
    "expected_config",
    "invocations",
    "record_invocation",
    "run_all",
    "run_lock",
    "run_status",
    "say",
    "train_command",
]

COMMANDS_FILE = "experiment_commands.txt"
"""The file of ``<runs>/<data>/`` that records every ``gsanet experiment`` command that trained there."""


@dataclass
class RunStatus:
    """Where a run stands.

    Attributes:
        state: ``done``, ``todo``, ``partial`` (interrupted; resumable if it has a checkpoint), ``conflict`` (its
            config differs from the plan's) or ``failed`` (set by the runner).
        detail: Why, for the user.
        summary: The run's ``summary.json`` when it has one.
    """

    state: str
    detail: str = ""
    summary: RunSummary | None = None


def _config_mismatch(run_dir: Path, expected: Mapping[str, Any]) -> list[str]:
    path = RunDir(run_dir).config
    if not path.is_file():
        return []
    found = yaml.safe_load(path.read_text()) or {}
    return [f"{k}: {found.get(k)!r} != {v!r}" for k, v in expected.items() if k in found and found[k] != v]


def _checkpoint(spec: RunSpec) -> Path:
    return RunDir(spec.run_dir).last


def run_status(spec: RunSpec, expected: Mapping[str, Any]) -> RunStatus:
    """The state of a run directory against the config the plan expects (``RunSpec.expected_config``)."""
    run_dir = spec.run_dir
    if not run_dir.exists():
        return RunStatus("todo")
    mismatch = _config_mismatch(run_dir, expected)
    try:
        summary = read_summary(run_dir)
    except CheckpointError as e:
        return RunStatus("conflict", f"{e}; it is left alone")
    if mismatch:
        return RunStatus(
            "conflict",
            f"{run_dir} holds a run with another config ({'; '.join(mismatch)}); it is left alone: use another "
            "--runs directory or move it away",
            summary,
        )
    if summary is not None and summary.finished:
        return RunStatus("done", f"top-1 {summary.val_top1}", summary)
    detail = (
        "interrupted after a checkpoint" if _checkpoint(spec).is_file() else "interrupted before its first checkpoint"
    )
    return RunStatus("partial", detail, summary)


@contextlib.contextmanager
def run_lock(spec: RunSpec) -> Iterator[bool]:
    """An exclusive, non-blocking lock of one run (released when the process dies); yields whether it was taken."""
    lock_dir = spec.output / "logs"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f".{spec.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class RunnerContext:
    """What every run of one ``gsanet experiment`` invocation shares: the parsed arguments, the recipe of each
    dataset ``(path, values)``, the child environment, the running subprocesses and the stop flag."""

    args: argparse.Namespace
    recipes: dict[str, tuple[Path, dict[str, Any]]]
    env: dict[str, str]
    children: set[subprocess.Popen] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def stop_children(self) -> None:
        """Start no further run and ask the running train commands to stop (each keeps its last checkpoint)."""
        self.stop.set()
        with self.lock:
            for proc in self.children:
                proc.terminate()

    def expected_recipe(self, data: str) -> dict[str, Any]:
        """The recipe values every run of ``data`` must have in its ``config.yaml`` (``--data-dir`` included)."""
        _, recipe = self.recipes[data]
        return dict(recipe, **({"data_dir": self.args.data_dir} if self.args.data_dir else {}))


def train_command(spec: RunSpec, ctx: RunnerContext, resume: bool) -> list[str]:
    """The ``gsanet train`` command line of a run: a fresh start with the recipe, or ``--resume`` of its directory."""
    prefix = [ctx.args.python, "-m", "gsanet.cli", "train"]
    if resume:
        return [*prefix, "--resume", str(spec.run_dir), "--no-progress"]
    config, _ = ctx.recipes[spec.data]
    return [*prefix, *spec.train_args(config, epochs=ctx.args.epochs, data_dir=ctx.args.data_dir)]


def expected_config(spec: RunSpec, ctx: RunnerContext) -> dict[str, Any]:
    """The ``config.yaml`` values the run must have under this invocation's recipe, ``--epochs`` and ``--data-dir``."""
    _, recipe = ctx.recipes[spec.data]
    expected = spec.expected_config(recipe, ctx.args.epochs)
    if ctx.args.data_dir is not None:
        expected["data_dir"] = ctx.args.data_dir
    return expected


def say(ctx: RunnerContext, text: str) -> None:
    """Print one time-stamped progress line (one at a time across the worker threads)."""
    with ctx.lock:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """The train subprocesses' environment: ``--threads`` (1 by default with ``--jobs`` > 1) compute threads."""
    env = dict(os.environ)
    threads = args.threads if args.threads is not None else (1 if args.jobs > 1 else None)
    if threads is not None:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _resume_or_restart(spec: RunSpec, ctx: RunnerContext, status: RunStatus) -> bool | RunStatus:
    """For an interrupted run: whether to resume it (else it was moved aside), or its status without ``--resume``."""
    if not ctx.args.resume:
        return RunStatus("partial", f"{status.detail}; continue it with --resume", status.summary)
    if _checkpoint(spec).is_file():
        return True
    aside = spec.run_dir.with_name(f"{spec.name}.incomplete-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    spec.run_dir.rename(aside)
    say(ctx, f"moved {spec.run_dir} (no checkpoint) to {aside}; starting afresh")
    return False


def _train(command: list[str], log_path: Path, ctx: RunnerContext) -> int:
    """Run one train command with its output appended to ``log_path``; return its exit code."""
    with open(log_path, "a") as log:
        log.write(f"# {datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ctx.env, cwd=os.getcwd())
        with ctx.lock:
            ctx.children.add(proc)
        try:
            return proc.wait()
        finally:
            with ctx.lock:
                ctx.children.discard(proc)


def execute_run(spec: RunSpec, ctx: RunnerContext) -> RunStatus:
    """Train one run unless it is done, locked elsewhere, conflicting, or interrupted without ``--resume``."""
    if ctx.stop.is_set():
        return RunStatus("todo", "not started (interrupted)")
    with run_lock(spec) as locked:
        if not locked:
            return RunStatus("todo", "running in another gsanet experiment process (locked); skipped")
        status = run_status(spec, expected_config(spec, ctx))
        if status.state in ("done", "conflict"):
            return status
        resume = _resume_or_restart(spec, ctx, status) if status.state == "partial" else False
        if isinstance(resume, RunStatus):
            return resume
        command = train_command(spec, ctx, resume)
        log_path = spec.output / "logs" / f"{spec.name}.log"
        say(ctx, f"{'resume' if resume else 'start '} {spec.name} ({spec.data})  log: {log_path}")
        start = time.time()
        code = _train(command, log_path, ctx)
        wall = time.time() - start
        status = run_status(spec, expected_config(spec, ctx))
        if code != 0 or status.state != "done":
            status = RunStatus("failed", f"exit code {code} after {wall:.0f} s; see {log_path}", status.summary)
            say(ctx, f"FAILED {spec.name}: {status.detail}")
            return status
        record = {
            "command": shlex.join(command),
            "wall_seconds": wall,
            "threads": ctx.env.get("OMP_NUM_THREADS", "default"),
            "jobs": ctx.args.jobs,
            "finished_at": datetime.now().isoformat(timespec="seconds"),
        }
        with open(spec.run_dir / "experiment.json", "a") as f:
            f.write(json.dumps(record) + "\n")
        say(ctx, f"done   {spec.name}: validation top-1 {status.summary.val_top1:.2f}%  ({wall:.0f} s)")
        return status


def run_all(specs: Sequence[RunSpec], ctx: RunnerContext) -> list[tuple[RunSpec, RunStatus]]:
    """Run every spec on ``--jobs`` workers, the most expensive first so that the workers finish together."""
    order = sorted(specs, key=lambda s: -s.variant.cost)
    results: list[tuple[RunSpec, RunStatus]] = []
    with ThreadPoolExecutor(max_workers=max(1, ctx.args.jobs)) as pool:
        futures = [(spec, pool.submit(execute_run, spec, ctx)) for spec in order]
        try:
            for spec, future in futures:
                results.append((spec, future.result()))
        except KeyboardInterrupt:
            ctx.stop_children()
            raise
    return results


def record_invocation(ctx: RunnerContext, argv: Sequence[str], data: str) -> None:
    """Append this ``gsanet experiment`` command (with its thread setting and the time) to the dataset's
    :data:`COMMANDS_FILE`."""
    folder = Path(ctx.args.runs) / data_slug(data)
    folder.mkdir(parents=True, exist_ok=True)
    threads = ctx.env.get("OMP_NUM_THREADS")
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    with open(folder / COMMANDS_FILE, "a") as f:
        f.write(f"{env}gsanet experiment {shlex.join(argv)}   # {datetime.now().isoformat(timespec='seconds')}\n")


def invocations(runs: str | Path, data: str, containing: str = "") -> list[str]:
    """The recorded ``gsanet experiment`` commands of a dataset (those containing ``containing``)."""
    path = Path(runs) / data_slug(data) / COMMANDS_FILE
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and containing in line]
