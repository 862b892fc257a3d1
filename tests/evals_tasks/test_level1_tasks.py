"""Level-1 procedural tasks (the CPU demo's signal): level-1 held-out items only, resolvable as a suite."""

from __future__ import annotations

import pytest

from mixlab.evals.suites import resolve_suite
from mixlab.evals.tasks.base import get_task


@pytest.mark.parametrize("name", ["proc-math-l1", "proc-code-l1", "proc-chat-l1"])
def test_level1_tasks_hold_only_level1_heldout_items(name):
    task = get_task(name)
    items = task.load(None, limit=40)
    assert len(items) == 40
    assert {item.meta["level"] for item in items} == {1}
    score = task.score(items[0], task.reference_output(items[0]))
    assert score.primary == 1.0
    assert task.score(items[0], "").primary == 0.0


def test_procedural_l1_suite_resolves():
    tasks, _ = resolve_suite("procedural-l1")
    assert tasks == ["proc-math-l1", "proc-code-l1", "proc-chat-l1"]
