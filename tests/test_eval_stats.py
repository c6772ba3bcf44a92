"""Wilson interval and exact binomial test against hand-computed values (and SciPy when it is installed)."""
from __future__ import annotations

import pytest

from linedraw.eval.stats import binomial_test, wilson_interval


def test_binomial_test_hand_computed():
    # 7 of 10: P(X >= 7) = (120 + 45 + 10 + 1) / 1024, doubled by symmetry
    assert binomial_test(7, 10) == pytest.approx(352 / 1024)
    assert binomial_test(3, 10) == pytest.approx(352 / 1024)
    assert binomial_test(0, 5) == pytest.approx(2 / 32)
    assert binomial_test(5, 10) == pytest.approx(1.0)
    assert binomial_test(0, 0) == 1.0


def test_binomial_test_unequal_p_sums_outcomes_no_more_likely():
    # n=3, p=0.2: pmf .512 .384 .096 .008; observed 1 (.384): all but k=0 are no more likely -> .488
    assert binomial_test(1, 3, p=0.2) == pytest.approx(0.488)


def test_wilson_interval_hand_computed():
    # p = .7, n = 10: centre (.7 + z^2/20) / (1 + z^2/10), half-width z sqrt(.021 + z^2/400) / (1 + z^2/10)
    z = 1.959963984540054
    centre = (0.7 + z * z / 20) / (1 + z * z / 10)
    half = z * (0.7 * 0.3 / 10 + z * z / 400) ** 0.5 / (1 + z * z / 10)
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(centre - half, abs=1e-9) and high == pytest.approx(centre + half, abs=1e-9)
    assert low == pytest.approx(0.3968, abs=1e-4) and high == pytest.approx(0.8922, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 7), (13, 20), (30, 41), (60, 100), (200, 333)])
def test_agrees_with_scipy(k, n):
    stats = pytest.importorskip("scipy.stats", reason="SciPy is optional; the hand-computed tests cover this")
    result = stats.binomtest(k, n)
    assert binomial_test(k, n) == pytest.approx(result.pvalue, rel=1e-9)
    ci = result.proportion_ci(method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
