"""Row filters in real pipelines: column conditions (no eval), length, regex/blocklist, language."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from synth import ConfigError, load_pipeline, read_output, run_pipeline
from synth.runs import Run
from synth.stages.select.conditions import Condition

MAGPIE_ROWS = [
    {"id": 0, "instruction": "Explain how vaccines train the immune system.", "input_quality": "good", "r": 2.5},
    {"id": 1, "instruction": "Write a poem about autumn leaves.", "input_quality": "excellent", "r": -12.0},
    {"id": 2, "instruction": "Fix this:", "input_quality": "average", "r": 1.0},
    {"id": 3, "instruction": "List three facts about Mars:", "input_quality": "good", "r": 0.5},
    {"id": 4, "instruction": "What causes tides on Earth?", "input_quality": None, "r": 3.0},
    {"id": 5, "instruction": "Describe the water cycle in simple words.", "input_quality": "excellent", "r": None},
]


def run(write, tmp_path, stages: str, rows=MAGPIE_ROWS):
    path = write("p.yaml", f"run: {{batch_size: 2}}\nstages:\n  - stage: load\n    rows: {json.dumps(rows)}\n{stages}")
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    return result, read_output(tmp_path / "run").to_pylist()


def dropped(tmp_path, index: int, label: str) -> list[tuple[int, str, str]]:
    rows = Run(tmp_path / "run").iter_dropped(label)
    return sorted((json.loads(d["row"])["id"], d["reason"], d["detail"]) for d in rows)


def test_conditions_parse_from_text_and_structure_without_eval():
    assert Condition.model_validate("input_quality in [good, excellent]") == Condition.model_validate(
        {"column": "input_quality", "in": ["good", "excellent"]}
    )
    reward = Condition.model_validate("instruct_reward > -10")
    assert reward.gt == -10 and str(reward) == "instruct_reward > -10"
    assert Condition.model_validate("x not in [1, 2]").holds({"x": 3})
    assert Condition.model_validate("representative_id is null").holds({"representative_id": None})
    assert not Condition.model_validate("x is not null").holds({})
    assert not reward.holds({"instruct_reward": None}) and not reward.holds({"instruct_reward": "high"})
    assert Condition.model_validate("title == 'a: b'").holds({"title": "a: b"})
    for bad in ("__import__('os').system('id')", "reward >", "x in good", "len(x) > 3"):
        with pytest.raises(ValidationError):
            Condition.model_validate(bad)
    with pytest.raises(ValidationError, match="exactly one operator"):
        Condition.model_validate({"column": "x", "gt": 1, "lt": 5})


def test_magpie_filter_recipe(write, tmp_path):
    result, rows = run(
        write,
        tmp_path,
        """
  - stage: filter
    where: ["input_quality in [good, excellent]", {column: r, gt: -10}]
  - stage: regex
    column: instruction
    patterns: [':\\s*$']
    reason: ends_with_colon
""",
    )
    assert [r["id"] for r in rows] == [0]
    stages = result.manifest["stages"]
    assert stages[1]["filtered"] == {"input_quality in [good, excellent]": 2, "r > -10": 2}
    assert stages[2]["filtered"] == {"ends_with_colon": 1}
    assert dropped(tmp_path, 1, "filter")[0] == (1, "r > -10", "r = -12.0")
    assert dropped(tmp_path, 2, "regex") == [(3, "ends_with_colon", "matched ':'")]


def test_bad_condition_is_a_config_error_with_the_line(write):
    path = write("p.yaml", "stages:\n  - stage: load\n    rows: [{a: 1}]\n  - stage: filter\n    where: ['a >> 2']\n")
    with pytest.raises(ConfigError, match=r"p.yaml:5: stages\[1\].where\[0\].*cannot read"):
        load_pipeline(path)


def test_length_in_chars_and_tokens(write, tmp_path):
    result, rows = run(
        write,
        tmp_path,
        """
  - stage: length
    column: instruction
    min_chars: 10
    max_tokens: 6
    output: instruction_length
  - stage: length
    name: minilm_tokens
    column: instruction
    tokenizer: minilm
    max_tokens: 6
""",
    )
    # "Fix this:" is too short; the vaccines and water cycle prompts have 7 words
    assert dropped(tmp_path, 1, "length") == [
        (0, "too_long_tokens", "7 tokens"),
        (2, "too_short_chars", "9 chars"),
        (5, "too_long_tokens", "7 tokens"),
    ]
    # 6 words but 7 WordPiece tokens for MiniLM's tokenizer: "Write a poem about autumn leaves."
    assert dropped(tmp_path, 2, "minilm_tokens") == [(1, "too_long_tokens", "7 tokens")]
    assert [(r["id"], r["instruction_length"]) for r in rows] == [(3, 28), (4, 27)]
    assert result.manifest["stages"][2]["filtered"] == {"too_long_tokens": 1}


def test_regex_blocklist_and_keep_matching(write, tmp_path):
    write("blocklist.txt", "poem\nMars\n")
    _, rows = run(
        write,
        tmp_path,
        """
  - stage: regex
    column: instruction
    blocklist: [vaccine]
    blocklist_file: blocklist.txt
  - stage: regex
    name: questions
    column: instruction
    patterns: ['\\?$']
    keep_matching: true
""",
    )
    # blocklisted words match whole words only: "vaccine" leaves "vaccines" alone
    assert dropped(tmp_path, 1, "regex") == [(1, "blocklisted", "matched 'poem'"), (3, "blocklisted", "matched 'Mars'")]
    assert [r["id"] for r in rows] == [4]


def test_invalid_regex_fails_validation(write):
    path = write(
        "p.yaml", "stages:\n  - stage: load\n    rows: [{a: x}]\n  - stage: regex\n    column: a\n    patterns: ['(']\n"
    )
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_pipeline(path)


def test_language_detection_keeps_wanted_languages(write, tmp_path):
    pytest.importorskip("lingua")
    rows = [
        {"id": 0, "instruction": "How do I bake bread without yeast at home?"},
        {"id": 1, "instruction": "Wie backe ich zu Hause Brot ohne Hefe?"},
        {"id": 2, "instruction": "Comment faire du pain sans levure à la maison ?"},
        {"id": 3, "instruction": "Explain the rules of chess to a beginner."},
        {"id": 4, "instruction": "¿Cómo puedo aprender a programar en Python desde cero?"},
    ]
    result, out = run(write, tmp_path, "  - stage: language\n    languages: [en, de, fr, es]\n    keep: [en]\n", rows)
    assert [(r["id"], r["language"]) for r in out] == [(0, "en"), (3, "en")]
    assert result.manifest["stages"][1]["filtered"] == {"language_de": 1, "language_fr": 1, "language_es": 1}


def test_the_structured_null_form_works_as_written_in_yaml(write, tmp_path):
    path = write(
        "p.yaml",
        """
        run: {batch_size: 2}
        stages:
          - stage: load
            rows: [{a: 1, b: null}, {a: 2, b: x}, {a: 3, b: null}]
          - stage: filter
            where:
              - {column: b, null: true}
              - "a in [1, 2]"
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert [r["a"] for r in read_output(tmp_path / "run").to_pylist()] == [1]
    reasons = result.manifest["stages"][1]["filtered"]
    assert sum(reasons.values()) == 2 and any("[1, 2]" in r for r in reasons), reasons
    # The summary shows such a reason whole: its brackets are text, not terminal markup.
    from synth.console import console, stage_table

    with console.capture() as captured:
        console.print(stage_table(result.manifest["stages"]))
    assert "[1, 2]" in captured.get()
