"""Export formats, splits, and the dataset card (which must never contain a secret)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synth import RunError, load_pipeline, run_pipeline
from synth.cli import main
from synth.export import export_run

datasets = pytest.importorskip("datasets")

ROWS = [
    {
        "instruction": f"question {i}",
        "response": f"answer {i} " + "x" * i,
        "chosen": f"good {i}",
        "rejected": f"bad {i}",
        "score_chosen": 1.0 + i,
        "score_rejected": -1.0,
        "task_category": "Math" if i % 3 else "Reasoning",
    }
    for i in range(20)
]


@pytest.fixture
def run_dir(write, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SecretTokenValue1234567890")
    write("t.jinja", "{{ instruction }}")
    path = write(
        "p.yaml",
        f"""
        name: exported
        description: "pushed with token hf_SecretTokenValue1234567890 via http://alice:pa55word@proxy.local:8080"
        seed: 11
        # the judge's proxy is http://bob:hunter22@10.0.0.1/v1 and its clone URL https://ghp_{"a" * 36}@github.com
        backends:
          judge: {{type: openai, model: m, base_url: "http://10.0.0.1/v1", api_key_env: MY_KEY}}  # pw: x9y8z7w6
        stages:
          - stage: load
            rows: {json.dumps(ROWS)}
          - stage: template
            template: t.jinja
            output: prompt
          - stage: limit
            n: 18
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    return tmp_path / "run"


