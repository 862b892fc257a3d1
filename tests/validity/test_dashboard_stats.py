"""The dashboard decides with the same statistics as the CLI: its run-vs-run verdict is `mixlab compare`'s paired
test on the same DuckDB rows, its "within CI of the front" uses `stats.clearly_better`, and "mean over seeds" carries
the between-seed variance (`stats.mean_over_seeds`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixlab.dashboard import aggregates as agg
from mixlab.dashboard import pareto, queries
from mixlab.evals import stats
from mixlab.evals.compare import compare_runs, item_values

from .helpers import add_scored_run


def test_side_by_side_verdict_is_the_cli_test(store, db_path):
    rng = np.random.default_rng(5)
    base = (rng.random(150) < 0.5).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:18]] = 1.0
    add_scored_run(store, "a", "proc-math", better)
    add_scored_run(store, "b", "proc-math", base, unscored=[3])
    add_scored_run(store, "a", "mt-bench", rng.normal(7, 1, 60), metric="score")
    add_scored_run(store, "b", "mt-bench", rng.normal(6.6, 1, 60), metric="score")
    store.flush()
    cli = {r.task: r.comparison for r in compare_runs(store, ["a"], ["b"])}
    for task in ("proc-math", "mt-bench"):
        dash = agg.paired_comparison(queries.paired_samples(str(db_path), "a", "b", task))
        assert dash == cli[task]  # same items, same test, same numbers
    assert cli["proc-math"].test == "McNemar exact" and cli["proc-math"].n_items == 149


def test_within_ci_of_front_uses_the_stats_rule():
    x, xl, xh = [0.9, 0.5, 0.85], [0.85, 0.45, 0.70], [0.95, 0.55, 0.95]
    y, yl, yh = [0.9, 0.5, 0.85], [0.85, 0.45, 0.70], [0.95, 0.55, 0.95]
    tiers = list(pareto.tiers(x, xl, xh, y, yl, yh))
    assert tiers == ["front", "dominated", "within CI of front"]
    # Point 1 is dominated exactly because the stats rule says point 0 beats it beyond the CIs on both axes.
    assert stats.clearly_better(xl[0], xh[1]) and stats.clearly_better(yl[0], yh[1])
    assert not stats.clearly_better(xl[0], xh[2])


def test_mean_over_seeds_carries_between_seed_variance():
    base = dict(mixture_name="m", stage="sft", rung="r1", base_model="b", tier="", on_front=False, label="m")
    calm = [dict(base, run_id=f"c{i}", x=0.5, x_lo=0.45, x_hi=0.55, y=0.5, y_lo=0.45, y_hi=0.55) for i in range(3)]
    spread = [dict(base, mixture_name="n", run_id=f"s{i}", x=v, x_lo=v - 0.05, x_hi=v + 0.05, y=0.5, y_lo=0.45,
                   y_hi=0.55) for i, v in enumerate([0.3, 0.5, 0.7])]
    out = agg.collapse_seeds(pd.DataFrame(calm + spread)).set_index("mixture_name")
    assert out.loc["m", "n_seeds"] == 3
    expected = stats.mean_over_seeds([0.3, 0.5, 0.7], [0.25, 0.45, 0.65], [0.35, 0.55, 0.75])
    assert (out.loc["n", "x"], out.loc["n", "x_lo"], out.loc["n", "x_hi"]) == pytest.approx(expected)
    # Identical seeds keep (at least) the item noise; spread seeds widen the interval well beyond it.
    assert out.loc["m", "x_hi"] - out.loc["m", "x_lo"] > 0.09
    assert out.loc["n", "x_hi"] - out.loc["n", "x_lo"] > 3 * (out.loc["m", "x_hi"] - out.loc["m", "x_lo"])


def test_trade_off_tiers_on_single_metrics_follow_the_cli_test(store, db_path):
    rng = np.random.default_rng(11)
    base = (rng.random(300) < 0.45).astype(float)
    strong = base.copy()
    strong[np.flatnonzero(base == 0)[:40]] = 1.0  # +40 items on math, none lost
    slight = base.copy()
    slight[np.flatnonzero(base == 0)[:3]] = 1.0  # +3 items
    chat = rng.normal(6.0, 1.0, 120)
    chat_a = chat + 0.6 + rng.normal(0, 0.2, 120)
    add_scored_run(store, "A", "proc-math", strong)
    add_scored_run(store, "A", "mt-bench", chat_a, metric="score")
    add_scored_run(store, "B", "proc-math", base)
    add_scored_run(store, "B", "mt-bench", chat, metric="score")
    add_scored_run(store, "C", "proc-math", slight)
    add_scored_run(store, "C", "mt-bench", chat_a, metric="score")  # as good as A on chat
    store.flush()

    def mean(run, task, metric):
        return float(np.mean([v[metric] for v in item_values(store, run, task).values()]))

    # Wide, overlapping intervals: the CI rule alone would call every dominated run "within CI of front".
    points = pd.DataFrame([{"run_id": r, "x": mean(r, "proc-math", "accuracy"), "y": mean(r, "mt-bench", "score")}
                           for r in ("A", "B", "C")])
    points["x_lo"], points["x_hi"] = points["x"] - 0.2, points["x"] + 0.2
    points["y_lo"], points["y_hi"] = points["y"] - 2.0, points["y"] + 2.0
    points["tier"] = pareto.tiers(points["x"], points["x_lo"], points["x_hi"], points["y"], points["y_lo"],
                                  points["y_hi"])
    assert list(points["tier"]) == ["front", "within CI of front", "within CI of front"]
    x, y = agg.Axis("math", ["proc-math/accuracy"]), agg.Axis("chat", ["mt-bench/score"])
    tiers = agg.retier_paired(points, x, y, (True, True),
                              lambda ids, task, metric: queries.item_values(str(db_path), ids, task, metric))
    assert list(tiers["tier"]) == ["front", "dominated", "within CI of front"]
    # ... exactly what `mixlab compare` says: A beats B on both metrics; it beats C on math, not on chat.
    ab = {r.task: r.comparison for r in compare_runs(store, ["A"], ["B"])}
    ac = {r.task: r.comparison for r in compare_runs(store, ["A"], ["C"])}
    assert all(c.significant and c.diff > 0 for c in ab.values())
    assert ac["proc-math"].significant and not ac["mt-bench"].significant
    # Aggregate axes have no items to pair: the CI rule stays.
    assert agg.paired_beats(points, agg.Axis("lb", ["proc-math/accuracy"], aggregate=True), y, (True, True),
                            lambda *a: pd.DataFrame()) is None
