"""The one statistics module: McNemar's exact test and Newcombe's paired interval against independent values,
the paired bootstrap over items and seeds, one-sided margin and floor tests, the mean over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixlab.evals import stats


def _pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=float)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=float)
    return a, b


def test_mcnemar_exact_matches_the_binomial_sum():
    a, b = _pairs(59, 6, 16, 80)
    result = stats.mcnemar_exact(a, b)
    exact = 2 * sum(math.comb(22, i) for i in range(0, 7)) / 2 ** 22  # P(X <= 6 | 22, 1/2), doubled
    assert (result["b"], result["c"]) == (6, 16)
    assert result["p_two_sided"] == pytest.approx(exact, rel=1e-9)
    assert result["p_greater"] == pytest.approx(sum(math.comb(22, i) for i in range(6, 23)) / 2 ** 22, rel=1e-9)
    a, b = _pairs(0, 3, 0, 5)
    assert stats.mcnemar_exact(a, b)["p_two_sided"] == pytest.approx(0.25)  # textbook: 3 vs 0 discordant
    assert stats.mcnemar_exact(a, a)["p_two_sided"] == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact([0.5, 1.0], [0.0, 1.0])


def test_newcombe_paired_interval_matches_published_value():
    # Cavo et al. 2012 (Fagerland, Lydersen & Laake, "Statistical analysis of contingency tables", ch. 8):
    # Newcombe square-and-add estimate -0.0621, 95 % CI -0.1186 to -0.0046.
    a, b = _pairs(59, 6, 16, 80)
    diff, low, high = stats.newcombe_paired_ci(a, b)
    assert (round(diff, 4), round(low, 4), round(high, 4)) == (-0.0621, -0.1186, -0.0046)
    # No discordant pairs and few items: an honest, wide interval, not a zero-width bootstrap one.
    diff, low, high = stats.newcombe_paired_ci(np.zeros(20), np.zeros(20))
    assert diff == 0 and low < -0.1 and high > 0.1


def test_newcombe_coverage_is_near_nominal():
    rng = np.random.default_rng(0)
    hits, trials = 0, 400
    for _ in range(trials):
        # 60 items; correlated 0/1 outcomes with true difference 0.1.
        u = rng.random(60)
        a = (u < 0.6).astype(float)
        b = (np.where(rng.random(60) < 0.7, u, rng.random(60)) < 0.5).astype(float)
        true_diff = 0.6 - 0.5
        _, low, high = stats.newcombe_paired_ci(a, b)
        hits += low <= true_diff <= high
    assert 0.91 <= hits / trials <= 0.99


def test_compare_picks_the_test_by_the_data():
    a, b = _pairs(100, 25, 5, 70)
    c = stats.compare(a, b)
    assert c.test == "McNemar exact" and c.interval == "Newcombe paired score"
    assert c.diff == pytest.approx(0.1) and c.significant and c.ci_low > 0
    same = stats.compare(a, a)
    assert same.p_value == 1.0 and not same.significant
    rng = np.random.default_rng(1)
    x = rng.normal(6.0, 2.0, 300)
    c = stats.compare(x + 0.5, x + rng.normal(0, 0.5, 300))
    assert c.test == "paired bootstrap" and c.significant and c.ci_low > 0
    seeds = stats.compare(np.stack([x + 0.5, x + 0.4]), x[None, :])
    assert seeds.test == "paired bootstrap over items and seeds" and (seeds.n_seeds_a, seeds.n_seeds_b) == (2, 1)
    with pytest.raises(ValueError):
        stats.compare([1.0, 0.0], [1.0])


def test_seed_variance_widens_the_interval():
    rng = np.random.default_rng(2)
    items = rng.normal(0, 1, 400)
    base = items + rng.normal(0, 0.3, 400)
    calm = np.stack([items + 0.2 + rng.normal(0, 0.3, 400) for _ in range(4)])
    # Same mean gain, but each seed lands somewhere else: the between-seed spread must show in the CI.
    wild = np.stack([items + 0.2 + shift + rng.normal(0, 0.3, 400) for shift in (-0.6, -0.2, 0.2, 0.6)])
    narrow, wide = stats.compare(calm, base), stats.compare(wild, base)
    assert (wide.ci_high - wide.ci_low) > 3 * (narrow.ci_high - narrow.ci_low)
    assert narrow.significant and not wide.significant


def test_margin_test_superiority_and_non_inferiority():
    a, b = _pairs(100, 25, 5, 70)
    sup = stats.margin_test(a, b, 0.0)
    assert sup.passed and sup.test == "McNemar exact" and sup.p_value < 0.05
    assert not stats.margin_test(b, a, 0.0).passed  # the worse run is not superior
    assert stats.margin_test(b, a, -0.2).passed  # but it is within 0.2: non-inferior (drop 0.1, CI well above -0.2)
    assert not stats.margin_test(b, a, -0.05).passed  # not within 0.05
    nothing = stats.margin_test(np.zeros(3), np.zeros(3), -0.1)
    assert not nothing.passed  # 3 items prove nothing (Newcombe bound about -0.5)
    rng = np.random.default_rng(3)
    x = rng.normal(5, 1, 200)
    assert stats.margin_test(x + 0.3, x + rng.normal(0, 0.2, 200), 0.0).passed
    tiny = stats.margin_test(np.arange(5.0) + 1, np.arange(5.0), 0.0)
    assert not tiny.passed and "too few" in tiny.reason
    flat = stats.margin_test(np.zeros((2, 30)), np.zeros((2, 30)), -0.5)  # two seeds, every item 0: no evidence
    assert not flat.passed and "no variation" in flat.reason
    text = sup.describe()
    assert "McNemar" in text and "alpha=0.05" in text and "effect +0.100" in text


def test_floor_test():
    good = np.array([1.0] * 80 + [0.0] * 20)
    assert stats.floor_test(good, 0.7).passed and not stats.floor_test(good, 0.78).passed
    ratings = np.random.default_rng(4).normal(7, 1, 200)
    assert stats.floor_test(ratings, 6.5).passed and not stats.floor_test(ratings, 7.2).passed


def test_mean_over_seeds_carries_both_variances():
    one = stats.mean_over_seeds([0.5], [0.4], [0.6])
    assert one == (0.5, 0.4, 0.6)
    agree = stats.mean_over_seeds([0.5, 0.5, 0.5], [0.45] * 3, [0.55] * 3)
    spread = stats.mean_over_seeds([0.4, 0.5, 0.6], [0.35, 0.45, 0.55], [0.45, 0.55, 0.65])
    assert agree[0] == spread[0] == pytest.approx(0.5)
    # With identical seeds the within-seed noise remains (items are shared); spread seeds widen it.
    assert agree[2] - agree[1] > 0.09
    assert spread[2] - spread[1] > 2 * (agree[2] - agree[1])
    assert stats.t95(2) == pytest.approx(4.303) and stats.t95(11) == pytest.approx(2.228)
