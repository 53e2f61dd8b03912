"""The tag stage: JSON found in messy answers, labels checked, retries and failures counted."""

from __future__ import annotations

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.stages.magpie.tag import CATEGORIES, LEVELS, QUALITY, _parse, find_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! ```json\n{"a": {"b": [1, 2]}}\n``` done', {"a": {"b": [1, 2]}}),
        ('{broken {"a": "x}"}', {"a": "x}"}),
        ("no json here", None),
        ("[1, 2, 3]", None),
        ('{"why": "first line\nsecond\tline"}', {"why": "first line\nsecond\tline"}),  # raw, unescaped
    ],
)
def test_find_json(text, expected):
    assert find_json(text) == expected


def test_parse_accepts_only_allowed_labels():
    assert _parse("difficulty", {"difficulty": "Very Hard", "intent": "i"})["difficulty"] == "very hard"
    assert _parse("difficulty", {"difficulty": "impossible"}) is None
    assert _parse("quality", {"input_quality": "superb"}) is None
    tags = _parse("classification", {"primary_tag": "math", "other_tags": ["Reasoning", "Math", "Nonsense"]})
    assert tags == {"task_category": "Math", "other_task_category": ["Reasoning"]}


pytest.importorskip("llama_cpp")


def test_tag_on_the_embedded_model_keeps_every_row_and_counts_failures(write, tmp_path):
    path = write(
        "p.yaml",
        """
        run: {batch_size: 3}
        stages:
          - stage: load
            rows:
              - {instruction: "How do I make a cup of green tea?"}
              - {instruction: "Write a haiku about autumn leaves."}
              - {instruction: "asdf"}
              - {instruction: "Explain how binary search works and give Python code."}
          - stage: tag
            mode: complete
            template_dir: tag_few_shot
            max_tokens: 60
            parse_retries: 1
    """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    assert len(rows) == 4
    counters = result.manifest["stages"][1]["counters"]
    for task, column, allowed in (
        ("difficulty", "difficulty", LEVELS),
        ("quality", "input_quality", QUALITY),
        ("classification", "task_category", list(CATEGORIES)),
    ):
        values = [r[column] for r in rows]
        assert all(v is None or v in allowed for v in values)
        assert counters.get(f"parse_failed:{task}", 0) == values.count(None)
        assert sum(v is not None for v in values) >= 1, f"the model should manage some {task} labels"
    assert all(r["quality_generator"] == "local:gemma-3-270m-q4_k_m.gguf" for r in rows)
    # 4 rows x 3 tasks first round, plus one retry round for whatever failed
    assert 12 <= counters["requests"] <= 24
