"""Reporting a benchmark: its table of rows, written as CSV and markdown (and a PNG when it has a figure).

Numbers are formatted by :func:`gsanet.tables.compact`, the tables by :mod:`gsanet.tables`, as every gsanet report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gsanet.tables import compact, markdown_table, write_csv

from .environment import cpu_isa

__all__ = [
    "BenchTable",
    "Target",
    "formatted_table",
    "load_note",
    "markdown_columns",
    "result_prefix",
    "result_stem",
]


@dataclass(frozen=True)
class Target:
    """A target for a measured ratio: at least ``value`` (``op`` ``">="``, higher is better) or at most ``value``
    (``"<="``, lower is better)."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"a target's op is '>=' or '<=', got {self.op!r}")

    def __str__(self) -> str:
        value = f"{self.value:g}"
        return f"{self.op} {value if '.' in value or 'e' in value else value + '.0'}"

    def verdict(self, ratio: float | None) -> str:
        """``"met"`` or ``"missed"``; ``""`` when there is no ratio."""
        if ratio is None or math.isnan(ratio):
            return ""
        return "met" if (ratio >= self.value if self.op == ">=" else ratio <= self.value) else "missed"


def result_prefix(kind: str, device: str) -> str:
    """The part of a benchmark's file stem before the precision, e.g. ``bench_module_torch2.14.1_cpu``."""
    return f"bench_{kind}_torch{torch.__version__.split('+')[0]}_{device}"


def result_stem(kind: str, device: str, precision: str, isa: str | None = None) -> str:
    """File stem of a benchmark's results, e.g. ``bench_module_torch2.14.1_cpu_fp32_avx2`` (the instruction set
    PyTorch ran at, on CPU)."""
    stem = f"{result_prefix(kind, device)}_{precision}"
    return f"{stem}_{isa}" if isa and torch.device(device).type == "cpu" else stem


def load_note(rows: Iterable[dict[str, Any]]) -> str:
    """A markdown sentence on the machine load seen while the rows were measured."""
    loads = [r["load_1m"] for r in rows if r.get("load_1m") is not None]
    if not loads:
        return "Machine load: unknown."
    cpus = os.cpu_count() or 1
    text = f"Machine load (1-minute average) during the run: {min(loads):.1f} to {max(loads):.1f} on {cpus} cores"
    if max(loads) > cpus:
        text += "; above the core count other processes shared the cores, which inflates times (compare the minima)"
    return text + "."


@dataclass
class BenchTable:
    """Rows of one benchmark, with the text around them.

    Attributes:
        kind: ``module``, ``scaling``, ``model`` or ``axial``.
        columns: CSV columns, in order.
        rows: one dict per measurement.
        md_columns: the subset shown in the markdown table (default all).
        title: markdown heading.
        notes: markdown paragraphs after the table (method, summary figures).
        extra_tables: further (title, columns, rows) tables for the markdown, and their own CSV files by suffix.
        env: :func:`gsanet.bench.environment.environment`.
        figure: draws the PNG at the given path (optional).
    """

    kind: str
    columns: list[str]
    rows: list[dict[str, Any]]
    md_columns: list[str] | None = None
    title: str = ""
    notes: list[str] = field(default_factory=list)
    extra_tables: list[tuple[str, str, list[str], list[dict[str, Any]]]] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    figure: Callable[[Path], None] | None = None

    def write_csv(self, path: Path, columns: Sequence[str] | None = None, rows: Iterable[dict] | None = None) -> None:
        """Writes ``rows`` (default: the table's) under ``columns`` (default: the table's) as CSV."""
        write_csv(path, list(self.columns if columns is None else columns), self.rows if rows is None else rows)

    def markdown(self, command: str | None = None, *, only: str | None = None) -> str:
        """The markdown section: title, environment, command, the tables, then the notes.

        Args:
            command: the command line that produced the table.
            only: the suffix of one extra table: that table alone, under its own title.

        Raises:
            ValueError: ``only`` names no extra table.
        """
        tables = [(f"### {title}", columns, rows) for title, _suffix, columns, rows in self.extra_tables]
        if only is None:
            title, tables = self.title or self.kind, [("", self.md_columns or self.columns, self.rows), *tables]
        else:
            match = [(title, columns, rows) for title, suffix, columns, rows in self.extra_tables if suffix == only]
            if not match:
                raise ValueError(f"no extra table with suffix {only!r}")
            title, tables = match[0][0], [("", *match[0][1:])]
        lines = [f"## {title}", ""]
        if self.env:
            lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in self.env.items()), ""]
        if command:
            lines += [f"Command: `{command}`", ""]
        for heading, columns, rows in tables:
            lines += ([heading, ""] if heading else []) + [formatted_table(columns, rows), ""]
        lines += [f"{note}\n" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def save(self, out: Path, command: str | None = None) -> list[Path]:
        """Writes ``<stem>.csv``, ``<stem>_<suffix>.csv`` and ``<stem>_<suffix>.md`` for the extra tables,
        ``<stem>.png`` if there is a figure, and ``<stem>.md`` (every table).

        Returns:
            The written paths.
        """
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem(self.kind, self.env.get("device", "cpu"), self.env.get("precision", "fp32"), cpu_isa())
        paths = [out / f"{stem}.csv"]
        self.write_csv(paths[0])
        for _title, suffix, columns, rows in self.extra_tables:
            paths.append(out / f"{stem}_{suffix}.csv")
            self.write_csv(paths[-1], columns, rows)
            paths.append(out / f"{stem}_{suffix}.md")
            paths[-1].write_text(self.markdown(command, only=suffix))
        if self.figure is not None:
            paths.append(out / f"{stem}.png")
            self.figure(paths[-1])
            if (image := f"![{self.kind}]({paths[-1].name})") not in self.notes:
                self.notes.append(image)
        paths.append(out / f"{stem}.md")
        paths[-1].write_text(self.markdown(command))
        return paths


def formatted_table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """The markdown table of measured rows: the named columns, each value through :func:`gsanet.tables.compact`."""
    return markdown_table(columns, ([compact(row.get(c)) for c in columns] for row in rows))


def markdown_columns(columns: Sequence[str], csv_only: Iterable[str]) -> list[str]:
    """The markdown table's columns: ``columns`` in order, less those named in ``csv_only`` (kept in the CSV).

    Raises:
        ValueError: A name in ``csv_only`` is not a column.
    """
    csv_only = set(csv_only)
    unknown = csv_only - set(columns)
    if unknown:
        raise ValueError(f"not columns: {sorted(unknown)}")
    return [c for c in columns if c not in csv_only]
