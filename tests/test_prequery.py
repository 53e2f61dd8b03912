"""Pre-query templates: the authors' table, and extraction from real chat templates matching it."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth import ConfigError, SynthError, load_pipeline
from synth.llm.prequery import FAMILIES, extract, get_family, guess_family, with_system_prompt
from synth.resources import resource_dir

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"


def test_llama3_extraction_reproduces_the_table():
    got = extract((FIXTURES / "llama-3.jinja").read_text(), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    entry = FAMILIES["llama-3"]
    assert got.pre_query_template == entry.pre_query_template
    assert got.stop[0] == "<|eot_id|>" and set(got.stop) <= set(entry.stop)
    system = with_system_prompt(got.pre_query_template, "Be brief.", extracted=got)
    assert system == entry.system_turn.replace("{system}", "Be brief.")


def test_gemma2_extraction_and_the_authors_extra_newline():
    got = extract((FIXTURES / "gemma-2.jinja").read_text(), bos_token="<bos>", eos_token="<eos>")
    assert got.pre_query_template == "<bos><start_of_turn>user\n" == FAMILIES["gemma-1.1"].pre_query_template
    # The authors' Gemma-2 config writes a second newline the model's template does not: kept as they ran it.
    assert FAMILIES["gemma-2"].pre_query_template == got.pre_query_template + "\n"
    assert got.stop[0] == "<end_of_turn>"
    assert got.pre_query_with_system is None  # Gemma-2 refuses a system role
    with pytest.raises(SynthError, match="control tasks need a template with a system turn"):
        with_system_prompt(got.pre_query_template, "x", family="gemma-2", extracted=got)


def test_chatml_extraction_matches_qwen2():
    got = extract((resource_dir("templates") / "chat" / "chatml.jinja").read_text())
    assert got.pre_query_template == FAMILIES["qwen2"].pre_query_template
    assert got.stop == ("<|im_end|>",)
    assert got.pre_query_with_system == FAMILIES["qwen2"].system_turn


def test_table_defaults_follow_the_paper():
    assert FAMILIES["llama-3"].early_stop and not FAMILIES["llama-3"].sanitize
    for name in ("gemma-2", "llama-3.1", "llama-3.3"):
        assert not FAMILIES[name].early_stop and FAMILIES[name].sanitize
    assert FAMILIES["gemma-2"].n_per_prompt == 10 and FAMILIES["qwen2"].n_per_prompt == 200
    assert FAMILIES["qwen2.5"].pre_query_template.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba")
    assert FAMILIES["llama-3"].stop_token_ids == (128009, 128001, 128006, 128007)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3"),
        ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5"),
        ("google/gemma-2-9b-it", "gemma-2"),
        ("gpt2", None),
    ],
)
def test_guess_family(model, family):
    found = guess_family(model)
    assert (found.name if found else None) == family


def test_unknown_family_in_a_pipeline_suggests_one(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: magpie
            num_rows: 2
            family: lama-3
    """,
    )
    with pytest.raises(ConfigError, match="unknown family 'lama-3'; did you mean 'llama-3'"):
        load_pipeline(path)
    assert get_family("llama-3").name == "llama-3"


def test_magpie_family_mode_uses_the_table_on_the_embedded_model(write, tmp_path):
    pytest.importorskip("llama_cpp")
    from synth import read_output, run_pipeline

    path = write(
        "p.yaml",
        """
        stages:
          - stage: magpie
            num_rows: 2
            family: qwen2
            max_tokens: 16
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    import json
    import sqlite3

    with sqlite3.connect(tmp_path / "run" / "cache.sqlite") as db:
        sent = [json.loads(r) for (r,) in db.execute("SELECT request FROM requests")]
    assert len(sent) == 2
    for request in sent:  # exactly the paper's raw prompt and stops, nothing around it
        assert request["prompt"] == "<|im_start|>user\n"
        assert {"<|im_end|>", "<|im_start|>", "\n", "assistant"} <= set(request["sampling"]["stop"])
    for row in read_output(tmp_path / "run").to_pylist():  # the base model writes junk, but the request was right
        assert row["pre_query_template"] == "<|im_start|>user\n"


def test_control_task_puts_the_task_system_prompt_before_the_user_header(write, tmp_path):
    pytest.importorskip("llama_cpp")
    import json
    import sqlite3

    from synth import run_pipeline

    path = write(
        "p.yaml",
        """
        stages:
          - stage: magpie
            num_rows: 1
            family: llama-3
            control_task: math
            max_tokens: 8
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "cache.sqlite") as db:
        (raw,) = db.execute("SELECT request FROM requests").fetchone()
    prompt = json.loads(raw)["prompt"]
    system = (resource_dir("templates") / "magpie" / "control_math.jinja").read_text().strip()
    assert prompt == FAMILIES["llama-3"].system_turn.replace("{system}", system)
