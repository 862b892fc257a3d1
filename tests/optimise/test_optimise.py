"""Surrogates, proposals and the store rows of `mixlab optimise`, on a synthetic family with a known response
(no training: the slow test in test_demo_loop.py runs the real thing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import spearmanr

from mixlab.cli import main
from mixlab.errors import MixlabError
from mixlab.evals.stats import spearman_ci
from mixlab.mixtures import load_mixture
from mixlab.recipes import optimise as opt
from mixlab.store import CostRecord, Store

from tests.optimise.helpers import FEATURES, RECIPE, add_run, synthetic_family, truth

LINEAR = ("linear", "loglinear")  # the GP is fitted (and checked) in one test: it is the slow one


def _true_axes(w: np.ndarray) -> np.ndarray:
    t = truth(w)
    lb = np.mean([v for (_, _, c), v in t.items() if c == "leaderboard"])
    us = np.mean([v for (_, _, c), v in t.items() if c == "usability"])
    return np.array([lb, us])


def test_spearman_ci_matches_scipy_and_covers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    y[:3] = y[3]  # ties
    rho, lo, hi = spearman_ci(x, y)
    assert rho == pytest.approx(spearmanr(x, y).statistic)
    assert lo < rho < hi and lo > 0
    rho0, lo0, hi0 = spearman_ci(x, rng.normal(size=30))
    assert lo0 < 0 < hi0 or abs(rho0) > 0.35  # unrelated: the interval covers 0 (95 %; this seed does)
    assert np.isnan(spearman_ci([1, 2, 3], [1, 2, 3])[0])  # n < 4
    assert np.isnan(spearman_ci([1, 1, 1, 1], [1, 2, 3, 4])[0])


def test_family_membership_features_targets(store: Store):
    synthetic_family(store, n=5)
    add_run(store, "demo-math-heavy", np.array([0.15, 0.15, 0.7]))  # a registry variant: in the family
    add_run(store, "other-mix", np.array([0.3, 0.3, 0.4]), extends=None)  # not in it
    longer = {**RECIPE, "stages": [{**RECIPE["stages"][0], "args": {"max_steps": 99}}]}
    add_run(store, "demo-balanced-long", np.array([0.2, 0.3, 0.5]), recipe=longer)  # another budget
    data = opt.load_family(store, "demo-balanced")
    assert data.features == list(FEATURES)
    assert len(data.run_ids) == 6 and "other-mix-s0-sft" not in data.run_ids
    assert list(data.other_groups.values()) == [1]
    assert data.targets == ["proc-chat-l1/format_satisfied", "proc-code-l1/pass@1", "proc-math-l1/accuracy",
                            "axis:leaderboard", "axis:usability"]  # per-level breakdowns left out
    i = data.run_ids.index("demo-math-heavy-s0-sft")
    np.testing.assert_allclose(data.X[i], [0.15, 0.15, 0.7])
    lb = (data.Y[i, 1] + data.Y[i, 2]) / 2
    assert data.column("axis:leaderboard")[i] == pytest.approx(lb)
    other = opt.load_family(store, "demo-balanced", group=next(iter(data.other_groups)))
    assert other.run_ids == ["demo-balanced-long-s0-sft"]
    assert set(opt.families(store)) >= {"demo-balanced", "other-mix"}
    with pytest.raises(MixlabError, match="did you mean 'demo-balanced'"):
        opt.load_family(store, "demo-balancd")


def test_fit_ranks_held_out_mixtures_and_is_stored(store: Store):
    synthetic_family(store, n=14)
    fit_id, data, fits = opt.fit_family(store, "demo-balanced")
    selected = {f.target: f for f in fits if f.selected}
    assert set(selected) == set(data.targets)
    for axis in ("axis:leaderboard", "axis:usability"):
        f = selected[axis]
        y = f.realised
        assert f.spearman[1] > 0, (axis, f.model, f.spearman)  # better than chance, beyond the CI
        assert f.loo_rmse < np.std(y) and f.informative  # beats predicting the mean
    eff = selected["proc-math-l1/accuracy"].effects
    assert eff["math"] > 0.02 and eff["chat"] < 0
    assert selected["axis:usability"].effects["chat"] > 0.02
    rows = store.fits(family="demo-balanced")
    assert {r["fit_id"] for r in rows} == {fit_id}
    assert len(rows) == len(data.targets) * len(opt.MODELS)
    assert sum(r["selected"] for r in rows) == len(data.targets)
    # `propose` rebuilds exactly the selected models from the stored rows.
    _, models, features, _ = opt.load_fit(store, "demo-balanced")
    probe = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    for target, f in selected.items():
        np.testing.assert_allclose(models[target].predict(probe)[0], f.surrogate.predict(probe)[0], rtol=1e-6)
    assert features == list(FEATURES)


def test_pure_noise_is_flagged_uninformative():
    """Outcomes unrelated to the shares: no model beats predicting the mean (LOO), and the fit says so."""
    rng = np.random.default_rng(5)
    n = 10
    X = rng.dirichlet(np.ones(3), size=n)
    y = rng.normal(0.5, 0.05, size=n)
    data = opt.FamilyData(family="f", group_key="g", features=list(FEATURES), run_ids=[f"r{i}" for i in range(n)],
                          mixture_ids=[f"m{i}" for i in range(n)], mixture_names=[f"m{i}" for i in range(n)],
                          seeds=[0] * n, X=X, targets=["axis:leaderboard"], categories={}, Y=y[:, None],
                          H=np.zeros((n, 1)), recipe_yaml="", stage="sft", stage_index=0)
    [f] = [f for f in opt.fit_targets(data, ["linear"]) if f.selected]
    assert not f.informative and f.baseline_rmse <= f.loo_rmse


def test_too_few_mixtures_is_one_clear_error(store: Store):
    synthetic_family(store, n=3)
    with pytest.raises(MixlabError, match="needs at least 4"):
        opt.fit_family(store, "demo-balanced", models=LINEAR)


def test_propose_writes_registry_yaml_and_extends_the_true_front(store: Store, isolated_runs):
    synthetic_family(store, n=14)
    opt.fit_family(store, "demo-balanced", models=LINEAR)
    out = opt.propose(store, "demo-balanced", 3)
    props = out["proposals"]
    assert len(props) == 3 and out["est_device_s"] == pytest.approx(100.0)
    data = opt.load_family(store, "demo-balanced")
    initial_truth = np.array([_true_axes(x) for x in data.X])
    undominated = 0
    for p in props:
        doc = yaml.safe_load(open(p.mixture_path))
        assert doc["extends"].endswith("demo-balanced.yaml")
        spec = load_mixture(p.mixture_path).spec
        assert sum(c.weight for c in spec.components) == pytest.approx(1.0, abs=1e-5)
        assert {c.name for c in spec.components} == set(FEATURES)
        assert set(p.predicted) == set(data.targets)
        w = np.array([p.weights[f] for f in FEATURES])
        undominated += not opt.dominated_by(_true_axes(w), initial_truth).any()
    assert undominated >= 1, "no proposal's expected point escapes the initial sweep's front"
    stored = store.proposals("demo-balanced")
    assert [r["proposal_id"] for r in stored] == sorted(p.proposal_id for p in props)
    assert json.loads(stored[0]["predicted"])["axis:usability"]["sd"] > 0


def test_propose_under_a_floor(store: Store):
    synthetic_family(store, n=14)
    opt.fit_family(store, "demo-balanced", models=LINEAR)
    out = opt.propose(store, "demo-balanced", 2, mins=["proc-math-l1=0.55"], confidence=0.8, check_build=False)
    for p in out["proposals"]:
        m, s = p.predicted["proc-math-l1/accuracy"]["mean"], p.predicted["proc-math-l1/accuracy"]["sd"]
        assert m - 0.84 * s >= 0.55 - 1e-6  # P(>= floor) >= 0.8 under the predictive normal
        assert truth(np.array([p.weights[f] for f in FEATURES]))[("proc-math-l1", "accuracy", "leaderboard")] > 0.5
    assert "s.t. proc-math-l1/accuracy >= 0.55" in out["objective"]
    with pytest.raises(MixlabError, match="no candidate is predicted to meet"):
        opt.propose(store, "demo-balanced", 1, mins=["proc-math-l1=0.99"])
    with pytest.raises(MixlabError, match="expected METRIC=VALUE"):
        opt.propose(store, "demo-balanced", 1, mins=["proc-math-l1>0.5"])
    with pytest.raises(MixlabError, match="is not a fitted metric"):
        opt.propose(store, "demo-balanced", 1, mins=["gsm8k=0.6"])


def test_cost_rows_replace_per_phase_and_fall_back_to_train_wall_time(store: Store):
    store.record_cost(CostRecord("r1", "train", "cpu (x)", 2, 10.0, 20.0))
    store.record_cost(CostRecord("r1", "eval", "cpu (x)", 1, 5.0, 5.0))
    store.record_cost(CostRecord("r1", "eval", "cpu (x)", 1, 6.0, 6.0))  # a resumed run evaluates again
    store.insert("runs", [{"run_id": "old", "kind": "train", "device": "cpu (y)"}])
    store.log_train_metrics("old", 7, {"train_wall_s": 42.0})
    costs = store.run_costs(["r1", "old", "none"])
    assert costs["r1"]["train_s"] == 20.0 and costs["r1"]["eval_s"] == 6.0 and costs["r1"]["device_s"] == 26.0
    assert costs["old"]["device_s"] == 42.0 and costs["old"]["eval_s"] is None
    assert costs["old"]["device_kind"] == "cpu (y)" and "none" not in costs


def test_proposals_the_sources_cannot_supply_are_replaced(store: Store):
    """Maximising usability drives the chat share towards 1; the procedural chat source has about 3,000 distinct
    level-1 problems, fewer than such a mixture needs: those picks fail to build and nearby buildable ones
    replace them (the loop's sweep would otherwise fail in preflight)."""
    rng = np.random.default_rng(3)
    for i, chat in enumerate([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]):  # the chat corner untried: usability peaks there
        code = rng.uniform(0, 1 - chat)
        add_run(store, f"demo-balanced-c{i}", np.array([chat, code, 1 - chat - code]), rng=rng)
    opt.fit_family(store, "demo-balanced", models=("linear",))
    out = opt.propose(store, "demo-balanced", 1, mins=["proc-math-l1=0.0"], beta=0.0)
    assert out["unbuildable"] and all("distinct problems" in u["error"] for u in out["unbuildable"])
    [p] = out["proposals"]
    assert p.weights["chat"] < min(u["weights"]["chat"] for u in out["unbuildable"])
    assert store.query("SELECT count(*) AS n FROM mixtures WHERE name = ?", [p.mixture_name])[0]["n"] == 1  # built
    assert [f.name for f in Path(out["out_dir"]).glob("*.yaml")] == [Path(p.mixture_path).name]


def test_hypervolume_and_dominance():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert opt.hypervolume(pts, np.array([0.0, 0.0])) == pytest.approx(0.25)
    assert opt.front_mask(np.array([[1, 1], [0.5, 0.5], [2, 0]])).tolist() == [True, False, True]
    assert opt.dominated_by([0.5, 0.5], np.array([[0.5, 0.5], [0.6, 0.5]])).tolist() == [False, True]


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`mixlab ARGS` in-process through the real entry point (its MixlabError -> one line, exit 2)."""
    monkeypatch.setattr(sys, "argv", ["mixlab", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_fit_propose_and_bad_input(store: Store, monkeypatch, capsys):
    synthetic_family(store, n=8)
    code, out, err = _cli(monkeypatch, capsys, "optimise", "fit", "--family", "demo-balanced", "--json",
                          "--model", "linear")
    assert code == 0, err
    assert {f["model"] for f in json.loads(out)["fits"]} == {"linear"}
    code, out, err = _cli(monkeypatch, capsys, "optimise", "propose", "--family", "demo-balanced", "--n", "2")
    assert code == 0, err
    assert "proposals" in out and "device-s" in out
    code, out, err = _cli(monkeypatch, capsys, "optimise", "propose", "--family", "demo-balanced", "--min", "nonsense")
    assert code == 2 and err.strip().splitlines() == ["error: --min 'nonsense': expected METRIC=VALUE, e.g. --min "
                                                       "gsm8k=0.6"]
    code, out, err = _cli(monkeypatch, capsys, "optimise", "fit", "--family", "demo-balanced", "--model", "forest")
    assert code == 2 and "unknown surrogate model 'forest'" in err
