"""Batch mode and rate limits of the openai backend.

No provider's Batch API can be reached from here: `synth.testing_provider.ProviderServer` stands
in for the provider (its files and batches endpoints, its rate limits) and executes every line on
the real llama.cpp server of the session. `vllm run-batch` is the real one, on the vLLM CPU install.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.cache import RequestCache
from synth.llm.batchjournal import Journal
from synth.llm.ratelimit import Bucket, RateLimiter, parse_reset
from synth.spend import spend

from .pipeline_runs import synth_cli

ROWS = [
    {"instruction": "What is the capital of Italy?", "response": "The capital of Italy is Rome."},
    {"instruction": "What is 7 times 8?", "response": "It is 54."},
    {"instruction": "Name a primary colour.", "response": "Blue is a primary colour."},
]


def judge_pipeline(write, url: str, backend: str = "", name: str = "p.yaml", model: str = "gemma") -> Path:
    return write(
        name,
        f"""
        name: judged
        seed: 5
        backends:
          api:
            type: openai
            model: {json.dumps(model)}
            base_url: {url}
            api_key_env: null
            {backend}
        stages:
          - stage: load
            rows: {json.dumps(ROWS)}
          - stage: judge
            backend: api
            task: score
            checklist: "off"
            rationale_chars: 12
            max_tokens: 60
        """,
    )


def respond_pipeline(
    write, url: str, backend: str = "", name: str = "r.yaml", rows: list[dict] = ROWS, max_tokens: int = 8
) -> Path:
    return write(
        name,
        f"""
        seed: 5
        backends:
          api: {{type: openai, model: gemma, base_url: "{url}", api_key_env: null, {backend}}}
        stages:
          - stage: load
            rows: {json.dumps(rows)}
          - stage: respond
            backend: api
            max_tokens: {max_tokens}
        """,
    )


BATCH = "batch: true\n            batch_collect_seconds: 0.3\n            batch_poll_seconds: 0.3"
INLINE_BATCH = "batch: true, batch_collect_seconds: 0.3, batch_poll_seconds: 0.3"


@pytest.fixture
def provider(shared_llama_server):
    """The stand-in provider (Batch API + rate limits) in front of the real llama.cpp server."""
    from synth.testing_provider import ProviderServer

    with ProviderServer("127.0.0.1", shared_llama_server.port) as p:
        yield p


def _created_lines(provider) -> list[set[str]]:
    """The custom_ids of each batch the provider created."""
    out = []
    for batch in provider.batches.values():
        text = provider.files[batch["input_file_id"]].decode()
        out.append({json.loads(t)["custom_id"] for t in text.splitlines()})
    return out


def _counters(result, label: str) -> dict:
    return {s["label"]: s for s in result.manifest["stages"]}[label]["counters"]


# ---- unit: the buckets ----
def test_reset_headers_parse():
    assert parse_reset("1s") == 1 and parse_reset("6m0s") == 360 and parse_reset("20ms") == pytest.approx(0.02)
    assert parse_reset("1h2m3.5s") == pytest.approx(3723.5) and parse_reset("2.5") == 2.5
    assert parse_reset("soon") is None and parse_reset(None) is None


def test_bucket_follows_the_providers_headers():
    now = 100.0
    bucket = Bucket(60, now)  # 1 a second, one second's worth at first
    assert bucket.capacity == 1 and bucket.wait_for(1, now) == 0
    bucket.level -= 1
    assert bucket.wait_for(1, now) == pytest.approx(1.0)
    bucket.observe(remaining=4, reset=1.0, in_flight=1, now=now)  # the provider allows a burst of 5
    assert bucket.capacity == 5 and bucket.level == 3
    bucket.observe(remaining=0, reset=10.0, in_flight=0, now=now)  # it refills 5 in 10 s: half our pace
    assert bucket.rate == pytest.approx(0.5) and bucket.wait_for(1, now) == pytest.approx(2.0)


def test_limiter_counts_tokens_ahead_and_settles_on_usage():
    clock = [100.0]  # the limiter's own clock: a busy machine must not refill the bucket under the test
    limiter = RateLimiter(None, 600, clock=lambda: clock[0])  # 10 tokens a second
    body = {"prompt": "x" * 40, "max_tokens": 5, "n": 2}
    assert limiter.estimate(body) == 40 // 4 + 1 + 10
    import asyncio

    asyncio.run(limiter.acquire(8))
    assert limiter.tokens.level == pytest.approx(2)
    limiter.settle(8, used=3, headers=None)  # 5 unused tokens come back
    assert limiter.tokens.level == pytest.approx(7)
    clock[0] += 0.2  # two tokens refill in 0.2 s
    asyncio.run(limiter.acquire(9))
    assert limiter.tokens.level == pytest.approx(0)


def test_batch_mode_and_rate_limits_change_no_fingerprint(write):
    """They change price and pace, never rows: switching them keeps a run's shards and cache."""
    plain = load_pipeline(respond_pipeline(write, "http://127.0.0.1:9/v1"))
    tuned = INLINE_BATCH + ", completion_window: 1h, batch_max_requests: 10, requests_per_minute: 60"
    changed = load_pipeline(respond_pipeline(write, "http://127.0.0.1:9/v1", tuned, name="t.yaml"))
    assert changed.fingerprint() == plain.fingerprint()
    assert changed.stage_fingerprints() == plain.stage_fingerprints()
    assert changed.backends["api"].concurrency() == 256 and plain.backends["api"].concurrency() == 256
    bigger = load_pipeline(respond_pipeline(write, "http://127.0.0.1:9/v1", INLINE_BATCH, name="b.yaml"))
    assert bigger.backends["api"].concurrency() == 50_000  # enough rows in flight to fill a job


