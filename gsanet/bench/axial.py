"""Axial benchmark: the fused CPU kernel against the batched-GEMM path, one axial positional layer at a time.

For each shape (batch, heads, per-head query and value width, the two spatial sizes) and each pass (``row``: the
attended axis contiguous in memory; ``column``: a transposed view, as the module's column layer reads it), both
implementations of ``out[x] = sum_x' (q_x . r_(x'-x)) v_x'`` run forward+backward, timed round-robin. The ratio
``gemm / fused`` above 1 means the kernel wins; :data:`gsanet.layers.axial_kernel.MEASURED` (the dispatch rule) is
read off these tables, one per instruction set (``gsanet bench axial --isa avx2`` on an AVX-512 machine reproduces an
AVX2 one).

The shapes are those the GSA modules see: ResNet-50's four stages at 224x224 (batch 8, 8 heads of 8 channels) and the
four stages of ``gsa_resnet26_tiny`` at 28x28 (batch 128; 2/4/8/8 heads of 8/8/8/16 channels; stage 4 at 4x4), and
two larger maps (112x112 and 224x224, the first stage of a GSA network at 448 and 896 pixels).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gsanet.layers import axial_kernel
from gsanet.layers.axial_kernel import FusedAxialRelPosAttention
from gsanet.layers.axial_ops import AxialRelPosAttention
from gsanet.layers.rel_pos import head_keys, head_rows

from .config import PRECISIONS, BenchConfig
from .environment import environment, load_average
from .measure import time_interleaved
from .report import BenchTable, load_note, markdown_columns

__all__ = ["COLUMNS", "CSV_ONLY", "MD_COLUMNS", "QUICK_SHAPES", "SHAPES", "AxialShape", "run_axial_bench"]

_LOGGER = logging.getLogger(__name__)

AxialShape = tuple[str, int, int, int, int, int]
"""(label, batch, heads, per-head width, height, width)."""

SHAPES: list[AxialShape] = [
    ("resnet50 s1", 8, 8, 8, 56, 56),
    ("resnet50 s2", 8, 8, 8, 28, 28),
    ("resnet50 s3", 8, 8, 8, 14, 14),
    ("resnet50 s4", 8, 8, 8, 7, 7),
    ("tiny s1", 128, 2, 8, 28, 28),
    ("tiny s2", 128, 4, 8, 14, 14),
    ("tiny s3", 128, 8, 8, 7, 7),
    ("tiny s4", 128, 8, 16, 4, 4),
    ("large 112", 2, 8, 8, 112, 112),
    ("large 224", 1, 8, 8, 224, 224),
]
QUICK_SHAPES: list[AxialShape] = [("quick a", 2, 2, 8, 12, 12), ("quick b", 4, 4, 8, 5, 5)]

COLUMNS = [
    "shape",
    "pass",
    "S",
    "lines",
    "fused_ms",
    "gemm_ms",
    "gemm_over_fused",
    "fused_min_ms",
    "gemm_min_ms",
    "min_gemm_over_fused",
    "repeats",
    "variant",
    "isa",
    "precision",
    "load_1m",
    "torch",
    "threads",
]
CSV_ONLY = ("load_1m", "torch", "threads")
"""The columns written to the CSV only."""
MD_COLUMNS = markdown_columns(COLUMNS, CSV_ONLY)
"""The columns of the markdown table."""


def _inputs(shape: AxialShape, column: bool, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Queries and values ``(B, h, d, L, S)`` laid out as the module's passes read them, the relative rows
    ``(h, d, 2S-1)``, the absolute keys ``(h, S, d, S)`` and an incoming gradient, in ``dtype`` (what the module
    passes both paths under autocast: bfloat16 activations, the table cast to them)."""
    _, B, h, d, H, W = shape
    g = torch.Generator().manual_seed(seed)
    if column:  # attend along H: views (B, h, d, W, H) of NCHW tensors
        q = torch.randn(B, h, d, H, W, generator=g).transpose(-1, -2)
        v = torch.randn(B, h, d, H, W, generator=g).transpose(-1, -2)
        S = H
    else:
        q = torch.randn(B, h, d, H, W, generator=g)
        v = torch.randn(B, h, d, H, W, generator=g)
        S = W
    table = torch.randn(2 * S - 1, h * d, generator=g) * d**-0.5
    rows = head_rows(table, S, h, pos_span=None).contiguous()  # the module's layouts of one global table
    keys = head_keys(table, S, h, pos_span=None)
    grad = torch.randn(v.shape, generator=g)
    q, v, rows, keys, grad = (t.to(dtype) for t in (q, v, rows, keys, grad))
    return q.requires_grad_(), v.requires_grad_(), rows.requires_grad_(), keys.requires_grad_(), grad


