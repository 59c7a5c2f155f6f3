"""Options shared by every benchmark: the ``gsanet bench`` flags as one typed config."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PRECISIONS", "BenchConfig"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
"""Autocast dtype of each ``--precision`` (None: no autocast)."""


@dataclass
class BenchConfig:
    """Options shared by every benchmark (the ``gsanet bench`` flags).

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, or ``"bf16"`` for ``torch.autocast(device, torch.bfloat16)``.
        batch_size: batch size; ``None`` = the benchmark's default (8, or 2 with ``quick``).
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
    batch_size: int | None = None
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "repeats"):
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
            self.batch_size if self.batch_size is not None else quick_batch,
            self.repeats if self.repeats is not None else quick_repeats,
            self.warmup if self.warmup is not None else quick_warmup,
        )

    @property
    def min_repeats(self) -> int:
        """Repeats a measurement always gets before the time budget can stop it."""
        return 1 if self.quick else 3
