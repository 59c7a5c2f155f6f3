"""Two-sample statistics of the experiment tables: Welch's t-test and the confidence interval of a difference.

Seeds are few (3 per model), so the tables compare means with Welch's unequal-variance t-test rather than a normal
approximation: its t distribution with Welch-Satterthwaite degrees of freedom widens the interval as it should.
When neither sample varies, the test is undefined (its standard error is zero): its p-value and interval are NaN,
:attr:`Welch.defined` is false, the tables write "n/a", and nothing is called significant.
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
        p: Two-sided p-value (NaN when the test is undefined, see :attr:`defined`).
        low: Lower end of the confidence interval of ``diff`` (NaN when undefined).
        high: Upper end (NaN when undefined).
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
    def defined(self) -> bool:
        """Whether the test is defined: at least one sample varies (``se > 0``)."""
        return self.se > 0

    @property
    def significant(self) -> bool:
        """The test is defined and the interval excludes zero (equivalently ``p < 1 - level``)."""
        return self.defined and (self.low > 0 or self.high < 0)

    def p_text(self, spec: str = ".2g") -> str:
        """The p-value formatted with ``spec``, or ``n/a`` when the test is undefined."""
        return format(self.p, spec) if self.defined else "n/a"


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch | None:
    """Welch's t-test of ``mean(a) - mean(b)``; None when either sample has fewer than two values.

    Two samples without any spread (every value equal within each) give ``se = 0``: Welch's statistic is undefined
    (0/0 or x/0), so ``t``, ``p`` and the interval are NaN and the result is neither defined nor significant. A few
    seeds that happen to agree say nothing about the seed-to-seed spread; p = 0 would claim certainty.
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
        return Welch(diff, 0.0, math.nan, math.nan, math.nan, math.nan, math.nan, level)
    dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), dof))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return Welch(diff, se, dof, t, p, diff - half, diff + half, level)
