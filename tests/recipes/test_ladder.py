"""The scaling ladder: rung 1 trains baseline + candidates, gates decide promotion, decisions land in DuckDB."""

from __future__ import annotations

import pytest
import yaml

from mixlab.recipes.ladder import Gate, run_ladder

from .helpers import EVAL, SFT_ARGS, write_recipe


def test_gate_rules():
    assert Gate(task="t", min_delta=0.0).check(0.5, 0.4)[0]
    assert not Gate(task="t", min_delta=0.05).check(0.42, 0.4)[0]
    assert Gate(task="t", max_drop=0.05).check(0.37, 0.4)[0]
    assert not Gate(task="t", max_drop=0.05).check(0.3, 0.4)[0]
    assert not Gate(task="t", min=0.2).check(0.1, None)[0]
    ok, reason = Gate(task="t", min_delta=0.0).check(None, 0.4)
    assert not ok and "no score" in reason


@pytest.mark.slow
def test_two_rung_ladder_records_decisions(tmp_path, store):
    write_recipe(tmp_path, "lad", [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced",
                                    "args": {**SFT_ARGS, "max_steps": 1}}], eval=EVAL)
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "recipe": "lad.yaml", "baseline": "demo-balanced", "mixtures": ["demo-math-heavy"],
        "rungs": [{"name": "r1", "preset": "tiny"},
                  {"name": "r2", "preset": "tiny", "overrides": {"num_hidden_layers": 2,
                                                                 "linear_attn_config": {"kda_layers": [1],
                                                                                        "full_attn_layers": [2]}}}],
        "gates": [{"task": "proc-math", "min_delta": -1.0}],
    }))
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
    assert all(d["baseline_run_id"] and "delta" in d["reason"] for d in decisions)
