"""Length-controlled (and style-controlled) win rates, computed by mixlab itself.

Judges prefer longer answers, so a raw win rate against a baseline rewards verbosity. AlpacaEval 2.0's remedy
(Dubois et al. 2024, `length_controlled_v1`) is a logistic regression of the judge's preference on the length
difference, read off at zero length difference. mixlab refits the same idea on its own judgements:

    logit P(model beats baseline on instruction i) = θ + β·tanh(Δlen_i / σ) [+ γ·difficulty_i] [+ Σ δ_k·style_ik]

- `Δlen_i` = len(model answer) − len(baseline answer) in characters, σ its standard deviation over the
  instructions (tanh keeps a few extreme lengths from dominating);
- `difficulty_i`: optional per-instruction fixed effect, estimated across several models judged on the same
  instructions (`instruction_difficulty`); with a single model it is not identifiable and is left out;
- `style_ik`: optional further controls (e.g. markdown density differences, Arena-Hard's "style control").
The length-controlled win rate is the mean predicted preference with Δlen (and the style terms) set to 0. Targets
may be fractional (the two position-swapped games give 0, .25, .5, .75 or 1). All coefficients carry a weak L2
penalty (λ = 0.01, AlpacaEval's C = 100), which also keeps the fit finite when the model wins every game.
The 95 % interval is a percentile bootstrap over instructions, refitting each replicate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

L2 = 0.01


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def fit_logistic(
    X: np.ndarray, y: np.ndarray, *, weights: np.ndarray | None = None, l2: float | np.ndarray = L2,
    offset: np.ndarray | None = None, max_iter: int = 100, tol: float = 1e-10,
) -> np.ndarray:
    """Penalised logistic regression with probabilistic targets y ∈ [0, 1], by damped Newton steps.

    Minimises Σ w·CE(y, σ(Xβ + offset)) + ½ Σ λ_j β_j². `l2` is a scalar or one value per column.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, p = X.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=np.float64)
    lam = np.broadcast_to(np.asarray(l2, dtype=np.float64), (p,))
    beta = np.zeros(p)

    def loss(b: np.ndarray) -> float:
        z = X @ b + off
        # CE = log(1 + e^z) - y z, computed stably
        return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(lam * b * b))

    current = loss(beta)
    for _ in range(max_iter):
        prob = _sigmoid(X @ beta + off)
        grad = X.T @ (w * (prob - y)) + lam * beta
        hess = (X * (w * prob * (1 - prob))[:, None]).T @ X + np.diag(lam + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            candidate = beta - t * step
            new = loss(candidate)
            if new <= current + 1e-12 or t < 1e-8:
                break
            t *= 0.5
        converged = abs(current - new) < tol * max(1.0, abs(current))
        beta, current = candidate, new
        if converged:
            break
    return beta


@dataclass
class LCResult:
    n: int
    win_rate: float  # raw mean preference
    lc_win_rate: float
    ci_low: float
    ci_high: float
    coef: dict[str, float] = field(default_factory=dict)
    n_boot: int = 0

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "win_rate": self.win_rate, "lc_win_rate": self.lc_win_rate, "ci_low": self.ci_low,
                "ci_high": self.ci_high, **{f"coef_{k}": v for k, v in self.coef.items()}}


def _design(delta_len: np.ndarray, sigma: float, difficulty: np.ndarray | None, style: np.ndarray | None):
    cols = [np.ones_like(delta_len), np.tanh(delta_len / sigma) if sigma > 0 else np.zeros_like(delta_len)]
    names = ["intercept", "length"]
    if difficulty is not None:
        cols.append(difficulty)
        names.append("difficulty")
    if style is not None:
        for k in range(style.shape[1]):
            cols.append(style[:, k])
            names.append(f"style{k}")
    return np.column_stack(cols), names


def _lc_point(X: np.ndarray, y: np.ndarray, names: list[str]) -> tuple[float, np.ndarray]:
    beta = fit_logistic(X, y)
    # Counterfactual: same length (and style) as the baseline; keep the intercept and difficulty.
    X0 = np.zeros_like(X)
    X0[:, 0] = 1.0
    if "difficulty" in names:
        j = names.index("difficulty")
        X0[:, j] = X[:, j]
    return float(np.mean(_sigmoid(X0 @ beta))), beta


