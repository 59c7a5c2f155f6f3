"""Tables and numbers of every report gsanet writes: markdown tables, CSV files and number formatting.

One formatter for the benchmarks (:mod:`gsanet.bench.report`), the model summary (:mod:`gsanet.models.summary`) and
the experiment tables (:mod:`gsanet.experiments.tables`, :mod:`gsanet.experiments.study`), so that a figure reads
the same wherever it appears.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "compact",
    "csv_text",
    "fixed",
    "markdown_table",
    "mean_std",
    "save_table",
    "si",
    "write_csv",
]

_SI = ((1e9, "G"), (1e6, "M"), (1e3, "K"))
"""Scales and suffixes of large counts, largest first."""


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table of already formatted cells (``|`` inside a cell becomes ``/``), without a final newline."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text (``\\r\\n`` line ends) of ``rows`` under a header of ``columns``; missing and ``None`` values are
    empty, keys outside ``columns`` are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return buffer.getvalue()


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write :func:`csv_text` to ``path``; return the path."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        f.write(csv_text(columns, rows))
    return path


def fixed(value: float | None, digits: int, *, scale: float = 1, suffix: str = "", missing: str = "") -> str:
    """``value / scale`` with ``digits`` decimals and a suffix (``fixed(550412, 2, scale=1e6, suffix="M")`` is
    ``"0.55M"``); ``missing`` for None."""
    return missing if value is None else f"{value / scale:.{digits}f}{suffix}"


def si(value: float | None, *, missing: str = "-") -> str:
    """Four significant figures with a K/M/G suffix: ``18284584`` is ``"18.28M"``, ``550412`` is ``"550.4K"``."""
    if value is None:
        return missing
    scale, suffix = next(((s, x) for s, x in _SI if abs(value) >= s), (1, ""))
    scaled = value / scale
    return f"{scaled:.{3 if abs(scaled) < 10 else 2 if abs(scaled) < 100 else 1}f}{suffix}"


def compact(value: Any) -> str:
    """A measured value for a benchmark table: counts from 10,000 up with 3 significant figures and a K/M/G suffix,
    floats with 3 decimals below 10 and 1 above (scientific notation beyond 1e6 or below 1e-3), NaN and None empty,
    anything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) and abs(value) >= 10_000:
        for scale, suffix in _SI:
            if abs(value) >= scale:
                return f"{value / scale:.3g}{suffix}"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def mean_std(mean: float, std: float | None, n: int, missing: Sequence[int] = ()) -> str:
    """``"82.17 ± 2.25 (n=3)"``: a mean over seeds, its sample standard deviation when there is one, the number of
    seeds, and the seeds without a result (``", missing seeds [1, 2]"``)."""
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "") + f" (n={n})"
    return text + (f", missing seeds {list(missing)}" if missing else "")


def save_table(
    stem: str | Path, command: str, head: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> str:
    """Writes ``rows`` as ``<stem>.md`` (the command, ``head`` and a markdown table) and ``<stem>.csv``, creating the
    folder; returns the head and table, for printing."""
    text = head + "\n\n" + markdown_table(columns, [[r[c] for c in columns] for r in rows])
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text(f"Command: {command}\n\n{text}\n")
    write_csv(f"{stem}.csv", columns, rows)
    return text
