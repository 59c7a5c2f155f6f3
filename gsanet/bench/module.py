"""Module benchmark: our GSA module against a 3x3 convolution and the attention peers at ResNet-50's stage shapes.

For each shape (batch 8; 56x56x64, 28x28x128, 14x14x256, 7x7x512) and layer (see :mod:`gsanet.bench.peers`):
forward+backward time (median and minimum over the repeats; the layers of one shape are timed round-robin), forward
time (``torch.no_grad``), peak memory of forward+backward (:class:`gsanet.bench.measure.MemoryTracker`), parameters, and
forward multiply-adds (``FlopCounterMode`` FLOPs / 2). Ratios are time (and memory) of the layer over the 3x3
convolution's, and for our module over gsa-pytorch's.

:func:`profile_layer` gives the operators that dominate one layer's forward+backward (``gsanet bench profile``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .config import BenchConfig
from .environment import environment, load_average
from .measure import MEMORY_METHOD, autocast, count_flops, measure_peak_memory, time_interleaved
from .peers import LAYERS, Built, SkipLayer, build_layer, dense_attention_bytes, sdpa_kernel
from .report import BenchTable, Target, load_note, markdown_columns

__all__ = [
    "COLUMNS",
    "CSV_ONLY",
    "DEFAULT_BATCH",
    "MD_COLUMNS",
    "QUICK_SHAPES",
    "STAGE_SHAPES",
    "STAGE_TARGETS",
    "format_shape",
    "measure_layers",
    "parse_shape",
    "profile_layer",
    "run_module_bench",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_BATCH = 8
"""The batch of the module benchmark unless ``--batch-size`` (or ``--quick``) says otherwise."""
STAGE_SHAPES: list[tuple[int, int, int]] = [(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]
"""(height, width, channels) of the 3x3 convolutions in ResNet-50's four stages at 224x224."""
STAGE_TARGETS: dict[tuple[int, int, int], Target] = {
    (56, 56, 64): Target("<=", 1.5),
    (28, 28, 128): Target("<=", 1.0),
    (14, 14, 256): Target("<=", 1.0),
    (7, 7, 512): Target("<=", 1.0),
}
"""Targets for our module's forward+backward time over the 3x3 convolution's (``ratio_vs_conv`` of the ``gsa`` rows;
lower is better) at the stage shapes, batch 8."""
QUICK_SHAPES: list[tuple[int, int, int]] = [(16, 16, 32), (8, 8, 64)]

