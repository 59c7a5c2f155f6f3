"""``gsanet experiment``: GSA-ResNet vs. conv ResNet vs. attention peers, and the GSA ablations, over seeds.

:mod:`.plans` declares what is trained (models, arguments, seeds, skipped variants and why, the ablations' factor
groups); :mod:`.runner` runs the ``gsanet train`` subprocesses (resumable, never overwriting a finished run);
:mod:`.results` gathers the finished runs and :mod:`.tables` writes the tables; :mod:`.study` is the converged
comparison (:mod:`.stats` its statistics); :mod:`.cli` is the command line.
"""

from .plans import Plan, RunSpec, Variant, ablations_plan, compare_plan, expand, get_plan

__all__ = ["Plan", "RunSpec", "Variant", "ablations_plan", "compare_plan", "expand", "get_plan"]
