"""What a JSON schema costs the embedded model: time per generated token with llama-cpp-python's
own sampler (the grammar first, over the whole vocabulary at every step), with synth's (the
grammar checks the drawn token, synth/llm/grammar.py), and with no grammar at all; the share of
draws the grammar refused; and whether every finished answer parses against the schema.

    python benchmarks/grammar.py [-n 12] [--threads 2]

Judge-shaped requests: WildBench's pairwise schema on short question/answer pairs, sampled at
temperature 0.8 (top_k 50, top_p 0.95), up to 200 tokens, each request from a fresh KV cache as
synth's embedded backend sends it. The three samplers run interleaved (stock, checked, plain,
then plain, checked, stock), so a drift in this noisy machine's speed weighs on all alike.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=12, help="requests per sampler and pass")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from synth.llm.cpu import load_llama
    from synth.llm.grammar import checked_grammar_llama, json_grammar
    from synth.llm.local import default_model_path
    from synth.stages.judge.verdicts import pairwise_schema

    schema = pairwise_schema(60)
    grammar = json_grammar(json.dumps(schema))
    kwargs = {"model_path": str(default_model_path()), "n_ctx": 2048, "n_threads": args.threads, "verbose": False}
    models = {"stock": load_llama(**kwargs), "checked": load_llama(cls=checked_grammar_llama(), **kwargs)}
    models["plain"] = models["stock"]
    questions = [
        ("What is 7 times 8?", "56.", "54, I think."),
        ("Name the capital of Italy.", "Rome.", "Milan is the capital."),
        ("Give a synonym for big.", "Large.", "Small."),
        ("What does H2O stand for?", "Water: two hydrogen atoms and one oxygen atom.", "Salt."),
    ]
    prompts = [
        f"Compare two answers to the question and reply in JSON.\nQuestion: {q}\nAnswer A: {a}\nAnswer B: {b}\nJSON:"
        for q, a, b in questions
    ]
    totals = {
        name: {"tokens": 0, "seconds": 0.0, "answers": 0, "parsed": 0, "drawn": 0, "redrawn": 0} for name in models
    }
    for name in ["stock", "checked", "plain", "plain", "checked", "stock"]:
        llm, t = models[name], totals[name]
        for i in range(args.n):
            ids = llm.tokenize(prompts[i % len(prompts)].encode(), add_bos=True)
            llm.reset()
            started = time.perf_counter()
            out = llm.create_completion(
                ids, max_tokens=200, temperature=0.8, top_k=50, top_p=0.95, min_p=0.0, seed=i,
                grammar=None if name == "plain" else grammar,
            )  # fmt: skip
            t["seconds"] += time.perf_counter() - started
            t["tokens"] += out["usage"]["completion_tokens"]
            if name != "plain" and out["choices"][0]["finish_reason"] == "stop":
                t["answers"] += 1
                try:
                    value = json.loads(out["choices"][0]["text"])
                    t["parsed"] += set(value) == set(schema["properties"])
                except ValueError:
                    pass
            if name == "checked":
                t["drawn"] += llm._sampler.drawn
                t["redrawn"] += llm._sampler.redrawn
    print(f"{'sampler':<10}{'tokens':>8}{'seconds':>9}{'ms/token':>10}{'finished':>10}{'schema ok':>11}{'refused':>9}")
    for name, t in totals.items():
        refused = f"{t['redrawn'] / t['drawn']:.1%}" if t["drawn"] else "-"
        ok = f"{t['parsed']}/{t['answers']}" if name != "plain" else "-"
        print(
            f"{name:<10}{t['tokens']:>8}{t['seconds']:>9.1f}{1000 * t['seconds'] / t['tokens']:>10.1f}"
            f"{t['answers'] if name != 'plain' else '-':>10}{ok:>11}{refused:>9}"
        )
    stock, checked = (totals[n]["seconds"] / totals[n]["tokens"] for n in ("stock", "checked"))
    print(f"time per token, stock / checked: {stock / checked:.2f}")


if __name__ == "__main__":
    main()
