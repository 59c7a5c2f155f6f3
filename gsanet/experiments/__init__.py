"""``gsanet experiment``: GSA-ResNet vs. conv ResNet vs. attention peers, and the GSA ablations, over seeds.

:mod:`.plans` declares what is trained (models, arguments, seeds, skipped variants and why); :mod:`.cli` runs the
``gsanet train`` subprocesses (resumable, never overwriting a finished run) and writes the tables.
"""

from .plans import Plan, RunSpec, Variant, ablations_plan, compare_plan, expand, get_plan

__all__ = ["Plan", "RunSpec", "Variant", "ablations_plan", "compare_plan", "expand", "get_plan"]
