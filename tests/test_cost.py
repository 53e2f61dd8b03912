"""Usage, prices, budgets and estimates (issue 30).

The runs go through synth.testing.FaultProxy in front of the session's real llama.cpp server,
which counts at the server side what the server reported (`usage` of every answer) and how often
each request body was sent. The pure sums (prices, the ratio estimator, the budget's parsing and
gate) are tested without a server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil

import pytest
from click.testing import CliRunner

from synth import load_pipeline, read_output, run_pipeline
from synth.budget import Budget, BudgetGuard, parse_budget
from synth.cache import RequestCache
from synth.card import render_card
from synth.estimate import ratio, wilson
from synth.pricing import Pricing, costs
from synth.progress import RunResult
from synth.spend import spend, spend_lines
from synth.usage import flatten

TOPICS = ["cooking", "chess", "birds", "tea", "rust", "sailing", "jazz", "bees", "clay", "maps", "soap", "owls"]


QUESTION = (
    "Topic: home repair\nQuestion: How do I fix a leaking faucet?\nTopic: history\nQuestion: Why did Rome fall?\n"
)
QUESTION += "Topic: {{ topic }}\nQuestion:"


def pipeline_text(url: str, rows: list[str], *, run: str = "", pricing: str = "") -> str:
    """Questions on topics, a length filter that drops some of them, answers to the rest (short
    prompts beside the pipeline file: the server reads them quickly)."""
    rows_yaml = ", ".join(f"{{topic: {t}}}" for t in rows)
    return f"""
name: cost
seed: 7
backends:
  default: {{type: openai, model: gemma, base_url: "{url}", max_concurrency: 2{pricing}}}
stages:
  - stage: load
    rows: [{rows_yaml}]
  - stage: generate
    name: question
    template: q.jinja
    output: instruction
    temperature: 0
    max_tokens: 16
    stop: ["\\n"]
  - stage: length
    column: instruction
    min_chars: 52
  - stage: generate
    name: answer
    template: a.jinja
    output: response
    temperature: 0
    max_tokens: 8
