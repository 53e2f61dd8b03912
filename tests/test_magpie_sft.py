"""The first milestone end to end: the shipped pipelines/magpie-sft.yaml on the embedded model
(instructions, responses, tags, language, dedup, the 300K filter recipe, SFT output), killed
with SIGKILL in the middle and resumed, then exported and loaded with `datasets`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth import read_output
from synth.resources import resource_dir
from synth.stages.magpie.tag import CATEGORIES, LEVELS

from .pipeline_runs import reference_rows

pytest.importorskip("llama_cpp")
pytest.importorskip("faiss")

LIMIT = 6


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory) -> Path:
    """The shipped file, with smaller shards so that a kill lands between them."""
    text = (resource_dir("pipelines") / "magpie-sft.yaml").read_text()
    assert "batch_size: 8" in text
    path = tmp_path_factory.mktemp("pipeline") / "magpie-sft.yaml"
    path.write_text(text.replace("batch_size: 8", "batch_size: 2"))
    return path


@pytest.fixture(scope="module")
def runs(pipeline_file, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    killed = root / "killed"
    command = [sys.executable, "-m", "synth.cli", "run", str(pipeline_file), "-o", str(killed), "-q"]
    command += ["--limit", str(LIMIT)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tags = killed / "stages" / "02-tag"
    deadline = time.time() + 600
    while time.time() < deadline and not list(tags.glob(".synth/shard-*.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tagged_before = len(list(tags.glob(".synth/shard-*.json")))
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    reference = root / "reference"
    reference_rows(pipeline_file, reference, LIMIT, cache_from=killed)  # the same answers, see pipeline_runs
    return {"killed": killed, "reference": reference, "tagged_before": tagged_before}


def test_killed_and_resumed_equals_uninterrupted(runs):
    assert 1 <= runs["tagged_before"] < LIMIT // 2, "the kill should land before the tags were done"
    rows = read_output(runs["killed"]).to_pylist()
    assert rows == read_output(runs["reference"]).to_pylist()
    manifest = json.loads((runs["killed"] / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert len(manifest["sessions"]) == 2


def test_rows_follow_the_recipe_and_carry_magpie_columns(runs):
    run = runs["reference"]
    rows = read_output(run).to_pylist()
    manifest = json.loads((run / "manifest.json").read_text())
    stages = {s["label"]: s for s in manifest["stages"]}
    # Every attempted instruction is accounted for: kept, or dropped with a reason.
    dropped = sum(sum(s["filtered"].values()) + sum(s["failed"].values()) for s in manifest["stages"])
    assert len(rows) + dropped == LIMIT, stages
    assert rows, "the embedded model should produce some rows that pass the recipe"
    assert "reward" not in stages  # the shipped file leaves the reward step out (no reward model)
    for row in rows:
        assert row["messages"] == [
            {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["response"]},
        ]
        assert row["input_quality"] in ("good", "excellent")
        assert not row["instruction"].rstrip().endswith(":")
        assert row["representative_id"] == row["id"]  # only cluster representatives survive
        assert row["language"]
        assert row["task_category"] in (None, *CATEGORIES) and row["difficulty"] in (None, *LEVELS)
        assert row["gen_input_configs"]["input_generator"] == "local:gemma-3-270m-q4_k_m.gguf"
        assert row["gen_response_configs"]["temperature"] == 0.0
    # A tag the judge could not give is None and counted, never a crash.
    failed = stages["tag"]["counters"].get("parse_failed:classification", 0)
    assert failed >= sum(r["task_category"] is None for r in rows)
    # Whatever the input-quality filter dropped, it dropped for its stated reason.
    for reason in stages["input_quality"]["filtered"]:
        assert reason == "input_quality in [good, excellent]"


def test_export_loads_with_datasets(runs, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, "-m", "synth.cli", "export", str(runs["reference"]), "-o", str(out), "--format", "sft"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    rows = read_output(runs["reference"]).to_pylist()
    assert sorted(r["messages"][0]["content"] for r in loaded) == sorted(r["instruction"] for r in rows)
    card = (out / "README.md").read_text()
    assert "magpie-sft" in card and "input_quality" in card
    assert "| magpie | gemma-3-270m-q4_k_m.gguf (embedded default, llama.cpp) |" in card
