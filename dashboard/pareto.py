"""Pareto front over two metrics, and which dominated points are dominated beyond their confidence intervals.

A point is on the front when no other point is at least as good on both axes and strictly better on one. Because
each score carries a 95 % CI, "dominated" alone can be noise; `clearly_dominated` marks points for which some other
point's lower CI bounds beat this point's upper CI bounds on both axes — the only dominance a researcher should act on.
The rule is `mixlab.evals.stats.clearly_better`, the statistics module every comparison of the lab goes through,
where the axes are aggregates over tasks (no shared items to pair). When both axes are single metrics, `tiers` takes
`beats`: the paired test `mixlab compare` prints (`stats.compare` over the items both runs scored, significant in
the better direction), so the tier and the CLI agree run for run.
Directions: `maximize=(True, True)` by default; a lower-is-better axis passes False.
"""

from __future__ import annotations

from typing import Callable, Sequence

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


def paired_dominated(x, y, clear: np.ndarray, beats: Callable[[int, int], bool | None],
                     maximize: tuple[bool, bool] = (True, True), max_tests: int = 400) -> np.ndarray:
    """`clear` decided by paired tests where they exist: point i is dominated beyond noise when some point j that
    dominates it by the means `beats(j, i)` on both axes (the paired test `mixlab compare` runs); a pair without
    per-item scores (`beats` gives None) keeps the interval verdict. Dominators are tried largest lead first, and
    the first that beats i settles it; past `max_tests` tests (a page must stay interactive) the intervals decide."""
    xs, ys = _oriented(x, maximize[0]), _oriented(y, maximize[1])
    out = clear.copy()
    tests = 0
    for i in np.flatnonzero(~pareto_mask(x, y, maximize) & ~(np.isnan(xs) | np.isnan(ys))):
        dominators = np.flatnonzero((xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i])))
        dominators = dominators[np.argsort(-((xs[dominators] - xs[i]) + (ys[dominators] - ys[i])), kind="stable")]
        found, unknown = False, False
        for j in dominators:
            if tests >= max_tests:
                return out
            tests += 1
            verdict = beats(int(j), int(i))
            if verdict is True:
                found = True
                break
            unknown |= verdict is None
        if found:
            out[i] = True
        elif not unknown:
            out[i] = False
    return out


def tiers(
    x, x_lo, x_hi, y, y_lo, y_hi, maximize: tuple[bool, bool] = (True, True),
    beats: Callable[[int, int], bool | None] | None = None,
) -> np.ndarray:
    """Per point: 'front', 'within CI of front' (dominated, but not beyond the CIs), 'dominated', or 'no data'.
    With `beats` (paired tests over shared items, see `paired_dominated`) those decide where they exist."""
    on_front = pareto_mask(x, y, maximize)
    clear = clearly_dominated(x, x_lo, x_hi, y, y_lo, y_hi, maximize)
    if beats is not None:
        clear = paired_dominated(x, y, clear, beats, maximize)
    missing = np.isnan(np.asarray(x, dtype=float)) | np.isnan(np.asarray(y, dtype=float))
    out = np.where(on_front, "front", np.where(clear, "dominated", "within CI of front"))
    return np.where(missing, "no data", out).astype(object)
