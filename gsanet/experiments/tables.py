"""The tables of ``gsanet experiment``: ``experiment_<plan>[_<data>].csv`` and ``.md`` from the aggregated rows.

Per variant: the mean and standard deviation over the seeds of the final top-1 accuracy on what the runs measured
(the test set, a ``val_subset`` of it, or a held-out split, with its size: :func:`~.results.measured_split`; runs that
measured different things are refused in one table), the difference to the plan's baseline (with Welch's test; "n/a"
when neither side varies), the parameters and multiply-adds at the run's input size, the training time, every skipped
variant with its reason, and the exact commands. What the rows are and how they group comes from the plan: its
baseline, the row its reading is about (``Plan.subject``) and, for the ablations, its factor groups (``Plan.groups``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gsanet.errors import UserError
from gsanet.tables import csv_text, fixed, markdown_table, mean_std

from .plans import Plan, Variant, data_slug, format_kwarg
from .results import Row
from .runner import invocations
from .stats import Welch, welch

__all__ = ["format_kwargs", "table_stem", "write_tables"]


def format_kwargs(variant: Variant) -> str:
    """``model_kwargs`` as ``key=value`` text for the tables."""
    return " ".join(f"{k}={format_kwarg(v)}" for k, v in variant.model_kwargs.items())


def table_stem(plan: Plan, data: str) -> str:
    """``experiment_<plan>``, with ``_<data>`` for another dataset than Fashion-MNIST."""
    return f"experiment_{plan.name}" + ("" if data == "fashion-mnist" else f"_{data_slug(data)}")


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
        rows: Its rows (:func:`gsanet.experiments.results.aggregate`).
        out: Output directory.
        data: Dataset.
        recipe_path: The recipe file (quoted in the tables).
        recipe: Its values.
        epochs: The ``--epochs`` override, if any.
        runs: Parent of the run directories (for the recorded experiment commands).
        spread: The baseline over several seeds, quoted in the ablation table as the seed-to-seed noise level.
    """
    measured = _measured(plan, data, rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = table_stem(plan, data)
    by_key = {r.variant.key: r for r in rows}
    baseline = by_key.get(plan.baseline)
    csv_rows = [_csv_row(row, baseline) for row in rows]
    csv_path = out / f"{stem}.csv"
    csv_path.write_text(csv_text(list(csv_rows[0]) if csv_rows else ["key"], csv_rows))

    lines = _common_header(plan.title, data, recipe_path, recipe, epochs, runs, measured)
    label = ("held-out" if "held-out" in measured else "test") + " top-1 %"
    if plan.groups:
        lines += _ablation_body(plan, rows, by_key, spread, label)
    else:
        lines += _compare_body(plan, rows, by_key, label)
    lines += _commands_section(rows)
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(lines))
    return csv_path, md_path


def _measured(plan: Plan, data: str, rows: Sequence[Row]) -> str:
    """What every counted run of the table measured (:func:`~.results.measured_split`).

    Raises:
        UserError: The runs measured different things (their accuracies are not comparable in one table).
    """
    found = sorted({m for row in rows for m in row.measured})
    if len(found) > 1:
        raise UserError(
            f"the finished runs of {plan.name} on {data} measured different things ({'; '.join(found)}); their "
            "accuracies are not comparable in one table: give each recipe its own --runs directory"
        )
    return found[0] if found else "no finished run yet"


# ------------------------------------------------------------------------------------------------------- cells
def _accuracy(row: Row) -> str:
    if row.variant.skip_reason:
        return "not run"
    if not row.n:
        return "no finished run"
    return mean_std(row.mean, row.std, row.n, row.missing)


def _macs(row: Row) -> str:
    if row.macs is None:
        return ""
    text = f"{row.macs / 1e6:.1f}M"
    if row.algorithmic_macs is not None and row.algorithmic_macs != row.macs:
        text += f" ({row.algorithmic_macs / 1e6:.1f}M)"
    return text


def _difference(row: Row, reference: Row | None) -> float | None:
    if reference is None or row.mean is None or reference.mean is None:
        return None
    return row.mean - reference.mean