def lc_win_rate(
    preference: Sequence[float],
    len_model: Sequence[float],
    len_baseline: Sequence[float],
    *,
    difficulty: Sequence[float] | None = None,
    style: Sequence[Sequence[float]] | np.ndarray | None = None,
    n_boot: int = 500,
    seed: int = 0,
    alpha: float = 0.05,
) -> LCResult:
    """Length-controlled win rate of a model against a baseline over instructions (one row per instruction).

    `preference[i]` ∈ [0, 1] is the model's judged preference on instruction i (None/NaN rows are dropped, e.g.
    unparseable verdicts). `style` adds extra standardised controls, zeroed in the counterfactual.
    """
    pref = np.asarray([np.nan if p is None else p for p in preference], dtype=np.float64)
    lm = np.asarray(len_model, dtype=np.float64)
    lb = np.asarray(len_baseline, dtype=np.float64)
    if not (pref.shape == lm.shape == lb.shape):
        raise ValueError(f"lc_win_rate: preference/len_model/len_baseline lengths differ: {pref.size}/{lm.size}/{lb.size}")
    keep = np.isfinite(pref)
    diff = None if difficulty is None else np.asarray(difficulty, dtype=np.float64)[keep]
    sty = None
    if style is not None:
        sty = np.asarray(style, dtype=np.float64).reshape(pref.size, -1)[keep]
        sd = sty.std(axis=0)
        sty = np.where(sd > 0, sty / np.where(sd > 0, sd, 1.0), 0.0)
    pref, delta = pref[keep], (lm - lb)[keep]
    n = int(pref.size)
    if n == 0:
        return LCResult(0, math.nan, math.nan, math.nan, math.nan)
    sigma = float(delta.std())
    X, names = _design(delta, sigma, diff, sty)
    point, beta = _lc_point(X, pref, names)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if n > 1 else 0):
        idx = rng.integers(0, n, size=n)
        # σ is re-estimated per replicate, as the statistic would be on that sample.
        s = float(delta[idx].std())
        Xb, _ = _design(delta[idx], s, None if diff is None else diff[idx], None if sty is None else sty[idx])
        boots.append(_lc_point(Xb, pref[idx], names)[0])
    if boots:
        low, high = (float(q) for q in np.quantile(boots, [alpha / 2, 1 - alpha / 2]))
    else:
        low = high = point
    return LCResult(
        n=n, win_rate=float(pref.mean()), lc_win_rate=point, ci_low=low, ci_high=high,
        coef=dict(zip(names, (float(b) for b in beta))), n_boot=len(boots),
    )


def instruction_difficulty(
    model_ids: Sequence[str],
    instruction_ids: Sequence[str],
    preference: Sequence[float],
    delta_len: Sequence[float],
    *,
    l2_instruction: float = 1.0,
) -> dict[str, float]:
    """Per-instruction fixed effects γ_i from several models judged against the same baseline.

    Joint fit: logit P = θ_model + β_model·tanh(Δ/σ_model) + γ_instruction, with a ridge penalty on γ (centred
    at 0, so only differences between instructions are learned and an instruction seen once shrinks to 0).
    Returns γ (log-odds; > 0 = the baseline is easy to beat there), to pass as `difficulty` to `lc_win_rate`.
    Needs at least two models; with one, every γ would absorb its instruction's outcome.
    """
    models = sorted(set(model_ids))
    instructions = sorted(set(instruction_ids))
    if len(models) < 2:
        raise ValueError("instruction_difficulty needs results from at least two models")
    pref = np.asarray(preference, dtype=np.float64)
    delta = np.asarray(delta_len, dtype=np.float64)
    keep = np.isfinite(pref)
    m_index = {m: k for k, m in enumerate(models)}
    i_index = {s: k for k, s in enumerate(instructions)}
    M, I = len(models), len(instructions)
    mids = np.array([m_index[m] for m in model_ids])
    iids = np.array([i_index[s] for s in instruction_ids])
    X = np.zeros((pref.size, 2 * M + I))
    for m in range(M):
        rows = mids == m
        sigma = float(delta[rows & keep].std()) if np.any(rows & keep) else 0.0
        X[rows, m] = 1.0
        X[rows, M + m] = np.tanh(delta[rows] / sigma) if sigma > 0 else 0.0
    X[np.arange(pref.size), 2 * M + iids] = 1.0
    lam = np.concatenate([np.full(2 * M, L2), np.full(I, l2_instruction)])
    beta = fit_logistic(X[keep], pref[keep], l2=lam)
    gamma = beta[2 * M :]
    return {s: float(gamma[k]) for s, k in i_index.items()}
