"""Orchestration benchmark: is synth ever the bottleneck in front of vLLM?

    python benchmarks/orchestration.py                 # all four parts, N=256 requests of 64 tokens
    python benchmarks/orchestration.py --parts c e     # no vLLM: synth's ceiling and the GPU-like stand-in

Prints one table, every figure measured in this run (this machine is noisy: compare ratios):
  (a) a bare asyncio + `openai` client loop, concurrency 64, against a real vLLM CPU server;
  (b) the same N requests through a synth pipeline (load -> generate, `openai` backend,
      max_concurrency 64), against the same server, with a fresh request cache;
  (c0) a bare asyncio + aiohttp client (semaphore 256) against synth.testing.InstantServer (its own
      process), which answers at once, and (c) a synth pipeline with default settings against it:
      synth's own ceiling;
  (d) the `vllm` backend (in-process engine) against calling `vllm.LLM.generate` directly;
  (e0) the bare aiohttp client (semaphore = capacity) and (e) a synth pipeline with DEFAULT settings
      against synth.testing.GpuLikeServer: 10,000 chat requests to a stand-in shaped like vLLM on a
      GPU (256 sequences at once, 50 ms + 2 ms per generated token, lengths varying by prompt),
      with the sequences it had in flight on average.
Targets: b/a, d/d0 and e/e0 >= 0.95; c/c0 >= 0.6 and (c) >= 3,000 requests/s. The peak memory (RSS) of this
process, which runs synth, is reported after each part.

The server is the shipped Gemma 3 270M, converted once (synth models prepare) and served by
synth.llm.vllm_server with the settings measured for CPUs. Every request has its own seed, the
same in every part, so each part generates the same texts (and about the same tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TOPICS = [
    "gardening", "astronomy", "chess", "jazz", "sailing", "tax law", "knitting", "volcanoes",
    "poetry", "databases", "running", "birds", "coffee", "robots", "history", "cooking",
]  # fmt: skip


def prompts(n: int) -> list[str]:
    return [f"Here is a short paragraph about {TOPICS[i % len(TOPICS)]} (note {i}):\n" for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- (a) bare asyncio + openai ----


async def bare_openai(url: str, model: str, texts: list[str], max_tokens: int, concurrency: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
    slots = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(i: int, prompt: str):
        nonlocal tokens
        async with slots:
            answer = await client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.8, seed=i
            )
            tokens += answer.usage.completion_tokens

    started = time.perf_counter()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(texts)))
    seconds = time.perf_counter() - started
    await client.close()
    return {"requests": len(texts), "tokens": tokens, "seconds": seconds}


# ---- (c0), (e0) a bare asyncio + aiohttp client ----


async def bare_aiohttp(url: str, texts: list[str], max_tokens: int, concurrency: int, chat: bool) -> dict:
    """The least a client can do: one session, a semaphore, a POST per request, JSON out."""
    import aiohttp

    slots = asyncio.Semaphore(concurrency)
    tokens = 0
    path = "/chat/completions" if chat else "/completions"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": "Bearer EMPTY"}) as session:

        async def one(i: int, text: str):
            nonlocal tokens
            body = {"model": "m", "max_tokens": max_tokens, "temperature": 0.8, "seed": i}
            body |= {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
            async with slots, session.post(url + path, json=body) as response:
                answer = await response.json()
                tokens += answer["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
        seconds = time.perf_counter() - started
    return {"requests": len(texts), "tokens": tokens, "seconds": seconds}


class StandIn:
    """A synth.testing server in its own process (it must not share this one's GIL)."""

    def __init__(self, *args: str):
        from synth.testing import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synth.testing", "--port", str(self.port), *args], stdout=subprocess.PIPE
        )
        self.proc.stdout.readline()  # listening
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.url + "/stats", timeout=10) as answer:
            return json.loads(answer.read())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


# ---- (b), (c), (e) a synth pipeline ----


