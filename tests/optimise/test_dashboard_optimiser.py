"""The dashboard's Optimiser view and the cost column of the front, run by Streamlit's AppTest over a real DuckDB
file holding a synthetic family, a real `optimise fit` and real proposals."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from streamlit.testing.v1 import AppTest

from mixlab.dashboard import optimise as optview
from mixlab.dashboard import queries
from mixlab.recipes import optimise as opt
from mixlab.store import Store

from tests.optimise.helpers import synthetic_family

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def _app(view: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.sidebar.radio(key="view").set_value(view).run()
    assert not at.exception, at.exception
    return at


def test_optimiser_view_without_a_fit_explains(store: Store):
    synthetic_family(store, n=4)
    at = _app("Optimiser")
    assert "mixlab optimise fit" in at.info[0].value


def test_optimiser_view_predicted_front_effects_and_cost(store: Store, db_path):
    synthetic_family(store, n=10)
    opt.fit_family(store, "demo-balanced", models=("linear", "loglinear"))
    out = opt.propose(store, "demo-balanced", 3, check_build=False)
    at = _app("Optimiser")
    assert at.title[0].value == "Mixture optimiser"
    [chart] = at.get("vega_lite_chart")
    tables = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]
    points = max(tables, key=len)
    assert set(points["kind"]) == {"realised", "proposed (predicted ± 1 sd)"}
    assert (points["kind"] == "realised").sum() == 10
    proposed = points[points["kind"] != "realised"]
    assert len(proposed) == 3 and (proposed["x_hi"] > proposed["x"]).all()  # uncertainty whiskers
    spec = json.loads(chart.proto.spec)
    dashes = [l["mark"].get("strokeDash") for l in spec["layer"] if l["mark"]["type"] == "line"]
    assert [1, 0] in dashes and [6, 3] in dashes  # realised and predicted fronts
    text = " ".join(m.value for m in at.markdown)
    assert "+10 % math →" in text and "proc-math-l1/accuracy" in text
    costs = at.dataframe[2].value  # quality, effects, cost per Pareto point, proposals
    assert list(costs.columns)[:3] == ["mixture", "leaderboard", "usability"]
    assert (costs["device-s per run"] == 100.0).all() and len(costs) >= 2
    quality = at.dataframe[0].value
    assert {"mean-only RMSE", "signal"} <= set(quality.columns)
    assert set(quality.loc[quality["target"].str.startswith("axis:"), "signal"]) == {"yes"}
    props = at.dataframe[3].value
    assert sorted(props["mixture"]) == sorted(p.mixture_name for p in out["proposals"])
    # The Trade-off page's front table shows each point's cost too.
    at.sidebar.radio(key="view").set_value("Trade-off").run()
    assert not at.exception, at.exception
    front = at.table[0].value
    assert "cost (device-s)" in front.columns and (front["cost (device-s)"].astype(float) == 100.0).all()


def test_chart_frame_and_costs_are_pure(store: Store, db_path):
    synthetic_family(store, n=6)
    opt.fit_family(store, "demo-balanced", models=("linear", "loglinear"))
    opt.propose(store, "demo-balanced", 2, check_build=False)
    fit = queries.latest_fit(db_path, "demo-balanced")
    realised = optview.realised_points(fit)
    assert len(realised) == 6 and realised["mixture"].str.startswith("demo-balanced-dir0-").all()
    proposed = optview.proposed_points(queries.proposals(db_path, "demo-balanced"))
    pts, real_front, pred_front = optview.chart_frame(realised, proposed)
    assert len(pts) == 8 and 1 <= len(real_front) <= 6 and len(pred_front) >= 1
    cost = queries.run_costs(db_path)
    assert set(cost.columns) == {"run_id", "train_s", "eval_s", "device_s", "device_kind"}
    assert (cost["train_s"] + cost["eval_s"] == cost["device_s"]).all()