def _measure(shape: AxialShape, column: bool, cfg: BenchConfig, repeats: int, warmup: int) -> dict[str, Any]:
    q, v, rows, keys, grad = _inputs(shape, column, cfg.seed, PRECISIONS[cfg.precision] or torch.float32)
    variant = axial_kernel.selected_variant()

    def fused() -> None:
        torch.autograd.grad(FusedAxialRelPosAttention.apply(q, v, rows, variant), (q, v, rows), grad)

    def gemm() -> None:
        torch.autograd.grad(AxialRelPosAttention.apply(q, v, keys), (q, v, keys), grad)

    t = time_interleaved(
        {"fused": fused, "gemm": gemm},
        device="cpu",
        warmup=warmup,
        repeats=repeats,
        budget_s=cfg.time_budget_s,
        min_repeats=cfg.min_repeats,
    )
    B, L, S = q.shape[0], q.shape[-2], q.shape[-1]
    return {
        "shape": f"{shape[0]}: {B}x{shape[2]}x{shape[3]}x{shape[4]}x{shape[5]}",
        "pass": "column" if column else "row",
        "S": S,
        "lines": B * shape[2] * L,
        "fused_ms": t["fused"].median_ms,
        "gemm_ms": t["gemm"].median_ms,
        "gemm_over_fused": t["gemm"].median_ms / t["fused"].median_ms,
        "fused_min_ms": t["fused"].min_ms,
        "gemm_min_ms": t["gemm"].min_ms,
        "min_gemm_over_fused": t["gemm"].min_ms / t["fused"].min_ms,
        "repeats": t["fused"].n,
        "variant": variant,
        "load_1m": load_average(),
    }


def run_axial_bench(cfg: BenchConfig, shapes: list[AxialShape] | None = None) -> BenchTable:
    """Times the fused kernel (the selected variant) against the GEMM path at each shape and pass.

    Raises:
        ValueError: on a non-CPU device, or when the kernel is unavailable (the comparison would be empty).
    """
    if cfg.device != "cpu":
        raise ValueError("the axial benchmark compares CPU implementations; use --device cpu")
    variant = axial_kernel.selected_variant()
    if not axial_kernel.available(variant):
        raise ValueError(f"the fused kernel ({variant}) is unavailable: {axial_kernel.build_error(variant)}")
    _, repeats, warmup = cfg.resolved(batch=8, repeats=10, warmup=1)
    shapes = shapes or (QUICK_SHAPES if cfg.quick else SHAPES)
    env = environment(cfg.device, cfg.precision)
    rows = []
    with torch.autocast("cpu", enabled=False):
        for shape in shapes:
            for column in (False, True):
                row = _measure(shape, column, cfg, repeats, warmup)
                row.update(isa=env["isa"], precision=cfg.precision, torch=env["torch"], threads=env["threads"])
                _LOGGER.info("%s %s: gemm/fused %.2f", row["shape"], row["pass"], row["gemm_over_fused"])
                rows.append(row)
    notes = [
        f"Forward+backward of one axial positional layer (no softmax), {cfg.precision} tensors (bf16: bfloat16 "
        "activations and table, as under autocast), fused kernel vs batched GEMMs, timed "
        "round-robin in one process; median ms (minima in their own columns). gemm_over_fused > 1: the kernel is "
        "faster. Lines = batch x heads x lines of the other axis.",
        load_note(rows),
    ]
    return BenchTable(
        kind="axial",
        columns=COLUMNS,
        rows=rows,
        md_columns=MD_COLUMNS,
        title="Axial layer: fused kernel vs batched GEMMs",
        notes=notes,
        env=env,
    )
