"""Magpie and respond on the embedded llama.cpp model: shapes, provenance, seeded determinism."""

from __future__ import annotations

import pytest

from synth import ConfigError, load_pipeline, read_output, run_pipeline
from synth.stages.magpie.text import sanitize_instruction

pytest.importorskip("llama_cpp")

FEW_SHOT = """
name: magpie
seed: {seed}
run: {{batch_size: 3}}
stages:
  - stage: magpie
    num_rows: 6
    max_tokens: 40
  - stage: respond
    template: magpie/respond_few_shot.jinja
    max_tokens: 40
    stop: ["\\nRequest:", "\\n\\n"]
output: {{format: sft}}
"""


@pytest.fixture(scope="module")
def few_shot_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("magpie")
    out = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        path = root / f"{name}.yaml"
        path.write_text(FEW_SHOT.format(seed=seed))
        run_pipeline(load_pipeline(path), root / name)
        out[name] = read_output(root / name).to_pylist()
    return out


def test_few_shot_mode_writes_magpie_rows(few_shot_runs):
    rows = few_shot_runs["a"]
    assert 1 <= len(rows) <= 6
    for row in rows:
        assert row["instruction"] and "\n" not in row["instruction"]  # single-line queries
        assert row["response"]
        assert row["messages"] == [
            {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["response"]},
        ]
        config = row["gen_input_configs"]
        assert config["input_generator"] == "local:gemma-3-270m-q4_k_m.gguf"
        assert config["extract_input"] == "few_shot" and config["pre_query_template"] is None
        assert (config["temperature"], config["top_p"]) == (1.0, 1.0)  # the paper's instruction defaults
        assert row["gen_response_configs"]["temperature"] == 0.0  # greedy responses, as in the paper
    seeds = [r["gen_input_configs"]["seed"] for r in rows]
    assert len(set(seeds)) == len(seeds)


def test_same_seed_same_rows_other_seed_other_rows(few_shot_runs):
    assert few_shot_runs["a"] == few_shot_runs["b"]
    a = [r["instruction"] for r in few_shot_runs["a"]]
    c = [r["instruction"] for r in few_shot_runs["c"]]
    assert a != c


def test_explicit_pre_query_template_is_sent_raw_and_stops_at_turn_end(write, tmp_path):
    path = write(
        "p.yaml",
        """
        backends:
          default: {type: local}
        stages:
          - stage: magpie
            num_rows: 3
            mode: pre_query
            pre_query_template: "Here is a question someone asked me today:"
            stop: ["?"]
            early_stop: false
            max_tokens: 40
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    assert rows
    for row in rows:
        assert row["pre_query_template"] == "Here is a question someone asked me today:"
        assert row["gen_input_configs"]["extract_input"] == "pre_query"
        assert "?" not in row["raw_instruction"]  # generation ended at the stop string


def test_respond_rejects_n_samples_at_temperature_zero(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: magpie
            num_rows: 2
          - stage: respond
            n: 5
    """,
    )
    with pytest.raises(ConfigError, match="n > 1 at temperature 0 gives n identical responses"):
        load_pipeline(path)


def test_respond_n_samples_gives_a_list(write, tmp_path):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{instruction: "What is the capital of France?"}]
          - stage: respond
            template: magpie/respond_few_shot.jinja
            n: 3
            temperature: 0.8
            max_tokens: 16
            stop: ["\\n"]
            output: responses
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    (row,) = read_output(tmp_path / "run").to_pylist()
    assert len(row["responses"]) == 3 and all(row["responses"])
    assert len(set(row["responses"])) > 1


@pytest.mark.parametrize(
    ("raw", "clean", "fix"),
    [
        ("What is the boiling point of water?", "What is the boiling point of water?", 0),
        ("Question: How do magnets work?", "How do magnets work?", 1),
        ("**Task:** Sort a list in Python.", "Sort a list in Python.", 1),
        ("What is 2+2? Answer: 4", "What is 2+2?", 2),
        ("How do I bake bread?\nFirst, mix flour and water.", "How do I bake bread?", 3),
        ("Plan a trip to Rome\nDay 1: the Colosseum", "Plan a trip to Rome", 4),
    ],
)
def test_sanitizer(raw, clean, fix):
    assert sanitize_instruction(raw) == (clean, fix)


def test_sanitizer_cuts_llama_step_headers_only_for_llama():
    text = "Solve x^2 = 4 # Step 1 factor"
    assert sanitize_instruction(text, "llama-3.1")[0] == "Solve x^2 = 4"
    assert sanitize_instruction(text, "gemma-2")[0] == text


def test_a_prompt_that_starts_with_bos_text_gets_one_bos_not_two():
    """Pre-query templates start with the BOS text; llama.cpp adds its own BOS on top unless told."""
    import asyncio

    from synth.llm.base import Request, Sampling
    from synth.llm.local import LocalBackend
    from synth.llm.specs import LocalSpec

    async def go():
        backend = LocalBackend(LocalSpec())
        sampling = Sampling(temperature=0.0, max_tokens=8)
        prompts = ["<bos><start_of_turn>user\n", "<start_of_turn>user\n"]
        try:
            return [r async for r in backend.complete([Request(sampling, 1, prompt=p) for p in prompts])]
        finally:
            await backend.close()

    results = dict(asyncio.run(go()))
    with_text, without = results[0][0], results[1][0]
    assert with_text.prompt_tokens == without.prompt_tokens == 4  # <bos> <start_of_turn> user \n
    assert with_text.text == without.text
