"""Model benchmark: training throughput, inference latency and achieved FLOP/s of whole ResNet-50-class networks.

For gsanet's ``gsa_resnet50`` and ``conv_resnet50`` (registered in timm by ``import gsanet``) and timm's ``resnet50``,
``lambda_resnet50ts``, ``halonet50ts`` and ``botnet50ts_256``, and the main job's pair ``gsa_resnet26_tiny`` /
``conv_resnet26_tiny`` (1x28x28 inputs, 10 classes, batch 128 as in training): training images/s (forward, backward
and an SGD step, batch 8 unless the model's case says otherwise, random inputs and labels), inference latency at
batch 1 and at the training batch (``torch.inference_mode``),
and the achieved GFLOP/s of a training step (``FlopCounterMode`` FLOPs of forward+backward over the median step time)
beside a float32 matrix-product peak measured in the same run.

Input sizes are 224x224, except where a model requires more: ``halonet50ts`` (its stage-3 maps must be divisible by
its block size 8, so 256) and ``botnet50ts_256`` (fixed 256). ``resnet50`` also runs at 256 as their reference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F

from .config import BenchConfig
from .environment import environment, load_average
from .measure import autocast, count_flops, matmul_peak_gflops, time_fn
from .report import BenchTable, load_note, markdown_columns

__all__ = ["COLUMNS", "CSV_ONLY", "MD_COLUMNS", "MODELS", "PAIRS", "PAIR_COLUMNS", "ModelCase", "run_model_bench"]

_LOGGER = logging.getLogger(__name__)


class ModelCase(NamedTuple):
    """One model of the benchmark: timm name, input side, note, input channels, classes and batch (None: the
    benchmark's batch and the model's default classes)."""

    name: str
    img_size: int
    note: str = ""
    in_chans: int = 3
    num_classes: int | None = None
    batch: int | None = None


MODELS: list[ModelCase] = [
    ModelCase("gsa_resnet50", 224),
    ModelCase("conv_resnet50", 224),
    ModelCase("resnet50", 224),
    ModelCase("lambda_resnet50ts", 224),
    ModelCase("resnet50", 256, "reference for the 256 rows"),
    ModelCase("halonet50ts", 256, "256: stage-3 maps must divide by its block size 8"),
    ModelCase("botnet50ts_256", 256, "fixed input size 256"),
    ModelCase("gsa_resnet26_tiny", 28, "the main job's model: 1x28x28, 10 classes, batch 128", 1, 10, 128),
    ModelCase("conv_resnet26_tiny", 28, "its conv twin, same inputs", 1, 10, 128),
]
"""The models, in order."""

PAIRS: list[tuple[str, str]] = [("gsa_resnet50", "conv_resnet50"), ("gsa_resnet26_tiny", "conv_resnet26_tiny")]
"""(GSA network, its conv twin): the pair table gives their training-throughput ratio beside the FLOP ceiling."""

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
CSV_ONLY = ("note", "load_1m", "batch", "repeats", "matmul_peak_gflops", "torch", "device", "precision", "threads")
"""The columns written to the CSV only."""
MD_COLUMNS = markdown_columns(COLUMNS, CSV_ONLY)
"""The columns of the markdown table."""


def _create(case: ModelCase) -> torch.nn.Module:
    import gsanet  # noqa: F401  (registers gsanet's models in timm)

    if not timm.is_model(case.name):
        raise LookupError(f"skipped: {case.name} is not registered in timm (gsanet.models does not define it yet)")
    kwargs: dict[str, Any] = {"in_chans": case.in_chans}
    if case.num_classes is not None:
        kwargs["num_classes"] = case.num_classes
    return timm.create_model(case.name, **kwargs)


def _bench_one(case: ModelCase, *, batch: int, repeats: int, warmup: int, cfg: BenchConfig) -> dict[str, Any]:
    device, size = cfg.device, case.img_size
    torch.manual_seed(cfg.seed)
    model = _create(case).to(device)
    row: dict[str, Any] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    num_classes = getattr(model, "num_classes", 1000) or 1000
    x = torch.randn(batch, case.in_chans, size, size, device=device)
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


def run_model_bench(cfg: BenchConfig, *, models: Sequence[tuple] | None = None) -> BenchTable:
    """Runs the model benchmark.

    Args:
        cfg: shared options; defaults here are batch 8, 10 repeats, 1 warm-up step after the FLOP-counting step.
            An explicit ``--batch`` applies to every model; otherwise a case's own batch (the tiny pair's 128) wins.
        models: :class:`ModelCase` tuples (at least name, input side, note); default :data:`MODELS`.

    Returns:
        The table, one row per model and input size; models that are not registered or fail are rows with a reason.
    """
    batch, repeats, warmup = cfg.resolved(batch=8, repeats=10, warmup=1)
    models = [ModelCase(*m) for m in (models or MODELS)]
    env = environment(cfg.device, cfg.precision)
    peak_n = 1024 if cfg.quick else 2048
    peaks: list[float] = []
    rows: list[dict[str, Any]] = []
    for case in models:
        name, size = case.name, case.img_size
        explicit = cfg.batch_size is not None or cfg.quick  # --batch-size (or --quick's batch) applies to every model
        case_batch = batch if explicit or case.batch is None else case.batch
        row: dict[str, Any] = {"model": name, "img_size": size, "note": case.note, "batch": case_batch}
        row.update({k: env.get(k) for k in ("torch", "device", "precision", "threads", "isa")})
        try:
            peak = matmul_peak_gflops(cfg.device, n=peak_n, repeats=10)["best"]  # now: the machine is shared
            peaks.append(peak)
            row["matmul_peak_gflops"] = peak
            row.update(_bench_one(case, batch=case_batch, repeats=repeats, warmup=warmup, cfg=cfg))
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
    pairs = _pair_rows(rows)
    return BenchTable(
        kind="model",
        columns=COLUMNS,
        md_columns=MD_COLUMNS,
        rows=rows,
        title="Whole models: training throughput, inference latency, achieved FLOP/s",
        notes=notes,
        extra_tables=[("GSA networks against their conv twins (training)", "pairs", PAIR_COLUMNS, pairs)]
        if pairs
        else [],
        env=env,
    )


PAIR_COLUMNS = [
    "gsa",
    "conv",
    "img_size",
    "batch",
    "gsa_img_s",
    "conv_img_s",
    "speed_ratio",
    "flop_ceiling",
    "of_ceiling",
]


def _pair_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each of :data:`PAIRS` measured in this run: training images/s of the GSA network over its twin's
    (``speed_ratio``), the ratio their forward+backward FLOPs allow at equal FLOP/s (``flop_ceiling`` = conv FLOPs /
    GSA FLOPs), and how much of that ceiling is reached."""
    ok = {(r["model"], r["img_size"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for gsa, conv in PAIRS:
        for size in sorted({size for name, size in ok if name == gsa and (conv, size) in ok}):
            g, c = ok[(gsa, size)], ok[(conv, size)]
            speed = g["train_img_s"] / c["train_img_s"]
            ceiling = c["fwd_bwd_gflop"] / g["fwd_bwd_gflop"]
            out.append(
                dict(gsa=gsa, conv=conv, img_size=size, batch=g["batch"], gsa_img_s=g["train_img_s"],
                     conv_img_s=c["train_img_s"], speed_ratio=speed, flop_ceiling=ceiling, of_ceiling=speed / ceiling)
            )  # fmt: skip
    return out
