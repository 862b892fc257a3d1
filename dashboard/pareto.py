"""Pareto front over two metrics, and which dominated points are dominated beyond their confidence intervals.

A point is on the front when no other point is at least as good on both axes and strictly better on one. Because
each score carries a 95 % CI, "dominated" alone can be noise; `clearly_dominated` marks points for which some other
point's lower CI bounds beat this point's upper CI bounds on both axes — the only dominance a researcher should act on.
The rule is `mixlab.evals.stats.clearly_better`, the statistics module every comparison of the lab goes through: axes
here are aggregates over tasks, with no shared items to pair; for two runs on one task the dashboard's run page shows
`stats.compare`, the paired test `mixlab compare` prints.
Directions: `maximize=(True, True)` by default; a lower-is-better axis passes False.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mixlab.evals import stats


def _oriented(values: Sequence[float], maximize: bool) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr if maximize else -arr


def pareto_mask(x: Sequence[float], y: Sequence[float], maximize: tuple[bool, bool] = (True, True)) -> np.ndarray:
    """Boolean mask of non-dominated points. NaNs are never on the front; exact duplicates of a front point are.

    O(n log n): sweep points by x (best first) keeping the best y seen.
    """
    xs, ys = _oriented(x, maximize[0]), _oriented(y, maximize[1])
    if xs.shape != ys.shape:
        raise ValueError(f"x and y differ in length: {xs.shape} vs {ys.shape}")
    mask = np.zeros(xs.shape, dtype=bool)
    valid = np.flatnonzero(~(np.isnan(xs) | np.isnan(ys)))
    if valid.size == 0:
        return mask
    order = valid[np.lexsort((-ys[valid], -xs[valid]))]  # x descending, then y descending
    best_y = -np.inf
    last = (np.nan, np.nan)
    for i in order:
        if ys[i] > best_y:
            mask[i] = True
            best_y = ys[i]
            last = (xs[i], ys[i])
        elif xs[i] == last[0] and ys[i] == last[1]:
            mask[i] = True  # an exact tie with a front point is not dominated by it
    return mask


def clearly_dominated(
    x: Sequence[float], x_lo: Sequence[float], x_hi: Sequence[float],
    y: Sequence[float], y_lo: Sequence[float], y_hi: Sequence[float],
    maximize: tuple[bool, bool] = (True, True),
) -> np.ndarray:
    """Mask of points some other point beats beyond both CIs (its worse bound better than this one's better bound)."""
    def bounds(lo, hi, up):
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        return (lo, hi) if up else (-hi, -lo)  # orient so that larger is better

    xl, xh = bounds(x_lo, x_hi, maximize[0])
    yl, yh = bounds(y_lo, y_hi, maximize[1])
    n = xl.shape[0]
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    # Blocked to keep memory flat for thousands of points: beats[i, j] = j beats i beyond CI on both axes.
    block = 512
    for start in range(0, n, block):
        sl = slice(start, start + block)
        beats = stats.clearly_better(xl[None, :], xh[sl, None]) & stats.clearly_better(yl[None, :], yh[sl, None])
        out[sl] = np.nan_to_num(beats, nan=False).any(axis=1)
    return out


def front_order(x: Sequence[float], mask: np.ndarray) -> np.ndarray:
    """Indices of front points sorted by x ascending, the order in which the front line is drawn."""
    idx = np.flatnonzero(mask)
    return idx[np.argsort(np.asarray(x, dtype=float)[idx], kind="stable")]


def tiers(
    x, x_lo, x_hi, y, y_lo, y_hi, maximize: tuple[bool, bool] = (True, True)
) -> np.ndarray:
    """Per point: 'front', 'within CI of front' (dominated, but not beyond the CIs), 'dominated', or 'no data'."""
    on_front = pareto_mask(x, y, maximize)
    clear = clearly_dominated(x, x_lo, x_hi, y, y_lo, y_hi, maximize)
    missing = np.isnan(np.asarray(x, dtype=float)) | np.isnan(np.asarray(y, dtype=float))
    out = np.where(on_front, "front", np.where(clear, "dominated", "within CI of front"))
    return np.where(missing, "no data", out).astype(object)
