"""One provenance record for every run row: training and eval rows record the same fields, the same way."""

from __future__ import annotations

import json

from mixlab import provenance
from mixlab.evals.runner import evaluate
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import load_recipe
from mixlab.store import RunRecord

from tests.recipes.helpers import SFT_ARGS, write_recipe

FIELDS = ("git_sha", "packages", "device")


def test_start_run_fills_provenance_for_every_kind(store):
    expected = provenance.collect()
    for kind in ("train", "eval", "sweep", "ladder"):
        store.start_run(RunRecord(run_id=kind, kind=kind))
        row = store.get_run(kind)
        assert row["git_sha"] == expected.git_sha
        assert json.loads(row["packages"]) == expected.packages
        assert row["device"] == expected.device
    assert set(expected.packages) >= {"python", "mixlab", "torch", "transformers", "duckdb"}
    # What a caller states (a row imported from elsewhere) is kept.
    store.start_run(RunRecord(run_id="given", git_sha="abc", packages={"x": "1"}, device="8x H100"))
    assert store.get_run("given")["device"] == "8x H100"


def test_training_and_eval_rows_carry_the_same_provenance(tmp_path, store):
    path = write_recipe(tmp_path, "prov", [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced",
                                            "args": {**SFT_ARGS, "max_steps": 1}}])
    recipe, text = load_recipe(path)
    trained = RecipeRunner(recipe, text, store=store, progress=False).run()[-1]
    evaluate(trained.checkpoint, ["proc-math"], limit=1, store=store, run_id="standalone-eval", progress=False,
             gen_config={"max_new_tokens": 2})
    train_row, eval_row = store.get_run(trained.run_id), store.get_run("standalone-eval")
    assert (train_row["kind"], eval_row["kind"]) == ("train", "eval")
    for name in FIELDS:
        assert train_row[name] and train_row[name] == eval_row[name], name
    assert train_row["git_sha"] == provenance.git_sha()
