"""Build, choice and dispatch of the fused CPU kernel of the axial positional attention layer (C++).

The kernel computes ``out[x] = sum_x' (q_x . r_(x'-x)) v_x'`` along one axis and its gradients, the same equation
as ``axial_ops.AxialRelPosAttention`` (the batched-GEMM path, which runs everywhere else: CUDA, tracing, export, FLOP
counting); :class:`FusedAxialRelPosAttention` is its autograd function. The work is split into groups of lines of
one head, one line per vector lane; each group's weights are computed and applied from registers and cache, never
written to memory whole. The source is ``csrc/axial_rel_pos.cpp`` (:data:`SOURCE`).

One source, one build per instruction set (a *variant*), each with its own operator namespace so that several can be
loaded in one process:

=============== ========================================== ============ =====================================
variant         compiler flags                             float lanes  runs on
=============== ========================================== ============ =====================================
``avx512_bf16`` ``-march=x86-64-v4 -mavx512bf16``          16           AVX-512 with native bfloat16
``avx512``      ``-march=x86-64-v4``                       16           AVX-512 (F, BW, CD, DQ, VL)
``avx2``        ``-march=x86-64-v3``                       8            AVX2 + FMA (x86-64-v3)
``generic``     the compiler's baseline for the platform   4            anything (SSE2 on x86, NEON on arm64)
=============== ========================================== ============ =====================================

The host's variant is the best one its CPU executes (``/proc/cpuinfo`` flags), capped by PyTorch's own CPU
capability, so ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 machine selects the AVX2 build and reproduces an AVX2
machine (``gsanet bench --isa avx2`` sets it). ``GSANET_KERNEL_ISA`` names a variant explicitly; a variant the CPU
cannot execute is refused, never loaded.

Dispatch (:func:`usable`) takes the kernel only where it was measured to beat the GEMM path (:data:`MEASURED`:
per variant and precision (float32, bfloat16), the axis lengths at which it won, side by side, forward+backward,
and the architectures measured;
``results/bench_axial_*`` holds the tables). The ``generic`` build was measured on x86 only, so on ARM it is built and
tested but not dispatched: ``GSANET_FUSED_AXIAL=1`` forces the kernel for any variant and shape,
``GSANET_FUSED_AXIAL=0`` turns it off. Another value of either switch is an error of the ``gsanet`` command at its
start (:func:`gsanet.runtime.check_environment`); in a library forward pass it is logged once and the GEMM path runs.

The extension is compiled with the machine's C++ compiler (``torch.utils.cpp_extension``, about 15 s a variant) on
first use, or by ``scripts/setup.sh``, and cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) in a directory named after the source's digest and the variant. Without a compiler the
module logs one warning and the GEMM path runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .axial_ops import axial_vjp, keys_to_rows, oriented_empty, rows_to_keys

__all__ = [
    "MEASURED",
    "PRECISION_OF",
    "Pool2",
    "pool_usable",
    "SOURCE",
    "VARIANTS",
    "FusedAxialRelPosAttention",
    "Variant",
    "available",
    "build",
    "forward_normalized",
    "fused_axial_setting",
    "build_error",
    "cpu_has",
    "host_variants",
    "kernel_enabled",
    "layer_sources",
    "ops",
    "prefer_kernel",
    "selected_variant",
    "source_digest",
    "usable",
]

_LOGGER = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csrc") / "axial_rel_pos.cpp"
"""The kernel's C++ source (one file; every variant is built from it)."""
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # bf16/fp16: float32 arithmetic inside


@dataclass(frozen=True)
class Variant:
    """One build of the kernel for one instruction set.

    Attributes:
        name: the variant's name (also its operator namespace's suffix).
        flags: compiler flags selecting the instruction set.
        vector_bytes: bytes per vector register the kernel's lanes fill.
        cpu_flags: ``/proc/cpuinfo`` flags the CPU must have (x86), all of them.
        capability: the least PyTorch CPU capability (``torch.backends.cpu.get_cpu_capability()``) that selects it.
    """

    name: str
    flags: tuple[str, ...]
    vector_bytes: int
    cpu_flags: frozenset[str]
    capability: int


_X86_V3 = frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm", "xsave"})
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_CAPABILITY = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}  # torch's names; others (e.g. ZVECTOR, SVE256) count as DEFAULT