def test_sft_export_loads_with_datasets_and_splits_by_seed(run_dir, tmp_path):
    counts = export_run(run_dir, tmp_path / "a", "sft", test_size=0.2, seed=1)
    assert counts == {"train": 14, "test": 4}
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "a"))
    assert ds["train"].column_names == ["messages"]
    first = ds["train"][0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[1]["content"].startswith(first[0]["content"].replace("question", "answer"))
    export_run(run_dir, tmp_path / "b", "sft", test_size=0.2, seed=1)
    export_run(run_dir, tmp_path / "c", "sft", test_size=0.2, seed=2)
    test_a = datasets.load_dataset("parquet", data_dir=str(tmp_path / "a"))["test"]["messages"]
    assert test_a == datasets.load_dataset("parquet", data_dir=str(tmp_path / "b"))["test"]["messages"]
    assert test_a != datasets.load_dataset("parquet", data_dir=str(tmp_path / "c"))["test"]["messages"]


def test_preference_and_kto_formats(run_dir, tmp_path):
    export_run(run_dir, tmp_path / "dpo", "preference", file_format="jsonl")
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 18
    assert rows[3] == {
        "prompt": [{"role": "user", "content": "question 3"}],
        "chosen": [{"role": "assistant", "content": "good 3"}],
        "rejected": [{"role": "assistant", "content": "bad 3"}],
        "score_chosen": 4.0,
        "score_rejected": -1.0,
    }
    export_run(run_dir, tmp_path / "kto", "kto")
    kto = datasets.load_dataset("parquet", data_dir=str(tmp_path / "kto"), split="train")
    assert len(kto) == 36 and sum(kto["label"]) == 18
    assert kto[0]["completion"] == [{"role": "assistant", "content": "good 0"}] and kto[1]["label"] is False


def test_card_describes_the_run_and_holds_no_secret(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-live-abcdefghijklmnopqrstuvwx")
    export_run(run_dir, tmp_path / "out", "sft", license="apache-2.0", test_size=0.1)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert "| load (load) | 20 | 20 | - |" in card and "| limit (limit) | 20 | 18 | beyond_first_18: 2 |" in card
    assert "| t.jinja |" in card  # template with its hash
    assert "| stage | model |" in card  # no LLM stage in this run: the table is empty
    assert "| Math | 12 |" in card and "| Reasoning | 6 |" in card
    assert "- train: 16 rows" in card and "- test: 2 rows" in card
    assert "`response` length in characters: min 9, median" in card
    for secret in (
        "hf_SecretTokenValue1234567890",
        "pa55word",
        "hunter22",
        "sk-live-abcdefghijklmnopqrstuvwx",
        "ghp_" + "a" * 36,
        "x9y8z7w6",
    ):
        assert secret not in card
    assert 'base_url: "http://10.0.0.1/v1"' in card  # the pipeline is shown, without its comments
    assert "seed 11" in card


def test_a_second_export_replaces_the_first(run_dir, tmp_path):
    out = tmp_path / "again"
    export_run(run_dir, out, "sft", test_size=0.5)
    (out / "notes.txt").write_text("mine")
    assert export_run(run_dir, out, "sft") == {"train": 18}
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt", "train-00000-of-00001.parquet"]
    export_run(run_dir, out, "sft", file_format="jsonl")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt", "train.jsonl"]
    ds = datasets.load_dataset("json", data_dir=str(out))
    assert list(ds) == ["train"] and ds["train"].num_rows == 18


def test_unfinished_runs_are_not_exported(write, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(RunError, match="is not finished"):
        export_run(tmp_path / "run", tmp_path / "out")


def test_missing_columns_name_the_format(run_dir, tmp_path, write):
    path = write(
        "q.yaml",
        """
        stages:
          - stage: load
            rows: [{text: a}]
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "q")
    with pytest.raises(RunError, match="the 'preference' format needs column"):
        export_run(tmp_path / "q", tmp_path / "out", "preference")


def test_cli_export(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", str(run_dir), "-o", str(tmp_path / "o"), "--test-size", "0.5"])
    assert result.exit_code == 0, result.output
    assert "wrote train: 9 rows, test: 9 rows" in result.output


def test_events_such_as_truncated_answers_show_everywhere(write, tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    write("q.jinja", "Questions people ask about {{ topic }}:\nQuestion:")
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: boats}, {topic: bread}]
          - stage: generate
            template: q.jinja
            output: question
            max_tokens: 3
        """,
    )
    run = tmp_path / "run"
    env = {**os.environ, "COLUMNS": "80"}  # a plain 80-column terminal

    def synth(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert "generate: events truncated: 2" in synth("run", str(path), "-o", str(run))  # the summary
    assert "generate: events truncated: 2" in synth("inspect", str(run))
    export_run(run, tmp_path / "out", "raw")
    assert "| generate (generate) | 2 | 2 | - | truncated: 2 |" in (tmp_path / "out" / "README.md").read_text()


def test_sft_export_keeps_the_columns_asked_for(run_dir, tmp_path):
    export_run(run_dir, tmp_path / "k", "sft", keep_columns=["task_category", "score_chosen"])
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "k"), split="train")
    assert ds.column_names == ["task_category", "score_chosen", "messages"]
    assert ds[0]["task_category"] == "Reasoning" and ds[0]["messages"][0]["content"] == "question 0"
    export_run(run_dir, tmp_path / "a", "preference", keep_columns=["all"])
    every = datasets.load_dataset("parquet", data_dir=str(tmp_path / "a"), split="train")
    assert {"prompt", "chosen", "rejected", "task_category", "instruction"} <= set(every.column_names)
    assert "provenance" not in every.column_names
    result = CliRunner().invoke(main, ["export", str(run_dir), "-o", str(tmp_path / "c"), "--keep-columns", "nope"])
    assert result.exit_code == 1 and "the run has no column(s) nope" in result.output


def test_sft_export_starts_with_the_rows_system_text(write, tmp_path):
    """A conditioning written as `system` (a preference direction, a target score) is part of the
    training data: the SFT export puts it first, as the preference export does."""
    rows = [{"instruction": "q1", "response": "a1", "system": "Be brief."}, {"instruction": "q2", "response": "a2"}]
    path = write("p.yaml", f"stages:\n  - stage: load\n    rows: {json.dumps(rows)}\n")
    run_pipeline(load_pipeline(path), tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "out", "sft")
    got = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"))["train"]["messages"]
    assert [[m["role"] for m in c] for c in got] == [["system", "user", "assistant"], ["user", "assistant"]]
    assert got[0][0]["content"] == "Be brief."


def test_split_keeps_every_row_of_a_prompt_together():
    """Two relabeled rows of one pair (or all_pairs rows of one prompt) never straddle the split."""
    from synth.splits import split

    rows = [{"instruction": f"q{i // 3}", "chosen": f"c{i}", "system": f"target {i % 2}"} for i in range(30)]
    for seed in range(5):
        parts = split(rows, 0.2, seed)
        train = {r["instruction"] for r in parts["train"]}
        test = {r["instruction"] for r in parts["test"]}
        assert not train & test and len(parts["train"]) + len(parts["test"]) == 30
        assert len(parts["test"]) == 6  # two whole prompts of three rows: 20%
    assert split(rows, 0.2, 1)["test"] != split(rows, 0.2, 2)["test"]


@pytest.mark.parametrize("fmt", ["sft", "preference", "kto", "raw"])
def test_an_export_read_in_small_chunks_is_the_same_export(run_dir, tmp_path, fmt):
    """The export reads the run a chunk of rows at a time: chunks of 3 rows give the files one
    chunk of every row gives (the split, KTO's pairing across chunks, the card's statistics)."""
    import pyarrow.parquet as pq

    whole = export_run(run_dir, tmp_path / "whole", fmt, test_size=0.3, seed=7)
    small = export_run(run_dir, tmp_path / "small", fmt, test_size=0.3, seed=7, chunk_rows=3)
    assert whole == small and whole["test"] >= 5
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "small").iterdir())
    for name in names:
        if name.endswith(".parquet"):
            assert pq.read_table(tmp_path / "small" / name).equals(pq.read_table(tmp_path / "whole" / name))
        else:
            assert (tmp_path / "small" / name).read_text() == (tmp_path / "whole" / name).read_text()
