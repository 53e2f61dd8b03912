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
from synth.testing import FaultProxy, InstantServer, free_port

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


def test_same_seed_same_text_other_seeds_differ_and_n_samples(server):
    sampling = Sampling(max_tokens=16, stop=("\n",), temperature=1.0)
    a, b, *others = complete(backend(server.url), [QUESTION] * 4, sampling, seeds=[7, 7, 8, 9])
    assert a[0].text == b[0].text
    assert any(o[0].text != a[0].text for o in others)
    (many,) = complete(backend(server.url), [QUESTION], sampling.model_copy(update={"n": 3}))
    assert len(many) == 3 and all(g.text for g in many)
    # llama.cpp ignores n: each missing sample is a request of its own, its prompt sent (and billed) again
    assert many[0].prompt_tokens > 10 and [g.prompt_tokens for g in many[1:]] == [many[0].prompt_tokens] * 2
    assert all(g.completion_tokens > 0 for g in many)


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
        ScoreRequest("The capital of France is", " purple banana"),
        ScoreRequest("The capital of Fra", "nce is Paris"),  # " France" straddles the boundary
    ]

    async def go():
        try:
            return await collect(b.score(requests))
        finally:
            await b.close()

    likely, unlikely, straddling = run(go())
    assert isinstance(likely, Scored) and isinstance(unlikely, Scored)
    assert len(unlikely.token_logprobs) > len(likely.token_logprobs) >= 1
    assert all(v <= 0 for v in likely.token_logprobs + unlikely.token_logprobs)
    assert likely.total / len(likely.token_logprobs) > unlikely.total / len(unlikely.token_logprobs)
    # " France", " is", " Paris": the same text as `likely`, so " Paris" scores the same.
    assert len(straddling.token_logprobs) == 3 and likely.prompt_tokens == straddling.prompt_tokens
    assert straddling.token_logprobs[-1] == pytest.approx(likely.token_logprobs[-1], abs=0.05)


