"""``gsanet experiment study``: the converged GSA-vs-convolution comparison of :func:`plans.study_plan`.

Usage::

    gsanet experiment study --dry-run            # the sweep runs (the final runs follow from their results)
    gsanet experiment study --jobs 2             # sweep, grow the grid, choose, train the seeds, write the report
    gsanet experiment study --jobs 2 --resume --export results/study_runs   # continue; copy each finished run
    gsanet experiment study --table-only --runs results/study_runs   # the report from the run directories alone

Phases, scheduled on ``--jobs`` single-thread workers:

1. Every family's sweep runs (one per grid point, trained on a subset of the training set minus the held-out split,
   scored on the held-out split).
2. Once every sweep run of the grid is finished, each family's best point is taken (highest final held-out top-1;
   ties: the smaller learning rate, then the smaller weight decay). While any family's choice lies on the grid's
   edge, the grid grows one ladder step beyond that edge, for every family alike (:meth:`Study.extend`), and the
   new points are swept.
3. When the grid brackets every choice (or the ladders end), each family's choice is trained with every final seed
   at every training-set size, smallest size first (a size's runs are released when a worker falls idle), with a
   held-out curve per epoch and one test evaluation after the last epoch (``gsanet train --final-test``).

A final run records its learning rate and weight decay in its ``config.yaml``, so a later sweep result that changes
a choice turns the old final runs into conflicts instead of mixing two choices in one table.

The report (``<out>/study[_<data>].md``) and its data files are regenerated from the run directories alone:
``study_*_runs.csv`` (per final run: model, size, seed, lr, weight decay, test top-1/top-5, training time),
``study_*_sizes.csv`` (per family and size: mean, std, per-seed values, difference from the reference with its 95%
interval and Welch p), ``study_*_sweep.csv`` (per sweep point), ``study_*_curves.csv`` (held-out top-1 per epoch,
size and seed) and the plots ``study_*_curves.png`` (held-out top-1 per epoch, one panel per size),
``study_*_time.png`` (held-out top-1 against cumulative training time at the largest size) and ``study_*_data.png``
(test top-1 against training-set size).
"""

from __future__ import annotations

import csv
import shlex
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsanet.datasets import DATASETS
from gsanet.tables import csv_text, markdown_table, mean_std
from gsanet.train.rundir import RunDir, read_summary

from .plans import Plan, RunSpec, Study, Variant, data_slug
from .results import Row, aggregate
from .runner import (
    RunnerContext,
    RunStatus,
    interrupted,
    record_invocation,
    run_all,
    run_status,
    say,
    train_command,
)
from .runner import invocations as recorded_invocations
from .stats import Welch, welch

__all__ = [
    "FLAT_GAIN",
    "Choice",
    "FamilyResult",
    "SweepState",
    "choose",
    "collect",
    "estimated_minutes",
    "final_specs",
    "run_study",
    "study_command",
    "sweep_specs",
    "sweep_state",
    "write_report",
]

FLAT_GAIN = 0.3
"""Held-out top-1 points the mean curve may still gain over its last two epochs for the report to call it flat."""

Axes = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Choice:
    """The hyper-parameters a family's sweep chose.

    Attributes:
        lr: Learning rate.
        weight_decay: Weight decay.
        holdout_top1: The chosen point's final top-1 on the held-out split.
    """

    lr: float
    weight_decay: float
    holdout_top1: float


def _expected(spec: RunSpec, recipe: Mapping[str, Any]) -> dict[str, Any]:
    return spec.expected_config(recipe, None)


def expected_recipe(ctx: RunnerContext, data: str) -> dict[str, Any]:
    """The recipe values every run of ``data`` must have in its ``config.yaml`` (``--data-dir`` included)."""
    return ctx.expected_recipe(data)


def _points(axes: Axes) -> list[tuple[float, float]]:
    """The grid's points in order: by learning rate, then weight decay (the order that breaks ties)."""
    return [(lr, wd) for lr in axes[0] for wd in axes[1]]


def sweep_specs(study: Study, data: str, runs: str | Path, axes: Axes | None = None) -> dict[str, list[RunSpec]]:
    """The sweep runs of every family over the grid ``axes`` (default: the first grid), by family key."""
    points = _points(axes or study.first_grid)
    return {
        family.key: [
            RunSpec(study.sweep_variant(family, lr, wd), study.sweep_seed, data, Path(runs)) for lr, wd in points
        ]
        for family in study.families
    }


