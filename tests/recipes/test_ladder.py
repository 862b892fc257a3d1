"""The scaling ladder: rung 1 trains baseline + candidates, gates decide promotion, decisions land in DuckDB."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mixlab.recipes.ladder import Gate, run_ladder

from .helpers import EVAL, SFT_ARGS, write_recipe


def test_gate_rules():
    """Point-estimate gates are gone: gates test paired per-item scores (more in tests/validity/test_ladder_gates.py)."""
    better, worse = np.array([[1.0] * 70 + [0.0] * 30]), np.array([[1.0] * 40 + [0.0] * 60])
    assert Gate(task="t", min_delta=0.0).decide(better, worse)[0]
    assert not Gate(task="t", min_delta=0.0).decide(worse, better)[0]
    assert not Gate(task="t", max_drop=0.05).decide(worse, better)[0]
    assert not Gate(task="t", min=0.5).decide(worse, None)[0]
    ok, reason, _ = Gate(task="t", min_delta=0.0).decide(np.zeros((1, 0)), worse)
    assert not ok and "no scored items" in reason


def _two_rung_ladder(tmp_path, gates, mixtures=("demo-math-heavy",), **extra):
    # 12 items: enough for the paired interval to bound a large drop, few enough to evaluate in seconds.
    write_recipe(tmp_path, "lad", [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced",
                                    "args": {**SFT_ARGS, "max_steps": 1}}], eval={**EVAL, "limit": 12})
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "recipe": "lad.yaml", "baseline": "demo-balanced", "mixtures": list(mixtures),
        "rungs": [{"name": "r1", "preset": "tiny"},
                  {"name": "r2", "preset": "tiny", "overrides": {"num_hidden_layers": 2,
                                                                 "linear_attn_config": {"kda_layers": [1],
                                                                                        "full_attn_layers": [2]}}}],
        "gates": gates, **extra,
    }))
    return path


@pytest.mark.slow
def test_two_rung_ladder_records_decisions(tmp_path, store):
    # A real non-inferiority gate: the candidate may not lose more than half the items, shown by a paired test
    # (the one-step models score alike, so the drop's upper bound stays well inside 0.5 over 12 items).
    path = _two_rung_ladder(tmp_path, [{"task": "proc-math", "max_drop": 0.5}])
    outcome = run_ladder(path, store=store, progress=False)
    decisions = store.query("SELECT * FROM ladder_decisions WHERE ladder_id = ? ORDER BY decided_at",
                            [outcome["ladder_id"]])
    assert [(d["rung"], d["mixture_name"], d["passed"]) for d in decisions] == [
        ("r1", "demo-math-heavy", True), ("r2", "demo-math-heavy", True)]
    rungs = {r["rung"] for r in store.query("SELECT rung FROM runs WHERE sweep_id = ? AND kind = 'train'",
                                            [outcome["ladder_id"]])}
    assert rungs == {"r1", "r2"}
    r2 = store.query("SELECT config FROM runs WHERE rung = 'r2' AND mixture_name = 'demo-math-heavy'")[0]
    assert '"num_hidden_layers": 2' in r2["config"]
    assert all(d["baseline_run_id"] and "non-inferiority" in d["reason"] and "alpha=0.05" in d["reason"]
               for d in decisions)


@pytest.mark.slow
def test_ladder_rejects_a_mixture_end_to_end(tmp_path, store):
    """Superiority must be shown by the data: one-step models do not beat the baseline, so the candidate is rejected
    at r1 (two seeds each: the gate resamples seeds and items), recorded with its test, and never trained at r2."""
    path = _two_rung_ladder(tmp_path, [{"task": "proc-math", "min_delta": 0.0}], seeds=[0, 1])
    outcome = run_ladder(path, store=store, progress=False)
    assert outcome["survivors"] == []
    decisions = store.ladder_decisions(outcome["ladder_id"])
    assert [(d["rung"], d["mixture_name"], d["passed"]) for d in decisions] == [("r1", "demo-math-heavy", False)]
    gates = decisions[0]["gates"]
    gate = (json.loads(gates) if isinstance(gates, str) else gates)[0]
    assert gate["passed"] is False and gate["test"] == "paired bootstrap over items and seeds"
    assert gate["alpha"] == 0.05 and gate["n_items"] == 12 and gate["n_seeds"] == 2
    assert "superiority" in decisions[0]["reason"] and len(gate["runs"]) == len(gate["baseline_runs"]) == 2
    trained = store.query("SELECT rung, mixture_name, seed FROM runs WHERE sweep_id = ? AND kind = 'train'",
                          [outcome["ladder_id"]])
    assert {r["rung"] for r in trained} == {"r1"}
    assert sorted((r["mixture_name"], r["seed"]) for r in trained) == [
        ("demo-balanced", 0), ("demo-balanced", 1), ("demo-math-heavy", 0), ("demo-math-heavy", 1)]
