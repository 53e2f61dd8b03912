"""Duplicate finding over plain lists of texts: exact (normalized hash) and MinHash LSH.

Every method returns a `DedupResult` with Magpie's columns (gen_dis.py), per row:
- `representative`: the lowest row index among the row itself and its duplicates (Magpie's
  `min_similar_conversation_id` / `min_similar_uuid`). A row is kept iff it is its own
  representative. This is not transitive, as in Magpie: if A~B and B~C but not A~C, then B and C
  are both dropped (C's lowest duplicate is B) and A is kept.
- `repeat_count`: how many other rows are duplicates of it.
- `min_neighbor_distance` (embedding only, see `synth.similarity.neighbors`): squared L2 distance
  to the nearest other row on unit vectors.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import MissingDependency

try:  # near-copy checks run edit distances on up to millions of pairs: 100x faster in C
    from rapidfuzz.distance import OSA as _OSA
except ImportError:  # pragma: no cover - the pure-Python version gives the same numbers
    _OSA = None


@dataclass
class DedupResult:
    representative: np.ndarray  # int64, per row
    repeat_count: np.ndarray  # int64, per row
    min_neighbor_distance: np.ndarray | None = None  # float32 per row, nan when unknown
    info: dict = field(default_factory=dict)  # index kind, measured recall, timings

    @property
    def keep(self) -> np.ndarray:
        return self.representative == np.arange(len(self.representative))

    def clusters(self) -> list[list[int]]:
        """Groups of duplicates (size >= 2), each sorted, following representatives to their root."""
        rep = self.representative.copy()
        for _ in range(64):  # chains are short; each pass halves them
            nxt = rep[rep]
            if np.array_equal(nxt, rep):
                break
            rep = nxt
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rep.tolist()):
            groups.setdefault(r, []).append(i)
        return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def from_pairs(n: int, a: np.ndarray, b: np.ndarray, first=None, count=None) -> tuple[np.ndarray, np.ndarray]:
    """Representative and repeat count per row from duplicate pairs (made symmetric here).

    With `first`/`count` the n items are groups of identical rows: `first[u]` is the group's lowest
    row index and `count[u]` its size; the result is then per group."""
    first = np.arange(n, dtype=np.int64) if first is None else first
    count = np.ones(n, dtype=np.int64) if count is None else count
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    a, b = np.concatenate([a, b]), np.concatenate([b, a])
    keep = a != b
    keys = np.unique(a[keep] * n + b[keep])
    a, b = keys // max(n, 1), keys % max(n, 1)
    rep = first.copy()
    np.minimum.at(rep, a, first[b])
    repeat = count - 1
    np.add.at(repeat, a, count[b])
    return rep, repeat


def group_identical(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Unique texts in first-seen order, each row's group, each group's first row and size."""
    seen: dict[str, int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    first: list[int] = []
    for i, t in enumerate(texts):
        u = seen.setdefault(t, len(seen))
        if u == len(first):
            first.append(i)
        inverse[i] = u
    count = np.bincount(inverse, minlength=len(first)).astype(np.int64)
    return list(seen), inverse, np.asarray(first, dtype=np.int64), count


_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _punctuation() -> dict[int, str]:
    """Every Unicode punctuation code point (categories P*) mapped to a space, for str.translate:
    one C call per text instead of a Python step per character (millions of rows)."""
    return {c: " " for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed: 'Hello,  World!' -> 'hello world'."""
    text = unicodedata.normalize("NFKC", text or "").casefold().translate(_punctuation())
    return _SPACE.sub(" ", text).strip()


def text_key(text: str, normalize: bool = True) -> bytes:
    return hashlib.blake2b((normalize_text(text) if normalize else text).encode(), digest_size=16).digest()


KEY = np.dtype("V16")  # a 16-byte blake2b digest per row: 64 MB for 4M rows


def text_keys(texts: Iterable[str], normalize: bool = True) -> np.ndarray:
    return np.frombuffer(b"".join(text_key(t, normalize) for t in texts), dtype=KEY)


def group_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For per-row keys: each row's group (groups numbered in first-seen order), each group's
    first row and size; group_identical for keys held in numpy."""
    if not len(keys):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    _, first, inverse, count = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    seen = np.argsort(first, kind="stable")  # unique keys come sorted by value: renumber by first row
    renumber = np.empty_like(seen)
    renumber[seen] = np.arange(len(seen))
    return renumber[inverse.reshape(-1)], first[seen].astype(np.int64), count[seen].astype(np.int64)


def dedup_keys(keys: np.ndarray) -> DedupResult:
    """Rows whose keys are identical: the first row of each key represents it."""
    inverse, first, count = group_keys(keys)
    return DedupResult(first[inverse], count[inverse] - 1, info={"method": "exact"})


def dedup_exact(texts: Iterable[str], normalize: bool = True) -> DedupResult:
    """Rows whose (normalized) texts are identical."""
    return dedup_keys(text_keys(texts, normalize))


def exact_matches(texts: Sequence[str], reference: Sequence[str], normalize: bool = True) -> np.ndarray:
    """For each text, the index of an identical (normalized) reference text, or -1."""
    index: dict[bytes, int] = {}
    for j, t in enumerate(reference):
        index.setdefault(text_key(t, normalize), j)
    return np.asarray([index.get(text_key(t, normalize), -1) for t in texts], dtype=np.int64)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance counting a swap of two adjacent characters as one edit (OSA):
    rapidfuzz's C implementation when installed (synth[filters]), else the same in Python."""
    if _OSA is not None:
        return _OSA.distance(a, b)
    return edit_distance_py(a, b)


def edit_distance_py(a: str, b: str) -> int:
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


@lru_cache(maxsize=1 << 18)
def _words(text: str) -> tuple[str, ...]:
    """Normalized words, cached: a text meets many candidate partners in the near-copy checks."""
    return tuple(normalize_text(text).split())


def near_copy(a: str, b: str, max_edits: float = 0.15, max_added: float = 0.5) -> bool:
    """Whether one text is a near copy of the other. After normalization they may differ by:
    misspellings (each changed run of words within one edit per 4 characters of its counterpart:
    "teh" ~ "the", "DN Sresollution" ~ "DNS resolution", but not "France" ~ "Spain" or "Paris" ~
    "Parma"; all edits together at most `max_edits` of the length), words moved elsewhere, and one
    run of words added at the start or the end ("..., thanks in advance!"; at most `max_added` of
    the longer text's words)."""
    wa, wb = list(_words(a)), list(_words(b))
    if not wa or not wb:
        return wa == wb
    edits = added = 0
    moved_out: list[str] = []
    moved_in: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if op in ("insert", "delete"):
            if not added and ((i1 == 0 and j1 == 0) or (i2 == len(wa) and j2 == len(wb))):
                added = (i2 - i1) + (j2 - j1)
            else:
                moved_out += wa[i1:i2]
                moved_in += wb[j1:j2]
            continue
        x, y = " ".join(wa[i1:i2]), " ".join(wb[j1:j2])
        distance = edit_distance(x, y)
        if distance > max(1, max(len(x), len(y)) // 4):
            return False
        edits += distance
    if sorted(moved_out) != sorted(moved_in):
        return False
    longest = max(len(" ".join(wa)), len(" ".join(wb)))
    return edits <= max(2, max_edits * longest) and added <= max_added * max(len(wa), len(wb))


# ---- MinHash ----


def shingles(text: str, ngram: int = 5, unit: str = "char") -> set[bytes]:
    """Character n-grams (robust to typos) or word n-grams of the normalized text."""
    norm = normalize_text(text)
    items: Sequence[str] = norm if unit == "char" else norm.split()
    if len(items) <= ngram:
        return {(norm if unit == "char" else " ".join(items)).encode()}
    joiner = "" if unit == "char" else " "
    return {joiner.join(items[i : i + ngram]).encode() for i in range(len(items) - ngram + 1)}


def require_datasketch():
    try:
        import datasketch
    except ImportError:
        raise MissingDependency("datasketch", "filters", "MinHash dedup") from None
    return datasketch


def minhash_signatures(texts: Sequence[str], ngram: int, unit: str, num_perm: int, seed: int = 1):
    MinHash = require_datasketch().MinHash
    return MinHash.bulk([list(shingles(t, ngram, unit)) for t in texts], num_perm=num_perm, seed=seed)


def _lsh(threshold: float, num_perm: int):
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=num_perm)


def dedup_minhash(
    texts: Sequence[str], threshold: float = 0.7, ngram: int = 5, unit: str = "char", num_perm: int = 128
) -> DedupResult:
    """Rows whose shingle sets have an estimated Jaccard similarity >= threshold.

    MinHash LSH proposes candidate pairs; each is confirmed on the full signatures (LSH alone lets
    through pairs below the threshold). Identical texts are grouped first."""
    return dedup_minhash_chunks(lambda: iter([list(texts)]), threshold, ngram, unit, num_perm)


def dedup_minhash_chunks(
    chunks: Callable[[], Iterator[list[str]]],
    threshold: float = 0.7,
    ngram: int = 5,
    unit: str = "char",
    num_perm: int = 128,
    tmp_dir: Path | None = None,
) -> DedupResult:
    """dedup_minhash over texts read in chunks, twice (`chunks()` starts over): first the key of
    each normalized text, then the signature of each distinct one into a memory map; candidate
    pairs are the rows that share a band of the signature, as datasketch's MinHashLSH with the same
    threshold proposes them, found by sorting each band instead of a Python index."""
    keys = np.concatenate([text_keys(c) for c in chunks()] or [np.zeros(0, KEY)])
    inverse, first, count = group_keys(keys)
    n = len(first)
    is_first = np.zeros(len(keys), dtype=bool)
    is_first[first] = True
    with tempfile.TemporaryDirectory(prefix="synth-minhash-", dir=tmp_dir) as tmp:
        shape = (max(n, 1), num_perm)
        signatures = np.lib.format.open_memmap(Path(tmp) / "signatures.npy", "w+", np.uint32, shape)
        done, start = 0, 0
        for chunk in chunks():
            picked = [normalize_text(t) for t, f in zip(chunk, is_first[start : start + len(chunk)], strict=True) if f]
            start += len(chunk)
            for m in minhash_signatures(picked, ngram, unit, num_perm):
                signatures[done] = m.hashvalues
                done += 1
        a, b = band_pairs(signatures[:n], threshold, num_perm)
        jaccard = np.zeros(len(a))
        for lo in range(0, len(a), 100_000):
            hi = lo + 100_000
            jaccard[lo:hi] = (signatures[a[lo:hi]] == signatures[b[lo:hi]]).mean(axis=1)
        del signatures
    ok = jaccard >= threshold
    rep, repeat = from_pairs(n, a[ok], b[ok], first, count)
    return DedupResult(rep[inverse], repeat[inverse], info={"method": "minhash", "candidate_pairs": len(a)})


def band_pairs(signatures: np.ndarray, threshold: float, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) of rows equal on at least one LSH band, each once."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    found = []
    for band in range(bands):
        part = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows]).view(
            np.dtype(("V", signatures.dtype.itemsize * rows))
        )
        part = part.reshape(-1)
        order = np.argsort(part, kind="stable")
        ranked = part[order]
        edge = np.flatnonzero(ranked[1:] != ranked[:-1]) + 1
        starts, ends = np.concatenate([[0], edge]), np.concatenate([edge, [len(ranked)]])
        for lo, hi in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
            members = np.sort(order[lo:hi])
            i, j = np.triu_indices(len(members), k=1)
            found.append(members[i] * len(signatures) + members[j])
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return keys // max(len(signatures), 1), keys % max(len(signatures), 1)


