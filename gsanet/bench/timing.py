"""The benchmark helpers under their former module name: every name here lives in :mod:`gsanet.bench.config`,
:mod:`gsanet.bench.measure`, :mod:`gsanet.bench.environment` or :mod:`gsanet.bench.report`."""

from __future__ import annotations

from .config import BenchConfig
from .environment import ISA_ENV, cpu_isa, environment, isa_description, load_average
from .measure import (
    MEMORY_METHOD,
    MemoryTracker,
    Timing,
    autocast,
    count_flops,
    fit_power_law,
    matmul_peak_gflops,
    measure_peak_memory,
    synchronize,
    time_fn,
    time_interleaved,
)
from .report import BenchTable, load_note, result_stem

__all__ = [
    "ISA_ENV",
    "MEMORY_METHOD",
    "BenchConfig",
    "BenchTable",
    "MemoryTracker",
    "Timing",
    "autocast",
    "count_flops",
    "cpu_isa",
    "environment",
    "fit_power_law",
    "isa_description",
    "load_average",
    "load_note",
    "matmul_peak_gflops",
    "measure_peak_memory",
    "result_stem",
    "synchronize",
    "time_fn",
    "time_interleaved",
]
