"""Metric catalogue, normalised aggregates with CIs, and the per-run trade-off table.

An aggregate ("leaderboard score", "usability score") is the mean of a chosen set of metrics, each first mapped to
[0, 1] with higher = better: rates stay as they are, 1–10 judge scores become (x − 1) / 9, percentages x / 100, and
lower-is-better metrics (refusal, repetition, error rates) are flipped. Its 95 % CI combines the metrics' CIs as
independent errors (SE = √Σ SEᵢ² / k, SEᵢ from each CI's half-width), which understates the width when the errors of
one model's metrics are correlated: read overlapping aggregate CIs as "not separated".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from mixlab.dashboard import pareto
from mixlab.evals import stats

Z95 = 1.959964

_LOWER_BETTER = re.compile(r"refus|repetit|broken|error|invalid|timeout|loss|perplex|toxic|crash|fail|empty", re.I)
# No better side (lengths, densities) or a property of the judge rather than the model.
_NEUTRAL = re.compile(r"length|tokens|density|latency|words|chars|^n_|count|duration|seconds|judge_|unparseable",
                      re.I)
# Which metric stands for a task in a default aggregate, best first (names as `mixlab.evals` writes them).
_PRIMARY = ["pass@1", "exact_match_strict", "exact_match", "accuracy", "prompt_level_strict_acc", "prompt_strict",
            "format_satisfied", "constraint_satisfied", "lc_win_rate", "score", "win_rate"]
STYLE_PREFIX = "style/"  # per-answer style statistics the eval runner adds to every task


def metric_key(task: str, metric: str) -> str:
    return f"{task}/{metric}"


def direction(metric: str) -> str:
    """'higher', 'lower' or 'neutral' (no better side, e.g. mean length): from the metric's name."""
    if _NEUTRAL.search(metric):
        return "neutral"
    if _LOWER_BETTER.search(metric):
        return "lower"
    return "higher"


def catalog(metrics_long: pd.DataFrame) -> pd.DataFrame:
    """One row per metric key: task, metric, category, direction, the range used to normalise it, and coverage."""
    cols = ["key", "task", "metric", "category", "direction", "scale_lo", "scale_hi", "n_runs"]
    if metrics_long.empty:
        return pd.DataFrame(columns=cols)
    g = metrics_long.groupby(["task", "metric"], sort=True)
    cat = g.agg(vmin=("mean", "min"), vmax=("mean", "max"), n_runs=("run_id", "nunique")).reset_index()
    cat = cat.merge(_main_categories(metrics_long), on=["task", "metric"], how="left")
    cat["key"] = [metric_key(t, m) for t, m in zip(cat["task"], cat["metric"])]
    cat["direction"] = cat["metric"].map(direction)
    lo, hi = zip(*(_scale(a, b, m) for a, b, m in zip(cat["vmin"], cat["vmax"], cat["metric"])))
    cat["scale_lo"], cat["scale_hi"] = lo, hi
    return cat[cols].reset_index(drop=True)


def _main_categories(metrics_long: pd.DataFrame) -> pd.DataFrame:
    """Per (task, metric), the category most rows give it, preferring a real one (leaderboard, usability) over
    'other'; ties go to the alphabetically first. One vectorised count (a per-group function cost 0.3 s cold)."""
    df = metrics_long[["task", "metric"]].assign(category=metrics_long["category"].fillna("other"))
    counts = df.value_counts(["task", "metric", "category"]).rename("count").reset_index()
    counts["real"] = counts["category"] != "other"
    counts = counts.sort_values(["task", "metric", "real", "count", "category"],
                                ascending=[True, True, False, False, True])
    return counts.drop_duplicates(["task", "metric"])[["task", "metric", "category"]]


def _scale(vmin: float, vmax: float, metric: str) -> tuple[float, float]:
    if vmin >= 0 and vmax <= 1:
        return 0.0, 1.0
    if vmin >= 1 and vmax <= 10:
        return 1.0, 10.0  # judge scores on a 1–10 scale
    if vmin >= 0 and vmax <= 10:
        return 0.0, 10.0
    if vmin >= 0 and vmax <= 100:
        return 0.0, 100.0
    return float(vmin), float(vmax) if vmax > vmin else float(vmin) + 1.0  # unbounded: relative to the runs shown