output: {{format: sft}}
run: {{batch_size: 2{run}}}
"""


@pytest.fixture
def write_pipeline(write):
    def _write(text: str):
        write("q.jinja", QUESTION)
        write("a.jinja", "Question: {{ instruction }}\nAnswer:")
        return write("p.yaml", text)

    return _write


def needed(manifest: dict) -> dict[str, int]:
    """Requests and tokens every stage needed (sent or from the cache), from the stage stats."""
    out = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for s in manifest["stages"]:
        c = s.get("counters") or {}
        out["requests"] += c.get("requests", 0) + c.get("cache_hits", 0)
        out["prompt_tokens"] += c.get("prompt_tokens", 0) + c.get("cached_prompt_tokens", 0)
        out["completion_tokens"] += c.get("completion_tokens", 0) + c.get("cached_completion_tokens", 0)
    return out


def cli(*args: str):
    """`synth ARGS` in this process (its output and exit code, as a user sees them)."""
    from synth.cli import main

    return CliRunner().invoke(main, list(args), env={"COLUMNS": "200"})


# ---- against the real llama.cpp server ----


def test_usage_equals_what_the_server_reported_and_prices_it(proxy, write_pipeline, tmp_path):
    pricing = ", pricing: {input_per_million: 2, output_per_million: 10}"
    path = write_pipeline(pipeline_text(proxy.url, TOPICS[:4], pricing=pricing))
    proxy.fail_next(1, status=503)  # one retry, counted as such (a provider may bill it)
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    total = flatten(result.manifest["usage"])
    assert total["retried"] == 1 and proxy.injected == 1
    assert total["requests"] == proxy.usage["answers"] == proxy.forwarded
    assert total["prompt_tokens"] == proxy.usage["prompt_tokens"] > 0
    assert total["completion_tokens"] == proxy.usage["completion_tokens"] > 0
    assert "counted" not in total  # every count is the server's own
    by_stage = spend(result.manifest)["stages"]
    assert set(by_stage) == {"question", "answer"}
    cost = spend(result.manifest)["cost"]
    expected = (total["prompt_tokens"] * 2 + total["completion_tokens"] * 10) / 1e6
    assert cost["total"] == pytest.approx(expected, rel=1e-6)
    assert cost["per_1000_rows"] == pytest.approx(expected * 1000 / result.output_rows, rel=1e-4)
    # Run again: nothing is sent, nothing is counted as spent twice.
    again = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert flatten(again.manifest["sessions"][-1]["usage"]).get("requests", 0) == 0
    assert flatten(again.manifest["usage"]) == total
    lines = "\n".join(spend_lines(again.manifest))
    assert "cost:" in lines and "per 1,000 output rows" in lines and "question via default" in lines
    card = render_card(
        again.manifest,
        read_output(tmp_path / "run"),
        fmt="sft",
        counts={"train": 1},
        file_format="parquet",
        license=None,
    )
    assert "## What it took" in card and f"{total['requests']:,} requests" in card and "USD in total" in card
    if importlib.util.find_spec("matplotlib") is not None:  # the HTML report (its plots need matplotlib)
        from synth.report import build_report

        page = build_report(tmp_path / "run").read_text()
        assert "<h2>Usage and cost</h2>" in page and "USD in total" in page


def test_a_budget_stops_within_one_request_and_the_resume_sends_nothing_twice(proxy, write_pipeline, tmp_path):
    path = write_pipeline(pipeline_text(proxy.url, TOPICS[:8]))
    cap = 250  # the whole run takes about 600 tokens
    stopped = cli("run", str(path), "-o", str(tmp_path / "capped"), "--budget", f"tokens={cap}", "-q")
    assert stopped.exit_code == 3, stopped.output
    assert f"resume with: synth run {path} -o {tmp_path / 'capped'} --budget tokens=" in stopped.stderr
    capped = RunResult(tmp_path / "capped", json.loads((tmp_path / "capped" / "manifest.json").read_text()))
    assert capped.manifest["status"] == "budget"
    shown = cli("inspect", str(tmp_path / "capped"), "-n", "0")
    assert "the run stopped at its budget; resume it with: synth run" in shown.output
    assert "usage over 1 session(s)" in shown.output and "usage over 1 session(s)" in stopped.output
    used = flatten(capped.manifest["usage"])
    used_tokens = used["prompt_tokens"] + used["completion_tokens"]
    assert used_tokens == proxy.usage["prompt_tokens"] + proxy.usage["completion_tokens"]
    # Never over the cap, and stopped only when the next request's worst case did not fit: its
    # prompt (at most about 110 characters here, estimated at no more than a token per 2 of them)
    # and its max_tokens.
    assert used_tokens <= cap
    assert cap - used_tokens <= 110 / 2 + 1 + 16
    assert not (tmp_path / "capped" / "output").exists()
    done = sum(s["rows_out"] for s in capped.manifest["stages"] if s["label"] == "question")
    assert done >= 2  # the batches that completed before the stop were written
    first = set(proxy.bodies)
    # As after kill -9, when the manifest never got the session's usage: the journal in the cache has it.
    manifest = json.loads((tmp_path / "capped" / "manifest.json").read_text())
    del manifest["sessions"][0]["usage"], manifest["usage"]
    (tmp_path / "capped" / "manifest.json").write_text(json.dumps(manifest))

    resumed = run_pipeline(load_pipeline(path), tmp_path / "capped", budget=Budget(tokens=100_000))
    assert resumed.manifest["status"] == "complete" and "budget" not in resumed.manifest
    assert not first & (set(proxy.bodies) - first) and all(proxy.bodies[b] == 1 for b in first)  # none sent again
    sessions = [flatten(s["usage"]) for s in resumed.manifest["sessions"]]
    assert sum(s.get("requests", 0) for s in sessions) == sum(proxy.bodies.values())
    assert sessions[0] == used

    # The same rows as an uninterrupted run over the same answers (a llama.cpp server does not
    # give the same text twice for one seed, so an independent run could not be compared):
    (tmp_path / "whole").mkdir()
    shutil.copy(tmp_path / "capped" / "cache.sqlite", tmp_path / "whole" / "cache.sqlite")
    sent = proxy.forwarded
    whole = run_pipeline(load_pipeline(path), tmp_path / "whole")
    assert proxy.forwarded == sent and whole.manifest["status"] == "complete"
    assert flatten(whole.manifest["usage"]).get("requests", 0) == 0  # the copied cache lends it no usage
    assert read_output(tmp_path / "capped").to_pylist() == read_output(tmp_path / "whole").to_pylist()


def test_an_estimate_from_a_tenth_holds_the_full_run(proxy, write_pipeline, tmp_path, monkeypatch):
    from synth.cli import main

    rows = [f"{t} {n}" for n in range(2) for t in TOPICS[:10]]  # 20 rows
    path = write_pipeline(pipeline_text(proxy.url, rows))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["estimate", str(path), "--sample", "2", "-o", "real", "--json", "-q"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout[out.stdout.index("{") :])
    assert report["input_rows"] == 20 and report["sample_rows"] >= 2  # more only if no row passed the filter
    sample = dict(proxy.bodies)
    again = CliRunner().invoke(main, ["estimate", str(path), "--from-run", "real-estimate", "--json"])
    assert json.loads(again.stdout)["stages"] == report["stages"] and proxy.bodies == sample  # counts reused

    full = run_pipeline(load_pipeline(path), tmp_path / "real")
    measured = needed(full.manifest)
    assert all(proxy.bodies[b] == n for b, n in sample.items())  # the sample's answers were reused, not re-sent
    for q in ("requests", "prompt_tokens", "completion_tokens"):
        low = sum(s["full"][q]["low"] for s in report["stages"])
        high = sum(s["full"][q]["high"] for s in report["stages"])
        assert low <= measured[q] <= high, (q, low, measured[q], high)
    filtered = next(s for s in report["stages"] if s["stage"] == "length")
    assert filtered["full"]["rows_in"]["estimate"] == 20  # every question reaches the filter
    answers = next(s for s in report["stages"] if s["label"] == "answer")
    passed = next(s for s in full.manifest["stages"] if s["label"] == "answer")["rows_in"]
    assert answers["full"]["rows_in"]["low"] <= passed <= answers["full"]["rows_in"]["high"]


def test_usage_equals_what_the_vllm_server_reported(vllm_server, write_pipeline, tmp_path):
    """The same count against vLLM's OpenAI server (its usage, n samples in one response)."""
    from synth.testing import FaultProxy

    with FaultProxy("127.0.0.1", vllm_server.port) as proxy:
        text = pipeline_text(proxy.url, TOPICS[:3]).replace("model: gemma", f"model: {vllm_server.model}")
        text = text.replace("    output: response\n", "    output: response\n    n: 2\n").replace("sft", "raw")
        text = text.replace("    temperature: 0\n    max_tokens: 8", "    temperature: 0.8\n    max_tokens: 8")  # n > 1
        result = run_pipeline(load_pipeline(write_pipeline(text)), tmp_path / "run")
    total = flatten(result.manifest["usage"])
    assert total["requests"] == proxy.usage["answers"] > 0
    assert total["prompt_tokens"] == proxy.usage["prompt_tokens"]
    assert total["completion_tokens"] == proxy.usage["completion_tokens"]


