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
