"""Every view of the real Streamlit app, run by `streamlit.testing.v1.AppTest` over a real sample database."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from mixlab.dashboard import queries
from mixlab.store import Store

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def run_app(view: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if view:
        at.sidebar.radio(key="view").set_value(view).run()
    assert not at.exception, at.exception
    return at


def vega_charts(at: AppTest) -> list[tuple[dict, list[pa.Table]]]:
    """(spec, datasets) of every Altair chart on the page, decoded from the protobuf Streamlit sends."""
    out = []
    for el in at.get("vega_lite_chart"):
        tables = [pa.ipc.open_stream(d.data.data).read_all() for d in el.proto.datasets]
        out.append((json.loads(el.proto.spec), tables))
    return out


def metric_values(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_tradeoff_view_draws_pareto_front_with_cis(sample_db, use_db):
    use_db(sample_db)
    at = run_app()
    assert at.title[0].value == "Leaderboard vs usability"
    values = metric_values(at)
    n_plotted, n_front = int(values["runs plotted"]), int(values["on the Pareto front"])
    assert n_plotted >= 30 and 2 <= n_front < n_plotted
    [(spec, tables)] = vega_charts(at)
    assert [p["name"] for p in spec["params"]] == ["pick", "hover"]
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["rule", "rule", "line", "circle", "text"]  # x whiskers, y whiskers, front, runs, labels
    assert spec["layer"][2]["mark"]["interpolate"] == "step-before"
    points = max(tables, key=lambda t: t.num_rows).to_pandas()
    front = min(tables, key=lambda t: t.num_rows).to_pandas()
    assert len(points) == n_plotted and points["on_front"].sum() == n_front == len(front)
    assert (points["x_lo"] <= points["x"]).all() and (points["y"] <= points["y_hi"]).all()
    assert {"run_id", "mixture_name", "stage", "rung", "x_text", "y_text", "composition"} <= set(points.columns)
    assert points["composition"].str.contains("%").all()  # hover shows the realised mixture
    assert len(at.table[0].value) == n_front  # the "runs on the front" table


def test_tradeoff_axes_colour_and_filters(sample_db, use_db):
    use_db(sample_db)
    at = run_app()
    total = int(metric_values(at)["runs plotted"])
    at.selectbox(key="x_axis").set_value("gsm8k/exact_match_strict").run()
    at.selectbox(key="y_axis").set_value("mt-bench/style/refusal").run()
    at.selectbox(key="color_by").set_value("ladder rung").run()
    assert not at.exception
    [(spec, tables)] = vega_charts(at)
    assert "lower is better" in spec["layer"][3]["encoding"]["y"]["title"]
    assert spec["layer"][3]["encoding"]["color"]["field"] == "rung"
    at.sidebar.multiselect(key="f_stage").set_value(["sft"]).run()
    points = max(vega_charts(at)[0][1], key=lambda t: t.num_rows).to_pandas()
    assert set(points["stage"]) == {"sft"} and len(points) < total
    at.sidebar.radio(key="f_contam").set_value("clean mixtures only").run()
    assert not at.exception
    runs = queries.runs(sample_db)
    evaluated = set(queries.latest_metrics(sample_db)["run_id"])
    clean = runs[(runs["n_flagged"] == 0) & (runs["stage"] == "sft") & runs["run_id"].isin(evaluated)]
    if clean.empty:
        assert "No run" in at.info[0].value  # an empty selection is explained, not an error
    else:
        assert int(metric_values(at)["runs plotted"]) == len(clean)


def test_mean_over_seeds_toggle(tmp_path, use_db):
    from mixlab.dashboard import sample_data

    path = use_db(tmp_path / "seeds.duckdb")
    sample_data.build(path, n_runs=120, n_mixtures=5, samples_per_task=1, train_points=2, expert_snapshots=1)
    at = run_app()
    per_run = int(metric_values(at)["runs plotted"])
    at.toggle(key="seeds").set_value(True).run()
    assert not at.exception
    points = max(vega_charts(at)[0][1], key=lambda t: t.num_rows).to_pandas()
    assert len(points) < per_run and points["n_seeds"].max() >= 2
    assert not points.duplicated(["mixture_name", "stage", "rung", "base_model"]).any()


def test_aggregate_definition_changes_the_x_axis(sample_db, use_db):
    use_db(sample_db)
    at = run_app()
    at.multiselect(key="agg_lb").set_value(["proc-math/accuracy"]).run()
    points = max(vega_charts(at)[0][1], key=lambda t: t.num_rows).to_pandas()
    metrics = queries.latest_metrics(sample_db)
    pm = metrics[(metrics["task"] == "proc-math") & (metrics["metric"] == "accuracy")].set_index("run_id")["mean"]
    assert points.set_index("run_id")["x"].sub(pm.reindex(points["run_id"])).abs().max() < 1e-12


def test_open_run_from_tradeoff(sample_db, use_db):
    use_db(sample_db)
    at = run_app()
    default = at.session_state["open_choice"]  # the best front run is offered first
    points = max(vega_charts(at)[0][1], key=lambda t: t.num_rows).to_pandas().set_index("run_id")
    assert points.loc[default, "on_front"]
    run_id = points.index[~points["on_front"]][0]
    at.selectbox(key="open_choice").set_value(run_id).run()
    at.button(key="open_btn").click().run()
    assert not at.exception
    assert at.sidebar.radio(key="view").value == "Run detail"
    assert at.session_state["run_id"] == run_id
    assert at.query_params["run"] in (run_id, [run_id])


def test_deep_link_opens_run(sample_db, use_db):
    use_db(sample_db)
    run_id = queries.runs(sample_db)["run_id"].iloc[3]
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["view"] = "Run detail"
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception and at.session_state["run_id"] == run_id


def test_leaderboard_view(sample_db, use_db):
    use_db(sample_db)
    at = run_app("Leaderboard")
    df = at.dataframe[0].value
    evaluated = queries.latest_metrics(sample_db)["run_id"].nunique()
    assert len(df) == evaluated
    assert {"leaderboard score", "usability score", "front", "n_flagged", "gsm8k/exact_match_strict ±"} <= set(df.columns)
    assert df["leaderboard score"].is_monotonic_decreasing
    assert df["front"].sum() >= 2
    at.sidebar.multiselect(key="f_rung").set_value(["r2"]).run()
    assert set(at.dataframe[0].value["rung"]) == {"r2"}
    at.toggle(key="lb_ci").set_value(False).run()
    assert not any(c.endswith("±") for c in at.dataframe[0].value.columns)


def test_mixtures_view(sample_db, use_db):
    use_db(sample_db)
    at = run_app("Mixtures")
    specs = vega_charts(at)
    assert len(specs) == 2  # composition + diff
    comp = max(specs[0][1], key=lambda t: t.num_rows).to_pandas()
    assert set(comp["which"]) == {"target", "realised"}
    # Mixtures behind the Pareto front are starred and selected first.
    assert any("★" in c.value for c in at.caption)
    starred = [m for m in comp["mixture"].unique() if m.startswith("★ ")]
    assert starred
    assert specs[0][0]["encoding"]["x"]["stack"] == "normalize"
    diff = at.dataframe[-1].value
    assert abs(diff["delta_realised_pp"].sum()) < 1e-6
    assert any(c.language == "diff" for c in at.code)
    at.selectbox(key="mix_b").select_index(3).run()
    assert not at.exception


def test_run_detail_view_all_tabs(sample_db, use_db):
    use_db(sample_db)
    at = run_app("Run detail")
    runs = queries.runs(sample_db)
    evaluated = set(queries.latest_metrics(sample_db)["run_id"])
    run_a, run_b = [r for r in runs.sort_values("created_at")["run_id"] if r in evaluated][:2]
    at.selectbox(key="run_id").set_value(run_a).run()
    tab_labels = [t.label for t in at.tabs]
    assert tab_labels == ["Training", "MoE expert load", "Eval metrics", "Samples", "Side by side"]
    training, experts, evals, samples, pair = at.tabs
    assert training.get("vega_lite_chart") and len(experts.get("vega_lite_chart")) == 2
    assert len(evals.dataframe[0].value) == len(queries.latest_metrics(sample_db).query("run_id == @run_a"))
    samples.selectbox(key="sample_task").set_value("mt-bench").run()
    rows = at.tabs[3].dataframe[0].value
    assert len(rows) == 12 and rows["judge_rationale"].notna().all()
    assert any("rationale" in m.value for m in at.tabs[3].markdown)
    assert at.tabs[4].info  # side by side asks for a second run
    at.selectbox(key="compare_id").set_value(run_b).run()
    assert not at.exception
    pair = at.tabs[4]
    values = {m.label: m.value for m in pair.metric}
    assert values["items in common"] == "12"
    pair.toggle(key="pair_flipped").set_value(False).run()
    assert len(at.tabs[4].code) >= 3  # prompt + both answers
    assert "CIs separated" in at.tabs[2].dataframe[0].value.columns


def test_contamination_view(sample_db, use_db):
    use_db(sample_db)
    at = run_app("Contamination")
    total = Store(sample_db, read_only=True).query("SELECT count(*) AS n FROM contamination")[0]["n"]
    assert metric_values(at)["flagged rows"] == str(total)
    assert len(at.dataframe[0].value) == min(total, 1000)
    at.selectbox(key="contam_bench").set_value("gsm8k").run()
    assert set(at.dataframe[0].value["benchmark"]) == {"gsm8k"}


def test_missing_database_page(tmp_path, use_db):
    use_db(tmp_path / "nowhere" / "mixlab.duckdb")
    at = run_app()
    assert "No mixlab database" in at.warning[0].value
    assert any("make demo" in m.value for m in at.markdown)
    assert not (tmp_path / "nowhere").exists()  # the dashboard never creates the file


def test_empty_database_page(tmp_path, use_db):
    path = use_db(tmp_path / "mixlab.duckdb")
    Store(path).schema_version()
    at = run_app()
    assert "no run or evaluation" in at.info[0].value
    assert any("make demo" in m.value for m in at.markdown)


def test_runs_without_evals_are_explained(tmp_path, use_db):
    from mixlab.store import RunRecord

    path = use_db(tmp_path / "mixlab.duckdb")
    Store(path).create_run(RunRecord(run_id="r1", stage="sft"))
    at = run_app()
    assert "No evaluation metrics" in at.info[0].value
    for view in ("Leaderboard", "Mixtures", "Run detail", "Contamination"):
        at.sidebar.radio(key="view").set_value(view).run()
        assert not at.exception, view


def test_mixtures_without_runs_are_shown(tmp_path, use_db):
    """Right after `mixlab mix build`, before any run: composition is viewable, the trade-off explains the wait."""
    path = use_db(tmp_path / "mixlab.duckdb")
    store = Store(path)
    store.insert("mixtures", [{"mixture_id": "m1", "name": "demo-math-heavy", "family": "math-heavy"},
                              {"mixture_id": "m2", "name": "demo-balanced", "family": "balanced"}])
    store.insert("mixture_components", [
        {"mixture_id": m, "source_id": s, "source_name": s, "target_share": t, "realised_share": t}
        for m, shares in (("m1", (0.7, 0.15, 0.15)), ("m2", (1 / 3, 1 / 3, 1 / 3)))
        for s, t in zip(("math", "code", "chat"), shares)])
    at = run_app()
    assert "No evaluation metrics" in at.info[0].value
    at.sidebar.radio(key="view").set_value("Mixtures").run()
    assert not at.exception
    diff = at.dataframe[-1].value.set_index("source")
    a, b = at.session_state["mix_a"], at.session_state["mix_b"]
    share = {"m1": 0.7, "m2": 1 / 3}
    assert diff.loc["math", "delta_realised_pp"] == pytest.approx(100 * (share[b] - share[a]))


def test_live_mode_picks_up_new_writes(tmp_path, use_db):
    from mixlab.dashboard import sample_data
    from mixlab.store import RunRecord

    path = use_db(tmp_path / "live.duckdb")
    sample_data.build(path, n_runs=6, samples_per_task=2, train_points=4, expert_snapshots=1)
    at = run_app()
    at.sidebar.toggle(key="live").set_value(True).run()
    assert not at.exception and "6 runs" in at.sidebar.caption[0].value
    Store(path).create_run(RunRecord(run_id="new-run", stage="sft"))
    at.run()  # what the live fragment triggers when the stamp moves
    assert "7 runs" in at.sidebar.caption[0].value


def test_choices_survive_a_trip_to_another_view(sample_db, use_db):
    use_db(sample_db)
    at = run_app()
    at.selectbox(key="color_by").set_value("stage").run()
    at.multiselect(key="agg_lb").set_value(["proc-math/accuracy"]).run()
    at.sidebar.multiselect(key="f_stage").set_value(["sft"]).run()
    at.sidebar.radio(key="view").set_value("Mixtures").run()
    at.sidebar.radio(key="view").set_value("Trade-off").run()
    assert not at.exception
    assert at.selectbox(key="color_by").value == "stage"
    assert at.multiselect(key="agg_lb").value == ["proc-math/accuracy"]
    assert at.sidebar.multiselect(key="f_stage").value == ["sft"]


def test_sample_inspector_links_contamination(sample_db, use_db):
    """An eval item that the run's mixture overlapped (per the decontamination record) is flagged in place."""
    use_db(sample_db)
    hit = Store(sample_db, read_only=True).query("""
        SELECT r.run_id, s.task, s.item_id, count(*) AS n
        FROM contamination c JOIN runs r ON r.mixture_id = c.mixture_id
        JOIN eval_samples s ON s.run_id = r.run_id AND s.item_id = c.item_id
        GROUP BY ALL ORDER BY r.run_id, s.task, s.item_id LIMIT 1""")
    assert hit, "sample data should contain an overlapped item"
    run_id, task, item_id, n = hit[0]["run_id"], hit[0]["task"], hit[0]["item_id"], hit[0]["n"]
    at = run_app("Run detail")
    at.selectbox(key="run_id").set_value(run_id).run()
    at.selectbox(key="sample_task").set_value(task).run()
    at.selectbox(key="sample_item").set_value(item_id).run()
    assert not at.exception
    samples_tab = at.tabs[3]
    assert samples_tab.warning and f"{n} training row(s)" in samples_tab.warning[0].value


