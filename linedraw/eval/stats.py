"""Small exact statistics for two-alternative preference data, without a SciPy dependency."""
from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; well-behaved at 0, 1 and small n (unlike Wald)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} is outside 0..{n}")
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def binomial_test(successes: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test: the total probability of outcomes no more likely than the observed one
    (the definition R's binom.test and SciPy use)."""
    if n <= 0:
        return 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} is outside 0..{n}")
    pmf = [_binomial_pmf(k, n, p) for k in range(n + 1)]
    observed = pmf[successes]
    # A relative tolerance keeps outcomes whose probability equals the observed one up to rounding.
    total = sum(q for q in pmf if q <= observed * (1 + 1e-7))
    return min(1.0, total)


def _binomial_pmf(k: int, n: int, p: float) -> float:
    if p in (0.0, 1.0):
        return float(k == (n if p == 1.0 else 0))
    log_choose = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return math.exp(log_choose + k * math.log(p) + (n - k) * math.log1p(-p))


def _normal_quantile(q: float) -> float:
    """Inverse of the standard normal CDF, by bisection on `math.erf` (exact to ~1e-12; 0.975 -> 1.959964)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile {q} is outside (0, 1)")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