def choose(
    study: Study,
    family: Variant,
    data: str,
    runs: str | Path,
    recipe: Mapping[str, Any],
    axes: Axes | None = None,
) -> tuple[Choice | None, list[tuple[RunSpec, RunStatus]]]:
    """The family's best point of the grid ``axes`` once every sweep run of it is finished or diverged (else None;
    also None when every point diverged), and the sweep's states."""
    specs = sweep_specs(study, data, runs, axes)[family.key]
    states = [(spec, run_status(spec, _expected(spec, recipe))) for spec in specs]
    if any(status.state not in ("done", "diverged") for _, status in states):
        return None, states
    best = None
    for spec, status in states:  # grid order: the earlier point wins a tie; a diverged point is never chosen
        if status.state == "diverged":
            continue
        top1 = float(status.summary.val_top1)
        if best is None or top1 > best.holdout_top1:
            args = spec.variant.train_args
            best = Choice(float(args["lr"]), float(args["weight_decay"]), top1)
    return best, states


@dataclass
class SweepState:
    """Where the sweep stands, from the run directories alone.

    Attributes:
        rounds: The grids swept so far, first to current (each grew from the one before).
        choices: Each family's choice on the current grid (None while its sweep is incomplete).
        states: Each family's sweep runs on the current grid, with their states.
        complete: Every family has chosen and the grid brackets every choice (or cannot grow further).
    """

    rounds: list[Axes]
    choices: dict[str, Choice | None]
    states: dict[str, list[tuple[RunSpec, RunStatus]]]
    complete: bool

    @property
    def axes(self) -> Axes:
        """The current grid."""
        return self.rounds[-1]


def sweep_state(study: Study, data: str, runs: str | Path, recipe: Mapping[str, Any]) -> SweepState:
    """Replay the sweep from its run directories: choose on the first grid, grow it while a choice lies on an edge
    (:meth:`Study.extend`), and stop at the first grid whose sweep is unfinished or that brackets every choice."""
    rounds = [study.first_grid]
    while True:
        choices, states = {}, {}
        for family in study.families:
            choices[family.key], states[family.key] = choose(study, family, data, runs, recipe, rounds[-1])
        if any(c is None for c in choices.values()):
            return SweepState(rounds, choices, states, False)
        grown = study.extend(rounds[-1], [(c.lr, c.weight_decay) for c in choices.values()])
        if grown is None:
            return SweepState(rounds, choices, states, True)
        rounds.append(grown)


def final_specs(study: Study, family: Variant, choice: Choice, data: str, runs: str | Path) -> list[RunSpec]:
    """The final runs of a family with its chosen hyper-parameters: every size (ascending), every seed."""
    return [
        RunSpec(study.final_variant(family, choice.lr, choice.weight_decay, size), seed, data, Path(runs))
        for size in study.sizes
        for seed in study.final_seeds
    ]


def run_study(study: Study, data: str, ctx: RunnerContext) -> list[tuple[RunSpec, RunStatus]]:
    """Train the sweep (growing the grid as :func:`sweep_state` says), then the final runs, smallest size first;
    return every run's state.

    The next size's runs are released when a worker would otherwise fall idle, so that an interrupted study has
    finished whole sizes rather than parts of every size.
    """
    runs = Path(ctx.args.runs)
    recipe = expected_recipe(ctx, data)
    submitted: set[Path] = set()
    finals: list[list[RunSpec]] = []  # per size not yet released, once the sweep is complete
    announced: set[Axes] = set()
    chosen = gave_up = False

    def fresh(specs: Sequence[RunSpec]) -> list[RunSpec]:
        new = [s for s in specs if s.run_dir not in submitted]
        submitted.update(s.run_dir for s in new)
        return new

    def ready(pending: Sequence[RunSpec]) -> list[RunSpec]:
        nonlocal chosen, gave_up
        if gave_up:
            return []
        if not chosen:
            state = sweep_state(study, data, runs, recipe)
            if len(state.rounds) > 1 and state.axes not in announced:
                announced.add(state.axes)
                say(ctx, f"a choice lies on the grid's edge: the grid grows to {_axes_text(state.axes)}")
            swept = [s for states in state.states.values() for s, _ in states]
            if not state.complete:  # finished runs too: they return at once, and --export copies them
                todo = fresh(swept)
                if not todo and not pending:  # a sweep run failed or is locked elsewhere: no choice
                    gave_up = True
                    say(ctx, "the sweep is incomplete (a run failed or is busy): the final runs wait for the next "
                             "invocation")  # fmt: skip
                return todo
            for family in study.families:
                choice = state.choices[family.key]
                say(ctx, f"chose {family.key}: lr {choice.lr:g}, weight decay {choice.weight_decay:g} "
                         f"(held-out top-1 {choice.holdout_top1:.2f}%)")  # fmt: skip
            by_size = {size: [] for size in study.sizes}
            for family in study.families:
                for spec in final_specs(study, family, state.choices[family.key], data, runs):
                    by_size[spec.variant.train_args["train_subset"]].append(spec)
            finals.extend([swept, *(by_size[size] for size in study.sizes)])  # the sweep: to export any not yet copied
            chosen = True
        if len(pending) >= max(1, ctx.args.jobs):
            return []
        while finals:
            batch = fresh(finals.pop(0))
            if batch:
                return batch
        return []

    return run_all([], ctx, then=ready)


