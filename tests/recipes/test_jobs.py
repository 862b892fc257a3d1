"""Recipe jobs (recipes/jobs.py), as `mixlab demo` runs them: a two-stage recipe split into jobs (first stage, its
eval, the later stage resumed, its eval) on a worker process gives the numbers of one plain `RecipeRunner.run()`:
same losses, same eval metrics, same weights. A failed job skips the jobs after it; the worker takes the next."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mixlab.errors import MixlabError
from mixlab.recipes.demo import demo_jobs
from mixlab.recipes.jobs import Job, run_graph, start_workers
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import load_recipe
from mixlab.store import Store

from .helpers import EVAL, SFT_ARGS, write_recipe

STAGES = [{"name": "a", "trainer": "sft", "mixture": "demo-math-heavy", "args": SFT_ARGS},
          {"name": "b", "trainer": "sft", "mixture": "demo-chat-heavy", "args": SFT_ARGS}]


def _numbers(store: Store) -> dict[str, tuple]:
    out = {}
    for run in store.query("SELECT run_id, stage, checkpoint_path FROM runs WHERE kind = 'train' ORDER BY stage"):
        losses = store.query("SELECT step, value FROM train_metrics WHERE run_id = ? AND name = 'loss' "
                             "ORDER BY step", [run["run_id"]])
        metrics = sorted((m["task"], m["metric"], m["mean"]) for m in store.metrics_of_runs([run["run_id"]]))
        weights = hashlib.sha256((Path(run["checkpoint_path"]) / "model.safetensors").read_bytes()).hexdigest()
        out[run["stage"]] = ([(r["step"], r["value"]) for r in losses], metrics, weights)
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_jobs_on_a_worker_match_one_plain_run(tmp_path, isolated_runs):
    path = write_recipe(tmp_path, "two", STAGES, eval=EVAL)
    recipe, text = load_recipe(path)
    plain = Store(tmp_path / "plain.duckdb")
    RecipeRunner(recipe, text, store=plain, progress=False).run()

    store = Store()
    runner = RecipeRunner(recipe, text, store=store, progress=False)
    jobs = demo_jobs([("two", path, ["a", "b"])], {"two": runner.invocation}, None, tmp_path)
    assert [j.id for j in jobs] == ["two/a/train", "two/rest/train", "two/a/eval", "two/b/eval"]
    workers = start_workers(1, tmp_path)
    failures = run_graph(jobs, workers, store=store, progress=False)
    assert failures == {}
    assert not workers[0].alive  # closed at the end
    ours, reference = _numbers(store), _numbers(plain)
    assert set(ours) == {"a", "b"} and all(ours[s][1] for s in ours)  # both stages evaluated
    assert ours == reference


def test_failed_job_skips_what_needs_it(tmp_path, isolated_runs):
    missing = str(tmp_path / "missing.yaml")
    jobs = [Job("x/train", "train", missing, "inv-x"), Job("x/eval", "eval", missing, "inv-x", stage="a",
                                                           after=("x/train",))]
    failures = run_graph(jobs, store=Store(), progress=False)
    assert "missing.yaml" in failures["x/train"] and failures["x/eval"] == "skipped: x/train failed"
    with pytest.raises(MixlabError, match="unknown job"):
        run_graph([Job("y", "eval", missing, "inv", after=("nope",))])


@pytest.mark.slow
def test_worker_reports_a_failed_job_and_takes_the_next(tmp_path, isolated_runs):
    bad = Job("bad", "eval", str(tmp_path / "missing.yaml"), "inv", stage="a", log=str(tmp_path / "bad.log"))
    other = Job("other", "kind?", str(tmp_path / "missing.yaml"), "inv", log=str(tmp_path / "other.log"))
    workers = start_workers(1, tmp_path)
    failures = run_graph([bad, other], workers, progress=False)
    assert "missing.yaml" in failures["bad"] and "unknown kind" in failures["other"]
    assert "Traceback" in (tmp_path / "bad.log").read_text()  # the job's own log has the details
