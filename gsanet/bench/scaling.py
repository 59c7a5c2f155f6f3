"""Scaling benchmark: how our GSA module and a non-local block grow with the number of pixels N = H W.

Square inputs from 16x16 to 128x128 (64 channels, batch 8): forward+backward time and peak memory of our module and of
the non-local block in its two forms (``nonlocal``: SDPA's fastest kernel, which on CPU does not store the attention
matrix; ``nonlocal_math``: SDPA's math backend, which does), the growth exponents in N from a log-log least-squares fit
(over all sizes, and over the sizes >= 48x48 where fixed overheads matter less), the non-local/ours ratio at every size
(112x112 is in the sweep), and a log-log plot.

Before each size, a layer's peak memory and step time are extrapolated from its measured sizes (the power law of its
last three; for a layer that stores ``N x N`` attention, at least 3.5 such matrices); the layer is skipped at that size
and beyond when the prediction exceeds the memory cap (``--mem-cap-gb``, default 8 GB) or a step would take more than
``--max-step-s`` (default 400 s). The non-local rows give the size of one ``B x heads x N x N`` attention
matrix, and the notes which SDPA kernel ran.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import BenchConfig
from .environment import environment, load_average
from .measure import MEMORY_METHOD, fit_power_law
from .module import measure_layers
from .peers import HEADS, build_layer, dense_attention_bytes, sdpa_kernel
from .report import BenchTable, load_note, markdown_columns

__all__ = [
    "COLUMNS",
    "CSV_ONLY",
    "FIT_COLUMNS",
    "LAYERS",
    "MD_COLUMNS",
    "QUICK_SIZES",
    "SIZES",
    "plot_scaling",
    "run_scaling_bench",
    "summarise_scaling",
]

_LOGGER = logging.getLogger(__name__)

SIZES: list[int] = [16, 24, 32, 48, 64, 96, 112, 128]
QUICK_SIZES: list[int] = [8, 12, 16]
LAYERS: list[str] = ["gsa", "nonlocal", "nonlocal_math"]
LARGE_FROM = 48
"""The "large" fit uses sizes from this side length on."""

COLUMNS = [
    "size",
    "n_pixels",
    "layer",
    "fwd_bwd_ms",
    "fwd_bwd_min_ms",
    "peak_mem_mb",
    "ratio_vs_gsa",
    "mem_ratio_vs_gsa",
    "attn_matrix_gb",
    "repeats",
    "status",
    "min_ratio_vs_gsa",
    "load_1m",
    "batch",
    "channels",
    "peak_alloc_mb",
    "torch",
    "device",
    "precision",
    "threads",
]
CSV_ONLY = COLUMNS[COLUMNS.index("min_ratio_vs_gsa") :]  # the run's settings and the secondary figures
"""The columns written to the CSV only."""
MD_COLUMNS = markdown_columns(COLUMNS, CSV_ONLY)
"""The columns of the markdown table."""
FIT_COLUMNS = [
    "layer",
    "time_exponent",
    "mem_exponent",
    "time_exponent_large",
    "mem_exponent_large",
    "min_time_exponent",
    "min_time_exponent_large",
    "sizes",
    "sizes_large",
]


def _extrapolate(points: list[tuple[int, float]], n: int) -> float | None:
    """Value at ``n`` from the power law through the last three ``(n, value)`` points."""
    pts = [p for p in points if p[1]][-3:]
    if len(pts) < 2:
        return None
    exponent = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if exponent is None:
        return None
    n_last, y_last = pts[-1]
    return y_last * (n / n_last) ** max(exponent, 0.0)


def run_scaling_bench(
    cfg: BenchConfig,
    *,
    sizes: Sequence[int] | None = None,
    channels: int | None = None,
    layers: Sequence[str] | None = None,
) -> BenchTable:
    """Runs the scaling benchmark.

    Args:
        cfg: shared options; defaults here are batch 8, 10 repeats (within the time budget), no warm-up round
            beyond the memory pass.
        sizes: square side lengths; default :data:`SIZES` (:data:`QUICK_SIZES` with quick).
        channels: input/output channels; default 64 (16 with quick).
        layers: names from :data:`gsanet.bench.peers.LAYERS`; default :data:`LAYERS`.

    Returns:
        The table (one row per size and layer), with the fitted exponents as an extra table and a plot.
    """
    batch, repeats, warmup = cfg.resolved(batch=8, repeats=10, warmup=0)
    sizes = sorted(sizes or (QUICK_SIZES if cfg.quick else SIZES))
    channels = channels or (16 if cfg.quick else 64)
    env = environment(cfg.device, cfg.precision)
    names = list(layers or LAYERS)
    history: dict[str, list[tuple[int, float, float]]] = {name: [] for name in names}  # (N, ms, MB) measured
    kernels: dict[str, str] = {}
    stopped: dict[str, str] = {}
    cap_mb = cfg.mem_cap_gb * 1024
    max_step_s = cfg.max_step_s
    rows: list[dict[str, Any]] = []
    for s in sizes:
        n = s * s
        attn_gb = batch * HEADS * n * n * 4 / 2**30
        reasons: dict[str, str] = {}
        built = {}
        for name in names:
            if name in stopped:
                reasons[name] = stopped[name]
                continue
            torch.manual_seed(cfg.seed)
            built[name] = build_layer(name, channels, s, s)
            if name.startswith("nonlocal") and name not in kernels:
                kernels[name] = sdpa_kernel(built[name].module, channels, cfg.device, cfg.precision)
            pts = history[name]
            mem = max(
                _extrapolate([(p[0], p[2]) for p in pts], n) or 0.0,
                dense_attention_bytes(built[name], batch, s, s) / 2**20,
            )
            step_ms = _extrapolate([(p[0], p[1]) for p in pts], n)
            if mem > cap_mb:
                reasons[name] = f"skipped: would need ~{mem / 1024:.1f} GB at {s}x{s} (cap {cfg.mem_cap_gb:g} GB)"
            elif step_ms is not None and step_ms / 1e3 > max_step_s:
                reasons[name] = (
                    f"skipped: a step would take ~{step_ms / 1e3:.0f} s at {s}x{s} (limit {max_step_s:.0f} s)"
                )
            if name in reasons:
                stopped[name] = reasons[name].replace("skipped:", f"skipped from {s}x{s} on:", 1)
                del built[name]
                _LOGGER.info("%s at %dx%d: %s", name, s, s, reasons[name])
        res = measure_layers(
            built,
            batch=batch,
            channels=channels,
            height=s,
            width=s,
            cfg=cfg,
            repeats=repeats,
            warmup=warmup,
            count_macs=False,
            time_forward=False,
        )
        ours = res.get("gsa", {})
        load = load_average()
        for name in names:
            row: dict[str, Any] = {"size": f"{s}x{s}", "n_pixels": n, "layer": name, "batch": batch, "load_1m": load}
            row.update(channels=channels, **{k: env[k] for k in ("torch", "device", "precision", "threads")})
            if name.startswith("nonlocal"):
                row["attn_matrix_gb"] = attn_gb
            if name in reasons:
                row["status"] = reasons[name]
            else:
                row.update(res[name])
                if row.get("fwd_bwd_ms") is not None:
                    history[name].append((n, row["fwd_bwd_ms"], row["peak_mem_mb"]))
                    _LOGGER.info("%dx%d %-8s %.1f ms %.1f MB", s, s, name, row["fwd_bwd_ms"], row["peak_mem_mb"])
                else:
                    stopped[name] = f"{row['status']} at {s}x{s}"
            if ours.get("fwd_bwd_ms") and row.get("fwd_bwd_ms"):
                row["ratio_vs_gsa"] = row["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
                row["mem_ratio_vs_gsa"] = row["peak_mem_mb"] / ours["peak_mem_mb"]
                row["min_ratio_vs_gsa"] = row["fwd_bwd_min_ms"] / ours["fwd_bwd_min_ms"]
            rows.append(row)

    return summarise_scaling(
        rows,
        env=env,
        kernels=kernels,
        notes=[f"Up to {repeats} round-robin repeats after a memory pass and {warmup} warm-up round(s)."],
    )


def _fit_row(layer: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    pts = [r for r in rows if r["layer"] == layer and r.get("fwd_bwd_ms")]
    large = [r for r in pts if r["n_pixels"] >= LARGE_FROM**2]

    def fit(points: list[dict[str, Any]], key: str) -> float | None:
        return fit_power_law([r["n_pixels"] for r in points], [r[key] for r in points])

    return {
        "layer": layer,
        "time_exponent": fit(pts, "fwd_bwd_ms"),
        "mem_exponent": fit(pts, "peak_mem_mb"),
        "time_exponent_large": fit(large, "fwd_bwd_ms"),
        "mem_exponent_large": fit(large, "peak_mem_mb"),
        "min_time_exponent": fit(pts, "fwd_bwd_min_ms"),
        "min_time_exponent_large": fit(large, "fwd_bwd_min_ms"),
        "sizes": " ".join(r["size"].split("x")[0] for r in pts),
        "sizes_large": " ".join(r["size"].split("x")[0] for r in large),
    }


def summarise_scaling(
    rows: list[dict[str, Any]],
    *,
    env: dict[str, Any],
    kernels: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> BenchTable:
    """Fits the growth exponents and writes the notes of measured scaling rows (also rows read back from a CSV).

    Args:
        rows: one dict per size and layer, with the :data:`COLUMNS` (numbers as numbers).
        env: :func:`gsanet.bench.environment.environment` of the run.
        kernels: non-local layer -> SDPA kernel it used.
        notes: further sentences for the markdown.

    Returns:
        The table with the exponents as an extra table and the log-log plot.
    """
    fits = [_fit_row(layer, rows) for layer in dict.fromkeys(r["layer"] for r in rows)]
    first = rows[0] if rows else {}
    notes = [
        f"Channels {first.get('channels')}, batch {first.get('batch')}; forward+backward time: median (and minimum) "
        f"of the repeats. {' '.join(notes)} Exponents are log-log least-squares slopes against N = H W over all "
        f'sizes, and over the "large" sizes >= {LARGE_FROM}x{LARGE_FROM}; `min_time_*` fit the minimum times, less '
        "sensitive to the load of a shared machine. `ratio_vs_gsa`: the layer's time (memory) over our module's at "
        "the same size.",
        f"Non-local blocks: `F.scaled_dot_product_attention` over all N pixels, {HEADS} heads"
        + ("; kernels used here: " + ", ".join(f"{k} `{v}`" for k, v in kernels.items()) if kernels else "")
        + ". `attn_matrix_gb` is one B x heads x N x N float32 attention matrix, which a materialising kernel stores "
        "(about 3.5 of them at the peak).",
        f"Peak memory: {MEMORY_METHOD}.",
        load_note(rows),
    ]
    for r in rows:
        if r["size"] != "112x112" or not r["layer"].startswith("nonlocal"):
            continue
        if r.get("ratio_vs_gsa"):
            notes.append(
                f"At 112x112 {r['layer']} takes {r['ratio_vs_gsa']:.2f}x our module's time (median; "
                f"{r['min_ratio_vs_gsa']:.2f}x by minimum times) and {r['mem_ratio_vs_gsa']:.2f}x its memory."
            )
        else:
            notes.append(f"At 112x112 {r['layer']} did not run: {r.get('status')}.")
    table = BenchTable(
        kind="scaling",
        columns=COLUMNS,
        md_columns=MD_COLUMNS,
        rows=rows,
        title="Scaling with the number of pixels: GSA module vs non-local block (forward+backward)",
        notes=notes,
        extra_tables=[("Growth exponents in N", "fit", FIT_COLUMNS, fits)],
        env=env,
    )
    table.figure = lambda path: plot_scaling(table, path)
    return table


def plot_scaling(table: BenchTable, path: Path) -> None:
    """Draws time (median and minimum) and memory against N, log-log, with the fitted exponents, into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fits = {f["layer"]: f for f in table.extra_tables[0][3]} if table.extra_tables else {}
    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, exp_key, label in (
        (axes[0], "fwd_bwd_ms", "time_exponent", "forward+backward time (ms): median, min dashed"),
        (axes[1], "peak_mem_mb", "mem_exponent", "peak memory (MB)"),
    ):
        for i, layer in enumerate(dict.fromkeys(r["layer"] for r in table.rows)):
            pts = [(r["n_pixels"], r[key]) for r in table.rows if r["layer"] == layer and r.get(key)]
            if not pts:
                continue
            exponent = fits.get(layer, {}).get(exp_key)
            legend = f"{layer} (N^{exponent:.2f})" if exponent is not None else layer
            color = f"C{i}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=legend)
            if key == "fwd_bwd_ms":  # the minima too: what the layer costs when it has the cores to itself
                mins = [(r["n_pixels"], r["fwd_bwd_min_ms"]) for r in table.rows if r["layer"] == layer and r.get(key)]
                exponent = fits.get(layer, {}).get("min_time_exponent")
                legend = f"{layer} min (N^{exponent:.2f})" if exponent is not None else f"{layer} min"
                ax.plot([p[0] for p in mins], [p[1] for p in mins], ls="--", marker=".", color=color, label=legend)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels N = H W")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    env = table.env
    fig.suptitle(f"torch {env.get('torch')}, {env.get('device')} {env.get('precision')}, {env.get('threads')} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