# ------------------------------------------------------------------------------------------------------ results
Curve = list[tuple[int, float, float]]


@dataclass
class FamilyResult:
    """One family of the study: its sweep, its choice and its final runs at every size.

    Attributes:
        family: The plan entry.
        sweep: One row per point of every grid swept (``top1`` = held-out top-1), in the order of :func:`_points`.
        choice: The chosen point (None while the sweep is incomplete).
        final: Per training-set size, the final runs over seeds (``top1`` = test top-1); empty without a choice.
        curves: Per size and finished final seed, its per-epoch ``(epoch, held-out top-1, cumulative seconds)``.
        diverged: Keys of the sweep points whose training diverged (never chosen).
    """

    family: Variant
    sweep: list[Row]
    choice: Choice | None
    final: dict[int, Row] = field(default_factory=dict)
    curves: dict[int, dict[int, Curve]] = field(default_factory=dict)
    diverged: set[str] = field(default_factory=set)


def _metrics(run_dir: Path) -> Curve:
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(int(r["epoch"]), float(r["val_top1"]), float(r["train_seconds"])) for r in csv.DictReader(f)]


def collect(
    study: Study, data: str, runs: str | Path, recipe: Mapping[str, Any], macs: bool = True
) -> tuple[SweepState, list[FamilyResult]]:
    """Gather the study's finished runs (nothing is trained): where the sweep stands, and each family's results."""
    state = sweep_state(study, data, runs, recipe)
    results = []
    for family in study.families:
        specs = sweep_specs(study, data, runs, state.axes)[family.key]
        sweep_plan = Plan("sweep", "", tuple(s.variant for s in specs), (study.sweep_seed,), specs[0].variant.key)
        sweep = aggregate(sweep_plan, data, runs, None, recipe, None, macs=False)
        choice = state.choices[family.key] if state.complete else None
        diverged = {spec.variant.key for spec, status in state.states[family.key] if status.state == "diverged"}
        result = FamilyResult(family, sweep, choice, diverged=diverged)
        if choice is not None:
            for size in study.sizes:
                variant = study.final_variant(family, choice.lr, choice.weight_decay, size)
                plan = Plan("final", "", (variant,), study.final_seeds, variant.key)
                row = aggregate(plan, data, runs, None, recipe, None, macs=macs)[0]
                result.final[size] = row
                run_dirs = {seed: RunSpec(variant, seed, data, Path(runs)).run_dir for seed in study.final_seeds}
                result.curves[size] = {
                    seed: _metrics(run_dir) for seed, run_dir in run_dirs.items() if str(run_dir) in row.run_dirs
                }
        results.append(result)
    return state, results


def _finished_seeds(row: Row) -> list[int]:
    return [s for s in row.seeds if s not in row.missing]