def _delta(row: Row, reference: Row | None) -> str:
    """``row``'s mean accuracy minus the reference row's, in points ("" for the reference itself or a missing mean)."""
    difference = None if row is reference else _difference(row, reference)
    return "" if difference is None else f"{difference:+.2f}"


def _test(row: Row, reference: Row | None) -> Welch | None:
    """Welch's t-test of ``row`` against the reference row (None for the reference itself or below two seeds)."""
    if reference is None or row is reference:
        return None
    return welch(row.top1, reference.top1)


def _interval(row: Row, reference: Row | None) -> str:
    """The difference's 95% interval and Welch p-value, ``*`` when the interval excludes zero."""
    w = _test(row, reference)
    if w is None:
        return ""
    if not w.defined:
        return "p=n/a (no spread on either side)"
    return f"[{w.low:+.2f}, {w.high:+.2f}], p={w.p:.2g}" + (" *" if w.significant else "")


def _measures(row: Row, reference: Row | None) -> list[str]:
    """The cells every results table shares: accuracy, difference (with its 95% interval when both sides have
    seeds), parameters, MACs, training time, note."""
    return [
        _accuracy(row),
        _delta(row, reference),
        _interval(row, reference),
        fixed(row.params, 2, scale=1e6, suffix="M"),
        _macs(row),
        fixed(row.mean_seconds, 0),
        row.variant.skip_reason or row.variant.note,
    ]


def _csv_row(row: Row, baseline: Row | None) -> dict[str, Any]:
    v = row.variant
    test = _test(row, baseline)  # one Welch test for the four columns
    return {
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
        "top1_mean": fixed(row.mean, 4),
        "top1_std": fixed(row.std, 4),
        "top1_per_seed": " ".join(f"{a:.2f}" for a in row.top1),
        "top5_mean": fixed(row.mean_top5, 4),
        "delta_vs_baseline": fixed(_difference(row, baseline), 4),
        "delta_ci95_low": fixed(test.low, 4) if test and test.defined else "",
        "delta_ci95_high": fixed(test.high, 4) if test and test.defined else "",
        "welch_p": test.p_text(".4f") if test else "",
        "significant": ("yes" if test.significant else "no" if test.defined else "n/a") if test else "",
        "params": row.params,
        "macs": row.macs,
        "algorithmic_macs": row.algorithmic_macs,
        "train_seconds_mean": fixed(row.mean_seconds, 1),
        "status": "skipped" if v.skip_reason else ("complete" if not row.missing else "incomplete"),
        "note": v.skip_reason or v.note,
        "run_dirs": " ".join(row.run_dirs),
        "measured_on": "; ".join(row.measured),
    }


# ------------------------------------------------------------------------------------------------------- prose
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


def _verdict(a: Row, b: Row, what: str) -> str:
    """A sentence comparing two rows' mean accuracy: the difference, its 95% interval and Welch's p-value."""
    if a.mean is None or b.mean is None:
        return f"{what}: not enough finished runs to compare."
    text = f"{what}: {a.mean:.2f}% vs {b.mean:.2f}%, difference {a.mean - b.mean:+.2f} points"
    w = welch(a.top1, b.top1)
    if w is None:
        return text + " (fewer than two seeds on one side: no error estimate)."
    if not w.defined:
        return text + " (no spread over the seeds on either side: Welch p = n/a, no significance claimed)."
    text += f" (95% CI [{w.low:+.2f}, {w.high:+.2f}], Welch p = {w.p:.2g}: "
    if not w.significant:
        return text + "no significant difference at this budget)."
    return text + f"{'higher' if w.diff > 0 else 'lower'}, significant at 5%)."


def _common_header(
    title: str,
    data: str,
    recipe_path: Path,
    recipe: Mapping[str, Any],
    epochs: int | None,
    runs: str | Path,
    measured: str,
) -> list[str]:
    lines = [f"# {title} ({data})", ""]
    lines.append(
        "Written by `gsanet experiment` (gsanet/experiments/cli.py) from the `summary.json` of every finished run; "
        f"top-1 = accuracy (%) after the last epoch on {measured} (from the runs' `config.yaml`), "
        "mean ± sample standard deviation over seeds. Parameters and MACs (multiply-adds of one image, as computed "
        "by `gsanet.models.flops.count_macs`) at the runs' input size. Training time = seconds of training plus "
        "the per-epoch test evaluation, on a 2-core CPU shared with other jobs, usually two runs at once with one "
        "thread each: noisy, compare orders of magnitude only."
    )
    lines += ["", f"Recipe: {_recipe_text(recipe_path, recipe, epochs)}.", ""]
    recorded = invocations(runs, data)
    if recorded:
        lines += ["Commands that ran the experiments:", "", "```"]
        lines += recorded
        lines += ["```", ""]
    return lines


