"""The eval runner end to end on real tasks, a real tiny model and a real DuckDB file."""

from __future__ import annotations

import json
import time
import sys
from typing import ClassVar

import pytest

from mixlab.errors import MixlabError
from mixlab.evals.backends import get_backend
from mixlab.evals.runner import evaluate
from mixlab.evals.tasks.base import EvalItem, Score, Task


class LetterTask(Task):
    """Defined here so the runner is tested independently of the benchmark tasks: does the answer contain 'e'?"""

    name = "test-letter-e"
    category = "leaderboard"
    metrics = ("has_e", "length_over_10")
    max_new_tokens = 12
    n_items: ClassVar[int] = 6

    def load(self, data_root, limit=None):
        words = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "honeydew"][: self.n_items]
        items = [EvalItem(f"q{i}", [{"role": "user", "content": f"Say {w}."}], reference=w) for i, w in enumerate(words)]
        return items if limit is None else items[:limit]

    def score(self, item, output):
        return Score({"has_e": float("e" in output), "length_over_10": float(len(output) > 10)})


class FlakyJudgedTask(LetterTask):
    """Its batch scorer fails from the second chunk on while `fail` is set (like a judge endpoint dying)."""

    name = "test-flaky"
    fail = True
    calls = 0

    def score_batch(self, items, completions, progress=None):
        type(self).calls += 1
        if self.fail and type(self).calls > 1:
            raise MixlabError("judge endpoint went away")
        return [self.score(i, c.text) for i, c in zip(items, completions)]


@pytest.fixture
def backend(llama_model, chat_tokenizer):
    return get_backend("torch", llama_model, chat_tokenizer, batch_size=4)


def test_evaluate_writes_runs_samples_and_metrics(store, backend):
    results = evaluate("llama-random", [LetterTask()], backend=backend, store=store, progress=False)
    assert results.ok
    task = results["test-letter-e"]
    assert task.n_samples == 6
    runs = store.query("SELECT * FROM eval_runs")
    assert len(runs) == 1 and runs[0]["status"] == "completed" and runs[0]["n_samples"] == 6
    assert json.loads(runs[0]["gen_config"])["max_new_tokens"] == 12
    assert runs[0]["backend"] == "torch" and runs[0]["run_id"] == results.run_id
    samples = store.query("SELECT * FROM eval_samples ORDER BY item_id")
    assert [s["item_id"] for s in samples] == [f"q{i}" for i in range(6)]
    assert all(s["prompt"].startswith("Say ") and s["prompt_tokens"] > 0 for s in samples)
    assert all(0 < s["output_tokens"] <= 12 for s in samples)
    # The stored per-sample scores and the metric agree (nothing hard-coded).
    has_e = [s["score"] for s in samples]
    metric = task.metric("has_e")
    assert metric.n == 6 and metric.mean == pytest.approx(sum(has_e) / 6)
    assert metric.ci_method == "wilson" and metric.ci_low <= metric.mean <= metric.ci_high
    assert all((s["passed"] is True) == (s["score"] == 1.0) for s in samples)
    db_metrics = {r["metric"]: r for r in store.query("SELECT * FROM eval_metrics")}
    assert {"has_e", "length_over_10", "style/chars", "style/refusal", "style/markdown_density"} <= set(db_metrics)
    assert db_metrics["style/chars"]["category"] == "usability" and db_metrics["has_e"]["category"] == "leaderboard"
    extra = json.loads(samples[0]["extra"])
    assert set(extra["scores"]) == {"has_e", "length_over_10"} and "chars" in extra["style"]
    # The eval got its own run row, completed.
    run = store.get_run(results.run_id)
    assert run["kind"] == "eval" and run["status"] == "completed"


def test_eval_id_keys_on_generation_config_and_rerun_is_idempotent(store, backend):
    first = evaluate("llama-random", [LetterTask()], backend=backend, store=store, progress=False)
    again = evaluate("llama-random", [LetterTask()], backend=backend, store=store, progress=False)
    assert again["test-letter-e"].eval_id == first["test-letter-e"].eval_id
    assert again["test-letter-e"].reused == 6  # nothing regenerated
    assert store.query("SELECT count(*) AS n FROM eval_samples")[0]["n"] == 6
    assert store.query("SELECT count(*) AS n FROM eval_metrics WHERE metric = 'has_e'")[0]["n"] == 1
    other = evaluate("llama-random", [LetterTask()], backend=backend, store=store, progress=False,
                     gen_config={"max_new_tokens": 5})
    assert other["test-letter-e"].eval_id != first["test-letter-e"].eval_id
    assert store.query("SELECT count(*) AS n FROM eval_runs")[0]["n"] == 2


