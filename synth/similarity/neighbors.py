"""Embedding dedup with FAISS, as Magpie's gen_dis.py does it, plus a fast cascade.

Similarity is cosine on unit vectors (FAISS inner product). Magpie searched a flat L2 index, whose
distances are squared L2; on unit vectors d = |x - y|^2 = 2 - 2 cos(x, y), so Magpie's "distance <
0.05" is "cosine > 0.975". `threshold` here is a cosine similarity (a pair is a duplicate when
cos >= threshold), and `min_neighbor_distance` is reported in Magpie's unit, 2 - 2 cos, so values
compare with the released Magpie datasets.

Per row (see `synth.similarity.duplicates.DedupResult`): `min_neighbor_distance` (the nearest other row,
Magpie's "2nd hit"), `repeat_count` (rows within the threshold, itself excluded) and
`representative` (the lowest row index within the threshold, itself included). Identical texts are
grouped before the search, so a set of all-identical rows is handled exactly whatever `k` is; near
duplicates are looked for among each row's `k` nearest neighbours (Magpie used 500), so
`repeat_count` saturates at about k. Pairs count from either side (if B is among A's neighbours
within the threshold, A counts among B's).

Index: exact `IndexFlatIP` below `exact_below` rows; above it an approximate index (IVF by default,
or HNSW), whose recall is measured on a sample of rows against an exact search of those rows and
returned in `info` ("recall": neighbours within the threshold found / present, per query; a pair
is found when either side finds it, so the pair recall is higher).

Scale: texts come as a list or an Arrow string array (the dedup stage's column), read in chunks;
identical texts are grouped by a 16-byte hash; vectors are written chunk by chunk to numpy memory
maps in a temporary directory, and the search runs in chunks of queries keeping only the pairs it
needs, so no per-row Python objects are built beyond the chunk at hand.

Cascade (`candidates=` a fast encoder, normally the static model2vec model): the fast vectors find
candidate pairs with cos >= `candidate_threshold`; only rows in a candidate pair are encoded with the
confirming model, and a pair is a duplicate when the confirming model's cos >= `threshold`. Then
`min_neighbor_distance` is the confirming model's distance to the nearest candidate it was compared
with, and NaN for rows that had none (nothing near them, or only near copies).

Near copies (`near_copies=True`): sentence embeddings lose misspelt words (cos of a prompt and
its typo'd copy can fall to 0.6), so the candidate pairs, each row's 5 nearest neighbours with
first-stage cos >= 0.6, and (below 200k distinct texts, where it takes seconds, not minutes) the
pairs a character 4-gram MinHash LSH proposes (Jaccard >= 0.4) are also duplicates when
`synth.similarity.duplicates.near_copy` finds they differ only by typos, moved words or a short sentence
added at one end (`synth.similarity.nearcopy` rules most pairs out with numpy first). A look-alike
that changes a word ("capital of France" / "of Spain") is no near copy. Near copies are settled
before the cascade's confirming model, which then sees only the other candidates; they count in
`repeat_count` and `representative`, not in `min_neighbor_distance`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import MissingDependency
from .duplicates import DedupResult, from_pairs, group_keys, text_keys
from .embed import CHUNK, TextColumn, Texts, encode_rows
from .nearcopy import near_copies as check_near_copies

Encoder = Callable[[Sequence[str]], np.ndarray]
log = logging.getLogger(__name__)
LEXICAL_CANDIDATES = 0.4  # MinHash LSH threshold (char 4-gram Jaccard) proposing near-copy candidates
LEXICAL_BELOW = 200_000  # unique texts up to which MinHash proposes near-copy candidates (minutes above)
RESCORE_MARGIN = 0.01  # approximate (8-bit) index scores: pairs within this of a threshold are scored exactly
NEAR_COPY_COS, NEAR_COPY_RANK = 0.6, 5  # neighbours checked for near copies: cos >= 0.6 among the 5 nearest


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependency("faiss-cpu", "embed", "Embedding dedup") from None
    return faiss


def _f32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_index(vectors: np.ndarray, kind: str = "auto", exact_below: int = 50_000, nprobe: int = 32):
    """An inner-product index over unit vectors (an array or a memory map, added in chunks): flat
    (exact), IVF or HNSW (approximate). IVF keeps 8-bit codes (a cos off by about 0.001, which
    neighbour_pairs scores again exactly), trains 10 k-means rounds on 32 rows per list and probes
    `nprobe` of its 4 sqrt(n) lists. At 1M rows (planted near duplicates, static vectors), a planted
    pair is found from one side or the other with 8 probes for 94.7% of pairs, 16: 97.0%, 32: 98.1%
    (243 us per query on 2 cores); 8-bit codes search about 2x faster than full-precision vectors."""
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
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.niter = 10
        rng = np.random.default_rng(0)
        size = nlist * 32
        sample = _f32(vectors[np.sort(rng.choice(n, size=size, replace=False))] if n > size else vectors)
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, ivf, hnsw, auto)")
    for start in range(0, n, 4 * CHUNK):
        index.add(_f32(vectors[start : start + 4 * CHUNK]))
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
    queries = vectors if queries is None else queries
    started = time.perf_counter()
    built, kind = build_index(vectors, index, exact_below)
    k = max(1, min(k, len(vectors)))
    sims = np.zeros((len(queries), k), dtype=np.float32)
    ids = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), CHUNK):
        sims[start : start + CHUNK], ids[start : start + CHUNK] = built.search(_f32(queries[start : start + CHUNK]), k)
    info: dict = {"index": kind, "k": k, "search_seconds": round(time.perf_counter() - started, 3)}
    if kind != "flat" and len(queries):
        info.update(measure_recall(vectors, queries, sims, ids, k, threshold, recall_sample))
    return sims, ids, info


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest by inner product, over `vectors` read in chunks (a memory map stays on disk)."""
    faiss = _faiss()
    top_sims = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    top_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), 4 * CHUNK):
        part = faiss.IndexFlatIP(vectors.shape[1])
        part.add(_f32(vectors[start : start + 4 * CHUNK]))
        s, i = part.search(_f32(queries), min(k, part.ntotal))
        sims, ids = np.hstack([top_sims, s]), np.hstack([top_ids, np.where(i >= 0, i + start, -1)])
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top_sims, top_ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    return top_sims, top_ids


