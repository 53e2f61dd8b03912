"""Dedup benchmark: precision, recall and rows/s of each method on prompts with planted duplicates.

    python benchmarks/dedup.py                       # 10k rows, every method
    python benchmarks/dedup.py --sizes 10000 100000 --methods exact minhash cascade faiss
    python benchmarks/dedup.py --sizes 1000000 --methods cascade --child   # 1M rows, as the stage runs it

With --child each method runs in its own process on the text column read from Parquet as an Arrow
array (as the dedup stage passes it), and its peak RSS (getrusage) is reported with its seconds.

The corpus (benchmarks/corpus.py) has 10% planted near-duplicates (case, punctuation, typos,
swapped words, paraphrase-style rewording, appended sentence) and 10% distinct look-alikes (same
template, one key slot changed). A row is a true duplicate iff an earlier row shares its cluster;
precision and recall are over the rows each method drops. Times are end to end (embedding
included); models are loaded (and the static model distilled, once) before timing.

Methods: exact, minhash (Jaccard >= 0.7 on char 5-grams), cascade (synth's default embedding
dedup: static model2vec candidates at cos >= 0.8, MiniLM confirms at cos >= 0.95, plus near copies
(typos, moved words, a short added sentence) among static and character-MinHash candidates),
minilm (MiniLM on every row, as Magpie did, plus near copies; slow), static (the static model alone
at cos >= 0.95), and faiss (the neighbour search alone on static vectors, k=101: flat vs IVF vs
HNSW with measured recall).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from corpus import make_corpus

from synth.similarity import duplicates as dedup
from synth.similarity import embed, neighbors
from synth.stages.dedup.dedup import DedupParams


def truth(clusters: list[int]) -> np.ndarray:
    seen: set[int] = set()
    out = np.zeros(len(clusters), dtype=bool)
    for i, c in enumerate(clusters):
        out[i] = c in seen
        seen.add(c)
    return out


def score(dropped: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    hits = int((dropped & expected).sum())
    precision = hits / max(int(dropped.sum()), 1)
    recall = hits / max(int(expected.sum()), 1)
    return precision, recall


CANDIDATE_THRESHOLD: float | None = None  # --candidate-threshold: instead of the stage's default


def run_method(name: str, texts, threshold: float | None):
    if name == "exact":
        return dedup.dedup_exact(texts)
    if name == "minhash":
        return dedup.dedup_minhash(texts, threshold or 0.7)
    defaults = DedupParams()  # the `dedup` stage's defaults
    if name == "cascade":
        return neighbors.dedup_embedding(
            texts,
            embed.sentence_encoder(),
            threshold or defaults.effective_threshold(),
            candidates=embed.static_encoder(),
            candidate_threshold=CANDIDATE_THRESHOLD or defaults.candidate_threshold,
            near_copies=defaults.near_copies,
        )
    if name == "minilm":
        return neighbors.dedup_embedding(
            texts,
            embed.sentence_encoder(),
            threshold or defaults.effective_threshold(),
            candidate_threshold=defaults.candidate_threshold,
            near_copies=defaults.near_copies,
        )
    if name == "static":
        return neighbors.dedup_embedding(texts, embed.static_encoder(), threshold or defaults.effective_threshold())
    raise SystemExit(f"unknown method {name}")


def faiss_step(texts: list[str]) -> None:
    vectors = embed.static_encoder()(texts)
    for kind in ("flat", "ivf", "hnsw"):
        started = time.perf_counter()
        _, _, info = neighbors.search(vectors, 101, index=kind, threshold=0.8, recall_sample=1000)
        seconds = time.perf_counter() - started - info.get("recall_seconds", 0)
        recall = info.get("recall", 1.0)
        top1 = info.get("top1_agreement", 1.0)
        print(
            f"  faiss {kind:<5} n={len(texts):>6} k=101  search {info['search_seconds']:7.2f} s "
            f"(with recall check {seconds:6.2f} s)  recall@cos>=0.8 {recall:.4f}  top-1 agreement {top1:.4f}"
        )


def child(path: str, name: str, threshold: float | None) -> None:
    """One method on the column of a Parquet corpus, in this process: JSON on stdout, progress on stderr."""
    import logging

    logging.basicConfig(level=logging.INFO, format="    %(asctime)s %(message)s", stream=sys.stderr)
    import pyarrow.parquet as pq

    if name in {"cascade", "minilm", "static"}:
        embed.static_encoder()(["warm up"])
        embed.sentence_encoder()(["warm up"])
    table = pq.read_table(path)
    texts, expected = table.column("text"), truth(table.column("cluster").to_numpy().tolist())
    del table
    started = time.perf_counter()
    result = run_method(name, texts, threshold)
    seconds = time.perf_counter() - started
    precision, recall = score(~result.keep, expected)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"precision": precision, "recall": recall, "dropped": int((~result.keep).sum()), "seconds": seconds}
    print(json.dumps(out | {"peak_rss_mb": round(peak), "info": result.info}))


def run_children(n: int, methods: list[str], threshold: float | None, keep_dir: str | None) -> None:
    import pyarrow as pa
    import pyarrow.compute
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        path = Path(keep_dir or tmp) / f"corpus-{n}.parquet"
        if not path.exists():
            started = time.perf_counter()
            texts, clusters = make_corpus(n)
            pq.write_table(pa.table({"text": texts, "cluster": clusters}), path)
            print(f"  (corpus made in {time.perf_counter() - started:.0f} s)", flush=True)
            del texts, clusters
        table = pq.read_table(path)
        expected = truth(table.column("cluster").to_numpy().tolist())
        median = int(np.median(pa.compute.utf8_length(table.column("text")).to_numpy()))
        print(f"\n{table.num_rows} rows, {int(expected.sum())} planted duplicates, median {median} chars", flush=True)
        del table
        for name in methods:
            cmd = [sys.executable, __file__, "--child", str(path), name]
            cmd += ["--threshold", str(threshold)] if threshold else []
            cmd += ["--candidate-threshold", str(CANDIDATE_THRESHOLD)] if CANDIDATE_THRESHOLD else []
            done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # progress: stderr
            out = json.loads(done.stdout.splitlines()[-1])
            extra = {k: v for k, v in out["info"].items() if k not in ("method", "cascade", "k")}
            print(
                f"  {name:<8} precision {out['precision']:.4f}  recall {out['recall']:.4f}  dropped {out['dropped']:>7}"
                f"  {out['seconds']:8.1f} s  {n / out['seconds']:9.0f} rows/s  peak RSS {out['peak_rss_mb']} MB"
                f"  {extra}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--methods", nargs="+", default=["exact", "minhash", "cascade", "static", "minilm", "faiss"])
    parser.add_argument("--threshold", type=float, help="override each method's default threshold")
    parser.add_argument(
        "--candidate-threshold", type=float, help="cascade: static cos sent to MiniLM (default: the stage's)"
    )
    parser.add_argument("--corpus-dir", help="with --child: keep the corpus Parquet here and reuse it")
    parser.add_argument("--child", nargs="*", help="each method in its own process on an Arrow column (peak RSS)")
    args = parser.parse_args()
    global CANDIDATE_THRESHOLD
    CANDIDATE_THRESHOLD = args.candidate_threshold
    if args.child:  # internal: --child CORPUS.parquet METHOD
        return child(args.child[0], args.child[1], args.threshold)
    if args.child is not None:
        for n in args.sizes:
            run_children(n, args.methods, args.threshold, args.corpus_dir)
        return
    if {"cascade", "minilm", "static", "faiss"} & set(args.methods):
        embed.static_encoder()(["warm up"])
        embed.sentence_encoder()(["warm up"])
    for n in args.sizes:
        texts, clusters = make_corpus(n)
        expected = truth(clusters)
        median = int(np.median([len(t) for t in texts]))
        print(f"\n{n} rows, {int(expected.sum())} planted duplicates, median {median} chars")
        for name in args.methods:
            if name == "faiss":
                faiss_step(texts)
                continue
            started = time.perf_counter()
            result = run_method(name, texts, args.threshold)
            seconds = time.perf_counter() - started
            precision, recall = score(~result.keep, expected)
            extra = {k: v for k, v in result.info.items() if k not in ("method", "cascade", "k")}
            print(
                f"  {name:<8} precision {precision:.4f}  recall {recall:.4f}  dropped {int((~result.keep).sum()):>6}"
                f"  {seconds:8.1f} s  {n / seconds:9.0f} rows/s  {extra}"
            )


if __name__ == "__main__":
    main()