def test_concurrency_limit_is_respected(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.set_delay(0.2)
        results = complete(backend(proxy.url, max_concurrency=3), [QUESTION] * 9, seeds=list(range(9)))
    assert all(not isinstance(r, RequestFailed) for r in results)
    assert proxy.requests == 9 and proxy.max_in_flight == 3


def test_429_500_and_cut_connections_are_retried(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.fail_next(2, status=429, retry_after=0)
        results = complete(backend(proxy.url), [QUESTION], seeds=[3])
        proxy.fail_next(3, status=500)
        results += complete(backend(proxy.url), [QUESTION], seeds=[4])
        proxy.drop_next(2)
        results += complete(backend(proxy.url), [QUESTION], seeds=[5])
    assert all(r[0].text for r in results)
    assert (proxy.injected, proxy.dropped, proxy.forwarded, proxy.requests) == (5, 2, 3, 10)


def test_retry_after_is_honoured(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.fail_next(1, status=429, retry_after=1)
        started = time.monotonic()
        (result,) = complete(backend(proxy.url), [QUESTION], seeds=[3])
        assert time.monotonic() - started >= 1.0  # our own backoff alone would wait < 0.05 s
    assert result[0].text and proxy.requests == 2


def test_a_server_that_dies_mid_call_and_comes_back(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.set_delay(0.4)  # so requests are in flight when it dies

        def die_then_revive():
            while proxy.in_flight == 0:
                time.sleep(0.01)
            proxy.stop_listening()  # cuts the open connections too, as a crash would
            time.sleep(1.5)
            proxy.start_listening()

        threading.Thread(target=die_then_revive, daemon=True).start()
        started = time.monotonic()
        results = complete(backend(proxy.url, max_concurrency=2, max_retries=40), [QUESTION] * 4, seeds=[5, 6, 7, 8])
        elapsed = time.monotonic() - started
    assert elapsed >= 1.5 and all(r[0].text for r in results)
    assert proxy.forwarded == 4 and proxy.requests > 4  # the cut ones were sent again


def test_a_dead_url_is_avoided_while_a_live_one_serves(server):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    b = OpenAIBackend(
        OpenAISpec(model="gemma", base_urls=[dead, server.url], max_retries=4), backoff_base=0.2, backoff_cap=1
    )
    results = complete(b, [QUESTION] * 6, seeds=list(range(6)))
    assert all(r[0].text for r in results)
    assert b.endpoints[0].failures >= 1 and b.endpoints[1].failures == 0


def test_nothing_listening_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=rf"no answer from {url} after 3 attempts .*run the same command again") as e:
        complete(backend(url, max_retries=2), [QUESTION])
    assert "Cannot connect to host" in str(e.value) and "sk-do-not-leak" not in str(e.value)


def test_a_rejected_request_is_a_failed_row_not_a_crash(server):
    (result,) = complete(backend(server.url), ["word " * 3000])  # far beyond n_ctx 1024
    assert isinstance(result, RequestFailed) and result.reason == "rejected"
    assert "HTTP 400" in result.detail and "context length" in result.detail  # the server's own words


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


def test_instant_server_answers_every_route_the_backend_uses():
    with InstantServer(text="fixed") as instant:
        b = backend(instant.url)
        requests = [Request(Sampling(n=2), 1, prompt="x"), Request(Sampling(), 2, messages=(("user", "hi"),))]

        async def go():
            try:
                return await collect(b.complete(requests[:1])), await collect(b.chat(requests[1:]))
            finally:
                await b.close()

        (completed,), (chatted,) = run(go())
    assert [g.text for g in completed] == ["fixed", "fixed"] and chatted[0].text == "fixed"
    assert instant.requests == 2


def test_prompt_logprobs_are_cut_where_the_prompt_tokens_end():
    """vLLM's route, on the shape its JSON has (no vLLM server in this suite): ids as keys."""
    from synth.llm.openai import prompt_logprobs_continuation

    def entries(*pairs):
        return [None] + [{str(i): {"logprob": v, "rank": 1, "decoded_token": "?"}} for i, v in pairs]

    full = entries((651, -1.0), (6037, -2.0), (576, -3.0))  # <bos> The capital is
    assert prompt_logprobs_continuation([2, 651, 6037], full) == [-3.0]
    # "The capit" + "al is": the prompt's last token (99) merged into " capital": scored from there
    assert prompt_logprobs_continuation([2, 651, 99], full) == [-2.0, -3.0]
    assert prompt_logprobs_continuation([2], full) == [-1.0, -2.0, -3.0]  # empty prompt: all after <bos>


def test_a_wrong_key_stops_the_run_instead_of_dropping_every_row(server):
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.fail_next(1, status=401)
        with pytest.raises(BackendError, match=r"HTTP 401: injected by FaultProxy; .*API key in \$OPENAI_API_KEY"):
            complete(backend(proxy.url), [QUESTION])
    assert proxy.requests == 1  # not retried


def test_more_than_four_stops_are_split_between_server_and_client():
    """OpenAI's API (and vLLM's server) take at most 4 stops; Magpie needs more."""
    from synth.llm.base import Generation
    from synth.llm.openai import apply_stops, server_stops

    stops = ["<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "assistant", "\n"]
    sent = server_stops(stops)
    assert len(sent) == 4 and "\n" in sent and "assistant" in sent  # the shortest: likeliest to end early
    assert server_stops(["a", "b", "a"]) == ["a", "b"]
    g = Generation("What is 2+2?<|start_header_id|>assistant", "length", 12, 3)
    apply_stops(g, stops)
    assert (g.text, g.finish_reason) == ("What is 2+2?", "stop")
    untouched = Generation("no stop here", "length", 3, 1)
    apply_stops(untouched, stops)
    assert (untouched.text, untouched.finish_reason) == ("no stop here", "length")


def test_proxies_come_from_the_environment_but_never_for_loopback(monkeypatch):
    from synth.llm.openai import proxy_for

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3129")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert proxy_for("https://api.openai.com/v1") == "http://proxy.example:3129"
    assert proxy_for("http://gpu1.example:8000/v1") == "http://proxy.example:3128"
    assert proxy_for("http://internal.example:8000/v1") is None
    assert proxy_for("http://127.0.0.1:8000/v1") is None and proxy_for("http://localhost:8000/v1") is None
