"""Split assignment shared by every procedural generator.

Every problem has a *split key* (its canonical form: operation and numbers for math, template and parameters
for code, topic for chat). A stable hash of that key puts the problem in `train` or `heldout`; generation draws
problems and rejects those of the other split, so the two splits never share a problem.

Text disjointness (what the decontamination gate checks with word n-grams) needs one more property: every
window of n words of a held-out prompt must contain something that never appears in train text. The
generators get it from split-partitioned vocabularies (person names, topics) that recur at least every
`MAX_GAP_WORDS` words, and from function names that encode the parameters.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

SPLITS = ("train", "heldout")
HELDOUT_PERMILLE = 200  # 20 % of problems are held out
MAX_GAP_WORDS = 12  # < 13, the decontamination gate's default n-gram length


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(split_key: str) -> str:
    """The split a canonical problem belongs to."""
    return "heldout" if stable_hash(split_key) % 1000 < HELDOUT_PERMILLE else "train"


def partition(pool: Sequence[str], namespace: str) -> dict[str, list[str]]:
    """Deterministically split a vocabulary pool into disjoint train/heldout parts (both non-empty)."""
    parts: dict[str, list[str]] = {"train": [], "heldout": []}
    for word in pool:
        parts[split_of(f"{namespace}|{word}")].append(word)
    assert parts["train"] and parts["heldout"], f"{namespace} pool too small to partition"
    return parts


def item_id(kind: str, split: str, level: int, canonical_text: str) -> str:
    digest = hashlib.sha256(canonical_text.encode("utf-8")).hexdigest()[:12]
    return f"{kind}-{split}-L{level}-{digest}"
