"""Issue 20's A/B: the GSA module's forward as it was before the round against the current one, in one process.

The "before" forward is reproduced here from commit 2c95d28 (content branch in float32 under autocast, its output
added by a separate sum, the 1x1 convolution for the projection, the batch norm as its own pass in eval mode too,
ATen's ceil-mode pool); the axial passes are the same kernel calls. Each case builds one model and times training
steps (forward, backward, SGD) or inference batches with the two forwards alternating round by round, so a drift of a
shared machine hits both alike. Prints a markdown table and writes ``results/ab_issue20_<isa>.{md,csv}``::

    python scripts/ab_issue20.py --threads 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python scripts/ab_issue20.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import gsanet  # noqa: F401  (registers the models)
from gsanet.bench.environment import cpu_isa, load_average
from gsanet.layers import axial_kernel
from gsanet.layers.gsa import GlobalSelfAttention
from gsanet.tables import save_table

CASES = [("gsa_resnet26_tiny", 1, 28, 128, 256), ("gsa_resnet50", 3, 224, 8, 16)]
"""(model, input channels, side, training batch, inference batch): the two benchmarked networks."""
COLUMNS = ["model", "precision", "mode", "batch", "before_ms", "now_ms", "now_over_before"]
_NEW_FORWARD = GlobalSelfAttention.forward


def _before_forward(self: GlobalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The module's forward at commit 2c95d28 (the default switches: content, axial positional, no softmax)."""
    B, _, H, W = x.shape
    h, dk, dv = self.heads, self.dim_key // self.heads, self.dim_out // self.heads
    q, k, v = self.qkv(x).split([self.dim_key, self.dim_key, self.dim_out], dim=1)
    q, v = q.reshape(B, h, dk, H, W), v.reshape(B, h, dv, H, W)
    with torch.autocast(device_type=x.device.type, enabled=False):
        dtype = torch.promote_types(q.dtype, torch.float32)
        qq, kk, vv = (t.reshape(B, h, -1, H * W).to(dtype) for t in (q, k, v))
        context = torch.matmul(kk.softmax(dim=-1), vv.transpose(-1, -2))
        content = torch.matmul(context.transpose(-1, -2), qq)
    content = content.reshape(B, h, dv, H, W).to(v.dtype)
    col = self._axis_pass(q.transpose(-1, -2), v.transpose(-1, -2), self.rel_col)
    z = self.norm(col.transpose(-1, -2).reshape(B, h * dv, H, W)).view(B, h, dv, H, W)
    out = (content + self._axis_pass(q, z, self.rel_row)).reshape(B, self.dim_out, H, W)
    return F.avg_pool2d(out, 2, ceil_mode=True) if self.stride == 2 else out


def _time(case: tuple[str, int, int, int, int], precision: str, train: bool, repeats: int) -> dict[str, float]:
    name, chans, side, train_batch, infer_batch = case
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, in_chans=chans).train(train)
    batch = train_batch if train else infer_batch
    x, y = torch.randn(batch, chans, side, side), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if not train:
                with torch.inference_mode():
                    model(x)
                return
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {"before": [], "now": []}
    for round_ in range(repeats + 1):
        for label, forward in (("before", _before_forward), ("now", _NEW_FORWARD)):
            GlobalSelfAttention.forward = forward
            start = time.perf_counter()
            step()
            if round_:  # the first round warms both up
                times[label].append(time.perf_counter() - start)
    GlobalSelfAttention.forward = _NEW_FORWARD
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    precisions = ["fp32"]
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and axial_kernel.cpu_has("avx512_bf16"):
        precisions.append("bf16")
    rows = []
    for case in CASES:
        for precision in precisions:
            for train in (True, False):
                t = _time(case, precision, train, args.repeats)
                rows.append(
                    {
                        "model": case[0],
                        "precision": precision,
                        "mode": "training step" if train else "inference",
                        "batch": case[3] if train else case[4],
                        "before_ms": round(t["before"], 1),
                        "now_ms": round(t["now"], 1),
                        "now_over_before": round(t["now"] / t["before"], 3),
                    }
                )
                print(rows[-1], flush=True)
    head = (
        f"torch {torch.__version__}, isa {cpu_isa()}, {args.threads} threads, median of {args.repeats} alternating "
        f"rounds, load {load_average()}; now_over_before < 1: the current module is faster"
    )
    stem = args.out / f"ab_issue20_{cpu_isa()}"
    print(save_table(stem, "python " + " ".join(sys.argv), head, COLUMNS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
