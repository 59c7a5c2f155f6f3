"""The stride-2 pool of the GSA module: the extension's ``Pool2`` against ATen's ``avg_pool2d(ceil_mode=True)``.

Forward and backward at the pooled shapes of the two benchmarked networks, float32 and bfloat16, timed round-robin in
one process; prints a markdown table and writes ``results/bench_pool_torch<version>_<isa>_<variant>.{md,csv}``. The
dispatch rule (``axial_kernel.pool_usable``: every x86 build) rests on these tables, one per build and instruction
set::

    python scripts/bench_pool.py --threads 2                           # the host's build
    GSANET_KERNEL_ISA=avx512 python scripts/bench_pool.py --threads 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python scripts/bench_pool.py
    ATEN_CPU_CAPABILITY=default python scripts/bench_pool.py           # the generic build
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gsanet.bench.environment import cpu_isa, load_average
from gsanet.bench.measure import time_interleaved
from gsanet.layers import axial_kernel
from gsanet.tables import save_table

SHAPES = [(256, 32, 28, 28), (256, 64, 14, 14), (256, 128, 7, 7), (8, 128, 56, 56), (8, 256, 28, 28), (8, 512, 14, 14)]
"""(batch, channels, H, W) before the pool: the stride-2 modules of ``gsa_resnet26_tiny`` at its inference batch and
of ``gsa_resnet50`` at its training batch."""
COLUMNS = ["dtype", "shape", "aten_fwd_ms", "pool2_fwd_ms", "fwd_ratio", "aten_bwd_ms", "pool2_bwd_ms", "bwd_ratio"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variant = axial_kernel.selected_variant()
    if not axial_kernel.available(variant):
        print(f"the extension ({variant}) is unavailable: {axial_kernel.build_error(variant)}", file=sys.stderr)
        return 2
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            x = torch.randn(*shape, dtype=dtype)
            grad = torch.randn(*shape[:2], (shape[2] + 1) // 2, (shape[3] + 1) // 2, dtype=dtype)
            grad_in = torch.empty_like(x)
            fns = {
                "aten_fwd": lambda x=x: F.avg_pool2d(x, 2, ceil_mode=True),
                "pool2_fwd": lambda x=x: axial_kernel.Pool2.apply(x, variant),
                "aten_bwd": lambda g=grad, x=x: torch.ops.aten.avg_pool2d_backward(
                    g, x, [2, 2], [2, 2], [0, 0], True, True, None
                ),
                "pool2_bwd": lambda g=grad, gi=grad_in: axial_kernel.ops(variant).pool2_backward(g, gi),
            }
            t = {k: v.median_ms for k, v in time_interleaved(fns, device="cpu", warmup=2, repeats=args.repeats).items()}
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "shape": "x".join(map(str, shape)),
                    **{f"{k}_ms": round(v, 3) for k, v in t.items()},
                    "fwd_ratio": round(t["aten_fwd"] / t["pool2_fwd"], 2),
                    "bwd_ratio": round(t["aten_bwd"] / t["pool2_bwd"], 2),
                }
            )
    head = (
        f"torch {torch.__version__}, isa {cpu_isa()}, extension build {variant}, {args.threads} threads, median of "
        f"{args.repeats} round-robin rounds, load {load_average()}; ratio = ATen time / Pool2 time (> 1: Pool2 faster)"
    )
    stem = args.out / f"bench_pool_torch{torch.__version__.split('+')[0]}_{cpu_isa()}_{variant}"
    print(save_table(stem, "python " + " ".join(sys.argv), head, COLUMNS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
