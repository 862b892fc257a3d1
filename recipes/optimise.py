"""Mixture optimisation: learn from a family's finished runs which mixture weights move the leaderboard-versus-
usability front, propose the next mixtures, run them, refit (`mixlab optimise fit|propose|loop`).

A *family* is the runs of one base mixture and its `extends:` variants (the base's name is the family's name)
trained by the same recipe from the same base model with the same budget: the recipe YAML with its name,
description, family, seed, later stages and the varied stage's mixture removed hashes to one group key. Each run
is a row: features are the mixture's top-level component shares (from `mixture_components`), outcomes are its eval
metrics (the latest value per task/metric; per-level and style breakdowns, i.e. metric names with a `/`, are left
out) and two axes, the means of its leaderboard and of its usability metrics.

Surrogates, per metric and per axis: Bayesian ridge on the shares ("linear"), Bayesian ridge on log shares
("loglinear", the Data-Mixing-Laws form), and a Gaussian process (Matern + white noise, "gp"). All three give a
predictive standard deviation. Each is scored by leave-one-mixture-out (all seeds of a mixture held out together):
RMSE, MAE and Spearman's rho with its 95 % CI between held-out predictions and realised means, per mixture; the
lowest LOO RMSE is the `selected` model of a target; a target whose selected model neither beats predicting the other
mixtures' mean nor has Spearman's lower bound above 0 is reported as having no signal. A fit is stored with the data it was fitted on, so `propose`
rebuilds exactly the models `fit` scored.

Proposals: Dirichlet candidates over the component shares, both axes predicted with uncertainty. Without
constraints, K picks by greedy hypervolume improvement of the optimistic point (mean + beta x sd) over the realised
front; with `--min METRIC=VALUE`, the candidates predicted to meet every floor (with probability >= confidence)
that maximise optimistic usability. Picks keep an L1 distance of at least `min_distance` from every tried and
every picked mixture. Each is written as registry YAML that `extends:` the family base.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from rich.progress import track
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.linear_model import BayesianRidge
from threadpoolctl import threadpool_limits

from mixlab.errors import MixlabError
from mixlab.evals.stats import clearly_better, spearman_ci
from mixlab.mixtures import build, write_variant
from mixlab.paths import runs_dir
from mixlab.recipes.schema import parse_recipe
from mixlab.recipes.sweep import new_sweep_id, run_members
from mixlab.store import FitRecord, ProposalRecord, RoundRecord, Store
from mixlab.yamlio import did_you_mean

MODELS = ("linear", "loglinear", "gp")
AXES = {"axis:leaderboard": "leaderboard", "axis:usability": "usability"}
X_AXIS, Y_AXIS = "axis:leaderboard", "axis:usability"
LOG_EPS = 0.02  # log(share + eps): a component at 0 % stays finite
MIN_MIXTURES = 4  # leave-one-out over fewer says nothing
_RECIPE_NOISE_KEYS = ("name", "description", "family", "seed")


# ---------------------------------------------------------------------------------------------------------------
# The family's data
# ---------------------------------------------------------------------------------------------------------------


def _extends_name(extends: str | None) -> str | None:
    if not extends:
        return None
    return Path(extends).stem if extends.endswith((".yaml", ".yml")) else extends


def recipe_signature(recipe_yaml: str | None, stage: str | None) -> tuple[str, int]:
    """(group key, index of the stage) of a run's recipe: the same key means same recipe, base and budget."""
    data = yaml.safe_load(recipe_yaml or "") or {}
    for key in _RECIPE_NOISE_KEYS:
        data.pop(key, None)
    stages = list(data.get("stages") or [])
    names = [s.get("name") for s in stages]
    index = names.index(stage) if stage in names else len(stages) - 1
    kept = [dict(s) for s in stages[: index + 1]]
    if kept:
        kept[-1].pop("mixture", None)
    data["stages"] = kept
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{stage}:{digest}", index


