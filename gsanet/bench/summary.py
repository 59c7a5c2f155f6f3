"""``gsanet bench summary``: the ratios that have targets, for every instruction set and precision measured, in one
table.

It reads what ``gsanet bench model`` and ``gsanet bench module`` wrote into a results directory for this torch
version and device: the pair tables ``bench_model_torch<version>_<device>_<precision>_<isa>_pairs.csv`` (GSA images/s
over conv images/s, training and inference, higher is better) and the module tables
``bench_module_torch<version>_<device>_<precision>_<isa>.csv`` (our module's forward+backward time over the 3x3
convolution's, ``ratio_vs_conv`` of the ``gsa`` rows at :data:`gsanet.bench.module.STAGE_TARGETS`' shapes, lower is
better). One row per ratio, one column per (precision, instruction set) found, each cell the ratio and whether its
target is met. Nothing is measured: the summary is as current as the tables it reads.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, NamedTuple

from gsanet.tables import markdown_table, write_csv

from .config import PRECISIONS
from .model import DEFAULT_BATCH as MODEL_BATCH
from .model import MODELS, PAIRS
from .module import DEFAULT_BATCH as MODULE_BATCH
from .module import STAGE_TARGETS, format_shape
from .report import Target, result_prefix

__all__ = ["ISA_ORDER", "SUMMARY_COLUMNS", "Ratio", "Summary", "ratios", "summarize"]

ISA_ORDER = ("avx512", "avx2", "default")
"""Column order of the instruction sets (others follow, alphabetically); float32 columns come before bfloat16."""

SUMMARY_COLUMNS = ["what", "precision", "isa", "batch", "ratio", "target", "met", "source"]
"""The summary's CSV: one row per ratio found (the markdown table is its wide form)."""

_PAIR_RATIOS = {"train": ("train_ratio", "train_batch"), "infer": ("infer_ratio", "infer_batch")}


class Ratio(NamedTuple):
    """A row of the summary: its label, target and the batch the target is set at, and where its value is read:
    ``kind`` (``train``, ``infer`` or ``module``) and ``key`` (the pair's GSA network, or the module's shape)."""

    what: str
    target: Target
    batch: int
    kind: str
    key: str


def ratios() -> list[Ratio]:
    """The summary's rows: training then inference of each of :data:`gsanet.bench.model.PAIRS`, then the module at
    each stage shape."""
    cases = {c.name: c for c in MODELS}
    out = []
    for kind, label in (("train", "training step"), ("infer", "inference")):
        for pair in PAIRS:
            case = cases[pair.gsa]
            batch = case.batch or MODEL_BATCH
            target = pair.train_target
            if kind == "infer":
                batch, target = case.infer_batch or batch, pair.infer_target
            what = f"{label}, {pair.gsa} / {pair.conv}, batch {batch}"
            out.append(Ratio(what, target, batch, kind, pair.gsa))
    for shape, target in STAGE_TARGETS.items():
        key = format_shape(shape)
        what = f"module fwd+bwd, ours / 3x3 conv, {key}, batch {MODULE_BATCH}"
        out.append(Ratio(what, target, MODULE_BATCH, "module", key))
    return out


class Summary(NamedTuple):
    """The summary: ``records`` (rows of :data:`SUMMARY_COLUMNS`), the (precision, isa) ``columns`` found, in
    order, and the ``sources`` read for each column."""

    records: list[dict[str, Any]]
    columns: list[tuple[str, str]]
    sources: dict[tuple[str, str], list[str]]

    def markdown(self, command: str | None = None) -> str:
        """The wide table (a row per ratio, a column per precision and instruction set) with its notes."""
        labels = [f"{precision} {isa}".strip() for precision, isa in self.columns]
        cells = {(r["what"], (r["precision"], r["isa"])): r for r in self.records}
        body = []
        for ratio in ratios():
            row = [ratio.what, str(ratio.target)]
            for column in self.columns:
                record = cells.get((ratio.what, column))
                row.append(_cell(record, ratio.batch) if record else "")
            body.append(row)
        lines = ["## GSA against convolution: ratios per precision and instruction set", ""]
        if command:
            lines += [f"Command: `{command}`", ""]
        lines += [markdown_table(["ratio", "target", *labels], body), ""]
        lines.append(
            "Training and inference: GSA images/s over conv images/s, the two networks timed side by side "
            "(`gsanet bench model`; higher is better). Module: our module's forward+backward time over the 3x3 "
            "convolution's (`gsanet bench module`; lower is better). A cell's batch is given where it differs from "
            "the target's."
        )
        lines.append("")
        for column, label in zip(self.columns, labels, strict=True):
            lines.append(f"- {label}: " + ", ".join(f"`{name}`" for name in self.sources[column]))
        return "\n".join(lines) + "\n"

    def save(self, out: Path, device: str, command: str | None = None) -> list[Path]:
        """Writes ``bench_summary_torch<version>_<device>.{csv,md}`` into ``out``; returns the paths."""
        stem = result_prefix("summary", device)
        paths = [write_csv(out / f"{stem}.csv", SUMMARY_COLUMNS, self.records), out / f"{stem}.md"]
        paths[1].write_text(self.markdown(command))
        return paths


