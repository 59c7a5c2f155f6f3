"""``gsanet experiment``: train the plans of :mod:`gsanet.experiments.plans` over seeds and tabulate the results.

Usage::

    gsanet experiment compare --dry-run                  # the runs and their gsanet train commands
    gsanet experiment all --jobs 2                       # compare + ablations, two single-thread runs at a time
    gsanet experiment compare --seeds 0 1 2 --epochs 3   # override the recipe's seeds / epochs
    gsanet experiment ablations --resume                 # continue interrupted runs from their last checkpoint
    gsanet experiment all --table-only                   # only (re)write the tables from the finished runs

Every run is one ``python -m gsanet.cli train --config <recipe> ...`` subprocess writing
``<runs>/<data>/<variant>-s<seed>/`` (summary.json, checkpoints, metrics.csv, command.txt) and a log
``<runs>/<data>/logs/<variant>-s<seed>.log``. A run whose ``summary.json`` says it finished is never started again
nor overwritten; one whose ``config.yaml`` differs from what the plan asks (another recipe, another ``--epochs``) is
reported as a conflict and left alone (use another ``--runs``). An interrupted run is continued with
``gsanet train --resume`` when ``--resume`` is given (or moved aside to ``<name>.incomplete-<time>`` and restarted if
it never finished an epoch). Each run holds an exclusive lock while it trains, so two experiment commands sharing a
runs directory never train the same run twice.

The tables (``<out>/experiment_<plan>[_<data>].{csv,md}``) give, per model, the mean and standard deviation over the
seeds of the final test top-1 accuracy (Fashion-MNIST's 10,000-image test split is the train command's validation
set), the parameters and multiply-adds at the run's input size, and the training time; every skipped variant with
its reason, and the exact commands.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import io
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from .plans import (
    ABLATION_FACTORS,
    BASELINE_SETTINGS,
    CIFAR_FOLDERS,
    DATASET_CONFIGS,
    GROUP_SETTINGS,
    Plan,
    RunSpec,
    Variant,
    data_slug,
    expand,
    get_plan,
)

__all__ = [
    "DATA_SHAPES",
    "RunStatus",
    "RunnerContext",
    "Row",
    "aggregate",
    "build_parser",
    "child_env",
    "execute_run",
    "load_recipe",
    "main",
    "resolve_datasets",
    "run_status",
    "say",
    "write_tables",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_SHAPES = {"fashion-mnist": (10, 1, 28), "cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}
"""``(num_classes, in_chans, native size)`` of each dataset, for the parameter and MAC counts of the tables."""
STUDY_CONFIG = "configs/study_fmnist.yaml"
PLAN_CHOICES = ("compare", "ablations", "all", "study")


def build_parser() -> argparse.ArgumentParser:
    """The ``gsanet experiment`` parser."""
    p = argparse.ArgumentParser(
        prog="gsanet experiment",
        description="Train GSA-ResNet, its convolutional ResNet, timm's attention peers and the GSA ablations over "
        "seeds with one shared recipe, then write mean +- std tables.",
    )
    p.add_argument(
        "plan",
        choices=PLAN_CHOICES,
        help="compare, ablations, all (both; shared runs run once), or study (the converged comparison: "
        "hyper-parameters chosen per family on a held-out split, then seeds; gsanet/experiments/study.py)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every variant (default: compare 0 1 2, ablations 0)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    per_data = ", ".join(f"{k}: {v}" for k, v in DATASET_CONFIGS.items())
    p.add_argument(
        "--config",
        help=f"recipe (gsanet train --config YAML) for every dataset (default: per dataset, {per_data}; the study: "
        f"{STUDY_CONFIG})",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=["auto"],
        help="datasets: fashion-mnist, cifar10, cifar100, or auto = fashion-mnist plus every CIFAR present in "
        "--data-dir (default: auto)",
    )
    p.add_argument("--data-dir", help="dataset root (default: the recipe's data_dir)")
    p.add_argument("--out", default="results", help="directory of the tables (default: results)")
    p.add_argument(
        "--runs", help="parent of the run directories (default: runs/study for the study, else runs/experiments)"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default: 1)")
    p.add_argument(
        "--threads",
        type=int,
        help="compute threads per run (OMP_NUM_THREADS); default: 1 when --jobs > 1, else torch's choice",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; train nothing")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs (default: report them)")
    p.add_argument("--table-only", action="store_true", help="only write the tables from the finished runs")
    p.add_argument("--no-macs", action="store_true", help="leave the MAC column empty (no model is built)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the train subprocesses")
    return p


# ---------------------------------------------------------------------------------------------------- recipes
def load_recipe(path: str | Path) -> dict[str, Any]:
    """The values of a recipe YAML (a ``gsanet train --config`` file), validated against ``TrainConfig``.

    Raises:
        ValueError: Unknown keys, wrong types, or a key the runner sets itself.
    """
    from gsanet.train.config import ConfigError, TrainConfig, load_yaml, resolve_config

    values = load_yaml(path)
    try:
        resolve_config(TrainConfig, {}, path)
    except ConfigError as e:
        raise ValueError(f"recipe {path}: {e}") from e
    clash = {"model", "model_kwargs", "seed", "output", "name"} & set(values)
    if clash:
        raise ValueError(f"recipe {path} sets {sorted(clash)}; the experiment plan sets them, remove them")
    return values


def resolve_datasets(requested: Sequence[str], data_dir: str | Path) -> list[str]:
    """Expand ``auto`` into Fashion-MNIST plus every CIFAR whose torchvision folder is in ``data_dir``."""
    datasets: list[str] = []
    for item in requested:
        names = ["fashion-mnist", *(n for n, f in CIFAR_FOLDERS.items() if (Path(data_dir) / f).is_dir())]
        for name in names if item == "auto" else [item]:
            if name not in datasets:
                datasets.append(name)
    return datasets


def _recipe_path(data: str, config: str | None, study: bool = False) -> Path:
    if config is not None:
        return Path(config)
    if study:
        if data != "fashion-mnist":
            raise ValueError(f"the study has a default recipe for fashion-mnist only; pass --config for {data}")
        path = Path(STUDY_CONFIG)
        return path if path.exists() else REPO_ROOT / path
    if data not in DATASET_CONFIGS:
        raise ValueError(f"no default recipe for --data {data}; pass --config")
    path = Path(DATASET_CONFIGS[data])
    return path if path.exists() else REPO_ROOT / path


# --------------------------------------------------------------------------------------------------- run state
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
    summary: dict[str, Any] | None = None


def _config_mismatch(run_dir: Path, expected: Mapping[str, Any]) -> list[str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    found = yaml.safe_load(path.read_text()) or {}
    return [f"{k}: {found.get(k)!r} != {v!r}" for k, v in expected.items() if k in found and found[k] != v]


def run_status(spec: RunSpec, expected: Mapping[str, Any]) -> RunStatus:
    """The state of a run directory against the config the plan expects (``RunSpec.expected_config``)."""
    run_dir = spec.run_dir
    if not run_dir.exists():
        return RunStatus("todo")
    mismatch = _config_mismatch(run_dir, expected)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if mismatch:
        return RunStatus(
            "conflict",
            f"{run_dir} holds a run with another config ({'; '.join(mismatch)}); it is left alone: use another "
            "--runs directory or move it away",
            summary,
        )
    if summary is not None and summary.get("finished", summary.get("epochs") == summary.get("epochs_planned")):
        return RunStatus("done", f"top-1 {summary.get('val_top1')}", summary)
    has_ckpt = (run_dir / "checkpoints" / "last.safetensors").is_file()
    detail = "interrupted after a checkpoint" if has_ckpt else "interrupted before its first checkpoint"
    return RunStatus("partial", detail, summary)


@contextlib.contextmanager
def _run_lock(spec: RunSpec) -> Iterator[bool]:
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


# ------------------------------------------------------------------------------------------------------ runner
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


def train_command(spec: RunSpec, ctx: RunnerContext, resume: bool) -> list[str]:
    prefix = [ctx.args.python, "-m", "gsanet.cli", "train"]
    if resume:
        return [*prefix, "--resume", str(spec.run_dir), "--no-progress"]
    config, _ = ctx.recipes[spec.data]
    return [*prefix, *spec.train_args(config, epochs=ctx.args.epochs, data_dir=ctx.args.data_dir)]


def _expected(spec: RunSpec, ctx: RunnerContext) -> dict[str, Any]:
    _, recipe = ctx.recipes[spec.data]
    expected = spec.expected_config(recipe, ctx.args.epochs)
    if ctx.args.data_dir is not None:
        expected["data_dir"] = ctx.args.data_dir
    return expected


def say(ctx: RunnerContext, text: str) -> None:
    with ctx.lock:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def execute_run(spec: RunSpec, ctx: RunnerContext) -> RunStatus:
    """Train one run unless it is done, locked elsewhere, conflicting, or interrupted without ``--resume``."""
    if ctx.stop.is_set():
        return RunStatus("todo", "not started (interrupted)")
    with _run_lock(spec) as locked:
        if not locked:
            return RunStatus("todo", "running in another gsanet experiment process (locked); skipped")
        status = run_status(spec, _expected(spec, ctx))
        if status.state in ("done", "conflict"):
            return status
        resume = False
        if status.state == "partial":
            if not ctx.args.resume:
                return RunStatus("partial", f"{status.detail}; continue it with --resume", status.summary)
            if (spec.run_dir / "checkpoints" / "last.safetensors").is_file():
                resume = True
            else:
                aside = spec.run_dir.with_name(f"{spec.name}.incomplete-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
                spec.run_dir.rename(aside)
                say(ctx, f"moved {spec.run_dir} (no checkpoint) to {aside}; starting afresh")
        command = train_command(spec, ctx, resume)
        log_path = spec.output / "logs" / f"{spec.name}.log"
        say(ctx, f"{'resume' if resume else 'start '} {spec.name} ({spec.data})  log: {log_path}")
        start = time.time()
        with open(log_path, "a") as log:
            log.write(f"# {datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ctx.env, cwd=os.getcwd())
            with ctx.lock:
                ctx.children.add(proc)
            try:
                code = proc.wait()
            finally:
                with ctx.lock:
                    ctx.children.discard(proc)
        wall = time.time() - start
        status = run_status(spec, _expected(spec, ctx))
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
        say(ctx, f"done   {spec.name}: test top-1 {status.summary['val_top1']:.2f}%  ({wall:.0f} s)")
        return status


def _run_all(specs: Sequence[RunSpec], ctx: RunnerContext) -> list[tuple[RunSpec, RunStatus]]:
    order = sorted(specs, key=lambda s: -s.variant.cost)  # longest first: the workers finish together
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


# ------------------------------------------------------------------------------------------------- aggregation
@dataclass
class Row:
    """One variant of a table, aggregated over its seeds.

    Attributes:
        variant: The plan entry.
        data: Dataset.
        seeds: Seeds planned.
        top1: Final test top-1 (%) of each finished seed, in seed order.
        top5: Final test top-5 (%) of each finished seed.
        train_seconds: Training time (train + per-epoch evaluation) of each finished seed.
        params: Parameters (from the runs' summaries, else counted).
        macs: Multiply-adds of one image at the run's input size, as computed.
        algorithmic_macs: The same with GSA modules at the cost of their equations.
        input_size: ``(C, H, W)`` of the runs.
        run_dirs: The finished runs.
        commands: The ``gsanet train`` command of each finished run.
        missing: Seeds without a finished run.
    """

    variant: Variant
    data: str
    seeds: tuple[int, ...]
    top1: list[float] = field(default_factory=list)
    top5: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    params: int | None = None
    macs: int | None = None
    algorithmic_macs: int | None = None
    input_size: tuple[int, int, int] | None = None
    run_dirs: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Finished seeds."""
        return len(self.top1)

    @property
    def mean(self) -> float | None:
        """Mean test top-1 over the finished seeds."""
        return statistics.fmean(self.top1) if self.top1 else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1) of the test top-1; None below two seeds."""
        return statistics.stdev(self.top1) if len(self.top1) > 1 else None

    @property
    def mean_top5(self) -> float | None:
        """Mean test top-5."""
        return statistics.fmean(self.top5) if self.top5 else None

    @property
    def mean_seconds(self) -> float | None:
        """Mean training time."""
        return statistics.fmean(self.train_seconds) if self.train_seconds else None


def _run_command(run_dir: Path) -> str:
    path = run_dir / "command.txt"
    if not path.is_file():
        return ""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    first = lines[0].split(" ", 1)[1] if lines else ""  # "<timestamp> gsanet train ..."
    return first


def aggregate(
    plan: Plan,
    data: str,
    runs: str | Path,
    seeds: Sequence[int] | None = None,
    recipe: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    macs: bool = True,
) -> list[Row]:
    """Collect the finished runs of ``plan`` on ``data`` into one :class:`Row` per variant.

    Args:
        plan: The plan.
        data: Dataset.
        runs: Parent directory of the run directories.
        seeds: Seeds of every variant (None: the plan's / variant's defaults).
        recipe: When given, runs whose ``config.yaml`` disagrees with it are left out (see :func:`run_status`).
        epochs: The ``--epochs`` override the runs were asked for.
        macs: Count parameters and multiply-adds by building each model (else only the runs' parameter counts).
    """
    rows = []
    for variant in plan.variants:
        variant_seeds = tuple(seeds if seeds is not None else (variant.seeds or plan.default_seeds))
        row = Row(variant, data, variant_seeds)
        if not variant.skip_reason:
            for seed in variant_seeds:
                spec = RunSpec(variant, seed, data, Path(runs))
                status = run_status(spec, spec.expected_config(recipe, epochs) if recipe is not None else {})
                if status.state != "done":
                    row.missing.append(seed)
                    continue
                s = status.summary
                row.top1.append(float(s["val_top1"]))
                row.top5.append(float(s["val_top5"]) if s.get("val_top5") is not None else math.nan)
                row.train_seconds.append(float(s["train_seconds"]))
                row.params = int(s["params"]) if s.get("params") is not None else row.params
                row.run_dirs.append(str(spec.run_dir))
                row.commands.append(_run_command(spec.run_dir))
        num_classes, in_chans, size = DATA_SHAPES.get(data, (None, 3, 224))
        size = variant.train_args.get("img_size") or (recipe or {}).get("img_size") or size
        row.input_size = (in_chans, size, size)
        if macs and num_classes is not None:
            _count(row, num_classes)
        rows.append(row)
    return rows


def _count(row: Row, num_classes: int) -> None:
    """Fill in the parameters and MACs of a row by building its model (the GSA models register on import)."""
    import logging

    from gsanet.models.flops import count_macs, count_params
    from gsanet.train.engine import create_model

    in_chans, size, _ = row.input_size
    logging.getLogger("timm").setLevel(logging.ERROR)
    try:
        model = create_model(
            row.variant.model,
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=size,
            model_kwargs=dict(row.variant.model_kwargs),
        )
        count = count_macs(model, row.input_size)
    except Exception as e:  # noqa: BLE001  (a model that cannot be built at this size: the table says so)
        row.variant = Variant(**{**row.variant.__dict__, "note": f"{row.variant.note}; not buildable: {e}".strip("; ")})
        return
    row.params = row.params or count_params(model)
    row.macs, row.algorithmic_macs = count.macs, count.algorithmic_macs


# ------------------------------------------------------------------------------------------------------ tables
def _fmt_acc(row: Row) -> str:
    if row.variant.skip_reason:
        return "not run"
    if not row.n:
        return "no finished run"
    text = f"{row.mean:.2f}" + (f" ± {row.std:.2f}" if row.std is not None else "")
    text += f" (n={row.n})"
    return text + (f", missing seeds {row.missing}" if row.missing else "")


def _fmt_count(value: int | None, unit: float, suffix: str) -> str:
    return "" if value is None else f"{value / unit:.2f}{suffix}"


def _fmt_macs(row: Row) -> str:
    if row.macs is None:
        return ""
    text = f"{row.macs / 1e6:.1f}M"
    if row.algorithmic_macs is not None and row.algorithmic_macs != row.macs:
        text += f" ({row.algorithmic_macs / 1e6:.1f}M)"
    return text


def _fmt_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _csv_rows(rows: Sequence[Row], baseline: Row | None) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        v = row.variant
        out.append(
            {
                "key": v.key,
                "model": v.model,
                "label": v.label,
                "model_kwargs": json.dumps(dict(v.model_kwargs)) if v.model_kwargs else "",
                "train_args": json.dumps(dict(v.train_args)) if v.train_args else "",
                "factor": v.factor,
                "setting": v.setting,
                "data": row.data,
                "input_size": "x".join(map(str, row.input_size)) if row.input_size else "",
                "seeds": " ".join(map(str, row.seeds)),
                "n": row.n,
                "top1_mean": f"{row.mean:.4f}" if row.mean is not None else "",
                "top1_std": f"{row.std:.4f}" if row.std is not None else "",
                "top1_per_seed": " ".join(f"{a:.2f}" for a in row.top1),
                "top5_mean": f"{row.mean_top5:.4f}" if row.mean_top5 is not None else "",
                "delta_vs_baseline": (
                    f"{row.mean - baseline.mean:.4f}"
                    if baseline is not None and row.mean is not None and baseline.mean is not None
                    else ""
                ),
                "params": row.params if row.params is not None else "",
                "macs": row.macs if row.macs is not None else "",
                "algorithmic_macs": row.algorithmic_macs if row.algorithmic_macs is not None else "",
                "train_seconds_mean": f"{row.mean_seconds:.1f}" if row.mean_seconds is not None else "",
                "status": "skipped" if v.skip_reason else ("complete" if not row.missing else "incomplete"),
                "note": v.skip_reason or v.note,
                "run_dirs": " ".join(row.run_dirs),
            }
        )
    return out


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _recipe_text(recipe_path: Path, recipe: Mapping[str, Any], epochs: int | None) -> str:
    keys = ("train_subset", "epochs", "warmup_epochs", "batch_size", "opt", "lr", "weight_decay", "smoothing", "sched")
    values = dict(recipe, **({"epochs": epochs} if epochs is not None else {}))
    subset = values.get("train_subset")
    parts = [f"{k}={values[k]}" for k in keys if k in values]
    head = f"`{_display_path(recipe_path)}`: " + ", ".join(parts)
    if subset:
        head += f" (a fixed {subset}-image subset of the training set, the same for every run)"
    return head


def _display_path(path: str | Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _invocations(runs: str | Path, data: str) -> list[str]:
    path = Path(runs) / data_slug(data) / "experiment_commands.txt"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _verdict(a: Row, b: Row, what: str) -> str:
    """A sentence comparing two rows' mean accuracy against their seed-to-seed spread."""
    if a.mean is None or b.mean is None:
        return f"{what}: not enough finished runs to compare."
    diff = a.mean - b.mean
    spread = [r.std for r in (a, b) if r.std is not None]
    text = f"{what}: {a.mean:.2f}% vs {b.mean:.2f}%, difference {diff:+.2f} points"
    if len(spread) == 2 and a.n > 1 and b.n > 1:
        se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
        text += f" (standard error {se:.2f}; "
        if abs(diff) <= 2 * se:
            text += "within 2 standard errors: no significant difference at this budget)"
        else:
            text += f"{'higher' if diff > 0 else 'lower'} by more than 2 standard errors)"
    else:
        text += " (one seed: no error estimate)"
    return text + "."


def _common_header(
    title: str, data: str, recipe_path: Path, recipe: Mapping[str, Any], epochs: int | None, runs: str | Path
) -> list[str]:
    lines = [f"# {title} ({data})", ""]
    lines.append(
        "Written by `gsanet experiment` (gsanet/experiments/cli.py) from the `summary.json` of every finished run; "
        "test top-1 = accuracy (%) after the last epoch on the full test set (10,000 images for Fashion-MNIST), "
        "mean ± sample standard deviation over seeds. Parameters and MACs (multiply-adds of one image, as computed "
        "by `gsanet.models.flops.count_macs`) at the runs' input size. Training time = seconds of training plus "
        "the per-epoch test evaluation, on a 2-core CPU shared with other jobs, usually two runs at once with one "
        "thread each: noisy, compare orders of magnitude only."
    )
    lines += ["", f"Recipe: {_recipe_text(recipe_path, recipe, epochs)}.", ""]
    invocations = _invocations(runs, data)
    if invocations:
        lines += ["Commands that ran the experiments:", "", "```"]
        lines += invocations
        lines += ["```", ""]
    return lines


def _commands_section(rows: Sequence[Row]) -> list[str]:
    lines = ["## Runs", "", "Each run's `gsanet train` command (also in its run directory, `command.txt`):", "", "```"]
    for row in rows:
        lines += row.commands
    lines += ["```", ""]
    return lines


def write_tables(
    plan: Plan,
    rows: Sequence[Row],
    out: str | Path,
    *,
    data: str,
    recipe_path: Path,
    recipe: Mapping[str, Any],
    epochs: int | None = None,
    runs: str | Path = "runs/experiments",
    spread: Row | None = None,
) -> tuple[Path, Path]:
    """Write ``experiment_<plan>[_<data>].csv`` and ``.md`` into ``out``; return their paths.

    Args:
        plan: The plan.
        rows: Its rows (:func:`aggregate`).
        out: Output directory.
        data: Dataset.
        recipe_path: The recipe file (quoted in the tables).
        recipe: Its values.
        epochs: The ``--epochs`` override, if any.
        runs: Parent of the run directories (for the recorded experiment commands).
        spread: The baseline over several seeds, quoted in the ablation table as the seed-to-seed noise level.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"experiment_{plan.name}" + ("" if data == "fashion-mnist" else f"_{data_slug(data)}")
    by_key = {r.variant.key: r for r in rows}
    baseline = by_key.get(plan.baseline)
    csv_rows = _csv_rows(rows, baseline)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(csv_rows[0]) if csv_rows else ["key"])
    writer.writeheader()
    writer.writerows(csv_rows)
    csv_path = out / f"{stem}.csv"
    csv_path.write_text(buffer.getvalue())

    lines = _common_header(plan.title, data, recipe_path, recipe, epochs, runs)
    if plan.name == "compare":
        lines += _compare_body(rows, baseline)
    else:
        lines += _ablation_body(rows, by_key, baseline, spread)
    lines += _commands_section(rows)
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(lines))
    return csv_path, md_path


def _delta(row: Row, reference: Row | None) -> str:
    """``row``'s mean accuracy minus the reference row's, in points ("" for the reference itself or a missing mean)."""
    if reference is None or row is reference or row.mean is None or reference.mean is None:
        return ""
    return f"{row.mean - reference.mean:+.2f}"


def _compare_body(rows: Sequence[Row], conv: Row | None) -> list[str]:
    table = []
    for row in rows:
        delta = _delta(row, conv)
        table.append(
            [
                f"`{row.variant.model}`" + (f" {format_kwargs(row.variant)}" if row.variant.model_kwargs else ""),
                "x".join(map(str, row.input_size[1:])) if row.input_size else "",
                _fmt_acc(row),
                delta,
                _fmt_count(row.params, 1e6, "M"),
                _fmt_macs(row),
                _fmt_seconds(row.mean_seconds),
                row.variant.skip_reason or row.variant.note,
            ]
        )
    cols = ["model", "input", "test top-1 % (mean ± std)", "Δ vs conv", "params", "MACs", "train s", "note"]
    lines = ["## Results", "", _md_table(cols, table), ""]
    gsa = next((r for r in rows if r.variant.key == "gsa_resnet26_tiny"), None)
    if gsa is not None and conv is not None:
        lines += ["## Reading", ""]
        lines.append("- " + _verdict(gsa, conv, "GSA-ResNet-26 tiny vs ResNet-26 tiny (3x3 conv)"))
        if gsa.params and conv.params and gsa.macs and conv.macs:
            lines.append(
                f"- GSA has {gsa.params / conv.params:.2f}x the parameters and {gsa.macs / conv.macs:.2f}x the MACs "
                f"of the conv ResNet (algorithmic MACs {gsa.algorithmic_macs / conv.macs:.2f}x); its training took "
                f"{(gsa.mean_seconds or 0) / (conv.mean_seconds or 1):.1f}x as long on this CPU."
            )
        for peer in rows:
            if peer not in (gsa, conv) and peer.mean is not None:
                lines.append("- " + _verdict(gsa, peer, f"GSA vs {peer.variant.label}"))
        lines.append(
            "- The peers are timm's ImageNet configurations scaled to a similar parameter count; their stride-32 "
            "layout leaves 2x2 and 1x1 maps for attention at this input size, so they are not a like-for-like "
            "test of attention design (the paper's peer comparison is on ImageNet)."
        )
        lines.append("")
    return lines


def format_kwargs(variant: Variant) -> str:
    """``model_kwargs`` as ``key=value`` text for the tables."""
    from .plans import format_kwarg

    return " ".join(f"{k}={format_kwarg(v)}" for k, v in variant.model_kwargs.items())


def _ablation_body(
    rows: Sequence[Row], by_key: Mapping[str, Row], baseline: Row | None, spread: Row | None = None
) -> list[str]:
    lines = []
    if baseline is not None:
        lines.append(f"Baseline: `gsa_resnet26_tiny` = {baseline.variant.setting}.")
    seeds = sorted({s for r in rows for s in r.seeds})
    if len(seeds) == 1:
        noise = ""
        if spread is not None and spread.std is not None:
            noise = (
                f" The baseline over the {spread.n} seeds of the comparison: "
                f"{spread.mean:.2f} ± {spread.std:.2f}, so differences below about "
                f"{2 * spread.std:.1f} points are within seed-to-seed noise."
            )
        lines.append(
            f"One seed per variant (seed {seeds[0]}) to fit the CPU budget: a single run per row, no error bars."
            + noise
        )
    lines.append(
        "MACs: as computed by the implementation (in parentheses: at the cost of the GSA equations, when different; "
        "a windowed span runs densely over the axis, so it costs what the global span costs)."
    )
    lines.append("")
    table = []
    for factor, keys in ABLATION_FACTORS.items():
        for key in keys:
            row = by_key.get(key)
            if row is None:
                continue
            setting = GROUP_SETTINGS.get((factor, key)) or (
                BASELINE_SETTINGS.get(factor, row.variant.setting)
                if key == "gsa_resnet26_tiny"
                else row.variant.setting
            )
            if key == "gsa_resnet26_tiny":
                setting += " (baseline)"
            delta = _delta(row, baseline)
            table.append(
                [
                    factor,
                    setting,
                    f"`{row.variant.key}`",
                    _fmt_acc(row),
                    delta,
                    _fmt_count(row.params, 1e6, "M"),
                    _fmt_macs(row),
                    _fmt_seconds(row.mean_seconds),
                    row.variant.skip_reason or row.variant.note,
                ]
            )
    cols = ["factor", "setting", "run", "test top-1 %", "Δ vs baseline", "params", "MACs", "train s", "note"]
    lines += ["## Results", "", _md_table(cols, table), ""]
    lines += ["## Variants", "", "Model and arguments of each run key:", ""]
    for row in rows:
        kwargs = f" with `{format_kwargs(row.variant)}`" if row.variant.model_kwargs else ""
        lines.append(f"- `{row.variant.key}`: `{row.variant.model}`{kwargs}: {row.variant.label}")
    lines.append("")
    return lines


# -------------------------------------------------------------------------------------------------------- main
def _plans(name: str) -> list[Plan]:
    return [get_plan("compare"), get_plan("ablations")] if name == "all" else [get_plan(name)]


def child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    threads = args.threads if args.threads is not None else (1 if args.jobs > 1 else None)
    if threads is not None:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gsanet experiment``; returns 0 when every requested run is finished (or a dry run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if (
        args.jobs < 1
        or (args.threads is not None and args.threads < 1)
        or (args.epochs is not None and args.epochs < 1)
    ):
        print("gsanet experiment: error: --jobs, --threads and --epochs must be >= 1", file=sys.stderr)
        return 2
    study = args.plan == "study"
    if study and (args.seeds is not None or args.epochs is not None):
        print("gsanet experiment: error: the study's seeds and epochs are its protocol's (plans.study_plan and "
              f"{STUDY_CONFIG}); remove --seeds/--epochs", file=sys.stderr)  # fmt: skip
        return 2
    if args.runs is None:
        args.runs = "runs/study" if study else "runs/experiments"
    try:
        plans = [] if study else _plans(args.plan)
        first_recipe = load_recipe(_recipe_path("fashion-mnist", args.config, study))
        data_dir = args.data_dir or first_recipe.get("data_dir", "data")
        datasets = ["fashion-mnist"] if study and args.data == ["auto"] else resolve_datasets(args.data, data_dir)
        recipes = {}
        for data in datasets:
            path = _recipe_path(data, args.config, study)
            recipes[data] = (path, load_recipe(path))
        specs = expand(plans, datasets, args.runs, args.seeds)
    except (ValueError, KeyError) as e:
        print(f"gsanet experiment: error: {e}", file=sys.stderr)
        return 2
    ctx = RunnerContext(args, recipes, child_env(args))
    if study:
        from . import study as study_module

        return study_module.main(args, argv, datasets, ctx)

    if args.dry_run or args.table_only:
        counts: dict[str, int] = {}
        if args.dry_run:
            threads = ctx.env.get("OMP_NUM_THREADS", "default")
            print(f"{len(specs)} runs ({', '.join(datasets)}); threads per run: {threads}")
        for spec in specs:
            status = run_status(spec, _expected(spec, ctx))
            counts[status.state] = counts.get(status.state, 0) + 1
            if args.dry_run:
                print(f"{status.state:8s} {spec.run_dir}  {status.detail}".rstrip())
                print(f"         {shlex.join(train_command(spec, ctx, False))}")
        for plan in plans:
            for variant in plan.variants:
                if variant.skip_reason and args.dry_run:
                    print(f"skipped  {plan.name}/{variant.key}: {variant.skip_reason}")
        if args.dry_run:
            print("states: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            return 0
    else:
        for data in datasets:
            folder = Path(args.runs) / data_slug(data)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "experiment_commands.txt", "a") as f:
                threads = ctx.env.get("OMP_NUM_THREADS")
                env = f"OMP_NUM_THREADS={threads} " if threads else ""
                f.write(
                    f"{env}gsanet experiment {shlex.join(argv)}   # {datetime.now().isoformat(timespec='seconds')}\n"
                )
        try:
            results = _run_all(specs, ctx)
        except KeyboardInterrupt:
            print("gsanet experiment: interrupted; finished runs are kept, continue with --resume", file=sys.stderr)
            return 130
        bad = [(s, r) for s, r in results if r.state != "done"]
        for spec, status in bad:
            print(f"{status.state}: {spec.run_dir}: {status.detail}", file=sys.stderr)

    for data in datasets:
        path, recipe = recipes[data]
        expected_recipe = dict(recipe, **({"data_dir": args.data_dir} if args.data_dir else {}))
        for plan in plans:
            rows = aggregate(plan, data, args.runs, args.seeds, expected_recipe, args.epochs, macs=not args.no_macs)
            spread = None
            if plan.name == "ablations":
                compare = get_plan("compare")
                spread = aggregate(compare, data, args.runs, None, expected_recipe, args.epochs, macs=False)[0]
            csv_path, md_path = write_tables(
                plan, rows, args.out, data=data, recipe_path=path, recipe=recipe, epochs=args.epochs, runs=args.runs,
                spread=spread,
            )  # fmt: skip
            print(f"tables: {csv_path}  {md_path}")
    if args.table_only:
        return 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
