"""What a budget costs synth's own ceiling: requests/s of one pipeline against
synth.testing.InstantServer (answers at once, so only synth's own work is measured) with no
budget, with a budget never reached (every request passes the gate before it is sent), and with a
budget that stops the run halfway (how close to the cap it stops, and how long the stop takes).

    python benchmarks/budget.py [-n 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def run(url: str, n: int, workdir: Path, name: str, budget: dict | None) -> dict:
    from synth import load_pipeline, run_pipeline
    from synth.budget import Budget
    from synth.usage import flatten

    rows = workdir / "rows.jsonl"
    if not rows.exists():
        rows.write_text("".join(json.dumps({"prompt": f"Question {i}: why?"}) + "\n" for i in range(n)))
    path = workdir / f"{name}.yaml"
    backend = {"type": "openai", "model": "instant", "base_url": url, "api_key_env": None}
    stages = [
        {"stage": "load", "path": str(rows)},
        {"stage": "generate", "prompt_column": "prompt", "output": "text", "max_tokens": 16},
    ]
    path.write_text(json.dumps({"name": name, "seed": 1, "backends": {"default": backend}, "stages": stages}))
    started = time.perf_counter()
    result = run_pipeline(load_pipeline(path), workdir / name, budget=Budget(**budget) if budget else None)
    seconds = time.perf_counter() - started
    spent = flatten(result.manifest["usage"])
    return {"status": result.manifest["status"], "requests": spent.get("requests", 0), "seconds": seconds}


def main() -> None:
    from synth.testing import InstantServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20000, help="rows (one request each)")
    args = parser.parse_args()
    with InstantServer("ok") as server, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [
            ("no budget", None),
            ("budget never reached", {"requests": args.n * 10}),
            ("budget of half the requests", {"requests": args.n // 2}),
        ]
        print(f"{args.n:,} requests against InstantServer")
        for number, (label, budget) in enumerate(cases):
            found = run(server.url, args.n, work, f"case{number}", budget)
            rate = found["requests"] / found["seconds"]
            print(f"  {label:<30} {found['status']:<9} {found['requests']:>7,} requests {rate:>8,.0f} requests/s")


if __name__ == "__main__":
    main()
