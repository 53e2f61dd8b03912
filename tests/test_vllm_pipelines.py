"""The shipped preference pipelines on a real vLLM CPU server (the session's, see conftest): each
file is rewritten the way its header tells a user to (every backend becomes an OpenAI-compatible
one on the server, keeping its chat template), run with --limit, killed with SIGKILL in the
middle of its scoring stage and resumed, then exported as preference data that TRL prepares.

What a resume must give back does not depend on vLLM batching the same way twice: the shards a
stage finished before the kill are kept byte for byte, every source row ends as a pair or a
reasoned drop (none twice), and the resumed session sends no request the cache already holds.
Whether the rows also equal an uninterrupted run's is checked on the embedded model, which is
deterministic (tests/test_preference_pipelines.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from synth import load_pipeline, read_output

from .pipeline_runs import kill_and_resume, stage_markers, synth_cli
from .test_preference_pipelines import LIMIT, SHIPPED, SHRINK, accounted, check_export

pytestmark = pytest.mark.slow

KILL_IN = {
    "magpie-dpo.yaml": "reward",
    "ultrafeedback-dpo.yaml": "judge",
    "cdr-dpo.yaml": "reward",
    "par-dpo.yaml": "reward",
    "judge-pairwise.yaml": "judge",
}
VLLM_LIMIT = {name: max(3, LIMIT[name]) for name in KILL_IN}
VLLM_LIMIT["par-dpo.yaml"] = 6  # PAR's filters drop rows whose best answer does not beat the reference


def on_vllm(name: str, server, folder: Path) -> Path:
    """The shipped file with smaller numbers, one shard per row, and every backend on the server."""
    text = (SHIPPED / name).read_text(encoding="utf-8")
    for old, new in SHRINK[name]:
        text = text.replace(old, new)
    config = yaml.safe_load(text)
    served = {"type": "openai", "model": server.model, "base_url": server.url, "max_retries": 2}
    backends = config.get("backends") or {}
    # The served folder holds the chat template Magpie's pre-query prompt is cut from.
    config["backends"] = {"default": served | {"chat_template": server.model}} | {
        label: served | ({"chat_template": spec["chat_template"]} if spec.get("chat_template") else {})
        for label, spec in backends.items()
    }
    for stage in config["stages"]:
        if stage.get("path") == "../data/preference/prompts.jsonl":
            stage["path"] = str(SHIPPED.parent / "data" / "preference" / "prompts.jsonl")
    config["run"] = {**config.get("run", {}), "batch_size": 1}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def shard_bytes(run: Path, stage: str) -> dict[str, bytes]:
    return {m.stem: (m.parent.parent / f"{m.stem}.parquet").read_bytes() for m in stage_markers(run, stage)}


def cached_requests(run: Path) -> int:
    with sqlite3.connect(run / "cache.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


@pytest.mark.parametrize("name", list(KILL_IN))
def test_pipeline_on_vllm_killed_resumed_and_exported(name, vllm_server, tmp_path, monkeypatch):
    # The chat template is read from the served model's folder: allowed as a user would (--allow-read).
    monkeypatch.setenv("SYNTH_ALLOW_READ", vllm_server.model)
    path = on_vllm(name, vllm_server, tmp_path / "files")
    pipeline = load_pipeline(path)
    assert {spec.type for spec in pipeline.backends.values()} == {"openai"}
    limit, stage = VLLM_LIMIT[name], KILL_IN[name]
    run = tmp_path / "run"
    info = kill_and_resume(path, run, limit, stage)
    assert 1 <= info["shards_before"] <= limit
    rows = read_output(run).to_pylist()
    accounted(rows, info["manifest"], limit)
    assert rows, f"{name}: vLLM's answers should give at least one pair: {info['manifest']['stages']}"
    for row in rows:
        assert row["chosen"] != row["rejected"] and row["score_chosen"] >= row["score_rejected"]
        if row["provenance"]["pairs"]["strategy"] != "best_random":  # the authors' random pick may tie the best
            assert row["score_chosen"] > row["score_rejected"]
        assert f"openai:{vllm_server.model}" in json.dumps(row["provenance"]) + json.dumps(
            {k: v for k, v in row.items() if k.endswith(("_model", "_generator", "configs"))}
        )
    sessions = info["manifest"]["sessions"]
    assert len(sessions) == 2
    # Resuming again sends nothing and changes nothing: every answer is in the run's cache.
    before, count = shard_bytes(run, stage), cached_requests(run)
    again = synth_cli("run", str(path), "-o", str(run), "-q", "--limit", str(limit))
    assert again.returncode == 0, again.stderr
    assert shard_bytes(run, stage) == before and cached_requests(run) == count
    assert read_output(run).to_pylist() == rows
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    done = synth_cli("export", str(run), "-o", str(out), "--format", "preference")
    assert done.returncode == 0, done.stderr
    loaded = datasets.load_dataset("parquet", data_dir=str(out))["train"]
    check_export(loaded, rows)
    assert pq.read_schema(next(out.rglob("*.parquet"))).names[:3] == ["prompt", "chosen", "rejected"]
    # TRL's own step before it tokenizes a pair, with the served model's tokenizer and chat template.
    data_utils = pytest.importorskip("trl.data_utils")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vllm_server.model, local_files_only=True)
    for row, pair in zip(loaded, map(lambda r: data_utils.apply_chat_template(r, tokenizer), loaded), strict=True):
        assert row["chosen"][0]["content"] in pair["chosen"] and row["prompt"][-1]["content"] in pair["prompt"]
