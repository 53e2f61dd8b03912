"""Orchestration benchmark: is synth ever the bottleneck in front of vLLM?

    python benchmarks/orchestration.py                 # all four parts, N=256 requests of 64 tokens
    python benchmarks/orchestration.py --parts a b c   # skip the in-process engine (d)

Prints one table, every figure measured in this run (this machine is noisy: compare ratios):
  (a) a bare asyncio + `openai` client loop, concurrency 64, against a real vLLM CPU server;
  (b) the same N requests through a synth pipeline (load -> generate, `openai` backend,
      max_concurrency 64), against the same server, with a fresh request cache;
  (c) synth against synth.testing.InstantServer (its own process), which answers at once:
      synth's own ceiling;
  (d) the `vllm` backend (in-process engine) against calling `vllm.LLM.generate` directly.
Targets: b/a >= 0.95, d/direct >= 0.95, (c) >= 2,000 requests/s. The peak memory (RSS) of this
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


# ---- (b), (c) a synth pipeline ----


def synth_pipeline(backend: dict, texts: list[str], max_tokens: int, workdir: Path, name: str) -> dict:
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
                    },
                ],
                "run": {"batch_size": 64, "max_batches_in_flight": 8},
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
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
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
        from synth.testing import free_port

        port = free_port()  # the server runs in its own process: it must not share this one's GIL
        server = subprocess.Popen(
            [sys.executable, "-m", "synth.testing", "--port", str(port), "--text", "instant"], stdout=subprocess.PIPE
        )
        try:
            server.stdout.readline()  # listening
            url = f"http://127.0.0.1:{port}/v1"
            backend = {"type": "openai", "model": "instant", "base_url": url, "max_concurrency": 64}
            many = prompts(args.instant_n)
            results["c"] = synth_pipeline(backend, many, args.max_tokens, workdir, "instant")
            results["c"]["rss"] = peak_rss_mb()
            report("c", results["c"])
        finally:
            server.terminate()
            server.wait()
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
        lines.append(row("(c) synth pipeline, instant server (synth's ceiling)", results["c"]))
    if "d" in results:
        lines.append(row("(d0) vllm.LLM.generate directly", results["d0"]))
        lines.append(row("(d) synth vllm backend, same engine", results["d"], results["d0"]))
    print("\n".join(lines))
    print("\nratio: requests/s of (b) over (a), and of (d) over (d0). Targets: >= 0.95; (c) >= 2,000 requests/s.")


if __name__ == "__main__":
    main()
