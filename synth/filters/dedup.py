"""Duplicate finding over plain lists of texts: exact (normalized hash) and MinHash LSH.

Every method returns a `DedupResult` with Magpie's columns (gen_dis.py), per row:
- `representative`: the lowest row index among the row itself and its duplicates (Magpie's
  `min_similar_conversation_id` / `min_similar_uuid`). A row is kept iff it is its own
  representative. This is not transitive, as in Magpie: if A~B and B~C but not A~C, then B and C
  are both dropped (C's lowest duplicate is B) and A is kept.
- `repeat_count`: how many other rows are duplicates of it.
- `min_neighbor_distance` (embedding only, see `synth.filters.neighbors`): squared L2 distance
  to the nearest other row on unit vectors.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

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


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed: 'Hello,  World!' -> 'hello world'."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return _SPACE.sub(" ", text).strip()


def text_key(text: str, normalize: bool = True) -> bytes:
    return hashlib.blake2b((normalize_text(text) if normalize else text).encode(), digest_size=16).digest()


def dedup_exact(texts: Sequence[str], normalize: bool = True) -> DedupResult:
    """Rows whose (normalized) texts are identical."""
    _, inverse, first, count = group_identical([text_key(t, normalize).hex() for t in texts])
    return DedupResult(first[inverse], count[inverse] - 1, info={"method": "exact"})


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
    uniq, inverse, first, count = group_identical([normalize_text(t) for t in texts])
    a, b, jaccard = minhash_pairs(uniq, threshold, ngram, unit, num_perm)
    ok = jaccard >= threshold
    rep, repeat = from_pairs(len(uniq), a[ok], b[ok], first, count)
    return DedupResult(rep[inverse], repeat[inverse], info={"method": "minhash", "candidate_pairs": len(a)})


def minhash_pairs(
    texts: Sequence[str], threshold: float, ngram: int = 5, unit: str = "char", num_perm: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (a < b) proposed by MinHash LSH, with their estimated Jaccard similarity."""
    signatures = minhash_signatures(texts, ngram, unit, num_perm)
    values = np.stack([m.hashvalues for m in signatures]) if signatures else np.zeros((0, num_perm), np.uint64)
    lsh = _lsh(threshold, num_perm)
    with lsh.insertion_session() as session:
        for u, m in enumerate(signatures):
            session.insert(u, m)
    a, b = [], []
    for u, m in enumerate(signatures):
        for v in lsh.query(m):
            if v > u:
                a.append(u)
                b.append(v)
    a_arr, b_arr = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    jaccard = (values[a_arr] == values[b_arr]).mean(axis=1) if len(a_arr) else np.zeros(0)
    return a_arr, b_arr, jaccard


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