def synth_pipeline(
    backend: dict, texts: list[str], max_tokens: int, workdir: Path, name: str, *, defaults: bool = False
) -> dict:
    """`defaults`: the pipeline says only what the task needs (chat mode, no run: section), as a
    user who never tunes batching writes it."""
    from synth import load_pipeline, run_pipeline

    rows = workdir / f"{name}-rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "i": i}) + "\n" for i, p in enumerate(texts)))
    path = workdir / f"{name}.yaml"
    path.write_text(
        json.dumps(
            {
                "name": name,
                "seed": 1,
                "backends": {"default": backend},
                "stages": [
                    {"stage": "load", "path": str(rows)},
                    {
                        "stage": "generate",
                        "prompt_column": "prompt",
                        "output": "text",
                        "max_tokens": max_tokens,
                        "temperature": 0.8,
                        "drop_empty": False,
                        **({"mode": "chat"} if defaults else {}),
                    },
                ],
                **({} if defaults else {"run": {"batch_size": 64, "max_batches_in_flight": 8}}),
            }
        )
    )
    started = time.perf_counter()
    result = run_pipeline(load_pipeline(path), workdir / name)
    seconds = time.perf_counter() - started
    stage = result.manifest["stages"][1]
    tokens = stage["counters"].get("completion_tokens", 0)
    return {"requests": stage["counters"].get("requests", 0), "tokens": tokens, "seconds": seconds}


# ---- (d) the in-process engine ----


def engine_parts(model_dir: str, texts: list[str], max_tokens: int) -> tuple[dict, dict]:
    from vllm import SamplingParams

    from synth.llm.base import Request, Sampling
    from synth.llm.specs import VLLMSpec
    from synth.llm.vllm import VLLMBackend

    backend = VLLMBackend(VLLMSpec(model=model_dir, max_model_len=2048, dtype="bfloat16"))
    llm = backend.llm  # started once, shared by both measurements
    params = [SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i) for i in range(len(texts))]
    started = time.perf_counter()
    outputs = llm.generate(texts, params, use_tqdm=False)
    direct = {
        "requests": len(texts),
        "tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "seconds": time.perf_counter() - started,
    }
    sampling = Sampling(temperature=0.8, max_tokens=max_tokens)
    requests = [Request(sampling, i, prompt=p) for i, p in enumerate(texts)]

    async def through_synth():
        return [r async for r in backend.complete(requests)]

    started = time.perf_counter()
    results = asyncio.run(through_synth())
    ours = {
        "requests": len(results),
        "tokens": sum(r[0].completion_tokens for _, r in results),
        "seconds": time.perf_counter() - started,
    }
    asyncio.run(backend.close())
    return direct, ours


def row(label: str, m: dict, reference: dict | None = None) -> str:
    rps, tps = m["requests"] / m["seconds"], m["tokens"] / m["seconds"]
    ratio = f"{rps / (reference['requests'] / reference['seconds']):.3f}" if reference else ""
    return (
        f"| {label} | {m['requests']} | {m['tokens']} | {m['seconds']:.1f} | {rps:,.1f} | {tps:,.1f} | {ratio} "
        f"| {m.get('rss', 0):,.0f} |"
    )