def test_failure_mid_run_keeps_finished_items_and_resumes(store, backend):
    FlakyJudgedTask.calls, FlakyJudgedTask.fail = 0, True
    failed = evaluate("llama-random", [FlakyJudgedTask()], backend=backend, store=store, chunk_size=2, progress=False)
    assert not failed.ok
    result = failed["test-flaky"]
    assert result.status == "failed" and "judge endpoint went away" in result.error
    row = store.query("SELECT status, error, n_samples FROM eval_runs")[0]
    assert row["status"] == "failed" and "went away" in row["error"] and row["n_samples"] == 2
    # The first chunk is kept scored, the second chunk's answers unscored (the re-run judges them, no generation).
    assert store.query("SELECT count(*) AS n FROM eval_samples")[0]["n"] == 4
    extras = [json.loads(r["extra"]) for r in store.query("SELECT extra FROM eval_samples")]
    assert sum("scores" in e for e in extras) == 2 and sum("unscored" in e for e in extras) == 2
    assert store.query("SELECT count(*) AS n FROM eval_metrics")[0]["n"] == 0
    assert store.get_run(failed.run_id)["status"] == "failed"
    FlakyJudgedTask.fail = False
    resumed = evaluate("llama-random", [FlakyJudgedTask()], backend=backend, store=store, chunk_size=2,
                       progress=False, run_id=failed.run_id)
    assert resumed.ok and resumed["test-flaky"].reused == 2
    assert store.query("SELECT count(*) AS n FROM eval_samples")[0]["n"] == 6
    assert store.query("SELECT status FROM eval_runs")[0]["status"] == "completed"


def test_procedural_suite_on_real_tasks(store, backend):
    results = evaluate("llama-random", "procedural", backend=backend, store=store, limit=2, progress=False,
                       gen_config={"max_new_tokens": 16})
    assert results.ok, [t.error for t in results.tasks]
    assert [t.task for t in results.tasks] == ["proc-math", "proc-code", "proc-chat"]
    assert store.query("SELECT count(*) AS n FROM eval_samples")[0]["n"] == 6
    for t in results.tasks:
        primary = t.metrics[0]
        assert primary.n == 2 and 0.0 <= primary.mean <= 1.0


def test_bad_input(store, backend):
    with pytest.raises(MixlabError, match="unknown suite or task 'procedrual'.*did you mean 'procedural'"):
        evaluate("x", "procedrual", backend=backend, store=store, progress=False)
    with pytest.raises(MixlabError, match="need a judge"):
        evaluate("x", ["mt-bench"], backend=backend, store=store, progress=False)
    with pytest.raises(MixlabError, match="need an LLM judge"):
        evaluate("x", ["mt-bench"], backend=backend, store=store, judge="rubric", progress=False)
    with pytest.raises(MixlabError, match="judge spec"):
        evaluate("x", ["mt-bench"], backend=backend, store=store, judge="gpt4", progress=False)


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the real `mixlab` entry point in-process (a subprocess would re-import torch: ~20 s on 2 busy cores)."""
    from mixlab.cli import main

    monkeypatch.setattr(sys, "argv", ["mixlab", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_eval_on_a_preset_checkpoint(monkeypatch, capsys, db_path):
    code, out, err = _cli(monkeypatch, capsys, "eval", "tiny", "--suite", "proc-math", "--limit", "3",
                          "--max-new-tokens", "8", "--json")
    assert code == 0, err[-2000:]
    payload = json.loads(out)
    assert payload["ok"] and payload["tasks"][0]["task"] == "proc-math" and payload["tasks"][0]["n_samples"] == 3
    from mixlab.store import Store

    rows = Store(db_path).query("SELECT checkpoint, task, status, gen_config FROM eval_runs")
    assert [(r["checkpoint"], r["task"], r["status"]) for r in rows] == [("tiny", "proc-math", "completed")]
    assert json.loads(rows[0]["gen_config"])["max_new_tokens"] == 8
    # The table form, and `eval run` spelled out.
    code, out, err = _cli(monkeypatch, capsys, "eval", "run", "tiny", "--suite", "proc-math", "--limit", "3",
                          "--max-new-tokens", "8")
    assert code == 0 and "proc-math" in out and "95% CI" in out
    code, out, err = _cli(monkeypatch, capsys, "eval", "tiny", "--suite", "nope", "--limit", "1")
    assert code == 2 and err.startswith("error: unknown suite or task 'nope'")


def test_checkpoint_folder_rewritten_with_new_weights_is_a_new_evaluation(tmp_path, store, mixlab_tiny):
    import copy

    import torch

    model, tokenizer = mixlab_tiny
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    opts = {"device": "cpu", "batch_size": 4}
    first = evaluate(str(folder), ["proc-math"], backend="torch", backend_opts=opts, limit=2, store=store,
                     progress=False, gen_config={"max_new_tokens": 6})
    same = evaluate(str(folder), ["proc-math"], backend="torch", backend_opts=opts, limit=2, store=store,
                    progress=False, gen_config={"max_new_tokens": 6})
    assert same["proc-math"].eval_id == first["proc-math"].eval_id and same["proc-math"].reused == 2
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.get_output_embeddings().weight.mul_(-1.0)
    time.sleep(0.01)  # distinct mtimes even on coarse file systems
    changed.save_pretrained(folder)
    after = evaluate(str(folder), ["proc-math"], backend="torch", backend_opts=opts, limit=2, store=store,
                     progress=False, gen_config={"max_new_tokens": 6})
    assert after["proc-math"].eval_id != first["proc-math"].eval_id and after["proc-math"].reused == 0
    rows = store.query("SELECT DISTINCT checkpoint FROM eval_runs")
    assert rows == [{"checkpoint": str(folder.resolve())}]
