"""GRPO rewards from mixlab's verifiers, chosen per row by the RL dataset's `verifier` column.

One TRL reward function per verifier ("math", "code", "format"). Each scores the rows that name it and returns
None for the others, so TRL aggregates a mixed prompt set correctly and logs `rewards/<verifier>/mean` separately.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from mixlab.evals.procedural import code_tasks, verify

VERIFIERS = ("math", "code", "format")


def completion_text(completion: Any) -> str:
    """TRL passes strings for standard data and message lists for conversational data."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        parts = [m.get("content", "") for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return "".join(p for p in parts if isinstance(p, str))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def decode_ground_truth(value: Any, verifier: str) -> Any:
    """Ground truth travels through Arrow as JSON text when it is structured (test lists, constraint dicts)."""
    if isinstance(value, str) and verifier in ("code", "format"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _code_rewards(completions, verifier, ground_truth) -> list[float | None]:
    """The `code` rows of a step in one batch: their programs run in parallel in the sandbox, each verified by
    its tester process (`mixlab.evals.sandbox.run_tests`); a row whose ground truth is malformed scores 0."""
    out: list[float | None] = [None] * len(completions)
    rows, truths, texts = [], [], []
    for i, (completion, row_verifier, truth) in enumerate(zip(completions, verifier, ground_truth)):
        if row_verifier != "code":
            continue
        rows.append(i)
        truths.append(decode_ground_truth(truth, "code"))
        texts.append(completion_text(completion))
    if rows:
        for i, score in zip(rows, code_tasks.verify_many(truths, texts)):
            out[i] = score
    return out


def make_reward_funcs(verifiers: list[str] | None = None) -> list[Callable[..., list[float | None]]]:
    funcs = []
    for name in verifiers or list(VERIFIERS):

        def reward(completions, verifier=None, ground_truth=None, _name=name, **_: Any) -> list[float | None]:
            if verifier is None or ground_truth is None:
                raise ValueError("the GRPO dataset needs `verifier` and `ground_truth` columns")
            out: list[float | None] = []
            if _name == "code":
                return _code_rewards(completions, verifier, ground_truth)
            for completion, row_verifier, truth in zip(completions, verifier, ground_truth):
                if row_verifier != _name:
                    out.append(None)
                    continue
                try:
                    score = float(verify(decode_ground_truth(truth, _name), _name, completion_text(completion)))
                except Exception:  # a verifier must never crash training on a malformed completion
                    score = 0.0
                out.append(score)
            return out

        reward.__name__ = f"{name}_verifier"
        funcs.append(reward)
    return funcs