def _runs_rows(results: Sequence[FamilyResult], recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for size, row in r.final.items():
            for seed, run_dir, top1, top5, seconds in zip(
                _finished_seeds(row), row.run_dirs, row.top1, row.top5, row.train_seconds, strict=True
            ):
                rows.append(
                    {
                        "model": r.family.model,
                        "key": row.variant.key,
                        "train_images": size,
                        "seed": seed,
                        "epochs": recipe.get("epochs"),
                        "lr": r.choice.lr,
                        "weight_decay": r.choice.weight_decay,
                        "test_top1": f"{top1:.2f}",
                        "test_top5": f"{top5:.2f}",
                        "train_seconds": f"{seconds:.1f}",
                        "params": row.params or "",
                        "macs": row.macs or "",
                        "run_dir": run_dir,
                    }  # fmt: skip
                )
    return rows


def _comparison(study: Study, results: Sequence[FamilyResult], r: FamilyResult, size: int) -> Welch | None:
    """Welch's test of a family against the reference at one size (None without two seeds on both sides)."""
    ref = {x.family.key: x for x in results}.get(study.reference)
    mine, theirs = r.final.get(size), ref.final.get(size) if ref is not None else None
    if r is ref or mine is None or theirs is None:
        return None
    return welch(mine.top1, theirs.top1)


def _sizes_rows(study: Study, results: Sequence[FamilyResult]) -> list[dict[str, Any]]:
    rows = []
    for size in study.sizes:
        for r in results:
            row = r.final.get(size)
            if row is None:
                continue
            w = _comparison(study, results, r, size)
            rows.append({
                "model": r.family.model, "train_images": size, "n": row.n,
                "test_top1_mean": f"{row.mean:.2f}" if row.n else "",
                "test_top1_std": f"{row.std:.2f}" if row.std is not None else "",
                "per_seed": " ".join(f"{a:.2f}" for a in row.top1),
                "diff_vs_reference": f"{w.diff:.2f}" if w is not None else "",
                "ci95_low": f"{w.low:.2f}" if w is not None and w.defined else "",
                "ci95_high": f"{w.high:.2f}" if w is not None and w.defined else "",
                "welch_p": f"{w.p:.3g}" if w is not None and w.defined else "",
                "train_minutes_mean": f"{row.mean_seconds / 60:.1f}" if row.train_seconds else "",
            })  # fmt: skip
    return rows


def _is_chosen(r: FamilyResult, row: Row) -> bool:
    """Whether the sweep point ``row`` is the family's choice."""
    args = row.variant.train_args
    return r.choice is not None and (r.choice.lr, r.choice.weight_decay) == (args["lr"], args["weight_decay"])


def _sweep_rows(results: Sequence[FamilyResult], study: Study) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for row in r.sweep:
            args = row.variant.train_args
            chosen = _is_chosen(r, row)
            rows.append(
                {
                    "model": r.family.model,
                    "key": r.family.key,
                    "lr": args["lr"],
                    "weight_decay": args["weight_decay"],
                    "epochs": study.sweep_epochs,
                    "train_images": study.sweep_subset,
                    "holdout": study.holdout,
                    "seed": study.sweep_seed,
                    "holdout_top1": f"{row.top1[0]:.2f}" if row.top1 else "",
                    "train_seconds": f"{row.train_seconds[0]:.1f}" if row.train_seconds else "",
                    "diverged": "yes" if row.variant.key in r.diverged else "",
                    "chosen": "yes" if chosen else "",
                    "run_dir": row.run_dirs[0] if row.run_dirs else "",
                }  # fmt: skip
            )
    return rows


def _curve_rows(results: Sequence[FamilyResult]) -> list[dict[str, Any]]:
    return [
        {
            "model": r.family.model,
            "train_images": size,
            "seed": seed,
            "epoch": epoch,
            "holdout_top1": f"{top1:.2f}",
            "train_seconds": f"{seconds:.1f}",
        }  # fmt: skip
        for r in results
        for size, curves in r.curves.items()
        for seed, points in curves.items()
        for epoch, top1, seconds in points
    ]


def late_gain(curves: Mapping[int, Curve]) -> float | None:
    """How much the mean held-out curve gained over its last two epochs (points), or None with fewer than three."""
    length = min((len(c) for c in curves.values()), default=0)
    if length < 3:
        return None
    mean = [statistics.fmean(c[i][1] for c in curves.values()) for i in range(length)]
    return mean[-1] - mean[-3]


def _fmt_mean(row: Row | None) -> str:
    return "no finished run" if row is None or not row.n else mean_std(row.mean, row.std, row.n, row.missing)


def _fmt_welch(w: Welch | None) -> tuple[str, str]:
    if w is None:
        return "", "needs 2+ seeds on both sides"
    if not w.defined:
        return f"{w.diff:+.2f}", "p=n/a: no spread over the seeds on either side"
    return (f"{w.diff:+.2f} [{w.low:+.2f}, {w.high:+.2f}]", f"t={w.t:.2f}, df={w.dof:.1f}, p={w.p:.3g}"
            + (" (significant at 5%)" if w.significant else " (not significant at 5%)"))  # fmt: skip


def verdict(results: Sequence[FamilyResult], study: Study, size: int) -> str:
    """One sentence per family against the reference (the conv ResNet) at one size: difference, 95% interval,
    Welch p."""
    by_key = {r.family.key: r for r in results}
    ref = by_key.get(study.reference)
    sentences = []
    for r in results:
        if r is ref:
            continue
        mine, theirs = r.final.get(size), ref.final.get(size) if ref is not None else None
        if mine is None or theirs is None or not mine.n or not theirs.n:
            sentences.append(f"No verdict yet for {r.family.model}: its or the reference's runs are unfinished.")
            continue
        w = _comparison(study, results, r, size)
        if w is None:
            sentences.append(
                f"No verdict yet for {r.family.model}: {mine.mean:.2f}% (n={mine.n}) vs {theirs.mean:.2f}% "
                f"(n={theirs.n}); fewer than two finished seeds on one side."
            )
            continue
        if not w.defined:
            sentences.append(
                f"No verdict for {r.family.model}: {mine.mean:.2f}% vs {theirs.mean:.2f}%, but neither side "
                "varies over its seeds, so Welch's test is undefined (p = n/a)."
            )
            continue
        head = (
            f"{r.family.model} {mine.mean:.2f}% vs {ref.family.model} {theirs.mean:.2f}% test top-1 "
            f"(n={mine.n} and {theirs.n}): difference {w.diff:+.2f} points, 95% CI [{w.low:+.2f}, {w.high:+.2f}], "
            f"Welch p = {w.p:.2g}"
        )
        if not w.significant:
            sentences.append(head + "; no significant difference at this scale.")
        else:
            better = "more" if w.diff > 0 else "less"
            sentences.append(head + f"; {better} accurate than the conv ResNet at this scale.")
    return "\n\n".join(sentences)


def _plots(study: Study, results: Sequence[FamilyResult], out: Path, stem: str, title: str) -> list[Path]:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def band(ax: Any, x: Any, acc: Any, label: str) -> None:
        (line,) = ax.plot(x, acc.mean(axis=0), marker="o", markersize=3, label=label)
        ax.fill_between(x, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.2)

    def arrays(curves: Mapping[int, Curve]) -> tuple[Any, Any] | None:
        length = min((len(points) for points in curves.values()), default=0)
        if not length:
            return None
        acc = np.array([[p[1] for p in points[:length]] for points in curves.values()])
        secs = np.array([[p[2] for p in points[:length]] for points in curves.values()])
        return acc, secs

    paths = []
    # held-out top-1 per epoch, one panel per size
    fig = Figure(figsize=(4.2 * len(study.sizes), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(study.sizes), squeeze=False)[0]
    for ax, size in zip(axes, study.sizes, strict=True):
        for r in results:
            got = arrays(r.curves.get(size, {}))
            if got is not None:
                band(ax, np.arange(1, got[0].shape[1] + 1), got[0], f"{r.family.model} (n={len(got[0])})")
        if not ax.get_legend_handles_labels()[0]:
            ax.text(0.5, 0.5, "no finished run yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(f"{size:,} training images")
        ax.set_xlabel("epoch")
        ax.set_ylabel("held-out top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="mean; band = min-max over seeds", fontsize=8)
    fig.suptitle(f"{title}: held-out top-1 per epoch")
    paths.append(out / f"{stem}_curves.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    # held-out top-1 against training time at the largest size with finished runs
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes = [size for size in study.sizes if any(r.curves.get(size) for r in results)]
    if sizes:
        for r in results:
            got = arrays(r.curves.get(sizes[-1], {}))
            if got is not None:
                band(ax, got[1].mean(axis=0) / 60, got[0], f"{r.family.model} (n={len(got[0])})")
        ax.legend(title="mean; band = min-max over seeds")
    ax.set_xlabel("cumulative training time, mean over seeds (min, one thread)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(f"{title}: against training time" + (f" ({sizes[-1]:,} images)" if sizes else ""))
    ax.grid(alpha=0.3)
    paths.append(out / f"{stem}_time.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    # test top-1 against training-set size
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, r in enumerate(results):
        points = [(size, row) for size, row in r.final.items() if row.n]
        if not points:
            continue
        x = np.array([size for size, _ in points]) * 1.04 ** (i - (len(results) - 1) / 2)  # side by side
        mean = np.array([row.mean for _, row in points])
        low = mean - np.array([min(row.top1) for _, row in points])
        high = np.array([max(row.top1) for _, row in points]) - mean
        label = f"{r.family.model} (n per size: {', '.join(str(row.n) for _, row in points)})"
        ax.errorbar(x, mean, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlim(study.sizes[0] / 1.5, study.sizes[-1] * 1.5)
    ax.set_xticks(list(study.sizes), [f"{size:,}" for size in study.sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{title}: accuracy against data")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="mean; bars = min-max over seeds", fontsize=8)
    paths.append(out / f"{stem}_data.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    return paths


def write_report(
    study: Study,
    state: SweepState,
    results: Sequence[FamilyResult],
    out: str | Path,
    *,
    data: str,
    recipe_path: Path,
    recipe: Mapping[str, Any],
    invocations: Sequence[str] = (),
) -> list[Path]:
    """Write the study's CSVs, plots and markdown report into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = study.name + ("" if data == "fashion-mnist" else f"_{data_slug(data)}")
    files = {
        "runs": (_runs_rows(results, recipe), ["model", "key", "train_images", "seed", "epochs", "lr", "weight_decay",
                 "test_top1", "test_top5", "train_seconds", "params", "macs", "run_dir"]),
        "sizes": (_sizes_rows(study, results), ["model", "train_images", "n", "test_top1_mean", "test_top1_std",
                  "per_seed", "diff_vs_reference", "ci95_low", "ci95_high", "welch_p", "train_minutes_mean"]),
        "sweep": (_sweep_rows(results, study), ["model", "key", "lr", "weight_decay", "epochs", "train_images",
                  "holdout", "seed", "holdout_top1", "train_seconds", "diverged", "chosen", "run_dir"]),
        "curves": (_curve_rows(results), ["model", "train_images", "seed", "epoch", "holdout_top1", "train_seconds"]),
    }  # fmt: skip
    paths = []
    for name, (rows, fields) in files.items():
        path = out / f"{stem}_{name}.csv"
        path.write_text(csv_text(fields, rows))
        paths.append(path)
    paths += _plots(study, results, out, stem, study.title.split(":")[0])
    path = out / f"{stem}.md"
    path.write_text("\n".join(_report_lines(study, state, results, data, recipe_path, recipe, invocations, stem)))
    return [*paths, path]


def _measured_line(results: Sequence[FamilyResult]) -> str:
    """What the numbers measured, from the runs' ``config.yaml`` (:func:`~.results.measured_split`)."""
    final = sorted({m for r in results for row in r.final.values() for m in row.measured})
    sweep = sorted({m for r in results for row in r.sweep for m in row.measured})
    none = "no finished run yet"
    return (
        f"Measured on (from the runs' `config.yaml`): final runs: {'; '.join(final) or none}; sweep runs: "
        f"{'; '.join(sweep) or none}."
    )


def _axes_text(axes: Axes) -> str:
    return f"lr {{{', '.join(f'{v:g}' for v in axes[0])}}} x weight decay {{{', '.join(f'{v:g}' for v in axes[1])}}}"


def _edge_choices(study: Study, state: SweepState) -> str:
    """What the grid says about the choices: bracketed, or which lie on an edge the ladder cannot pass."""
    if not state.complete:
        return "The sweep is not finished: the grid may still grow, and no family has a choice yet."
    lrs, wds = state.axes
    edges = []
    for key, choice in state.choices.items():
        sides = [
            f"{name} {value:g} is the {'largest' if value == values[-1] else 'smallest'} the ladder allows"
            for name, value, values in (("lr", choice.lr, lrs), ("weight decay", choice.weight_decay, wds))
            if len(values) > 1 and value in (values[0], values[-1])
        ]
        if sides:
            edges.append(f"`{study.family(key).model}` ({', '.join(sides)})")
    if not edges:
        return (
            "Every family's choice lies inside the final grid, in both learning rate and weight decay: the grid "
            "brackets each family's optimum at the sweep's budget."
        )
    return (
        "Choices on the edge of the grid, where the ladder ends: " + "; ".join(edges) + ". A value beyond the ladder "
        "might do better for these families; every family had the same grid and budget."
    )


def _final_table(study: Study, results: Sequence[FamilyResult], size: int) -> str:
    table = []
    for r in results:
        f = r.final.get(size)
        w = _comparison(study, results, r, size)
        ci, test = _fmt_welch(w) if r.family.key != study.reference else ("(reference)", "")
        table.append([
            f"`{r.family.model}`", _fmt_mean(f),
            " ".join(f"{a:.2f}" for a in f.top1) if f else "", ci, test,
            f"{r.choice.lr:g} / {r.choice.weight_decay:g}" if r.choice else "sweep incomplete",
            f"{f.params / 1e6:.2f}M" if f and f.params else "", f"{f.macs / 1e6:.1f}M" if f and f.macs else "",
            f"{statistics.fmean(f.train_seconds) / 60:.1f}" if f and f.train_seconds else "",
        ])  # fmt: skip
    cols = ["model", "test top-1 % (mean ± std)", "per seed", f"Δ vs {study.reference} [95% CI]", "Welch t-test",
            "lr / wd", "params", "MACs", "train min"]  # fmt: skip
    return markdown_table(cols, table)


def _flatness(results: Sequence[FamilyResult], size: int) -> list[str]:
    lines = []
    for r in results:
        curves = r.curves.get(size) or {}
        gain = late_gain(curves)
        if gain is None:
            continue
        verdict_ = "flat" if gain < FLAT_GAIN else "still rising"
        lines.append(f"- `{r.family.model}`: {gain:+.2f} points over the last two epochs (mean of {len(curves)} "
                     f"seeds): {verdict_}.")  # fmt: skip
    return lines


def _throughput(rows: Sequence[Row]) -> tuple[float, float] | None:
    """Median training and evaluation images per second over the finished runs of ``rows`` (None without any)."""
    train, evaluate = [], []
    for row in rows:
        for run_dir in row.run_dirs:
            summary = read_summary(run_dir)
            if summary is not None and summary.images_per_s and summary.eval_images_per_s:
                train.append(summary.images_per_s)
                evaluate.append(summary.eval_images_per_s)
    return (statistics.median(train), statistics.median(evaluate)) if train else None


def estimated_minutes(study: Study, epochs: int, size: int, speed: tuple[float, float], test_images: int) -> float:
    """The predicted length of one final run: ``epochs`` passes over ``size`` images and over the held-out split,
    then the test set once, at the family's sweep throughput (one thread per run, as the sweep ran)."""
    train, evaluate = speed
    return (epochs * (size / train + study.holdout / evaluate) + test_images / evaluate) / 60


def _cost_lines(study: Study, results: Sequence[FamilyResult], recipe: Mapping[str, Any], data: str) -> list[str]:
    """The time plan: per family and size, the predicted minutes of a final run (from the sweep's throughput) beside
    the measured ones, and the CPU-hours the unfinished final runs still need."""
    epochs = int(recipe.get("epochs") or 0)
    spec = DATASETS.get(data)
    test_images = spec.test_images if spec is not None else 0
    table, left = [], 0.0
    for r in results:
        finals = [row for row in r.final.values() if row.n]  # this study's own runs, when there are some
        speed = _throughput(finals) or _throughput(r.sweep)
        if speed is None:
            continue
        source = "final runs" if finals else "sweep"
        cells = [f"`{r.family.model}`", f"{speed[0]:.0f} / {speed[1]:.0f} ({source})"]
        for size in study.sizes:
            guess = estimated_minutes(study, epochs, size, speed, test_images)
            row = r.final.get(size)
            done = f", measured {row.mean_seconds / 60:.0f}" if row is not None and row.train_seconds else ""
            cells.append(f"{guess:.0f}{done}")
            unfinished = len(study.final_seeds) - (row.n if row is not None else 0)
            left += unfinished * guess / 60
        table.append(cells)
    if not table:
        return []
    cols = ["model", "img/s train / eval (median)", *(f"min per run, {size:,} images" for size in study.sizes)]
    return [
        "## Time plan", "",
        "Predicted minutes of one final run on one CPU thread (the recipe's epochs over the training images and the "
        "held-out split, then the test set once, at the median throughput of the family's finished final runs, or "
        "of its sweep runs before there are any), beside the measured mean of the finished runs (training plus "
        "held-out evaluation; the test evaluation is not in it).",
        "", markdown_table(cols, table), "",
        f"The unfinished final runs need about {left:.1f} CPU-hours more (two at a time on a 2-core machine: "
        f"{left / 2:.1f} hours).", "",
    ]  # fmt: skip


def _report_lines(
    study: Study,
    state: SweepState,
    results: Sequence[FamilyResult],
    data: str,
    recipe_path: Path,
    recipe: Mapping[str, Any],
    invocations: Sequence[str],
    stem: str,
) -> list[str]:
    sizes = ", ".join(f"{size:,}" for size in study.sizes)
    lines = [f"# {study.title} ({data})", ""]
    lines.append(
        "Written by `gsanet experiment study` (gsanet/experiments/study.py) from the run directories alone. "
        f"Protocol: {study.holdout:,} images of the training set are held out (a fixed split, the same for every run); "
        f"each model family trains once per (learning rate, weight decay) point of the grid for {study.sweep_epochs} "
        f"epochs on {study.sweep_subset:,} of the other images (seed {study.sweep_seed}), and the point with the best "
        "final held-out top-1 is chosen. The grid starts at "
        f"{_axes_text(study.first_grid)} and grows by one step of its ladder beyond any edge a family's choice lies "
        "on, for every family alike, until it brackets every choice. The chosen point is then trained with seeds "
        f"{', '.join(map(str, study.final_seeds))} on {sizes} of the non-held-out training images (fixed subsets, "
        "the same images for every family and seed), validated on the held-out split after every epoch, and evaluated "
        "on the test set once, after the last epoch. No choice ever saw the test set."
    )
    lines += [
        "",
        f"Final recipe: `{recipe_path}`: "
        + ", ".join(
            f"{k}={recipe[k]}"
            for k in ("epochs", "warmup_epochs", "batch_size", "opt", "sched", "smoothing", "augment", "amp")
            if k in recipe
        )  # fmt: skip
        + " (the same number of epochs at every size, so a smaller set also gets proportionally fewer updates).",
        "",
    ]
    lines += [_measured_line(results), ""]
    if invocations:
        lines += ["Commands that ran the study:", "", "```", *invocations, "```", ""]
    lines += ["## Verdict", ""]
    for size in study.sizes:
        lines += [f"**{size:,} training images.** " + verdict(results, study, size), ""]
    table = []
    for r in results:
        cells = [f"`{r.family.model}`"]
        for size in study.sizes:
            row, w = r.final.get(size), _comparison(study, results, r, size)
            cell = _fmt_mean(row) if row is not None else "sweep incomplete"
            if w is not None and w.defined:
                cell += f"; Δ {w.diff:+.2f} [{w.low:+.2f}, {w.high:+.2f}], p = {w.p:.2g}"
            cells.append(cell)
        table.append(cells)
    lines += ["## Accuracy against training-set size", "",
              markdown_table(["model", *(f"{size:,} images" for size in study.sizes)], table), "",
              f"Test top-1 % (mean ± std over seeds); Δ: difference from `{study.reference}` with its 95% interval and "
              f"Welch p. Plot: `{stem}_data.png`; data: `{stem}_sizes.csv`.", ""]  # fmt: skip
    for size in reversed(study.sizes):
        name = "The whole training set" if size == study.sizes[-1] else "Final runs"
        lines += [f"## {name}: {size:,} training images", "", _final_table(study, results, size), ""]
        flat = _flatness(results, size)
        if flat:
            lines += [f"Held-out curve at the end of the schedule (flat: a gain below {FLAT_GAIN} points over the last "
                      "two epochs; a cosine schedule flattens its own end, so this is a necessary test of convergence, "
                      "not a sufficient one):", "", *flat, ""]  # fmt: skip
    lines.append(
        "Mean ± sample standard deviation over seeds of the one test evaluation after the last epoch. Δ: difference "
        "of means with the 95% confidence interval of Welch's t distribution. MACs: multiply-adds of one 28x28 image "
        "as computed (`gsanet.models.flops.count_macs`). Training time: training plus the per-epoch held-out "
        "evaluation on one CPU thread per run, two runs at a time on a 2-core machine: compare orders of magnitude "
        f"only. Plots: `{stem}_curves.png` (held-out top-1 per epoch), `{stem}_time.png` (against training time); "
        f"per-seed data: `{stem}_runs.csv`, `{stem}_curves.csv`."
    )
    lines += ["", *_cost_lines(study, results, recipe, data)]
    lines += ["## Sweep (held-out split)", ""]
    rounds = "; ".join(f"{i + 1}. {_axes_text(axes)}" for i, axes in enumerate(state.rounds))
    lines += [f"Grids swept, in order: {rounds}.", ""]
    table = []
    for r in results:
        for row in r.sweep:
            args = row.variant.train_args
            chosen = _is_chosen(r, row)
            top1 = f"{row.top1[0]:.2f}" if row.top1 else "diverged" if row.variant.key in r.diverged else "not finished"
            table.append(
                [f"`{r.family.model}`", f"{args['lr']:g}", f"{args['weight_decay']:g}", top1, "**chosen**" * chosen]
            )
    lines += [markdown_table(["model", "lr", "weight decay", "held-out top-1 %", ""], table), ""]
    lines.append(
        f"One seed per point on {study.sweep_epochs} epochs: the sweep ranks the points, and differences between "
        "points below about a point are within seed noise."
    )
    lines += ["", _edge_choices(study, state)]
    lines += ["", "## Runs", "", "Each final run's `gsanet train` command (also `command.txt` in its run directory):",
              "", "```"]  # fmt: skip
    for r in results:
        for row in r.final.values():
            lines += row.commands
    lines += ["```", ""]
    return lines


def invocations(runs: str | Path, data: str) -> list[str]:
    """The ``gsanet experiment study`` commands recorded in the runs directory."""
    return recorded_invocations(runs, data, containing=" study")


def dry_run(study: Study, data: str, ctx: RunnerContext) -> None:
    """Print the current grid's sweep runs with their states and commands, then the final runs or what they wait
    for."""
    recipe = expected_recipe(ctx, data)
    state = sweep_state(study, data, ctx.args.runs, recipe)
    print(
        f"grid: {_axes_text(state.axes)}"
        + (f" (grown {len(state.rounds) - 1} time(s))" if len(state.rounds) > 1 else "")
    )
    for family in study.families:
        for spec, status in state.states[family.key]:
            print(f"{status.state:8s} {spec.run_dir}  {status.detail}".rstrip())
            print(f"         {shlex.join(train_command(spec, ctx, False))}")
    if not state.complete:
        count = f"{len(study.sizes)} sizes x {len(study.final_seeds)} seeds per family"
        print(f"the final runs ({count}) follow the sweep's choices")
        return
    for family in study.families:
        for spec in final_specs(study, family, state.choices[family.key], data, ctx.args.runs):
            status = run_status(spec, _expected(spec, recipe))
            print(f"{status.state:8s} {spec.run_dir}  {status.detail}".rstrip())
            print(f"         {shlex.join(train_command(spec, ctx, False))}")


def study_command(args: Any, argv: Sequence[str], datasets: Sequence[str], ctx: RunnerContext) -> int:
    """``gsanet experiment study``: train (unless ``--dry-run``/``--table-only``), then write the report.

    Returns 0 when every run of the study is finished (or for a dry run / table-only), 1 when a run is not or a train
    command failed in this invocation, 130 (Ctrl-C) or 143 (SIGTERM) when interrupted.
    """
    from .plans import study_plan

    study = study_plan()
    if args.dry_run:
        for data in datasets:
            dry_run(study, data, ctx)
        return 0
    complete = True
    for data in datasets:
        if not args.table_only:
            record_invocation(ctx, argv, data)
            try:
                results = run_study(study, data, ctx)
            except KeyboardInterrupt as e:
                return interrupted(e)
            for spec, status in results:
                if status.state == "diverged":  # an outcome: a sweep point is never chosen, a final seed is missing
                    print(f"diverged: {spec.run_dir}: {status.detail}", file=sys.stderr)
                elif status.state != "done":  # failed, killed, busy, damaged: never counted, the study is not complete
                    complete = False
                    print(f"{status.state}: {spec.run_dir}: {status.detail}", file=sys.stderr)
        recipe_path, _ = ctx.recipes[data]
        recipe = expected_recipe(ctx, data)
        state, found = collect(study, data, args.runs, recipe, macs=not args.no_macs)
        complete &= state.complete and all(
            size in r.final and not r.final[size].missing for r in found for size in study.sizes
        )
        paths = write_report(
            study, state, found, args.out, data=data, recipe_path=recipe_path, recipe=recipe,
            invocations=invocations(args.runs, data),
        )  # fmt: skip
        print("report: " + "  ".join(map(str, paths)))
    return 0 if complete or args.table_only else 1
