"""proc-math / proc-code / proc-chat: fixed held-out sets, prompts identical to the generators', verifiers as
scorers, reference checks."""

from __future__ import annotations

import pytest

from mixlab.evals import procedural
from mixlab.evals.check import check_task
from mixlab.evals.tasks.base import get_task

from .junk import JUNK_OUTPUTS

KINDS = {"proc-math": "math", "proc-code": "code", "proc-chat": "chat"}


@pytest.mark.parametrize("name", list(KINDS))
def test_items_are_the_heldout_generator_items(name):
    task = get_task(name)
    items = task.load(None, limit=25)
    rows = procedural.generate(KINDS[name], "heldout", 300, seed=0)[:25]
    assert [i.item_id for i in items] == [r["id"] for r in rows]
    # The prompt is the generator's user message, unchanged: the format the model was trained on.
    assert [i.messages for i in items] == [[{"role": "user", "content": r["prompt"]}] for r in rows]
    assert all("-heldout-" in i.item_id for i in items)
    assert task.load(None, limit=25)[3].messages == items[3].messages  # deterministic
    assert len(task.load(None)) == 300


def test_categories_and_metrics():
    assert get_task("proc-math").category == "leaderboard" and get_task("proc-code").category == "leaderboard"
    assert get_task("proc-chat").category == "usability"
    assert get_task("proc-chat").metrics[0] == "format_satisfied"


@pytest.mark.parametrize("name", ["proc-math", "proc-chat"])
def test_reference_check(name):
    own = check_task(name, limit=120)
    assert own.primary == 1.0, own.failures
    shuffled = check_task(name, limit=120, shuffle=True)
    # Format constraints are loose enough that another item's answer sometimes satisfies them; math never.
    assert shuffled.primary <= (0.02 if name == "proc-math" else 0.3)


def test_proc_code_reference_check():
    pytest.importorskip("mixlab.evals.sandbox")
    own = check_task("proc-code", limit=16, workers=2)
    assert own.primary == 1.0, own.failures
    shuffled = check_task("proc-code", limit=16, workers=2, shuffle=True)
    assert shuffled.primary <= 0.1, shuffled.failures


def test_per_level_breakdown():
    result = check_task("proc-math", limit=60)
    levels = [k for k in result.metrics if k.startswith("accuracy/level:")]
    assert list(result.metrics)[0] == "accuracy" and len(levels) >= 2
    task = get_task("proc-math")
    items = task.load(None, limit=60)
    level = items[0].meta["level"]
    scores = [task.score(i, task.reference_output(i) if i is items[0] else "wrong") for i in items]
    summary = task.aggregate(scores)
    n_level = sum(1 for i in items if i.meta["level"] == level)
    assert summary[f"accuracy/level:{level}"][0] == pytest.approx(1 / n_level)
    assert summary["accuracy"][0] == pytest.approx(1 / 60)


def test_proc_chat_constraint_level_metric():
    task = get_task("proc-chat")
    item = next(i for i in task.load(None, limit=100) if len(i.reference["ground_truth"]) >= 2)
    score = task.score(item, "")
    assert score.values["format_satisfied"] == 0.0
    good = task.score(item, task.reference_output(item))
    assert good.values["format_satisfied"] == 1.0 and good.values["constraint_acc"] == 1.0


@pytest.mark.parametrize("name", ["proc-math", "proc-chat"])
def test_scorers_survive_junk(name):
    task = get_task(name)
    item = task.load(None, limit=1)[0]
    for junk in [*JUNK_OUTPUTS, None, 7]:
        score = task.score(item, junk)
        assert set(task.metrics) <= set(score.values) and all(0 <= v <= 1 for v in score.values.values())
        assert all(k in task.metrics or k.startswith(task.metrics[0] + "/level:") for k in score.values)


def test_proc_code_scorer_survives_junk():
    pytest.importorskip("mixlab.evals.sandbox")
    task = get_task("proc-code")
    item = task.load(None, limit=1)[0]
    for junk in ["", "```python\ndef f(:\n", "import os; os._exit(1)", "{" * 2000, "\x00\x01", None]:
        score = task.score(item, junk)
        assert score.values["pass@1"] == 0.0