def measure_recall(vectors, queries, sims, ids, k, threshold, sample, picked=None) -> dict:
    """Recall of an approximate search against an exact one on a sample of queries (`sims`/`ids`:
    the approximate results of every query, or of the `picked` ones only)."""
    if picked is None:
        rng = np.random.default_rng(0)
        picked = np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))
        sims, ids = sims[picked], ids[picked]
    true_sims, true_ids = exact_top(vectors, queries[picked], k)
    found = present = top1 = 0
    for row in range(len(picked)):
        want = {int(j) for j, s in zip(true_ids[row], true_sims[row], strict=True) if j >= 0 and s >= threshold}
        got = {int(j) for j, s in zip(ids[row], sims[row], strict=True) if j >= 0 and s >= threshold}
        present += len(want)
        found += len(want & got)
        top1 += int(ids[row][0] == true_ids[row][0] or math.isclose(sims[row][0], true_sims[row][0], abs_tol=1e-6))
    return {
        "recall": round(found / present, 4) if present else 1.0,
        "recall_pairs": present,
        "recall_found": found,
        "top1_agreement": round(top1 / len(picked), 4),
    }


def neighbour_pairs(
    vectors: np.ndarray,
    k: int,
    keep: float,
    index: str = "auto",
    exact_below: int = 50_000,
    threshold: float = 0.9,
    recall_sample: int = 500,
    nearest: bool = False,
    near: float = np.inf,
    near_rank: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """Each row's k nearest other rows, streamed in chunks of queries: the pairs (row, neighbour,
    cos, rank among the row's neighbours) with cos >= keep, or with cos >= near among the row's
    `near_rank` nearest; with `nearest`, each row's highest cos to another row (from either side)."""
    n = len(vectors)
    started = time.perf_counter()
    built, kind = build_index(vectors, index, exact_below)
    info: dict = {"index": kind, "k": max(1, min(k, n)), "index_seconds": round(time.perf_counter() - started, 3)}
    k = info["k"]
    best = np.full(n, -np.inf, dtype=np.float32) if nearest else None
    picked = np.zeros(0, dtype=np.int64)
    if kind != "flat":
        picked = np.sort(np.random.default_rng(0).choice(n, size=min(recall_sample, n), replace=False))
    picked_sims, picked_ids = np.zeros((len(picked), k), np.float32), np.zeros((len(picked), k), np.int64)
    found: list[tuple[np.ndarray, ...]] = []
    started = time.perf_counter()
    for start in range(0, n, CHUNK):
        sims, ids = built.search(_f32(vectors[start : start + CHUNK]), k)
        here = (picked >= start) & (picked < start + len(sims))
        picked_sims[here], picked_ids[here] = sims[picked[here] - start], ids[picked[here] - start]
        rows = np.repeat(np.arange(start, start + len(sims), dtype=np.int64), k)
        other = (ids >= 0) & (ids != rows.reshape(ids.shape))
        rank = (np.cumsum(other, axis=1) - 1).reshape(-1)
        cols, flat, other = ids.reshape(-1).astype(np.int64), sims.reshape(-1), other.reshape(-1)
        if best is not None:
            np.maximum.at(best, rows[other], flat[other])
            np.maximum.at(best, cols[other], flat[other])
        margin = 0.0 if kind == "flat" else RESCORE_MARGIN
        ok = other & ((flat >= keep - margin) | ((flat >= near - margin) & (rank < near_rank)))
        a, b, s, r = rows[ok], cols[ok], flat[ok], rank[ok].astype(np.int32)
        if margin:  # approximate scores: the exact cos of the pairs kept
            s = _rowwise(vectors, a, b)
            ok = (s >= keep) | ((s >= near) & (r < near_rank))
            a, b, s, r = a[ok], b[ok], s[ok], r[ok]
        found.append((a, b, s, r))
    info["search_seconds"] = round(time.perf_counter() - started, 3)
    if len(picked):
        t = time.perf_counter()
        if kind != "flat":
            rows = np.repeat(picked, k)
            exact = _rowwise(vectors, rows, np.maximum(picked_ids.reshape(-1), 0)).reshape(picked_sims.shape)
            picked_sims = np.where(picked_ids >= 0, exact, picked_sims)
        info.update(measure_recall(vectors, vectors, picked_sims, picked_ids, k, threshold, 0, picked))
        info["recall_seconds"] = round(time.perf_counter() - t, 3)
    parts = [np.concatenate(p) for p in zip(*found, strict=True)] if found else []
    a, b, s, r = parts or [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int32)]
    return a, b, s, r, best, info


