"""What a benchmark result depends on: versions, device, threads, the CPU's instruction sets, the machine's load."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

from gsanet.runtime import allocator_policy

__all__ = ["ISA_ENV", "cpu_isa", "environment", "isa_description", "load_average"]


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
    """First 12 hex digits of the SHA-256 of the layer's sources (``axial_kernel.layer_sources``): which version of
    the layer was measured."""
    from gsanet.layers import axial_kernel

    try:
        return axial_kernel.source_digest(axial_kernel.layer_sources(), length=12)
    except OSError:
        return "unknown"


def _axial_path(device: str) -> str:
    """Which implementation of the axial positional layer the measured GSA modules run: ``fused`` (the C++ CPU
    kernel) or ``gemm`` (batched products: CUDA, or the kernel off or unbuilt), by the layer's own dispatch rule."""
    from gsanet.layers import axial_kernel

    if not axial_kernel.usable(torch.empty(0, device=device)):
        return "gemm"
    variant = axial_kernel.selected_variant()
    measured = axial_kernel.MEASURED
    bounds = [f"{p} up to {measured[variant, p][0]}" for p in ("fp32", "bf16") if (variant, p) in measured]
    return f"fused (axes: {', '.join(bounds)}; gemm above)"


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes; above the core count, benchmarks share cores)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
