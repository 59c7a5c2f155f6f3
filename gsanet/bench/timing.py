"""Shared measuring helpers: wall-clock timing, peak tensor memory, FLOP counting, matmul peak, result tables.

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
import csv
import hashlib
import inspect
import logging
import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from gsanet.runtime import allocator_policy

__all__ = [
    "MEMORY_METHOD",
    "BenchConfig",
    "BenchTable",
    "MemoryTracker",
    "Timing",
    "autocast",
    "count_flops",
    "ISA_ENV",
    "cpu_isa",
    "environment",
    "isa_description",
    "fit_power_law",
    "load_average",
    "load_note",
    "matmul_peak_gflops",
    "measure_peak_memory",
    "result_stem",
    "synchronize",
    "time_fn",
    "time_interleaved",
]

_LOGGER = logging.getLogger(__name__)

MEMORY_METHOD = (
    "peak of live tensor storage allocated by aten ops during the call (TorchDispatchMode + weakref on storages; "
    "forward and backward; excludes inputs, parameters, the incoming gradient and kernel-internal workspaces)"
)

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class BenchConfig:
    """Options shared by every benchmark (the ``gsanet bench`` flags).

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, or ``"bf16"`` for ``torch.autocast(device, torch.bfloat16)``.
        batch: batch size; ``None`` = the benchmark's default (8, or 2 with ``quick``).
        repeats: timed calls per measurement; ``None`` = the benchmark's default.
        warmup: untimed calls before timing; ``None`` = the benchmark's default.
        quick: smaller sizes, fewer repeats: a smoke run.
        seed: ``torch.manual_seed`` before building each layer and its inputs.
        mem_cap_gb: the module and scaling benchmarks skip a layer at a shape whose predicted peak memory exceeds this.
        time_budget_s: a measurement stops repeating after this many seconds once it has 3 repeats (1 with quick).
        max_step_s: the scaling benchmark skips a layer at a size where one step is predicted to take longer.
        threads: ``torch.set_num_threads`` if given.
        out: directory for the CSV, markdown and PNG files.
    """

    device: str = "cpu"
    precision: str = "fp32"
    batch: int | None = None
    repeats: int | None = None
    warmup: int | None = None
    quick: bool = False
    seed: int = 0
    mem_cap_gb: float = 8.0
    time_budget_s: float = 60.0
    max_step_s: float = 400.0
    threads: int | None = None
    out: str = "results"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {self.precision!r}")
        for name in ("batch", "repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for name in ("mem_cap_gb", "time_budget_s", "max_step_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def resolved(self, *, batch: int, repeats: int, warmup: int) -> tuple[int, int, int]:
        """Returns ``(batch, repeats, warmup)``: the explicit values, else the given benchmark defaults."""
        quick_batch = min(batch, 2) if self.quick else batch
        quick_repeats = 1 if self.quick else repeats
        quick_warmup = 0 if self.quick else warmup
        return (
            self.batch if self.batch is not None else quick_batch,
            self.repeats if self.repeats is not None else quick_repeats,
            self.warmup if self.warmup is not None else quick_warmup,
        )

    @property
    def min_repeats(self) -> int:
        """Repeats a measurement always gets before the time budget can stop it."""
        return 1 if self.quick else 3


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
    """``torch.autocast(device, bfloat16)`` for ``bf16``; a null context for ``fp32``."""
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


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


def result_stem(kind: str, device: str, precision: str, isa: str | None = None) -> str:
    """File stem of a benchmark's results, e.g. ``bench_module_torch2.14.1_cpu_fp32_avx2`` (the instruction set
    PyTorch ran at, on CPU)."""
    version = torch.__version__.split("+")[0]
    stem = f"bench_{kind}_torch{version}_{device}_{precision}"
    return f"{stem}_{isa}" if isa and torch.device(device).type == "cpu" else stem


ISA_ENV = {  # what --isa sets, so that PyTorch, oneDNN, MKL and the kernel all run at that instruction set
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
"""Environment of each ``--isa``: ``ATEN_CPU_CAPABILITY`` caps PyTorch's vectorised kernels (and, through it, the fused
kernel's build: ``axial_kernel.selected_variant``), ``ONEDNN_MAX_CPU_ISA`` oneDNN's convolutions and
``MKL_ENABLE_INSTRUCTIONS`` MKL's matrix products."""


def cpu_isa() -> str:
    """The instruction set PyTorch's CPU kernels run at, lower case (``avx512``, ``avx2``, ``default``, ...)."""
    try:
        return torch.backends.cpu.get_cpu_capability().lower()
    except (AttributeError, RuntimeError):
        return "unknown"


def isa_description() -> str:
    """The instruction sets a CPU result was measured at: PyTorch's, the fused kernel's build, the host's best, and
    the caps in force (``emulated`` when they are below what the CPU has)."""
    from gsanet.layers import axial_kernel

    host = axial_kernel.host_variants()[0]
    try:
        kernel = axial_kernel.selected_variant()
    except ValueError as e:
        kernel = f"invalid ({e})"
    names = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "GSANET_KERNEL_ISA")
    caps = [f"{k}={os.environ[k]}" for k in names if os.environ.get(k)]
    text = f"{cpu_isa()} (kernel build {kernel}; host {host}"
    if caps:
        text += "; " + ("emulated with " if kernel != host else "") + ", ".join(caps)
    return text + ")"


