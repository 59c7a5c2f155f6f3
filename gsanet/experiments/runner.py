"""The experiment runner: where each run stands, its lock, its ``gsanet train`` subprocess, and the schedule.

Every run is one ``python -m gsanet.cli train --config <recipe> ...`` subprocess writing
``<runs>/<data>/<variant>-s<seed>/`` (summary.json, checkpoints, metrics.csv, command.txt) and a log
``<runs>/<data>/logs/<variant>-s<seed>.log``. A run whose ``summary.json`` says it finished is never started again
nor overwritten; one whose ``config.yaml`` differs from what the plan asks is a conflict and is left alone. An
interrupted run is continued with ``gsanet train --resume`` when the context's ``--resume`` is set (or moved aside to
``<name>.incomplete-<time>`` and restarted if it never finished an epoch). Each run holds an exclusive lock while it
trains, so two experiment commands sharing a runs directory never train the same run twice; a run directory whose
lock file (:data:`RUN_LOCK_FILE`) another process holds (a ``gsanet train`` still writing it) is never moved, resumed
nor restarted.

The experiment owns its ``gsanet train`` children (:func:`owned_children`, :func:`spawn`): each runs in its own
process group, which SIGTERM or Ctrl-C of the experiment terminates (each run keeps its last checkpoint); and on Linux
each child asks the kernel for SIGTERM when the experiment dies (``prctl(PR_SET_PDEATHSIG)``, set by a small launcher
that then becomes the train command by ``exec``, so that no Python code runs between ``fork`` and ``exec`` in this
multi-threaded process), so that not even SIGKILL of the experiment leaves a run training unowned. A killed or failed
run is ``failed``, never ``done``.

A finished run is checked before a table counts it (:func:`run_status`): a ``config.yaml`` that is missing or not a
mapping, a ``summary.json`` accuracy outside [0, 100] or not finite, a ``metrics.csv`` with a missing column or an
empty or non-numeric cell, or a ``command.txt`` that is not ``<time> gsanet train ...`` makes it ``damaged``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gsanet.config import load_yaml, upgrade_config
from gsanet.errors import CheckpointError, ConfigError
from gsanet.train.metadata import RunSummary
from gsanet.train.rundir import RunDir, read_summary
from gsanet.train.train_cli import Terminated

from .plans import RunSpec, data_slug

__all__ = [
    "CHILD_LAUNCHER",
    "COMMANDS_FILE",
    "EXPORTED_FILES",
    "RUN_LOCK_FILE",
    "RunStatus",
    "RunnerContext",
    "child_env",
    "execute_run",
    "expected_config",
    "export_run",
    "import_run",
    "interrupted",
    "invocations",
    "owned_children",
    "record_invocation",
    "run_all",
    "run_in_use",
    "run_lock",
    "run_status",
    "say",
    "spawn",
    "train_command",
]

COMMANDS_FILE = "experiment_commands.txt"
"""The file of ``<runs>/<data>/`` that records every ``gsanet experiment`` command that trained there."""

RUN_LOCK_FILE = RunDir(".").lock.name
"""The lock file ``gsanet train`` holds (``fcntl.flock``) in its run directory while it writes there
(:class:`gsanet.train.rundir.RunLock`)."""

METRICS_COLUMNS = ("epoch", "val_top1", "train_seconds")
"""The ``metrics.csv`` columns the experiment reads (the study's curves); each cell must be a finite number."""


@dataclass
class RunStatus:
    """Where a run stands.

    Attributes:
        state: ``done``, ``todo``, ``partial`` (interrupted; resumable if it has a checkpoint), ``diverged`` (the
            training stopped on NaN or infinity: an outcome, never retried; ``summary.json`` says so), ``conflict`` (its
            config differs from the plan's), ``damaged`` (a file of it is unreadable or holds impossible values),
            ``busy`` (another process writes it) or ``failed`` (set by the runner: its train command failed or was
            killed).
        detail: Why, for the user.
        summary: The run's ``summary.json`` when it has one.
        config: The run's ``config.yaml`` when it has one.
    """

    state: str
    detail: str = ""
    summary: RunSummary | None = None
    config: dict[str, Any] | None = None


class _Damaged(Exception):
    """A file of a run directory is unreadable or holds impossible values (the message says which, in one line)."""


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` (None when it has none)."""
    path = RunDir(run_dir).config
    if not path.is_file():
        return None
    try:
        return upgrade_config(load_yaml(path))  # the strict loader: no aliases, duplicate keys or non-regular files
    except ConfigError as e:
        raise _Damaged(f"config.yaml: {' '.join(str(e).split())}") from e


def _percent(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 100:
        raise _Damaged(f"{name} {value!r} is not an accuracy in [0, 100]")


def _check_metrics(path: Path) -> None:
    """Every row of ``metrics.csv`` has the :data:`METRICS_COLUMNS` as finite numbers (accuracies in [0, 100])."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in METRICS_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise _Damaged(f"metrics.csv has no column {', '.join(missing)}")
            for line, row in enumerate(reader, start=2):
                for column in METRICS_COLUMNS:
                    try:
                        value = float(row[column])
                    except (TypeError, ValueError):
                        value = math.nan
                    if not math.isfinite(value):
                        raise _Damaged(f"metrics.csv line {line}: {column} {row[column]!r} is not a finite number")
                    if column == "val_top1":
                        _percent(f"metrics.csv line {line}: val_top1", value)
    except (csv.Error, UnicodeDecodeError, OSError) as e:
        raise _Damaged(f"metrics.csv is unreadable ({e})") from e


def _check_finished(run_dir: Path, config: dict[str, Any] | None, summary: RunSummary) -> None:
    """Refuse a finished run the tables cannot count (see the module's docstring)."""
    if config is None:
        raise _Damaged("it has no config.yaml, so its recipe cannot be checked")
    for key in ("holdout", "val_subset"):  # what the accuracies measured (the tables say it)
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise _Damaged(f"config.yaml {key} {value!r} is not a number of images")
    _percent("summary.json val_top1", summary.val_top1)
    if summary.val_top5 is not None:
        _percent("summary.json val_top5", summary.val_top5)
    if config.get("final_test"):
        if summary.test_top1 is None:
            raise _Damaged("config.yaml asks for a final test but summary.json has no test_top1")
        _percent("summary.json test_top1", summary.test_top1)
        if summary.test_top5 is not None:
            _percent("summary.json test_top5", summary.test_top5)
    seconds = summary.train_seconds
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise _Damaged(f"summary.json train_seconds {seconds!r} is not a finite number of seconds")
    paths = RunDir(run_dir)
    if paths.metrics.is_file():
        _check_metrics(paths.metrics)
    if paths.command.is_file():
        lines = [line for line in paths.command.read_text(errors="replace").splitlines() if line.strip()]
        if not lines or not lines[0].split(" ", 1)[-1].startswith("gsanet train"):
            raise _Damaged("command.txt does not start with a '<time> gsanet train ...' line")


def _config_mismatch(config: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> list[str]:
    found = config or {}
    return [f"{k}: {found.get(k)!r} != {v!r}" for k, v in expected.items() if k in found and found[k] != v]


def _checkpoint(spec: RunSpec) -> Path:
    return RunDir(spec.run_dir).last


def run_status(spec: RunSpec, expected: Mapping[str, Any]) -> RunStatus:
    """The state of a run directory against the config the plan expects (``RunSpec.expected_config``)."""
    run_dir = spec.run_dir
    if not run_dir.exists():
        return RunStatus("todo")
    try:
        config = _read_config(run_dir)
        summary = read_summary(run_dir)
        if summary is not None and summary.finished:
            _check_finished(run_dir, config, summary)
    except (_Damaged, CheckpointError) as e:
        reason = str(e).replace(f"{RunDir(run_dir).summary} ", "summary.json ")
        return RunStatus("damaged", f"run {run_dir} is damaged: {reason}; repair it or move it away")
    mismatch = _config_mismatch(config, expected)
    if mismatch:
        return RunStatus(
            "conflict",
            f"{run_dir} holds a run with another config ({'; '.join(mismatch)}); it is left alone: use another "
            "--runs directory or move it away",
            summary,
            config,
        )
    if summary is not None and summary.finished:
        return RunStatus("done", f"top-1 {summary.val_top1}", summary, config)
    if summary is not None and summary.diverged:
        return RunStatus("diverged", f"the training diverged: {summary.diverged}", summary, config)
    detail = (
        "interrupted after a checkpoint" if _checkpoint(spec).is_file() else "interrupted before its first checkpoint"
    )
    return RunStatus("partial", detail, summary, config)


@contextlib.contextmanager
def run_in_use(run_dir: Path) -> Iterator[bool]:
    """Whether another process holds the run's :data:`RUN_LOCK_FILE`; while the block runs, this one holds it.

    The lock file is opened only when it exists (creating one in a directory about to be moved aside would be
    pointless); without it, nobody holds the run.
    """
    try:
        fd = os.open(run_dir / RUN_LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield True
            return
        yield False
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def run_lock(spec: RunSpec) -> Iterator[bool]:
    """An exclusive, non-blocking lock of one run (released when the process dies); yields whether it was taken."""
    lock_dir = spec.out / "logs"
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
        """Start no further run and send SIGTERM to the process group of every running train command (each keeps
        its last checkpoint)."""
        self.stop.set()
        with self.lock:
            for proc in self.children:
                _terminate(proc)

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
    """For an interrupted run: whether to resume it (else it was moved aside), or its status when it is not to be
    touched (no ``--resume``, or another process writes it)."""
    with run_in_use(spec.run_dir) as busy:
        if busy:
            detail = f"another process holds {spec.run_dir / RUN_LOCK_FILE} (a gsanet train still writing it); skipped"
            say(ctx, f"busy   {spec.name}: {detail}")
            return RunStatus("busy", detail, status.summary, status.config)
        if not ctx.args.resume:
            return RunStatus("partial", f"{status.detail}; continue it with --resume", status.summary, status.config)
        if _checkpoint(spec).is_file():
            return True
        aside = spec.run_dir.with_name(f"{spec.name}.incomplete-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        spec.run_dir.rename(aside)
    say(ctx, f"moved {spec.run_dir} (no checkpoint) to {aside}; starting afresh")
    return False


CHILD_LAUNCHER = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: SIGTERM when the parent dies
    if os.getppid() != int(sys.argv[1]):  # it died before the line above
        sys.exit(128 + signal.SIGTERM)
os.execvp(sys.argv[2], sys.argv[2:])
"""
"""``python -c CHILD_LAUNCHER <parent pid> <command...>`` runs a command so that it dies with the experiment: it sets
the parent-death signal, then becomes the command (the signal survives ``exec``). A separate program rather than a
``preexec_fn``, which is unsafe in a process with threads. The signal follows the death of the parent *thread* that
started the child: the runner's worker threads outlive their children (each waits for its own)."""


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM to a child's process group (the train command and its data loader workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)


def spawn(command: Sequence[str], ctx: RunnerContext, **popen: Any) -> subprocess.Popen:
    """Start a child the experiment owns: in its own process group, registered in ``ctx.children`` (so that
    :meth:`RunnerContext.stop_children` reaches it), terminated at once when the experiment is stopping, and (on
    Linux) sent SIGTERM by the kernel when the experiment's thread that started it dies, even by SIGKILL.

    Remove it from ``ctx.children`` once it has been waited for.
    """
    launcher = [sys.executable, "-c", CHILD_LAUNCHER, str(os.getpid()), *command]
    # its own session, hence its own process group (set between fork and exec, so killpg can never miss it); the
    # child needs no terminal: its output goes to its log
    proc = subprocess.Popen(launcher, env=ctx.env, cwd=os.getcwd(), start_new_session=True, **popen)
    with ctx.lock:
        ctx.children.add(proc)
        if ctx.stop.is_set():  # stop_children ran between this run's start and now
            _terminate(proc)
    return proc


def _train(command: list[str], log_path: Path, ctx: RunnerContext) -> int:
    """Run one train command with its output appended to ``log_path``; return its exit code."""
    with open(log_path, "a") as log:
        log.write(f"# {datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n")
        log.flush()
        proc = spawn(command, ctx, stdout=log, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        finally:
            with ctx.lock:
                ctx.children.discard(proc)


@contextlib.contextmanager
def owned_children(ctx: RunnerContext) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`~gsanet.train.train_cli.Terminated` (a ``KeyboardInterrupt``) in the
    main thread, and any ``KeyboardInterrupt`` stops the children (:meth:`RunnerContext.stop_children`) before it
    propagates. The handler is installed only from the main thread (elsewhere the block only stops the children)."""

    def terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        yield
    except KeyboardInterrupt:
        ctx.stop_children()
        raise
    finally:
        if main:  # None: a handler not set from Python; the default is the closest we can restore
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


EXPORTED_FILES = ("command.txt", "config.yaml", "experiment.json", "metrics.csv", "summary.json")
"""What ``--export`` copies of a finished run: everything the tables read, no checkpoint, plot or event file."""


def export_run(spec: RunSpec, root: str | Path) -> Path | None:
    """Copy a finished (or diverged) run's :data:`EXPORTED_FILES` (and its log) to ``root/<data>/<name>``, e.g. into
    ``results/`` to be committed; return the copy, or None when an identical copy is already there.

    The folder appears whole or not at all (:func:`_copy_whole`). The dataset's ``experiment_commands.txt`` is merged
    in too, so that the report from the copies names the commands.

    Raises:
        ConfigError: A different copy of the run is already there (it is left alone: a finished run is not rewritten).
    """
    source = spec.run_dir
    folder = Path(root) / data_slug(spec.data)
    target = folder / spec.name
    files = [name for name in EXPORTED_FILES if (source / name).is_file()]
    if target.exists():
        if all((target / n).is_file() and (target / n).read_bytes() == (source / n).read_bytes() for n in files):
            return None
        raise ConfigError(
            f"--export: {target} already holds another copy of {spec.name}; it is left alone: move it away or export "
            "somewhere else"
        )
    _copy_whole(source, target, files)
    log = spec.out / "logs" / f"{spec.name}.log"
    if log.is_file():
        (folder / "logs").mkdir(exist_ok=True)
        shutil.copy2(log, folder / "logs" / log.name)
    _merge_lines(spec.out / COMMANDS_FILE, folder / COMMANDS_FILE)
    return target


def _copy_whole(source: Path, target: Path, files: Sequence[str]) -> None:
    """Copy the ``files`` of folder ``source`` into a new folder ``target``: written beside it under a hidden name,
    then renamed into place, so that ``target`` appears whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    for name in files:
        shutil.copy2(source / name, partial / name)
    os.replace(partial, target)


def _merge_lines(source: Path, target: Path) -> None:
    """Append to ``target`` the lines of ``source`` it lacks (recorded commands of several machines and sessions)."""
    if not source.is_file():
        return
    have = target.read_text().splitlines() if target.is_file() else []
    new = [line for line in source.read_text().splitlines() if line.strip() and line not in have]
    if new:
        target.write_text("".join(f"{line}\n" for line in [*have, *new]))


def import_run(spec: RunSpec, root: str | Path) -> bool:
    """Bring an exported copy of a run (:func:`export_run`) back into an empty place in the runs directory, so that a
    new machine or a fresh ``--runs`` continues from the committed runs instead of training them again; return
    whether it did. Only a copy of a finished or diverged run is taken; the place must not exist."""
    copy = Path(root) / data_slug(spec.data) / spec.name
    if spec.run_dir.exists() or not copy.is_dir():
        return False
    try:
        summary = read_summary(copy)
    except CheckpointError:
        return False
    if summary is None or not (summary.finished or summary.diverged):
        return False
    _copy_whole(copy, spec.run_dir, [p.name for p in copy.iterdir() if p.is_file()])
    _merge_lines(copy.parent / COMMANDS_FILE, spec.out / COMMANDS_FILE)
    return True


def _export(spec: RunSpec, ctx: RunnerContext, status: RunStatus) -> RunStatus:
    """``--export``: copy a done or diverged run (once); a refused copy turns the run's state into a failure that
    names why."""
    root = getattr(ctx.args, "export", None)
    if not root or status.state not in ("done", "diverged"):
        return status
    try:
        copied = export_run(spec, root)
    except (ConfigError, OSError) as e:
        say(ctx, f"FAILED export of {spec.name}: {e}")
        return RunStatus("failed", f"finished, but not exported: {e}", status.summary, status.config)
    if copied is not None:
        say(ctx, f"export {spec.name} -> {copied}")
    return status


def execute_run(spec: RunSpec, ctx: RunnerContext) -> RunStatus:
    """Train one run unless it is done, locked elsewhere, conflicting, or interrupted without ``--resume``; with
    ``--export DIR``, take a finished copy from DIR instead of training when the runs directory lacks the run
    (:func:`import_run`), and copy the run to DIR once it is done (:func:`export_run`)."""
    if ctx.stop.is_set():
        return RunStatus("todo", "not started (interrupted)")
    with run_lock(spec) as locked:
        if not locked:
            return RunStatus("todo", "running in another gsanet experiment process (locked); skipped")
        return _export(spec, ctx, _execute_locked(spec, ctx))


def _execute_locked(spec: RunSpec, ctx: RunnerContext) -> RunStatus:
    """Train one run (its lock held): see :func:`execute_run`."""
    root = getattr(ctx.args, "export", None)
    if root and import_run(spec, root):
        say(ctx, f"found  {spec.name} in {root}: taken as it was committed, not trained again")
    status = run_status(spec, expected_config(spec, ctx))
    if status.state in ("done", "diverged", "conflict", "damaged"):
        return status
    resume = _resume_or_restart(spec, ctx, status) if status.state == "partial" else False
    if isinstance(resume, RunStatus):
        return resume
    command = train_command(spec, ctx, resume)
    log_path = spec.out / "logs" / f"{spec.name}.log"
    say(ctx, f"{'resume' if resume else 'start '} {spec.name} ({spec.data})  log: {log_path}")
    start = time.time()
    code = _train(command, log_path, ctx)
    wall = time.time() - start
    status = run_status(spec, expected_config(spec, ctx))
    if status.state == "diverged":
        say(ctx, f"DIVERGED {spec.name}: {status.summary.diverged} ({wall:.0f} s; kept as an outcome, not retried)")
        return status
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


def interrupted(error: KeyboardInterrupt) -> int:
    """Report an interrupted ``gsanet experiment`` on stderr; return its exit code (143 for SIGTERM, else 130)."""
    what = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
    print(f"gsanet experiment: {what}; its train commands were stopped, finished runs are kept, continue with "
          "--resume", file=sys.stderr)  # fmt: skip
    return 128 + signal.SIGTERM if isinstance(error, Terminated) else 130


def run_all(
    specs: Sequence[RunSpec],
    ctx: RunnerContext,
    then: Callable[[Sequence[RunSpec]], Sequence[RunSpec]] | None = None,
) -> list[tuple[RunSpec, RunStatus]]:
    """Run every spec on ``--jobs`` workers, the most expensive first so that the workers finish together; the one
    scheduler of ``gsanet experiment`` (plans and the study).

    Args:
        specs: The runs to start with.
        ctx: The invocation.
        then: Asked at the start and after each finished run, with the runs still pending, for runs that have become
            ready (e.g. a study family's final seeds once its sweep is done); ``[]`` when none.

    Returns:
        Every run with its state, in the order they finished.
    """
    results: list[tuple[RunSpec, RunStatus]] = []
    with ThreadPoolExecutor(max_workers=max(1, ctx.args.jobs)) as pool, owned_children(ctx):  # children stop first
        pending: dict[Future, RunSpec] = {}

        def submit(batch: Sequence[RunSpec]) -> None:
            for spec in sorted(batch, key=lambda s: -s.variant.cost):
                pending[pool.submit(execute_run, spec, ctx)] = spec

        submit(specs)
        while True:
            if then is not None:
                submit(then(list(pending.values())))
            if not pending:
                return results
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            results += [(pending.pop(future), future.result()) for future in done]


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
