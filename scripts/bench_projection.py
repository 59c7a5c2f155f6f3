"""The GSA module's q/k/v projection: one batched matrix product (``torch.bmm`` of the weight, expanded over the
images, with each image's ``(channels, pixels)`` matrix) against the 1x1 convolution (oneDNN), forward and
forward+backward, float32 and (on AMX CPUs) bfloat16 autocast, at the stage shapes of the two benchmarked networks.

The dispatch rule ``gsanet.layers.gsa._projection_as_bmm`` rests on these tables; prints a markdown table and writes
``results/bench_projection_torch<version>_<isa>.{md,csv}``::

    python scripts/bench_projection.py --threads 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python scripts/bench_projection.py
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

SHAPES = [(128, 16, 28), (128, 32, 28), (128, 32, 14), (128, 64, 14), (128, 64, 7), (128, 128, 7), (128, 128, 4)]
SHAPES += [(8, 64, 56), (8, 128, 56), (8, 128, 28), (8, 256, 28), (8, 256, 14), (8, 512, 14), (8, 512, 7)]
"""(batch, channels, side): every GSA module input in ``gsa_resnet26_tiny`` (batch 128) and ``gsa_resnet50`` (batch
8), the stride-2 first blocks' at the larger side; the projection writes 3x the channels."""
COLUMNS = ["precision", "shape", "conv_train_ms", "bmm_train_ms", "train_ratio", "conv_infer_ms", "bmm_infer_ms",
           "infer_ratio"]


def _cases(shape: tuple[int, int, int], dtype: torch.dtype | None) -> dict[str, object]:
    B, C, S = shape
    x = torch.randn(B, C, S, S, requires_grad=True)
    w = torch.randn(3 * C, C, 1, 1, requires_grad=True)
    cast = dtype or torch.float32
    grad = torch.randn(B, 3 * C, S * S, dtype=cast)

    def conv(train: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None), torch.set_grad_enabled(train):
            y = F.conv2d(x, w)
        if train:
            y.backward(grad.view_as(y))

    def bmm(train: bool) -> None:
        with torch.set_grad_enabled(train):
            y = torch.bmm(w.flatten(1).to(cast).expand(B, -1, -1), x.view(B, C, S * S).to(cast))
        if train:
            y.backward(grad)

    return {"conv_train": lambda: conv(True), "bmm_train": lambda: bmm(True),
            "conv_infer": lambda: conv(False), "bmm_infer": lambda: bmm(False)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    precisions = {"fp32": None}
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and axial_kernel.cpu_has("amx_bf16", "amx_tile"):
        precisions["bf16"] = torch.bfloat16
    rows = []
    for name, dtype in precisions.items():
        for shape in SHAPES:
            t = time_interleaved(_cases(shape, dtype), device="cpu", warmup=2, repeats=args.repeats)
            ms = {k: v.median_ms for k, v in t.items()}
            rows.append(
                {
                    "precision": name,
                    "shape": f"{shape[0]}x{shape[1]}x{shape[2]}x{shape[2]}",
                    **{f"{k}_ms": round(v, 3) for k, v in ms.items()},
                    "train_ratio": round(ms["conv_train"] / ms["bmm_train"], 2),
                    "infer_ratio": round(ms["conv_infer"] / ms["bmm_infer"], 2),
                }
            )
    head = (
        f"torch {torch.__version__}, isa {cpu_isa()}, {args.threads} threads, median of {args.repeats} round-robin "
        f"rounds, load {load_average()}; ratio = conv time / bmm time (> 1: the matrix product faster); train = "
        "forward + backward (input and weight gradients)"
    )
    stem = args.out / f"bench_projection_torch{torch.__version__.split('+')[0]}_{cpu_isa()}"
    print(save_table(stem, "python " + " ".join(sys.argv), head, COLUMNS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
