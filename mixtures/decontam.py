"""Decontamination gate: word n-gram overlap of training rows against every registered eval set.

The index holds the n-gram hashes of every text each task's `contamination_texts` returns (prompts, reference
answers, ...). Eval texts shorter than n words but at least `min_short_tokens` long are matched whole (a
training text equal to the eval text after normalisation), so short benchmark prompts are still covered.
A flagged row is dropped and recorded: benchmark, item id, the overlapping n-gram, the field it was in, and the
rule that fired.

Beside that exact gate, a fuzzy pass catches an eval item copied with small edits (numbers changed, words swapped)
that leave no 13-gram intact: the Jaccard similarity of word 3-gram shingle sets between a training text and an
eval text of at least FUZZY_MIN_WORDS words must stay below FUZZY_THRESHOLD (0.4). With a share s of 3-grams kept,
Jaccard is s / (2 - s): one edit every 12 words, the fewest that break every 13-gram, keeps 3/4 of the 3-grams
(J = 0.6); one every 8 words keeps 5/8 (J = 0.45): both caught. One every 4 words (J = 0.14) makes another text, and
two unrelated texts on one topic share a few percent of their 3-grams. Templated tasks (procedural generators, `Task.templated`) are left to the exact
gate: their training split differs from the held-out one only in parameters, by construction. Candidates come from 128-permutation MinHash signatures with LSH banding
(mixtures.dedup's, recall-weighted); each candidate is confirmed by its exact Jaccard, which the audit row keeps.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.errors import MixlabError
from mixlab.evals.tasks.base import get_task, task_names
from mixlab.mixtures.dedup import jaccard, lsh_params, minhash_signatures
from mixlab.mixtures.textops import ngram_hashes, tokenize, window_text
from mixlab.yamlio import did_you_mean


FUZZY_SHINGLE = 3  # words per shingle
FUZZY_THRESHOLD = 0.4  # Jaccard of shingle sets at or above which a training text is a near copy of an eval text
FUZZY_MIN_WORDS = 10  # shorter eval texts are left to the exact gate (their whole-text match)
FUZZY_PERM = 128
FUZZY_SEED = 7


def exact_rule(n: int) -> str:
    return f"exact-{n}gram"


def fuzzy_rule(threshold: float = FUZZY_THRESHOLD) -> str:
    return f"minhash-jaccard>={threshold:g}"


@dataclass
class FuzzyIndex:
    """MinHash band keys of the eval texts long enough for the fuzzy pass, for LSH lookups."""

    threshold: float
    texts: list[str]  # eval texts (for the exact Jaccard of candidates)
    owner: np.ndarray  # item index of each text
    signatures: np.ndarray  # [texts, FUZZY_PERM] uint32
    band_keys: list[tuple[np.ndarray, np.ndarray]]  # per band: sorted keys, text index of each


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> list[np.ndarray]:
    """One uint64 key per (text, band): the band's rows mixed by a fixed odd multiplier (collisions are verified)."""
    sig = signatures.astype(np.uint64)
    out = []
    for band in range(bands):
        key = np.zeros(len(sig), dtype=np.uint64)
        for r in range(rows):
            key = key * np.uint64(0x9E3779B97F4A7C15) + sig[:, band * rows + r] + np.uint64(1)
        out.append(key)
    return out


def build_fuzzy(texts: list[str], owner: list[int], threshold: float = FUZZY_THRESHOLD) -> FuzzyIndex:
    keep = [i for i, t in enumerate(texts) if len(re.findall(r"\w+", t)) >= FUZZY_MIN_WORDS]
    kept = [texts[i] for i in keep]
    sig = minhash_signatures(kept, FUZZY_PERM, shingle=FUZZY_SHINGLE, seed=FUZZY_SEED) if kept else \
        np.zeros((0, FUZZY_PERM), np.uint32)
    bands, rows = lsh_params(threshold, FUZZY_PERM)
    band_keys = []
    for keys in _band_keys(sig, bands, rows):
        order = np.argsort(keys, kind="stable")
        band_keys.append((keys[order], order))
    return FuzzyIndex(threshold, kept, np.asarray([owner[i] for i in keep], dtype=np.int64), sig, band_keys)


