"""Honest uncertainty for eval scores: Wilson and bootstrap intervals, paired differences, unbiased pass@k.

Every metric mixlab stores carries n, the mean and a 95 % interval. Binary per-item scores (exact match, pass/fail)
get a Wilson interval, which behaves at 0 and 1 where the normal approximation collapses; continuous scores
(judge ratings, fractions of constraints) get a percentile bootstrap. Comparing two checkpoints on the *same* items
uses a paired bootstrap of the per-item differences, which is far tighter than comparing two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "wilson_ci",
    "bootstrap_ci",
    "paired_bootstrap_ci",
    "pass_at_k",
    "mean_pass_at_k",
    "mean_ci",
    "spearman_ci",
    "summarize_metrics",
    "mcnemar_exact",
    "newcombe_paired_ci",
    "bootstrap_differences",
    "Comparison",
    "compare",
    "MarginTest",
    "margin_test",
    "floor_test",
    "mean_over_seeds",
    "t95",
    "clearly_better",
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


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    ranks = np.empty(a.size)
    ranks[np.argsort(a, kind="stable")] = np.arange(1, a.size + 1)
    _, inverse = np.unique(a, return_inverse=True)
    return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def spearman_ci(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                alpha: float = 0.05) -> tuple[float, float, float]:
    """Spearman's rank correlation of paired values with its (1 - alpha) interval: Fisher's z with the
    Fieller-Hartley-Pearson standard error sqrt(1.06 / (n - 3)). Needs n >= 4; a constant side gives NaN.
    "Ranks better than chance" is a lower bound above 0."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman_ci needs two equal-length 1-D arrays, got {a.shape} and {b.shape}")
    n = a.size
    if n < 4 or np.all(a == a[0]) or np.all(b == b[0]):
        return (math.nan, math.nan, math.nan)
    ra, rb = _average_ranks(a), _average_ranks(b)
    rho = float(np.corrcoef(ra, rb)[0, 1])
    z, half = math.atanh(max(-0.999999, min(0.999999, rho))), _z(alpha / 2) * math.sqrt(1.06 / (n - 3))
    return (rho, math.tanh(z - half), math.tanh(z + half))


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


# ---------------------------------------------------------------------------------------------------------------
# Comparisons: paired over the same items, and over seeds where several exist. Every comparison the lab makes for a
# user (ladder gates, `mixlab compare`, the dashboard's "within CI of the front", the demo's trade-off) goes through
# `compare` / `margin_test` below, so one rule decides them all.

Z_ONE_SIDED = {0.05: 1.6448536269514722, 0.025: 1.959963984540054, 0.01: 2.3263478740408408}


def _z(p_upper: float) -> float:
    """The standard normal quantile for upper-tail probability `p_upper` (exact via erfinv-free bisection)."""
    if p_upper in Z_ONE_SIDED:
        return Z_ONE_SIDED[p_upper]
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > p_upper:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _binom_tail_ge(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), summed in log space (stable for large n)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def mcnemar_exact(values_a: Sequence[float] | np.ndarray, values_b: Sequence[float] | np.ndarray) -> dict[str, float]:
    """McNemar's exact test on paired 0/1 outcomes: the discordant pairs against Binomial(b + c, 1/2).

    Returns b (a=1, b=0), c (a=0, b=1), the two-sided p-value and the one-sided p-value for "a better than b".
    """
    a, b = _paired_binary(values_a, values_b)
    n10 = int(np.sum((a == 1) & (b == 0)))
    n01 = int(np.sum((a == 0) & (b == 1)))
    n = n10 + n01
    greater = _binom_tail_ge(n10, n)  # P(X >= n10)
    less = _binom_tail_ge(n - n10, n)  # P(X <= n10)
    return {"b": n10, "c": n01, "p_two_sided": min(1.0, 2 * min(greater, less)), "p_greater": greater}