def test_a_server_without_usage_is_counted_with_its_tokenizer(proxy, write_pipeline, tmp_path, vllm_server):
    """Servers that answer without `usage`: synth counts prompt and answer with the server's own
    tokenizer (llama.cpp's /extras/tokenize, vLLM's /tokenize) and marks the counts as its own.
    Against the real servers behind a proxy that strips `usage` (and counts what they reported):
    prompts exactly, each answer within a token (an answer cut at a stop string re-tokenizes as it
    reads, not always as it was drawn)."""
    from synth.testing import FaultProxy

    def check(result, proxy) -> None:
        total = flatten(result.manifest["usage"])
        answers = proxy.usage["answers"]
        assert total["requests"] == answers > 0 and total["counted"] == answers
        assert total["prompt_tokens"] == proxy.usage["prompt_tokens"]
        assert abs(total["completion_tokens"] - proxy.usage["completion_tokens"]) <= answers
        assert total["completion_tokens"] > 0

    proxy.strip_usage()
    try:
        path = write_pipeline(pipeline_text(proxy.url, TOPICS[:3]))
        check(run_pipeline(load_pipeline(path), tmp_path / "llama"), proxy)
    finally:
        proxy.strip_usage(False)
    with FaultProxy("127.0.0.1", vllm_server.port) as stripped:
        stripped.strip_usage()
        text = pipeline_text(stripped.url, TOPICS[:3]).replace("model: gemma", f"model: {vllm_server.model}")
        check(run_pipeline(load_pipeline(write_pipeline(text)), tmp_path / "vllm"), stripped)


# ---- the sums, without a server ----


def test_parse_budget_and_its_errors():
    assert parse_budget("tokens=2000000").tokens == 2_000_000
    assert parse_budget("12.5").cost == 12.5
    both = parse_budget("cost=3, requests=500")
    assert (both.cost, both.requests) == (3.0, 500) and both.text() == "cost=3,requests=500"
    for bad in ("tokens=lots", "money=3", "", "tokens=0"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)


def test_prices_per_token_with_batch_discount_and_per_server_hour():
    tokens = Pricing(input_per_million=1.0, output_per_million=4.0, batch_discount=0.5)
    counters = {"prompt_tokens": 1_000_000, "completion_tokens": 500_000, "batch_prompt_tokens": 400_000}
    assert tokens.token_cost(counters) == pytest.approx(0.6 + 0.4 * 0.5 + 2.0)
    totals = {
        "a": {"api": {"prompt_tokens": 1000, "completion_tokens": 1000}, "gpu": {"completion_tokens": 300}},
        "b": {"gpu": {"completion_tokens": 100}},
    }
    found = costs(totals, {"api": tokens, "gpu": Pricing(per_server_hour=2.0, servers=3)}, hours=0.5)
    assert found["backends"] == {"api": pytest.approx(0.005), "gpu": pytest.approx(3.0)}
    assert found["stages"]["a"] == pytest.approx(0.005 + 3.0 * 0.75) and found["stages"]["b"] == pytest.approx(0.75)
    assert found["server_hours"] == {"gpu": 1.5}
    assert costs(totals, {}, 1.0) is None
    with pytest.raises(ValueError, match="either per token"):
        Pricing(input_per_million=1, per_server_hour=2)