@dataclass
class FamilyData:
    family: str
    group_key: str
    features: list[str]
    run_ids: list[str]
    mixture_ids: list[str]
    mixture_names: list[str]
    seeds: list[int | None]
    X: np.ndarray  # [runs, features]: component shares, rows sum to 1
    targets: list[str]  # metric keys (task/metric), then the axes
    categories: dict[str, str]
    Y: np.ndarray  # [runs, targets], NaN where a run lacks the metric
    H: np.ndarray  # [runs, targets]: 95 % CI half-widths
    recipe_yaml: str  # the latest run's: what `loop` runs proposals with
    stage: str
    stage_index: int
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    other_groups: dict[str, int] = field(default_factory=dict)

    def column(self, target: str) -> np.ndarray:
        return self.Y[:, self.targets.index(target)]

    def halfwidth(self, target: str) -> np.ndarray:
        return self.H[:, self.targets.index(target)]

    def by_mixture(self, target: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(mixture ids, shares, mean over seeds, CI half-width of that mean) for runs that have `target`."""
        y, h = self.column(target), self.halfwidth(target)
        ids, xs, ys, hs = [], [], [], []
        for mid in dict.fromkeys(self.mixture_ids):
            rows = [i for i, m in enumerate(self.mixture_ids) if m == mid and not np.isnan(y[i])]
            if not rows:
                continue
            ids.append(mid)
            xs.append(self.X[rows[0]])
            ys.append(float(np.mean(y[rows])))
            hs.append(float(np.sqrt(np.sum(h[rows] ** 2)) / len(rows)))
        return ids, np.array(xs).reshape(len(ids), len(self.features)), np.array(ys), np.array(hs)

    def name_of(self, mixture_id: str) -> str:
        return self.mixture_names[self.mixture_ids.index(mixture_id)]


def families(store: Store) -> dict[str, int]:
    """{family (base mixture) name: completed training runs}: what `--family` accepts."""
    counts: Counter[str] = Counter()
    for row in store.family_run_rows():
        manifest = json.loads(row["manifest"] or "{}")
        counts[row["built_name"]] += 1
        parent = _extends_name(manifest.get("extends"))
        if parent and parent != row["built_name"]:
            counts[parent] += 1
    return dict(counts)


def load_family(store: Store, family: str, *, group: str | None = None) -> FamilyData:
    rows = []
    for row in store.family_run_rows():
        manifest = json.loads(row["manifest"] or "{}")
        if row["built_name"] == family or _extends_name(manifest.get("extends")) == family:
            key, index = recipe_signature(row["recipe_yaml"], row["stage"])
            rows.append({**row, "group_key": key, "stage_index": index})
    if not rows:
        known = families(store)
        raise MixlabError(f"no completed training runs of mixture family {family!r} in {store.path}"
                          f"{did_you_mean(family, list(known))}; families: {sorted(known) or 'none'}")
    groups = Counter(r["group_key"] for r in rows)
    if group is None:
        group = groups.most_common(1)[0][0]
    elif group not in groups:
        raise MixlabError(f"family {family}: no group {group!r}; groups (recipe signature: runs): {dict(groups)}")
    rows = [r for r in rows if r["group_key"] == group]
    run_ids = [r["run_id"] for r in rows]

    shares: dict[str, dict[str, float]] = {}
    for s in store.mixture_shares(sorted({r["mixture_id"] for r in rows})):
        top = (s["group_path"] or "?").split("/")[0]
        shares.setdefault(s["mixture_id"], {}).setdefault(top, 0.0)
        shares[s["mixture_id"]][top] += float(s["share"] or 0.0)
    features = sorted({f for d in shares.values() for f in d})
    X = np.array([[shares.get(r["mixture_id"], {}).get(f, 0.0) for f in features] for r in rows])
    X = X / np.clip(X.sum(axis=1, keepdims=True), 1e-12, None)

    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for m in store.metrics_of_runs(run_ids):  # oldest first: later evaluations win
        if "/" in m["metric"] or m["mean"] is None:
            continue
        latest[(m["run_id"], m["task"], m["metric"])] = m
    categories = {f"{t}/{m}": c for (t, m), c in store.metric_categories(run_ids).items()
                  if "/" not in m and c in ("leaderboard", "usability")}
    metrics = sorted(k for k in categories if any(key[1:] == tuple(k.split("/", 1)) for key in latest))
    targets = metrics + list(AXES)
    Y = np.full((len(rows), len(targets)), np.nan)
    H = np.full_like(Y, np.nan)
    for i, run_id in enumerate(run_ids):
        for j, key in enumerate(metrics):
            task, metric = key.split("/", 1)
            m = latest.get((run_id, task, metric))
            if m is not None:
                Y[i, j] = m["mean"]
                lo, hi = m["ci_low"], m["ci_high"]
                H[i, j] = (hi - lo) / 2 if lo is not None and hi is not None else 0.0
        for axis, category in AXES.items():
            cols = [j for j, k in enumerate(metrics) if categories[k] == category]
            j = targets.index(axis)
            if cols and not np.isnan(Y[i, cols]).any():
                Y[i, j] = float(np.mean(Y[i, cols]))
                # independent errors: SE of a mean of k metrics (reads overlapping axis CIs as "not separated")
                H[i, j] = float(np.sqrt(np.sum(H[i, cols] ** 2)) / len(cols))
    latest_row = rows[-1]
    return FamilyData(
        family=family, group_key=group, features=features, run_ids=run_ids,
        mixture_ids=[r["mixture_id"] for r in rows], mixture_names=[r["mixture_name"] for r in rows],
        seeds=[r["seed"] for r in rows], X=X, targets=targets, categories={**categories, **AXES}, Y=Y, H=H,
        recipe_yaml=latest_row["recipe_yaml"], stage=latest_row["stage"], stage_index=latest_row["stage_index"],
        costs=store.run_costs(run_ids), other_groups={g: n for g, n in groups.items() if g != group},
    )


# ---------------------------------------------------------------------------------------------------------------
# Surrogates
# ---------------------------------------------------------------------------------------------------------------


def _design(model: str, X: np.ndarray) -> np.ndarray:
    return np.log(X + LOG_EPS) if model == "loglinear" else X


def _estimator(model: str):
    if model in ("linear", "loglinear"):
        return BayesianRidge(fit_intercept=True)
    if model == "gp":
        kernel = (ConstantKernel(1.0, (1e-3, 1e2)) * Matern(length_scale=0.5, length_scale_bounds=(0.05, 20.0), nu=2.5)
                  + WhiteKernel(0.1, (1e-5, 1e1)))
        return GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=1, random_state=0)
    raise MixlabError(f"unknown surrogate model {model!r}{did_you_mean(model, MODELS)}; models: {', '.join(MODELS)}")


class Surrogate:
    """One fitted model of one target: predict(X) -> (mean, sd), both of a new run's realised value."""

    def __init__(self, model: str, X: np.ndarray, y: np.ndarray):
        self.model, self.X, self.y = model, np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        self.estimator = _estimator(model)
        # One BLAS thread: matrices of a few dozen rows gain nothing from more, and on a busy machine the threads
        # of every fit fight each other (a GP fit measured 5x slower).
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.estimator.fit(_design(model, self.X), self.y)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with threadpool_limits(1):
            mean, sd = self.estimator.predict(_design(self.model, np.asarray(X, dtype=float)), return_std=True)
        return np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)

    def hyper(self) -> dict[str, Any]:
        e = self.estimator
        if self.model == "gp":
            return {"kernel": str(e.kernel_)}
        return {"alpha": float(e.alpha_), "lambda": float(e.lambda_), "coef": e.coef_.tolist(),
                "intercept": float(e.intercept_)}


