"""Imports point down: what reads a run (report, inspect, export, push) loads no runner, and the
pipeline's config loads no executor, backend or client, neither when imported nor when it loads a
pipeline. Each check runs in a fresh interpreter and looks at `sys.modules`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from synth import load_pipeline, run_pipeline

from .conftest import REPO

READERS = [
    "synth.report",
    "synth.inspect_run",
    "synth.export",
    "synth.hub",
    "synth.runs",
    "synth.labels",
    "synth.view.server",
]
RUNNER = ["synth.run", "synth.run.runner", "synth.executors", "synth.llm.client"]
# What config must not load: the runner, and the code behind a backend (engines, HTTP clients).
BACKENDS = [*RUNNER, "synth.llm.local", "synth.llm.openai", "synth.llm.vllm", "synth.llm.cpu", "synth.llm.pooling"]


def loaded(code: str, watch: list[str]) -> list[str]:
    """Which of `watch` a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {watch!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", READERS)
def test_reading_a_run_imports_no_runner(module):
    assert loaded(f"import {module}", RUNNER) == []


def test_config_imports_no_executor_backend_or_client():
    assert loaded("import synth.config", BACKENDS) == []


def test_loading_the_shipped_pipelines_imports_no_executor_backend_or_client():
    """Every stage they use is imported, with its parameters: a stage module's client is for typing only."""
    code = "import glob\nfrom synth.config import load_pipeline\nfor p in sorted(glob.glob('pipelines/*.yaml')):\n"
    assert loaded(code + "    load_pipeline(p)", BACKENDS) == []


def test_reading_a_finished_run_loads_no_runner(write, tmp_path):
    """inspect, export and every dropped row of a real run, read by a process that never loads the runner."""
    rows = json.dumps([{"instruction": f"q{i}", "response": "a" * i} for i in range(8)])
    stages = f"  - stage: load\n    rows: {rows}\n  - stage: sort\n    by: response\n    key: length\n    top: 5\n"
    path = write("p.yaml", f"name: t\nrun: {{batch_size: 3}}\nstages:\n{stages}")
    run_pipeline(load_pipeline(path), tmp_path / "run")
    code = f"""
from synth.export import export_run
from synth.inspect_run import show_run
from synth.runs import Run
root = {str(tmp_path / "run")!r}
show_run(root, dropped=True)
show_run(root)
export_run(root, {str(tmp_path / "export")!r})
assert len(list(Run(root).iter_dropped("sort"))) == 3
"""
    assert loaded(code, RUNNER) == []