def default_metrics(cat: pd.DataFrame, category: str) -> list[str]:
    """One primary, directional metric per task whose home category is `category` (e.g. GSM8K strict, HumanEval
    pass@1, IFEval prompt-level strict, MT-Bench score). A task's home category is that of its own metrics; the
    style/* statistics the runner attaches to every task are left out (add them by hand if wanted)."""
    own = cat[~cat["metric"].str.startswith(STYLE_PREFIX)]
    home = own.groupby("task")["category"].agg(lambda c: c.value_counts().index[0])
    rows = own[(own["task"].map(home) == category) & (own["direction"] != "neutral")]
    keys = []
    for task, group in rows.groupby("task", sort=True):
        names = list(group["metric"])
        ranked = sorted(names, key=lambda m: (_PRIMARY.index(m) if m in _PRIMARY else len(_PRIMARY), m))
        keys.append(metric_key(task, ranked[0]))
    return keys


def wide(metrics_long: pd.DataFrame) -> pd.DataFrame:
    """Runs × (key, key__lo, key__hi, key__n) table (one row per run; `latest_metrics` rows are unique per key)."""
    if metrics_long.empty:
        return pd.DataFrame(index=pd.Index([], name="run_id"))
    df = metrics_long.assign(key=metrics_long["task"] + "/" + metrics_long["metric"])
    df = df.drop_duplicates(["run_id", "key"], keep="last")
    flat = df.set_index(["run_id", "key"])[["mean", "ci_low", "ci_high", "n"]].astype(float).unstack("key")
    parts = [flat[col].add_suffix(sfx) for col, sfx in (("mean", ""), ("ci_low", "__lo"), ("ci_high", "__hi"),
                                                         ("n", "__n"))]
    out = pd.concat(parts, axis=1)
    out.columns.name = None
    return out


@dataclass
class Axis:
    """A plotted quantity: one metric (raw units) or an aggregate of several (normalised to [0, 1])."""

    label: str
    metrics: list[str] = field(default_factory=list)
    aggregate: bool = False