@dataclass
class TargetFit:
    target: str
    model: str
    n_runs: int
    n_mixtures: int
    loo_rmse: float
    loo_mae: float
    spearman: tuple[float, float, float]
    loo_pred: np.ndarray  # per mixture
    realised: np.ndarray  # per mixture
    surrogate: Surrogate
    mixture_ids: list[str] = field(default_factory=list)
    baseline_rmse: float = math.nan  # LOO RMSE of predicting the other mixtures' mean: the no-signal reference
    selected: bool = False
    effects: dict[str, float] = field(default_factory=dict)

    @property
    def informative(self) -> bool:
        """Beats predicting the other mixtures' mean and ranks held-out mixtures better than chance (Spearman's
        95 % lower bound above 0). On pure noise LOO rank correlations go negative and RMSEs tie the mean's."""
        return bool(self.loo_rmse < self.baseline_rmse and self.spearman[1] > 0)


def loo_fit(model: str, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out predictions (mean, sd) over rows of per-mixture data."""
    n = len(y)
    mean, sd = np.empty(n), np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        m, s = Surrogate(model, X[keep], y[keep]).predict(X[i : i + 1])
        mean[i], sd[i] = m[0], s[0]
    return mean, sd


def effects(surrogate: Surrogate, features: list[str], at: np.ndarray, step: float = 0.10) -> dict[str, float]:
    """Predicted change of the target when one component gains `step` of the share (10 points), the others giving
    it up in proportion, at mixture `at` (the family's mean mixture)."""
    base, _ = surrogate.predict(at[None, :])
    out = {}
    for j, name in enumerate(features):
        if at[j] + step > 1:
            continue
        moved = at * (1 - at[j] - step) / max(1e-12, 1 - at[j])
        moved[j] = at[j] + step
        pred, _ = surrogate.predict(moved[None, :])
        out[name] = float(pred[0] - base[0])
    return out


def fit_targets(data: FamilyData, models: Sequence[str] = MODELS, *, progress: bool = False) -> list[TargetFit]:
    """Every model on every target with enough mixtures, scored by leave-one-mixture-out."""
    fits: list[TargetFit] = []
    for target in track(data.targets, description="fitting surrogates", disable=not progress, transient=True):
        ids, X, y, _ = data.by_mixture(target)
        if len(ids) < MIN_MIXTURES:
            continue
        n_runs = int(np.sum(~np.isnan(data.column(target))))
        others_mean = (y.sum() - y) / (len(y) - 1)
        baseline = float(np.sqrt(np.mean((others_mean - y) ** 2)))
        per_target = []
        for model in models:
            pred, _ = loo_fit(model, X, y)
            err = pred - y
            per_target.append(TargetFit(
                target=target, model=model, n_runs=n_runs, n_mixtures=len(ids),
                loo_rmse=float(np.sqrt(np.mean(err ** 2))), loo_mae=float(np.mean(np.abs(err))),
                spearman=spearman_ci(pred, y), loo_pred=pred, realised=y, surrogate=Surrogate(model, X, y),
                mixture_ids=ids, baseline_rmse=baseline,
            ))
        best = min(per_target, key=lambda f: (f.loo_rmse, models.index(f.model)))
        best.selected = True
        best.effects = effects(best.surrogate, data.features, X.mean(axis=0))
        fits.extend(per_target)
    if not any(f.target in AXES for f in fits):
        n = len(data.by_mixture(X_AXIS)[0])
        raise MixlabError(f"family {data.family}: {n} mixture(s) have both leaderboard and usability results; a fit "
                          f"needs at least {MIN_MIXTURES} (run a sweep over the family first)")
    return fits


def new_id(prefix: str, family: str) -> str:
    return f"{prefix}-{family}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def fit_family(store: Store, family: str, *, models: Sequence[str] = MODELS, group: str | None = None,
               progress: bool = False) -> tuple[str, FamilyData, list[TargetFit]]:
    """Fit, score and store surrogates for a family; returns (fit id, data, fits)."""
    for m in models:
        _estimator(m)  # unknown names fail before anything is fitted
    data = load_family(store, family, group=group)
    fits = fit_targets(data, list(models), progress=progress)
    fit_id = new_id("fit", family)
    store.record_fits([FitRecord(
        fit_id=fit_id, family=family, group_key=data.group_key, model=f.model, metric=f.target,
        category=data.categories.get(f.target), features=data.features, n_runs=f.n_runs, n_mixtures=f.n_mixtures,
        loo_rmse=f.loo_rmse, loo_mae=f.loo_mae, spearman=_num(f.spearman[0]), spearman_low=_num(f.spearman[1]),
        spearman_high=_num(f.spearman[2]), selected=f.selected, effects=f.effects or None,
        params={"model": f.model, "design": "log(share + %g)" % LOG_EPS if f.model == "loglinear" else "share",
                "X": f.surrogate.X.tolist(), "y": f.surrogate.y.tolist(), "loo_pred": f.loo_pred.tolist(),
                "mixture_ids": f.mixture_ids, "mixture_names": [data.name_of(m) for m in f.mixture_ids],
                "loo_rmse_mean_only": f.baseline_rmse, "informative": f.informative,
                **f.surrogate.hyper()},
        run_ids=data.run_ids,
    ) for f in fits])
    return fit_id, data, fits


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def load_fit(store: Store, family: str, fit_id: str | None = None) -> tuple[str, dict[str, Surrogate], list[str],
                                                                              list[dict[str, Any]]]:
    """(fit id, {target: selected surrogate rebuilt from its stored data}, features, rows) of a stored fit."""
    rows = store.fits(fit_id, family=family)
    if not rows:
        raise MixlabError(f"no stored fit {fit_id!r}" if fit_id else
                          f"family {family} has no stored fit: run `mixlab optimise fit --family {family}` first")
    models = {}
    for row in rows:
        if row["selected"]:
            p = json.loads(row["params"])
            models[row["metric"]] = Surrogate(p["model"], np.array(p["X"]), np.array(p["y"]))
    return rows[0]["fit_id"], models, json.loads(rows[0]["features"]), rows


# ---------------------------------------------------------------------------------------------------------------
# Pareto geometry (both axes maximised)
# ---------------------------------------------------------------------------------------------------------------


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by `points` [n, 2] above the reference point `ref` (both axes maximised)."""
    p = points[(points[:, 0] > ref[0]) & (points[:, 1] > ref[1])]
    if len(p) == 0:
        return 0.0
    p = p[np.argsort(-p[:, 0], kind="stable")]
    area, best_y = 0.0, ref[1]
    for x, y in p:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return float(area)


def dominated_by(point: Sequence[float], others: np.ndarray) -> np.ndarray:
    """Mask of rows of `others` [n, 2] that dominate `point`: at least as good on both axes, better on one."""
    o = np.asarray(others, dtype=float).reshape(-1, 2)
    ge = (o[:, 0] >= point[0]) & (o[:, 1] >= point[1])
    gt = (o[:, 0] > point[0]) | (o[:, 1] > point[1])
    return ge & gt


def front_mask(points: np.ndarray) -> np.ndarray:
    return np.array([not dominated_by(p, points).any() for p in points], dtype=bool)


# ---------------------------------------------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------------------------------------------


def parse_mins(items: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """`METRIC=VALUE` floors; METRIC is a task/metric key, a task with one fitted metric, or an axis
    (`leaderboard`, `usability`)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            floor = float(value)
        except ValueError:
            floor = None
        if not sep or floor is None or not name.strip():
            raise MixlabError(f"--min {item!r}: expected METRIC=VALUE, e.g. --min gsm8k=0.6")
        name = name.strip()
        matches = [t for t in targets if t == name or t == f"axis:{name}" or t.split("/", 1)[0] == name]
        if len(matches) != 1:
            why = "matches several metrics: " + ", ".join(matches) if matches else "is not a fitted metric"
            raise MixlabError(f"--min {item!r}: {name!r} {why}{did_you_mean(name, list(targets))}; fitted: "
                              f"{', '.join(targets)}")
        out[matches[0]] = floor
    return out


def _phi(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


@dataclass
class Candidate:
    weights: np.ndarray
    predicted: dict[str, tuple[float, float]]
    score: float


def choose(models: dict[str, Surrogate], features: list[str], realised: np.ndarray, tried: np.ndarray, n: int, *,
           mins: dict[str, float] | None = None, n_candidates: int = 4000, beta: float = 1.0,
           confidence: float = 0.5, min_distance: float = 0.1, seed: int = 0) -> tuple[list[Candidate], str]:
    """K candidates and the objective used. `realised`: [m, 2] realised (leaderboard, usability) per mixture;
    `tried`: [m', d] shares already run."""
    for axis in (X_AXIS, Y_AXIS):
        if axis not in models:
            raise MixlabError(f"the fit has no model of {axis} (too few mixtures with both axes)")
    rng = np.random.default_rng(seed)
    C = rng.dirichlet(np.ones(len(features)), size=n_candidates)
    pred = {t: s.predict(C) for t, s in models.items()}
    mx, sx = pred[X_AXIS]
    my, sy = pred[Y_AXIS]
    ok = np.ones(len(C), dtype=bool)
    for target, floor in (mins or {}).items():
        if target not in pred:
            raise MixlabError(f"--min {target}: the fit has no model of it")
        m, s = pred[target]
        ok &= _phi((m - floor) / np.maximum(s, 1e-9)) >= confidence
    if not ok.any():
        best = {t: float(pred[t][0].max()) for t in (mins or {})}
        raise MixlabError(f"no candidate is predicted to meet {mins} with probability >= {confidence}; best "
                          f"predicted means: {best}")
    opt = np.stack([mx + beta * sx, my + beta * sy], axis=1)
    chosen: list[int] = []
    far = np.ones(len(C), dtype=bool)
    if len(tried):
        far &= np.abs(C[:, None, :] - tried[None, :, :]).sum(-1).min(1) >= min_distance
    objective = (f"max usability (mean + {beta:g} sd) s.t. " + ", ".join(f"{k} >= {v:g}" for k, v in mins.items())
                 + f" (p >= {confidence:g})") if mins else f"hypervolume improvement of mean + {beta:g} sd"
    all_pts = np.vstack([realised, np.stack([mx, my], 1)])
    ref = all_pts.min(axis=0) - 0.05 * (np.ptp(all_pts, axis=0) + 1e-3)
    scores = np.zeros(len(C))
    for _ in range(n):
        pool = ok & far
        if chosen:
            picked = C[chosen]
            pool &= np.abs(C[:, None, :] - picked[None, :, :]).sum(-1).min(1) >= min_distance
        idx = np.flatnonzero(pool)
        if idx.size == 0:
            break
        if mins:
            score = opt[idx, 1]
        else:
            current = np.vstack([realised, opt[chosen]]) if chosen else realised
            base = hypervolume(current, ref)
            score = np.array([hypervolume(np.vstack([current, opt[i]]), ref) - base for i in idx])
            if not np.any(score > 0):  # nothing beats the front even optimistically: the closest to it
                score = opt[idx].sum(axis=1)
        best = int(idx[int(np.argmax(score))])
        scores[best] = float(np.max(score))
        chosen.append(best)
    return [Candidate(C[i], {t: (float(p[0][i]), float(p[1][i])) for t, p in pred.items()}, scores[i])
            for i in chosen], objective


def realised_points(data: FamilyData) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(mixture ids, shares [m, d], (leaderboard, usability) means [m, 2], CI half-widths [m, 2]) per mixture with
    both axes."""
    ids_x, X, x, hx = data.by_mixture(X_AXIS)
    ids_y, _, y, hy = data.by_mixture(Y_AXIS)
    keep = [i for i, m in enumerate(ids_x) if m in ids_y]
    yy = {m: (y[j], hy[j]) for j, m in enumerate(ids_y)}
    ids = [ids_x[i] for i in keep]
    pts = np.array([[x[i], yy[ids_x[i]][0]] for i in keep]).reshape(-1, 2)
    half = np.array([[hx[i], yy[ids_x[i]][1]] for i in keep]).reshape(-1, 2)
    return ids, X[keep], pts, half


def mixture_cost(data: FamilyData, mixture_id: str) -> tuple[float | None, str | None]:
    """Mean device-seconds (train + eval) of a mixture's runs, and their device kind."""
    vals = [data.costs[r] for r, m in zip(data.run_ids, data.mixture_ids) if m == mixture_id and r in data.costs]
    secs = [v["device_s"] for v in vals if v.get("device_s") is not None]
    return (float(np.mean(secs)) if secs else None), (vals[0].get("device_kind") if vals else None)


def expected_cost(data: FamilyData) -> tuple[float | None, str | None]:
    """What one more run of the family costs: the median device-seconds of its runs (same recipe and budget)."""
    secs = [c["device_s"] for c in data.costs.values() if c.get("device_s") is not None]
    kinds = Counter(c.get("device_kind") for c in data.costs.values() if c.get("device_kind"))
    return (float(np.median(secs)) if secs else None), (kinds.most_common(1)[0][0] if kinds else None)


def propose(store: Store, family: str, n: int, *, mins: Sequence[str] = (), fit_id: str | None = None,
            out_dir: Path | None = None, loop_id: str | None = None, round_no: int | None = None,
            n_candidates: int = 4000, beta: float = 1.0, confidence: float = 0.5, min_distance: float = 0.1,
            seed: int = 0, group: str | None = None, check_build: bool = True,
            max_attempts: int = 8) -> dict[str, Any]:
    """Choose `n` mixtures, write them as YAML extending the family base, record them with their predictions.

    With `check_build`, every pick is built (`mixlab mix build`, cached for the run that follows): a mixture its
    sources cannot supply (e.g. more distinct procedural problems than a level has) is dropped, its neighbourhood
    (L1 < min_distance) excluded, and the choice made again."""
    if n < 1:
        raise MixlabError("--n must be at least 1")
    fit_id, models, features, fit_rows = load_fit(store, family, fit_id)
    data = load_family(store, family, group=group or fit_rows[0]["group_key"])
    if data.features != features:
        raise MixlabError(f"fit {fit_id} has features {features}, the family now has {data.features}: refit")
    floors = parse_mins(mins, list(models))
    _, tried, realised, _ = realised_points(data)
    tag = (loop_id or fit_id).rsplit("-", 1)[-1] + (f"r{round_no}" if round_no is not None else
                                                   f"{secrets.token_hex(2)}")
    out_dir = Path(out_dir) if out_dir else runs_dir() / "optimise" / family / tag
    avoid = np.vstack([tried, data.X])
    unbuildable: list[dict[str, Any]] = []
    for _ in range(max_attempts):
        picks, objective = choose(models, features, realised, avoid, n, mins=floors, n_candidates=n_candidates,
                                  beta=beta, confidence=confidence, min_distance=min_distance, seed=seed)
        if not picks:
            raise MixlabError(f"no candidate at L1 distance >= {min_distance} from the {len(tried)} tried and "
                              f"{len(unbuildable)} unbuildable mixtures")
        paths, failed = [], []
        for i, c in enumerate(picks):
            weights = {f: round(float(w), 6) for f, w in zip(features, c.weights)}
            path = write_variant(family, f"{family}-opt-{tag}-{i}", weights, out_dir)
            paths.append((path, weights))
            if check_build:
                try:
                    build(str(path), store=store)
                except MixlabError as exc:
                    failed.append(c.weights)
                    unbuildable.append({"weights": weights, "error": str(exc)[:300]})
        if not failed:
            keep = {p for p, _ in paths}
            for stale in out_dir.glob(f"{family}-opt-{tag}-*.yaml"):  # picks of an earlier attempt
                if stale not in keep:
                    stale.unlink()
            break
        avoid = np.vstack([avoid, np.array(failed)])
    else:
        raise MixlabError(f"no buildable proposals after {max_attempts} attempts; last: {unbuildable[-1]}")
    est_s, kind = expected_cost(data)
    records = [ProposalRecord(
        proposal_id=path.stem, family=family, fit_id=fit_id, mixture_name=path.stem, mixture_path=str(path),
        weights=weights, predicted={t: {"mean": m, "sd": s} for t, (m, s) in c.predicted.items()},
        objective=objective, est_device_s=est_s, loop_id=loop_id, round=round_no,
    ) for c, (path, weights) in zip(picks, paths)]
    store.record_proposals(records)
    return {"fit_id": fit_id, "objective": objective, "proposals": records, "out_dir": str(out_dir),
            "est_device_s": est_s, "device_kind": kind, "features": features, "unbuildable": unbuildable}


# ---------------------------------------------------------------------------------------------------------------
# The loop: propose -> sweep -> refit
# ---------------------------------------------------------------------------------------------------------------


def member_recipe(data: FamilyData, mixture_path: str, name: str, seed: int) -> dict[str, Any]:
    """The family's recipe (its latest run's), up to the varied stage, with that stage's mixture replaced."""
    recipe = yaml.safe_load(data.recipe_yaml)
    recipe["stages"] = recipe["stages"][: data.stage_index + 1]
    recipe["stages"][-1]["mixture"] = mixture_path
    recipe["name"], recipe["seed"], recipe["family"] = name, seed, name
    return recipe


def judge_points(new: np.ndarray, new_half: np.ndarray, ref: np.ndarray, ref_half: np.ndarray,
                 ref_names: Sequence[str]) -> list[dict[str, Any]]:
    """For each new (leaderboard, usability) point: which reference points dominate it by their means, and
    which beat it beyond the 95 % CIs on both axes (`evals.stats.clearly_better`)."""
    out = []
    for p, h in zip(new, new_half):
        mask = dominated_by(p, ref)
        clear = [ref_names[j] for j in range(len(ref))
                 if clearly_better(ref[j, 0] - ref_half[j, 0], p[0] + h[0])
                 and clearly_better(ref[j, 1] - ref_half[j, 1], p[1] + h[1])]
        out.append({"dominated": bool(mask.any()), "dominated_by": [ref_names[j] for j in np.flatnonzero(mask)],
                    "clearly_dominated_by": clear})
    return out


def run_loop(store: Store, family: str, rounds: int, n: int, *, mins: Sequence[str] = (), parallel: int = 1,
             seed: int | None = None, beta: float = 1.0, progress: bool = True, group: str | None = None,
             models: Sequence[str] = MODELS) -> dict[str, Any]:
    """`rounds` x (propose `n` -> run them with the family's recipe -> refit); every round recorded."""
    if rounds < 1:
        raise MixlabError("--rounds must be at least 1")
    loop_id = new_id("loop", family)
    fit_id, data, _ = fit_family(store, family, models=models, group=group)
    init_ids, _, init_pts, init_half = realised_points(data)
    init_names = [data.name_of(m) for m in init_ids]
    seed = seed if seed is not None else Counter(data.seeds).most_common(1)[0][0] or 0
    out_root = runs_dir() / "optimise" / family / loop_id
    summaries = []
    for r in range(1, rounds + 1):
        proposed = propose(store, family, n, mins=mins, fit_id=fit_id, out_dir=out_root / f"round-{r}",
                           loop_id=loop_id, round_no=r, beta=beta, seed=r, group=data.group_key)
        sweep_id = new_sweep_id(f"{loop_id}-r{r}")
        (runs_dir() / "sweeps" / sweep_id).mkdir(parents=True, exist_ok=True)  # member logs go there
        members = []
        for p in proposed["proposals"]:
            recipe = member_recipe(data, p.mixture_path, p.mixture_name, seed)
            parse_recipe(recipe, where=f"{loop_id} round {r}: {p.mixture_name}")
            path = out_root / f"round-{r}" / f"{p.mixture_name}.recipe.yaml"
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            members.append((p.mixture_name, path))
            store.update_proposal(p.proposal_id, status="running")
        try:
            outcome = run_members(f"{loop_id}-r{r}", sweep_id, members, parallel=parallel, store=store,
                                  progress=progress, recipe_ref=f"optimise:{family}")
        except BaseException:  # a preflight failure or Ctrl-C: no proposal of this round stays "running"
            for p in proposed["proposals"]:
                store.update_proposal(p.proposal_id, status="failed")
            raise
        run_of = {m: f"{inv}-{data.stage}" for m, inv in outcome["invocations"].items()}
        for p in proposed["proposals"]:
            failed = p.mixture_name in outcome["failures"]
            store.update_proposal(p.proposal_id, status="failed" if failed else "completed",
                                  run_id=run_of.get(p.mixture_name))
        fit_id, data, fits = fit_family(store, family, models=models, group=data.group_key)  # the refit
        ids, _, pts, half = realised_points(data)
        new = [(p, run_of.get(p.mixture_name)) for p in proposed["proposals"]]
        rows = []
        for p, run_id in new:
            if run_id not in data.run_ids:
                rows.append({"proposal": p.proposal_id, "run_id": run_id, "status": "failed"})
                continue
            i = ids.index(data.mixture_ids[data.run_ids.index(run_id)])
            verdict = judge_points(pts[i : i + 1], half[i : i + 1], init_pts, init_half, init_names)[0]
            rows.append({"proposal": p.proposal_id, "run_id": run_id, "status": "completed",
                         "predicted": {a: p.predicted[a] for a in (X_AXIS, Y_AXIS)},
                         "realised": {X_AXIS: float(pts[i, 0]), Y_AXIS: float(pts[i, 1])},
                         "ci_half": {X_AXIS: float(half[i, 0]), Y_AXIS: float(half[i, 1])},
                         "cost_device_s": mixture_cost(data, ids[i])[0], **verdict})
        axis_fit = {f.target: {"model": f.model, "loo_rmse": f.loo_rmse, "spearman": list(f.spearman)}
                    for f in fits if f.selected and f.target in AXES}
        summary = {"proposals": rows, "refit": axis_fit, "sweep_wall_s": outcome["wall_s"],
                   "failures": outcome["failures"], "objective": proposed["objective"],
                   "initial_front": [init_names[j] for j in np.flatnonzero(front_mask(init_pts))]}
        store.record_round(RoundRecord(loop_id=loop_id, round=r, family=family, fit_id=fit_id, sweep_id=sweep_id,
                                       proposal_ids=[p.proposal_id for p in proposed["proposals"]], summary=summary))
        summaries.append({"round": r, "sweep_id": sweep_id, "fit_id": fit_id, **summary})
    return {"loop_id": loop_id, "family": family, "rounds": summaries, "final_fit_id": fit_id,
            "initial": {"mixtures": init_names, "points": init_pts.tolist(), "ci_half": init_half.tolist()}}