def _commands_section(rows: Sequence[Row]) -> list[str]:
    lines = ["## Runs", "", "Each run's `gsanet train` command (also in its run directory, `command.txt`):", "", "```"]
    for row in rows:
        lines += row.commands
    lines += ["```", ""]
    return lines


# ------------------------------------------------------------------------------------------------ the two bodies
def _compare_body(plan: Plan, rows: Sequence[Row], by_key: Mapping[str, Row], label: str) -> list[str]:
    conv = by_key.get(plan.baseline)
    table = []
    for row in rows:
        model = f"`{row.variant.model}`" + (f" {format_kwargs(row.variant)}" if row.variant.model_kwargs else "")
        size = "x".join(map(str, row.input_size[1:])) if row.input_size else ""
        table.append([model, size, *_measures(row, conv)])
    cols = ["model", "input", f"{label} (mean ± std)", "Δ vs conv", "95% CI, Welch p", "params", "MACs",
            "train s", "note"]  # fmt: skip
    lines = ["## Results", "", markdown_table(cols, table), ""]
    gsa = by_key.get(plan.subject) if plan.subject else None
    if gsa is not None and conv is not None:
        lines += ["## Reading", "", *_reading(gsa, conv, rows), ""]
    return lines


def _reading(gsa: Row, conv: Row, rows: Sequence[Row]) -> list[str]:
    """The comparison's reading: GSA against the conv ResNet (accuracy, cost), then against each peer."""
    lines = ["- " + _verdict(gsa, conv, "GSA-ResNet-26 tiny vs ResNet-26 tiny (3x3 conv)")]
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
    return lines


def _ablation_intro(plan: Plan, rows: Sequence[Row], baseline: Row | None, spread: Row | None) -> list[str]:
    lines = []
    if baseline is not None:
        lines.append(f"Baseline: `{plan.baseline}` = {baseline.variant.setting}.")
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
    else:
        lines.append(
            "Δ: difference of mean test top-1 from the baseline; 95% CI and p: Welch's t-test over the seeds "
            "(unequal variances); `*`: the interval excludes zero (significant at 5%). Each row is tested once "
            "against the baseline, without correction for multiple comparisons: among a dozen rows with no real "
            "effect, about one in twenty is marked by chance."
        )
    lines.append(
        "MACs: as computed by the implementation (in parentheses: at the cost of the GSA equations, when different; "
        "a windowed span runs densely over the axis, so it costs what the global span costs)."
    )
    return lines + [""]


def _ablation_body(
    plan: Plan, rows: Sequence[Row], by_key: Mapping[str, Row], spread: Row | None, label: str
) -> list[str]:
    baseline = by_key.get(plan.baseline)
    lines = _ablation_intro(plan, rows, baseline, spread)
    table = []
    for group in plan.groups:
        for key in group.keys:
            row = by_key.get(key)
            if row is None:
                continue
            setting = group.setting(row.variant) + (" (baseline)" if key == plan.baseline else "")
            table.append([group.factor, setting, f"`{row.variant.key}`", *_measures(row, baseline)])
    cols = ["factor", "setting", "run", label, "Δ vs baseline", "95% CI, Welch p", "params", "MACs",
            "train s", "note"]  # fmt: skip
    lines += ["## Results", "", markdown_table(cols, table), ""]
    lines += ["## Variants", "", "Model and arguments of each run key:", ""]
    for row in rows:
        kwargs = f" with `{format_kwargs(row.variant)}`" if row.variant.model_kwargs else ""
        lines.append(f"- `{row.variant.key}`: `{row.variant.model}`{kwargs}: {row.variant.label}")
    lines.append("")
    return lines
