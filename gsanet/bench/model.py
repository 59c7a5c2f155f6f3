"""Model benchmark: training throughput, inference latency and achieved FLOP/s of whole ResNet-50-class networks.

For gsanet's ``gsa_resnet50`` and ``conv_resnet50`` (registered in timm by ``import gsanet``) and timm's ``resnet50``,
``lambda_resnet50ts``, ``halonet50ts`` and ``botnet50ts_256``, and the main job's pair ``gsa_resnet26_tiny`` /
``conv_resnet26_tiny`` (1x28x28 inputs, 10 classes, batch 128 as in training): training images/s (forward, backward
and an SGD step, batch 8 unless the model's case says otherwise, random inputs and labels), inference latency
(``model.eval()`` under ``torch.inference_mode``) at batch 1 and at the case's inference batch (the training batch
unless the case says otherwise; 16 for the ResNet-50 pair, 256 for the tiny pair), and the achieved GFLOP/s of a
training step (``FlopCounterMode`` FLOPs of forward+backward over the median step time) beside a float32
matrix-product peak measured in the same run.

The two networks of each of :data:`PAIRS` are timed side by side, round-robin in one process (their training steps
interleaved, then their inference calls), and the pair table gives GSA images/s over conv images/s for training and
for inference beside the pair's targets (:class:`Pair`); every other model is timed alone.

Input sizes are 224x224, except where a model requires more: ``halonet50ts`` (its stage-3 maps must be divisible by
its block size 8, so 256) and ``botnet50ts_256`` (fixed 256). ``resnet50`` also runs at 256 as their reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F

from .config import BenchConfig
from .environment import cpu_isa, environment, load_average
from .measure import autocast, count_flops, matmul_peak_gflops, time_interleaved
from .report import BenchTable, Target, load_note, markdown_columns

__all__ = [
    "COLUMNS",
    "CSV_ONLY",
    "DEFAULT_BATCH",
    "MD_COLUMNS",
    "MODELS",
    "PAIRS",
    "PAIR_COLUMNS",
    "ModelCase",
    "Pair",
    "pair_rows",
    "run_model_bench",
    "timed_together",
]

_LOGGER = logging.getLogger(__name__)


class ModelCase(NamedTuple):
    """One model of the benchmark: timm name, input side, note, input channels, classes, training batch and
    inference batch (None: the benchmark's batch, the model's default classes, the training batch)."""

    name: str
    img_size: int
    note: str = ""
    in_chans: int = 3
    num_classes: int | None = None
    batch: int | None = None
    infer_batch: int | None = None


DEFAULT_BATCH = 8
"""The training batch of a case that names none, unless ``--batch-size`` (or ``--quick``) says otherwise."""

MODELS: list[ModelCase] = [
    ModelCase("gsa_resnet50", 224, infer_batch=16),
    ModelCase("conv_resnet50", 224, infer_batch=16),
    ModelCase("resnet50", 224),
    ModelCase("lambda_resnet50ts", 224),
    ModelCase("resnet50", 256, "reference for the 256 rows"),
    ModelCase("halonet50ts", 256, "256: stage-3 maps must divide by its block size 8"),
    ModelCase("botnet50ts_256", 256, "fixed input size 256"),
    ModelCase("gsa_resnet26_tiny", 28, "the main job's model: 1x28x28, 10 classes, batch 128", 1, 10, 128, 256),
    ModelCase("conv_resnet26_tiny", 28, "its conv twin, same inputs", 1, 10, 128, 256),
]
"""The models, in order."""


class Pair(NamedTuple):
    """A GSA network, its conv twin, and the targets for GSA images/s over conv images/s (higher is better) in a
    training step and in inference."""

    gsa: str
    conv: str
    train_target: Target
    infer_target: Target


PAIRS: list[Pair] = [
    Pair("gsa_resnet26_tiny", "conv_resnet26_tiny", Target(">=", 0.8), Target(">=", 0.9)),
    Pair("gsa_resnet50", "conv_resnet50", Target(">=", 1.0), Target(">=", 1.1)),
]
"""The pairs timed side by side; the pair table gives their training and inference ratios beside the FLOP ceiling."""

COLUMNS = [
    "model",
    "img_size",
    "train_img_s",
    "train_step_ms",
    "train_step_min_ms",
    "infer_b1_ms",
    "infer_batch_ms",
    "infer_batch_min_ms",
    "infer_batch_img_s",
    "params_m",
    "fwd_bwd_gflop",
    "achieved_gflops",
    "pct_of_matmul_peak",
    "status",
    "note",
    "load_1m",
    "batch",
    "infer_batch",
    "repeats",
    "matmul_peak_gflops",
    "torch",
    "device",
    "precision",
    "threads",
    "isa",
]
CSV_ONLY = tuple(COLUMNS[COLUMNS.index("note") :])
"""The columns written to the CSV only: ``note`` and those after it."""
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


class _Prepared(NamedTuple):
    """A built model with its inputs and the calls that are timed."""

    row: dict[str, Any]
    model: torch.nn.Module
    train_step: Callable[[], None]
    infer_b1: Callable[[], None]
    infer_batch: Callable[[], None]


def _prepare(case: ModelCase, row: dict[str, Any], cfg: BenchConfig) -> _Prepared:
    """Builds the model, its random inputs, labels and optimizer, and counts a training step's FLOPs (its first
    warm-up step)."""
    device, size, batch = cfg.device, case.img_size, row["batch"]
    torch.manual_seed(cfg.seed)
    model = _create(case).to(device)
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    num_classes = getattr(model, "num_classes", 1000) or 1000
    x = torch.randn(batch, case.in_chans, size, size, device=device)
    x_infer = torch.randn(row["infer_batch"], case.in_chans, size, size, device=device)
    target = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cfg.precision):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()

    def infer(images: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(device, cfg.precision):
            model(images)

    model.train()
    row["fwd_bwd_gflop"] = count_flops(train_step) / 1e9
    return _Prepared(row, model, train_step, lambda: infer(x[:1]), lambda: infer(x_infer))


def _time_group(prepared: dict[str, _Prepared], *, repeats: int, warmup: int, cfg: BenchConfig) -> None:
    """Times the prepared models round-robin (training steps, then inference at batch 1, then at the inference
    batch) and fills in their rows."""
    timing = dict(
        device=cfg.device,
        warmup=warmup,
        repeats=repeats,
        budget_s=cfg.time_budget_s * len(prepared),  # each model's share as when timed alone
        min_repeats=cfg.min_repeats,
    )
    for p in prepared.values():
        p.model.train()
    train = time_interleaved({k: p.train_step for k, p in prepared.items()}, **timing)
    for p in prepared.values():
        p.model.eval()
    timing["warmup"] = max(warmup, 1)  # the first eval call (the FLOP count was the first training step)
    b1 = time_interleaved({k: p.infer_b1 for k, p in prepared.items()}, **timing)
    infer = time_interleaved({k: p.infer_batch for k, p in prepared.items()}, **timing)
    for key, p in prepared.items():
        row, t = p.row, train[key]
        row.update(
            train_step_ms=t.median_ms,
            train_step_min_ms=t.min_ms,
            train_img_s=row["batch"] / t.median_ms * 1e3,
            achieved_gflops=row["fwd_bwd_gflop"] * 1e3 / t.median_ms,
            repeats=t.n,
            infer_b1_ms=b1[key].median_ms,
            infer_batch_ms=infer[key].median_ms,
            infer_batch_min_ms=infer[key].min_ms,
            infer_batch_img_s=row["infer_batch"] / infer[key].median_ms * 1e3,
        )
        row["pct_of_matmul_peak"] = 100 * row["achieved_gflops"] / row["matmul_peak_gflops"]


def _failure(e: Exception) -> str:
    if isinstance(e, LookupError):
        return str(e).strip("'\"")
    return f"failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"


def _bench_group(
    group: list[ModelCase], rows: list[dict[str, Any]], *, repeats: int, warmup: int, cfg: BenchConfig, peak_n: int
) -> None:
    """Measures the models of one group side by side; a model that cannot be built or fails gets a status row."""
    prepared: dict[str, _Prepared] = {}
    for case, row in zip(group, rows, strict=True):
        try:
            prepared[f"{case.name}@{case.img_size}"] = _prepare(case, row, cfg)
        except (LookupError, RuntimeError, AssertionError, ValueError) as e:
            row["status"] = _failure(e)
            _LOGGER.warning("%s @%d %s", case.name, case.img_size, row["status"])
    if not prepared:
        return
    peak = matmul_peak_gflops(cfg.device, n=peak_n, repeats=10)["best"]  # now, just before timing: a shared machine
    for p in prepared.values():
        p.row["matmul_peak_gflops"] = peak
    try:
        _time_group(prepared, repeats=repeats, warmup=warmup, cfg=cfg)
    except (RuntimeError, AssertionError, ValueError) as e:
        for p in prepared.values():
            p.row["status"] = _failure(e)
        _LOGGER.warning("%s: %s", " and ".join(prepared), _failure(e))
        return
    for key, p in prepared.items():
        p.row.update(status="ok", load_1m=load_average())
        _LOGGER.info("%s: %.2f img/s training, %.2f img/s inference", key, p.row["train_img_s"],
                     p.row["infer_batch_img_s"])  # fmt: skip


def timed_together(cases: Sequence[ModelCase]) -> list[list[int]]:
    """Indices of the cases timed together, round-robin: each of :data:`PAIRS` at an input size where both networks
    are listed (GSA first), every other case alone; in the order of first appearance."""
    partner = {p.gsa: p.conv for p in PAIRS} | {p.conv: p.gsa for p in PAIRS}
    gsa_names = {p.gsa for p in PAIRS}
    index = {(c.name, c.img_size): i for i, c in enumerate(cases)}
    done: set[int] = set()
    groups = []
    for i, case in enumerate(cases):
        if i in done:
            continue
        j = index.get((partner.get(case.name, ""), case.img_size))
        if j is None or j in done or j == i:
            group = [i]
        else:
            group = [i, j] if case.name in gsa_names else [j, i]
        done.update(group)
        groups.append(group)
    return groups


def run_model_bench(cfg: BenchConfig, *, models: Sequence[tuple] | None = None) -> BenchTable:
    """Runs the model benchmark.

    Args:
        cfg: shared options; defaults here are batch 8, 10 repeats, 1 warm-up step after the FLOP-counting step.
            An explicit ``--batch-size`` (or ``--quick``'s) applies to the training and inference of every model;
            otherwise a case's own batches (the tiny pair's 128 and 256, the ResNet-50 pair's inference 16) win.
        models: :class:`ModelCase` tuples (at least name, input side, note); default :data:`MODELS`.

    Returns:
        The table, one row per model and input size; models that are not registered or fail are rows with a reason.
    """
    batch, repeats, warmup = cfg.resolved(batch=DEFAULT_BATCH, repeats=10, warmup=1)
    cases = [ModelCase(*m) for m in (models or MODELS)]
    env = environment(cfg.device, cfg.precision)
    peak_n = 1024 if cfg.quick else 2048
    explicit = cfg.batch_size is not None or cfg.quick
    rows: list[dict[str, Any]] = []
    for case in cases:
        train_batch = batch if explicit or case.batch is None else case.batch
        infer_batch = batch if explicit else case.infer_batch or train_batch
        row: dict[str, Any] = {"model": case.name, "img_size": case.img_size, "note": case.note}
        row.update(batch=train_batch, infer_batch=infer_batch)
        row.update({k: env.get(k) for k in ("torch", "device", "precision", "threads", "isa")})
        rows.append(row)
    for group in timed_together(cases):
        _bench_group([cases[i] for i in group], [rows[i] for i in group], repeats=repeats, warmup=warmup, cfg=cfg,
                     peak_n=peak_n)  # fmt: skip
    peaks = [r["matmul_peak_gflops"] for r in rows if r.get("matmul_peak_gflops")]
    notes = [
        "Training step: forward, cross-entropy on random labels, backward, SGD (momentum 0.9) at the `batch` column's "
        f"batch; median (and minimum) of up to {repeats} steps after a FLOP-counting step and {warmup} warm-up "
        "step(s). Inference: `model.eval()` under `torch.inference_mode`, median latency at batch 1 and at the "
        "`infer_batch` column's batch (CSV). The networks of a GSA/conv pair are timed round-robin in one process.",
        "Achieved GFLOP/s: `FlopCounterMode` FLOPs of forward+backward (matrix products and convolutions) over the "
        f"median step time; `pct_of_matmul_peak` compares it with the float32 {peak_n}x{peak_n} matrix-product "
        "throughput (best of 10) measured just before that model (or pair) was timed"
        + (f" ({min(peaks):.0f} to {max(peaks):.0f} GFLOP/s in this run)." if peaks else "."),
        load_note(rows),
    ]
    pairs = pair_rows(rows, isa=cpu_isa() if torch.device(cfg.device).type == "cpu" else "")
    extra = []
    if pairs:
        notes.append(PAIR_NOTE)
        extra = [("GSA networks against their conv twins (training and inference)", "pairs", PAIR_COLUMNS, pairs)]
    return BenchTable(
        kind="model",
        columns=COLUMNS,
        md_columns=MD_COLUMNS,
        rows=rows,
        title="Whole models: training throughput, inference latency, achieved FLOP/s",
        notes=notes,
        extra_tables=extra,
        env=env,
    )


PAIR_COLUMNS = [
    "gsa",
    "conv",
    "img_size",
    "precision",
    "isa",
    "train_batch",
    "gsa_train_img_s",
    "conv_train_img_s",
    "train_ratio",
    "train_target",
    "train_met",
    "infer_batch",
    "gsa_infer_img_s",
    "conv_infer_img_s",
    "infer_ratio",
    "infer_target",
    "infer_met",
    "flop_ceiling",
    "train_of_ceiling",
]
PAIR_NOTE = (
    "Pairs: each GSA network and its conv twin timed side by side. `train_ratio` and `infer_ratio` are GSA images/s "
    "over conv images/s (higher is better) in a training step and in inference at the pair's batches; `*_met` says "
    "whether the target beside it is met. `flop_ceiling` = conv forward+backward FLOPs / GSA's, the training ratio at "
    "equal FLOP/s; `train_of_ceiling` = `train_ratio` / `flop_ceiling`."
)


def pair_rows(rows: list[dict[str, Any]], *, isa: str) -> list[dict[str, Any]]:
    """The pair table: for each of :data:`PAIRS` measured (status ``ok``) at an input size, GSA images/s over its
    twin's for training and for inference, each beside its target and whether it is met, and the FLOP ceiling.

    Args:
        rows: the model table's rows.
        isa: the instruction set the rows were measured at (empty off CPU).
    """
    ok = {(r["model"], r["img_size"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for pair in PAIRS:
        for size in sorted({size for name, size in ok if name == pair.gsa and (pair.conv, size) in ok}):
            g, c = ok[(pair.gsa, size)], ok[(pair.conv, size)]
            train = g["train_img_s"] / c["train_img_s"]
            infer = g["infer_batch_img_s"] / c["infer_batch_img_s"]
            ceiling = c["fwd_bwd_gflop"] / g["fwd_bwd_gflop"]
            out.append(
                dict(gsa=pair.gsa, conv=pair.conv, img_size=size, precision=g.get("precision"), isa=isa,
                     train_batch=g["batch"], gsa_train_img_s=g["train_img_s"], conv_train_img_s=c["train_img_s"],
                     train_ratio=train, train_target=str(pair.train_target),
                     train_met=pair.train_target.verdict(train), infer_batch=g["infer_batch"],
                     gsa_infer_img_s=g["infer_batch_img_s"], conv_infer_img_s=c["infer_batch_img_s"],
                     infer_ratio=infer, infer_target=str(pair.infer_target),
                     infer_met=pair.infer_target.verdict(infer), flop_ceiling=ceiling,
                     train_of_ceiling=train / ceiling)
            )  # fmt: skip
    return out
