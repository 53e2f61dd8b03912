"""Embedding dedup with FAISS, as Magpie's gen_dis.py does it, plus a fast cascade.

Similarity is cosine on unit vectors (FAISS inner product). Magpie searched a flat L2 index, whose
distances are squared L2; on unit vectors d = |x - y|^2 = 2 - 2 cos(x, y), so Magpie's "distance <
0.05" is "cosine > 0.975". `threshold` here is a cosine similarity (a pair is a duplicate when
cos >= threshold), and `min_neighbor_distance` is reported in Magpie's unit, 2 - 2 cos, so values
compare with the released Magpie datasets.

Per row (see `synth.filters.dedup.DedupResult`): `min_neighbor_distance` (the nearest other row,
Magpie's "2nd hit"), `repeat_count` (rows within the threshold, itself excluded) and
`representative` (the lowest row index within the threshold, itself included). Identical texts are
grouped before the search, so a set of all-identical rows is handled exactly whatever `k` is; near
duplicates are looked for among each row's `k` nearest neighbours (Magpie used 500), so
`repeat_count` saturates at about k. Pairs count from either side (if B is among A's neighbours
within the threshold, A counts among B's).

Index: exact `IndexFlatIP` below `exact_below` rows; above it an approximate index (IVF by default,
or HNSW), whose recall is measured on a sample of rows against an exact search of those rows and
returned in `info` ("recall": neighbours within the threshold found / present).

Cascade (`candidates=` a fast encoder, normally the static model2vec model): the fast vectors find
candidate pairs with cos >= `candidate_threshold`; only rows in a candidate pair are encoded with the
confirming model, and a pair is a duplicate when the confirming model's cos >= `threshold`. Then
`min_neighbor_distance` is the confirming model's distance to the nearest candidate, and NaN for
rows that had no candidate at all (nothing near them).

Near copies (`near_copies=True`): sentence embeddings lose misspelt words (cos of a prompt and
its typo'd copy can fall to 0.6), so candidate pairs below the threshold, plus the pairs that a
character 4-gram MinHash LSH proposes (Jaccard >= 0.4), are also duplicates when
`synth.filters.dedup.near_copy` finds they differ only by typos, moved words or a short sentence
added at one end. A look-alike that changes a word ("capital of France" / "of Spain") is no near
copy. These pairs count in `repeat_count` and `representative`, not in `min_neighbor_distance`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import MissingDependency
from .dedup import DedupResult, from_pairs, group_identical, minhash_pairs, near_copy

Encoder = Callable[[Sequence[str]], np.ndarray]
LEXICAL_CANDIDATES = 0.4  # MinHash LSH threshold (char 4-gram Jaccard) proposing near-copy candidates


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependency("faiss-cpu", "embed", "Embedding dedup") from None
    return faiss


def build_index(vectors: np.ndarray, kind: str = "auto", exact_below: int = 50_000, nprobe: int = 16):
    """An inner-product index over unit vectors: flat (exact), IVF or HNSW (approximate)."""
    faiss = _faiss()
    n, d = vectors.shape
    if kind == "auto":
        kind = "flat" if n < exact_below else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = 64
    elif kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, size=min(n, nlist * 64), replace=False)] if n > nlist * 64 else vectors
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, ivf, hnsw, auto)")
    index.add(vectors)
    return index, kind


def search(
    vectors: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    index: str = "auto",
    exact_below: int = 50_000,
    threshold: float = 0.9,
    recall_sample: int = 500,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """k nearest neighbours by cosine of each query (default: every vector) among `vectors`.

    Returns similarities, ids (-1 where fewer than k exist) and info: the index kind, seconds, and
    for approximate indexes the recall measured on `recall_sample` queries."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = vectors if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    started = time.perf_counter()
    built, kind = build_index(vectors, index, exact_below)
    k = max(1, min(k, len(vectors)))
    sims, ids = built.search(queries, k)
    info: dict = {"index": kind, "k": k, "search_seconds": round(time.perf_counter() - started, 3)}
    if kind != "flat" and len(queries):
        info.update(measure_recall(vectors, queries, sims, ids, k, threshold, recall_sample))
    return sims, ids, info


def measure_recall(vectors, queries, sims, ids, k, threshold, sample) -> dict:
    """Recall of an approximate search against an exact one on a sample of queries."""
    faiss = _faiss()
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    true_sims, true_ids = exact.search(queries[picked], k)
    found = present = top1 = 0
    for row, q in enumerate(picked):
        want = {int(j) for j, s in zip(true_ids[row], true_sims[row], strict=True) if j >= 0 and s >= threshold}
        got = {int(j) for j, s in zip(ids[q], sims[q], strict=True) if j >= 0 and s >= threshold}
        present += len(want)
        found += len(want & got)
        top1 += int(ids[q][0] == true_ids[row][0] or math.isclose(sims[q][0], true_sims[row][0], abs_tol=1e-6))
    return {
        "recall": round(found / present, 4) if present else 1.0,
        "recall_pairs": present,
        "recall_found": found,
        "top1_agreement": round(top1 / len(picked), 4),
    }


def _pairs(sims: np.ndarray, ids: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(len(ids), dtype=np.int64), ids.shape[1])
    cols, flat = ids.reshape(-1).astype(np.int64), sims.reshape(-1)
    ok = (cols >= 0) & (cols != rows) & (flat >= threshold)
    return rows[ok], cols[ok], flat[ok]


