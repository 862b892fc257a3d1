"""Statistics against known values: Wilson intervals from DESIGN.md's table, exact combinatorial pass@k,
the bootstrap against the normal-theory interval it should approach."""

from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest

from mixlab.evals.stats import (
    bootstrap_ci,
    mean_ci,
    mean_pass_at_k,
    paired_bootstrap_ci,
    pass_at_k,
    summarize_metrics,
    wilson_ci,
)


@pytest.mark.parametrize(
    "k,n,low,high",
    [
        # DESIGN.md's measured demo table (300 held-out items each), rounded to 3 decimals there.
        (76, 300, 0.207, 0.305),
        (29, 300, 0.068, 0.135),
        (169, 300, 0.507, 0.618),
        (66, 300, 0.177, 0.270),
        (197, 300, 0.601, 0.708),
        # Textbook values: 5/10 -> (0.2366, 0.7634); 0/10 -> (0, 0.2775); 10/10 -> (0.7225, 1).
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_ci(k, n)
    assert lo == pytest.approx(low, abs=6e-4)
    assert hi == pytest.approx(high, abs=6e-4)
    assert lo <= k / n <= hi


def test_wilson_edge_cases():
    assert wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_ci(3, 2)
    # Wider z, wider interval.
    assert wilson_ci(5, 10, z=2.576)[0] < wilson_ci(5, 10)[0]


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 1, 1), (10, 3, 5), (20, 0, 10), (200, 10, 10),
                                   (200, 37, 100), (5, 4, 2), (100, 50, 1)])
def test_pass_at_k_matches_combinatorial_formula(n, c, k):
    exact = 1.0 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_pass_at_k_properties_and_errors():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction passing
    assert pass_at_k(10, 8, 3) == 1.0  # n - c < k
    assert mean_pass_at_k([(10, 3), (10, 0), (10, 10)], 1) == pytest.approx((0.3 + 0 + 1) / 3)
    assert math.isnan(mean_pass_at_k([], 1))
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_bootstrap_approaches_normal_theory_interval():
    rng = np.random.default_rng(123)
    values = rng.normal(loc=3.0, scale=2.0, size=2000)
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=0)
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert lo == pytest.approx(values.mean() - 1.96 * se, abs=0.2 * se)
    assert hi == pytest.approx(values.mean() + 1.96 * se, abs=0.2 * se)


def test_bootstrap_deterministic_and_degenerate():
    values = [0.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75]
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    continuous = np.random.default_rng(1).random(50)
    assert bootstrap_ci(continuous, n_boot=200, seed=7) != bootstrap_ci(continuous, n_boot=200, seed=8)
    assert bootstrap_ci([0.4] * 10) == (0.4, 0.4)
    assert bootstrap_ci([0.9]) == (0.9, 0.9)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])
    lo90, hi90 = bootstrap_ci(values, alpha=0.10)
    lo95, hi95 = bootstrap_ci(values, alpha=0.05)
    assert lo95 <= lo90 <= hi90 <= hi95


def test_paired_bootstrap_detects_a_consistent_small_gain():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=400).astype(float)
    better = base.copy()
    flip = np.flatnonzero(base == 0)[:30]  # b solves 30 more items, loses none
    better[flip] = 1.0
    diff, lo, hi = paired_bootstrap_ci(better, base)
    assert diff == pytest.approx(30 / 400)
    assert lo > 0 and hi > lo
    # The unpaired Wilson intervals of the two runs overlap, so only the paired test sees the gain.
    a, b = wilson_ci(better.sum(), 400), wilson_ci(base.sum(), 400)
    assert a[0] < b[1]
    assert paired_bootstrap_ci(base, base) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1, 0], [1])


def test_mean_ci_methods():
    mean, lo, hi, method = mean_ci([1, 0, 1, 1], binary=True)
    assert (mean, method) == (0.75, "wilson")
    assert (lo, hi) == wilson_ci(3, 4)
    mean, lo, hi, method = mean_ci([7.0, 8.0, 6.5, 9.0], binary=False)
    assert method == "bootstrap" and lo <= mean <= hi
    # Declared binary but fractional values: bootstrap, not a wrong Wilson interval.
    assert mean_ci([0.5, 1.0], binary=True)[3] == "bootstrap"
    assert mean_ci([], binary=True)[3] == "none"


def test_summarize_metrics_breakdowns_use_their_own_items():
    values = [{"acc": 1.0, "acc/level:1": 1.0}, {"acc": 0.0, "acc/level:2": 0.0}, {"acc": 1.0, "acc/level:2": 1.0}]
    summary = summarize_metrics(values, binary=True)
    assert list(summary) == ["acc", "acc/level:1", "acc/level:2"]
    assert summary["acc"][0] == pytest.approx(2 / 3) and summary["acc"][1:3] == wilson_ci(2, 3)
    assert summary["acc/level:1"][:3] == (1.0, *wilson_ci(1, 1))
    assert summary["acc/level:2"][0] == 0.5
