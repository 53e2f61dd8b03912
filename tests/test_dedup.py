"""Dedup on real text with the real models: exact, MinHash, embedding (MiniLM, static cascade, FAISS),
the `dedup` stage in real pipelines, and `synth dedup` on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from synth import load_pipeline, read_output, run_pipeline
from synth.cli.dedup import dedup as dedup_command
from synth.runs import Run
from synth.similarity import duplicates as dedup
from synth.similarity import embed, nearcopy, neighbors

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")
pytest.importorskip("datasketch")

PROMPTS = [
    "How do I reverse a linked list in Python?",  # 0
    "how do I reverse a linked-list in Python",  # 1  same after normalization
    "What is the capital of France?",  # 2
    "What is the capital of Spain?",  # 3  look-alike, distinct
    "Explain photosynthesis to a ten-year-old.",  # 4
    "Explain photosynthesis to a ten-year-old. Keep it short, please.",  # 5  appended sentence
    "Write a haiku about the ocean at night.",  # 6
    "Write a haiku about teh ocean at night.",  # 7  typo
    "Give me a recipe for banana bread that serves four people.",  # 8
    "Summarize the main causes of the French Revolution.",  # 9
    "Write a Python function that checks whether a number is prime.",  # 10
    "Write a Rust function that checks whether a number is prime.",  # 11 look-alike, distinct
]
# Longer prompts for MinHash, whose character shingles need some length to absorb an edit.
LONG = [
    "I am planning a two-week trip to Japan in April with my parents, who do not walk much. "
    "Which cities should we visit, and how should we travel between them?",
    "I am planning a two-week trip to Japan in April with my parents who do not walk much. "
    "Which cities should we visit and how should we travel between them??",
    "I am planning a two week trip to Japan in April with my parnets, who do not walk much. "
    "Which cities should we visit, and how should we travel between them?",
    "My sourdough bread comes out dense and flat every time, even though the starter bubbles well. "
    "What could be going wrong with my proofing or shaping?",
    "Can you explain the difference between a process and a thread in an operating system, "
    "with an example of when I would choose one over the other?",
    "Write a cover letter for a junior data analyst position at a hospital, highlighting my "
    "experience cleaning survey data in Excel and R during my internship.",
]


@pytest.fixture(scope="module")
def minilm():
    return embed.sentence_encoder()


@pytest.fixture(scope="module")
def static():
    return embed.static_encoder()


def dropped(result) -> list[int]:
    return np.flatnonzero(~result.keep).tolist()


def test_exact_matches_normalized_text_only():
    result = dedup.dedup_exact(PROMPTS)
    assert dropped(result) == [1]
    assert result.representative[1] == 0 and result.repeat_count[:2].tolist() == [1, 1]
    assert dedup.normalize_text("  Hello,   WORLD!! ") == "hello world"
    assert dropped(dedup.dedup_exact(PROMPTS, normalize=False)) == []


def test_minhash_finds_light_edits_and_keeps_distinct_prompts():
    result = dedup.dedup_minhash(LONG, threshold=0.7)
    assert dropped(result) == [1, 2]
    assert result.representative.tolist() == [0, 0, 0, 3, 4, 5]
    assert result.repeat_count.tolist() == [2, 2, 2, 0, 0, 0]
    assert result.clusters() == [[0, 1, 2]]


def test_embedding_dedup_writes_magpie_columns(minilm):
    result = neighbors.dedup_embedding(PROMPTS, minilm, threshold=0.9)
    assert dropped(result) == [1, 5, 7]  # the two look-alikes (France/Spain, Python/Rust) stay
    assert result.representative.tolist() == [0, 0, 2, 3, 4, 4, 6, 6, 8, 9, 10, 11]
    assert result.repeat_count.tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    # min_neighbor_distance is Magpie's squared L2 on unit vectors: 2 - 2 cos to the nearest row
    vectors = minilm(PROMPTS)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    assert np.allclose(result.min_neighbor_distance, 2 - 2 * sims.max(axis=1), atol=1e-4)
    # a stricter threshold keeps the edited rows (their cos is 0.978) and drops only the near-copy
    assert dropped(neighbors.dedup_embedding(PROMPTS, minilm, threshold=0.99)) == [1]


def test_cascade_agrees_with_full_minilm_and_encodes_fewer_rows(minilm, static):
    full = neighbors.dedup_embedding(PROMPTS, minilm, threshold=0.9)
    cascade = neighbors.dedup_embedding(PROMPTS, minilm, threshold=0.9, candidates=static)
    assert dropped(cascade) == dropped(full)
    assert cascade.repeat_count.tolist() == full.repeat_count.tolist()
    assert cascade.info["confirm_encoded"] < len(PROMPTS)
    # rows without any candidate have no confirmed nearest distance
    assert np.isnan(cascade.min_neighbor_distance[8])
    assert (embed.cache_dir() / "static").is_dir()


def test_near_copies_are_caught_where_embeddings_miss_them(minilm, static):
    assert dedup.near_copy("Explain DNS resolution to a journalist.", "Expllain DN Sresollution to a journalist.")
    assert dedup.near_copy("Write a haiku about the ocean.", "Write a haiku about teh ocean.")
    assert not dedup.near_copy("What is the capital of France?", "What is the capital of Spain?")
    assert not dedup.near_copy("Plan a trip to Paris.", "Plan a trip to Parma.")
    assert dedup.near_copy("Explain how gravity bends light.", "Explain how gravity bends light. Thanks!")
    assert not dedup.near_copy("Explain gravity.", "Explain gravity to my five-year-old son.")  # too much added
    texts = [
        "Hello, my coworker takes credit for my work. What should I do?",
        "Hello, my coworker takes ccredit for mt work. What should I do?",  # MiniLM cos 0.58
        "What is the capital of France?",
        "What is the capital of Spain?",
    ]
    assert dropped(neighbors.dedup_embedding(texts, minilm, 0.9, candidates=static)) == []
    caught = neighbors.dedup_embedding(texts, minilm, 0.9, candidates=static, near_copies=True)
    assert dropped(caught) == [1] and caught.info["near_copy_checked"] >= 1


def test_approximate_index_reports_its_measured_recall(minilm):
    texts = PROMPTS * 1 + LONG
    flat = neighbors.dedup_embedding(texts, minilm, threshold=0.9, index="flat")
    for kind in ("ivf", "hnsw"):
        approx = neighbors.dedup_embedding(texts, minilm, threshold=0.9, index=kind)
        assert approx.info["index"] == kind
        assert approx.info["recall"] == 1.0 and approx.info["recall_pairs"] > 0
        assert dropped(approx) == dropped(flat)


def test_reference_matches_across_datasets(minilm, static):
    bench = ["What's the capital city of France?", "Explain photosynthesis to a 10 year old."]
    match, score = neighbors.embedding_matches(PROMPTS, bench, minilm, threshold=0.9, candidates=static)
    assert np.flatnonzero(match >= 0).tolist() == [2, 4, 5]
    assert match[2] == 0 and match[4] == 1 and score[4] >= 0.9
    assert dedup.exact_matches(PROMPTS, ["WHAT IS THE CAPITAL OF FRANCE"]).tolist()[2:4] == [0, -1]
    match, _ = dedup.minhash_matches(LONG, [LONG[0]], threshold=0.7)
    assert match.tolist() == [0, 0, 0, -1, -1, -1]


def test_arrow_input_and_memory_maps_give_the_same_result(minilm, static, tmp_path):
    """The dedup stage hands the text column over as Arrow: chunked or not, with None, with
    float16 memory maps in a work directory that is emptied afterwards, the verdicts are the list's."""
    import pyarrow as pa

    texts = PROMPTS + LONG + [PROMPTS[0], None, ""]
    listed = neighbors.dedup_embedding(
        [t or "" for t in texts], minilm, 0.9, candidates=static, candidate_threshold=0.5, near_copies=True
    )
    for column in (pa.array(texts), pa.chunked_array([texts[:7], texts[7:]], pa.large_string())):
        arrow = neighbors.dedup_embedding(
            column, minilm, 0.9, candidates=static, candidate_threshold=0.5, near_copies=True, work_dir=tmp_path
        )
        assert arrow.representative.tolist() == listed.representative.tolist()
        assert arrow.repeat_count.tolist() == listed.repeat_count.tolist()
        assert np.allclose(arrow.min_neighbor_distance, listed.min_neighbor_distance, equal_nan=True, atol=1e-5)
    assert listed.representative[len(PROMPTS) + len(LONG)] == 0 and listed.representative[-1] == len(texts) - 2
    half = neighbors.dedup_embedding(
        pa.array(texts), minilm, 0.9, candidates=static, dtype="float16", work_dir=tmp_path
    )
    assert dropped(half) == dropped(neighbors.dedup_embedding([t or "" for t in texts], minilm, 0.9, candidates=static))
    assert list(tmp_path.iterdir()) == []  # the memory maps are gone
    match, score = neighbors.embedding_matches(
        pa.array(PROMPTS), pa.array(["What's the capital city of France?"]), minilm, 0.9
    )
    assert np.flatnonzero(match >= 0).tolist() == [2] and score[2] >= 0.9


