"""The openai backend against a real `python -m llama_cpp.server` on 127.0.0.1, with faults
injected by synth.testing.FaultProxy in front of it (no mocks)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from synth import BackendError, load_pipeline, read_output, run_pipeline
from synth.llm.base import Request, RequestFailed, Sampling, Scored, ScoreRequest
from synth.llm.openai import OpenAIBackend
from synth.llm.specs import OpenAISpec
from synth.testing import FaultProxy, free_port

pytest.importorskip("llama_cpp")
pytest.importorskip("httpx")

QUESTION = (
    "Below are questions people asked.\nQuestion: How do I boil an egg?\nQuestion: Why is the sky blue?\nQuestion:"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from .servers import LlamaCppServer

    srv = LlamaCppServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield srv
    srv.stop()


def backend(url: str, **kw) -> OpenAIBackend:
    spec = OpenAISpec(model="gemma", base_url=url, max_retries=kw.pop("max_retries", 4), **kw)
    return OpenAIBackend(spec, backoff_base=0.05, backoff_cap=0.5)


async def collect(iterator) -> list:
    items = [item async for item in iterator]
    return [result for _, result in sorted(items, key=lambda x: x[0])]


def run(coro):
    return asyncio.run(coro)


def complete(b: OpenAIBackend, prompts, sampling=None, seeds=None):
    sampling = sampling or Sampling(max_tokens=16, stop=("\n",))
    requests = [Request(sampling, (seeds or [1] * len(prompts))[i], prompt=p) for i, p in enumerate(prompts)]

    async def go():
        try:
            return await collect(b.complete(requests))
        finally:
            await b.close()

    return run(go())


def test_completion_stops_at_the_stop_string(server):
    (result,) = complete(backend(server.url), [QUESTION], Sampling(max_tokens=40, stop=("?",), temperature=0.8))
    (generation,) = result
    assert "?" not in generation.text and generation.text.strip()
    assert generation.prompt_tokens > 10 and 0 < generation.completion_tokens <= 40


def test_same_seed_same_text_and_n_samples(server):
    sampling = Sampling(max_tokens=16, stop=("\n",), temperature=1.0)
    a, b, _ = complete(backend(server.url), [QUESTION] * 3, sampling, seeds=[7, 7, 8])
    assert a[0].text == b[0].text
    (many,) = complete(backend(server.url), [QUESTION], sampling.model_copy(update={"n": 3}))
    assert len(many) == 3 and all(g.text for g in many)


def test_chat_goes_through_the_server_template(server):
    b = backend(server.url)
    request = Request(Sampling(max_tokens=12, temperature=0), 1, messages=(("user", "Say hello."),))

    async def go():
        try:
            return await collect(b.chat([request]))
        finally:
            await b.close()

    ((generation,),) = run(go())
    assert generation.text.strip() and generation.prompt_tokens > 3


def test_score_gives_a_logprob_per_continuation_token(server):
    b = backend(server.url)
    requests = [
        ScoreRequest("The capital of France is", " Paris"),
        ScoreRequest("The capital of France is", " a purple elephant banana"),
    ]

    async def go():
        try:
            return await collect(b.score(requests))
        finally:
            await b.close()

    likely, unlikely = run(go())
    assert isinstance(likely, Scored) and isinstance(unlikely, Scored)
    assert len(unlikely.token_logprobs) > len(likely.token_logprobs) >= 1
    assert all(v <= 0 for v in likely.token_logprobs + unlikely.token_logprobs)
    assert likely.total / len(likely.token_logprobs) > unlikely.total / len(unlikely.token_logprobs)


def test_concurrency_limit_is_respected(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.set_delay(0.2)
        results = complete(backend(proxy.url, max_concurrency=3), [QUESTION] * 9, seeds=list(range(9)))
    assert all(not isinstance(r, RequestFailed) for r in results)
    assert proxy.requests == 9 and proxy.max_in_flight == 3


def test_429_and_500_are_retried(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.fail_next(2, status=429, retry_after=0)
        results = complete(backend(proxy.url), [QUESTION], seeds=[3])
        proxy.fail_next(3, status=503)
        results += complete(backend(proxy.url), [QUESTION], seeds=[4])
    assert all(r[0].text for r in results)
    assert proxy.injected == 5 and proxy.requests == 7


def test_a_server_that_goes_away_and_comes_back(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.stop_listening()
        threading.Timer(1.5, proxy.start_listening).start()
        started = time.time()
        results = complete(backend(proxy.url, max_retries=40), [QUESTION] * 2, seeds=[5, 6])
    assert time.time() - started >= 1.5
    assert all(r[0].text for r in results)


def test_nothing_listening_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=rf"no answer from {url} after 3 attempts .*run the same command again"):
        complete(backend(url, max_retries=2), [QUESTION])


def test_a_rejected_request_is_a_failed_row_not_a_crash(server):
    (result,) = complete(backend(server.url), ["word " * 3000])  # far beyond n_ctx 1024
    assert isinstance(result, RequestFailed) and result.reason == "rejected" and "HTTP 4" in result.detail


def test_pipeline_over_the_openai_backend_and_a_second_url(server, write, tmp_path):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        path = write(
            "p.yaml",
            f"""
            backends:
              default: {{type: openai, model: gemma, base_urls: ["{server.url}", "{proxy.url}"], max_concurrency: 4}}
            stages:
              - stage: load
                rows: [{{topic: cooking}}, {{topic: chess}}, {{topic: birds}}, {{topic: tea}}]
              - stage: generate
                template: quickstart/question.jinja
                output: instruction
                max_tokens: 20
                stop: ["\\n"]
        """,
        )
        result = run_pipeline(load_pipeline(path), tmp_path / "run")
        assert proxy.requests >= 1  # requests were spread over both URLs
    rows = read_output(tmp_path / "run").to_pylist()
    assert [r["topic"] for r in rows] == ["cooking", "chess", "birds", "tea"]
    assert all(r["provenance"]["generate"]["model"] == "openai:gemma" for r in rows)
    assert result.manifest["stages"][1]["counters"]["requests"] == 4
