"""``gsanet experiment study``: the converged GSA-vs-convolution comparison of :func:`plans.study_plan`.

Usage::

    gsanet experiment study --dry-run            # the sweep runs (the final runs follow from their results)
    gsanet experiment study --jobs 2             # sweep, choose, train the seeds, write the report
    gsanet experiment study --jobs 2 --resume    # continue after an interruption
    gsanet experiment study --table-only --runs results/study_runs   # the report from the run directories alone

Phases, scheduled on ``--jobs`` single-thread workers: every family's sweep runs (one per grid point, trained on the
training set minus the held-out split, scored on the held-out split); as soon as a family's sweep is complete, its
best point (highest final held-out top-1; ties: the earlier grid point) is trained with every final seed on the
training set and evaluated on the test set. A final run records its learning rate and weight decay in its
``config.yaml``, so a later sweep result that changes a choice turns the old final runs into conflicts instead of
mixing two choices in one table.

The report (``<out>/study[_<data>].md``) and its data files are regenerated from the run directories alone:
``study_*_runs.csv`` (per final seed: model, seed, epochs, lr, weight decay, test top-1/top-5, training time),
``study_*_sweep.csv`` (per sweep point), ``study_*_curves.csv`` (test top-1 per epoch and seed) and the plots
``study_*_curves.png`` (test top-1 per epoch, mean and min-max over seeds) and ``study_*_time.png`` (test top-1
against cumulative training time).
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

from gsanet.tables import csv_text, markdown_table, mean_std
from gsanet.train.rundir import RunDir

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
    "Choice",
    "FamilyResult",
    "choose",
    "collect",
    "final_specs",
    "run_study",
    "study_command",
    "sweep_specs",
    "write_report",
]


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


def sweep_specs(study: Study, data: str, runs: str | Path) -> dict[str, list[RunSpec]]:
    """The sweep runs of every family, by family key, in grid order."""
    return {
        family.key: [
            RunSpec(study.sweep_variant(family, lr, wd), study.sweep_seed, data, Path(runs)) for lr, wd in study.grid
        ]
        for family in study.families
    }


def choose(
    study: Study, family: Variant, data: str, runs: str | Path, recipe: Mapping[str, Any]
) -> tuple[Choice | None, list[tuple[RunSpec, RunStatus]]]:
    """The family's best grid point once every sweep run of it is finished (else None), and the sweep's states."""
    states = [(spec, run_status(spec, _expected(spec, recipe))) for spec in sweep_specs(study, data, runs)[family.key]]
    if any(status.state != "done" for _, status in states):
        return None, states
    best = None
    for spec, status in states:  # grid order: the earlier point wins a tie
        top1 = float(status.summary.val_top1)
        if best is None or top1 > best.holdout_top1:
            args = spec.variant.train_args
            best = Choice(float(args["lr"]), float(args["weight_decay"]), top1)
    return best, states


def final_specs(study: Study, family: Variant, choice: Choice, data: str, runs: str | Path) -> list[RunSpec]:
    """The final runs of a family with its chosen hyper-parameters."""
    variant = study.final_variant(family, choice.lr, choice.weight_decay)
    return [RunSpec(variant, seed, data, Path(runs)) for seed in study.final_seeds]


def run_study(study: Study, data: str, ctx: RunnerContext) -> list[tuple[RunSpec, RunStatus]]:
    """Train the sweep, then each family's final seeds as soon as its sweep is complete; return every run's state.

    Families are started most expensive first so that the parallel workers finish together.
    """
    runs = Path(ctx.args.runs)
    recipe = expected_recipe(ctx, data)
    waiting = [f.key for f in study.families]

    def finals_ready(pending: Sequence[RunSpec]) -> list[RunSpec]:
        """The final runs of every family whose sweep has just become complete."""
        ready = []
        for key in list(waiting):
            family = study.family(key)
            choice, states = choose(study, family, data, runs, recipe)
            if choice is not None:
                waiting.remove(key)
                say(ctx, f"chose {key}: lr {choice.lr:g}, weight decay {choice.weight_decay:g} "
                         f"(held-out top-1 {choice.holdout_top1:.2f}%)")  # fmt: skip
                ready += final_specs(study, family, choice, data, runs)
            elif not any(s in pending for s, _ in states):  # a sweep run failed or is locked elsewhere: no choice
                waiting.remove(key)
                say(ctx, f"{key}: sweep incomplete, its final runs wait for the next invocation")
        return ready

    sweep = [spec for family in study.families for spec in sweep_specs(study, data, runs)[family.key]]
    return run_all(sweep, ctx, then=finals_ready)


# ------------------------------------------------------------------------------------------------------ results
@dataclass
class FamilyResult:
    """One family of the study: its sweep, its choice and its final runs.

    Attributes:
        family: The plan entry.
        sweep: One row per grid point (``top1`` = held-out top-1).
        choice: The chosen point (None while the sweep is incomplete).
        final: The final runs over seeds (``top1`` = test top-1), None without a choice.
        curves: Per finished final seed, its per-epoch ``(epoch, test top-1, cumulative training seconds)``.
    """

    family: Variant
    sweep: list[Row]
    choice: Choice | None
    final: Row | None
    curves: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)


def _metrics(run_dir: Path) -> list[tuple[int, float, float]]:
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(int(r["epoch"]), float(r["val_top1"]), float(r["train_seconds"])) for r in csv.DictReader(f)]


def collect(
    study: Study, data: str, runs: str | Path, recipe: Mapping[str, Any], macs: bool = True
) -> list[FamilyResult]:
    """Gather the study's finished runs (nothing is trained)."""
    results = []
    for family in study.families:
        specs = sweep_specs(study, data, runs)[family.key]
        sweep_plan = Plan("sweep", "", tuple(s.variant for s in specs), (study.sweep_seed,), specs[0].variant.key)
        sweep = aggregate(sweep_plan, data, runs, None, recipe, None, macs=False)
        choice, _ = choose(study, family, data, runs, recipe)
        final, curves = None, {}
        if choice is not None:
            variant = study.final_variant(family, choice.lr, choice.weight_decay)
            plan = Plan("final", "", (variant,), study.final_seeds, variant.key)
            final = aggregate(plan, data, runs, None, recipe, None, macs=macs)[0]
            for seed in study.final_seeds:
                spec = RunSpec(variant, seed, data, Path(runs))
                if str(spec.run_dir) in final.run_dirs:
                    curves[seed] = _metrics(spec.run_dir)
        results.append(FamilyResult(family, sweep, choice, final, curves))
    return results