@dataclass
class EvalIndex:
    n: int
    hashes: np.ndarray  # sorted uint64 n-gram hashes
    owner: np.ndarray  # index into `items` for each hash
    items: list[tuple[str, str]]  # (task, item id)
    tasks: dict[str, int]  # task -> items indexed
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it was not indexed
    fingerprint: str = ""
    fuzzy: FuzzyIndex | None = None

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
    fuzzy_texts: list[int] = []  # texts of non-templated tasks: the fuzzy pass's candidates
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
                    if not task.templated:
                        fuzzy_texts.append(len(texts))
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
    digest.update(f";fuzzy={FUZZY_SHINGLE}/{FUZZY_THRESHOLD}/{FUZZY_MIN_WORDS}/{FUZZY_PERM}/{FUZZY_SEED}".encode())
    index = EvalIndex(n, hashes[order], owner[order], items, counts, skipped, digest.hexdigest()[:16],
                      fuzzy=build_fuzzy([texts[i] for i in fuzzy_texts], [text_owner[i] for i in fuzzy_texts]))
    _CACHE[key] = index
    return index


@dataclass
class Hit:
    row: int
    benchmark: str
    item_id: str
    ngram: str  # the overlapping n-gram (exact rule), or "J=0.63: <first words of the eval text>" (fuzzy rule)
    field: str
    rule: str = ""


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
                            text_field[begin + t], exact_rule(index.n)))
    return hits


def check_fuzzy(index: EvalIndex, texts: list[str], text_row: list[int], text_field: list[str],
                skip_rows: set[int] | frozenset[int] = frozenset(), batch: int = 50_000) -> list[Hit]:
    """One hit per (row, benchmark) whose text has Jaccard >= threshold with an eval text (3-gram shingles),
    for rows not in `skip_rows` (those the exact gate already flagged)."""
    fuzzy = index.fuzzy
    if fuzzy is None or not len(fuzzy.texts):
        return []
    bands, rows = lsh_params(fuzzy.threshold, FUZZY_PERM)
    hits: list[Hit] = []
    seen: set[tuple[int, str]] = set()
    for begin in range(0, len(texts), batch):
        chunk = [t if len(t.split()) >= FUZZY_SHINGLE else "" for t in texts[begin : begin + batch]]
        sig = minhash_signatures(chunk, FUZZY_PERM, shingle=FUZZY_SHINGLE, seed=FUZZY_SEED)
        pairs: set[tuple[int, int]] = set()
        for (sorted_keys, text_of), keys in zip(fuzzy.band_keys, _band_keys(sig, bands, rows)):
            left = np.searchsorted(sorted_keys, keys, side="left")
            right = np.searchsorted(sorted_keys, keys, side="right")
            for t in np.flatnonzero(right > left):
                if chunk[t]:
                    pairs.update((int(t), int(e)) for e in text_of[left[t] : right[t]])
        for t, e in sorted(pairs):
            row = text_row[begin + t]
            benchmark, item_id = index.items[int(fuzzy.owner[e])]
            if row in skip_rows or (row, benchmark) in seen:
                continue
            if (sig[t] == fuzzy.signatures[e]).mean() < fuzzy.threshold - 0.15:  # far off: skip the exact check
                continue
            similarity = jaccard(chunk[t], fuzzy.texts[e], shingle=FUZZY_SHINGLE)
            if similarity >= fuzzy.threshold:
                seen.add((row, benchmark))
                head = " ".join(re.findall(r"\w+", fuzzy.texts[e].lower())[:13])
                hits.append(Hit(row, benchmark, item_id, f"J={similarity:.2f}: {head}", text_field[begin + t],
                                fuzzy_rule(fuzzy.threshold)))
    return hits


def summary(index: EvalIndex) -> dict[str, Any]:
    fuzzy = None if index.fuzzy is None else {
        "rule": fuzzy_rule(index.fuzzy.threshold), "shingle_words": FUZZY_SHINGLE, "min_eval_words": FUZZY_MIN_WORDS,
        "num_perm": FUZZY_PERM, "eval_texts": len(index.fuzzy.texts)}
    return {"n": index.n, "rule": exact_rule(index.n), "tasks": dict(index.tasks), "skipped": dict(index.skipped),
            "fingerprint": index.fingerprint, "ngrams": int(len(index.hashes)), "fuzzy": fuzzy}