# ---- the Batch API, end to end ----
def test_judge_in_batch_mode_is_journaled_and_counted_as_batch(write, tmp_path, provider):
    prices = "\n            pricing: {input_per_million: 1.0, output_per_million: 4.0, batch_discount: 0.5}"
    batch = judge_pipeline(write, provider.url, BATCH + prices)
    result = run_pipeline(load_pipeline(batch), tmp_path / "batch")
    rows = read_output(tmp_path / "batch").to_pylist()
    assert len(rows) == 3 and all(1 <= r["judge_score"] <= 10 for r in rows), _counters(result, "judge")
    assert provider.served == 0, "batch mode sent a generation outside a batch job"
    assert provider.creates == provider.uploads >= 1
    ids = _created_lines(provider)
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1 :]), "a request was in two batches"
    counters = _counters(result, "judge")
    assert counters["batch_requests"] == counters["requests"] >= 3  # for the cost: priced as batch
    spent = spend(result.manifest)
    total = spent["total"]
    assert total["batch_prompt_tokens"] == total["prompt_tokens"] > 0 and total["batch_requests"] == total["requests"]
    full_price = (total["prompt_tokens"] * 1.0 + total["completion_tokens"] * 4.0) / 1e6
    assert spent["cost"]["total"] == pytest.approx(full_price * 0.5, rel=1e-6)  # every request at half price
    jobs = Journal(tmp_path / "batch").jobs().values()
    assert {j.status for j in jobs} == {"completed"} and not any(j.in_flight for j in jobs)


def test_batch_and_streaming_runs_send_the_same_requests(write, tmp_path, provider):
    """A streaming run sends the very same bodies (prompts, sampling, seeds) under the same cache
    keys as a batch run, so a deterministic server gives both the same rows."""
    run_pipeline(load_pipeline(respond_pipeline(write, provider.url, INLINE_BATCH)), tmp_path / "b")
    sent, provider.bodies = provider.bodies, []
    (ids,) = _created_lines(provider)
    run_pipeline(load_pipeline(respond_pipeline(write, provider.url, name="s.yaml")), tmp_path / "s")
    assert provider.served == 3 and provider.creates == 1
    assert sorted(json.dumps(b, sort_keys=True) for b in sent) == sorted(
        json.dumps(b, sort_keys=True) for b in provider.bodies
    )
    assert ids == set(RequestCache(tmp_path / "s" / "cache.sqlite").get_many(list(ids)))
    batch_rows, stream_rows = read_output(tmp_path / "b").to_pylist(), read_output(tmp_path / "s").to_pylist()
    assert batch_rows == stream_rows


def test_failed_and_expired_lines_go_out_again_alone(write, tmp_path, provider):
    """A line that failed with a 500, and the lines an expired batch never ran, are sent again in a
    later job, and only they; the rows come out complete."""
    provider.fail_lines(1, status=500)
    provider.expire_next(after_lines=2)  # the first job expires after 2 lines: 1 of them failed
    path = respond_pipeline(write, provider.url, INLINE_BATCH)
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert len(read_output(tmp_path / "run").to_pylist()) == 3, _counters(result, "respond")
    first, second = _created_lines(provider)
    assert len(first) == 3 and len(second) == 2 and second < first
    statuses = [j.status for j in Journal(tmp_path / "run").jobs().values()]
    assert statuses[0] == "expired" and statuses[1] == "completed"


