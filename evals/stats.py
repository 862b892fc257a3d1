"""Honest uncertainty for eval scores: Wilson and bootstrap intervals, paired differences, unbiased pass@k.

Every metric mixlab stores carries n, the mean and a 95 % interval. Binary per-item scores (exact match, pass/fail)
get a Wilson interval, which behaves at 0 and 1 where the normal approximation collapses; continuous scores
(judge ratings, fractions of constraints) get a percentile bootstrap. Comparing two checkpoints on the *same* items
uses a paired bootstrap of the per-item differences, which is far tighter than comparing two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "wilson_ci",
    "bootstrap_ci",
    "paired_bootstrap_ci",
    "pass_at_k",
    "mean_pass_at_k",
    "mean_ci",
    "summarize_metrics",
]


def wilson_ci(k: int | float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials. n = 0 gives the vacuous interval (0, 1)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp tiny float excursions so the interval always sits inside [0, 1] and contains p.
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError("bootstrap values must be finite (drop unparseable items before computing a CI)")
    return arr


def _percentile_interval(arr: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float]:
    n = arr.size
    if n == 0:
        return (math.nan, math.nan)
    if n == 1 or np.all(arr == arr[0]):
        return (float(arr[0]), float(arr[0])) if n == 1 else (float(arr.mean()), float(arr.mean()))
    rng = np.random.default_rng(seed)
    # Draw in chunks so 2000 x 50k items does not allocate a gigabyte at once.
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, min(n_boot, 2_000_000 // n))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling items with replacement).

    Deterministic for a given seed. An empty input gives (nan, nan); a constant input gives a zero-width interval.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    return _percentile_interval(_as_array(values), n_boot, seed, alpha)


def paired_bootstrap_ci(
    values_a: Sequence[float] | np.ndarray,
    values_b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Mean difference (a - b) over the same items, with its paired percentile bootstrap interval.

    `values_a[i]` and `values_b[i]` must be the scores of two runs on the same item i. Returns (diff, low, high);
    an interval that excludes 0 means the runs differ at level alpha.
    """
    a, b = _as_array(values_a), _as_array(values_b)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs scores on the same items: got {a.size} and {b.size} values")
    diff = a - b
    if diff.size == 0:
        return (math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed, alpha=alpha)
    return (float(diff.mean()), low, high)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c passed (Chen et al. 2021).

    pass@k = 1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) for numerical stability.
    """
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(samples: Sequence[tuple[int, int]], k: int) -> float:
    """Average pass@k over problems, each given as (n, c)."""
    if not samples:
        return math.nan
    return float(np.mean([pass_at_k(n, c, k) for n, c in samples]))


def mean_ci(values: Sequence[float] | np.ndarray, binary: bool, **bootstrap_kw) -> tuple[float, float, float, str]:
    """(mean, low, high, method) for per-item scores: Wilson when binary (0/1 values), bootstrap otherwise.

    A metric declared binary whose values are not all 0/1 falls back to the bootstrap rather than lying.
    """
    arr = _as_array(values)
    if arr.size == 0:
        return (math.nan, math.nan, math.nan, "none")
    mean = float(arr.mean())
    if binary and np.all((arr == 0) | (arr == 1)):
        low, high = wilson_ci(int(arr.sum()), int(arr.size))
        return (mean, low, high, "wilson")
    low, high = bootstrap_ci(arr, **bootstrap_kw)
    return (mean, low, high, "bootstrap")


def summarize_metrics(
    per_item_values: Sequence[dict[str, float]], binary: bool, **bootstrap_kw
) -> dict[str, tuple[float, float, float, str]]:
    """mean_ci for every metric key seen, each over the items that carry it.

    Tasks put breakdown keys (e.g. "accuracy/level:5") only on the items they concern, so a breakdown's n and
    interval are those of its own subset.
    """
    seen: dict[str, None] = {}
    for values in per_item_values:
        seen.update(dict.fromkeys(values))
    # Headline metrics first (as the task orders them), then breakdowns sorted by name.
    keys = [k for k in seen if "/" not in k] + sorted(k for k in seen if "/" in k)
    return {
        key: mean_ci([v[key] for v in per_item_values if key in v], binary=binary, **bootstrap_kw) for key in keys
    }
