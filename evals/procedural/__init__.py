"""Procedural sources: seeded, unlimited, verifiable math / code / chat data with disjoint held-out splits.

    generate(kind, split, n, seed=0, level=None) -> list[dict]
    verify(item_or_ground_truth, verifier=None, response="") -> float in [0, 1]

Items: {"id", "kind", "level", "prompt", "response", "ground_truth", "verifier"}. Splits are decided by a hash
of each problem's canonical form (see `_split`); generation draws problems and rejects the other split's, so
train and held-out never share a problem, and split-partitioned vocabularies keep their texts n-gram-disjoint.
Within one call items are unique by prompt. The same (kind, split, n, seed, level) always gives the same list.
"""

from __future__ import annotations

import random
from typing import Any

from mixlab.errors import MixlabError
from mixlab.evals.procedural import chat_format, code_tasks, math_problems
from mixlab.evals.procedural._split import SPLITS, item_id, split_of
from mixlab.yamlio import did_you_mean

GENERATORS = {"math": math_problems, "code": code_tasks, "chat": chat_format}
KINDS = tuple(GENERATORS)
VERIFIERS = {"math": "math", "code": "code", "chat": "format"}
LEVELS = {kind: module.LEVELS for kind, module in GENERATORS.items()}

__all__ = ["generate", "verify", "KINDS", "SPLITS", "LEVELS", "VERIFIERS", "split_of"]


def _check_args(kind: str, split: str, n: int, level: int | None) -> None:
    if kind not in GENERATORS:
        hint = did_you_mean(str(kind), KINDS)
        raise MixlabError(f"unknown procedural kind {kind!r}{hint}; known: {list(KINDS)}")
    if split not in SPLITS:
        raise MixlabError(f"unknown procedural split {split!r}; known: {list(SPLITS)}")
    if not isinstance(n, int) or n < 0:
        raise MixlabError(f"procedural {kind}: n must be a non-negative integer, got {n!r}")
    if level is not None and level not in LEVELS[kind]:
        raise MixlabError(f"procedural {kind}: level must be one of {list(LEVELS[kind])} or None, got {level!r}")


def generate(kind: str, split: str, n: int, seed: int = 0, level: int | None = None) -> list[dict[str, Any]]:
    """`n` unique items of one kind and split; `level=None` mixes all levels uniformly."""
    _check_args(kind, split, n, level)
    module = GENERATORS[kind]
    rng = random.Random(f"mixlab-procedural|{kind}|{split}|{level}|{seed}")
    levels = LEVELS[kind] if level is None else (level,)
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    # A split with too few distinct problems fails instead of looping: give up after this many draws in a row
    # without a new item (a held-out split accepts ~1 in 5 draws, so this only trips on exhaustion).
    misses, max_misses = 0, 5000
    while len(items) < n:
        lvl = rng.choice(levels)
        key, spec = module.draw(lvl, rng)
        item = module.build(lvl, split, spec, rng) if split_of(key) == split else None
        if item is None or item["prompt"] in seen:
            misses += 1
            if misses > max_misses:
                raise MixlabError(
                    f"procedural {kind} level {level or 'any'} {split}: only {len(items)} distinct problems found "
                    f"for n={n}; ask for fewer rows or another level"
                )
            continue
        misses = 0
        seen.add(item["prompt"])
        items.append({"id": item_id(kind, split, lvl, item["prompt"]), "kind": kind, "level": lvl, **item})
    return items


def verify(item_or_ground_truth: Any, verifier: str | None = None, response: str = "") -> float:
    """Score a response in [0, 1]: math = final answer match, code = all asserts pass, format = all constraints."""
    ground_truth = item_or_ground_truth
    if isinstance(item_or_ground_truth, dict) and "ground_truth" in item_or_ground_truth:
        ground_truth = item_or_ground_truth["ground_truth"]
        verifier = verifier or item_or_ground_truth.get("verifier")
    if verifier == "math":
        return math_problems.verify(ground_truth, response)
    if verifier == "code":
        return code_tasks.verify(ground_truth, response)
    if verifier == "format":
        return chat_format.verify(ground_truth, response)
    raise MixlabError(f"unknown verifier {verifier!r}; known: ['code', 'format', 'math']")
