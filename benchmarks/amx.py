"""AMX mitigation benchmark: what keeping the weights out of ggml's AMX kernels costs in speed.

    python benchmarks/amx.py                  # 3 rounds, 3 prompts x 128 tokens per load
    python benchmarks/amx.py --rounds 5 --tokens 256
    python benchmarks/amx.py --model other.gguf     # another GGUF (e.g. a Q4_0 one: more of it repacks)

Three ways to load the shipped Gemma 3 270M GGUF, each in its own process (a crash is a row, not
the end of the run), interleaved round by round (this machine is noisy: compare ratios):
  default          llama_cpp.Llama(...) as llama.cpp chooses (on an AMX CPU with an AMX build:
                   the weights go to AMX, the load that segfaults, ggml-org/llama.cpp#20824);
  mitigation       synth.llm.cpu.load_llama with SYNTH_LLAMA_AMX=off: "AMX" taken out of the CPU
                   backend's extra buffer types, CPU_REPACK kept;
  no-extra-bufts   use_extra_bufts=False, the last resort: no AMX and no CPU_REPACK.
Generation speed is llama.cpp's own count (llama_perf_context: decode time of the sampled tokens,
prompt processing excluded), greedy; best and median over rounds (the best is the least disturbed
by other processes). The model buffers each load made are listed from llama.cpp's log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("default", "mitigation", "no-extra-bufts")

CHILD = r"""
import ctypes, json, re, sys

import llama_cpp

log = []

@llama_cpp.llama_log_callback
def collect(level, text, user_data):
    log.append(text.decode(errors="replace"))

llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))

from synth.llm import cpu
from synth.llm.local import default_model_path

mode, tokens, threads, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
kwargs = dict(model_path=model or str(default_model_path()), n_ctx=1024, n_threads=threads, verbose=False)
if mode == "default":
    llm = llama_cpp.Llama(**kwargs)
else:
    llm = cpu.load_llama(extra_bufts=mode != "no-extra-bufts", **kwargs)
prompts = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works, step by step.",
    "List some facts about the planet Mars:",
]
llm.create_completion(prompts[0], max_tokens=8, temperature=0.0)  # warm-up
n_eval, t_eval = 0, 0.0
for prompt in prompts:
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, top_k=0, min_p=0.0)
    perf = llama_cpp.llama_perf_context(llm.ctx)
    n_eval, t_eval = n_eval + perf.n_eval, t_eval + perf.t_eval_ms / 1000
buffers = {m[1]: float(m[2]) for m in re.finditer(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB", "".join(log))}
print(json.dumps({"tokens": n_eval, "seconds": t_eval, "buffers": buffers, "after": cpu.extra_buffer_types()}))
"""


def measure(mode: str, tokens: int, threads: int, model: str) -> dict:
    env = dict(os.environ)
    env["SYNTH_LLAMA_AMX"] = "off" if mode == "mitigation" else "on"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tokens), str(threads), model],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode < 0:
        return {"error": f"killed by {signal.Signals(-proc.returncode).name}"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="max tokens per prompt (3 prompts)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", default="", help="a GGUF file (default: the shipped Gemma 3 270M Q4_K_M)")
    args = parser.parse_args()

    from synth.llm import cpu

    flags = sorted(f for f in cpu.cpu_flags(cpu.read_cpuinfo()) if f.startswith("amx"))
    print(f"CPU AMX flags: {', '.join(flags) or 'none'}")
    print(f"llama.cpp system info: {cpu.system_info().strip()}")
    print(f"CPU extra buffer types: {cpu.extra_buffer_types()}")
    print(f"auto decision: {cpu.plan({})}")
    print(f"model: {args.model or 'gemma-3-270m-q4_k_m.gguf (shipped)'}")
    print(f"{args.rounds} rounds, {args.threads} threads, 3 prompts x {args.tokens} tokens, greedy\n")

    rates: dict[str, list[float]] = {m: [] for m in MODES}
    last: dict[str, dict] = {}
    for r in range(args.rounds):
        shown = []
        for mode in MODES:
            result = last[mode] = measure(mode, args.tokens, args.threads, args.model)
            if "error" in result:
                shown.append(f"{mode} {result['error']}")
                continue
            rates[mode].append(result["tokens"] / result["seconds"])
            shown.append(f"{mode} {rates[mode][-1]:.1f}")
        print(f"round {r + 1}: " + ", ".join(shown), flush=True)

    base = max(rates["default"]) if rates["default"] else None
    print("\n| load | tokens/s best | median | all rounds | best vs default | model buffers MiB |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        if not rates[mode]:
            print(f"| {mode} | {last[mode].get('error', 'failed')} | | | | |")
            continue
        best, median = max(rates[mode]), statistics.median(rates[mode])
        ratio = f"{best / base:.2f}" if base else ""
        runs = " ".join(f"{x:.1f}" for x in rates[mode])
        buffers = ", ".join(f"{k} {v:.2f}" for k, v in last[mode]["buffers"].items())
        print(f"| {mode} | {best:.1f} | {median:.1f} | {runs} | {ratio} | {buffers} |")


if __name__ == "__main__":
    main()