COLUMNS = [
    "shape",
    "layer",
    "fwd_bwd_ms",
    "fwd_bwd_min_ms",
    "fwd_ms",
    "peak_mem_mb",
    "ratio_vs_conv",
    "ratio_vs_gsa_pytorch",
    "mem_ratio_vs_conv",
    "mem_ratio_vs_gsa_pytorch",
    "params",
    "macs",
    "min_ratio_vs_conv",
    "min_ratio_vs_gsa_pytorch",
    "gemm_path_over_ours",
    "repeats",
    "status",
    "note",
    "load_1m",
    "batch",
    "peak_alloc_mb",
    "torch",
    "device",
    "precision",
    "threads",
    "isa",
]
CSV_ONLY = ("repeats", "note", "load_1m", "batch", "peak_alloc_mb", "torch", "device", "precision", "threads", "isa")
"""The columns written to the CSV only."""
MD_COLUMNS = markdown_columns(COLUMNS, CSV_ONLY)
"""The columns of the markdown table."""


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"56x56x64"`` -> ``(56, 56, 64)`` (height, width, channels)."""
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"shape must be HxWxC, e.g. 56x56x64, got {text!r}") from e
    return h, w, c


def format_shape(shape: tuple[int, int, int]) -> str:
    """``(56, 56, 64)`` -> ``"56x56x64"``."""
    return "x".join(str(v) for v in shape)


def measure_layers(
    layers: dict[str, Built],
    *,
    batch: int,
    channels: int,
    height: int,
    width: int,
    cfg: BenchConfig,
    repeats: int,
    warmup: int,
    count_macs: bool = True,
    time_forward: bool = True,
) -> dict[str, dict[str, Any]]:
    """Measures layers on one input shape: memory pass, then round-robin timing of forward+backward (and forward).

    The memory pass is also the first warm-up call of each layer; ``warmup`` more untimed rounds follow it.

    Args:
        layers: name -> built layer; each maps ``B x C x H x W`` to the same shape.
        batch: batch size.
        channels: input (and output) channels.
        height: input height.
        width: input width.
        cfg: device, precision, seed, time budget.
        repeats: timed rounds at most.
        warmup: untimed rounds after the memory pass.
        count_macs: count forward multiply-adds.
        time_forward: also time the forward alone.

    Returns:
        name -> measurements (``fwd_bwd_ms``, ``fwd_bwd_min_ms``, ``fwd_ms``, ``peak_mem_mb``, ``peak_alloc_mb``,
        ``params``, ``macs``, ``repeats``, ``status``); a layer that fails has only ``status``.
    """
    device = cfg.device
    torch.manual_seed(cfg.seed)
    x = torch.randn(batch, channels, height, width, device=device, requires_grad=True)
    grad_out = torch.randn(batch, channels, height, width, device=device)
    grads: dict[torch.dtype, torch.Tensor] = {}

    def make_step(module: nn.Module) -> Callable[[], None]:
        params = [p for p in module.parameters() if p.requires_grad]

        def step() -> None:
            for p in params:
                p.grad = None
            x.grad = None
            with autocast(device, cfg.precision):
                y = module(x)
            y.backward(grads[y.dtype])

        return step

    def make_forward(module: nn.Module) -> Callable[[], None]:
        def forward() -> None:
            with torch.no_grad(), autocast(device, cfg.precision):
                module(x)

        return forward

    results: dict[str, dict[str, Any]] = {}
    steps, forwards = {}, {}
    for name, built in layers.items():
        module = built.module.to(device).train()
        res: dict[str, Any] = {"params": sum(p.numel() for p in module.parameters())}
        try:
            with torch.no_grad(), autocast(device, cfg.precision):
                y = module(x)
            if y.shape != x.shape:
                raise RuntimeError(f"output shape {tuple(y.shape)} differs from input shape {tuple(x.shape)}")
            grads.setdefault(y.dtype, grad_out.to(y.dtype))  # the incoming gradient, in the output's dtype
            del y
            ignore = [x, *grads.values(), *module.parameters(), *module.buffers()]
            res.update(measure_peak_memory(make_step(module), ignore=ignore, device=device))
            if count_macs:
                res["macs"] = count_flops(make_forward(module)) // 2
        except (RuntimeError, AssertionError) as e:  # out of memory, a kernel refusing the shape
            _LOGGER.warning("%s at %dx%dx%d failed: %s", name, height, width, channels, e)
            results[name] = {"status": f"failed: {str(e).splitlines()[0][:200]}"}
            continue
        res["status"] = "ok"
        results[name] = res
        steps[name], forwards[name] = make_step(module), make_forward(module)

    if steps:
        _LOGGER.info("timing %s at %dx%dx%d, batch %d", ", ".join(steps), height, width, channels, batch)
        timing = dict(device=device, warmup=warmup, repeats=repeats, budget_s=cfg.time_budget_s)
        fb = time_interleaved(steps, min_repeats=cfg.min_repeats, **timing)
        for name, t in fb.items():
            results[name].update(fwd_bwd_ms=t.median_ms, fwd_bwd_min_ms=t.min_ms, repeats=t.n)
        if time_forward:
            fw = time_interleaved(forwards, min_repeats=cfg.min_repeats, **timing)
            for name, t in fw.items():
                results[name]["fwd_ms"] = t.median_ms
    return results


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run_module_bench(
    cfg: BenchConfig,
    *,
    shapes: Sequence[tuple[int, int, int]] | None = None,
    layers: Sequence[str] | None = None,
) -> BenchTable:
    """Runs the module benchmark.

    Args:
        cfg: shared options; defaults here are batch 8, 20 repeats (within the time budget), 1 warm-up round after
            the memory pass.
        shapes: (height, width, channels) list; default :data:`STAGE_SHAPES` (:data:`QUICK_SHAPES` with quick).
        layers: names from :data:`gsanet.bench.peers.LAYERS`; default all.

    Returns:
        The table, one row per shape and layer.
    """
    batch, repeats, warmup = cfg.resolved(batch=DEFAULT_BATCH, repeats=20, warmup=1)
    shapes = list(shapes or (QUICK_SHAPES if cfg.quick else STAGE_SHAPES))
    names = list(layers or LAYERS)
    env = environment(cfg.device, cfg.precision)
    rows: list[dict[str, Any]] = []
    for h, w, c in shapes:
        built: dict[str, Built] = {}
        skipped: dict[str, str] = {}
        for name in names:
            torch.manual_seed(cfg.seed)
            try:
                layer = build_layer(name, c, h, w)
            except SkipLayer as e:
                skipped[name] = f"skipped: {e}"
                continue
            need = dense_attention_bytes(layer, batch, h, w)
            if need > cfg.mem_cap_gb * 2**30:
                skipped[name] = (
                    f"skipped: would need ~{need / 2**30:.1f} GB for N x N attention (cap {cfg.mem_cap_gb:g} GB)"
                )
                continue
            if name.startswith("nonlocal"):
                layer.note += f"; kernel {sdpa_kernel(layer.module, c, cfg.device, cfg.precision)}"
            built[name] = layer
        res = measure_layers(built, batch=batch, channels=c, height=h, width=w, cfg=cfg, repeats=repeats, warmup=warmup)
        conv, ref, gemm = res.get("conv3x3", {}), res.get("gsa_pytorch", {}), res.get("gsa_gemm", {})
        load = load_average()
        for name in names:
            row: dict[str, Any] = {"shape": format_shape((h, w, c)), "layer": name, "batch": batch, "load_1m": load}
            row.update({k: env.get(k) for k in ("torch", "device", "precision", "threads", "isa")})
            if name in skipped:
                row["status"] = skipped[name]
                rows.append(row)
                continue
            row["note"] = built[name].note
            row.update(res[name])
            row["ratio_vs_conv"] = _ratio(row.get("fwd_bwd_ms"), conv.get("fwd_bwd_ms"))
            row["min_ratio_vs_conv"] = _ratio(row.get("fwd_bwd_min_ms"), conv.get("fwd_bwd_min_ms"))
            row["mem_ratio_vs_conv"] = _ratio(row.get("peak_mem_mb"), conv.get("peak_mem_mb"))
            if name == "gsa":
                row["ratio_vs_gsa_pytorch"] = _ratio(row.get("fwd_bwd_ms"), ref.get("fwd_bwd_ms"))
                row["min_ratio_vs_gsa_pytorch"] = _ratio(row.get("fwd_bwd_min_ms"), ref.get("fwd_bwd_min_ms"))
                row["mem_ratio_vs_gsa_pytorch"] = _ratio(row.get("peak_mem_mb"), ref.get("peak_mem_mb"))
                row["gemm_path_over_ours"] = _ratio(gemm.get("fwd_bwd_ms"), row.get("fwd_bwd_ms"))
            rows.append(row)
        for row in rows[-len(names) :]:
            _LOGGER.info("%s %-12s %s ms", row["shape"], row["layer"], row.get("fwd_bwd_ms"))
    notes = [
        f"Batch {batch}; forward+backward time is the median (and minimum) of up to {repeats} round-robin repeats "
        f"after a memory pass and {warmup} warm-up round(s); forward time under `torch.no_grad`. Ratios: the layer's "
        "time (or memory) divided by the 3x3 convolution's (`ratio_vs_conv`), and for our module by gsa-pytorch's; "
        "`min_ratio_*` divide the minimum times, less sensitive to the load of a shared machine. "
        "`gemm_path_over_ours`: the same module held to the batched-GEMM axial path (`gsa_gemm`) over the default "
        "dispatch (above 1: the dispatch chose the faster path).",
        f"Peak memory: {MEMORY_METHOD}. Layers that store N x N attention matrices are skipped when ~3.5 such "
        f"matrices would exceed {cfg.mem_cap_gb:g} GB (`--mem-cap-gb`).",
        "MACs: forward multiply-adds = `FlopCounterMode` FLOPs / 2 (matrix products and convolutions only).",
        load_note(rows),
    ]
    return BenchTable(
        kind="module",
        columns=COLUMNS,
        md_columns=MD_COLUMNS,
        rows=rows,
        title="GSA module vs convolution and attention peers (forward+backward)",
        notes=notes,
        env=env,
    )


def profile_layer(
    cfg: BenchConfig,
    *,
    layer: str = "gsa",
    shape: tuple[int, int, int] = (56, 56, 64),
    row_limit: int = 10,
) -> str:
    """Profiles forward+backward of one layer with ``torch.profiler``.

    Args:
        cfg: shared options (batch default 8; repeats default 3 profiled steps after 1 warm-up).
        layer: a name from :data:`gsanet.bench.peers.LAYERS`.
        shape: (height, width, channels).
        row_limit: operators shown.

    Returns:
        Operator tables sorted by self CPU time (self CUDA time on CUDA): by operator, then by operator and input
        shapes.
    """
    batch, repeats, warmup = cfg.resolved(batch=8, repeats=3, warmup=1)
    h, w, c = shape
    torch.manual_seed(cfg.seed)
    module = build_layer(layer, c, h, w).module.to(cfg.device).train()
    x = torch.randn(batch, c, h, w, device=cfg.device, requires_grad=True)
    grad_out = torch.randn(batch, c, h, w, device=cfg.device)

    def step() -> None:
        with autocast(cfg.device, cfg.precision):
            y = module(x)
        y.backward(grad_out.to(y.dtype))

    for _ in range(max(warmup, 1)):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort_by = "self_cpu_time_total"
    if cfg.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort_by = "self_cuda_time_total"
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        for _ in range(repeats):
            step()
    env = environment(cfg.device, cfg.precision)
    header = (
        f"{layer} at {format_shape(shape)}, batch {batch}, {cfg.device} {cfg.precision}, {repeats} forward+backward "
        f"steps, torch {torch.__version__}, {torch.get_num_threads()} threads, load {env['load_1m_at_start']}, "
        f"gsa source {env['gsa_source']}, axial path {env['axial_path']}"
    )
    by_op = prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by=sort_by, row_limit=row_limit, max_name_column_width=40
    )
    return f"{header}\n\nTop operators by self time:\n{by_op}\nThe same, split by input shapes:\n{by_shape}"