def test_sparse_and_odd_rows_never_crash_a_view(tmp_path, use_db):
    """NULL categories and CIs, an eval without run or eval_runs row, unbounded metrics, NULL contamination fields."""
    from mixlab.store import MetricRecord, RunRecord

    path = use_db(tmp_path / "odd.duckdb")
    store = Store(path)
    store.create_run(RunRecord(run_id="a", created_at=None, updated_at=None))
    store.create_run(RunRecord(run_id="b", stage="sft", mixture_id="no-such-mixture"))
    rows = [("e1", "a", "t1", "acc", None, 0.5, None, None), ("e2", "b", "t1", "acc", "leaderboard", 0.7, 0.6, 0.8),
            ("e3", "b", "c", "score", "usability", 7.0, 6.0, 8.0), ("e4", None, "c", "score", "usability", 5.0, 4.0, 6.0),
            ("e5", "a", "c", "delta", "usability", -123.0, -200.0, -50.0),
            ("e6", "b", "c", "delta", "usability", -100.0, -110.0, -90.0)]
    store.insert("eval_metrics", [dict(zip(("eval_id", "run_id", "task", "metric", "category", "mean", "ci_low",
                                            "ci_high"), r), n=10) for r in rows])
    store.insert("eval_samples", [{"eval_id": "e2", "run_id": "b", "task": "t1", "item_id": "1"}])
    store.insert("mixture_components", [{"mixture_id": "m", "source_id": "x", "realised_share": 0.5}])
    store.insert("contamination", [{"mixture_id": None, "benchmark": None}])
    at = run_app()
    assert int(metric_values(at)["runs plotted"]) == 1  # only b has both aggregates (t1/acc counts as leaderboard)
    for view in VIEWS_AFTER_FIRST:
        at.sidebar.radio(key="view").set_value(view).run()
        assert not at.exception, (view, at.exception)
    assert metric_values(at)["flagged rows"] == "1"


VIEWS_AFTER_FIRST = ["Leaderboard", "Mixtures", "Run detail", "Contamination"]
