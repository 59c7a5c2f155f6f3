"""The command line's memory-reuse policy (``gsanet.runtime``): freed tensors are reused without new page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
from gsanet.runtime import allocator_policy, keep_freed_memory
keep_freed_memory()
faults = []
for step in range(6):  # a training loop's pattern: the same large tensors allocated and freed every step
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(16 << 20).fill_(1.0)  # 64 MB
    b = torch.empty(8 << 20).fill_(2.0)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(allocator_policy(), sum(faults[3:]))
"""


def _probe(env_value: str | None) -> tuple[str, int]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "GSANET_MALLOC"}
    if env_value is not None:
        env["GSANET_MALLOC"] = env_value
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    policy, faults = done.stdout.strip().rsplit(" ", 1)
    return policy, int(faults)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults() -> None:
    """Steady state of a loop allocating and freeing 96 MB: ~24k page faults a step by default, none with the policy."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    policy, faults = _probe(None)
    assert policy == "keep" and faults < 1000, (policy, faults)
    policy, faults = _probe("default")
    assert policy.startswith("default") and faults > 3 * 20_000, (policy, faults)


@pytest.mark.parametrize(
    ("variable", "value", "valid"),
    [
        ("GSANET_FUSED_AXIAL", "2", "use 0 (kernel off), 1 (kernel forced on) or leave it unset"),
        ("GSANET_MALLOC", "foo", "use keep (the default: freed memory is kept for reuse) or default"),
        ("GSANET_KERNEL_ISA", "sse9", "choose from avx512_bf16, avx512, avx2, generic"),
    ],
)
def test_invalid_environment_switch_is_an_error(
    variable: str, value: str, valid: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GSANET_FUSED_AXIAL=2 and GSANET_MALLOC=foo were silently read as unset; every command now refuses them at its
    start, in one line naming the variable and its valid values."""
    from gsanet.cli import main as gsanet_main

    for other in ("GSANET_FUSED_AXIAL", "GSANET_MALLOC", "GSANET_KERNEL_ISA"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(variable, value)
    assert gsanet_main(["summary", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gsanet summary: error: {variable}={value!r} ") and valid in err and err.count("\n") == 1


def test_invalid_fused_axial_in_the_library_is_said_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from gsanet.layers import axial_kernel
    from gsanet.runtime import malloc_setting

    monkeypatch.setenv("GSANET_FUSED_AXIAL", "yes")
    with pytest.raises(ValueError, match="GSANET_FUSED_AXIAL='yes' is not a valid setting"):
        axial_kernel.prefer_kernel("avx2", 7)
    monkeypatch.setenv("GSANET_FUSED_AXIAL", " 1 ")
    assert axial_kernel.fused_axial_setting() == "1"
    monkeypatch.setenv("GSANET_MALLOC", "off")
    with pytest.raises(ValueError, match="GSANET_MALLOC='off' is not a malloc policy"):
        malloc_setting()