def test_the_budget_gate_waits_for_requests_in_flight_then_stops():
    async def go():
        guard = BudgetGuard(Budget(tokens=100), {}, {"s": {"b": {"prompt_tokens": 10, "completion_tokens": 10}}})
        first = guard.worst("b", chars=20, messages=0, max_tokens=30)  # 20 * 0.5 + 1 + 30 = 41
        assert guard.try_reserve(first) and guard.try_reserve(first) is False  # 20 + 41 + 41 > 100
        assert guard.in_flight()
        waiting = asyncio.create_task(guard.wait())
        await asyncio.sleep(0)  # it waits now
        guard.settle("b", first, {"requests": 1, "prompt_tokens": 12, "completion_tokens": 8}, 20)
        await waiting
        assert guard.spent_now()["tokens"] == 40 and not guard.in_flight()
        second = guard.worst("b", chars=20, messages=0, max_tokens=30)  # 20 * 0.6 + 1 + 30 = 43
        assert second["tokens"] == pytest.approx(43) and guard.try_reserve(second)
        guard.settle("b", second, {"requests": 1, "prompt_tokens": 12, "completion_tokens": 30}, 20)
        assert guard.try_reserve(second) is False and not guard.in_flight()
        assert "tokens: 82 spent of 100" in str(guard.exhausted(second))
        assert guard.try_reserve({"cost": 0, "tokens": 1, "requests": 1}) is False  # reached: nothing more

    asyncio.run(go())


def test_ratios_and_pass_rates_keep_an_honest_range_on_small_samples():
    assert ratio([2, 2, 2], [4, 4, 4]) == (2, 0.0)
    r, se = ratio([2, 2, 2], [1, 4, 7])
    assert r == 2 and se > 0
    assert ratio([2], [3]) == (1.5, 1.5)  # one shard: no spread to go by
    low, high = wilson(3, 3)  # a filter that kept all of 3 rows may still drop most
    assert high == 1 and low == pytest.approx(0.25)
    low, high = wilson(0, 4)
    assert low == 0 and 0.6 < high < 0.7
    assert wilson(50, 100)[0] == pytest.approx(0.36, abs=0.01)


def test_usage_journal_survives_in_the_cache_and_answers_move_between_caches(tmp_path):
    cache = RequestCache(tmp_path / "a.sqlite")
    cache.session = "2026-12-06T21:00:00+00:00"
    cache.put_many([("k", "complete", "m", {"p": 1}, {"generations": []})], [("s", "b", {"requests": 2})])
    cache.put_many([], [("s", "b", {"requests": 1, "prompt_tokens": 5})])
    assert cache.usage(cache.session) == {"s": {"b": {"requests": 3, "prompt_tokens": 5}}}
    assert cache.usage("another session") == {}
    cache.close()
    other = RequestCache(tmp_path / "b.sqlite")
    assert other.absorb(tmp_path / "a.sqlite") == 1 and other.absorb(tmp_path / "a.sqlite") == 0
    assert "k" in other.get_many(["k"]) and other.usage("2026-12-06T21:00:00+00:00") == {}
    other.close()


def test_validate_warns_when_the_budget_cannot_pay_for_the_first_batch(write_pipeline):
    from synth.cli import main

    path = write_pipeline(pipeline_text("http://127.0.0.1:9/v1", TOPICS[:4], run=", budget: {tokens: 20}"))
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 0, out.output
    assert "run.budget.tokens = 20 is below what the first batch may need" in out.output
    assert "2 rows through stage 'question' take 2 requests and up to 32 completion tokens" in out.output


def test_a_budget_on_an_executor_whose_workers_send_is_refused_before_anything_is_sent(write_pipeline, tmp_path):
    """The gate is in the driver; on Ray the map stages' requests leave from actors, which it
    would not hold: such a run is refused, naming the way out, and writes nothing."""
    path = write_pipeline(pipeline_text("http://127.0.0.1:9/v1", TOPICS[:4]))
    out = cli("run", str(path), "-o", str(tmp_path / "run"), "--executor", "ray", "--budget", "requests=5", "-q")
    assert out.exit_code != 0
    assert "--executor local, or without a budget" in out.output
    assert not (tmp_path / "run").exists()
