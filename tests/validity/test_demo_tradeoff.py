"""The demo's "trade-off holds" is the lab's paired test over stored per-item scores, not overlapping intervals."""

from __future__ import annotations

import numpy as np

from mixlab.recipes.demo import trade_off

from .helpers import add_scored_run


def _rows(math_run, chat_run, metrics_math, metrics_chat):
    return [{"run_id": math_run, "trainer": "sft", "mixture": "demo-math-heavy", "metrics": metrics_math},
            {"run_id": chat_run, "trainer": "sft", "mixture": "demo-chat-heavy", "metrics": metrics_chat}]


def test_trade_off_uses_the_paired_test(store):
    rng = np.random.default_rng(0)
    base = (rng.random(300) < 0.4).astype(float)
    up = base.copy()
    up[np.flatnonzero(base == 0)[:25]] = 1.0  # +25 items, none lost: McNemar p ~ 3e-8
    add_scored_run(store, "math", "proc-math-l1", up)
    add_scored_run(store, "chat", "proc-math-l1", base)
    add_scored_run(store, "math", "proc-chat-l1", base)
    add_scored_run(store, "chat", "proc-chat-l1", base)  # no gain on chat: not shown
    # Interval summaries that overlap (the unpaired rule would say "not separated" for math).
    m = {"proc-math-l1": (0.48, 0.42, 0.54, 300, "accuracy"), "proc-chat-l1": (0.4, 0.35, 0.46, 300, "accuracy")}
    c = {"proc-math-l1": (0.40, 0.35, 0.46, 300, "accuracy"), "proc-chat-l1": (0.4, 0.35, 0.46, 300, "accuracy")}
    verdict = trade_off(_rows("math", "chat", m, c), store)
    lines = verdict["lines"]
    assert not verdict["holds"]
    assert "better (effect +0.083" in lines[1] and "McNemar exact" in lines[1]
    assert "NOT shown better" in lines[2]
    # Without per-item scores: the interval rule, which cannot see the paired gain.
    assert "NOT separated" in trade_off(_rows("math", "chat", m, c))["lines"][1]
