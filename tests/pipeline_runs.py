"""Helpers for tests that run a whole pipeline file: the CLI in a subprocess, a run killed with
SIGKILL in the middle of a chosen stage and resumed, and an uninterrupted reference to compare.

    info = kill_and_resume(path, tmp_path / "killed", limit=4, stage="judge")
    assert 1 <= info["shards_before"] < info["shards"]      # the kill landed mid-stage
    assert read_output(info["run"]).to_pylist() == reference_rows(path, tmp_path / "ref", 4, info["run"])

Set `run: {batch_size: 1}` in the file (or pass a copy that does) so the stage writes one shard per
row and the kill can land between shards.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from synth import load_pipeline, read_output, run_pipeline


def synth_cli(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "synth.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def stage_markers(run: Path, stage: str) -> list[Path]:
    """Completion markers of the stage whose folder ends in `-<stage>` (its label)."""
    return [m for d in (run / "stages").glob(f"*-{stage}") for m in (d / ".synth").glob("shard-*.json")]


def kill_and_resume(
    path: Path, run: Path, limit: int, stage: str, *extra: str, timeout: int = 600, env: dict | None = None
) -> dict:
    """Runs `synth run path` in a subprocess, SIGKILLs it once `stage` has finished its first shard,
    then runs the same command again to completion. Returns the run folder, the markers the stage
    had at the kill, and the stage's markers at the end."""
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q", "--limit", str(limit)]
    command += list(extra)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + timeout
    try:
        while not stage_markers(run, stage):
            if proc.poll() is not None:
                raise AssertionError(
                    f"the run ended before stage {stage} wrote a shard:\n{proc.stderr.read().decode()}"
                )
            if time.time() > deadline:
                raise AssertionError(f"stage {stage} wrote no shard in {timeout} s")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    before = len(stage_markers(run, stage))
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["sessions"]) == 2, manifest.get("sessions")
    return {"run": run, "shards_before": before, "shards": len(stage_markers(run, stage)), "manifest": manifest}


def reference_rows(path: Path, run: Path, limit: int, cache_from: Path | None = None) -> list[dict]:
    """The rows of an uninterrupted run of the same file, in process.

    With `cache_from` (the killed run), the reference starts from a copy of that run's request
    cache: it is then the uninterrupted run given the same model answers, which is what a resume
    must reproduce (no row lost, repeated or reordered, no request re-sent with another seed: such
    a request misses the copy and is generated afresh). It costs the stages without a model instead
    of the whole run again. That the embedded model gives the same answer for the same seed in
    another process is tested on its own (test_magpie, test_openai_backend)."""
    if cache_from is not None:
        run.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(cache_from / "cache.sqlite") as source, sqlite3.connect(run / "cache.sqlite") as copy:
            source.backup(copy)
    run_pipeline(load_pipeline(path), run, limit=limit)
    return read_output(run).to_pylist()
