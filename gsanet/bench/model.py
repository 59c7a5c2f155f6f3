"""Model benchmark: training throughput, inference latency and achieved FLOP/s of whole ResNet-50-class networks.

For gsanet's ``gsa_resnet50`` and ``conv_resnet50`` (registered in timm by ``import gsanet``) and timm's ``resnet50``,
``lambda_resnet50ts``, ``halonet50ts`` and ``botnet50ts_256``: training images/s (forward, backward and an SGD step,
batch 8, random inputs and labels), inference latency at batch 1 and at the training batch (``torch.inference_mode``),
and the achieved GFLOP/s of a training step (``FlopCounterMode`` FLOPs of forward+backward over the median step time)
beside a float32 matrix-product peak measured in the same run.

Input sizes are 224x224, except where a model requires more: ``halonet50ts`` (its stage-3 maps must be divisible by
its block size 8, so 256) and ``botnet50ts_256`` (fixed 256). ``resnet50`` also runs at 256 as their reference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F

from .timing import (
    BenchConfig,
    BenchTable,
    autocast,
    count_flops,
    environment,
    load_average,
    load_note,
    matmul_peak_gflops,
    time_fn,
)

__all__ = ["COLUMNS", "MODELS", "run_model_bench"]

_LOGGER = logging.getLogger(__name__)

MODELS: list[tuple[str, int, str]] = [
    ("gsa_resnet50", 224, ""),
    ("conv_resnet50", 224, ""),
    ("resnet50", 224, ""),
    ("lambda_resnet50ts", 224, ""),
    ("resnet50", 256, "reference for the 256 rows"),
    ("halonet50ts", 256, "256: stage-3 maps must divide by its block size 8"),
    ("botnet50ts_256", 256, "fixed input size 256"),
]
"""(timm model name, input side, note)."""

COLUMNS = [
    "model",
    "img_size",
    "train_img_s",
    "train_step_ms",
    "train_step_min_ms",
    "infer_b1_ms",
    "infer_batch_ms",
    "infer_batch_img_s",
    "params_m",
    "fwd_bwd_gflop",
    "achieved_gflops",
    "pct_of_matmul_peak",
    "status",
    "note",
    "load_1m",
    "batch",
    "repeats",
    "matmul_peak_gflops",
    "torch",
    "device",
    "precision",
    "threads",
]
_MD_COLUMNS = COLUMNS[:13]


def _create(name: str) -> torch.nn.Module:
    import gsanet  # noqa: F401  (registers gsanet's models in timm)

    if not timm.is_model(name):
        raise LookupError(f"skipped: {name} is not registered in timm (gsanet.models does not define it yet)")
    return timm.create_model(name)


def _bench_one(name: str, size: int, *, batch: int, repeats: int, warmup: int, cfg: BenchConfig) -> dict[str, Any]:
    device = cfg.device
    torch.manual_seed(cfg.seed)
    model = _create(name).to(device)
    row: dict[str, Any] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    num_classes = getattr(model, "num_classes", 1000) or 1000
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cfg.precision):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()

    model.train()
    flops = count_flops(train_step)  # also the first warm-up step
    timing = dict(
        device=device, warmup=warmup, repeats=repeats, budget_s=cfg.time_budget_s, min_repeats=cfg.min_repeats
    )
    train = time_fn(train_step, **timing)
    row.update(
        train_step_ms=train.median_ms,
        train_step_min_ms=train.min_ms,
        train_img_s=batch / train.median_ms * 1e3,
        fwd_bwd_gflop=flops / 1e9,
        achieved_gflops=flops / train.median_ms / 1e6,
        repeats=train.n,
    )
    model.eval()
    for key, images in (("infer_b1_ms", x[:1]), ("infer_batch_ms", x)):

        def infer(images: torch.Tensor = images) -> None:
            with torch.inference_mode(), autocast(device, cfg.precision):
                model(images)

        row[key] = time_fn(infer, **{**timing, "warmup": max(warmup, 1)}).median_ms
    row["infer_batch_img_s"] = batch / row["infer_batch_ms"] * 1e3
    return row


def run_model_bench(cfg: BenchConfig, *, models: Sequence[tuple[str, int, str]] | None = None) -> BenchTable:
    """Runs the model benchmark.

    Args:
        cfg: shared options; defaults here are batch 8, 10 repeats, 1 warm-up step after the FLOP-counting step.
        models: (timm name, input side, note) list; default :data:`MODELS`.

    Returns:
        The table, one row per model and input size; models that are not registered or fail are rows with a reason.
    """
    batch, repeats, warmup = cfg.resolved(batch=8, repeats=10, warmup=1)
    models = list(models or MODELS)
    env = environment(cfg.device, cfg.precision)
    peak_n = 1024 if cfg.quick else 2048
    peaks: list[float] = []
    rows: list[dict[str, Any]] = []
    for name, size, note in models:
        row: dict[str, Any] = {"model": name, "img_size": size, "note": note, "batch": batch}
        row.update({k: env[k] for k in ("torch", "device", "precision", "threads")})
        try:
            peak = matmul_peak_gflops(cfg.device, n=peak_n, repeats=10)["best"]  # now: the machine is shared
            peaks.append(peak)
            row["matmul_peak_gflops"] = peak
            row.update(_bench_one(name, size, batch=batch, repeats=repeats, warmup=warmup, cfg=cfg))
            row["pct_of_matmul_peak"] = 100 * row["achieved_gflops"] / peak
            row["load_1m"] = load_average()
            row["status"] = "ok"
            _LOGGER.info("%s @%d: %.2f img/s", name, size, row["train_img_s"])
        except LookupError as e:
            row["status"] = str(e).strip("'\"")
            _LOGGER.warning("%s", row["status"])
        except (RuntimeError, AssertionError, ValueError) as e:
            row["status"] = f"failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
            _LOGGER.warning("%s @%d %s", name, size, row["status"])
        rows.append(row)
    notes = [
        f"Training step: forward, cross-entropy on random labels, backward, SGD (momentum 0.9); batch {batch}; median "
        f"(and minimum) of up to {repeats} steps after a FLOP-counting step and {warmup} warm-up step(s). Inference: "
        "`model.eval()` under `torch.inference_mode`, median latency at batch 1 and at the training batch.",
        "Achieved GFLOP/s: `FlopCounterMode` FLOPs of forward+backward (matrix products and convolutions) over the "
        f"median step time; `pct_of_matmul_peak` compares it with the float32 {peak_n}x{peak_n} matrix-product "
        "throughput (best of 10) measured just before that model"
        + (f" ({min(peaks):.0f} to {max(peaks):.0f} GFLOP/s in this run)." if peaks else "."),
        load_note(rows),
    ]
    return BenchTable(
        kind="model",
        columns=COLUMNS,
        md_columns=_MD_COLUMNS,
        rows=rows,
        title="Whole models: training throughput, inference latency, achieved FLOP/s",
        notes=notes,
        env=env,
    )
