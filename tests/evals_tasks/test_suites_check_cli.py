"""Suites resolve lazily; `eval check` logic (derangement, failures); `mixlab eval list/check` as real processes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.evals.check import check_task, derangement
from mixlab.evals.suites import SUITES, resolve_suite, suite_tasks
from mixlab.evals.tasks.base import EvalItem, Score, Task, task_names

MIXLAB = procs.argv(["-c", "from mixlab.cli import main; main()"])


def _local_cli():
    """Just the commands under test (the full `mixlab` app imports torch: 5 s a process on 2 cores)."""
    import typer
    from typer.testing import CliRunner

    from mixlab.evals.cli_tasks import register

    app, eval_app = typer.Typer(), typer.Typer()
    register(app, eval_app)
    app.add_typer(eval_app, name="eval")
    return lambda *args: CliRunner().invoke(app, list(args), catch_exceptions=False)


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([*MIXLAB, *args], capture_output=True, text=True, timeout=300, env=procs.env(env))


def test_resolve_suite_present_missing_and_mixes():
    present, missing = resolve_suite("leaderboard")
    assert present + missing == [t for t in SUITES["leaderboard"] if t in present + missing]
    assert {"gsm8k", "math500"} <= set(present)
    assert set(missing).isdisjoint(task_names())
    assert resolve_suite("gsm8k,ifeval,gsm8k") == (["gsm8k", "ifeval"], [])
    assert set(resolve_suite("all")[0]) == set(task_names())
    assert suite_tasks("procedural") == ["proc-math", "proc-code", "proc-chat"]


def test_unknown_suite_suggests():
    with pytest.raises(MixlabError, match="did you mean 'leaderboard'"):
        resolve_suite("leaderbord")
    with pytest.raises(MixlabError, match="names no tasks"):
        resolve_suite(" , ")


def test_suite_with_only_missing_tasks_is_an_error(monkeypatch):
    monkeypatch.setitem(SUITES, "ghost", ("not-a-task-yet",))
    assert resolve_suite("ghost") == ([], ["not-a-task-yet"])
    with pytest.raises(MixlabError, match="none of its tasks"):
        suite_tasks("ghost")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 101])
def test_derangement_has_no_fixed_points(n):
    perm = derangement(n, seed=3)
    assert sorted(perm) == list(range(n))
    if n >= 2:
        assert all(perm[i] != i for i in range(n))
    assert perm == derangement(n, seed=3)


class _AcceptsAnything(Task):
    """A broken scorer: the shuffled check must expose it."""

    name = "test-accepts-anything"
    category = "leaderboard"
    metrics = ("accuracy",)

    def load(self, data_root, limit=None):
        return [EvalItem(f"i{k}", [{"role": "user", "content": f"q{k}"}], reference=str(k)) for k in range(20)]

    def score(self, item, output):
        return Score({"accuracy": 1.0})

    def reference_output(self, item):
        return item.reference


def test_check_exposes_a_scorer_that_accepts_anything():
    own = check_task(_AcceptsAnything())
    shuffled = check_task(_AcceptsAnything(), shuffle=True)
    assert own.primary == 1.0 and shuffled.primary == 1.0  # the tell-tale: shuffled is not near 0
    assert len(shuffled.failures) == 10 and shuffled.failures[0]["item_id"] == "i0"


def test_check_of_task_without_references_is_a_clear_error(bench_slices):
    with pytest.raises(MixlabError, match="ifeval has no reference solutions"):
        check_task("ifeval", data_root=bench_slices, limit=3)


def test_cli_list_json(bench_slices):
    proc = _local_cli()("eval", "list", "--json", "--data-root", str(bench_slices))
    assert proc.exit_code == 0, proc.output
    payload = json.loads(proc.stdout)
    rows = {row["task"]: row for row in payload["tasks"]}
    assert {"gsm8k", "math500", "ifeval", "proc-math", "proc-code", "proc-chat"} <= set(rows)
    assert rows["gsm8k"]["data"] == "yes" and rows["gsm8k"]["metrics"] == ["exact_match_strict",
                                                                         "exact_match_flexible"]
    assert rows["proc-chat"]["category"] == "usability"
    assert rows["gsm8k"]["references"] == "yes" and rows["ifeval"]["references"] == "no"
    assert payload["suites"]["procedural"] == ["proc-math", "proc-code", "proc-chat"]


def test_cli_list_reports_missing_data(tmp_path):
    proc = _local_cli()("eval", "list", "--json", "--data-root", str(tmp_path))
    rows = {row["task"]: row for row in json.loads(proc.stdout)["tasks"]}
    assert rows["gsm8k"]["data"] == "missing" and rows["proc-math"]["data"] == "yes"


def test_cli_table_output(bench_slices):
    cli = _local_cli()
    proc = cli("eval", "check", "gsm8k", "--limit", "20", "--data-root", str(bench_slices))
    assert proc.exit_code == 0, proc.output
    assert "exact_match_strict" in proc.stdout and "1.0000" in proc.stdout
    proc = cli("eval", "check", "math500", "--limit", "20", "--json", "--data-root", str(bench_slices))
    result = json.loads(proc.stdout)
    assert result["n"] == 20 and result["primary"] == 1.0 and result["metrics"]["accuracy"]["method"] == "wilson"
    listing = cli("eval", "list")
    assert "gsm8k" in listing.stdout and "suite procedural" in listing.stdout


def test_cli_check_json_and_thresholds(bench_slices):
    proc = _local_cli()("eval", "check", "gsm8k", "--json", "--limit", "60", "--min-score", "0.99",
                        "--data-root", str(bench_slices))
    assert proc.exit_code == 0, proc.output
    result = json.loads(proc.stdout)
    assert result["n"] == 60 and result["primary"] == 1.0 and result["metrics"]["exact_match_flexible"]["mean"] == 1.0
    # The real `mixlab` process: the exit status must reach the shell.
    # math500 also exercises the math-verify worker processes under the real console entry point.
    proc = run_cli("eval", "check", "math500", "--json", "--limit", "40", "--shuffle", "--min-score", "0.99",
                   "--data-root", str(bench_slices))
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["primary"] < 0.1 and result["n"] == 40
    assert round(result["primary"] * 40) == result["identical_gold_pairs"]


def test_cli_errors_are_one_line():
    proc = run_cli("eval", "check", "gsm8")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown task 'gsm8' (did you mean 'gsm8k'?)")
    with pytest.raises(MixlabError) as err:  # the same path in-process: missing data names task, path, hub
        _local_cli()("eval", "check", "gsm8k", "--data-root", "/nonexistent/data")
    assert "gsm8k" in str(err.value) and "/nonexistent/data/gsm8k/test.jsonl" in str(err.value)
    assert "openai/gsm8k" in str(err.value)
