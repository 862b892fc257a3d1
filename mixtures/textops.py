"""Vectorised word tokenisation and n-gram hashing shared by near-dedup and decontamination.

Texts are lower-cased and split into word tokens (Unicode letters, digits, underscore) by Arrow compute kernels;
each distinct token is hashed once (xxh64) and n-gram hashes are built with a polynomial roll over the flat
token-hash array, so a million rows cost a handful of numpy passes rather than a Python loop per n-gram.
The same function tokenises eval sets and training rows, so both sides agree on every boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

_NON_WORD = r"[^\p{L}\p{N}_]+"
_PRIME = np.uint64(1099511628211)


@dataclass
class Tokens:
    hashes: np.ndarray  # uint64, flat over all texts
    lengths: np.ndarray  # int64 tokens per text
    words: pa.Array | None = None  # flat token strings (kept when asked, to print n-grams)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


def tokenize(texts: list[str], keep_words: bool = False) -> Tokens:
    if not texts:
        return Tokens(np.zeros(0, np.uint64), np.zeros(0, np.int64))
    arr = pa.array(texts, type=pa.large_string())
    cleaned = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(arr), pattern=_NON_WORD, replacement=" "))
    split = pc.utf8_split_whitespace(cleaned)
    lengths = pc.list_value_length(split).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(split)
    # utf8_split_whitespace turns "" into [""]: drop empty tokens.
    empty = pc.equal(flat, "")
    if pc.any(empty).as_py():
        keep = pc.invert(empty)
        row_of = np.repeat(np.arange(len(texts)), lengths)
        lengths = np.bincount(row_of[keep.to_numpy(zero_copy_only=False)], minlength=len(texts)).astype(np.int64)
        flat = pc.filter(flat, keep)
    encoded = pc.dictionary_encode(flat)
    vocab = encoded.dictionary.to_pylist()
    vocab_hashes = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in vocab), dtype=np.uint64, count=len(vocab))
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    return Tokens(vocab_hashes[indices] if len(indices) else np.zeros(0, np.uint64), lengths,
                  flat if keep_words else None)


def ngram_hashes(tokens: Tokens, n: int, short: str = "whole") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n-gram hashes, their text index, their start token) for every window of `n` tokens.

    Texts shorter than `n`: `short="whole"` gives one hash of the whole text (a distinct family from full
    windows because its length is mixed in), `short="skip"` gives nothing.
    """
    flat, lengths = tokens.hashes, tokens.lengths
    total = len(flat)
    if total == 0:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.uint64), empty, empty
    starts = tokens.starts
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(total) - starts[row_of]
    acc = flat.copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            nxt = np.zeros(total, dtype=np.uint64)
            nxt[:-j] = flat[j:]
            inside = np.zeros(total, dtype=bool)
            inside[:-j] = row_of[j:] == row_of[:-j]
            acc = acc * _PRIME + np.where(inside, nxt, np.uint64(0))
        full = pos <= (lengths[row_of] - n)
        select = full.copy()
        if short == "whole":
            is_short = (lengths[row_of] < n) & (pos == 0)
            acc = np.where(is_short, acc ^ (lengths[row_of].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)), acc)
            select |= is_short
    return acc[select], row_of[select], pos[select]


def window_text(tokens: Tokens, text_index: int, start: int, n: int) -> str:
    """The words of one window (for audit records); needs `tokenize(..., keep_words=True)`."""
    assert tokens.words is not None
    begin = int(tokens.starts[text_index]) + start
    end = min(begin + n, int(tokens.starts[text_index] + tokens.lengths[text_index]))
    return " ".join(tokens.words.slice(begin, end - begin).to_pylist())
