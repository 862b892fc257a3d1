"""Self-contained checkers for verifiable format constraints (IFEval-style).

A constraint is a JSON-serialisable dict `{"type": ..., **params}`; `check(constraint, response)` says whether a
response satisfies it, `instruction(constraint)` is the sentence that asks for it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

_WORD = re.compile(r"\b\w+\b")
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if _WORD.search(s)]


def _strip_fences(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```(?:json)?\s*", "", text)
        text = re.sub(r"\s*```$", "", text)
    return text


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def _is_json(text: str) -> bool:
    try:
        json.loads(_strip_fences(text))
    except ValueError:
        return False
    return True


_CHECKS: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "lowercase": lambda c, r: any(ch.isalpha() for ch in r) and r == r.lower(),
    "uppercase": lambda c, r: any(ch.isalpha() for ch in r) and r == r.upper(),
    "bullets": lambda c, r: len(_BULLET.findall(r)) == c["n"],
    "ends_with": lambda c, r: r.strip().strip('"').lower().endswith(c["phrase"].strip().lower()),
    "starts_with": lambda c, r: r.strip().strip('"').lower().startswith(c["phrase"].strip().lower()),
    "include_word": lambda c, r: _has_word(r, c["word"]),
    "forbid_word": lambda c, r: not _has_word(r, c["word"]),
    "json": lambda c, r: _is_json(r),
    "max_words": lambda c, r: 0 < len(_words(r)) <= c["n"],
    "min_words": lambda c, r: len(_words(r)) >= c["n"],
    "sentences": lambda c, r: len(_sentences(r)) == c["n"],
    "no_commas": lambda c, r: "," not in r,
    "quoted": lambda c, r: len(r.strip()) >= 2 and r.strip()[0] == '"' and r.strip()[-1] == '"',
}
CONSTRAINT_TYPES = tuple(_CHECKS)

_INSTRUCTIONS: dict[str, str] = {
    "lowercase": "Use only lowercase letters.",
    "uppercase": "Use only capital letters.",
    "bullets": "Give exactly {n} bullet points.",
    "ends_with": 'End with "{phrase}"',
    "starts_with": 'Start with "{phrase}"',
    "include_word": 'Use the word "{word}".',
    "forbid_word": 'Do not use the word "{word}".',
    "json": 'Reply in JSON with key "answer".',
    "max_words": "Use at most {n} words.",
    "min_words": "Use at least {n} words.",
    "sentences": "Write exactly {n} sentences.",
    "no_commas": "Do not use commas.",
    "quoted": "Wrap the reply in double quotes.",
}


def check(constraint: dict[str, Any], response: str) -> bool:
    kind = constraint.get("type")
    if kind not in _CHECKS:
        raise ValueError(f"unknown constraint type {kind!r}; known: {sorted(_CHECKS)}")
    try:
        return bool(_CHECKS[kind](constraint, response or ""))
    except (KeyError, TypeError):
        return False


def check_all(constraints: list[dict[str, Any]], response: str) -> list[bool]:
    return [check(c, response) for c in constraints]


def instruction(constraint: dict[str, Any]) -> str:
    return _INSTRUCTIONS[constraint["type"]].format(**constraint)
