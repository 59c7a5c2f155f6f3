"""Two-sample statistics of the experiment tables: Welch's t-test and the confidence interval of a difference.

Seeds are few (3 per model), so the tables compare means with Welch's unequal-variance t-test rather than a normal
approximation: its t distribution with Welch-Satterthwaite degrees of freedom widens the interval as it should.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Welch", "welch"]


@dataclass(frozen=True)
class Welch:
    """The difference of two sample means with Welch's t-test.

    Attributes:
        diff: ``mean(a) - mean(b)``.
        se: Its standard error, ``sqrt(var(a)/n_a + var(b)/n_b)`` (sample variances).
        dof: Welch-Satterthwaite degrees of freedom.
        t: ``diff / se``.
        p: Two-sided p-value.
        low: Lower end of the confidence interval of ``diff``.
        high: Upper end.
        level: Confidence level of ``low``/``high`` (0.95).
    """

    diff: float
    se: float
    dof: float
    t: float
    p: float
    low: float
    high: float
    level: float = 0.95

    @property
    def significant(self) -> bool:
        """The interval excludes zero (equivalently ``p < 1 - level``)."""
        return self.low > 0 or self.high < 0


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch | None:
    """Welch's t-test of ``mean(a) - mean(b)``; None when either sample has fewer than two values.

    Two samples without any spread (every value equal in both) give ``se = 0``: their difference is exact, ``p`` is
    0 when the means differ and 1 when they do not.
    """
    if len(a) < 2 or len(b) < 2:
        return None
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    from scipy import stats

    na, nb = len(a), len(b)
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Welch(diff, 0.0, float(na + nb - 2), math.copysign(math.inf, diff) if diff else 0.0,
                     0.0 if diff else 1.0, diff, diff, level)  # fmt: skip
    dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), dof))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return Welch(diff, se, dof, t, p, diff - half, diff + half, level)