def minhash_pairs(
    texts: Sequence[str], threshold: float, ngram: int = 5, unit: str = "char", num_perm: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (a < b) proposed by MinHash LSH, with their estimated Jaccard similarity."""
    signatures = minhash_signatures(texts, ngram, unit, num_perm)
    values = np.stack([m.hashvalues for m in signatures]) if signatures else np.zeros((0, num_perm), np.uint32)
    a, b = band_pairs(values, threshold, num_perm)
    jaccard = (values[a] == values[b]).mean(axis=1) if len(a) else np.zeros(0)
    return a, b, jaccard


def minhash_matches(
    texts: Sequence[str],
    reference: Sequence[str],
    threshold: float = 0.7,
    ngram: int = 5,
    unit: str = "char",
    num_perm: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """For each text, a reference index with estimated Jaccard >= threshold (or -1), and that Jaccard."""
    refs = minhash_signatures(reference, ngram, unit, num_perm)
    lsh = _lsh(threshold, num_perm)
    with lsh.insertion_session() as session:
        for j, m in enumerate(refs):
            session.insert(j, m)
    match = np.full(len(texts), -1, dtype=np.int64)
    score = np.zeros(len(texts), dtype=np.float32)
    for i, m in enumerate(minhash_signatures(texts, ngram, unit, num_perm)):
        for j in sorted(lsh.query(m)):
            jac = float(m.jaccard(refs[j]))
            if jac >= threshold and jac > score[i]:
                match[i], score[i] = j, jac
    return match, score
