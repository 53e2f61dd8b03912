"""Benchmark decontamination: find the rows of a dataset that copy a benchmark's prompts.

A dataset that carries copies of AlpacaEval, Arena-Hard, MT-Bench or WildBench prompts inflates
the scores of a model trained on it, and copies are rarely verbatim: a typo, lower case, a
"Please answer:" prefix. Each row is compared with every reference set by these methods, cheapest
and most certain first; the first that matches names the method:

- `exact`: identical after normalization (NFKC, case-folded, punctuation removed, whitespace
  collapsed; `synth.similarity.duplicates.normalize_text`).
- `ngram`: a shared run of n normalized words (n = 13, the overlap test of the GPT-3 and Llama 2
  reports). A reference prompt shorter than n words (but at least `min_words` long) matches a row
  that contains all of its words as one contiguous run.
- `near_copy`: the row differs from a reference prompt only by misspellings, moved words or one run
  of words added at the start or the end (`synth.similarity.duplicates.near_copy`); candidates come from
  the embedding search and from a character 4-gram MinHash LSH, because embeddings lose misspelt
  words.
- `embedding`: cosine similarity of sentence embeddings (the static model2vec model finds
  candidates, MiniLM confirms) at or above its own threshold, lower than a within-set duplicate's:
  a rewording of a benchmark prompt is contamination even when it would not be a duplicate.

The reference index is built once; `match` then works on any number of texts (a stage's batch).
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .duplicates import near_copy, normalize_text

METHODS = ("exact", "ngram", "near_copy", "embedding")
REPORTED = (*METHODS, "llm")  # llm: a judge backend's verdict, off unless asked for
TEXT_COLUMNS = ("prompt", "instruction", "question", "turns", "conversation_input", "messages", "text", "input")
LEXICAL_CANDIDATES = 0.4  # char 4-gram Jaccard at which MinHash proposes near-copy candidates


def segments(value: Any) -> list[str]:
    """The prompts in a cell: a string, each string of a list (MT-Bench turns), or the user turns
    of a messages list (all contents when no turn names a role, as Arena-Hard's turns)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return [v for v in value if v.strip()]
        dicts = [v for v in value if isinstance(v, dict)]
        users = [m for m in dicts if m.get("role", m.get("from")) in ("user", "human")] or dicts
        return [str(c) for m in users if (c := m.get("content", m.get("value"))) and str(c).strip()]
    return [str(value)]


@dataclass
class ReferenceSet:
    """One benchmark: its name, and each prompt with the row it came from."""

    name: str
    texts: list[str]
    rows: list[int]
    path: str = ""
    column: str = ""

    @classmethod
    def from_rows(cls, name: str, rows: Iterable[dict], column: str | None = None, path: str = "") -> ReferenceSet:
        rows = list(rows)
        if column is None:
            have = set(rows[0]) if rows else set()
            column = next((c for c in TEXT_COLUMNS if c in have), None)
            if column is None:
                raise ValueError(
                    f"reference '{name}' has none of the columns {', '.join(TEXT_COLUMNS)} "
                    f"(it has: {', '.join(sorted(have)) or 'no rows'}); name its prompt column"
                )
        texts, index = [], []
        for i, row in enumerate(rows):
            for text in segments(row.get(column)):
                texts.append(text)
                index.append(i)
        return cls(name, texts, index, path, column)

    def info(self) -> dict:
        return {"path": self.path, "column": self.column, "rows": len(set(self.rows)), "prompts": len(self.texts)}


@dataclass
class Match:
    set: str
    row: int
    text: str
    method: str
    score: float

    def detail(self) -> str:
        return json.dumps(
            {"set": self.set, "row": self.row, "text": self.text, "method": self.method, "score": round(self.score, 4)},
            ensure_ascii=False,
        )


@dataclass
class Index:
    """Every reference set's prompts, indexed for each method (see the module docstring)."""

    refs: list[ReferenceSet]
    methods: Sequence[str] = METHODS
    ngram: int = 13
    min_words: int = 4
    threshold: float = 0.85
    candidate_threshold: float = 0.7
    k: int = 5
    encode: Any = None  # the confirming sentence encoder (texts -> unit vectors)
    candidates: Any = None  # a fast encoder proposing candidates (None: `encode` does both)
    items: list[tuple[int, int]] = field(default_factory=list)  # flat item -> (set, position)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.items = [(s, j) for s, ref in enumerate(self.refs) for j in range(len(ref.texts))]
        texts = [self.text(i) for i in range(len(self.items))]
        words = [normalize_text(t).split() for t in texts]
        self.exact: dict[str, int] = {}
        self.grams: dict[tuple[str, ...], int] = {}
        self.short: dict[tuple[str, ...], int] = {}
        for i, w in enumerate(words):
            if not w:
                continue
            self.exact.setdefault(" ".join(w), i)
            if len(w) >= self.ngram:
                for g in range(len(w) - self.ngram + 1):
                    self.grams.setdefault(tuple(w[g : g + self.ngram]), i)
            elif len(w) >= self.min_words:
                self.short.setdefault(tuple(w), i)
        self.short_lengths = sorted({len(w) for w in self.short})
        self.lsh = self.signatures = None
        if "near_copy" in self.methods and texts:
            from .duplicates import _lsh, minhash_signatures

            self.signatures = minhash_signatures(texts, 4, "char", 128)
            self.lsh = _lsh(LEXICAL_CANDIDATES, 128)
            with self.lsh.insertion_session() as session:
                for i, m in enumerate(self.signatures):
                    session.insert(i, m)
        self.faiss = None
        self._confirmed: dict[int, np.ndarray] = {}
        if {"embedding", "near_copy", "llm"} & set(self.methods) and self.encode is not None and texts:
            from .neighbors import build_index

            fast = self.candidates or self.encode
            self.faiss, _ = build_index(np.ascontiguousarray(fast(texts), dtype=np.float32), "flat")

    def text(self, item: int) -> str:
        s, j = self.items[item]
        return self.refs[s].texts[j]

    def _match(self, item: int, method: str, score: float) -> Match:
        s, j = self.items[item]
        return Match(self.refs[s].name, self.refs[s].rows[j], self.refs[s].texts[j], method, float(score))

    def _lexical(self, text: str) -> Match | None:
        w = normalize_text(text).split()
        if not w:
            return None
        if "exact" in self.methods and (i := self.exact.get(" ".join(w))) is not None:
            return self._match(i, "exact", 1.0)
        if "ngram" not in self.methods:
            return None
        hits: Counter[int] = Counter()
        for g in range(len(w) - self.ngram + 1):
            if (i := self.grams.get(tuple(w[g : g + self.ngram]))) is not None:
                hits[i] += 1
        if hits:
            i, n = hits.most_common(1)[0]
            ref_grams = max(1, len(normalize_text(self.text(i)).split()) - self.ngram + 1)
            return self._match(i, "ngram", min(1.0, n / ref_grams))
        for length in self.short_lengths:
            for g in range(len(w) - length + 1):
                if (i := self.short.get(tuple(w[g : g + length]))) is not None:
                    return self._match(i, "ngram", length / len(w))
        return None

    def _reference_vectors(self, items: list[int]) -> np.ndarray:
        with self._lock:
            missing = [i for i in items if i not in self._confirmed]
            if missing:
                for i, v in zip(missing, self.encode([self.text(i) for i in missing]), strict=True):
                    self._confirmed[i] = v
            return np.stack([self._confirmed[i] for i in items])

    def _candidates(self, texts: list[str]) -> list[dict[int, float]]:
        """Per text, reference items proposed by the fast embedding (with its cosine) or MinHash (nan)."""
        found: list[dict[int, float]] = [{} for _ in texts]
        if self.faiss is not None and texts:
            fast = self.candidates or self.encode
            sims, ids = self.faiss.search(np.ascontiguousarray(fast(texts), dtype=np.float32), self.k)
            floor = self.candidate_threshold if self.candidates is not None else min(self.threshold, 0.5)
            for t, (row_s, row_i) in enumerate(zip(sims.tolist(), ids.tolist(), strict=True)):
                found[t].update({i: s for i, s in zip(row_i, row_s, strict=True) if i >= 0 and s >= floor})
        if self.lsh is not None:
            from .duplicates import minhash_signatures

            for t, m in enumerate(minhash_signatures(texts, 4, "char", 128)):
                for i in self.lsh.query(m):
                    found[t].setdefault(int(i), float("nan"))
        return found

    def llm_candidates(self, texts: Sequence[str], k: int, floor: float) -> list[list[tuple[int, float]]]:
        """Per text, the k reference items the (fast) embedding finds closest, with their cosine, if
        at least `floor`: rephrasings that no other method matched, for an LLM to judge."""
        if self.faiss is None or not texts:
            return [[] for _ in texts]
        fast = self.candidates or self.encode
        sims, ids = self.faiss.search(np.ascontiguousarray(fast(list(texts)), dtype=np.float32), k)
        return [
            [(i, s) for i, s in zip(row_i, row_s, strict=True) if i >= 0 and s >= floor]
            for row_s, row_i in zip(sims.tolist(), ids.tolist(), strict=True)
        ]

    def match(self, texts: Sequence[str]) -> list[Match | None]:
        """For each text, the first reference prompt it matches (by method order), or None."""
        out: list[Match | None] = [self._lexical(t) if t else None for t in texts]
        todo = [t for t, m in enumerate(out) if m is None and texts[t]]
        if not todo or not (self.faiss is not None or self.lsh is not None):
            return out
        cands = self._candidates([texts[t] for t in todo])
        if "near_copy" in self.methods:
            for t, found in zip(todo, cands, strict=True):
                for i in sorted(found, key=lambda i: -np.nan_to_num(found[i], nan=-1.0)):
                    if near_copy(texts[t], self.text(i)):
                        out[t] = self._match(i, "near_copy", 1.0 if np.isnan(found[i]) else found[i])
                        break
        if "embedding" not in self.methods or self.faiss is None:
            return out
        pairs = [(t, i) for t, found in zip(todo, cands, strict=True) if out[t] is None for i in found]
        if not pairs:
            return out
        rows = sorted({t for t, _ in pairs})
        row_vec = dict(zip(rows, self.encode([texts[t] for t in rows]), strict=True))
        items = sorted({i for _, i in pairs})
        ref_vec = dict(zip(items, self._reference_vectors(items), strict=True))
        best: dict[int, tuple[float, int]] = {}
        for t, i in pairs:
            s = float(row_vec[t] @ ref_vec[i])
            if s >= self.threshold and s > best.get(t, (-1.0, -1))[0]:
                best[t] = (s, i)
        for t, (s, i) in best.items():
            out[t] = self._match(i, "embedding", s)
        return out


# ---- reports ----


def summarize(details: Iterable[str], rows_in: int | None, references: dict | None = None, examples: int = 3) -> dict:
    """A report from the drop details (`Match.detail()` JSON): counts per set and method, examples."""
    per_set: dict[str, Counter] = defaultdict(Counter)
    shown: dict[str, list] = defaultdict(list)
    removed = 0
    for raw in details:
        try:
            d = json.loads(raw)
        except (TypeError, ValueError):
            continue
        removed += 1
        per_set[d["set"]][d["method"]] += 1
        if len(shown[d["set"]]) < examples:
            shown[d["set"]].append(d)
    by_method: Counter = Counter()
    for counts in per_set.values():
        by_method.update(counts)
    names = list(dict.fromkeys([*(references or {}), *per_set]))
    return {
        "rows_in": rows_in,
        "rows_removed": removed,
        "by_method": dict(by_method),
        "sets": {
            n: {
                **(references or {}).get(n, {}),
                "removed": sum(per_set[n].values()),
                "by_method": dict(per_set[n]),
                "examples": shown[n],
            }
            for n in names
        },
    }


def markdown(report: dict) -> str:
    def cell(text: str, n: int = 90) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return text if len(text) <= n else text[: n - 1] + "…"

    rows_in = report.get("rows_in")
    lines = [
        "# Decontamination",
        "",
        f"{report['rows_removed']:,} rows removed" + (f" of {rows_in:,}" if rows_in is not None else "") + ".",
        "",
        "| reference set | prompts | removed | " + " | ".join(REPORTED) + " |",
        "|---|---|---|" + "---|" * len(REPORTED),
    ]
    for name, s in report["sets"].items():
        counts = " | ".join(str(s["by_method"].get(m, 0)) for m in REPORTED)
        lines.append(f"| {cell(name, 40)} | {s.get('prompts', '?')} | {s['removed']} | {counts} |")
    examples = [e for s in report["sets"].values() for e in s["examples"]]
    if examples:
        lines += ["", "| set | row | method | score | reference prompt |", "|---|---|---|---|---|"]
        for e in examples:
            lines.append(f"| {cell(e['set'], 40)} | {e['row']} | {e['method']} | {e['score']} | {cell(e['text'])} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path: Path) -> tuple[Path, Path]:
    """`report` as JSON at json_path and as Markdown beside it (same name, .md)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    md = json_path.with_suffix(".md")
    md.write_text(markdown(report), encoding="utf-8")
    return json_path, md


def stage_report(stage_path: Path, references: dict | None = None) -> dict:
    """The report of a finished `decontaminate` stage, from its folder's dropped rows and markers
    (so a resumed run reports every batch, not only this session's)."""
    import pyarrow.parquet as pq

    meta = Path(stage_path) / ".synth"
    details: list[str] = []
    for file in sorted(meta.glob("shard-*.dropped.parquet")):
        table = pq.read_table(file, columns=["reason", "detail"])
        for reason, detail in zip(table["reason"].to_pylist(), table["detail"].to_pylist(), strict=True):
            if str(reason).startswith("contaminated:"):
                details.append(detail)
    rows_in = 0
    for marker in meta.glob("shard-*.json"):
        try:
            rows_in += int(json.loads(marker.read_text()).get("rows_in", 0))
        except (OSError, ValueError, TypeError):
            pass
    return summarize(details, rows_in, references)