def test_a_batch_failed_as_a_whole_stops_the_run_with_the_providers_reason(write, tmp_path, provider):
    from synth.errors import BackendError

    provider.refuse_next("the model gemma-x does not exist")
    with pytest.raises(BackendError, match="as a whole: the model gemma-x does not exist; fix that"):
        run_pipeline(load_pipeline(respond_pipeline(write, provider.url, INLINE_BATCH)), tmp_path / "run")
    (job,) = Journal(tmp_path / "run").jobs().values()
    assert job.status == "failed" and not job.in_flight and provider.lines_run == 0


def test_kill_at_every_step_never_submits_a_batch_twice(write, tmp_path, provider):
    """SIGKILL during the upload, while the batch is created (the provider made it, synth never heard
    its id), after it is created, while it is polled and during the download: each resume carries
    on with the batch it paid for."""
    path = judge_pipeline(write, provider.url, BATCH)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def kill_at(step: str) -> None:
        provider.pause_at(step)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            assert provider.paused.wait(120), f"the run never reached {step}: {proc.poll()}"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        provider.release()

    kill_at("upload")
    assert (provider.uploads, provider.creates) == (1, 0)
    kill_at("create")
    assert (provider.uploads, provider.creates) == (2, 1)  # the first upload never got its id back
    kill_at("created")  # found by its metadata: neither uploaded nor created again
    assert (provider.uploads, provider.creates) == (2, 1)
    kill_at("polling")
    kill_at("download")
    assert provider.creates == 1
    shown = synth_cli("inspect", str(run), "-n", "0")
    inspected = " ".join((shown.stdout + shown.stderr).split())  # synth's console writes to stderr, wrapped
    assert shown.returncode == 0, shown.stderr
    assert "1 batch job(s) in flight" in inspected and "batch_" in inspected, inspected
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_output(run).to_pylist()) == 3
    ids = _created_lines(provider)
    assert len(ids[0]) == 3 and all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1 :])


def test_ctrl_c_leaves_batches_running_cancel_stops_them_and_resume_sends_only_the_rest(write, tmp_path, provider):
    path = respond_pipeline(write, provider.url, INLINE_BATCH)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    provider.pause_at("polling")
    provider.hold_lines(after=1)  # the provider runs one line, then the batch is cancelled
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    assert provider.paused.wait(120)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    provider.release()
    assert proc.returncode == 130, out
    assert "still running at the provider" in out and "synth batches cancel" in out, out
    listed = synth_cli("batches", "list", str(run))
    assert "in flight" in listed.stdout, listed.stdout
    cancelled = synth_cli("batches", "cancel", str(run))
    assert cancelled.returncode == 0 and "cancelled 1 batch job" in cancelled.stdout, cancelled.stderr
    assert provider.cancels == 1
    provider.run_lines()
    # The resume collects what the cancelled batch answered and sends only the rest, in a new job.
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_output(run).to_pylist()) == 3
    first = next(iter(provider.batches.values()))
    assert first["status"] == "cancelled" and first["request_counts"]["completed"] == 1
    first_ids, second_ids = _created_lines(provider)
    assert second_ids < first_ids and len(second_ids) == 2


# ---- rate limits ----
def test_rate_limited_run_keeps_the_limit_without_a_429(write, tmp_path, shared_llama_server):
    """A provider allowing 60 requests a minute with a burst of 5: 40 requests cannot take less
    than (40 - 5) / 1 = 35 s from the first to the last. synth must get no 429 and stay within
    10% of that. (synth learns of the burst from the first answer's headers, so what it loses
    there, a second or two on a busy machine, is part of the 10%.)"""
    from synth.testing_provider import ProviderServer

    rows = [{"instruction": f"Say the number {i}."} for i in range(40)]
    with ProviderServer("127.0.0.1", shared_llama_server.port, requests_per_minute=60, burst=5) as provider:
        path = respond_pipeline(write, provider.url, "requests_per_minute: 60", rows=rows, max_tokens=4)
        result = run_pipeline(load_pipeline(path), tmp_path / "run")
        span = provider.arrivals[-1] - provider.arrivals[0]
    assert provider.too_many == 0 and len(provider.arrivals) == 40
    assert len(read_output(tmp_path / "run").to_pylist()) == 40
    assert 35 * 0.98 <= span <= 35 * 1.1, span
    assert "rate_limited" not in _counters(result, "respond")


