"""Pareto front and CI-aware dominance, against hand-made cases and a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest

from mixlab.dashboard import pareto


def brute_force_front(x, y):
    n = len(x)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if np.isnan(x[i]) or np.isnan(y[i]):
            continue
        out[i] = not any(
            x[j] >= x[i] and y[j] >= y[i] and (x[j] > x[i] or y[j] > y[i]) for j in range(n) if j != i
        )
    return out


def test_known_front():
    x = [0.1, 0.5, 0.9, 0.4, 0.9, 0.2]
    y = [0.9, 0.6, 0.2, 0.5, 0.1, 0.9]
    # (0.2, 0.9) dominates (0.1, 0.9); (0.5, 0.6) dominates (0.4, 0.5); (0.9, 0.2) dominates (0.9, 0.1)
    assert pareto.pareto_mask(x, y).tolist() == [False, True, True, False, False, True]


def test_exact_duplicates_both_on_front_and_nan_never():
    x = [1.0, 1.0, np.nan, 0.5]
    y = [1.0, 1.0, 5.0, 0.5]
    assert pareto.pareto_mask(x, y).tolist() == [True, True, False, False]


def test_minimising_an_axis_flips_it():
    x = [1.0, 2.0, 3.0]
    y = [1.0, 1.0, 1.0]
    assert pareto.pareto_mask(x, y, (True, True)).tolist() == [False, False, True]
    assert pareto.pareto_mask(x, y, (False, True)).tolist() == [True, False, False]


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_random_points_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 12, 200).astype(float)  # coarse grid: many ties
    y = rng.integers(0, 12, 200).astype(float)
    x[::17] = np.nan
    assert (pareto.pareto_mask(x, y) == brute_force_front(x, y)).all()


def test_front_order_is_x_ascending():
    x = np.array([0.9, 0.1, 0.5])
    y = np.array([0.1, 0.9, 0.5])
    mask = pareto.pareto_mask(x, y)
    assert pareto.front_order(x, mask).tolist() == [1, 2, 0]


def test_clear_dominance_needs_both_cis_separated():
    # point 0 beats 1 beyond CIs on both axes; beats 2 on x only beyond CI (y intervals overlap)
    x, xl, xh = [0.8, 0.4, 0.4], [0.75, 0.35, 0.35], [0.85, 0.45, 0.45]
    y, yl, yh = [0.8, 0.4, 0.7], [0.75, 0.35, 0.6], [0.85, 0.45, 0.78]
    assert pareto.clearly_dominated(x, xl, xh, y, yl, yh).tolist() == [False, True, False]
    assert pareto.tiers(x, xl, xh, y, yl, yh).tolist() == ["front", "dominated", "within CI of front"]


def test_clear_dominance_blocks_match_unblocked():
    rng = np.random.default_rng(3)
    n = 1300  # more than one block of 512
    x, y = rng.random(n), rng.random(n)
    w = rng.random(n) * 0.05
    got = pareto.clearly_dominated(x, x - w, x + w, y, y - w, y + w)
    want = ((x - w)[None, :] > (x + w)[:, None]) & ((y - w)[None, :] > (y + w)[:, None])
    assert (got == want.any(axis=1)).all()
    assert got.any() and not got.all()


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        pareto.pareto_mask([1, 2], [1])
