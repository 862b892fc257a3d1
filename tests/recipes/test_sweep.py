"""A sweep of two mixtures: each member a real run row tagged with the sweep id, evaluated, summarised."""

from __future__ import annotations

import yaml

from mixlab.recipes.sweep import run_sweep

from .helpers import EVAL, SFT_ARGS, mixlab, write_recipe


def _sweep(tmp_path, **extra):
    write_recipe(tmp_path, "base", [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced",
                                     "args": {**SFT_ARGS, "max_steps": 2}}], eval=EVAL)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "two", "recipe": "base.yaml",
                                    "mixtures": ["demo-math-heavy", "demo-chat-heavy"], **extra}))
    return path


def test_sweep_of_two_mixtures_in_two_processes(tmp_path, store):
    outcome = run_sweep(_sweep(tmp_path, parallel=2), store=store, progress=False)
    assert not outcome["failures"]
    runs = store.query("SELECT * FROM runs WHERE sweep_id = ? ORDER BY kind, mixture_name", [outcome["sweep_id"]])
    train = [r for r in runs if r["kind"] == "train"]
    assert [r["mixture_name"] for r in train] == ["demo-chat-heavy", "demo-math-heavy"]
    assert {r["status"] for r in runs} == {"completed"}
    assert [r["kind"] for r in runs].count("sweep") == 1
    for run in train:
        assert store.query("SELECT count(*) AS n FROM eval_metrics WHERE run_id = ? AND task = 'proc-math' "
                           "AND metric = 'accuracy'", [run["run_id"]])[0]["n"] == 1
    assert train[0]["mixture_id"] != train[1]["mixture_id"]


def test_sweep_validation_error_names_field(tmp_path):
    path = _sweep(tmp_path, paralel=2)
    proc = mixlab("sweep", str(path))
    assert proc.returncode == 2 and "paralel" in proc.stderr and "did you mean 'parallel'" in proc.stderr
