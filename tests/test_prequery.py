"""Pre-query templates: the authors' table, and extraction from real chat templates matching it.

Fixtures are real model templates (tests/fixtures/chat_templates/SOURCES.md says which are copied
verbatim from a package and which are reconstructed).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from synth import ConfigError, SynthError, load_pipeline
from synth.errors import BackendError
from synth.llm.prequery import (
    FAMILIES,
    SENTINEL,
    VICUNA_SYSTEM,
    extract,
    get_family,
    guess_family,
    match_family,
    with_system_prompt,
)
from synth.llm.templates import ChatTemplate
from synth.resources import resource_dir

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>")
QWEN = ("", "<|im_end|>")
GEMMA = ("<bos>", "<eos>")
SP = ("<s>", "</s>")
PHI = ("<s>", "<|endoftext|>")
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
DATED = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
)


def extracted(fixture: str, tokens: tuple[str, str]):
    return extract((FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"), *tokens)


# (fixture, tokens, family, which extracted string is the table's string)
#   "pre_query": what the template writes before a user message, as is;
#   "bare": without the template's default system turn (the authors dropped it for these);
#   "renders": the table records that the authors' string differs from the template's.
CASES = [
    ("llama-3", LLAMA3, "llama-3", "pre_query"),
    ("llama-3.1", LLAMA3, "llama-3.1", "bare"),
    ("llama-3.3", LLAMA3, "llama-3.3", "bare"),
    ("qwen2", QWEN, "qwen2", "bare"),
    ("qwen2.5", QWEN, "qwen2.5", "pre_query"),
    ("gemma-2", GEMMA, "gemma-2", "renders"),
    ("gemma-3", GEMMA, "gemma-3", "pre_query"),
    ("phi-3", PHI, "phi-3", "renders"),
    ("mistral", SP, "mistral", "renders"),
    ("llama-2", SP, "llama-2", "renders"),
    ("deepseek-v2", DEEPSEEK, "deepseek-coder-v2-lite", "pre_query"),
]


@pytest.mark.parametrize(("fixture", "tokens", "family", "which"), CASES)
def test_extraction_from_the_real_template_reproduces_the_table(fixture, tokens, family, which):
    got, entry = extracted(fixture, tokens), FAMILIES[family]
    if which == "pre_query":
        assert got.pre_query_template == entry.pre_query_template
        assert entry.template_renders is None
    elif which == "bare":
        assert got.bare_pre_query == entry.pre_query_template
        assert got.pre_query_template != entry.pre_query_template  # a default system turn comes first
    else:
        assert got.pre_query_template == got.bare_pre_query == entry.template_renders
        assert entry.pre_query_template != entry.template_renders


def test_where_the_authors_string_differs_from_the_template():
    # Gemma-2: one newline more than the template (and than Gemma-1.1's entry).
    assert FAMILIES["gemma-2"].pre_query_template == "<bos><start_of_turn>user\n\n"
    assert (
        FAMILIES["gemma-2"].template_renders == "<bos><start_of_turn>user\n" == FAMILIES["gemma-1.1"].pre_query_template
    )
    # Phi-3, Mistral, Llama-2: a space after <s> (a tokenizer's decode), the template writes none.
    for name in ("phi-3", "mistral", "llama-2"):
        entry = FAMILIES[name]
        assert entry.pre_query_template == entry.template_renders.replace("<s>", "<s> ", 1)
    # Qwen2 and Llama-3.1: the authors dropped the default system turn the templates write.
    assert extracted("qwen2", QWEN).pre_query_template == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + FAMILIES["qwen2"].pre_query_template
    )
    assert extracted("llama-3.1", LLAMA3).pre_query_template == DATED.format(date="26 Jul 2024") + (
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    )


def test_vicuna_is_the_template_with_the_generic_system_sentence():
    got = extracted("vicuna", SP)
    assert got.pre_query_template == got.bare_pre_query == "USER: "
    assert with_system_prompt("", VICUNA_SYSTEM, extracted=got) == FAMILIES["vicuna"].pre_query_template


def test_llama_3_2_dates_its_system_turn_with_strftime_now():
    got = extracted("llama-3.2", LLAMA3)
    today = datetime.now().strftime("%d %b %Y")
    assert got.pre_query_template.startswith(DATED.format(date=today))
    assert got.bare_pre_query == FAMILIES["llama-3"].pre_query_template


@pytest.mark.parametrize(
    ("fixture", "tokens", "with_system", "default"),
    [
        ("llama-3", LLAMA3, FAMILIES["llama-3"].system_turn, None),
        (
            "llama-3.1",
            LLAMA3,
            DATED.format(date="26 Jul 2024") + "{system}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n",
            "",
        ),
        ("qwen2", QWEN, FAMILIES["qwen2"].system_turn, "You are a helpful assistant."),
        (
            "qwen2.5",
            QWEN,
            FAMILIES["qwen2.5"].system_turn,
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        ),
        ("gemma-2", GEMMA, None, None),  # raises 'System role not supported'
        ("gemma-3", GEMMA, "<bos><start_of_turn>user\n{system}\n\n", None),  # folded into the user turn
        ("phi-3", PHI, None, None),  # silently drops a system message
        ("phi-3.5", PHI, "<|system|>\n{system}<|end|>\n<|user|>\n", None),
        ("mistral", SP, "<s>[INST] {system}\n\n", None),
        ("llama-2", SP, "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", None),
        ("deepseek-v2", DEEPSEEK, "<｜begin▁of▁sentence｜>{system}\n\nUser: ", None),
    ],
)
def test_with_system_prompt_variant(fixture, tokens, with_system, default):
    got = extracted(fixture, tokens)
    assert got.pre_query_with_system == with_system
    assert got.default_system == default
    if with_system is not None:
        assert with_system_prompt(got.pre_query_template, "Be brief.", extracted=got) == with_system.replace(
            "{system}", "Be brief."
        )


def test_a_family_without_a_system_turn_refuses_control_tasks():
    got = extracted("gemma-2", GEMMA)
    with pytest.raises(SynthError, match="control tasks need a template with a system turn"):
        with_system_prompt(got.pre_query_template, "x", family="gemma-2", extracted=got)


@pytest.mark.parametrize(
    ("fixture", "tokens", "stop", "words"),
    [
        ("llama-3", LLAMA3, ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"), ("assistant",)),
        ("llama-3.1", LLAMA3, ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"), ("assistant",)),
        ("qwen2.5", QWEN, ("<|im_end|>", "<|im_start|>"), ("assistant",)),
        ("gemma-2", GEMMA, ("<end_of_turn>", "<start_of_turn>", "<eos>"), ("model",)),
        ("gemma-3", GEMMA, ("<end_of_turn>", "<start_of_turn>", "<eos>"), ("model",)),
        ("phi-3", PHI, ("<|end|>", "<|assistant|>", "<|user|>", "<|endoftext|>"), ()),
        ("phi-3.5", PHI, ("<|end|>", "<|assistant|>", "<|user|>", "<|endoftext|>"), ()),
        ("mistral", SP, ("[/INST]", "[INST]", "</s>"), ()),
        ("llama-2", SP, ("[/INST]", "[INST]", "</s>"), ()),
        ("deepseek-v2", DEEPSEEK, ("Assistant:", "User:", "<｜end▁of▁sentence｜>"), ("Assistant",)),
        ("vicuna", SP, ("ASSISTANT:", "USER:", "</s>"), ("ASSISTANT",)),
    ],
)
def test_stop_strings_end_the_user_turn(fixture, tokens, stop, words):
    got = extracted(fixture, tokens)
    assert got.stop == stop
    assert got.assistant_words == words


@pytest.mark.parametrize(
    ("fixture", "tokens", "family"), [(c[0], c[1], c[2]) for c in CASES] + [("vicuna", SP, "vicuna")]
)
def test_extracted_stops_against_the_table(fixture, tokens, family):
    got, entry = extracted(fixture, tokens), FAMILIES[family]
    assert got.stop[0] in entry.stop  # the end-of-turn marker is always one of the table's stops
    extra = set(got.stop) - set(entry.stop)
    # Only Gemma's next-turn marker is a stop the table lacks (for Gemma the table holds the authors' stops).
    assert extra == ({"<start_of_turn>"} if family.startswith("gemma") else set())


def test_sentinel_cut_on_a_template_that_strips_and_wraps_content():
    source = "{{ bos_token }}{% for m in messages %}<<{{ m['role'] }}>>[ {{ m['content'] | trim }} ]{% endfor %}"
    got = extract(source, bos_token="<B>")
    assert got.pre_query_template == "<B><<user>>[ "
    assert got.bare_pre_query == "<B><<user>>[ "
    assert got.pre_query_with_system == "<B><<system>>[ {system} ]<<user>>[ "


def test_template_that_requires_a_system_message():
    source = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    )
    got = extract(source)
    assert got.requires_system
    assert got.pre_query_template == "<|system|><|end|><|user|>"
    assert got.pre_query_with_system == "<|system|>{system}<|end|><|user|>"
    assert got.bare_pre_query == "<|user|>"
    assert got.default_system == ""
    assert got.stop == ("<|end|>", "<|assistant|>", "<|user|>")


def test_a_template_that_hides_the_user_message_is_an_error():
    with pytest.raises(SynthError, match="set family: or pre_query_template:"):
        extract("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    assert SENTINEL.upper() != SENTINEL


@pytest.mark.parametrize(
    ("fixture", "tokens", "families"),
    [
        ("llama-3.1", LLAMA3, ["llama-3", "llama-3.1", "llama-3.3"]),
        ("qwen2", QWEN, ["qwen2"]),
        ("qwen2.5", QWEN, ["qwen2.5", "qwen2"]),
        ("gemma-2", GEMMA, ["gemma-2", "gemma-1.1", "gemma-3"]),
        ("mistral", SP, ["mistral", "llama-2"]),
        ("phi-3", PHI, ["phi-3"]),
        ("deepseek-v2", DEEPSEEK, ["deepseek-coder-v2-lite"]),
        ("phi-3.5", PHI, []),  # writes no BOS, so matches no entry: name it with guess_family
    ],
)
def test_match_family_of_an_extracted_template(fixture, tokens, families):
    assert [f.name for f in match_family(extracted(fixture, tokens))] == families


def test_chatml_builtin_matches_qwen2():
    got = extract((resource_dir("templates") / "chat" / "chatml.jinja").read_text())
    assert got.pre_query_template == FAMILIES["qwen2"].pre_query_template
    assert got.stop == ("<|im_end|>", "<|im_start|>")
    assert got.pre_query_with_system == FAMILIES["qwen2"].system_turn


def test_model_templates_render_leniently_and_builtins_stay_strict():
    qwen = (FIXTURES / "qwen2.5.jinja").read_text()
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    lenient = ChatTemplate(qwen, "qwen2.5", strict=False).render(turns, add_generation_prompt=False)
    assert lenient.endswith("<|im_start|>assistant\nyo<|im_end|>\n")
    with pytest.raises(BackendError, match="undefined"):
        ChatTemplate("{{ nope }}", "strict").render([])


def test_table_defaults_follow_the_paper():
    assert FAMILIES["llama-3"].early_stop and not FAMILIES["llama-3"].sanitize
    for name in ("gemma-2", "llama-3.1", "llama-3.3"):
        assert not FAMILIES[name].early_stop and FAMILIES[name].sanitize
    assert FAMILIES["gemma-2"].n_per_prompt == 10 and FAMILIES["qwen2"].n_per_prompt == 200
    assert FAMILIES["llama-3"].stop_token_ids == (128009, 128001, 128006, 128007)
    assert FAMILIES["qwen2.5"].stop_token_ids == (151643, 151644, 151645)
    assert FAMILIES["gemma-2"].stop == ("<eos>", "<bos>", "<end_of_turn>")
    l31 = FAMILIES["llama-3.1"]
    assert (l31.instruction_temperature, l31.response_temperature, l31.response_top_p) == (0.8, 0.6, 0.9)
    assert FAMILIES["qwen2.5"].instruction_temperature == 0.7
    assert all(f.response_temperature == 0.0 for n, f in FAMILIES.items() if n != "llama-3.1")
    assert FAMILIES["deepseek-coder-v2-lite"].assistant_words == ("Assistant",)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3"),
        ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1"),
        ("meta-llama/Llama-3.3-70B-Instruct", "llama-3.3"),
        ("Qwen/Qwen2-7B-Instruct", "qwen2"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5"),
        ("google/gemma-2-9b-it", "gemma-2"),
        ("google/gemma-3-270m-it", "gemma-3"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi-3"),
        ("microsoft/Phi-3-small-8k-instruct", "phi-3-small"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2"),
        ("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", "deepseek-coder-v2-lite"),
        ("01-ai/Yi-1.5-34B-Chat", "yi-1.5"),
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


@pytest.mark.parametrize(("extra", "expected"), [("", (0.7, 1.0)), ("temperature: 0.9", (0.9, 1.0))])
def test_magpie_family_sampling_defaults_unless_the_file_sets_them(write, tmp_path, extra, expected):
    """Qwen2.5's instructions were sampled at temperature 0.7 by the authors; a file's own value wins."""
    pytest.importorskip("llama_cpp")
    import json
    import sqlite3

    from synth import read_output, run_pipeline

    path = write(
        "p.yaml",
        f"""
        stages:
          - stage: magpie
            num_rows: 1
            family: qwen2.5
            max_tokens: 4
            {extra}
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "cache.sqlite") as db:
        (raw,) = db.execute("SELECT request FROM requests").fetchone()
    sampling = json.loads(raw)["sampling"]
    assert (sampling["temperature"], sampling["top_p"]) == expected
    for row in read_output(tmp_path / "run").to_pylist():
        config = row["gen_input_configs"]
        assert (config["temperature"], config["top_p"]) == expected