def _runs_rows(results: Sequence[FamilyResult], recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.final is None:
            continue
        for seed, run_dir, top1, top5, seconds in zip(
            r.final.seeds if not r.final.missing else [s for s in r.final.seeds if s not in r.final.missing],
            r.final.run_dirs, r.final.top1, r.final.top5, r.final.train_seconds, strict=True,
        ):  # fmt: skip
            rows.append(
                {
                    "model": r.family.model,
                    "key": r.family.key,
                    "seed": seed,
                    "epochs": recipe.get("epochs"),
                    "train_subset": recipe.get("train_subset") or "",
                    "lr": r.choice.lr,
                    "weight_decay": r.choice.weight_decay,
                    "test_top1": f"{top1:.2f}",
                    "test_top5": f"{top5:.2f}",
                    "train_seconds": f"{seconds:.1f}",
                    "params": r.final.params or "",
                    "macs": r.final.macs or "",
                    "run_dir": run_dir,
                }  # fmt: skip
            )
    return rows


def _sweep_rows(results: Sequence[FamilyResult], study: Study) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for row in r.sweep:
            args = row.variant.train_args
            chosen = r.choice is not None and (r.choice.lr, r.choice.weight_decay) == (args["lr"], args["weight_decay"])
            rows.append(
                {
                    "model": r.family.model,
                    "key": r.family.key,
                    "lr": args["lr"],
                    "weight_decay": args["weight_decay"],
                    "epochs": study.sweep_epochs,
                    "holdout": study.holdout,
                    "seed": study.sweep_seed,
                    "holdout_top1": f"{row.top1[0]:.2f}" if row.top1 else "",
                    "train_seconds": f"{row.train_seconds[0]:.1f}" if row.train_seconds else "",
                    "chosen": "yes" if chosen else "",
                    "run_dir": row.run_dirs[0] if row.run_dirs else "",
                }  # fmt: skip
            )
    return rows


def _curve_rows(results: Sequence[FamilyResult]) -> list[dict[str, Any]]:
    return [
        {
            "model": r.family.model,
            "key": r.family.key,
            "seed": seed,
            "epoch": epoch,
            "test_top1": f"{top1:.2f}",
            "train_seconds": f"{seconds:.1f}",
        }  # fmt: skip
        for r in results
        for seed, points in r.curves.items()
        for epoch, top1, seconds in points
    ]


def _fmt_mean(row: Row | None) -> str:
    return "no finished run" if row is None or not row.n else mean_std(row.mean, row.std, row.n, row.missing)


def _fmt_welch(w: Welch | None) -> tuple[str, str]:
    if w is None:
        return "", "needs 2+ seeds on both sides"
    if not w.defined:
        return f"{w.diff:+.2f}", "p=n/a: no spread over the seeds on either side"
    return (f"{w.diff:+.2f} [{w.low:+.2f}, {w.high:+.2f}]", f"t={w.t:.2f}, df={w.dof:.1f}, p={w.p:.3g}"
            + (" (significant at 5%)" if w.significant else " (not significant at 5%)"))  # fmt: skip


def verdict(results: Sequence[FamilyResult], study: Study) -> str:
    """One sentence per family against the reference (the conv ResNet): difference, 95% interval, Welch p."""
    by_key = {r.family.key: r for r in results}
    ref = by_key.get(study.reference)
    sentences = []
    for r in results:
        if r is ref:
            continue
        if ref is None or r.final is None or ref.final is None:
            sentences.append(f"No verdict yet for {r.family.model}: its or the reference's final runs are unfinished.")
            continue
        w = welch(r.final.top1, ref.final.top1)
        if w is None:
            sentences.append(f"No verdict yet for {r.family.model}: fewer than two finished seeds on one side.")
            continue
        if not w.defined:
            sentences.append(
                f"No verdict for {r.family.model}: {r.final.mean:.2f}% vs {ref.final.mean:.2f}%, but neither side "
                "varies over its seeds, so Welch's test is undefined (p = n/a)."
            )
            continue
        head = (
            f"{r.family.model} {r.final.mean:.2f}% vs {ref.family.model} {ref.final.mean:.2f}% test top-1: "
            f"difference {w.diff:+.2f} points, 95% CI [{w.low:+.2f}, {w.high:+.2f}], Welch p = {w.p:.2g}"
        )
        if not w.significant:
            sentences.append(head + "; no significant difference at this scale.")
        else:
            better = "more" if w.diff > 0 else "less"
            sentences.append(head + f"; {better} accurate than the conv ResNet at this scale.")
    return "\n\n".join(sentences)


def _plots(results: Sequence[FamilyResult], out: Path, stem: str, title: str) -> list[Path]:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for kind in ("curves", "time"):
        fig = Figure(figsize=(7, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for r in results:
            if not r.curves:
                continue
            length = min(len(points) for points in r.curves.values())
            if not length:
                continue
            acc = np.array([[p[1] for p in points[:length]] for points in r.curves.values()])
            secs = np.array([[p[2] for p in points[:length]] for points in r.curves.values()])
            x = np.arange(1, length + 1) if kind == "curves" else secs.mean(axis=0) / 60
            label = f"{r.family.model} (n={len(acc)})"
            (line,) = ax.plot(x, acc.mean(axis=0), marker="o", markersize=3, label=label)
            ax.fill_between(x, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch" if kind == "curves" else "cumulative training time, mean over seeds (min, one thread)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(title + (": test top-1 per epoch" if kind == "curves" else ": test top-1 against training time"))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="mean; band = min-max over seeds")
        path = out / f"{stem}_{kind}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths


def write_report(
    study: Study,
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
        "runs": (_runs_rows(results, recipe), ["model", "key", "seed", "epochs", "train_subset", "lr", "weight_decay",
                 "test_top1", "test_top5", "train_seconds", "params", "macs", "run_dir"]),
        "sweep": (_sweep_rows(results, study), ["model", "key", "lr", "weight_decay", "epochs", "holdout", "seed",
                  "holdout_top1", "train_seconds", "chosen", "run_dir"]),
        "curves": (_curve_rows(results), ["model", "key", "seed", "epoch", "test_top1", "train_seconds"]),
    }  # fmt: skip
    paths = []
    for name, (rows, fields) in files.items():
        path = out / f"{stem}_{name}.csv"
        path.write_text(csv_text(fields, rows))
        paths.append(path)
    paths += _plots(results, out, stem, study.title.split(":")[0])
    path = out / f"{stem}.md"
    path.write_text("\n".join(_report_lines(study, results, data, recipe_path, recipe, invocations, stem)))
    return [*paths, path]


def _measured_line(results: Sequence[FamilyResult]) -> str:
    """What the numbers measured, from the runs' ``config.yaml`` (:func:`~.results.measured_split`)."""
    final = sorted({m for r in results if r.final for m in r.final.measured})
    sweep = sorted({m for r in results for row in r.sweep for m in row.measured})
    none = "no finished run yet"
    return (
        f"Measured on (from the runs' `config.yaml`): final runs: {'; '.join(final) or none}; sweep runs: "
        f"{'; '.join(sweep) or none}."
    )


def _edge_choices(study: Study, results: Sequence[FamilyResult]) -> str:
    """A warning naming the families whose chosen point lies on the edge of the grid ("" when none does)."""
    lrs, wds = sorted({lr for lr, _ in study.grid}), sorted({wd for _, wd in study.grid})
    edges = []
    for r in results:
        if r.choice is None:
            continue
        sides = [
            f"{name} {value:g} is the grid's {'largest' if value == values[-1] else 'smallest'}"
            for name, value, values in (("lr", r.choice.lr, lrs), ("weight decay", r.choice.weight_decay, wds))
            if len(values) > 1 and value in (values[0], values[-1])
        ]
        if sides:
            edges.append(f"`{r.family.model}` ({', '.join(sides)})")
    if not edges:
        return ""
    return (
        "Choices on the edge of the grid: " + "; ".join(edges) + ". A wider grid may find better values for these "
        "families; every family had the same grid and budget, so the comparison is fair at this budget, but it is "
        "not a claim about each family's optimum."
    )


def _report_lines(
    study: Study,
    results: Sequence[FamilyResult],
    data: str,
    recipe_path: Path,
    recipe: Mapping[str, Any],
    invocations: Sequence[str],
    stem: str,
) -> list[str]:
    grid = ", ".join(f"({lr:g}, {wd:g})" for lr, wd in study.grid)
    subset = recipe.get("train_subset")
    lines = [f"# {study.title} ({data})", ""]
    lines.append(
        "Written by `gsanet experiment study` (gsanet/experiments/study.py) from the run directories alone. "
        f"Protocol: {study.holdout:,} images of the training set are held out (a fixed split, the same for every run); "
        f"each model family trains once per (learning rate, weight decay) point of the grid {grid} for "
        f"{study.sweep_epochs} epochs on the rest (seed {study.sweep_seed}) and the point with the best final "
        f"held-out top-1 is chosen; that point is then trained with seeds {', '.join(map(str, study.final_seeds))} "
        f"on the training set with the full schedule and evaluated on the test set, which no choice ever saw."
    )
    lines += ["", f"Final recipe: `{recipe_path}`: " + ", ".join(
        f"{k}={recipe[k]}" for k in ("train_subset", "epochs", "warmup_epochs", "batch_size", "opt", "sched",
                                    "smoothing", "augment") if k in recipe)  # fmt: skip
        + (f" (a fixed {subset:,}-image subset of the training set, the same images for every run: the scale this "
           "project's 2-core CPU allows)." if subset else "."), ""]  # fmt: skip
    lines += [_measured_line(results), ""]
    if invocations:
        lines += ["Commands that ran the study:", "", "```", *invocations, "```", ""]
    lines += ["## Verdict", "", verdict(results, study), ""]
    by_key = {r.family.key: r for r in results}
    ref = by_key.get(study.reference)
    table = []
    for r in results:
        w = welch(r.final.top1, ref.final.top1) if r.final and ref and ref.final and r is not ref else None
        ci, test = _fmt_welch(w) if r is not ref else ("(reference)", "")
        f = r.final
        table.append([
            f"`{r.family.model}`", _fmt_mean(f),
            " ".join(f"{a:.2f}" for a in f.top1) if f else "", ci, test,
            f"{r.choice.lr:g} / {r.choice.weight_decay:g}" if r.choice else "sweep incomplete",
            f"{f.params / 1e6:.2f}M" if f and f.params else "", f"{f.macs / 1e6:.1f}M" if f and f.macs else "",
            f"{statistics.fmean(f.train_seconds) / 60:.1f}" if f and f.train_seconds else "",
        ])  # fmt: skip
    cols = ["model", "test top-1 % (mean ± std)", "per seed", f"Δ vs {study.reference} [95% CI]", "Welch t-test",
            "lr / wd", "params", "MACs", "train min"]  # fmt: skip
    lines += ["## Final runs", "", markdown_table(cols, table), ""]
    lines.append(
        "Mean ± sample standard deviation over seeds of the test top-1 after the last epoch. Δ: difference of means "
        "with the 95% confidence interval of Welch's t distribution. MACs: multiply-adds of one 28x28 image as "
        "computed (`gsanet.models.flops.count_macs`). Training time: training plus the per-epoch test evaluation on "
        "one CPU thread per run, two runs at a time on a 2-core machine that also ran other jobs: compare orders of "
        f"magnitude only. Plots: `{stem}_curves.png` (test top-1 per epoch), `{stem}_time.png` (against training "
        f"time); per-seed data: `{stem}_runs.csv`, `{stem}_curves.csv`."
    )
    lines += ["", "## Sweep (held-out split)", ""]
    table = []
    for r in results:
        for row in r.sweep:
            args = row.variant.train_args
            chosen = r.choice is not None and (r.choice.lr, r.choice.weight_decay) == (args["lr"], args["weight_decay"])
            top1 = f"{row.top1[0]:.2f}" if row.top1 else "not finished"
            table.append(
                [f"`{r.family.model}`", f"{args['lr']:g}", f"{args['weight_decay']:g}", top1, "**chosen**" * chosen]
            )
    lines += [markdown_table(["model", "lr", "weight decay", "held-out top-1 %", ""], table), ""]
    lines.append(
        f"One seed per point on {study.sweep_epochs} epochs: the sweep ranks the points, and differences between "
        "points below about a point are within seed noise."
    )
    edges = _edge_choices(study, results)
    if edges:
        lines += ["", edges]
    lines += ["", "## Runs", "", "Each final run's `gsanet train` command (also `command.txt` in its run directory):",
              "", "```"]  # fmt: skip
    for r in results:
        if r.final is not None:
            lines += r.final.commands
    lines += ["```", ""]
    return lines


def invocations(runs: str | Path, data: str) -> list[str]:
    """The ``gsanet experiment study`` commands recorded in the runs directory."""
    return recorded_invocations(runs, data, containing=" study")


def dry_run(study: Study, data: str, ctx: RunnerContext) -> None:
    """Print the sweep runs' states and commands, and each family's choice or what it waits for."""
    recipe = expected_recipe(ctx, data)
    for family in study.families:
        choice, states = choose(study, family, data, ctx.args.runs, recipe)
        for spec, status in states:
            print(f"{status.state:8s} {spec.run_dir}  {status.detail}".rstrip())
            print(f"         {shlex.join(train_command(spec, ctx, False))}")
        if choice is None:
            print(f"{family.key}: the final runs ({len(study.final_seeds)} seeds) follow the sweep's choice")
        else:
            for spec in final_specs(study, family, choice, data, ctx.args.runs):
                status = run_status(spec, _expected(spec, recipe))
                print(f"{status.state:8s} {spec.run_dir}  {status.detail}".rstrip())


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
                if status.state != "done":  # failed, killed, busy, damaged: never counted, the study is not complete
                    complete = False
                    print(f"{status.state}: {spec.run_dir}: {status.detail}", file=sys.stderr)
        recipe_path, _ = ctx.recipes[data]
        recipe = expected_recipe(ctx, data)
        found = collect(study, data, args.runs, recipe, macs=not args.no_macs)
        complete &= all(r.final is not None and not r.final.missing for r in found)
        paths = write_report(
            study, found, args.out, data=data, recipe_path=recipe_path, recipe=recipe,
            invocations=invocations(args.runs, data),
        )  # fmt: skip
        print("report: " + "  ".join(map(str, paths)))
    return 0 if complete or args.table_only else 1
