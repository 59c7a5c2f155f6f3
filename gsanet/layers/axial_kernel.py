"""Build and dispatch of the fused CPU kernel of the axial positional attention layer (C++, built on first use).

The kernel computes ``out[x] = sum_x' (q_x . r_(x'-x)) v_x'`` along one axis and its gradients, the same equation
as ``gsa.AxialRelPosAttention`` (the batched-GEMM path, which runs everywhere else: CUDA, tracing, export, FLOP
counting); ``gsa.FusedAxialRelPosAttention`` is its autograd function. The work is split into groups
of 16 lines (8 in float64) of one head, one line per vector lane; each group's weights are computed and applied
from registers and cache, never written to memory whole. The source is ``csrc/axial_rel_pos.cpp``;
``tests/test_gsa.py`` checks both paths against plain autograd (float64, float32, and bfloat16/float16 for the
kernel).

The extension is compiled with the machine's C++ compiler (``torch.utils.cpp_extension``, about 15 s) on first use,
or by ``scripts/setup.sh``, and cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), in a
directory named after the source and the CPU's instruction sets. Without a compiler the module logs one warning and
the GEMM path runs. ``GSANET_FUSED_AXIAL=0`` turns the kernel off (A/B measurements, debugging).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

__all__ = ["available", "build", "build_error", "ops", "usable"]

_LOGGER = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("csrc") / "axial_rel_pos.cpp"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # bf16/fp16: float32 arithmetic inside
_state: dict[str, object] = {}  # "loaded": bool, "error": str


def _cpu_tag() -> str:
    """A short digest of the CPU's model and instruction-set flags: the build uses ``-march=native``, so a cache
    shared between different machines must not mix their builds."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features")):
                    text += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def build(verbose: bool = False) -> bool:
    """Compiles (or loads the cached build of) the extension; True when its operators are registered.

    Raises nothing: a failure is logged once and remembered, and the GEMM path is used instead.
    """
    if "loaded" in _state:
        return bool(_state["loaded"])
    if os.environ.get("GSANET_FUSED_AXIAL", "1") == "0":
        _state.update(loaded=False, error="disabled by GSANET_FUSED_AXIAL=0")
        return False
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
        digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:10]
        flags = ["-O3", "-march=native", "-fopenmp", "-std=c++20"]
        if platform.machine().lower() in ("x86_64", "amd64"):
            flags.append("-mprefer-vector-width=512")  # use the full AVX-512 registers where the CPU has them
        _LOGGER.info("loading the fused axial kernel (compiled on first use, about 15 s): %s", _SOURCE)
        cpp_extension.load(
            name=f"gsanet_axial_{digest}_{_cpu_tag()}",
            sources=[str(_SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=verbose,
        )
        _state.update(loaded=True, error="")
    except Exception as e:  # no compiler, no ninja, a compile error: the GEMM path still works
        _state.update(loaded=False, error=f"{type(e).__name__}: {e}")
        _LOGGER.warning(
            "the fused axial-attention CPU kernel could not be built (%s); using the batched-GEMM path, which is "
            "slower on CPU. Install a C++ compiler (g++) and ninja, or set GSANET_FUSED_AXIAL=0 to silence this.",
            (str(e).splitlines() or [type(e).__name__])[0][:300],
        )
    finally:
        os.environ["PATH"] = path
        quiet.setLevel(level)
    return bool(_state["loaded"])


def available() -> bool:
    """Whether the kernel is built and enabled (builds it on the first call)."""
    return build()


def ops() -> object:
    """The kernel's operators (``torch.ops.gsanet_axial``), built on the first call; a clear error when it cannot be."""
    if not build():
        raise RuntimeError(
            f"the fused axial kernel is unavailable ({build_error()}); check gsanet.layers.axial_kernel.usable() "
            "first, or call AxialRelPosAttention (batched GEMMs)"
        )
    return torch.ops.gsanet_axial


def build_error() -> str:
    """Why the kernel is unavailable ("" when it is built, or not yet tried)."""
    return str(_state.get("error", ""))


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernel may run on these inputs: CPU, one floating dtype (float32/64, bfloat16/float16), eager mode
    (no tracing, compiling, export or dispatch mode such as FLOP counting, which must see the GEMM path's operators)."""
    if any(t.device.type != "cpu" or t.dtype != tensors[0].dtype for t in tensors) or tensors[0].dtype not in _DTYPES:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.utils._python_dispatch._get_current_dispatch_mode() is not None:
        return False
    return available()
