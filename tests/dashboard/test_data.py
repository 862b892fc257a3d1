"""Queries and aggregates on a real DuckDB file filled through the store API (no Streamlit)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from mixlab.dashboard import aggregates as agg
from mixlab.dashboard import queries
from mixlab.store import MetricRecord, RunRecord, Store


def test_db_state_missing_empty_foreign_and_ok(tmp_path, sample_db):
    assert queries.db_state(tmp_path / "absent.duckdb").status == "missing"
    Store(tmp_path / "empty.duckdb").schema_version()  # schema, no rows
    assert queries.db_state(tmp_path / "empty.duckdb").status == "empty"
    con = duckdb.connect(str(tmp_path / "foreign.duckdb"))
    con.execute("CREATE TABLE t (a INT)")
    con.close()
    assert queries.db_state(tmp_path / "foreign.duckdb").status == "not_mixlab"
    (tmp_path / "garbage.duckdb").write_bytes(b"not a database at all" * 100)
    assert queries.db_state(tmp_path / "garbage.duckdb").status == "error"
    state = queries.db_state(sample_db)
    assert state.status == "ok" and state.n_runs == 36 and state.n_metrics > 0


def test_db_stamp_changes_on_write(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.schema_version()
    before = queries.db_stamp(store.path)
    store.create_run(RunRecord(run_id="r1"))
    assert queries.db_stamp(store.path) != before


def test_runs_include_mixture_metadata_flags_and_checkpoint_only_evals(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.insert("mixtures", [{"mixture_id": "m1", "name": "math-heavy", "family": "math-heavy"}])
    store.insert("contamination", [{"mixture_id": "m1", "source_id": "s", "row_id": "1", "benchmark": "gsm8k"}] * 3)
    store.create_run(RunRecord(run_id="r1", mixture_id="m1", stage="sft"))
    store.insert("eval_runs", [{"eval_id": "e2", "checkpoint": "/ckpt/base", "task": "gsm8k"}])
    store.record_metrics([
        MetricRecord("e1", "r1", "gsm8k", "exact_match", "leaderboard", 10, 0.5, 0.2, 0.8, "wilson"),
        MetricRecord("e2", None, "gsm8k", "exact_match", "leaderboard", 10, 0.3, 0.1, 0.6, "wilson"),
    ])
    runs = queries.runs(store.path).set_index("run_id")
    assert runs.loc["r1", "mixture_name"] == "math-heavy" and runs.loc["r1", "mixture_family"] == "math-heavy"
    assert runs.loc["r1", "n_flagged"] == 3
    assert runs.loc["/ckpt/base", "kind"] == "eval"  # evaluated checkpoint without a run row is still plotted
    m = queries.latest_metrics(store.path)
    assert set(m["run_id"]) == {"r1", "/ckpt/base"}


def test_latest_metric_wins(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    old = MetricRecord("e1", "r1", "gsm8k", "exact_match", "leaderboard", 10, 0.1, 0.0, 0.3, "wilson")
    new = MetricRecord("e2", "r1", "gsm8k", "exact_match", "leaderboard", 10, 0.7, 0.4, 0.9, "wilson")
    new.created_at = old.created_at + pd.Timedelta(hours=1)
    store.record_metrics([new, old])
    m = queries.latest_metrics(store.path)
    assert len(m) == 1 and m["mean"].iloc[0] == 0.7


def test_catalog_directions_scales_and_defaults(sample_db):
    cat = agg.catalog(queries.latest_metrics(sample_db)).set_index("key")
    assert cat.loc["gsm8k/style/refusal", "direction"] == "lower"
    assert cat.loc["gsm8k/style/repetition_3gram", "direction"] == "lower"
    assert cat.loc["mt-bench/style/chars", "direction"] == "neutral"
    assert cat.loc["alpaca-eval/length_chars", "direction"] == "neutral"
    assert cat.loc["mt-bench/judge_unparseable", "direction"] == "neutral"  # the judge's health, not the model's
    assert cat.loc["gsm8k/exact_match_strict", "direction"] == "higher"
    assert tuple(cat.loc["mt-bench/score", ["scale_lo", "scale_hi"]]) == (1.0, 10.0)
    assert tuple(cat.loc["humaneval/pass@1", ["scale_lo", "scale_hi"]]) == (0.0, 1.0)
    # Style metrics ride on every task with category usability; they must not drag leaderboard tasks into the
    # usability aggregate.
    assert cat.loc["gsm8k/style/refusal", "category"] == "usability"
    lb = agg.default_metrics(cat.reset_index(), "leaderboard")
    assert lb == ["gsm8k/exact_match_strict", "humaneval/pass@1", "math500/accuracy", "mbpp/pass@1",
                  "proc-code/pass@1", "proc-math/accuracy"]
    us = agg.default_metrics(cat.reset_index(), "usability")
    assert us == ["alpaca-eval/lc_win_rate", "ifeval/prompt_level_strict_acc", "mt-bench/score",
                  "proc-chat/format_satisfied"]


def _metrics(rows):
    return pd.DataFrame(rows, columns=["run_id", "task", "metric", "category", "n", "mean", "ci_low", "ci_high"])


def test_aggregate_normalises_flips_and_combines_cis():
    m = _metrics([
        ("a", "gsm8k", "acc", "leaderboard", 100, 0.6, 0.5, 0.7),
        ("a", "mt", "score", "usability", 80, 7.3, 6.4, 8.2),         # 1–10 judge scale → (x−1)/9 = 0.7
        ("a", "style", "refusal_rate", "usability", 50, 0.1, 0.05, 0.15),  # flipped → 0.9
        ("b", "gsm8k", "acc", "leaderboard", 100, 0.2, 0.1, 0.3),
        ("b", "mt", "score", "usability", 80, 2.8, 1.9, 3.7),
        ("b", "style", "refusal_rate", "usability", 50, 0.3, 0.25, 0.35),
    ])
    cat = agg.catalog(m)
    w = agg.wide(m)
    vals = agg.axis_values(w, cat, agg.Axis("us", ["mt/score", "style/refusal_rate"], aggregate=True))
    assert vals.loc["a", "value"] == pytest.approx((0.7 + 0.9) / 2)
    se_mt, se_ref = (1.8 / 9) / (2 * agg.Z95), 0.1 / (2 * agg.Z95)
    half = agg.Z95 * np.sqrt(se_mt**2 + se_ref**2) / 2
    assert vals.loc["a", "hi"] - vals.loc["a", "value"] == pytest.approx(half)
    assert vals.loc["b", "value"] == pytest.approx((0.2 + 0.7) / 2)
    single = agg.axis_values(w, cat, agg.Axis("mt", ["mt/score"]))
    assert single.loc["a", "value"] == 7.3 and single.loc["a", "lo"] == 6.4  # single metrics stay in raw units
    assert not agg.axis_maximize(cat, agg.Axis("ref", ["style/refusal_rate"]))


def test_partial_coverage_is_excluded_unless_asked():
    m = _metrics([
        ("a", "t1", "acc", "leaderboard", 10, 0.5, 0.4, 0.6), ("a", "t2", "acc", "leaderboard", 10, 0.5, 0.4, 0.6),
        ("a", "c", "acc", "usability", 10, 0.5, 0.4, 0.6),
        ("b", "t1", "acc", "leaderboard", 10, 0.9, 0.8, 1.0), ("b", "c", "acc", "usability", 10, 0.9, 0.8, 1.0),
    ])
    runs = pd.DataFrame({"run_id": ["a", "b"], "label": ["a", "b"]})
    x, y = agg.Axis("lb", ["t1/acc", "t2/acc"], True), agg.Axis("us", ["c/acc"], True)
    assert agg.tradeoff_points(runs, m, x, y)["run_id"].tolist() == ["a"]
    pts = agg.tradeoff_points(runs, m, x, y, require_full_coverage=False).set_index("run_id")
    assert pts.loc["b", "x_coverage"] == 0.5 and pts.loc["b", "tier"] == "front"


def test_sample_db_shows_the_tradeoff(sample_db):
    """The story the sample data tells: math-heavy mixtures lead on the leaderboard, chat-heavy on usability."""
    metrics = queries.latest_metrics(sample_db)
    cat = agg.catalog(metrics)
    x = agg.Axis("lb", agg.default_metrics(cat, "leaderboard"), True)
    y = agg.Axis("us", agg.default_metrics(cat, "usability"), True)
    pts = agg.tradeoff_points(queries.runs(sample_db), metrics, x, y)
    by_family = pts.groupby("mixture_family")[["x", "y"]].mean()
    assert by_family.loc["math-heavy", "x"] > by_family.loc["chat-heavy", "x"]
    assert by_family.loc["chat-heavy", "y"] > by_family.loc["math-heavy", "y"]
    assert 2 <= pts["on_front"].sum() < len(pts)
    assert (pts["x_lo"] <= pts["x"]).all() and (pts["x"] <= pts["x_hi"]).all()
    front = agg.front_line(pts)
    assert front["x"].is_monotonic_increasing and front["y"].is_monotonic_decreasing


def test_leaderboard_table_has_mean_and_halfwidth(sample_db):
    metrics = queries.latest_metrics(sample_db)
    table = agg.leaderboard_table(queries.runs(sample_db), agg.wide(metrics), ["gsm8k/exact_match_strict"])
    row = metrics[(metrics["task"] == "gsm8k") & (metrics["metric"] == "exact_match_strict")].iloc[0]
    got = table.set_index("run_id").loc[row["run_id"]]
    assert got["gsm8k/exact_match_strict"] == row["mean"]
    assert got["gsm8k/exact_match_strict ±"] == pytest.approx((row["ci_high"] - row["ci_low"]) / 2)


def test_components_and_diff(sample_db):
    mixes = queries.mixtures(sample_db)
    a, b = mixes["mixture_id"].iloc[0], mixes["mixture_id"].iloc[1]
    comp = queries.components(sample_db, [a, b])
    for mid in (a, b):
        part = comp[comp["mixture_id"] == mid]
        assert part["realised_share"].sum() == pytest.approx(1.0, abs=1e-6)
        assert part["target_share"].sum() == pytest.approx(1.0, abs=0.02)
    diff = queries.mixture_diff(comp, a, b)
    assert diff["delta_realised_pp"].sum() == pytest.approx(0.0, abs=1e-6)
    assert diff["delta_realised_pp"].abs().is_monotonic_decreasing
    assert queries.components(sample_db, []).empty


def test_training_expert_load_and_imbalance(sample_db):
    run_id = queries.runs(sample_db)["run_id"].iloc[0]
    train = queries.train_metrics(sample_db, run_id)
    assert {"loss", "lr", "tokens_per_s"} <= set(train["name"])
    load = queries.expert_load(sample_db, run_id)
    assert load.groupby(["step", "layer"])["load"].sum().round(6).eq(1.0).all()
    imb = queries.expert_imbalance(load)
    assert len(imb) == load.groupby(["step", "layer"]).ngroups and (imb["max_over_mean"] >= 1.0).all()


def test_samples_and_side_by_side(sample_db):
    metrics = queries.latest_metrics(sample_db)
    run_a, run_b = sorted(metrics["run_id"].unique())[:2]
    tasks = queries.sample_tasks(sample_db, run_a)
    assert "mt-bench" in set(tasks["task"])
    rows = queries.samples(sample_db, run_a, "mt-bench")
    assert len(rows) == 12 and rows["judge_rationale"].notna().all()
    failed = queries.samples(sample_db, run_a, "gsm8k", only_failed=True)
    assert (~failed["passed"]).all()
    assert "gsm8k" in queries.common_tasks(sample_db, run_a, run_b)
    pairs = queries.paired_samples(sample_db, run_a, run_b, "gsm8k")
    assert len(pairs) == 12 and (pairs["flipped"] == (pairs["score_a"] != pairs["score_b"])).all()


def test_contamination_summary_and_rows(sample_db):
    summary = queries.contamination_summary(sample_db)
    assert summary["flagged"].sum() == Store(sample_db, read_only=True).query(
        "SELECT count(*) AS n FROM contamination")[0]["n"]
    top = summary.iloc[0]
    rows = queries.contamination_rows(sample_db, mixture_id=top["mixture_id"], source=top["source"],
                                      benchmark=top["benchmark"])
    assert len(rows) == top["flagged"] and rows["ngram"].str.split().str.len().eq(13).all()


def test_aggregate_ci_stays_inside_the_normalised_range():
    m = _metrics([("a", "t", "acc", "leaderboard", 5, 0.0, 0.0, 0.43), ("a", "u", "acc", "leaderboard", 5, 0.0, 0.0, 0.43)])
    vals = agg.axis_values(agg.wide(m), agg.catalog(m), agg.Axis("lb", ["t/acc", "u/acc"], aggregate=True))
    assert vals.loc["a", "value"] == 0.0 and vals.loc["a", "lo"] == 0.0 and 0.0 < vals.loc["a", "hi"] <= 1.0


def test_collapse_seeds_averages_with_within_and_between_seed_variance():
    base = {"mixture_name": "m", "stage": "sft", "rung": "r0", "base_model": "b", "label": "x", "mixture_id": "mid"}
    pts = pd.DataFrame([
        dict(base, run_id="s0", x=0.50, x_lo=0.45, x_hi=0.55, y=0.30, y_lo=0.25, y_hi=0.35),
        dict(base, run_id="s1", x=0.60, x_lo=0.55, x_hi=0.65, y=0.40, y_lo=0.35, y_hi=0.45),
        dict(base, run_id="s2", x=0.55, x_lo=0.50, x_hi=0.60, y=0.35, y_lo=0.30, y_hi=0.40),
        dict(base, mixture_name="other", run_id="o0", x=0.20, x_lo=0.1, x_hi=0.3, y=0.9, y_lo=0.85, y_hi=0.95),
    ])
    out = agg.collapse_seeds(pts).set_index("run_id")
    assert list(out.index) == ["s0", "o0"] and out.loc["s0", "n_seeds"] == 3 and out.loc["o0", "n_seeds"] == 1
    assert out.loc["s0", "x"] == pytest.approx(0.55)
    # stats.mean_over_seeds: within-seed SE (from each CI) and between-seed spread, t with 2 degrees of freedom.
    se = 0.05 / 1.959964
    half = 4.303 * np.sqrt(se ** 2 + np.var([0.50, 0.60, 0.55], ddof=1) / 3)
    assert out.loc["s0", "x_hi"] - out.loc["s0", "x"] == pytest.approx(half, rel=1e-4)
    assert out.loc["o0", "x_lo"] == 0.1  # one seed keeps its own CI
    assert out["on_front"].all() and "3 seeds" in out.loc["s0", "label"]
