"""Pushing to the Hub: `synth push` and `output: push_to_hub`, with the real huggingface_hub and
datasets clients, then `datasets.load_dataset` of the pushed repo and a row-by-row comparison.

The Hugging Face Hub cannot be reached from this machine, so the server is tests/fakehub.py, an
in-test HTTP server that implements the Hub endpoints these libraries call (HF_ENDPOINT points
at it, HF_HUB_DISABLE_XET=1). That is the one fake in this suite, and this is why.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from synth import load_pipeline, read_output, run_pipeline

from .fakehub import FakeHub

pytest.importorskip("huggingface_hub")
datasets = pytest.importorskip("datasets")

TOKEN = "hf_secret_token_for_tests"
ROWS = [
    {"instruction": f"Question {i}: what is {i} + {i}?", "response": f"{i} + {i} = {2 * i}.", "score": i / 10}
    for i in range(12)
]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub(token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # a fresh download cache
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)  # huggingface_hub reads it as offline too
        yield server


def env_for_subprocess(hub, tmp_path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    return env | {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "h")}


def finished_run(write, tmp_path, extra: str = ""):
    path = write(
        "p.yaml",
        f"""
        name: pushme
        stages:
          - stage: load
            rows: {json.dumps(ROWS)}
        output:
          format: sft
        {extra}
        """,
    )
    return path


def load_back(hub, repo_id: str, tmp_path):
    """`load_dataset` from the (fake) Hub, in a fresh process, so no state from this one helps."""
    code = (
        "import datasets, json, sys\n"
        f"ds = datasets.load_dataset({repo_id!r})\n"
        "print(json.dumps({split: ds[split].to_list() for split in ds}))\n"
    )
    env = env_for_subprocess(hub, tmp_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_synth_push_then_load_dataset_gives_the_same_rows(hub, write, tmp_path):
    path = finished_run(write, tmp_path)
    run_pipeline(load_pipeline(path), tmp_path / "run")
    env = env_for_subprocess(hub, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "synth.cli", "push", str(tmp_path / "run"), "tester/pushed", "--test-size", "0.25"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "pushed to tester/pushed" in done.stdout
    repo = hub.repos["tester/pushed"]
    assert repo.private  # private unless --public
    assert {"README.md", "train-00000-of-00001.parquet", "test-00000-of-00001.parquet"} <= set(repo.files)
    assert "train-00000-of-00001.parquet" in repo.lfs  # Parquet went through Git LFS
    assert ("POST", "/datasets/tester/pushed.git/info/lfs/objects/batch") in hub.log
    assert not hub.unknown, hub.unknown

    loaded = load_back(hub, "tester/pushed", tmp_path)
    assert len(loaded["train"]) == 9 and len(loaded["test"]) == 3
    expected = {
        json.dumps(m, sort_keys=True) for m in (r["messages"] for r in read_output(tmp_path / "run").to_pylist())
    }
    got = {json.dumps(r["messages"], sort_keys=True) for r in loaded["train"] + loaded["test"]}
    assert got == expected

    # The token went to the server in headers, and nowhere into what was uploaded.
    assert all(TOKEN.encode() not in data for data in repo.files.values())
    assert TOKEN not in done.stdout + done.stderr


def test_pipeline_push_to_hub_on_completion(hub, write, tmp_path):
    path = finished_run(write, tmp_path, extra="  push_to_hub: {repo_id: tester/auto, private: false}")
    env = env_for_subprocess(hub, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(tmp_path / "run"), "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not hub.repos["tester/auto"].private
    loaded = load_back(hub, "tester/auto", tmp_path)
    assert [r["messages"][0]["content"] for r in loaded["train"]] == [r["instruction"] for r in ROWS]


def test_a_bad_token_is_a_clear_error_that_does_not_echo_it(hub, write, tmp_path):
    path = finished_run(write, tmp_path)
    run_pipeline(load_pipeline(path), tmp_path / "run")
    env = env_for_subprocess(hub, tmp_path) | {"HF_TOKEN": "hf_wrong_token_value"}
    done = subprocess.run(
        [sys.executable, "-m", "synth.cli", "push", str(tmp_path / "run"), "tester/nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode != 0
    assert "HF_TOKEN is not valid" in done.stderr and "synth push" in done.stderr
    assert "hf_wrong_token_value" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
