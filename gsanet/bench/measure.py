"""Measuring: wall-clock timing, peak tensor memory, FLOP counting, the matrix-product peak and power-law fits.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls with :func:`time.perf_counter` (and
``torch.cuda.synchronize`` around each call on CUDA); the median and the minimum are reported. Several functions can
be timed round-robin (:func:`time_interleaved`) so that slow drifts in the load of a shared machine hit every
competitor alike, which keeps their ratios honest.

Peak memory (:class:`MemoryTracker`): a ``TorchDispatchMode`` that sees every tensor an aten operator returns (forward
and backward alike), counts each new storage once, and subtracts it when the storage is freed (a weak reference
callback). The peak of the live total is the peak memory of the measured call, on any device. It excludes tensors that
existed before the call (inputs, parameters, the incoming gradient) and the workspaces that kernels allocate
internally. It is deterministic, so it is the figure reported for every layer; on CUDA the caching allocator's own
peak is reported beside it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from gsanet import runtime

from .config import PRECISIONS

__all__ = [
    "MEMORY_METHOD",
    "MemoryTracker",
    "Timing",
    "autocast",
    "count_flops",
    "fit_power_law",
    "matmul_peak_gflops",
    "measure_peak_memory",
    "synchronize",
    "time_fn",
    "time_interleaved",
]

_LOGGER = logging.getLogger(__name__)

MEMORY_METHOD = (
    "peak of live tensor storage allocated by aten ops during the call (TorchDispatchMode + weakref on storages; "
    "forward and backward; excludes inputs, parameters, the incoming gradient and kernel-internal workspaces)"
)


@dataclass
class Timing:
    """Wall-clock times of one measured function, in milliseconds."""

    times_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def n(self) -> int:
        return len(self.times_ms)


def synchronize(device: str | torch.device) -> None:
    """Waits for queued GPU work; a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device, bfloat16)`` for ``bf16``; a null context for ``fp32`` (``gsanet.runtime.autocast`` for a
    ``--precision`` name)."""
    return runtime.autocast(device, PRECISIONS[precision])


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    device: str,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
    min_repeats: int = 1,
) -> dict[str, Timing]:
    """Times several functions round-robin: every round calls each function once.

    Args:
        fns: name -> function of no argument.
        device: where the work runs (synchronised around each call on CUDA).
        warmup: untimed rounds first.
        repeats: timed rounds at most.
        budget_s: stop after the round in which the timed total passes this many seconds, provided at least
            ``min_repeats`` rounds are done.
        min_repeats: rounds always run.

    Returns:
        name -> :class:`Timing`.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    total = 0.0
    for round_ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            times[name].append(elapsed * 1e3)
            total += elapsed
        if budget_s is not None and round_ + 1 >= min_repeats and total > budget_s:
            if round_ + 1 < repeats:
                _LOGGER.info("time budget %.0f s reached after %d of %d repeats", budget_s, round_ + 1, repeats)
            break
    return {name: Timing(ts) for name, ts in times.items()}


def time_fn(fn: Callable[[], Any], **kwargs: Any) -> Timing:
    """Times one function; keyword arguments as for :func:`time_interleaved`."""
    return time_interleaved({"fn": fn}, **kwargs)["fn"]


class MemoryTracker(TorchDispatchMode):
    """Peak of the live tensor storage created by aten operators while active (see the module docstring).

    Args:
        ignore: tensors that exist before the call (parameters, inputs); views of their storage are not counted.
    """

    def __init__(self, ignore: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._external = {t.untyped_storage().data_ptr() for t in ignore if isinstance(t, torch.Tensor)}
        self._refs: dict[int, weakref.ref] = {}

    def _release(self, key: int, nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (dispatch protocol)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._refs or key in self._external:
                continue
            self._refs[key] = weakref.ref(storage, lambda _ref, k=key, n=nbytes: self._release(k, n))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def measure_peak_memory(fn: Callable[[], Any], *, ignore: Iterable[torch.Tensor] = (), device: str = "cpu") -> dict:
    """Runs ``fn`` once under :class:`MemoryTracker`.

    Returns:
        ``{"peak_mem_mb": tracked peak, "peak_alloc_mb": CUDA allocator peak above the starting point, or None}``.
    """
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    tracker = MemoryTracker(ignore)
    with tracker:
        fn()
    alloc = None
    if is_cuda:
        synchronize(device)
        alloc = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"peak_mem_mb": tracker.peak / 2**20, "peak_alloc_mb": alloc}


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001 (shapes)
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _flop_mapping() -> dict:
    # torch's counter knows the CUDA attention kernels but not the CPU flash kernel that SDPA picks on CPU.
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products and convolutions ``fn`` runs (``FlopCounterMode``; multiply-adds = FLOPs / 2).

    Element-wise operations, softmax and normalisation are not counted, as in every published FLOP figure.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_gflops(device: str, *, n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> dict:
    """Float32 ``n x n`` matrix product throughput on this machine now: the practical compute peak.

    Returns:
        ``{"best": GFLOP/s of the fastest product, "median": GFLOP/s of the median one, "n": n}``.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = time_fn(lambda: a @ b, device=device, warmup=2, repeats=repeats)
    flops = 2 * n**3
    return {"best": flops / timing.min_ms / 1e6, "median": flops / timing.median_ms / 1e6, "n": n}


def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``log y`` against ``log x`` (the growth exponent); None with fewer than 2 points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
