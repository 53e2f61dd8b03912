"""Every pipeline file in tests/hostile/ is an attack or an accident (its first line says which
and whether `synth validate` or only `synth run` must catch it). Each runs through both commands
in a subprocess with a memory and time limit, from an empty working directory, with a fake home
holding an SSH key and a Hub token in the environment. Expected every time: a short error (no
traceback), exit status 1 or 2, bounded memory and time, the key never printed, and nothing
touched outside the run directory."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HOSTILE = Path(__file__).parent / "hostile"
FILES = sorted(HOSTILE.glob("*.yaml"))
MEMORY = 3 * 2**30  # address space: far below what the bombs used to take (2.8-3.9 GB resident)
SECONDS = 120
TOKEN = "hf_" + "T" * 34
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def _expectation(path: Path) -> str:
    match = re.search(r"expect: (validate|run)", path.read_text(encoding="utf-8", errors="replace").splitlines()[0])
    assert match, f"{path.name}: the first line must say '# hostile: ... expect: validate|run'"
    return match.group(1)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every path under root with a digest of its content (links by their target)."""
    seen = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        if path.is_symlink():
            seen[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            seen[str(path)] = "dir"
        else:
            seen[str(path)] = "special"
    return seen


@pytest.fixture
def sandbox(tmp_path: Path) -> dict:
    files = tmp_path / "files"
    shutil.copytree(HOSTILE, files, symlinks=True)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(KEY)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("a secret outside the pipeline's folder\n")
    # What some files need and git cannot hold: a link out of the folder, a FIFO.
    (files / "escape.jinja").symlink_to(outside / "secret.txt")
    os.mkfifo(files / "fifo")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTH_ALLOW")}
    env |= {"HOME": str(home), "HF_TOKEN": TOKEN, "PYTHONDONTWRITEBYTECODE": "1"}
    return {"root": tmp_path, "files": files, "work": work, "env": env}


def _synth(sandbox: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synth.cli", *args],
        cwd=sandbox["work"],
        env=sandbox["env"],
        capture_output=True,
        text=True,
        timeout=SECONDS,
        preexec_fn=_limits,
        stdin=subprocess.DEVNULL,
    )


def _check_short_error(proc: subprocess.CompletedProcess, name: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), f"{name}: exit {proc.returncode}\n{output[-3000:]}"
    assert "Traceback" not in output, f"{name}:\n{output[-3000:]}"
    assert TOKEN not in output and "b3BlbnNzaC1rZXktdjEAAAAA" not in output, name
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert 1 <= len(errors) <= 5, f"{name}: {proc.stderr[-3000:]}"
    assert all(len(line) < 1500 for line in errors), name


def test_there_are_hostile_files():
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_a_hostile_pipeline_gets_a_short_error_and_touches_nothing(path: Path, sandbox: dict):
    expect = _expectation(path)
    target = sandbox["files"] / path.name
    run_dir = sandbox["work"] / "runs" / "hostile"
    before = _snapshot(sandbox["root"], run_dir.parent)

    validated = _synth(sandbox, "validate", str(target))
    if expect == "validate":
        _check_short_error(validated, f"validate {path.name}")
    else:
        assert validated.returncode == 0, f"{path.name} should pass validation:\n{validated.stderr[-3000:]}"
        ran = _synth(sandbox, "run", str(target), "-o", str(run_dir), "-q")
        _check_short_error(ran, f"run {path.name}")

    assert _snapshot(sandbox["root"], run_dir.parent) == before, f"{path.name} changed files outside its run directory"