def test_a_429_under_limits_set_too_high_is_counted_and_told(write, tmp_path, shared_llama_server):
    from synth.console import print_summary
    from synth.testing_provider import ProviderServer

    rows = [{"instruction": f"Say the number {i}."} for i in range(3)]
    with ProviderServer("127.0.0.1", shared_llama_server.port, requests_per_minute=60, burst=1) as provider:
        path = respond_pipeline(write, provider.url, "requests_per_minute: 6000", rows=rows, max_tokens=2)
        result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert provider.too_many >= 1 and _counters(result, "respond")["rate_limited"] == provider.too_many
    from synth.console import console

    with console.capture() as captured:
        print_summary(result)
    assert "requests_per_minute / tokens_per_minute are set above the provider's limits" in captured.get()


def test_batch_files_are_written_once_and_answers_taken_in_as_they_come(write, tmp_path, shared_llama_server):
    """Offline files, answered here by the real llama.cpp server line by line (as `vllm run-batch`
    would): a request already written is not written again while it waits, a partial output file
    lets the run go on only once every answer is in, and no server is asked meanwhile."""
    import httpx

    from synth.llm.batchapi import BatchFilesWritten

    path = respond_pipeline(write, "http://127.0.0.1:9/v1", "batch_collect_seconds: 0.3")  # nothing listens there
    run, folder = tmp_path / "run", tmp_path / "files"
    with pytest.raises(BatchFilesWritten, match="3 written now"):
        run_pipeline(load_pipeline(path), run, batch_files=folder)
    with pytest.raises(BatchFilesWritten, match="0 written now"):
        run_pipeline(load_pipeline(path), run, batch_files=folder)
    (requests,) = folder.glob("requests-*.jsonl")
    lines = [json.loads(t) for t in requests.read_text().splitlines()]
    assert len(lines) == 3 and {line["url"] for line in lines} == {"/v1/chat/completions"}

    def answer(line: dict) -> str:
        response = httpx.post(shared_llama_server.url.removesuffix("/v1") + line["url"], json=line["body"], timeout=120)
        body = {"status_code": response.status_code, "request_id": "r", "body": response.json()}
        return json.dumps({"id": "b", "custom_id": line["custom_id"], "response": body, "error": None}) + "\n"

    (folder / "results-1.jsonl").write_text("".join(answer(line) for line in lines[:2]))
    with pytest.raises(BatchFilesWritten, match=r"1 requests .* waiting .* \(0 written now\)"):
        run_pipeline(load_pipeline(path), run, batch_results=folder)
    (folder / "results-2.jsonl").write_text(answer(lines[2]))
    result = run_pipeline(load_pipeline(path), run, batch_results=folder)
    assert len(read_output(run).to_pylist()) == 3 and len(list(folder.glob("requests-*.jsonl"))) == 1
    assert "batch_requests" not in _counters(result, "respond")  # not the provider's batch price


# ---- offline batch files through the real `vllm run-batch` ----
def test_batch_files_through_vllm_run_batch(write, tmp_path, vllm_model_dir):
    """`--batch-files` writes the judge's requests and stops; `vllm run-batch` answers them;
    `--batch-results` takes them in and the run completes. (Run under flock /tmp/vllm.lock.)"""
    quick = "batch_collect_seconds: 0.3"
    path = judge_pipeline(write, "http://127.0.0.1:9/v1", quick, model=str(vllm_model_dir))  # nothing listens there
    run, folder = tmp_path / "run", tmp_path / "files"
    first = synth_cli("run", str(path), "-o", str(run), "-q", "--batch-files", str(folder))
    assert first.returncode == 0 and "stopped:" in first.stdout, first.stderr
    requests = sorted(folder.glob("requests-*.jsonl"))
    assert len(requests) == 1 and len(requests[0].read_text().splitlines()) == 3
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1"}
    vllm = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch"]
    answered = subprocess.run(
        [
            *vllm,
            "-i",
            str(requests[0]),
            "-o",
            str(folder / "results.jsonl"),
            "--model",
            str(vllm_model_dir),
            "--max-model-len",
            "2048",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert answered.returncode == 0, answered.stderr[-3000:]
    second = synth_cli("run", str(path), "-o", str(run), "-q", "--batch-results", str(folder))
    assert second.returncode == 0 and "stopped:" not in second.stdout, second.stdout + second.stderr
    rows = read_output(run).to_pylist()
    assert len(rows) + len(list(folder.glob("requests-*.jsonl"))) >= 3
    assert all(1 <= r["judge_score"] <= 10 for r in rows)
