"""Deduplication: exact (normalised text hash) and near-duplicate (MinHash + LSH banding).

MinHash is computed in numpy over whole batches (word shingles hashed once, then every permutation as one
vectorised op) instead of one `datasketch.MinHash` object per row; the LSH band/row choice is datasketch's
(`_optimal_param`, weighted towards recall), so `threshold` and `num_perm` mean what they mean there. Rows are compared in build
order: a row is dropped when it is exact, or estimated-Jaccard ≥ threshold, duplicate of an earlier row.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

import numpy as np
import xxhash

from mixlab.mixtures.textops import ngram_hashes, tokenize

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+")


def normalise(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def exact_keys(texts: Iterable[str]) -> list[int]:
    return [xxhash.xxh64_intdigest(normalise(t).encode()) for t in texts]


def exact_duplicates(keys: list[int], seen: set[int] | None = None) -> np.ndarray:
    """Boolean mask: True where the key appeared earlier (in `keys` or in `seen`, which is updated)."""
    seen = set() if seen is None else seen
    dup = np.zeros(len(keys), dtype=bool)
    for i, k in enumerate(keys):
        if k in seen:
            dup[i] = True
        else:
            seen.add(k)
    return dup


@lru_cache(maxsize=16)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) from datasketch's optimiser, weighted 0.1 false positives / 0.9 false negatives:
    every candidate pair is verified on its full signature, so a false positive costs only a comparison while a
    false negative is a missed duplicate (at threshold 0.85, 128 perms: 11×11, recall 0.87 at J=0.85, 0.999 at 0.93;
    datasketch's equal weights give 8×16 and recall 0.46 at the threshold)."""
    from datasketch.lsh import _optimal_param  # datasketch pulls scipy: only MinHash-dedup builds pay for it

    return _optimal_param(threshold, num_perm, 0.1, 0.9)


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(1, np.iinfo(np.int64).max, size=num_perm, dtype=np.int64).astype(np.uint64) | np.uint64(1)
    b = gen.randint(0, np.iinfo(np.int64).max, size=num_perm, dtype=np.int64).astype(np.uint64)
    return a, b


def minhash_signatures(texts: list[str], num_perm: int = 128, shingle: int = 5, seed: int = 1,
                       batch_rows: int = 20_000) -> np.ndarray:
    """[len(texts), num_perm] uint32 MinHash signatures of word shingles (empty texts get all-ones).

    Permutation i is the multiply-shift hash `(a_i * x + b_i) >> 32` (a strongly universal family that needs no
    modulo), applied to the 64-bit shingle hashes; rows shorter than `shingle` words are one shingle.
    """
    a, b = _permutations(num_perm, seed)
    out = np.full((len(texts), num_perm), 0xFFFFFFFF, dtype=np.uint32)
    shift = np.uint64(32)
    chunk = 16
    for start in range(0, len(texts), batch_rows):
        tokens = tokenize(texts[start : start + batch_rows])
        hashes, row_of, _ = ngram_hashes(tokens, shingle, short="whole")
        if not len(hashes):
            continue
        rows, offsets = np.unique(row_of, return_index=True)
        # One preallocated buffer, written in place: fresh multi-100-MB temporaries cost more in page faults
        # than the arithmetic itself.
        buf = np.empty((chunk, len(hashes)), dtype=np.uint64)
        for p0 in range(0, num_perm, chunk):
            k = min(chunk, num_perm - p0)
            view = buf[:k]
            np.multiply(a[p0 : p0 + k, None], hashes[None, :], out=view)
            np.add(view, b[p0 : p0 + k, None], out=view)
            np.right_shift(view, shift, out=view)
            out[start + rows, p0 : p0 + k] = np.minimum.reduceat(view, offsets, axis=1).T
    return out


def near_duplicates(signatures: np.ndarray, threshold: float, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dup mask, index of the earlier row each duplicate matched, -1 if none) by LSH banding + verification.

    `prior` (bool mask) marks rows already removed upstream; they neither match nor are matched.
    """
    n, num_perm = signatures.shape
    bands, rows = lsh_params(threshold, num_perm)
    dup = np.zeros(n, dtype=bool)
    match = np.full(n, -1, dtype=np.int64)
    alive = np.ones(n, dtype=bool) if prior is None else ~prior
    idx = np.flatnonzero(alive)
    if len(idx) < 2:
        return dup, match
    sig = signatures[idx]
    for band in range(bands):
        block = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        _, inverse = np.unique(keys, return_inverse=True)
        first = np.full(inverse.max() + 1, len(idx), dtype=np.int64)
        np.minimum.at(first, inverse, np.arange(len(idx)))
        partner = first[inverse]
        cand = np.flatnonzero(partner != np.arange(len(idx)))
        if not len(cand):
            continue
        similarity = (sig[cand] == sig[partner[cand]]).mean(axis=1)
        hit = cand[similarity >= threshold]
        new = hit[~dup[idx[hit]]]
        dup[idx[new]] = True
        match[idx[new]] = idx[partner[new]]
    return dup, match


def jaccard(a: str, b: str, shingle: int = 5) -> float:
    """Exact Jaccard similarity of word shingles (tests compare the MinHash estimate against it)."""

    def grams(t: str) -> set[tuple[str, ...]]:
        toks = _TOKEN.findall(t.lower())
        if len(toks) < shingle:
            return {tuple(toks)} if toks else set()
        return {tuple(toks[i : i + shingle]) for i in range(len(toks) - shingle + 1)}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y) if x | y else 1.0
