"""A third-party stage, backend and executor, registered through entry points by a distribution
synth knows nothing about, run by `synth run` as a user would: the recipes of docs/design.md
("Extending synth"), checked. The distribution is a real one on disk (a package and its
.dist-info with entry_points.txt) on the child process's path; nothing is patched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO

PLUGIN = '''
"""A plugin for synth: a stage, a backend and an executor."""

from typing import ClassVar, Literal

import pyarrow.compute as pc

from synth.llm.base import Generation
from synth.llm.specs import BackendSpecBase
from synth.stages.base import Batch, Stage, StageParams


class ShoutParams(StageParams):
    column: str


class Shout(Stage):
    """Upper-case a column; drop rows whose text has no letter (a columnar map stage)."""

    kind = "map"
    columnar = True
    Params = ShoutParams

    @classmethod
    def reads(cls, params):
        return [params.column]

    @classmethod
    def writes(cls, params):
        return [params.column]

    async def process(self, batch: Batch):
        table = batch.table
        column = table.column(self.params.column)
        lettered = pc.match_substring_regex(column, "[A-Za-z]").to_numpy(zero_copy_only=False)
        for position in (~lettered).nonzero()[0]:
            batch.drop(int(position), "no_letters", f"{column[int(position)].as_py()!r}")
        kept = table.filter(lettered)
        return kept.set_column(kept.column_names.index(self.params.column), self.params.column,
                               pc.utf8_upper(kept.column(self.params.column)))


class ReverseSpec(BackendSpecBase):
    backend: ClassVar[str] = "synthplug:ReverseBackend"
    type: Literal["reverse"] = "reverse"
    suffix: str = ""


class ReverseBackend:
    """Answers every prompt with the prompt reversed."""

    structured_output = False

    def __init__(self, spec: ReverseSpec):
        self.spec = spec
        self.model_id = "reverse" + spec.suffix

    async def complete(self, requests):
        for i, request in enumerate(requests):
            yield i, [Generation(request.prompt[::-1] + self.spec.suffix, "stop", 1, 1)]

    async def chat(self, requests):
        for i, request in enumerate(requests):
            yield i, [Generation(request.messages[-1][1][::-1] + self.spec.suffix, "stop", 1, 1)]

    async def score(self, requests):
        raise NotImplementedError
        yield

    async def close(self):
        pass


class InlineExecutor:
    """Every stage in this process, counting the batches it ran."""

    name = "inline"

    def __init__(self, address=None):
        self.batches = 0
        self.segments = None

    async def start(self, plan):
        self.segments = plan.segments
        plan.note(f"inline executor: {len(plan.segments)} segment(s)")

    def runs_here(self, index):
        return True

    async def process(self, index, stage, batch):
        self.batches += 1
        return await stage.process(batch)

    async def stop(self):
        pass

    def record(self, session):
        session["executor"] = {"type": "inline", "batches": self.batches, "segments": self.segments}
'''

ENTRY_POINTS = """\
[synth.stages]
shout = synthplug:Shout

[synth.backends]
reverse = synthplug:ReverseSpec

[synth.executors]
inline = synthplug:InlineExecutor
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding an installed distribution, `synthplug` 0.1, as pip would leave it."""
    root = tmp_path_factory.mktemp("site")
    (root / "synthplug.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "synthplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: synthplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "RECORD").write_text("")
    return root


def synth(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-c", "from synth.cli import main; main()", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


PIPELINE = """\
backends:
  mirror: {type: reverse, suffix: "!"}
stages:
  - stage: load
    rows: [{q: "abc"}, {q: "123"}, {q: "olleh"}]
  - stage: generate
    backend: mirror
    prompt_column: q
    output: a
  - stage: shout
    column: a
run: {executor: inline, batch_size: 2}
output: {format: raw}
"""


def test_a_plugin_stage_backend_and_executor_run(site, tmp_path):
    (tmp_path / "p.yaml").write_text(PIPELINE)
    done = synth(site, "run", "p.yaml", "-o", "run", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(next((tmp_path / "run" / "output").glob("*.parquet"))).to_pylist()
    assert [(r["q"], r["a"]) for r in rows] == [("abc", "CBA!"), ("olleh", "HELLO!")]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    executor = manifest["sessions"][-1]["executor"]
    # generate's two batches; shout is columnar, so it runs in the driver without the executor
    assert executor == {"type": "inline", "batches": 2, "segments": [[0, 1, 2]]}
    stages = {s["label"]: s for s in manifest["stages"]}
    assert stages["shout"]["filtered"] == {"no_letters": 1}
    assert manifest["models"]["generate"] == ["reverse"]  # BackendSpecBase.model_name: no `model` field
    # The plugin's drop by position is read back from the stage before, like a built-in filter's.
    shown = synth(site, "inspect", "run", "--dropped", cwd=tmp_path)
    text = shown.stdout + shown.stderr
    assert shown.returncode == 0 and "no_letters" in text and "321!" in text, text


def test_validate_names_the_registered_ones_on_a_typo(site, tmp_path):
    (tmp_path / "p.yaml").write_text(
        PIPELINE.replace("type: reverse", "type: revers").replace("executor: inline", "executor: inlin")
    )
    done = synth(site, "validate", "p.yaml", cwd=tmp_path)
    assert done.returncode != 0
    assert "unknown type 'revers'; did you mean 'reverse'? (types: local, openai, reverse, vllm)" in (
        done.stdout + done.stderr
    )
    assert "unknown executor 'inlin'; did you mean 'inline'? (one of: inline, local, ray)" in (
        done.stdout + done.stderr
    )
    assert "p.yaml:2" in (done.stdout + done.stderr) and "p.yaml:12" in (done.stdout + done.stderr)


def test_a_stage_without_its_kind_is_refused_by_name(site, tmp_path):
    broken = site.parent / "broken-site"
    if not broken.exists():
        broken.mkdir()
        (broken / "nokind.py").write_text(
            "from synth.stages.base import Stage\n\n\nclass NoKind(Stage):\n    async def process(self, batch):\n"
            "        return batch.rows\n"
        )
        info = broken / "nokind-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nokind\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[synth.stages]\nnokind = nokind:NoKind\n")
    (tmp_path / "p.yaml").write_text("stages:\n  - stage: load\n    rows: [{a: 1}]\n  - stage: nokind\n")
    done = synth(broken, "validate", "p.yaml", cwd=tmp_path)
    assert done.returncode != 0
    assert "declares no kind: set kind = 'source', 'map' or 'global' on the class" in (done.stdout + done.stderr)