def dedup_embedding(
    texts: Sequence[str],
    encode: Encoder,
    threshold: float = 0.95,
    k: int = 100,
    index: str = "auto",
    exact_below: int = 50_000,
    candidates: Encoder | None = None,
    candidate_threshold: float = 0.8,
    near_copies: bool = False,
) -> DedupResult:
    """Near-duplicates by embedding similarity (see the module docstring).

    `near_copies`: also count as duplicates the candidate pairs (first-stage cos >=
    candidate_threshold) that are near copies (`synth.filters.dedup.near_copy`: misspelt words, a
    short sentence added at an end). Sentence embeddings are weak on typos (a misspelt word becomes
    other word pieces: cos can fall to 0.6), while a look-alike that changes a word ("France" ->
    "Spain") is no near copy."""
    started = time.perf_counter()
    uniq, inverse, first, count = group_identical(list(texts))
    n = len(uniq)
    info: dict = {"method": "embedding", "unique_texts": n, "cascade": candidates is not None}
    best = np.full(n, -np.inf, dtype=np.float32)  # cos to the nearest other unique text
    if n > 1:
        fast = candidates or encode
        t = time.perf_counter()
        vectors = fast(uniq)
        info["encode_seconds"] = round(time.perf_counter() - t, 3)
        sims, ids, search_info = search(vectors, k + 1, index=index, exact_below=exact_below, threshold=threshold)
        info.update(search_info)
        a, b, s = _pairs(sims, ids, candidate_threshold if candidates else -np.inf)
        first_stage = s
        if candidates is not None:
            involved = np.unique(np.concatenate([a, b]))
            t = time.perf_counter()
            confirm = np.zeros((n, 0), dtype=np.float32)
            if len(involved):
                encoded = encode([uniq[i] for i in involved])
                confirm = np.zeros((n, encoded.shape[1]), dtype=np.float32)
                confirm[involved] = encoded
            info["confirm_encoded"] = len(involved)
            info["confirm_seconds"] = round(time.perf_counter() - t, 3)
            s = np.einsum("ij,ij->i", confirm[a], confirm[b]) if len(a) else s
        np.maximum.at(best, a, s)
        np.maximum.at(best, b, s)
        ok = s >= threshold
        if near_copies:
            check = np.flatnonzero(~ok & (first_stage >= candidate_threshold))
            for i in check.tolist():
                ok[i] = near_copy(uniq[int(a[i])], uniq[int(b[i])])
            # embeddings (static ones most) lose misspelt words: character MinHash proposes more pairs
            t = time.perf_counter()
            la, lb, _ = minhash_pairs(uniq, LEXICAL_CANDIDATES, ngram=4)
            known = set((a * n + b).tolist()) | set((b * n + a).tolist())
            extra = [(x, y) for x, y in zip(la.tolist(), lb.tolist(), strict=True) if x * n + y not in known]
            found = [(x, y) for x, y in extra if near_copy(uniq[x], uniq[y])]
            info["near_copy_checked"] = len(check) + len(extra)
            info["lexical_seconds"] = round(time.perf_counter() - t, 3)
            a = np.concatenate([a[ok], np.asarray([x for x, _ in found], dtype=np.int64)])
            b = np.concatenate([b[ok], np.asarray([y for _, y in found], dtype=np.int64)])
            ok = np.ones(len(a), dtype=bool)
        a, b = a[ok], b[ok]
    else:
        a = b = np.zeros(0, dtype=np.int64)
    rep, repeat = from_pairs(n, a, b, first, count)
    distance = np.where(np.isfinite(best), np.clip(2.0 - 2.0 * best, 0.0, 4.0), np.nan).astype(np.float32)
    row_distance = distance[inverse]
    row_distance[count[inverse] > 1] = 0.0  # an identical copy is at distance 0
    info["seconds"] = round(time.perf_counter() - started, 3)
    return DedupResult(rep[inverse], repeat[inverse], row_distance, info)


def embedding_matches(
    texts: Sequence[str],
    reference: Sequence[str],
    encode: Encoder,
    threshold: float = 0.95,
    candidates: Encoder | None = None,
    candidate_threshold: float = 0.8,
    k: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """For each text, the most similar reference row with cos >= threshold (or -1), and that cos."""
    match = np.full(len(texts), -1, dtype=np.int64)
    score = np.zeros(len(texts), dtype=np.float32)
    if not len(texts) or not len(reference):
        return match, score
    fast = candidates or encode
    sims, ids, _ = search(fast(reference), k, queries=fast(texts), threshold=threshold)
    rows = np.repeat(np.arange(len(texts), dtype=np.int64), ids.shape[1])
    cols, flat = ids.reshape(-1).astype(np.int64), sims.reshape(-1)
    keep = (cols >= 0) & (flat >= (candidate_threshold if candidates else threshold))
    a, b, s = rows[keep], cols[keep], flat[keep]
    if candidates is not None and len(a):
        qa, rb = np.unique(a), np.unique(b)
        q = dict(zip(qa.tolist(), encode([texts[i] for i in qa]), strict=True))
        r = dict(zip(rb.tolist(), encode([reference[j] for j in rb]), strict=True))
        s = np.asarray([float(q[i] @ r[j]) for i, j in zip(a.tolist(), b.tolist(), strict=True)], dtype=np.float32)
    for i, j, sim in zip(a.tolist(), b.tolist(), s.tolist(), strict=True):
        if sim >= threshold and sim > score[i]:
            match[i], score[i] = j, sim
    return match, score
