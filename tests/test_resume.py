"""kill -9 in the middle of a real LLM run, then resume: nothing lost, nothing duplicated,
no finished request sent again, and the same rows an uninterrupted run gives."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth import load_pipeline, read_output, run_pipeline

pytest.importorskip("llama_cpp")

TOPICS = [
    "cooking",
    "astronomy",
    "gardening",
    "chess",
    "jazz",
    "sailing",
    "tax law",
    "knitting",
    "volcanoes",
    "poetry",
    "databases",
    "running",
    "birds",
    "coffee",
    "robots",
    "history",
]

PIPELINE = f"""
name: resume
seed: 3
run: {{batch_size: 2, max_batches_in_flight: 2}}
stages:
  - stage: load
    rows: {json.dumps([{"topic": t} for t in TOPICS])}
  - stage: generate
    name: question
    template: quickstart/question.jinja
    output: instruction
    temperature: 0.9
    max_tokens: 20
    stop: ["\\n"]
  - stage: generate
    name: answer
    template: quickstart/answer.jinja
    output: response
    temperature: 0.7
    max_tokens: 24
    stop: ["\\n"]
output: {{format: sft}}
"""


def cached_requests(run: Path) -> int:
    with sqlite3.connect(run / "cache.sqlite") as db:
        return db.execute("SELECT count(*) FROM requests").fetchone()[0]


def markers(run: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in run.glob("stages/*/.synth/shard-*.json")}


def test_kill_9_then_resume_loses_and_repeats_nothing(write, tmp_path):
    path = write("p.yaml", PIPELINE)
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    answers = run / "stages" / "02-answer"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(answers.glob(".synth/shard-*.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_answers = len(list(answers.glob(".synth/shard-*.json")))
    assert 2 <= done_answers < len(TOPICS) // 2, "the kill should land mid-run"
    before_markers = markers(run)
    before_cache = cached_requests(run)
    # The manifest still says `running`; nothing holds the lock, so synth shows what happened.
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    shown = subprocess.run(
        [sys.executable, "-m", "synth.cli", "inspect", str(run)], capture_output=True, text=True, timeout=120
    )
    assert "status: interrupted" in shown.stderr + shown.stdout
    squeezed = "".join((shown.stderr + shown.stdout).split())  # rich wraps long lines at the terminal's width
    assert "".join(f"resume it with: synth run {path.resolve()} -o {run}".split()) in squeezed

    resumed = subprocess.run(
        [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr

    rows = read_output(run).to_pylist()
    assert [r["topic"] for r in rows] == TOPICS  # no row missing, none duplicated, source order
    assert all(r["instruction"] and r["response"] for r in rows)

    # Every request the resumed session sent was one the killed session had not finished.
    new_markers = {p: m for p, m in markers(run).items() if p not in before_markers}
    sent_on_resume = sum(m["counters"].get("requests", 0) for m in new_markers.values())
    assert sent_on_resume == cached_requests(run) - before_cache
    assert cached_requests(run) == 2 * len(TOPICS)
    # Shards finished before the kill were not redone.
    assert all(p.exists() and json.loads(p.read_text()) == m for p, m in before_markers.items())

    # The interrupted-then-resumed run equals an uninterrupted one, row for row.
    reference = run_pipeline(load_pipeline(path), tmp_path / "reference")
    assert reference.output_rows == len(TOPICS)
    assert read_output(tmp_path / "reference").to_pylist() == rows


def test_second_run_sends_no_request(write, tmp_path):
    path = write(
        "p.yaml",
        PIPELINE.replace(json.dumps([{"topic": t} for t in TOPICS]), json.dumps([{"topic": t} for t in TOPICS[:3]])),
    )
    first = run_pipeline(load_pipeline(path), tmp_path / "run")
    first_rows = read_output(tmp_path / "run").to_pylist()
    assert sum(s["counters"].get("requests", 0) for s in first.manifest["stages"]) == 6
    # A changed answer stage is recomputed: its prompts changed, so only those go out again;
    # the questions come from the stage's saved shards.
    changed = path.read_text().replace("temperature: 0.7", "temperature: 0.5")
    path.write_text(changed)
    second = run_pipeline(load_pipeline(path), tmp_path / "run")
    by_label = {s["label"]: s for s in second.manifest["stages"]}
    assert by_label["answer"]["counters"].get("requests", 0) == 3
    assert by_label["question"]["counters"].get("requests", 0) == 3  # from the first session's markers
    # Going back to the first settings: every answer is already in the cache.
    path.write_text(changed.replace("temperature: 0.5", "temperature: 0.7"))
    third = run_pipeline(load_pipeline(path), tmp_path / "run")
    answer = {s["label"]: s for s in third.manifest["stages"]}["answer"]
    assert answer["counters"].get("requests", 0) == 0 and answer["counters"]["cache_hits"] == 3
    assert read_output(tmp_path / "run").to_pylist() == first_rows


def test_ctrl_c_stops_cleanly_and_the_run_resumes(write, tmp_path):
    topics = json.dumps([{"topic": t} for t in TOPICS])
    path = write("p.yaml", PIPELINE.replace(topics, json.dumps([{"topic": t} for t in TOPICS[:8]])))
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((run / "stages" / "02-answer").glob(".synth/shard-*.json")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: finished work is saved; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    result = run_pipeline(load_pipeline(path), run)
    assert [r["topic"] for r in read_output(run).to_pylist()] == TOPICS[:8]
    assert result.manifest["status"] == "complete"
