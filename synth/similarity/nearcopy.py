"""Near-copy checks over many candidate pairs at once: a vectorized test that rules most pairs out,
then `synth.similarity.duplicates.near_copy` on the few left, so the verdicts are exactly near_copy's.

Why the test is sound: near_copy lets two normalized texts differ by replaced runs of words (each
within a few character edits; all of them together at most E = max(2, max_edits * longest)
edits), words moved elsewhere (the same words on both sides) and one run of words added at one end
(on one side only). Count each text's characters (spaces left out): a replaced run changes the
counts by at most one character in each direction per edit, moved words change nothing, and the
added run adds characters to one side only. So in at least one direction, the characters one text
has more of than the other add up to at most E. Counting characters in 64 bins (several characters
may share a bin) can only lower those sums, so a pair above E in both directions is no near copy,
and is ruled out without running Python on it. Unrelated texts that happen to have close
embeddings are ruled out that way; look-alikes and real copies go on to near_copy.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import cache

import numpy as np

from .duplicates import near_copy

BINS = 64
CHUNK = 1 << 16  # pairs compared per numpy step
PARALLEL_ABOVE = 20_000  # pairs from which the full checks run in one process per core


@cache
def _punctuation_table() -> dict[int, str]:
    """Every Unicode punctuation character (category P*) mapped to a space, as normalize_text does."""
    return {c: " " for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def normalized(text: str) -> str:
    """The same string as `synth.similarity.duplicates.normalize_text`, through str.translate (faster)."""
    text = unicodedata.normalize("NFKC", text or "").casefold().translate(_punctuation_table())
    return " ".join(text.split())


def profiles(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per text: character counts in BINS bins (spaces left out) and the normalized length."""
    norm = [normalized(t) for t in texts]
    lengths = np.fromiter((len(t) for t in norm), dtype=np.int64, count=len(norm))
    codes = np.frombuffer("".join(norm).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    owner = np.repeat(np.arange(len(norm), dtype=np.int64), lengths)
    keep = codes != 32
    counts = np.bincount(owner[keep] * BINS + (codes[keep] % BINS), minlength=len(norm) * BINS)
    return counts.reshape(len(norm), BINS).astype(np.int32), lengths


def possible(
    counts: np.ndarray, lengths: np.ndarray, a: np.ndarray, b: np.ndarray, max_edits: float = 0.15
) -> np.ndarray:
    """False where the pair (a[i], b[i]) (rows of `counts`) cannot be a near copy; see the docstring."""
    out = np.ones(len(a), dtype=bool)
    for start in range(0, len(a), CHUNK):
        x, y = a[start : start + CHUNK], b[start : start + CHUNK]
        diff = counts[x] - counts[y]
        more_a = np.maximum(diff, 0).sum(axis=1)
        more_b = np.maximum(-diff, 0).sum(axis=1)
        limit = np.maximum(2.0, max_edits * np.maximum(lengths[x], lengths[y]))
        empty = (lengths[x] == 0) | (lengths[y] == 0)
        out[start : start + len(x)] = empty | (np.minimum(more_a, more_b) <= limit)
    return out


def _verdicts(pairs: list[tuple[str, str]], max_edits: float) -> list[bool]:
    return [near_copy(x, y, max_edits) for x, y in pairs]


def near_copies(
    text: Callable[[np.ndarray], list[str]],
    a: np.ndarray,
    b: np.ndarray,
    max_edits: float = 0.15,
    workers: int | None = None,
) -> tuple[np.ndarray, int]:
    """near_copy(text a[i], text b[i]) for every pair; `text(ids)` returns the texts of those ids
    (read in chunks: no list of all texts is built). Above PARALLEL_ABOVE pairs to check fully,
    they are checked by `workers` processes (default: one per core).

    Returns the verdicts and how many pairs needed the full check."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    verdict = np.zeros(len(a), dtype=bool)
    if not len(a):
        return verdict, 0
    ids = np.unique(np.concatenate([a, b]))
    counts = np.zeros((len(ids), BINS), dtype=np.int32)
    lengths = np.zeros(len(ids), dtype=np.int64)
    for start in range(0, len(ids), CHUNK):
        counts[start : start + CHUNK], lengths[start : start + CHUNK] = profiles(text(ids[start : start + CHUNK]))
    pa_, pb = np.searchsorted(ids, a), np.searchsorted(ids, b)
    check = np.flatnonzero(possible(counts, lengths, pa_, pb, max_edits))
    workers = workers or os.cpu_count() or 1
    pool = None
    if workers > 1 and len(check) > PARALLEL_ABOVE:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for start in range(0, len(check), CHUNK):
            part = check[start : start + CHUNK]
            need = np.unique(np.concatenate([pa_[part], pb[part]]))
            texts = dict(zip(need.tolist(), text(ids[need]), strict=True))
            pairs = [(texts[int(pa_[i])], texts[int(pb[i])]) for i in part.tolist()]
            if pool is None:
                verdict[part] = _verdicts(pairs, max_edits)
            else:
                step = -(-len(pairs) // (4 * workers))
                parts = [pairs[i : i + step] for i in range(0, len(pairs), step)]
                done = pool.map(_verdicts, parts, [max_edits] * len(parts))
                verdict[part] = [v for chunk in done for v in chunk]
    finally:
        if pool is not None:
            pool.shutdown()
    return verdict, len(check)
