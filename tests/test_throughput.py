"""Default settings keep a server full. synth.testing.GpuLikeServer is a stand-in shaped like vLLM
on a GPU (it measures orchestration, not behaviour of a model): these tests check that it keeps
its shape, and that a pipeline with no tuning at all keeps its sequences busy. Speed itself is
measured by benchmarks/orchestration.py, never here."""

from __future__ import annotations

import asyncio
import json

import pytest

from synth import load_pipeline, run_pipeline
from synth.testing import GpuLikeServer


def test_the_gpu_like_server_queues_beyond_its_capacity_and_reports_it():
    aiohttp = pytest.importorskip("aiohttp")

    async def go(url: str) -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 20}
                async with session.post(url + "/chat/completions", json=body) as response:
                    return (await response.json())["usage"]["completion_tokens"]

            return await asyncio.gather(*(one(i) for i in range(24)))

    with GpuLikeServer(capacity=4, latency=0.05, per_token=0.001) as server:
        tokens = asyncio.run(go(server.url))
        stats = server.stats()
    assert stats["requests"] == 24 and stats["peak_in_flight"] == 4
    assert 2 <= stats["mean_in_flight"] <= 4
    assert len(set(tokens)) > 3 and all(1 <= t <= 20 for t in tokens)  # lengths vary by prompt
    assert tokens == [GpuLikeServer.tokens_for({"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 20})
                      for i in range(24)]  # fmt: skip


def test_a_pipeline_with_default_settings_keeps_the_server_full(write, tmp_path):
    rows = "\n".join(json.dumps({"q": f"question {i}"}) for i in range(3000))
    write("in.jsonl", rows + "\n")
    # About 430 requests/s at full capacity: well within what synth sends on 2 cores, so only
    # how many requests it keeps in flight decides whether the server is full.
    with GpuLikeServer(capacity=200, latency=0.4, per_token=0.002) as server:
        path = write(
            "p.yaml",
            f"""
            backends:
              default: {{type: openai, model: m, base_url: "{server.url}"}}
            stages:
              - stage: load
                path: in.jsonl
              - stage: generate
                prompt_column: q
                output: a
                mode: chat
                max_tokens: 64
            """,
        )
        result = run_pipeline(load_pipeline(path), tmp_path / "run")
        stats = server.stats()
    assert result.output_rows == 3000 and stats["requests"] == 3000
    # The old defaults (4 batches of 64 rows in flight, 64 requests at once) kept 64 of the 200
    # sequences busy; now batches in flight are sized from the backend's concurrency (256).
    assert stats["peak_in_flight"] == 200 and stats["mean_in_flight"] >= 0.75 * 200, stats
    stage = result.manifest["stages"][1]
    assert 0 < stage["wall_seconds"] <= stage["busy_seconds"]
