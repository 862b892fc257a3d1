"""Cheap style statistics on any chat answer: length, repetition, refusals, markdown density, broken format.

Usability judges reward length and markdown (evals-reference §3.6, §3.7), and small models degrade by looping or
being cut off mid-structure. These numbers, stored beside every sample, make those effects visible on the
dashboard without a judge. Everything here is pure Python, deterministic, and never raises on odd input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

# Phrases that open (or make up) a refusal. Matched case-insensitively in the first part of the answer, where
# refusals live; a long helpful answer that mentions "I cannot" in passing is not a refusal.
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bi(?:'m| am)? (?:sorry|afraid)\b.{0,40}\b(?:can(?:no|')t|unable|not able|won't)\b",
    r"\bi (?:can(?:no|')t|won't|will not|am unable to|'m unable to|am not able to|'m not able to) "
    r"(?:help|assist|provide|comply|do that|fulfil|fulfill|answer|create|write|generate|support|engage)",
    r"\bas an ai(?: language model)?\b",
    r"\bi(?:'m| am) (?:just )?an ai\b",
    r"\bi must (?:decline|refuse)\b",
    r"\bi (?:decline|refuse) to\b",
    r"\b(?:it|this) (?:is|would be) (?:not appropriate|inappropriate|unethical|illegal) (?:for me )?to\b",
    r"\bi do(?:n't| not) (?:feel comfortable|think i (?:can|should))\b",
    r"\bagainst (?:my|the) (?:guidelines|policies|programming)\b",
)
_REFUSAL_RE = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE | re.DOTALL)
REFUSAL_WINDOW = 300  # characters at the start of the answer searched for a refusal

_FENCE_RE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_CODE_BLOCK_RE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_HEADER_RE = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.MULTILINE)
_LIST_RE = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+\S", re.MULTILINE)
_BOLD_RE = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_TABLE_ROW_RE = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_PAIRS = {")": "(", "]": "[", "}": "{"}


def _strip_code_blocks(text: str) -> str:
    return _CODE_BLOCK_RE.sub("\n", text)


def repeated_ngram_ratio(words: list[str], n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier n-gram (0 = no repetition, -> 1 for a loop)."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def repeated_line_ratio(text: str) -> float:
    """Fraction of non-empty lines that are exact repeats of an earlier line."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL_RE.search(text[:REFUSAL_WINDOW]))


def brackets_balanced(text: str) -> bool:
    """True when (), [] and {} nest properly, ignoring string literals and list markers such as "1)" or ":)"."""
    cleaned = re.sub(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|`[^`\n]*`", "", text)
    cleaned = re.sub(r"(?m)^\s*(?:\d{1,3}|[a-zA-Z])\)", "", cleaned)  # "1) item", "a) item"
    cleaned = re.sub(r"[:;]-?[()\[\]]", "", cleaned)  # emoticons
    stack: list[str] = []
    for ch in cleaned:
        if ch in "([{":
            stack.append(ch)
        elif ch in _PAIRS:
            if not stack or stack[-1] != _PAIRS[ch]:
                return False
            stack.pop()
    return not stack


def _json_candidates(text: str) -> list[str]:
    """JSON the answer meant to give: ```json blocks, or the whole answer when it starts with { or [."""
    blocks = re.findall(r"```(?:json|JSON|Json)\s*\n(.*?)(?:```|\Z)", text, flags=re.DOTALL)
    stripped = text.strip()
    if not blocks and stripped[:1] in "{[" and stripped:
        blocks = [stripped]
    return blocks


def _json_broken(text: str) -> bool:
    for block in _json_candidates(text):
        try:
            json.loads(block)
        except ValueError:
            return True
    return False


def style_stats(text: Any) -> dict[str, float]:
    """Style numbers for one answer. Booleans are returned as 0.0/1.0 so every value can be averaged."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    words = [w.lower() for w in _WORD_RE.findall(text)]
    prose = _strip_code_blocks(text)
    n_chars, n_words = len(text), len(words)
    nonempty_lines = [line for line in text.split("\n") if line.strip()]
    headers = len(_HEADER_RE.findall(prose))
    list_items = len(_LIST_RE.findall(prose))
    bold = len(_BOLD_RE.findall(prose))
    table_rows = len(_TABLE_ROW_RE.findall(prose))
    fences = len(_FENCE_RE.findall(text))
    code_blocks = fences // 2 + fences % 2
    markdown_elements = headers + list_items + bold + table_rows + code_blocks

    unclosed_fence = fences % 2 == 1
    code_bodies = _CODE_BLOCK_RE.findall(text)
    unbalanced = not all(brackets_balanced(body) for body in code_bodies) if code_bodies else (
        not brackets_balanced(prose)
    )
    broken_json = _json_broken(text)
    return {
        "chars": float(n_chars),
        "words": float(n_words),
        "lines": float(len(nonempty_lines)),
        "empty": float(not text.strip()),
        "repetition_3gram": repeated_ngram_ratio(words, 3),
        "repetition_line": repeated_line_ratio(text),
        "refusal": float(is_refusal(text)),
        "md_headers": float(headers),
        "md_list_items": float(list_items),
        "md_bold": float(bold),
        "md_table_rows": float(table_rows),
        "md_code_blocks": float(code_blocks),
        # Markdown elements per 100 words (Arena-Hard's style features are counts over length).
        "markdown_density": 100.0 * markdown_elements / max(1, n_words),
        "unclosed_code_fence": float(unclosed_fence),
        "unbalanced_brackets": float(unbalanced),
        "broken_json": float(broken_json),
        "broken_format": float(unclosed_fence or unbalanced or broken_json),
    }


def style_summary(texts: Iterable[Any]) -> dict[str, float]:
    """Mean of every style statistic over a set of answers (rates for the 0/1 ones); `n` = number of answers."""
    rows = [style_stats(t) for t in texts]
    if not rows:
        return {"n": 0.0}
    summary = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
    summary["n"] = float(len(rows))
    return summary
