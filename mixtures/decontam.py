"""Decontamination gate: word n-gram overlap of training rows against every registered eval set.

The index holds the n-gram hashes of every text each task's `contamination_texts` returns (prompts, reference
answers, ...). Eval texts shorter than n words but at least `min_short_tokens` long are matched whole (a
training text equal to the eval text after normalisation), so short benchmark prompts are still covered.
A flagged row is dropped and recorded: benchmark, item id, the overlapping n-gram and the field it was in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.errors import MixlabError
from mixlab.evals.tasks.base import get_task, task_names
from mixlab.mixtures.textops import ngram_hashes, tokenize, window_text
from mixlab.yamlio import did_you_mean


@dataclass
class EvalIndex:
    n: int
    hashes: np.ndarray  # sorted uint64 n-gram hashes
    owner: np.ndarray  # index into `items` for each hash
    items: list[tuple[str, str]]  # (task, item id)
    tasks: dict[str, int]  # task -> items indexed
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it was not indexed
    fingerprint: str = ""

    def lookup(self, query: np.ndarray) -> np.ndarray:
        """Index into `items` for each query hash, -1 when absent."""
        if not len(self.hashes) or not len(query):
            return np.full(len(query), -1, dtype=np.int64)
        pos = np.searchsorted(self.hashes, query)
        pos = np.minimum(pos, len(self.hashes) - 1)
        found = self.hashes[pos] == query
        return np.where(found, self.owner[pos], -1)


_CACHE: dict[tuple, EvalIndex] = {}


def selected_tasks(tasks: str | list[str], exclude: list[str]) -> list[str]:
    known = task_names()
    for name in ([] if tasks == "all" else list(tasks)) + list(exclude):
        if name not in known:
            raise MixlabError(f"decontamination: unknown eval task {name!r}{did_you_mean(name, known)}; known: {known}")
    chosen = known if tasks == "all" else list(tasks)
    return [t for t in chosen if t not in exclude]


def build_index(tasks: str | list[str], exclude: list[str], data_root: Path | None, n: int,
                min_short_tokens: int) -> EvalIndex:
    """Index every selected task's contamination texts. With `tasks: all`, a task whose data is absent is
    skipped and reported; a task named explicitly must load."""
    names = selected_tasks(tasks, exclude)
    key = (tuple(names), str(data_root), n, min_short_tokens)
    if key in _CACHE:
        return _CACHE[key]
    texts: list[str] = []
    text_owner: list[int] = []
    items: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    digest = hashlib.sha256()
    for name in names:
        try:
            task = get_task(name)
            loaded = task.load(data_root)
        except MixlabError as exc:
            if tasks != "all":
                raise MixlabError(f"decontamination: task {name}: {exc}") from None
            skipped[name] = str(exc)
            continue
        counts[name] = len(loaded)
        for item in loaded:
            items.append((name, item.item_id))
            for text in task.contamination_texts(item):
                if isinstance(text, str) and text.strip():
                    texts.append(text)
                    text_owner.append(len(items) - 1)
                    digest.update(f"{name}\0{item.item_id}\0{text}\0".encode())
    tokens = tokenize(texts)
    hashes, text_of, _ = ngram_hashes(tokens, n, short="whole")
    # Whole-text hashes of texts shorter than n words count only when they are long enough to be distinctive.
    long_enough = tokens.lengths[text_of] >= np.minimum(n, min_short_tokens)
    hashes, text_of = hashes[long_enough], text_of[long_enough]
    owner = np.asarray(text_owner, dtype=np.int64)[text_of] if len(text_of) else np.zeros(0, np.int64)
    order = np.argsort(hashes, kind="stable")
    digest.update(f"n={n};short={min_short_tokens}".encode())
    index = EvalIndex(n, hashes[order], owner[order], items, counts, skipped, digest.hexdigest()[:16])
    _CACHE[key] = index
    return index


@dataclass
class Hit:
    row: int
    benchmark: str
    item_id: str
    ngram: str
    field: str


def check(index: EvalIndex, texts: list[str], text_row: list[int], text_field: list[str],
          batch: int = 100_000) -> list[Hit]:
    """One hit per (row, benchmark): the first overlapping n-gram found. `texts` are the rows' fields.
    Texts go through in batches so the n-gram arrays stay a few hundred MB at a million rows."""
    hits: list[Hit] = []
    seen: set[tuple[int, str]] = set()
    for begin in range(0, len(texts), batch):
        tokens = tokenize(texts[begin : begin + batch], keep_words=True)
        hashes, text_of, start = ngram_hashes(tokens, index.n, short="whole")
        owners = index.lookup(hashes)
        for k in np.flatnonzero(owners >= 0):
            t = int(text_of[k])
            benchmark, item_id = index.items[int(owners[k])]
            row = text_row[begin + t]
            if (row, benchmark) in seen:
                continue
            seen.add((row, benchmark))
            hits.append(Hit(row, benchmark, item_id, window_text(tokens, t, int(start[k]), index.n),
                            text_field[begin + t]))
    return hits


def summary(index: EvalIndex) -> dict[str, Any]:
    return {"n": index.n, "tasks": dict(index.tasks), "skipped": dict(index.skipped), "fingerprint": index.fingerprint,
            "ngrams": int(len(index.hashes))}