def report(label: str, m: dict) -> None:
    """A line per part as soon as it is measured, so a later failure loses nothing."""
    print(f"measured {label}: {json.dumps({k: round(v, 3) for k, v in m.items()})}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=256, help="requests (>= 256 for the issue's figures)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--instant-n", type=int, default=20000, help="requests for part (c)")
    parser.add_argument("--gpu-n", type=int, default=10000, help="requests for part (e)")
    parser.add_argument("--capacity", type=int, default=256, help="sequences the GPU-like stand-in runs at once")
    parser.add_argument("--parts", nargs="+", default=list("abcde"), choices=list("abcde"))
    args = parser.parse_args()
    texts = prompts(args.n)
    lines = []
    results: dict[str, dict] = {}
    workdir = Path(tempfile.mkdtemp(prefix="synth-orch-"))

    from synth.llm.prepare import prepare_gguf_for_vllm

    model_dir = str(prepare_gguf_for_vllm()) if {"a", "b", "d"} & set(args.parts) else ""
    if {"a", "b"} & set(args.parts):
        from synth.llm.vllm_server import VLLMServer

        with VLLMServer(model_dir, log=workdir / "server.log") as server:
            print(f"vLLM server ready in {server.start_seconds:.0f} s", file=sys.stderr)
            # warm-up: the first requests pay for lazy initialisation in the server
            asyncio.run(bare_openai(server.url, server.model, texts[:8], 8, 8))
            if "a" in args.parts:
                results["a"] = asyncio.run(bare_openai(server.url, server.model, texts, args.max_tokens, 64))
                results["a"]["rss"] = peak_rss_mb()
                report("a", results["a"])
            if "b" in args.parts:
                backend = {"type": "openai", "model": server.model, "base_url": server.url, "max_concurrency": 64}
                results["b"] = synth_pipeline(backend, texts, args.max_tokens, workdir, "vllm-server")
                results["b"]["rss"] = peak_rss_mb()
                report("b", results["b"])
    if "c" in args.parts:
        many = prompts(args.instant_n)
        with StandIn("--text", "instant") as server:
            results["c0"] = asyncio.run(bare_aiohttp(server.url, many, args.max_tokens, 256, chat=True))
            report("c0", results["c0"])
        with StandIn("--text", "instant") as server:
            backend = {"type": "openai", "model": "instant", "base_url": server.url}
            results["c"] = synth_pipeline(backend, many, args.max_tokens, workdir, "instant", defaults=True)
            results["c"]["rss"] = peak_rss_mb()
            report("c", results["c"])
    if "e" in args.parts:
        many = prompts(args.gpu_n)
        shape = ["--gpu-like", "--capacity", str(args.capacity), "--latency", "0.05", "--per-token", "0.002"]
        with StandIn(*shape) as server:
            results["e0"] = asyncio.run(bare_aiohttp(server.url, many, 256, args.capacity, chat=True))
            results["e0"].update(server.stats())
            report("e0", results["e0"])
        with StandIn(*shape) as server:
            backend = {"type": "openai", "model": "gpu", "base_url": server.url}
            results["e"] = synth_pipeline(backend, many, 256, workdir, "gpu-like", defaults=True)
            results["e"].update(server.stats())
            results["e"]["rss"] = peak_rss_mb()
            report("e", results["e"])
    if "d" in args.parts:
        direct, ours = engine_parts(model_dir, texts, args.max_tokens)
        results["d0"], results["d"] = direct, ours
        results["d0"]["rss"] = results["d"]["rss"] = peak_rss_mb()
        report("d0", results["d0"])
        report("d", results["d"])

    lines.append("| run | requests | generated tokens | seconds | requests/s | tokens/s | ratio | peak RSS MB |")
    lines.append("|---|---|---|---|---|---|---|---|")
    if "a" in results:
        lines.append(row("(a) asyncio + openai, concurrency 64, vLLM server", results["a"]))
    if "b" in results:
        lines.append(row("(b) synth pipeline, openai backend, same server", results["b"], results.get("a")))
    if "c" in results:
        lines.append(row("(c0) asyncio + aiohttp, concurrency 256, instant server", results["c0"]))
        lines.append(row("(c) synth pipeline, defaults, instant server (synth's ceiling)", results["c"], results["c0"]))
    if "e" in results:
        lines.append(row("(e0) asyncio + aiohttp, concurrency = capacity, GPU-like server", results["e0"]))
        lines.append(row("(e) synth pipeline, defaults, same GPU-like server", results["e"], results["e0"]))
    if "d" in results:
        lines.append(row("(d0) vllm.LLM.generate directly", results["d0"]))
        lines.append(row("(d) synth vllm backend, same engine", results["d"], results["d0"]))
    print("\n".join(lines))
    if "e" in results:
        for key in ("e0", "e"):
            m = results[key]
            print(f"({key}) sequences in flight: mean {m['mean_in_flight']}, peak {m['peak_in_flight']}")
    print(
        "\nratio: requests/s of (b) over (a), (c) over (c0), (d) over (d0), (e) over (e0). Targets: (b), (d), (e) "
        ">= 0.95; (c) >= 0.6 of (c0) and >= 3,000 requests/s."
    )


if __name__ == "__main__":
    main()