def _paired_binary(values_a, values_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(values_a), _as_array(values_b)
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs scores on the same items: got {a.size} and {b.size} values")
    if not (_is_binary(a) and _is_binary(b)):
        raise ValueError("McNemar / Newcombe need 0/1 outcomes")
    return a, b


def _is_binary(arr: np.ndarray) -> bool:
    return bool(np.all((arr == 0) | (arr == 1)))


def newcombe_paired_ci(values_a, values_b, alpha: float = 0.05) -> tuple[float, float, float]:
    """Difference of two paired proportions (a - b) with Newcombe's score interval (1998, method 10).

    Built from the Wilson intervals of both proportions and their correlation, so it stays honest with few items or
    no discordant pairs (20 items all 0 on both sides give about +-0.16, where a bootstrap would give a zero-width
    interval).
    """
    a, b = _paired_binary(values_a, values_b)
    n = a.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    z = _z(alpha / 2)
    both = int(np.sum((a == 1) & (b == 1)))
    n10 = int(np.sum((a == 1) & (b == 0)))
    n01 = int(np.sum((a == 0) & (b == 1)))
    neither = n - both - n10 - n01
    p1, p2 = (both + n10) / n, (both + n01) / n
    l1, u1 = wilson_ci(both + n10, n, z=z)
    l2, u2 = wilson_ci(both + n01, n, z=z)
    denom = (both + n10) * (n01 + neither) * (both + n01) * (n10 + neither)
    # Newcombe's continuity-corrected correlation: positive association shrunk by n/2, none below that.
    cross = both * neither - n10 * n01
    if denom == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(denom)
    theta = p1 - p2
    d_low = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    d_high = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (theta, max(-1.0, theta - d_low), min(1.0, theta + d_high))


def _matrix(values) -> np.ndarray:
    """Scores as [seeds, items]: a 1-D input is one seed."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"scores must be [items] or [seeds, items], got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError("scores must be finite (drop unscored items before comparing)")
    return arr


def bootstrap_differences(a, b, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of mean(a) - mean(b) for scores [seeds, items] on the same items.

    Each replicate resamples items (the same draw for both sides: the pairing) and, where a side has several seeds,
    that side's seeds (independently per side), so the spread carries item noise and between-seed variance.
    """
    A, B = _matrix(a), _matrix(b)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"a paired comparison needs the same items: {A.shape[1]} vs {B.shape[1]}")
    n = A.shape[1]
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, min(n_boot, 4_000_000 // max(1, n)))
    for start in range(0, n_boot, chunk):
        m = min(n_boot, start + chunk) - start
        per_item = np.broadcast_to(A.mean(0) - B.mean(0), (m, n))
        if A.shape[0] > 1 or B.shape[0] > 1:
            wa = rng.multinomial(A.shape[0], [1 / A.shape[0]] * A.shape[0], size=m) / A.shape[0]
            wb = rng.multinomial(B.shape[0], [1 / B.shape[0]] * B.shape[0], size=m) / B.shape[0]
            per_item = wa @ A - wb @ B
        counts = rng.multinomial(n, [1 / n] * n, size=m)
        out[start : start + m] = (per_item * counts).sum(axis=1) / n
    return out


# Below this many items a percentile bootstrap has too few distinct resamples to be a test (all-equal scores give
# a zero-width interval); comparisons that need the bootstrap refuse to decide on fewer.
MIN_BOOTSTRAP_ITEMS = 10


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) over the same items: the effect, its (1 - alpha) interval, and a two-sided p-value."""

    test: str  # "McNemar exact" | "paired bootstrap" | "paired bootstrap over items and seeds"
    interval: str  # "Newcombe paired score" | "percentile bootstrap"
    n_items: int
    n_seeds_a: int
    n_seeds_b: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def describe(self) -> str:
        seeds = f", seeds {self.n_seeds_a}/{self.n_seeds_b}" if max(self.n_seeds_a, self.n_seeds_b) > 1 else ""
        return (f"{self.mean_a:.3f} vs {self.mean_b:.3f}: diff {self.diff:+.3f} "
                f"[{self.ci_low:+.3f}, {self.ci_high:+.3f}] ({1 - self.alpha:.0%} {self.interval}); "
                f"{self.test} p={self.p_value:.3g} over {self.n_items} items{seeds}")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")


def compare(a, b, *, alpha: float = 0.05, binary: bool | None = None, n_boot: int = 2000,
            seed: int = 0) -> Comparison:
    """Compare two runs on the same items. `a`, `b`: per-item scores, [items] or [seeds, items], columns aligned.

    One seed per side and 0/1 scores: McNemar's exact test, Newcombe's paired score interval. Otherwise a paired
    bootstrap of the mean difference (items resampled jointly; seeds resampled per side when several exist), with
    the percentile interval and p = 2 * min(P*(d <= 0), P*(d >= 0)) from the same replicates.
    """
    _check_alpha(alpha)
    A, B = _matrix(a), _matrix(b)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"a paired comparison needs the same items: {A.shape[1]} vs {B.shape[1]}")
    n = A.shape[1]
    is_binary = _is_binary(A) and _is_binary(B) if binary is None else binary and _is_binary(A) and _is_binary(B)
    mean_a = float(A.mean()) if n else math.nan
    mean_b = float(B.mean()) if n else math.nan
    common = dict(n_items=n, n_seeds_a=A.shape[0], n_seeds_b=B.shape[0], mean_a=mean_a, mean_b=mean_b, alpha=alpha)
    if n == 0:
        return Comparison("none", "none", diff=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan, **common)
    if is_binary and A.shape[0] == 1 and B.shape[0] == 1:
        diff, low, high = newcombe_paired_ci(A[0], B[0], alpha)
        p = mcnemar_exact(A[0], B[0])["p_two_sided"]
        return Comparison("McNemar exact", "Newcombe paired score", diff=diff, ci_low=low, ci_high=high, p_value=p,
                          **common)
    reps = bootstrap_differences(A, B, n_boot=n_boot, seed=seed)
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min((1 + np.sum(reps <= 0)) / (n_boot + 1), (1 + np.sum(reps >= 0)) / (n_boot + 1)))
    if np.all(reps == 0):
        p = 1.0
    test = "paired bootstrap" if A.shape[0] == B.shape[0] == 1 else "paired bootstrap over items and seeds"
    return Comparison(test, "percentile bootstrap", diff=mean_a - mean_b, ci_low=float(low), ci_high=float(high),
                      p_value=float(p), **common)


@dataclass(frozen=True)
class MarginTest:
    """One-sided test of H1: mean(a) - mean(b) > margin (superiority for margin >= 0, non-inferiority for < 0)."""

    passed: bool
    test: str
    alpha: float
    margin: float
    effect: float  # the observed difference
    bound: float  # the one-sided (1 - alpha) lower confidence bound of the difference
    p_value: float | None  # one-sided, where the test gives one
    n_items: int
    reason: str = ""

    def describe(self) -> str:
        p = f", p={self.p_value:.3g}" if self.p_value is not None else ""
        why = f" ({self.reason})" if self.reason else ""
        return (f"effect {self.effect:+.3f}, lower bound {self.bound:+.3f} {'>' if self.passed else '<='} "
                f"{self.margin:+.3f} [{self.test}, one-sided alpha={self.alpha}{p}, n={self.n_items}]{why}")


def margin_test(a, b, margin: float, *, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> MarginTest:
    """Does `a` beat `b` by more than `margin`, at one-sided level alpha?

    0/1 scores, one seed per side: with margin 0, McNemar's exact one-sided test; with another margin, Newcombe's
    paired score interval (its two-sided 1 - 2*alpha lower bound). Otherwise the paired bootstrap (over items, and
    over seeds where several exist): pass when fewer than alpha of the replicates lie at or below the margin. A
    bootstrap over fewer than MIN_BOOTSTRAP_ITEMS items, or whose replicates are all equal (every item 0 for every
    seed, say), does not pass: it has no spread to bound the difference with.
    """
    _check_alpha(alpha)
    A, B = _matrix(a), _matrix(b)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"a paired comparison needs the same items: {A.shape[1]} vs {B.shape[1]}")
    n = A.shape[1]
    if n == 0:
        return MarginTest(False, "none", alpha, margin, math.nan, math.nan, None, 0, "no items in common")
    effect = float(A.mean() - B.mean())
    if _is_binary(A) and _is_binary(B) and A.shape[0] == B.shape[0] == 1:
        _, low, _ = newcombe_paired_ci(A[0], B[0], 2 * alpha)
        if margin == 0:
            p = mcnemar_exact(A[0], B[0])["p_greater"]
            return MarginTest(p < alpha, "McNemar exact", alpha, margin, effect, low, p, n)
        return MarginTest(low > margin, "Newcombe paired score interval", alpha, margin, effect, low, None, n)
    reps = bootstrap_differences(A, B, n_boot=n_boot, seed=seed)
    p = float((1 + np.sum(reps <= margin)) / (n_boot + 1))
    bound = float(np.quantile(reps, alpha))
    test = "paired bootstrap" if A.shape[0] == B.shape[0] == 1 else "paired bootstrap over items and seeds"
    if n < MIN_BOOTSTRAP_ITEMS:
        return MarginTest(False, test, alpha, margin, effect, bound, p, n,
                          f"fewer than {MIN_BOOTSTRAP_ITEMS} items: too few for a bootstrap test")
    if np.all(reps == reps[0]):
        return MarginTest(False, test, alpha, margin, effect, bound, p, n,
                          "no variation between resamples: the bootstrap cannot bound the difference")
    return MarginTest(p < alpha, test, alpha, margin, effect, bound, p, n)


def floor_test(values, floor: float, *, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> MarginTest:
    """Is mean(values) above `floor` at one-sided level alpha? Wilson's bound for 0/1 scores of one seed, else the
    bootstrap (over items and seeds) of the mean."""
    _check_alpha(alpha)
    A = _matrix(values)
    n = A.shape[1]
    if n == 0:
        return MarginTest(False, "none", alpha, floor, math.nan, math.nan, None, 0, "no items")
    mean = float(A.mean())
    if _is_binary(A) and A.shape[0] == 1:
        low, _ = wilson_ci(int(A.sum()), n, z=_z(alpha))
        return MarginTest(low > floor, "Wilson score bound", alpha, floor, mean, low, None, n)
    reps = bootstrap_differences(A, np.zeros((1, n)), n_boot=n_boot, seed=seed)
    p = float((1 + np.sum(reps <= floor)) / (n_boot + 1))
    bound = float(np.quantile(reps, alpha))
    if n < MIN_BOOTSTRAP_ITEMS:
        return MarginTest(False, "bootstrap", alpha, floor, mean, bound, p, n,
                          f"fewer than {MIN_BOOTSTRAP_ITEMS} items: too few for a bootstrap test")
    if np.all(reps == reps[0]):
        return MarginTest(False, "bootstrap", alpha, floor, mean, bound, p, n,
                          "no variation between resamples: the bootstrap cannot bound the mean")
    return MarginTest(p < alpha, "bootstrap", alpha, floor, mean, bound, p, n)


# Two-sided 95 % Student t quantiles by degrees of freedom; the normal quantile beyond the table.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t95(dof: int) -> float:
    """Two-sided 95 % t quantile for `dof` degrees of freedom (the next tabulated dof below, so never too narrow)."""
    if dof < 1:
        raise ValueError("t95 needs dof >= 1")
    smaller = [d for d in _T95 if d <= dof]
    return _T95[max(smaller)] if dof <= 120 else 1.959963984540054


def mean_over_seeds(means: Sequence[float], lows: Sequence[float], highs: Sequence[float],
                    alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean of k per-seed scores (each with its own (1 - alpha) interval) and an interval carrying both sources.

    Seeds are evaluated on the same items, so the between-seed spread alone misses the item-sampling noise:
    variance = mean(within-seed SE^2) + s_between^2 / k, SEs read back from the per-seed intervals (normal theory),
    s_between the sample standard deviation of the seed means; the half-width is t(k-1) * sqrt(variance) at the
    95 % level. One seed keeps its own interval.
    """
    m = np.asarray(means, dtype=float)
    if m.size == 0:
        return (math.nan, math.nan, math.nan)
    if m.size == 1:
        return (float(m[0]), float(np.asarray(lows, dtype=float)[0]), float(np.asarray(highs, dtype=float)[0]))
    z = _z(alpha / 2)
    se_within = (np.asarray(highs, dtype=float) - np.asarray(lows, dtype=float)) / (2 * z)
    var = float(np.mean(se_within ** 2)) + float(m.var(ddof=1)) / m.size
    # Student t with k - 1 degrees of freedom: two or three seeds say little about the seed-to-seed spread.
    half = (t95(m.size - 1) if alpha == 0.05 else z) * math.sqrt(var)
    return (float(m.mean()), float(m.mean()) - half, float(m.mean()) + half)


def clearly_better(lo_a, hi_b):
    """The lab's rule for scores seen only through their intervals (no shared items to pair, e.g. the dashboard's
    aggregates over several tasks): a beats b beyond the CIs when a's lower bound is above b's upper bound.
    Elementwise on arrays; NaN bounds never beat. With per-item scores use `compare` (the paired test)."""
    out = np.asarray(lo_a, dtype=float) > np.asarray(hi_b, dtype=float)
    return bool(out) if out.ndim == 0 else out