def _cell(record: dict[str, Any], batch: int) -> str:
    text = f"{record['ratio']:.2f} {record['met']}"
    return text if record["batch"] == batch else f"{text} (batch {record['batch']})"


def _tables(results: Path, kind: str, device: str, suffix: str) -> list[tuple[str, str, Path]]:
    """``(precision, isa, path)`` of the ``kind`` tables in ``results`` for this torch version and device."""
    prefix = result_prefix(kind, device) + "_"
    found = []
    for path in sorted(results.glob(f"{prefix}*{suffix}")):
        precision, _, isa = path.name[len(prefix) : -len(suffix)].partition("_")
        if precision in PRECISIONS:
            found.append((precision, isa, path))
    return found


def _read(path: Path, needed: list[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: no column(s) {', '.join(missing)}; it was written by an older gsanet bench: re-run the "
                "benchmark that wrote it, or move the file out of the results directory"
            )
        return list(reader)


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def _pair_records(path: Path, found: list[Ratio]) -> list[dict[str, Any]]:
    rows = _read(path, ["gsa", "img_size", *(c for pair in _PAIR_RATIOS.values() for c in pair)])
    sizes = {c.name: c.img_size for c in MODELS}
    out = []
    for ratio in found:
        if ratio.kind not in _PAIR_RATIOS:
            continue
        value_column, batch_column = _PAIR_RATIOS[ratio.kind]
        for row in rows:
            if row["gsa"] == ratio.key and int(row["img_size"]) == sizes[ratio.key]:
                value = _number(row[value_column])
                if value is not None:
                    out.append(dict(what=ratio.what, batch=int(row[batch_column]), ratio=value))
    return out


def _module_records(path: Path, found: list[Ratio]) -> list[dict[str, Any]]:
    rows = _read(path, ["shape", "layer", "ratio_vs_conv", "batch"])
    out = []
    for ratio in found:
        for row in rows:
            if ratio.kind == "module" and row["layer"] == "gsa" and row["shape"] == ratio.key:
                value = _number(row["ratio_vs_conv"])
                if value is not None:
                    out.append(dict(what=ratio.what, batch=int(row["batch"]), ratio=value))
    return out


def summarize(results: Path, device: str = "cpu") -> Summary:
    """Collects the ratios of every model pair table and module table in ``results`` (this torch version, ``device``).

    Raises:
        ValueError: There is no such table, or a table lacks the columns the summary reads (an older format).
    """
    rows = ratios()
    targets = {r.what: r.target for r in rows}
    records: list[dict[str, Any]] = []
    sources: dict[tuple[str, str], list[str]] = {}
    for kind, suffix, read in (("model", "_pairs.csv", _pair_records), ("module", ".csv", _module_records)):
        for precision, isa, path in _tables(results, kind, device, suffix):
            sources.setdefault((precision, isa), []).append(path.name)
            for record in read(path, rows):
                target = targets[record["what"]]
                record.update(precision=precision, isa=isa, target=str(target), source=path.name)
                record["met"] = target.verdict(record["ratio"])
                records.append(record)
    if not sources:
        raise ValueError(
            f"no {result_prefix('model', device)}_*_pairs.csv or {result_prefix('module', device)}_*.csv in "
            f"{results}: run `gsanet bench model` and `gsanet bench module` first (scripts/bench.sh runs them all)"
        )
    precisions = list(PRECISIONS)

    def order(column: tuple[str, str]) -> tuple[int, int, str]:
        precision, isa = column
        return precisions.index(precision), ISA_ORDER.index(isa) if isa in ISA_ORDER else len(ISA_ORDER), isa

    return Summary(records, sorted(sources, key=order), sources)
