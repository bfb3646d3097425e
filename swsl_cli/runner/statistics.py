"""Mean, spread and Student's t interval of a few figures (the seeds of one recipe).

Standard library only: `--compare` imports it, and it must answer at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def t_two_sided_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with `df` degrees of freedom, exactly.

    The finite series of Abramowitz and Stegun 26.7.3 (odd df) and 26.7.4
    (even df), in theta = atan(t / sqrt(df)).
    """
    if df < 1:
        raise ValueError(f"Expected at least 1 degree of freedom. Received df={df}.")
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df/2 terms
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total
    # (2/pi) * (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), (df-1)/2 terms
    series = 0.0
    if df > 1:
        term, series = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            series += term
        series *= math.sin(theta) * math.cos(theta)
    return 2 / math.pi * (theta + series)


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The t with P(|T| <= t) = `confidence`: the half-width factor of a two-sided interval.

    Bisection on the exact probability; 12.706 for df 1, 2.228 for df 10, 1.960 as df grows.
    """
    low, high = 0.0, 1.0
    while t_two_sided_probability(high, df) < confidence:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_two_sided_probability(middle, df) < confidence:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2


@dataclass(frozen=True)
class Summary:
    """n values: their mean, sample standard deviation and 95 % interval of the mean.

    `sd`, `low` and `high` are None for a single value (no spread to speak of).
    """

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else self.high - self.mean


def summarize(values: Sequence[float]) -> Summary | None:
    """The `Summary` of `values` (Student's t interval); None when there are none."""
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(1, mean, None, None, None)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def difference(a: Summary, b: Summary) -> Summary | None:
    """`a.mean - b.mean` with Welch's 95 % interval; None unless both have a spread.

    The interval's degrees of freedom are Welch-Satterthwaite's, rounded down
    (the wider, cautious interval); `sd` is the difference's standard error.
    """
    if a.sd is None or b.sd is None:
        return None
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    se = math.sqrt(va + vb)
    mean = a.mean - b.mean
    if se == 0:
        return Summary(a.n + b.n, mean, 0.0, mean, mean)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = t_quantile(max(1, math.floor(df + 1e-9))) * se
    return Summary(a.n + b.n, mean, se, mean - half, mean + half)