VARIANTS: dict[str, Variant] = {  # best first
    "avx512_bf16": Variant(
        "avx512_bf16",
        ("-march=x86-64-v4", "-mavx512bf16", "-mprefer-vector-width=512"),
        64,
        _X86_V4 | {"avx512_bf16"},
        2,
    ),
    "avx512": Variant("avx512", ("-march=x86-64-v4", "-mprefer-vector-width=512"), 64, _X86_V4, 2),
    "avx2": Variant("avx2", ("-march=x86-64-v3", "-mprefer-vector-width=256"), 32, _X86_V3, 1),
    "generic": Variant("generic", (), 16, frozenset(), 0),
}

# Where each variant was measured to beat the GEMM path, per precision of the tensors (``fp32``: float32, and float64,
# whose speed is not a goal; ``bf16``: bfloat16, what autocast gives), forward+backward, side by side (``gsanet bench
# axial [--precision bf16]``; the tables are in results/bench_axial_*): the largest axis length S at which it still
# won, and the machine architectures it was measured on. The kernel runs only inside these bounds; elsewhere (an
# unmeasured variant, precision, size or architecture: float16 anywhere, ARM for every build) the GEMM path does.
MEASURED: dict[tuple[str, str], tuple[int, tuple[str, ...]]] = {
    ("avx512_bf16", "fp32"): (224, ("x86_64",)),
    ("avx512_bf16", "bf16"): (224, ("x86_64",)),
    ("avx512", "fp32"): (112, ("x86_64",)),
    ("avx512", "bf16"): (224, ("x86_64",)),
    ("avx2", "fp32"): (224, ("x86_64",)),
    ("avx2", "bf16"): (224, ("x86_64",)),
    ("generic", "fp32"): (224, ("x86_64",)),
}
PRECISION_OF = {torch.float32: "fp32", torch.float64: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
"""The precision row of :data:`MEASURED` that tensors of each dtype the kernel takes fall under."""


_state: dict[str, dict[str, object]] = {}  # variant -> {"loaded": bool, "error": str}
_warned: list[str] = []
_override = threading.local()  # .stack: this thread's kernel_enabled() settings, innermost last


@functools.cache  # read once: every forward pass asks which build runs
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's instruction-set flags from ``/proc/cpuinfo`` (x86 Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_has(*flags: str) -> bool:
    """Whether this CPU reports every one of ``flags`` in ``/proc/cpuinfo`` (False where they cannot be read)."""
    host = _cpu_flags()
    return host is not None and set(flags) <= host


def host_variants() -> list[str]:
    """The variants this CPU can execute, best first (``generic`` always; the x86 ones where its flags say so)."""
    names = ["generic"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags = _cpu_flags()
        if flags is not None:
            names = [v.name for v in VARIANTS.values() if v.cpu_flags <= flags]
    return names


def _torch_capability() -> int:
    try:
        return _CAPABILITY.get(torch.backends.cpu.get_cpu_capability(), 0)
    except (AttributeError, RuntimeError):
        return 0


def fused_axial_setting() -> str:
    """``GSANET_FUSED_AXIAL``: ``"0"`` (the kernel off), ``"1"`` (forced on) or ``""`` (unset: where measured faster).

    Raises:
        ValueError: Any other value (a typo must not silently leave the dispatch as it is).
    """
    value = os.environ.get("GSANET_FUSED_AXIAL", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(
            f"GSANET_FUSED_AXIAL={value!r} is not a valid setting; use 0 (kernel off), 1 (kernel forced on) or leave "
            "it unset (the kernel where it was measured faster)"
        )
    return value


def selected_variant() -> str:
    """The variant the layer runs: ``GSANET_KERNEL_ISA`` if set, else the best one the CPU executes at PyTorch's
    CPU capability (so ``ATEN_CPU_CAPABILITY=avx2`` selects the AVX2 build on an AVX-512 machine).

    Raises:
        ValueError: ``GSANET_KERNEL_ISA`` names an unknown variant, or one this CPU cannot execute.
    """
    executable = host_variants()
    requested = os.environ.get("GSANET_KERNEL_ISA", "").strip().lower()
    if requested:
        if requested not in VARIANTS:
            raise ValueError(
                f"GSANET_KERNEL_ISA={requested!r} is not a kernel variant; choose from {', '.join(VARIANTS)}"
            )
        if requested not in executable:
            raise ValueError(
                f"GSANET_KERNEL_ISA={requested!r}: this CPU cannot execute that build (it can: {', '.join(executable)})"
            )
        return requested
    cap = _torch_capability()
    return next(name for name in executable if VARIANTS[name].capability <= cap)


def source_digest(paths: Sequence[Path] = (SOURCE,), length: int = 10) -> str:
    """The first ``length`` hex digits of the SHA-256 of the files ``paths``, in order: by default the kernel's C++
    source (its builds are cached under this digest); :func:`layer_sources` for the whole layer (the benchmarks
    record which version they measured)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:length]


def layer_sources() -> list[Path]:
    """Every source file of the GSA layer: the Python modules of ``gsanet/layers`` and the kernel's C++."""
    return [*sorted(Path(__file__).parent.glob("*.py")), SOURCE]


def _namespace(variant: str) -> str:
    return f"gsanet_axial_{variant}"


def build(variant: str | None = None, verbose: bool = False) -> bool:
    """Compiles (or loads the cached build of) one variant; True when its operators are registered.

    Args:
        variant: a key of :data:`VARIANTS` (default: :func:`selected_variant`).
        verbose: show the compiler's output.

    Raises nothing for build failures (logged once per variant and remembered; the GEMM path is used instead).

    Raises:
        ValueError: the variant is unknown or this CPU cannot execute it, or ``GSANET_FUSED_AXIAL`` is invalid.
    """
    variant = selected_variant() if variant is None else variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant not in host_variants():
        raise ValueError(f"kernel variant {variant!r} cannot run on this CPU (it can: {', '.join(host_variants())})")
    state = _state.setdefault(variant, {})
    if "loaded" in state:
        return bool(state["loaded"])
    if fused_axial_setting() == "0":
        state.update(loaded=False, error="disabled by GSANET_FUSED_AXIAL=0")
        return False
    spec = VARIANTS[variant]
    path = os.environ.get("PATH", "")
    venv_bin = Path(sys.executable).parent  # the ninja of requirements.txt, when the venv is not activated
    quiet = logging.getLogger("torch.utils.cpp_extension")  # its import warns that no CUDA runtime is found
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        quiet.setLevel(level)
        if shutil.which("ninja") is None and (venv_bin / "ninja").exists():
            os.environ["PATH"] = f"{venv_bin}{os.pathsep}{path}"
        flags = ["-O3", "-fopenmp", "-std=c++20", *spec.flags]
        flags += [f"-DGSANET_VECTOR_BYTES={spec.vector_bytes}", f"-DGSANET_OPS_NAMESPACE={_namespace(variant)}"]
        _LOGGER.info("loading the fused axial kernel, %s build (compiled on first use, about 15 s)", variant)
        cpp_extension.load(
            name=f"gsanet_axial_{source_digest()}_{variant}",
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=verbose,
        )
        state.update(loaded=True, error="")
    except Exception as e:  # no compiler, no ninja, a compile error: the GEMM path still works
        state.update(loaded=False, error=f"{type(e).__name__}: {e}")
        _LOGGER.warning(
            "the fused axial-attention CPU kernel (%s build) could not be built (%s); using the batched-GEMM path, "
            "which is slower on CPU. Install a C++ compiler (g++) and ninja, or set GSANET_FUSED_AXIAL=0 to silence "
            "this.",
            variant,
            (str(e).splitlines() or [type(e).__name__])[0][:300],
        )
    finally:
        os.environ["PATH"] = path
        quiet.setLevel(level)
    return bool(state["loaded"])


def available(variant: str | None = None) -> bool:
    """Whether a variant (default: the selected one) is built and enabled (builds it on the first call)."""
    try:
        return build(variant)
    except ValueError:
        return False


def ops(variant: str | None = None) -> object:
    """A variant's operators (``torch.ops.gsanet_axial_<variant>``), built on the first call.

    Raises:
        RuntimeError: the variant is unavailable (the message says why).
    """
    variant = selected_variant() if variant is None else variant
    if not build(variant):
        raise RuntimeError(
            f"the fused axial kernel is unavailable ({build_error(variant)}); check "
            "gsanet.layers.axial_kernel.usable() first, or call AxialRelPosAttention (batched GEMMs)"
        )
    return getattr(torch.ops, _namespace(variant))


def build_error(variant: str | None = None) -> str:
    """Why a variant (default: the selected one) is unavailable ("" when it is built, or not yet tried)."""
    try:
        variant = selected_variant() if variant is None else variant
    except ValueError as e:
        return str(e)
    return str(_state.get(variant, {}).get("error", ""))


def prefer_kernel(variant: str, size: int, precision: str = "fp32") -> bool:
    """Whether the kernel's ``variant`` was measured faster than the GEMM path at axis length ``size`` for tensors of
    ``precision`` (:data:`PRECISION_OF`) on this machine's architecture (:data:`MEASURED`); ``GSANET_FUSED_AXIAL=1``
    says yes to every variant, precision and size.

    Raises:
        ValueError: ``GSANET_FUSED_AXIAL`` has a value other than 0 or 1 (:func:`fused_axial_setting`).
    """
    if fused_axial_setting() == "1":
        return True
    if (variant, precision) not in MEASURED:
        return False
    largest, machines = MEASURED[variant, precision]
    return size <= largest and _machine() in machines


@contextlib.contextmanager
def kernel_enabled(enabled: bool) -> Iterator[None]:
    """Within the block (in this thread), forward passes take (``True``: wherever the kernel can run, measured faster
    or not) or avoid (``False``) the kernel; their backward passes follow. For A/B measurements and tests."""
    stack = _override.__dict__.setdefault("stack", [])
    stack.append(bool(enabled))
    try:
        yield
    finally:
        stack.pop()


def _recorded() -> bool:
    """Whether operations are being recorded or intercepted (tracing, compiling, a dispatch mode such as FLOP
    counting), where the extension's opaque operators must not appear."""
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    return tracing or torch.utils._python_dispatch._get_current_dispatch_mode() is not None


def _machine() -> str:
    """This machine's architecture under one name per kind (``x86_64``, ``aarch64``)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _dispatch() -> tuple[str, bool, str] | None:
    """The build the extension's operators would run, whether this thread forces them (``kernel_enabled(True)``) and
    the ``GSANET_FUSED_AXIAL`` setting; or None where they must not run: operations recorded (:func:`_recorded`), the
    kernel turned off (``GSANET_FUSED_AXIAL=0``, ``kernel_enabled(False)``), or a bad ``GSANET_KERNEL_ISA`` or
    ``GSANET_FUSED_AXIAL`` (logged once; the plain path runs)."""
    if _recorded():
        return None
    try:
        variant, setting = selected_variant(), fused_axial_setting()
    except ValueError as e:
        if not _warned:
            _warned.append(str(e))
            _LOGGER.warning("%s; using the batched-GEMM path", e)
        return None
    override = (_override.__dict__.get("stack") or [None])[-1]
    if setting == "0" or override is False:
        return None
    return variant, override is True, setting


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernel may and should run on these inputs, ``(B, h, C, L, S)`` tensors along their last axis:
    CPU, one floating dtype (float32/64, bfloat16/float16), eager mode (no tracing, compiling, export or dispatch
    mode such as FLOP counting, which must see the GEMM path's operators), and a variant measured faster than the
    GEMM path at this axis length and precision (:func:`prefer_kernel`)."""
    if any(t.device.type != "cpu" or t.dtype != tensors[0].dtype for t in tensors) or tensors[0].dtype not in _DTYPES:
        return False
    dispatch = _dispatch()
    if dispatch is None:
        return False
    variant, forced, _ = dispatch
    size = tensors[0].shape[-1] if tensors[0].dim() else 0
    precision = PRECISION_OF[tensors[0].dtype]
    return (forced or prefer_kernel(variant, size, precision)) and available(variant)


def forward_normalized(
    q: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    variant: str | None = None,
) -> torch.Tensor:
    """The kernel's forward pass on values normalised per channel as it loads them: the pass applied to
    ``scale[c] * v[:, c] + shift[c]`` (``c`` over the ``h * dv`` channels), without that tensor ever being written.
    An inference batch norm before the pass, folded into it; no autograd (inference only).

    Args:
        q: ``(B, h, dk, L, S)``.
        v: ``(B, h, dv, L, S)``.
        rows: ``(h, dk, 2S-1)``.
        scale: float32, ``h * dv`` values.
        shift: float32, ``h * dv`` values.
        variant: the kernel build (default the host's).

    Returns:
        ``(B, h, dv, L, S)`` in the values' memory order.

    Raises:
        RuntimeError: Called where autograd would need the pass's gradient.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, v, rows, scale, shift)):
        raise RuntimeError(
            "forward_normalized is the inference form of the kernel and has no gradient; call it under "
            "torch.no_grad() or torch.inference_mode(), or normalise first and use FusedAxialRelPosAttention"
        )
    out = oriented_empty(v, v.shape[2])
    ops(variant).forward(q, v, rows, out, scale.float(), shift.float())
    return out


def pool_usable(x: torch.Tensor) -> bool:
    """Whether :class:`Pool2` runs on ``x``: a non-empty contiguous CPU tensor of a dtype the extension takes, eager
    mode, the kernel not turned off (``GSANET_FUSED_AXIAL=0``, :func:`kernel_enabled`), an x86 build available
    (every x86 build was measured faster than ATen's pool, forward and backward, float32 and bfloat16:
    ``scripts/bench_pool.py``)."""
    if x.device.type != "cpu" or x.dtype not in _DTYPES or not x.is_contiguous() or x.numel() == 0:
        return False
    dispatch = _dispatch()
    if dispatch is None:
        return False
    variant, forced, setting = dispatch
    return (forced or setting == "1" or _machine() == "x86_64") and available(variant)


class Pool2(torch.autograd.Function):
    """2x2 average pool in ceil mode (``F.avg_pool2d(x, 2, ceil_mode=True)``) by the kernel's extension: one pass
    over the input forward and one over its gradient backward, sums in float32 for bfloat16/float16. Inputs:
    contiguous CPU ``(..., H, W)`` tensors with H, W > 0; the host's build unless ``variant`` is named. Asked for a
    differentiable gradient (``create_graph=True``), the backward pass is ATen's pool backward, which autograd can
    differentiate again.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, variant: str | None = None) -> torch.Tensor:
        out = x.new_empty(*x.shape[:-2], (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2)
        ctx.ops, ctx.shape = ops(variant), x.shape
        ctx.ops.pool2(x, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if torch.is_grad_enabled():  # create_graph=True
            like = grad.new_empty(ctx.shape)
            return torch.ops.aten.avg_pool2d_backward(grad, like, [2, 2], [2, 2], [0, 0], True, True, None), None
        grad_in = grad.new_empty(ctx.shape)
        ctx.ops.pool2_backward(grad.contiguous(), grad_in)
        return grad_in, None


class FusedAxialRelPosAttention(torch.autograd.Function):
    """``AxialRelPosAttention`` by the fused CPU kernel (:data:`SOURCE`).

    The kernel gives each vector lane one line (16 lines of one head per group in float32) and computes and applies
    each line's weights from registers and cache, never writing them to memory whole; the backward pass recomputes
    them. It takes the relative rows instead of absolute keys. bfloat16/float16 tensors are widened to float32 as the
    kernel copies each line group into its scratch, and the results rounded once on the way out; the embedding
    gradient is summed in float32.

    Inputs: ``q (B, h, dk, L, S)``, ``v (B, h, dv, L, S)`` (any strides), ``rows (h, dk, 2S-1)`` (the embeddings of
    offsets ``-(S-1) .. S-1``, zero where the table has none; autograd carries their gradient back to the table),
    and optionally the kernel variant (:data:`VARIANTS`; default the host's); output ``(B, h, dv, L, S)``
    in the values' memory order. Asked for a differentiable gradient (``create_graph=True``), the backward pass returns
    the same gradients written in plain operations (``axial_ops.axial_vjp``), so gradients of every order are exact.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, variant: str | None = None) -> torch.Tensor:
        kernel = ops(variant)  # the host's build unless a variant is named (the tests run each one)
        out = oriented_empty(v, v.shape[2])
        kernel.forward(q, v, rows, out)
        ctx.save_for_backward(q, v, rows)
        ctx.ops = kernel
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: gradients autograd can differentiate again
            q, v, rows = ctx.saved_tensors
            grad_q, grad_v, grad_keys = axial_vjp(q, v, rows_to_keys(rows), grad)
            return grad_q, grad_v, keys_to_rows(grad_keys), None
        q, v, rows = ctx.saved_tensors
        grad_q, grad_v = oriented_empty(q, q.shape[2]), oriented_empty(v, v.shape[2])
        grad_rows = ctx.ops.backward(q, v, rows, grad, grad_q, grad_v)  # float32 for bf16/fp16
        return grad_q, grad_v, grad_rows.to(rows.dtype), None
