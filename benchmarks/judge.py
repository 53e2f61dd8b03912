"""Judge benchmark: does the `judge` stage keep a vLLM server as busy as a bare client would, and
how often does a judge answer fail to parse with and without a JSON schema? With --agreement: what
WildBench's pairwise judge and its length rule do to the labels.

    python benchmarks/judge.py              # N=256 rows, UltraFeedback rubric (absolute)
    python benchmarks/judge.py -n 64 --task pairwise
    python benchmarks/judge.py --agreement -n 96

--agreement judges N pairs (one short and one long answer to each question, the long one a few
hundred to over a thousand characters longer) in both orders with the default pairwise judge
(checklist generated per question, WildBench's prompt) and prints, from the run's columns:
  position consistency: the share of pairs whose two judgments (A/B swapped) give the same verdict,
  and the same winner (or both a tie);
  tie rate before the length rule (the two orders combined: agreement kept, disagreement a tie)
  and after it (K = 500 characters), and with one order per pair (synth's default coin);
  the share of decided pairs whose chosen response is the longer one, before and after the rule.

Prints one table, every figure measured in this run against one real vLLM CPU server (this
machine is noisy: compare ratios):
  (j)  a synth pipeline, load -> judge (default settings: schema auto, parse retries), with a
       fresh request cache; wall time of the run;
  (j0) a bare asyncio + aiohttp client (semaphore 256) sending exactly the requests the judge
       sent, read back from the run's cache (each a POST, JSON out; no parsing);
  (f)  the same pipeline with `schema: off`: the share of first answers that did not parse (as
       `parse_retried` counts them) and rows that still failed after the retries; the schema
       run's figures beside it.
Goal: j/j0 >= 0.95. The server runs without prefix caching, so neither part profits from the
other having sent the same prompts first, and (j) and (j0) run twice each in the order j0, j, j,
j0, so a drift in the machine's speed weighs on both alike; the table sums both runs of each.
The judge is the shipped Gemma 3 270M, a base model that judges badly; the figures are about
orchestration and parsing, not verdict quality.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
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
ANSWERS = [
    "A clear answer about {t}, with one concrete example and a caveat.",
    "I don't know much about {t}.",
    "{t} is a topic. Many people like it. It has a long history.",
    "Here are three steps to get started with {t}: read, practise, ask an expert.",
]


def rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        a, b = ANSWERS[i % len(ANSWERS)], ANSWERS[(i + 1) % len(ANSWERS)]
        question = f"What should a beginner know about {topic}? (question {i})"
        out.append({"instruction": question, "response": a.format(t=topic), "response_b": b.format(t=topic)})
    return out


def synth_judge(server, data: Path, workdir: Path, name: str, task: str, schema: str, max_tokens: int) -> dict:
    from synth import load_pipeline, run_pipeline

    judge = {"stage": "judge", "task": task, "schema": schema, "max_tokens": max_tokens}
    if task == "pairwise":
        judge |= {"response_a": "response", "response_b": "response_b"}
    path = workdir / f"{name}.yaml"
    backend = {"type": "openai", "model": server.model, "base_url": server.url}
    # Every row counts here, failed or not: a run that fails most rows (no schema) is still measured.
    config = {"name": name, "seed": 1, "backends": {"default": backend}, "run": {"max_failure_rate": 1.0}}
    config["stages"] = [{"stage": "load", "path": str(data)}, judge]
    path.write_text(json.dumps(config))
    started = time.perf_counter()
    result = run_pipeline(load_pipeline(path), workdir / name)
    seconds = time.perf_counter() - started
    stage = result.manifest["stages"][1]
    counters = stage["counters"]
    return {
        "requests": counters.get("requests", 0),
        "tokens": counters.get("completion_tokens", 0),
        "seconds": seconds,
        "rows": stage["rows_in"],
        "retried": counters.get("parse_retried", 0),
        "failed": sum(stage["failed"].values()),
        "run": workdir / name,
    }


LONG = (
    " To go further, it helps to know the history of {t}, the vocabulary experts use, the tools that make"
    " the first steps easier, the common mistakes beginners make and how to avoid them, where to find a"
    " community of people who share the interest, and how to keep practising a little every week."
)


def agreement_rows(n: int) -> list[dict]:
    """Pairs whose second answer is the first plus one to four long paragraphs (A/B order alternates)."""
    out = []
    for i, row in enumerate(rows(n)):
        topic = TOPICS[i % len(TOPICS)]
        short = row["response"]
        long = short + "".join(LONG.format(t=topic) for _ in range(1 + i % 4))
        a, b = (short, long) if i % 2 == 0 else (long, short)
        out.append({"instruction": row["instruction"], "response": a, "response_b": b})
    return out


def agreement(server, data: Path, workdir: Path, max_tokens: int) -> dict:
    """The pairwise judge in both orders with the length rule; the figures from its columns."""
    from synth import load_pipeline, read_output, run_pipeline
    from synth.stages.judge.verdicts import combine, length_rule

    judge = {"stage": "judge", "task": "pairwise", "response_a": "response", "response_b": "response_b"}
    judge |= {"both_orders": True, "max_tokens": max_tokens, "rationale_chars": 200, "checklist_size": 5}
    judge |= {"checklist_max_tokens": 400}
    backend = {"type": "openai", "model": server.model, "base_url": server.url}
    config = {"name": "agreement", "seed": 1, "backends": {"default": backend}, "run": {"max_failure_rate": 1.0}}
    config["stages"] = [{"stage": "load", "path": str(data)}, judge]
    path = workdir / "agreement.yaml"
    path.write_text(json.dumps(config))
    started = time.perf_counter()
    result = run_pipeline(load_pipeline(path), workdir / "agreement")
    seconds = time.perf_counter() - started
    out = read_output(workdir / "agreement").to_pylist()

    def sign(verdict: str) -> int:
        return (verdict in ("A>>B", "A>B")) - (verdict in ("B>A", "B>>A"))

    def longer_won(verdicts: list[str], rows: list[dict]) -> float:
        decided = [(v, r) for v, r in zip(verdicts, rows, strict=True) if sign(v)]
        wins = sum((len(r["response"]) > len(r["response_b"])) == (sign(v) > 0) for v, r in decided)
        return wins / len(decided) if decided else float("nan")

    same = sum(r["judge_raw_verdicts"][0] == r["judge_raw_verdicts"][1] for r in out)
    same_winner = sum(sign(r["judge_raw_verdicts"][0]) == sign(r["judge_raw_verdicts"][1]) for r in out)
    combined = [combine(*r["judge_raw_verdicts"]) for r in out]
    after = [r["judge_verdict"] for r in out]
    single = [r["judge_raw_verdicts"][0] for r in out]  # the coin's order: synth's default, one call
    single_after = [
        length_rule(v, len(r["response"]), len(r["response_b"]), 500) for v, r in zip(single, out, strict=True)
    ]
    counters = result.manifest["stages"][1]["counters"]
    n = len(out)
    return {
        "pairs": n,
        "failed": sum(result.manifest["stages"][1]["failed"].values()),
        "requests": counters.get("requests", 0),
        "seconds": seconds,
        "same_verdict": same / n,
        "same_winner": same_winner / n,
        "tie_before": combined.count("A=B") / n,
        "tie_after": after.count("A=B") / n,
        "tie_single_before": single.count("A=B") / n,
        "tie_single_after": single_after.count("A=B") / n,
        "longer_before": longer_won(combined, out),
        "longer_after": longer_won(after, out),
        "longer_single_before": longer_won(single, out),
        "longer_single_after": longer_won(single_after, out),
        "length_ties": sum(r["judge_length_tie"] for r in out),
    }


def print_agreement(m: dict) -> None:
    print(f"{m['pairs']} pairs judged in both orders ({m['failed']} failed), {m['requests']} requests, "
          f"{m['seconds']:.0f} s")  # fmt: skip
    print()
    print("| position consistency | share |")
    print("|---|---|")
    print(f"| same verdict after swapping A and B | {m['same_verdict']:.1%} |")
    print(f"| same winner (or both a tie) | {m['same_winner']:.1%} |")
    print()
    print("| verdicts | tie rate, before the length rule | after (K = 500) | chosen is the longer, before | after |")
    print("|---|---|---|---|---|")
    for label, key in (("both orders combined", ""), ("one order (the default coin)", "_single")):
        print(f"| {label} | {m[f'tie{key}_before']:.1%} | {m[f'tie{key}_after']:.1%} "
              f"| {m[f'longer{key}_before']:.1%} | {m[f'longer{key}_after']:.1%} |")  # fmt: skip


def sent_requests(run: Path) -> list[tuple[str, dict]]:
    with sqlite3.connect(run / "cache.sqlite") as db:
        return [(kind, json.loads(body)) for kind, body in db.execute("SELECT kind, request FROM requests")]


def body(kind: str, payload: dict, model: str) -> dict:
    """The OpenAI-compatible request body of one cached request (vLLM's structured-outputs fields)."""
    from synth.llm.openai import schema_fields

    sampling = payload["sampling"]
    out = {
        "model": model,
        "seed": payload["seed"],
        "max_tokens": sampling["max_tokens"],
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "n": sampling.get("n", 1),
    }
    if sampling.get("stop"):
        out["stop"] = sampling["stop"]
    if kind == "chat":
        out["messages"] = [{"role": role, "content": content} for role, content in payload["messages"]]
    else:
        out["prompt"] = payload["prompt"]
    if payload.get("json_schema"):
        out |= schema_fields(payload["json_schema"], kind == "chat", "vllm")
    return out


async def bare_client(url: str, bodies: list[tuple[str, dict]], concurrency: int = 256) -> dict:
    """The least a client can do: one session, a semaphore, a POST per request, JSON out."""
    import aiohttp

    slots = asyncio.Semaphore(concurrency)
    tokens = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(kind: str, data: dict):
            nonlocal tokens
            path = "/chat/completions" if kind == "chat" else "/completions"
            async with slots, session.post(url + path, json=data) as response:
                answer = await response.json()
                tokens += answer["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(kind, data) for kind, data in bodies))
        seconds = time.perf_counter() - started
    return {"requests": len(bodies), "tokens": tokens, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=256, help="rows to judge")
    parser.add_argument("--task", choices=["absolute", "pairwise"], default="absolute")
    parser.add_argument("--max-tokens", type=int, default=400, help="the judge's max_tokens")
    parser.add_argument("--agreement", action="store_true", help="position consistency, ties and the length rule")
    args = parser.parse_args()

    from synth.llm.prepare import prepare_gguf_for_vllm
    from synth.llm.vllm_server import VLLMServer

    structured = json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})
    extra = ["--structured-outputs-config", structured, "--no-enable-prefix-caching"]
    workdir = Path(tempfile.mkdtemp(prefix="synth-judge-bench-"))
    data = workdir / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (agreement_rows if args.agreement else rows)(args.n)))
    if args.agreement:
        with VLLMServer(prepare_gguf_for_vllm(), log=workdir / "server.log", extra_args=extra) as server:
            print(f"vLLM server ready in {server.start_seconds:.0f} s; {args.n} pairs", file=sys.stderr)
            print_agreement(agreement(server, data, workdir, max(args.max_tokens, 800)))
        return
    with VLLMServer(prepare_gguf_for_vllm(), log=workdir / "server.log", extra_args=extra) as server:
        print(f"vLLM server ready in {server.start_seconds:.0f} s; {args.n} rows, task {args.task}", file=sys.stderr)
        # Warm the server (kernels, first compilation) on other rows.
        warm = workdir / "warm.jsonl"
        warm.write_text(
            "".join(json.dumps(r | {"instruction": "Warm-up: " + r["instruction"]}) + "\n" for r in rows(16))
        )
        synth_judge(server, warm, workdir, "warm", args.task, "auto", args.max_tokens)

        # The judge's requests, to replay: from a first run (its cache), which is not timed.
        first = synth_judge(server, data, workdir, "requests", args.task, "auto", args.max_tokens)
        bodies = [(kind, body(kind, payload, server.model)) for kind, payload in sent_requests(first["run"])]
        runs: dict[str, list[dict]] = {"j": [], "j0": []}
        for i, part in enumerate(["j0", "j", "j", "j0"]):
            if part == "j0":
                m = asyncio.run(bare_client(server.url, bodies))
            else:
                m = synth_judge(server, data, workdir, f"schema-{i}", args.task, "auto", args.max_tokens)
            runs[part].append(m)
            print(f"measured ({part}): {m}", file=sys.stderr, flush=True)
        judged, bare = (
            {k: sum(m[k] for m in runs[part]) for k in ("requests", "tokens", "seconds")} for part in ("j", "j0")
        )
        judged |= {key: first[key] for key in ("rows", "retried", "failed")}
        free = synth_judge(server, data, workdir, "no-schema", args.task, "off", args.max_tokens)
        print(f"measured (f): {free}", file=sys.stderr, flush=True)

    def line(label: str, m: dict, ratio: str = "") -> str:
        rps = m["requests"] / m["seconds"]
        return f"| {label} | {m['requests']} | {m['tokens']} | {m['seconds']:.1f} | {rps:.2f} | {ratio} |"

    j_rps, b_rps = judged["requests"] / judged["seconds"], bare["requests"] / bare["seconds"]
    print("| run | requests | completion tokens | seconds | requests/s | ratio |")
    print("|---|---|---|---|---|---|")
    print(line("(j0) bare aiohttp client, the judge's requests", bare))
    print(line("(j) synth `judge` stage, default settings", judged, f"{j_rps / b_rps:.3f}"))
    print()
    print("| schema | rows | first answers that did not parse | rows failed after retries |")
    print("|---|---|---|---|")
    for label, m in (("auto (sent)", judged), ("off", free)):
        print(f"| {label} | {m['rows']} | {m['retried']} ({m['retried'] / m['rows']:.1%}) | {m['failed']} |")


if __name__ == "__main__":
    main()
