"""Ladder gates decide on paired per-item scores from DuckDB, state their test, alpha and effect, and reject."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from mixlab.recipes.ladder import Gate, LadderSpec, decide

from .helpers import add_scored_run

TASK = "proc-math"


def _binary(rng, p, n=200):
    return (rng.random(n) < p).astype(float)


def test_gate_rules_on_paired_scores():
    a = np.array([[1.0] * 60 + [0.0] * 40])
    b = np.array([[1.0] * 40 + [0.0] * 60])
    ok, reason, record = Gate(task="t", min_delta=0.0).decide(a, b)
    assert ok and "McNemar exact" in reason and "alpha=0.05" in reason and "effect +0.200" in reason
    assert record["test"] == "McNemar exact" and record["effect"] == pytest.approx(0.2)
    assert not Gate(task="t", min_delta=0.0).decide(b, a)[0]
    assert Gate(task="t", max_drop=0.35).decide(b, a)[0]  # drop 0.2, upper part of its CI within 0.35
    assert not Gate(task="t", max_drop=0.05).decide(b, a)[0]
    assert Gate(task="t", min=0.45).decide(a, None)[0] and not Gate(task="t", min=0.6).decide(a, None)[0]
    ok, reason, _ = Gate(task="t", min_delta=0.0).decide(np.zeros((1, 0)), b)
    assert not ok and "no scored items" in reason
    with pytest.raises(ValidationError):
        Gate(task="t", min_delta=0.0, max_drop=0.1)
    with pytest.raises(ValidationError):
        Gate(task="t", min_delta=0.0, alpha=0.7)
    with pytest.raises(ValidationError):
        LadderSpec(name="x", recipe="r", baseline="b", mixtures=["m"], rungs=[{"name": "r1", "preset": "tiny"}],
                   gates=[{"task": "t", "min": 0.1}], seed=1, seeds=[1, 2])


def test_ladder_decision_rejects_a_worse_mixture_from_stored_samples(store):
    rng = np.random.default_rng(0)
    base = _binary(rng, 0.5)
    worse = base.copy()
    worse[np.flatnonzero(base == 1)[:30]] = 0  # loses 30 items, wins none
    add_scored_run(store, "base", TASK, base)
    add_scored_run(store, "worse", TASK, worse)
    add_scored_run(store, "same", TASK, base)
    gates = [Gate(task=TASK, metric="accuracy", max_drop=0.05)]
    passed, reason, records = decide(store, gates, ["worse"], ["base"])
    assert not passed and "non-inferiority" in reason and "FAIL" in reason
    assert records[0]["n_items"] == 200 and records[0]["effect"] == pytest.approx(-0.15)
    assert records[0]["runs"] == ["worse"] and records[0]["baseline_runs"] == ["base"]
    passed, reason, _ = decide(store, gates, ["same"], ["base"])
    assert passed, reason
    # Superiority must be shown, not assumed: an identical run is not promoted by min_delta 0.
    assert not decide(store, [Gate(task=TASK, metric="accuracy", min_delta=0.0)], ["same"], ["base"])[0]


def test_gates_pair_items_and_use_every_seed(store):
    rng = np.random.default_rng(1)
    items = rng.normal(6, 2, 150)
    for s in range(3):
        add_scored_run(store, f"base-s{s}", "mt-bench", items + rng.normal(0, 0.4, 150), metric="score", seed=s)
        add_scored_run(store, f"cand-s{s}", "mt-bench", items + 0.5 + rng.normal(0, 0.4, 150), metric="score",
                       seed=s, unscored=[0, 1])  # two answers stored but not scored: left out of the pairing
    gate = Gate(task="mt-bench", metric="score", min_delta=0.0)
    cands, bases = [f"cand-s{s}" for s in range(3)], [f"base-s{s}" for s in range(3)]
    passed, reason, records = decide(store, [gate], cands, bases)
    assert passed, reason
    assert records[0]["test"] == "paired bootstrap over items and seeds"
    assert records[0]["n_items"] == 148 and records[0]["n_seeds"] == 3
    # A margin larger than the real gain fails.
    assert not decide(store, [Gate(task="mt-bench", metric="score", min_delta=0.6)], cands, bases)[0]