def test_vectorized_near_copy_check_gives_near_copy_verdicts(monkeypatch):
    """nearcopy.near_copies rules pairs out by character counts before running near_copy: the
    verdicts must be near_copy's on every pair, while most unrelated pairs never reach it."""
    import random

    rng = random.Random(0)
    base = (
        PROMPTS
        + LONG
        + [
            "Explain DNS resolution to a journalist.",
            "Expllain DN Sresollution to a journalist.",
            "Explain how gravity bends light. Thanks!",
            "Explain how gravity bends light.",
            "Plan a trip to Paris.",
            "Plan a trip to Parma.",
            "¿Qué es la fotosíntesis? Explícalo, por favor…",
            "",
        ]
    )
    texts = list(base)
    for text in base:  # typos, swapped words, dropped or added words, case
        words = text.split()
        for _ in range(3):
            w = list(words)
            if len(w) > 2:
                i = rng.randrange(len(w) - 1)
                kind = rng.randrange(4)
                if kind == 0:
                    w[i] = w[i][::-1]
                elif kind == 1:
                    w[i], w[i + 1] = w[i + 1], w[i]
                elif kind == 2:
                    del w[i]
                else:
                    w.append(rng.choice(["Thanks!", "Please hurry.", "It is for school, and I need it today."]))
            texts.append(" ".join(w).upper() if rng.random() < 0.2 else " ".join(w))
    a, b = np.meshgrid(np.arange(len(texts)), np.arange(len(texts)), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    verdict, checked = nearcopy.near_copies(lambda ids: [texts[i] for i in ids], a, b)
    expected = [dedup.near_copy(texts[i], texts[j]) for i, j in zip(a.tolist(), b.tolist(), strict=True)]
    assert verdict.tolist() == expected
    assert 0 < sum(expected) < checked < len(a)  # short-vs-long pairs pass the count test; unrelated ones do not
    assert all(nearcopy.normalized(t) == dedup.normalize_text(t) for t in texts)
    monkeypatch.setattr(nearcopy, "PARALLEL_ABOVE", 100)  # the same in worker processes
    assert nearcopy.near_copies(lambda ids: [texts[i] for i in ids], a, b, workers=2)[0].tolist() == expected


def run_method(method: str, texts: list[str], minilm, static):
    if method == "exact":
        return dedup.dedup_exact(texts)
    if method == "minhash":
        return dedup.dedup_minhash(texts)
    if method == "embedding":
        return neighbors.dedup_embedding(texts, minilm, k=5)
    return neighbors.dedup_embedding(texts, minilm, k=5, candidates=static)


METHODS = ["exact", "minhash", "embedding", "cascade"]


@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(method, minilm, static):
    empty = run_method(method, [], minilm, static)
    assert empty.keep.tolist() == [] and empty.clusters() == []

    single = run_method(method, ["Only one prompt here."], minilm, static)
    assert single.keep.tolist() == [True] and single.repeat_count.tolist() == [0]
    if single.min_neighbor_distance is not None:
        assert np.isnan(single.min_neighbor_distance[0])  # no other row to be near

    # 50 identical rows with only k=5 neighbours searched: exactly the first survives
    same = run_method(method, ["Tell me a joke about cats."] * 50, minilm, static)
    assert dropped(same) == list(range(1, 50))
    assert set(same.representative.tolist()) == {0} and set(same.repeat_count.tolist()) == {49}
    assert same.clusters() == [list(range(50))]

    unique = [p for i, p in enumerate(PROMPTS) if i in (0, 2, 4, 6, 8, 9)]
    distinct = run_method(method, unique, minilm, static)
    assert distinct.keep.all() and not distinct.repeat_count.any()


def test_magpie_rule_is_not_transitive():
    # A~B and B~C but not A~C: B and C both name a lower duplicate, so only A is kept
    rep, repeat = dedup.from_pairs(3, np.array([0, 1]), np.array([1, 2]))
    assert rep.tolist() == [0, 0, 1] and repeat.tolist() == [1, 2, 1]
    result = dedup.DedupResult(rep, repeat)
    assert result.keep.tolist() == [True, False, False] and result.clusters() == [[0, 1, 2]]


# ---- the stage in real pipelines ----


def write_rows(path, texts, column="instruction"):
    path.write_text("".join(json.dumps({"id": f"r{i}", column: t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.mark.parametrize("method", ["exact", "minhash", "embedding"])
def test_dedup_stage_drops_duplicates_and_records_why(method, write, tmp_path):
    texts = PROMPTS if method != "minhash" else LONG
    write_rows(tmp_path / "in.jsonl", texts)
    path = write(
        "p.yaml",
        f"""
        run: {{batch_size: 4}}
        stages:
          - stage: load
            path: in.jsonl
          - stage: dedup
            method: {method}
            id_column: id
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    expected = {"exact": [1], "minhash": [1, 2], "embedding": [1, 5, 7]}[method]
    rows = read_output(tmp_path / "run").to_pylist()
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(texts)) if i not in expected]
    assert all(r["representative_id"] == r["id"] for r in rows)
    assert ("min_neighbor_distance" in rows[0]) == (method == "embedding")
    if method == "embedding":  # below cascade_above every row is embedded: every row has its distance
        assert all(0 <= r["min_neighbor_distance"] <= 4 for r in rows)
    stage = result.manifest["stages"][1]
    assert stage["filtered"] == {f"duplicate_{method}": len(expected)}
    dropped_rows = list(Run(tmp_path / "run").iter_dropped("dedup"))
    assert sorted(json.loads(d["row"])["id"] for d in dropped_rows) == [f"r{i}" for i in expected]
    assert all(d["reason"] == f"duplicate_{method}" and d["detail"].startswith("of row r") for d in dropped_rows)


def test_dedup_stage_against_a_reference_set_and_keep_all(write, tmp_path):
    write_rows(tmp_path / "in.jsonl", PROMPTS)
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": "What's the capital city of France?"}) + "\n")
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            path: in.jsonl
          - stage: dedup
            keep: all
            reference: bench.jsonl
            reference_column: question
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    assert len(rows) == len(PROMPTS) - 1 and PROMPTS[2] not in [r["instruction"] for r in rows]
    assert result.manifest["stages"][1]["filtered"] == {"matches_reference": 1}
    # keep: all annotates like Magpie's gen_dis.py; representative_id is the position after the reference step
    assert [r["repeat_count"] for r in rows][:2] == [1, 1] and rows[1]["representative_id"] == 0
    (dropped_row,) = Run(tmp_path / "run").iter_dropped("dedup")
    assert "capital city of France" in dropped_row["detail"]


# ---- synth dedup ----


def test_dedup_cli_writes_output_and_cluster_report(tmp_path):
    write_rows(tmp_path / "in.jsonl", PROMPTS, column="prompt")
    runner = CliRunner()
    result = runner.invoke(
        dedup_command,
        [
            str(tmp_path / "in.jsonl"),
            str(tmp_path / "out.parquet"),
            "-c",
            "prompt",
            "--report",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "12 rows in, 9 out (duplicate_embedding: 3); 3 clusters" in result.output
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "out.parquet").num_rows == 9
    report = json.loads((tmp_path / "r.json").read_text())
    assert [[m["position"] for m in c["rows"]] for c in report["clusters"]] == [[0, 1], [4, 5], [6, 7]]

    exact = runner.invoke(
        dedup_command, [str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-c", "prompt", "-m", "exact"]
    )
    assert exact.exit_code == 0 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 11

    wrong = runner.invoke(dedup_command, [str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl")])
    assert wrong.exit_code == 1 and "no column 'instruction'" in wrong.output and "Traceback" not in wrong.output
    assert "Examples:" in runner.invoke(dedup_command, ["--help"]).output


def test_fast_edit_distance_equals_the_python_one():
    """rapidfuzz's OSA (when installed) and the pure-Python fallback must agree exactly."""
    import random

    rng = random.Random(0)
    for _ in range(3000):
        a = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 24)))
        b = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 24)))
        assert dedup.edit_distance(a, b) == dedup.edit_distance_py(a, b), (a, b)
    assert dedup.edit_distance("teh", "the") == 1  # a swap is one edit
