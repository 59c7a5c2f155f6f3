"""Process-wide CPU runtime settings the command line applies before any work: how freed memory is reused.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves large blocks (above a threshold that grows
to at most 32 MB) with fresh ``mmap`` pages and returns them to the system when freed, so every large activation or
gradient of every training step is page-faulted in anew, page by page, which can cost more than the arithmetic that
fills it (the README's benchmark section has the figures). :func:`keep_freed_memory` tells glibc to serve every block
from its heap and to keep freed memory for reuse (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, <large>)``),
the effect of the tcmalloc/jemalloc preloads that PyTorch's CPU performance guide recommends, without a preload.
The price: the process keeps its peak memory until it exits, as the CUDA caching allocator does.

The library itself never changes process settings; the ``gsanet`` command does, unless ``GSANET_MALLOC=default``.
The command checks every ``GSANET_*`` switch before it starts (:func:`check_environment`): a value a switch does not
take is an error, never silently read as the default.
Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
from typing import Any

__all__ = [
    "MALLOC_POLICIES",
    "allocator_policy",
    "autocast",
    "check_environment",
    "keep_freed_memory",
    "malloc_setting",
]

_LOGGER = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_policy: list[str] = []
MALLOC_POLICIES = ("keep", "default")
"""The values of ``GSANET_MALLOC``: ``keep`` (the default) or ``default`` (glibc's own policy)."""


def malloc_setting() -> str:
    """``GSANET_MALLOC``, lower-cased: ``"keep"`` (also when unset or empty) or ``"default"``.

    Raises:
        ValueError: Any other value.
    """
    value = os.environ.get("GSANET_MALLOC", "").strip().lower() or "keep"
    if value not in MALLOC_POLICIES:
        raise ValueError(
            f"GSANET_MALLOC={value!r} is not a malloc policy; use keep (the default: freed memory is kept for reuse) "
            "or default (glibc's own policy)"
        )
    return value


def check_environment() -> None:
    """Check the ``GSANET_*`` switches (README, "Environment switches") before a command does any work.

    Raises:
        ValueError: The first of ``GSANET_MALLOC``, ``GSANET_FUSED_AXIAL``, ``GSANET_KERNEL_ISA`` set to a value it
            does not take (the message names the variable and its valid values).
    """
    from gsanet.layers import axial_kernel

    malloc_setting()
    axial_kernel.fused_axial_setting()
    axial_kernel.selected_variant()


def keep_freed_memory() -> bool:
    """Makes glibc serve every allocation from its heap and keep freed memory (no ``mmap``, no trimming).

    Returns:
        Whether the policy is in force (False: ``GSANET_MALLOC=default``, or not glibc).

    Raises:
        ValueError: ``GSANET_MALLOC`` is neither ``keep`` nor ``default`` (:func:`malloc_setting`).
    """
    if _policy:
        return _policy[0] == "keep"
    if malloc_setting() == "default":
        _policy.append("default (GSANET_MALLOC=default)")
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _policy.append("default (not glibc)")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    _policy.append("keep" if ok else "default (mallopt failed)")
    _LOGGER.debug("malloc policy: %s", _policy[0])
    return ok


def allocator_policy() -> str:
    """``"keep"`` when :func:`keep_freed_memory` is in force, else ``"default"`` with the reason (for result tables)."""
    return _policy[0] if _policy else "default (glibc thresholds)"


def autocast(device: Any, dtype: Any) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type (a device or its name) in ``dtype``, or a no-op context when ``dtype`` is
    None: the one precision switch of training, evaluation and the benchmarks."""
    import torch  # here, so that the command's start (check_environment) does not load torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
