"""Verdict parsing. Never raises: anything we cannot read is `None`, and callers count it as unparseable."""

from __future__ import annotations

import re

_RATING_PATTERNS = [
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]\]"),  # [[7]] / [[7.5]] / [[7/10]]
    re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]"),  # [7]
    re.compile(r"(?:grade|rating|score)\s*[:=]?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE),
]

# Canonical verdicts, from the point of view of answer A.
VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
_VERDICT_PATTERNS = [re.compile(r"\[\[\s*([AB][<>=]{1,2}[AB])\s*\]\]"), re.compile(r"\[\s*([AB][<>=]{1,2}[AB])\s*\]")]
_NORMALISE = {
    "A>>B": "A>>B", "B<<A": "A>>B",
    "A>B": "A>B", "B<A": "A>B",
    "A=B": "A=B", "B=A": "A=B", "A==B": "A=B", "B==A": "A=B",
    "B>A": "B>A", "A<B": "B>A",
    "B>>A": "B>>A", "A<<B": "B>>A",
}


def parse_rating(text: str | None, low: float = 1.0, high: float = 10.0) -> float | None:
    """The last bracketed grade in `text` (falling back to looser forms), if it lies in [low, high]."""
    if not text:
        return None
    for pattern in _RATING_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            value = float(matches[-1])
            return value if low <= value <= high else None
    return None


def parse_pairwise(text: str | None) -> str | None:
    """The last verdict like [[A>B]] in `text`, normalised to one of VERDICTS."""
    if not text:
        return None
    for pattern in _VERDICT_PATTERNS:
        matches = pattern.findall(text.replace(" ", ""))
        if matches:
            return _NORMALISE.get(matches[-1])
    return None


def outcome_for(verdict: str | None, model_is: str) -> float | None:
    """Win (1), tie (0.5) or loss (0) of the answer in position `model_is` ("A" or "B")."""
    if verdict is None:
        return None
    if verdict == "A=B":
        return 0.5
    a_wins = verdict in ("A>>B", "A>B")
    return 1.0 if a_wins == (model_is == "A") else 0.0


def is_strong(verdict: str | None) -> bool:
    return verdict in ("A>>B", "B>>A")
