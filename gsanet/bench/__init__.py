"""Benchmarks behind ``gsanet bench``: the GSA module against convolution and attention peers, its scaling with
the number of pixels, and whole models. Each returns a :class:`BenchTable` written as CSV + markdown (+ PNG)."""

from .config import BenchConfig
from .model import run_model_bench
from .module import profile_layer, run_module_bench
from .report import BenchTable
from .scaling import run_scaling_bench

__all__ = ["BenchConfig", "BenchTable", "profile_layer", "run_model_bench", "run_module_bench", "run_scaling_bench"]