def group_identical(column: TextColumn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identical texts by a 16-byte hash, read in chunks: each row's group (in first-seen order),
    each group's first row and size (`synth.similarity.duplicates.group_identical` without the texts)."""
    keys = [text_keys(chunk, normalize=False) for _, chunk in column.chunks()]
    return group_keys(np.concatenate(keys) if keys else np.zeros(0, dtype="V16"))


class _Unique:
    """The unique texts, by their position among the unique ones."""

    def __init__(self, column: TextColumn, first: np.ndarray):
        self.column, self.first = column, first

    def __call__(self, ids: np.ndarray) -> list[str]:
        return self.column.take(self.first[np.asarray(ids, dtype=np.int64)])


def _rowwise(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """cos of each pair (vectors[a[i]], other[b[i]]), in chunks."""
    other = vectors if other is None else other
    out = np.zeros(len(a), dtype=np.float32)
    for start in range(0, len(a), 4 * CHUNK):
        x, y = _f32(vectors[a[start : start + 4 * CHUNK]]), _f32(other[b[start : start + 4 * CHUNK]])
        out[start : start + len(x)] = np.einsum("ij,ij->i", x, y)
    return out


def lexical_pairs(uniq: _Unique, n: int, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) of unique texts that a character 4-gram MinHash LSH proposes (Jaccard >=
    LEXICAL_CANDIDATES), signatures computed in chunks into a memory map."""
    from .duplicates import band_pairs, minhash_signatures

    signatures = np.lib.format.open_memmap(tmp / "minhash.npy", mode="w+", dtype=np.uint64, shape=(n, 128))
    for start in range(0, n, CHUNK):
        ids = np.arange(start, min(n, start + CHUNK))
        for row, m in zip(ids.tolist(), minhash_signatures(uniq(ids), 4, "char", 128), strict=True):
            signatures[row] = m.hashvalues
    a, b = band_pairs(signatures, LEXICAL_CANDIDATES, 128)
    del signatures
    return a, b


def dedup_embedding(
    texts: Texts,
    encode: Encoder,
    threshold: float = 0.95,
    k: int = 100,
    index: str = "auto",
    exact_below: int = 50_000,
    candidates: Encoder | None = None,
    candidate_threshold: float = 0.8,
    near_copies: bool = False,
    work_dir: str | Path | None = None,
    dtype: str = "float32",
    near_copy_threshold: float = NEAR_COPY_COS,
    near_copy_rank: int = NEAR_COPY_RANK,
    lexical_below: int = LEXICAL_BELOW,
) -> DedupResult:
    """Near-duplicates by embedding similarity (see the module docstring).

    `texts`: a list or an Arrow string array, read in chunks; vectors go to memory maps of `dtype`
    in a temporary directory under `work_dir` (default: the system's), removed at the end.
    `near_copies`: also count as duplicates the pairs that are near copies
    (`synth.similarity.duplicates.near_copy`: misspelt words, a short sentence added at an end) among the
    candidate pairs, each row's `near_copy_rank` nearest with first-stage cos >=
    `near_copy_threshold`, and (below `lexical_below` unique texts) the pairs a character MinHash
    proposes. Sentence embeddings are weak on typos (a misspelt word becomes other word pieces: cos
    can fall to 0.6), while a look-alike that changes a word ("France" -> "Spain") is no near copy.
    In the cascade, a pair settled as a near copy is not sent to the confirming model."""
    started = time.perf_counter()
    column = TextColumn(texts)
    inverse, first, count = group_identical(column)
    n = len(first)
    uniq = _Unique(column, first)
    info: dict = {"method": "embedding", "unique_texts": n, "cascade": candidates is not None}
    info["group_seconds"] = round(time.perf_counter() - started, 3)
    best = np.full(n, -np.inf, dtype=np.float32)  # cos to the nearest other unique text
    a = b = np.zeros(0, dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="synth-embed-", dir=work_dir) as tmp_dir:
        tmp = Path(tmp_dir)
        if n > 1:
            t = time.perf_counter()
            vectors = encode_rows(column, first, candidates or encode, tmp / "fast.npy", dtype)
            info["encode_seconds"] = round(time.perf_counter() - t, 3)
            log.info("%d unique texts encoded in %.1f s", n, info["encode_seconds"])
            keep = candidate_threshold if candidates else threshold
            keep = min(keep, candidate_threshold) if near_copies else keep
            near = near_copy_threshold if near_copies else np.inf
            a, b, s, rank, nearest, search_info = neighbour_pairs(
                vectors, k + 1, keep, index, exact_below, threshold, nearest=candidates is None, near=near,
                near_rank=near_copy_rank,
            )  # fmt: skip
            info.update(search_info)
            log.info("neighbour search: %s", search_info)
            del vectors
            copies = np.zeros(len(a), dtype=bool)
            check = np.zeros(0, dtype=np.int64)
            if near_copies:
                t = time.perf_counter()
                check = (s >= candidate_threshold) | ((s >= near_copy_threshold) & (rank < near_copy_rank))
                check = np.flatnonzero(check & ((s < threshold) | (candidates is not None)))
                copies[check], full = check_near_copies(uniq, a[check], b[check])
                info["near_copy_checked"], info["near_copy_full_checks"] = len(check), full
                info["near_copy_seconds"] = round(time.perf_counter() - t, 3)
                log.info("near copies: %d pairs, %d fully checked, %.1f s", len(check), full, info["near_copy_seconds"])
            if candidates is not None:
                sent = np.flatnonzero((s >= candidate_threshold) & ~copies)
                involved = np.unique(np.concatenate([a[sent], b[sent]]))
                log.info("confirming %d pairs: %d texts to encode", len(sent), len(involved))
                t = time.perf_counter()
                confirm = encode_rows(column, first[involved], encode, tmp / "confirm.npy", dtype)
                info["confirm_encoded"] = len(involved)
                info["confirm_seconds"] = round(time.perf_counter() - t, 3)
                log.info("confirmed in %.1f s", info["confirm_seconds"])
                cos = _rowwise(confirm, np.searchsorted(involved, a[sent]), np.searchsorted(involved, b[sent]))
                del confirm
                np.maximum.at(best, a[sent], cos)
                np.maximum.at(best, b[sent], cos)
                ok = copies.copy()
                ok[sent] = cos >= threshold
            else:
                best = nearest if nearest is not None else best
                ok = copies | (s >= threshold)
            if near_copies and n <= lexical_below:
                # embeddings (static ones most) lose misspelt words: character MinHash proposes more pairs
                t = time.perf_counter()
                la, lb = lexical_pairs(uniq, n, tmp)
                seen = np.unique(np.concatenate([a[check] * n + b[check], b[check] * n + a[check]]))
                extra = ~np.isin(la * n + lb, seen)
                found, lexical_full = check_near_copies(uniq, la[extra], lb[extra])
                info["near_copy_checked"] += int(extra.sum())
                info["near_copy_full_checks"] += lexical_full
                info["lexical_seconds"] = round(time.perf_counter() - t, 3)
                a, b = np.concatenate([a[ok], la[extra][found]]), np.concatenate([b[ok], lb[extra][found]])
            else:
                a, b = a[ok], b[ok]
    rep, repeat = from_pairs(n, a, b, first, count)
    distance = np.where(np.isfinite(best), np.clip(2.0 - 2.0 * best, 0.0, 4.0), np.nan).astype(np.float32)
    row_distance = distance[inverse]
    row_distance[count[inverse] > 1] = 0.0  # an identical copy is at distance 0
    info["seconds"] = round(time.perf_counter() - started, 3)
    return DedupResult(rep[inverse], repeat[inverse], row_distance, info)


def embedding_matches(
    texts: Texts,
    reference: Texts,
    encode: Encoder,
    threshold: float = 0.95,
    candidates: Encoder | None = None,
    candidate_threshold: float = 0.8,
    k: int = 5,
    work_dir: str | Path | None = None,
    dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """For each text, the most similar reference row with cos >= threshold (or -1), and that cos.
    Texts and reference: lists or Arrow string arrays; vectors go to memory maps as in dedup_embedding."""
    match = np.full(len(texts), -1, dtype=np.int64)
    score = np.zeros(len(texts), dtype=np.float32)
    if not len(texts) or not len(reference):
        return match, score
    queries, refs = TextColumn(texts), TextColumn(reference)
    fast = candidates or encode
    with tempfile.TemporaryDirectory(prefix="synth-embed-", dir=work_dir) as tmp_dir:
        tmp = Path(tmp_dir)
        ref_vectors = encode_rows(refs, np.arange(len(refs)), fast, tmp / "reference.npy", dtype)
        query_vectors = encode_rows(queries, np.arange(len(queries)), fast, tmp / "texts.npy", dtype)
        sims, ids, _ = search(ref_vectors, k, queries=query_vectors, threshold=threshold)
        del ref_vectors, query_vectors
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), ids.shape[1])
        cols, flat = ids.reshape(-1).astype(np.int64), sims.reshape(-1)
        keep = (cols >= 0) & (flat >= (candidate_threshold if candidates else threshold))
        a, b, s = rows[keep], cols[keep], flat[keep]
        if candidates is not None and len(a):
            qa, rb = np.unique(a), np.unique(b)
            q = encode_rows(queries, qa, encode, tmp / "texts-confirm.npy", dtype)
            r = encode_rows(refs, rb, encode, tmp / "reference-confirm.npy", dtype)
            s = _rowwise(q, np.searchsorted(qa, a), np.searchsorted(rb, b), r)
            del q, r
    good = s >= threshold
    a, b, s = a[good], b[good], s[good]
    # per text, the highest cos; among equal ones the nearest-ranked neighbour
    order = np.lexsort((np.arange(len(a)), -s, a))
    top = order[np.r_[True, a[order][1:] != a[order][:-1]]] if len(a) else order
    match[a[top]], score[a[top]] = b[top], s[top]
    return match, score