def environment(device: str, precision: str) -> dict[str, Any]:
    """What a result depends on: versions, device, precision, threads."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_1m_at_start": load_average(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    env["gsa_source"] = _source_digest()
    env["axial_path"] = _axial_path(device)
    if torch.device(device).type == "cpu":
        env["isa"] = isa_description()
        env["malloc"] = allocator_policy()
    return env


def _source_digest() -> str:
    """First 12 hex digits of the SHA-256 of the layer's sources (the module, its relative tables, its GEMM path, the
    kernel's loader and its C++): which version of the layer was measured."""
    try:
        from gsanet.layers import axial_kernel, axial_ops, gsa, rel_pos

        digest = hashlib.sha256()
        modules = (gsa, rel_pos, axial_ops, axial_kernel)
        for path in (*(Path(inspect.getfile(m)) for m in modules), axial_kernel.SOURCE):
            digest.update(path.read_bytes())
        return digest.hexdigest()[:12]
    except (ImportError, OSError, TypeError):
        return "unknown"


def _axial_path(device: str) -> str:
    """Which implementation of the axial positional layer the measured GSA modules run: ``fused`` (the C++ CPU
    kernel) or ``gemm`` (batched products: CUDA, or the kernel off or unbuilt), by the layer's own dispatch rule."""
    from gsanet.layers import axial_kernel

    if not axial_kernel.usable(torch.empty(0, device=device)):
        return "gemm"
    largest = axial_kernel.MEASURED.get(axial_kernel.selected_variant(), (0, ()))[0]
    return f"fused (axes up to {largest}; gemm above)"


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes; above the core count, benchmarks share cores)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def load_note(rows: Iterable[dict[str, Any]]) -> str:
    """A markdown sentence on the machine load seen while the rows were measured."""
    loads = [r["load_1m"] for r in rows if r.get("load_1m") is not None]
    if not loads:
        return "Machine load: unknown."
    cpus = os.cpu_count() or 1
    text = f"Machine load (1-minute average) during the run: {min(loads):.1f} to {max(loads):.1f} on {cpus} cores"
    if max(loads) > cpus:
        text += "; above the core count other processes shared the cores, which inflates times (compare the minima)"
    return text + "."


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) and abs(value) >= 10_000:  # counts: 3 significant digits and an SI suffix
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{suffix}"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@dataclass
class BenchTable:
    """Rows of one benchmark, with the text around them.

    Attributes:
        kind: ``module``, ``scaling`` or ``model``.
        columns: CSV columns, in order.
        rows: one dict per measurement.
        md_columns: the subset shown in the markdown table (default all).
        title: markdown heading.
        notes: markdown paragraphs after the table (method, summary figures).
        extra_tables: further (title, columns, rows) tables for the markdown, and their own CSV files by suffix.
        env: :func:`environment`.
        figure: draws the PNG at the given path (optional).
    """

    kind: str
    columns: list[str]
    rows: list[dict[str, Any]]
    md_columns: list[str] | None = None
    title: str = ""
    notes: list[str] = field(default_factory=list)
    extra_tables: list[tuple[str, str, list[str], list[dict[str, Any]]]] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    figure: Callable[[Path], None] | None = None

    def write_csv(self, path: Path, columns: Sequence[str] | None = None, rows: Iterable[dict] | None = None) -> None:
        columns = list(self.columns if columns is None else columns)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in self.rows if rows is None else rows:
                writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})

    def markdown(self, command: str | None = None) -> str:
        lines = [f"## {self.title or self.kind}", ""]
        if self.env:
            lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in self.env.items()), ""]
        if command:
            lines += [f"Command: `{command}`", ""]
        lines += [_markdown_table(self.md_columns or self.columns, self.rows), ""]
        for suffix_title, _suffix, columns, rows in self.extra_tables:
            lines += [f"### {suffix_title}", "", _markdown_table(columns, rows), ""]
        lines += [f"{note}\n" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def save(self, out: Path, command: str | None = None) -> list[Path]:
        """Writes ``<stem>.csv``, ``<stem>_<suffix>.csv`` for the extra tables, ``<stem>.png`` if there is a figure,
        and ``<stem>.md``.

        Returns:
            The written paths.
        """
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem(self.kind, self.env.get("device", "cpu"), self.env.get("precision", "fp32"), cpu_isa())
        paths = [out / f"{stem}.csv"]
        self.write_csv(paths[0])
        for _title, suffix, columns, rows in self.extra_tables:
            paths.append(out / f"{stem}_{suffix}.csv")
            self.write_csv(paths[-1], columns, rows)
        if self.figure is not None:
            paths.append(out / f"{stem}.png")
            self.figure(paths[-1])
            if (image := f"![{self.kind}]({paths[-1].name})") not in self.notes:
                self.notes.append(image)
        paths.append(out / f"{stem}.md")
        paths[-1].write_text(self.markdown(command))
        return paths


def _markdown_table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines)
