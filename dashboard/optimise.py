"""The optimiser view's tables, from the rows `mixlab optimise` stored (plain functions, testable without Streamlit).

A fit row's `params` holds the per-mixture data its model was fitted on (shares X, outcome y, mixture names), so the
realised points here are exactly what the surrogate saw; proposals carry their predicted mean and sd per axis.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from mixlab.dashboard import pareto

X_AXIS, Y_AXIS = "axis:leaderboard", "axis:usability"


def _params(row: pd.Series) -> dict:
    p = row["params"]
    return json.loads(p) if isinstance(p, str) else dict(p)


def fit_quality(fit: pd.DataFrame) -> pd.DataFrame:
    """One row per target x model: mixtures, LOO RMSE / MAE, the mean-only LOO RMSE, Spearman rho [95 % CI],
    selected, and whether the model has signal (beats the mean and rho's lower bound is above 0)."""
    out = fit[["metric", "model", "n_mixtures", "n_runs", "loo_rmse", "loo_mae", "spearman", "spearman_low",
               "spearman_high", "selected"]].copy()
    out["Spearman ρ [95% CI]"] = [
        "–" if pd.isna(r) else f"{r:.2f} [{lo:.2f}, {hi:.2f}]"
        for r, lo, hi in zip(out["spearman"], out["spearman_low"], out["spearman_high"])]
    params = [_params(r) for _, r in fit.iterrows()]
    out.insert(5, "mean-only RMSE", [p.get("loo_rmse_mean_only") for p in params])
    out["signal"] = ["–" if p.get("informative") is None else ("yes" if p["informative"] else "NO")
                     for p in params]
    return out.drop(columns=["spearman", "spearman_low", "spearman_high"]).rename(columns={"metric": "target"})


def effects(fit: pd.DataFrame) -> pd.DataFrame:
    """Per-source effects of the selected models: target x source, change per +10 points of that source."""
    rows = {}
    for _, r in fit[fit["selected"]].iterrows():
        eff = r["effects"]
        eff = json.loads(eff) if isinstance(eff, str) else (eff or {})
        rows[r["metric"]] = eff
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


def effect_sentences(eff: pd.DataFrame, metrics: list[str] | None = None) -> list[str]:
    """"+10 % math → +0.08 proc-math-l1/accuracy, −0.05 proc-chat-l1/format_satisfied" per source."""
    metrics = [m for m in (metrics or [m for m in eff.index if not m.startswith("axis:")]) if m in eff.index]
    lines = []
    for source in eff.columns:
        parts = [f"{eff.loc[m, source]:+.3f} {m}" for m in metrics if pd.notna(eff.loc[m, source])]
        if parts:
            lines.append(f"+10 % {source} → " + ", ".join(parts))
    return lines


def realised_points(fit: pd.DataFrame) -> pd.DataFrame:
    """Per mixture the fit saw: name, leaderboard and usability means (over its seeds)."""
    axes = {}
    for axis in (X_AXIS, Y_AXIS):
        sel = fit[(fit["metric"] == axis) & fit["selected"]]
        if sel.empty:
            return pd.DataFrame(columns=["mixture", "x", "y"])
        p = _params(sel.iloc[0])
        names = p.get("mixture_names") or [json.dumps(np.round(x, 6).tolist()) for x in p["X"]]
        axes[axis] = dict(zip(names, p["y"]))
    names = [n for n in axes[X_AXIS] if n in axes[Y_AXIS]]
    return pd.DataFrame({"mixture": names, "x": [axes[X_AXIS][n] for n in names],
                         "y": [axes[Y_AXIS][n] for n in names]})


def proposed_points(props: pd.DataFrame) -> pd.DataFrame:
    """Per proposal: predicted mean and sd on both axes, estimated cost, status."""
    rows = []
    for _, r in props.iterrows():
        pred = r["predicted"]
        pred = json.loads(pred) if isinstance(pred, str) else pred
        if X_AXIS not in pred or Y_AXIS not in pred:
            continue
        px, py = pred[X_AXIS], pred[Y_AXIS]
        rows.append({"mixture": r["mixture_name"], "x": px["mean"], "y": py["mean"], "x_sd": px["sd"],
                     "y_sd": py["sd"], "est_device_s": r["est_device_s"], "status": r["status"],
                     "run_id": r["run_id"], "round": r["round"]})
    return pd.DataFrame(rows, columns=["mixture", "x", "y", "x_sd", "y_sd", "est_device_s", "status", "run_id",
                                       "round"])


def chart_frame(realised: pd.DataFrame, proposed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(points with whiskers and kind, realised front, predicted front). Realised points carry no whiskers here
    (the Trade-off page shows their CIs); proposals carry mean ± 1 predictive sd. The predicted front is the front
    of the realised points together with the proposals' predicted means."""
    pts = pd.concat([
        realised.assign(kind="realised", x_lo=realised["x"], x_hi=realised["x"], y_lo=realised["y"],
                        y_hi=realised["y"]),
        proposed.assign(kind="proposed (predicted ± 1 sd)", x_lo=proposed["x"] - proposed["x_sd"],
                        x_hi=proposed["x"] + proposed["x_sd"], y_lo=proposed["y"] - proposed["y_sd"],
                        y_hi=proposed["y"] + proposed["y_sd"]),
    ], ignore_index=True)[["mixture", "kind", "x", "y", "x_lo", "x_hi", "y_lo", "y_hi"]]

    def front(df: pd.DataFrame) -> pd.DataFrame:
        if df.empty:
            return df[["x", "y"]]
        mask = pareto.pareto_mask(df["x"].to_numpy(float), df["y"].to_numpy(float))
        return df.loc[mask, ["x", "y"]].sort_values("x")

    return pts, front(realised), front(pts[["x", "y"]])


def front_costs(realised: pd.DataFrame, runs: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """The realised front's mixtures with what each cost: mean device-seconds (train + eval) of its runs."""
    if realised.empty:
        return pd.DataFrame(columns=["mixture", "leaderboard", "usability", "runs", "device-s per run", "device"])
    on = pareto.pareto_mask(realised["x"].to_numpy(float), realised["y"].to_numpy(float))
    joined = runs[["run_id", "mixture_name"]].merge(costs, on="run_id", how="inner")
    per = joined.groupby("mixture_name").agg(runs=("run_id", "nunique"), device_s=("device_s", "mean"),
                                             device=("device_kind", "first"))
    out = realised[on].rename(columns={"x": "leaderboard", "y": "usability"}).merge(
        per, left_on="mixture", right_index=True, how="left").sort_values("leaderboard")
    return out.rename(columns={"device_s": "device-s per run"})[
        ["mixture", "leaderboard", "usability", "runs", "device-s per run", "device"]]