def _normalised(w: pd.DataFrame, info: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key, lo_s, hi_s = info["key"], info["scale_lo"], info["scale_hi"]
    span = hi_s - lo_s
    m = (w[key].to_numpy(float) - lo_s) / span
    lo = (w.get(key + "__lo", w[key]).to_numpy(float) - lo_s) / span
    hi = (w.get(key + "__hi", w[key]).to_numpy(float) - lo_s) / span
    if info["direction"] == "lower":
        m, lo, hi = 1 - m, 1 - hi, 1 - lo
    return m, np.fmin(lo, m), np.fmax(hi, m)


def axis_values(w: pd.DataFrame, cat: pd.DataFrame, axis: Axis) -> pd.DataFrame:
    """value, lo, hi, coverage (metrics present / metrics asked) per run, and whether larger is better."""
    index = w.index
    keys = [k for k in axis.metrics if k in set(cat["key"]) and k in w.columns]
    if not keys:
        nan = np.full(len(index), np.nan)
        return pd.DataFrame({"value": nan, "lo": nan, "hi": nan, "coverage": 0.0}, index=index)
    info = cat.set_index("key", drop=False)
    if not axis.aggregate:
        k = keys[0]
        v = w[k].to_numpy(float)
        lo = w.get(k + "__lo", w[k]).to_numpy(float)
        hi = w.get(k + "__hi", w[k]).to_numpy(float)
        return pd.DataFrame({"value": v, "lo": np.fmin(lo, v), "hi": np.fmax(hi, v),
                             "coverage": (~np.isnan(v)).astype(float)}, index=index)
    means, ses = [], []
    for k in keys:
        m, lo, hi = _normalised(w, info.loc[k])
        means.append(m)
        ses.append((hi - lo) / (2 * Z95))
    means_a, ses_a = np.vstack(means), np.vstack(ses)
    present = ~np.isnan(means_a)
    k_present = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.nansum(means_a, axis=0) / k_present
        se = np.sqrt(np.nansum(np.where(present, ses_a, 0.0) ** 2, axis=0)) / k_present
    value = np.where(k_present > 0, value, np.nan)
    # Every normalised metric lies in [0, 1], so their mean does too: clip the normal-approximation interval.
    lo, hi = np.clip(value - Z95 * se, 0.0, 1.0), np.clip(value + Z95 * se, 0.0, 1.0)
    return pd.DataFrame({"value": value, "lo": np.fmin(lo, value), "hi": np.fmax(hi, value),
                         "coverage": k_present / len(axis.metrics)}, index=index)


def axis_maximize(cat: pd.DataFrame, axis: Axis) -> bool:
    if axis.aggregate or not axis.metrics:
        return True
    row = cat.loc[cat["key"] == axis.metrics[0]]
    return row.empty or row["direction"].iloc[0] != "lower"


def axis_table(metrics_long: pd.DataFrame, x: Axis, y: Axis, *, cat: pd.DataFrame | None = None,
               w: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per evaluated run: x and y values with CIs and coverage (no filtering, no Pareto yet). `cat` and `w`
    (the `catalog` and `wide` of `metrics_long`) may be passed in when already computed."""
    cat = catalog(metrics_long) if cat is None else cat
    w = wide(metrics_long) if w is None else w
    xv, yv = axis_values(w, cat, x), axis_values(w, cat, y)
    return pd.DataFrame({
        "run_id": w.index, "x": xv["value"].to_numpy(), "x_lo": xv["lo"].to_numpy(), "x_hi": xv["hi"].to_numpy(),
        "x_coverage": xv["coverage"].to_numpy(), "y": yv["value"].to_numpy(), "y_lo": yv["lo"].to_numpy(),
        "y_hi": yv["hi"].to_numpy(), "y_coverage": yv["coverage"].to_numpy(),
    })


def pareto_points(table: pd.DataFrame, runs: pd.DataFrame, maximize: tuple[bool, bool] = (True, True),
                  *, require_full_coverage: bool = True) -> pd.DataFrame:
    """Join an `axis_table` to the runs that pass the filters and classify each by Pareto tier among them.

    Runs without a value on either axis are dropped; with `require_full_coverage`, so are runs whose aggregate
    misses one of its metrics (an average over fewer metrics is not comparable)."""
    pts = table.merge(runs, on="run_id", how="inner")
    keep = pts["x"].notna() & pts["y"].notna()
    if require_full_coverage:
        keep &= (pts["x_coverage"] >= 1.0) & (pts["y_coverage"] >= 1.0)
    pts = pts[keep].reset_index(drop=True)
    pts["tier"] = pareto.tiers(pts["x"], pts["x_lo"], pts["x_hi"], pts["y"], pts["y_lo"], pts["y_hi"], maximize)
    pts["on_front"] = pts["tier"] == "front"
    return pts


def tradeoff_points(runs: pd.DataFrame, metrics_long: pd.DataFrame, x: Axis, y: Axis,
                    *, require_full_coverage: bool = True) -> pd.DataFrame:
    """Per run: x, y with CIs, Pareto tier, and run metadata — the trade-off chart's data."""
    cat = catalog(metrics_long)
    maximize = (axis_maximize(cat, x), axis_maximize(cat, y))
    return pareto_points(axis_table(metrics_long, x, y), runs, maximize, require_full_coverage=require_full_coverage)


SEED_GROUP = ["mixture_name", "stage", "rung", "base_model"]


def collapse_seeds(points: pd.DataFrame, maximize: tuple[bool, bool] = (True, True)) -> pd.DataFrame:
    """One point per mixture × stage × rung × base model: the mean over its seeds, re-tiered.

    With k ≥ 2 seeds the CI is `stats.mean_over_seeds`: the seeds share their eval items, so the variance is the
    mean within-seed variance (from each run's CI) plus the between-seed variance of the mean, with a t(k−1)
    quantile; a single seed keeps its own CI. `run_id` is the group's first run, so clicking still opens a real run;
    `n_seeds` says how many were averaged."""
    if points.empty:
        return points.assign(n_seeds=pd.Series(dtype=int))
    rows = []
    for _, group in points.groupby(SEED_GROUP, dropna=False, sort=False):
        row = group.iloc[0].copy()
        k = len(group)
        row["n_seeds"] = k
        for ax in ("x", "y"):
            if k >= 2:
                row[ax], row[ax + "_lo"], row[ax + "_hi"] = stats.mean_over_seeds(
                    group[ax].to_numpy(float), group[ax + "_lo"].to_numpy(float), group[ax + "_hi"].to_numpy(float))
        if k >= 2:
            row["label"] = f"{row['mixture_name']} {row['stage']} {row['rung']} (mean of {k} seeds)"
        rows.append(row)
    out = pd.DataFrame(rows).reset_index(drop=True)
    out["tier"] = pareto.tiers(out["x"], out["x_lo"], out["x_hi"], out["y"], out["y_lo"], out["y_hi"], maximize)
    out["on_front"] = out["tier"] == "front"
    return out


def front_line(points: pd.DataFrame, maximize: tuple[bool, bool] = (True, True)) -> pd.DataFrame:
    """The front's points in drawing order (x ascending), for the staircase line."""
    mask = points["on_front"].to_numpy(bool) if "on_front" in points else pareto.pareto_mask(points["x"], points["y"], maximize)
    order = pareto.front_order(points["x"], mask)
    return points.iloc[order][["x", "y", "run_id"]].reset_index(drop=True)


def leaderboard_table(runs: pd.DataFrame, w: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs × selected metrics from a `wide` table: one mean column and one ± half-width column per metric."""
    out = runs.set_index("run_id")
    out = out[out.index.isin(w.index)].copy()
    for k in keys:
        if k not in w.columns:
            continue
        mean = w[k].reindex(out.index)
        out[k] = mean
        out[k + " ±"] = ((w[k + "__hi"] - w[k + "__lo"]) / 2).reindex(out.index)
    return out.reset_index()


def paired_comparison(pairs: pd.DataFrame, alpha: float = 0.05) -> stats.Comparison | None:
    """A − B over the items both runs scored (`queries.paired_samples`): `stats.compare`, the test `mixlab compare`
    prints for the task's primary metric (McNemar exact + Newcombe for 0/1 scores, a paired bootstrap otherwise)."""
    if pairs.empty:
        return None
    both = pairs.dropna(subset=["score_a", "score_b"])
    if both.empty:
        return None
    return stats.compare(both["score_a"].to_numpy(float), both["score_b"].to_numpy(float), alpha=alpha)


def paired_beats(points: pd.DataFrame, x: Axis, y: Axis, maximize: tuple[bool, bool],
                 load_items: Callable[[list[str], str, str], pd.DataFrame], alpha: float = 0.05):
    """For two single-metric axes: `beats(j, i)` = run j is better than run i on both axes by `mixlab compare`'s
    test (`stats.compare` over the items both scored: significant at `alpha`, in the better direction); None when a
    pair shares no per-item scores. None (no callable) for aggregate axes, which have no items to pair.
    `load_items(run_ids, task, metric)` returns run_id, item_id, value rows (`queries.item_values`)."""
    if x.aggregate or y.aggregate or not x.metrics or not y.metrics:
        return None
    run_ids = points["run_id"].tolist()
    per_axis = []
    for axis in (x, y):
        task, _, metric = axis.metrics[0].partition("/")
        rows = load_items(run_ids, task, metric)
        per_axis.append({rid: dict(zip(g["item_id"], g["value"])) for rid, g in rows.groupby("run_id")})
    memo: dict[tuple[int, int], bool | None] = {}

    def beats(j: int, i: int) -> bool | None:
        if (j, i) in memo:
            return memo[(j, i)]
        verdict: bool | None = True
        for values, up in zip(per_axis, maximize):
            a, b = values.get(run_ids[j], {}), values.get(run_ids[i], {})
            common = sorted(set(a) & set(b))
            if not common:
                verdict = None
                break
            test = stats.compare([a[k] for k in common], [b[k] for k in common], alpha=alpha)
            if not (test.significant and (test.diff > 0 if up else test.diff < 0)):
                verdict = False
                break
        memo[(j, i)] = verdict
        return verdict

    return beats


def retier_paired(points: pd.DataFrame, x: Axis, y: Axis, maximize: tuple[bool, bool],
                  load_items: Callable[[list[str], str, str], pd.DataFrame]) -> pd.DataFrame:
    """Re-tier `pareto_points` with paired tests where both axes are single metrics (else unchanged)."""
    beats = paired_beats(points, x, y, maximize, load_items)
    if beats is None or points.empty:
        return points
    out = points.copy()
    out["tier"] = pareto.tiers(out["x"], out["x_lo"], out["x_hi"], out["y"], out["y_lo"], out["y_hi"], maximize,
                               beats=beats)
    out["on_front"] = out["tier"] == "front"
    return out
