"""Benchmarks behind ``gsanet bench``: the GSA module against convolution and attention peers, its scaling with
the number of pixels, and whole models. Each returns a :class:`BenchTable` written as CSV + markdown (+ PNG)."""

from .model import run_model_bench
from .module import profile_layer, run_module_bench
from .scaling import run_scaling_bench
from .timing import BenchConfig, BenchTable

__all__ = ["BenchConfig", "BenchTable", "profile_layer", "run_model_bench", "run_module_bench", "run_scaling_bench"]
