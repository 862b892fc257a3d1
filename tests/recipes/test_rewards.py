"""GRPO rewards: each verifier scores only the rows whose `verifier` column names it (None elsewhere)."""

from __future__ import annotations

import json

from mixlab.evals.procedural import generate
from mixlab.recipes.rewards import make_reward_funcs


def test_rewards_route_by_verifier_column():
    math_item = generate("math", "train", 1, seed=3, level=1)[0]
    chat_item = generate("chat", "train", 1, seed=3, level=1)[0]
    math_fn, code_fn, format_fn = make_reward_funcs()
    verifier = ["math", "math", "format", "format"]
    truth = [math_item["ground_truth"], math_item["ground_truth"], json.dumps(chat_item["ground_truth"]),
             json.dumps(chat_item["ground_truth"])]
    completions = [[{"role": "assistant", "content": math_item["response"]}],
                   [{"role": "assistant", "content": "Answer: -12345"}],
                   [{"role": "assistant", "content": chat_item["response"]}],
                   [{"role": "assistant", "content": ""}]]
    kw = dict(completions=completions, verifier=verifier, ground_truth=truth, prompts=None)
    assert math_fn(**kw) == [1.0, 0.0, None, None]
    assert code_fn(**kw) == [None, None, None, None]
    assert format_fn(**kw) == [None, None, 1.0, 0.0]
    assert [f.__name__ for f in (math_fn, code_fn, format_fn)] == ["math_verifier", "code_verifier",
                                                                  "format_verifier"]
