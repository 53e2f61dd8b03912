"""Multi-turn Magpie (the followup stage) on the embedded llama.cpp model: the pre-query prefix of
a follow-up turn cut from a real chat template, responses without the system prompt, few-shot
mode for the base model, SFT messages with every turn, and seeded determinism."""

from __future__ import annotations

import json
import sqlite3

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.llm.templates import ChatTemplate

pytest.importorskip("llama_cpp")

ROWS = [
    {"instruction": "How do I keep basil alive indoors?", "response": "Give it sun and water it when dry."},
    {"instruction": "What is a good first programming language?", "response": "Python: it reads easily."},
    {"instruction": "Why is the sky blue?", "response": "Air scatters blue sunlight more than red."},
]


def pipeline(write, name: str, backend: str = "", turn3: bool = False) -> str:
    third = "{stage: followup, name: turn3, turn: 3, max_tokens: 32, response_max_tokens: 32}"
    third = f"\n          - {third}" if turn3 else ""
    return write(
        f"{name}.yaml",
        f"""
        name: {name}
        seed: 9
        {backend}
        run: {{batch_size: 2}}
        stages:
          - stage: load
            rows: {json.dumps(ROWS)}
          - {{stage: followup, max_tokens: 32, response_max_tokens: 32}}{third}
        output: {{format: sft}}
        """,
    )


def prompts_sent(run) -> tuple[list[str], list]:
    with sqlite3.connect(run / "cache.sqlite") as db:
        requests = [json.loads(r) for (r,) in db.execute("SELECT request FROM requests")]
    return [r["prompt"] for r in requests if r.get("prompt")], [r["messages"] for r in requests if r.get("messages")]


def test_pre_query_followup_cuts_the_template_at_the_next_user_turn(write, tmp_path):
    path = pipeline(write, "pq", backend="backends: {default: {type: local, chat_template: gemma}}")
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    assert rows, result.manifest["stages"]
    system = open_system_prompt()
    prompts, chats = prompts_sent(tmp_path / "run")
    template = ChatTemplate.resolve("gemma", None, "x")
    for source in ROWS:
        conversation = [
            {"role": "system", "content": system},
            {"role": "user", "content": source["instruction"]},
            {"role": "assistant", "content": source["response"]},
        ]
        full = template.render([*conversation, {"role": "user", "content": "NEXT"}], add_generation_prompt=False)
        expected = full[: full.index("NEXT")]
        assert expected.endswith(f"{source['response']}<end_of_turn>\n<start_of_turn>user\n")
        assert expected in prompts  # the paper's system prompt + the turn so far + the user header
    # Responses see the conversation without the system prompt.
    assert chats and all(m[0][0] == "user" for m in chats)
    for row in rows:
        assert row["instruction_2"] and "\n" not in row["instruction_2"]  # single line, as the paper
        assert row["response_2"]
        assert row["gen_turn_2_configs"]["mode"] == "pre_query" and row["gen_turn_2_configs"]["system_prompt"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
        assert row["messages"][2]["content"] == row["instruction_2"]


def open_system_prompt() -> str:
    from synth.resources import resource_dir

    return (resource_dir("templates") / "magpie" / "mt_system.jinja").read_text().strip()


def test_few_shot_followups_for_the_base_model_three_turns_and_determinism(write, tmp_path):
    path = pipeline(write, "fs", turn3=True)
    run_pipeline(load_pipeline(path), tmp_path / "a")
    rows = read_output(tmp_path / "a").to_pylist()
    assert rows
    for row in rows:
        assert row["gen_turn_2_configs"]["mode"] == "few_shot"
        assert len(row["messages"]) == 6
        assert row["messages"][4] == {"role": "user", "content": row["instruction_3"]}
        assert row["messages"][5] == {"role": "assistant", "content": row["response_3"]}
    prompts, _ = prompts_sent(tmp_path / "a")
    third = [p for p in prompts if p.rstrip().endswith("Follow-up request:") and p.count("Follow-up request:") > 3]
    assert third, "turn 3 sees turns 1 and 2"
    run_pipeline(load_pipeline(path), tmp_path / "b")
    assert read_output(tmp_path / "b").to_pylist() == rows


def test_followup_validation_names_missing_turn_columns(write):
    from synth.errors import ConfigError

    path = write(
        "bad.yaml",
        """
        stages:
          - stage: load
            rows: [{instruction: a, response: b}]
          - {stage: followup, turn: 3}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "instruction_2" in str(info.value)
