"""Decontamination benchmark: recall on planted benchmark copies, and clean rows removed, per method.

    python benchmarks/decontam.py                      # 3,000 clean rows, 3 reference sets of 150
    python benchmarks/decontam.py --thresholds 0.8 0.85 0.9 --ngrams 8 13

Rows come from benchmarks/corpus.py's pool (real docstring sentences and chat prompts from ~40
templates, cleaned of near-duplicates). Three benchmark-like reference sets are drawn from it; the
dataset is 3,000 other pool rows (clean), look-alikes of reference prompts (same template, one
content slot changed: a different question, so clean too), verbatim copies of reference prompts,
and edited copies: typos (1-3), case, a prefix ("Please answer:"), punctuation, two words
swapped, a word replaced by a synonym, a sentence appended, or two of these. It prints recall on
verbatim and edited copies (per edit kind for the combined methods) and the share of clean rows
and of look-alikes removed, per method alone and combined; the baseline is `synth dedup
--reference` with its defaults (static candidates at cos 0.8, MiniLM at 0.95).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus

from synth.similarity import decontam, embed, neighbors
from synth.stages.dedup.decontaminate import DecontaminateParams

ANSWER_PREFIXES = ["Please answer: ", "Question: ", "Answer the following question. ", "Q: ", "Please help: "]
EDIT_KINDS = ["typo", "case", "prefix", "punct", "swap", "synonym", "append"]


def edit(rng: random.Random, text: str, kind: str) -> str:
    if kind == "prefix":
        return rng.choice(ANSWER_PREFIXES) + text
    if kind == "synonym":
        out = corpus._edit(rng, text, "paraphrase")
        return out if not out.startswith(text) else corpus._edit(rng, text, "typo")
    if kind == "append":
        return corpus._edit(rng, text, "append")
    return corpus._edit(rng, text, kind)


def make(n_clean: int, n_refs: int, n_sets: int, seed: int):
    rng = random.Random(seed)
    pool = corpus._clean_pool(0)
    rng.shuffle(pool)
    refs_items = pool[: n_refs * n_sets]
    clean = [text for text, _ in pool[n_refs * n_sets : n_refs * n_sets + n_clean]]
    names = ["alpacaeval", "arenahard", "mtbench", "wildbench"][:n_sets]
    sets = [
        decontam.ReferenceSet(names[s], [t for t, _ in refs_items[s * n_refs : (s + 1) * n_refs]], list(range(n_refs)))
        for s in range(n_sets)
    ]
    cores = {corpus._core(info[1]) for _, info in pool if info is not None}
    lookalikes: list[str] = []
    templated = [info for _, info in refs_items if info is not None and any(not k.startswith("n") for k in info[1])]
    for _ in range(20 * len(templated)):
        if len(lookalikes) >= n_clean // 10 or not templated:
            break
        t, values, prefix, suffix = rng.choice(templated)
        template, slots = corpus.TEMPLATES[t]
        key = rng.choice([k for k in slots if not k.startswith("n")])
        changed = dict(values, **{key: rng.choice([v for v in slots[key] if v != values[key]])})
        if corpus._core(changed) not in cores:
            cores.add(corpus._core(changed))
            lookalikes.append(corpus._render(template, changed, prefix, suffix))
    all_refs = [t for s in sets for t in s.texts]
    verbatim = rng.sample(all_refs, 50)
    edited: list[tuple[str, str]] = []
    for kind in EDIT_KINDS:
        for source in rng.sample(all_refs, 40):
            edited.append((edit(rng, source, kind), kind))
    for source in rng.sample(all_refs, 60):
        kinds = rng.sample(EDIT_KINDS, 2)
        text = source
        for k in kinds:
            text = edit(rng, text, k)
        edited.append((text, "+".join(sorted(kinds))))
    return sets, clean, lookalikes, verbatim, edited


def evaluate(label: str, found, clean, lookalikes, verbatim, edited, seconds: float, per_kind: bool = False) -> None:
    n_c, n_l, n_v = len(clean), len(lookalikes), len(verbatim)
    hit = [m is not None for m in found]
    c, lk, v, e = hit[:n_c], hit[n_c : n_c + n_l], hit[n_c + n_l : n_c + n_l + n_v], hit[n_c + n_l + n_v :]
    print(
        f"  {label:<34} verbatim {sum(v) / n_v:.3f}  edited {sum(e) / len(e):.3f}  "
        f"clean removed {sum(c) / n_c:.4f} ({sum(c)})  look-alikes removed {sum(lk) / max(n_l, 1):.3f}  "
        f"{seconds:6.1f} s"
    )
    if per_kind:
        kinds: dict[str, list[bool]] = {}
        for (_, kind), h in zip(edited, e, strict=True):
            kinds.setdefault(kind if "+" not in kind else "two edits", []).append(h)
        print("    edited recall by kind: " + ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in kinds.items()))
        missed = [t for (t, _), h in zip(edited, e, strict=True) if not h][:5]
        for t in missed:
            print(f"    missed: {t[:110]}")
        for t, m in [(t, m) for t, m in zip(clean, found[:n_c], strict=True) if m is not None][:5]:
            print(f"    clean removed ({m.method} {m.score:.2f}): {t[:70]!r} ~ {m.text[:60]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=3000)
    parser.add_argument("--refs", type=int, default=150, help="prompts per reference set")
    parser.add_argument("--sets", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.8, 0.85, 0.9])
    parser.add_argument("--ngrams", type=int, nargs="*", default=[8, 13])
    args = parser.parse_args()
    sets, clean, lookalikes, verbatim, edited = make(args.clean, args.refs, args.sets, args.seed)
    texts = clean + lookalikes + verbatim + [t for t, _ in edited]
    print(
        f"{len(sets)} reference sets x {args.refs} prompts; {len(clean)} clean rows, {len(lookalikes)} look-alikes, "
        f"{len(verbatim)} verbatim copies, {len(edited)} edited copies"
    )
    encode, fast = embed.sentence_encoder(), embed.static_encoder()
    encode(["warm up"]), fast(["warm up"])
    all_refs = [t for s in sets for t in s.texts]
    started = time.perf_counter()
    match, score = neighbors.embedding_matches(texts, all_refs, encode, 0.95, fast, 0.8)
    base = [
        None if j < 0 else decontam.Match("", int(j), all_refs[j], "dedup", float(s))
        for j, s in zip(match, score, strict=True)
    ]
    evaluate("dedup --reference (defaults)", base, clean, lookalikes, verbatim, edited, time.perf_counter() - started)
    d = DecontaminateParams()

    def run(label, per_kind=False, **kw):
        opts = dict(
            methods=d.methods, ngram=d.ngram, min_words=d.min_words, threshold=d.threshold,
            candidate_threshold=d.candidate_threshold, k=d.k, encode=encode, candidates=fast,
        )  # fmt: skip
        opts.update(kw)
        t = time.perf_counter()
        found = decontam.Index(sets, **opts).match(texts)
        evaluate(label, found, clean, lookalikes, verbatim, edited, time.perf_counter() - t, per_kind)

    for method in decontam.METHODS:
        run(f"{method} alone (defaults)", methods=[method])
    for n in args.ngrams:
        run(f"ngram alone, n={n}", methods=["ngram"], ngram=n)
    for th in args.thresholds:
        run(f"embedding alone, cos >= {th}", methods=["embedding"], threshold=th)
    for th in args.thresholds:
        run(f"combined, embedding cos >= {th}", threshold=th)
    run("combined (defaults)", per_kind=True)


if __name__ == "__main__":
    main()
