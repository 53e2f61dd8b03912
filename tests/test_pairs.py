"""The pairs stage: real runs through the runner on inline rows (responses and scores given), a
resumed run, `synth validate`, and one run end to end on the embedded model: several sampled
responses, scored by a real (tiny, locally built) reward model, paired, then exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth import ConfigError, load_pipeline, read_output, run_pipeline
from synth.cli import main
from synth.runs import Run
from synth.store import RunStore

MAGPIE_ROW = {  # Magpie's DPO shape: five responses, one score each
    "instruction": "Name a prime number.",
    "response": ["Nine.", "Seven is prime.", "2", "Seven is prime, since only 1 and 7 divide it.", "Four."],
    "instruct_reward": [-3.0, 1.5, 0.5, 2.25, -4.0],
    "task_category": "Math",
}


def pipeline_text(rows: list[dict], *, seed: int = 7, batch_size: int = 4, **pairs) -> str:
    options = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in pairs.items())
    return f"""
seed: {seed}
run: {{batch_size: {batch_size}}}
stages:
  - stage: load
    rows: {json.dumps(rows)}
  - stage: pairs{options}
"""


def run_pairs(tmp_path: Path, name: str, rows: list[dict], **kwargs) -> tuple[list[dict], dict, list[dict]]:
    """Output rows, the pairs stage's manifest entry and its dropped rows."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(pipeline_text(rows, **kwargs), encoding="utf-8")
    run_pipeline(load_pipeline(path), tmp_path / name)
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    dropped = list(Run(tmp_path / name).iter_dropped("pairs"))
    return read_output(tmp_path / name).to_pylist(), manifest["stages"][1], dropped


def test_best_worst_pairs_the_highest_with_the_lowest_and_keeps_the_row(tmp_path):
    tied_best = {"instruction": "Say hi.", "response": ["Hi!", "Hello!", "hi"], "instruct_reward": [2, 2, -1]}
    rows, stats, dropped = run_pairs(tmp_path, "bw", [MAGPIE_ROW, tied_best])
    assert not dropped and stats["rows_in"] == stats["rows_out"] == 2
    first = rows[0]
    assert first["chosen"] == "Seven is prime, since only 1 and 7 divide it." and first["rejected"] == "Four."
    assert (first["chosen_index"], first["rejected_index"]) == (3, 4)
    assert (first["score_chosen"], first["score_rejected"], first["margin"]) == (2.25, -4.0, 6.25)
    # The row's other columns stay, the lists included (they are the pair's evidence).
    assert first["task_category"] == "Math" and first["instruction"] == MAGPIE_ROW["instruction"]
    assert first["response"] == MAGPIE_ROW["response"] and first["instruct_reward"] == MAGPIE_ROW["instruct_reward"]
    record = first["provenance"]["pairs"]
    assert record["strategy"] == "best_worst" and record["seed"] is None
    assert (record["responses"], record["scores"], record["min_margin"]) == ("response", "instruct_reward", 0.0)
    assert record["min_chosen_score"] is None and record["par_filters"] is False
    # Integer scores come out as floats; two responses tied for best: the first one is chosen.
    assert (rows[1]["chosen"], rows[1]["rejected"], rows[1]["score_chosen"], rows[1]["margin"]) == (
        "Hi!",
        "hi",
        2.0,
        3.0,
    )


def test_every_reason_to_make_no_pair_is_a_dropped_row(tmp_path):
    cases = {
        "too_few_responses": [
            {"response": "just one", "instruct_reward": 1.0},  # respond with n == 1 writes a string
            {"response": ["only"], "instruct_reward": [1.0]},
            {"response": None, "instruct_reward": None},
        ],
        "missing_scores": [
            {"response": ["a", "b"], "instruct_reward": None},
            {"response": ["a", "b", "c"], "instruct_reward": [None, 0.9, None]},
            {"response": ["a", "b"], "instruct_reward": ["good", "bad"]},
        ],
        "score_count_mismatch": [{"response": ["a", "b", "c"], "instruct_reward": [0.9, 0.1]}],
        "identical_responses": [{"response": ["same", "same", "same"], "instruct_reward": [0.9, 0.2, 0.9]}],
        "tie": [{"response": ["a", "b", "c"], "instruct_reward": [0.7, 0.7, 0.7]}],
        "below_min_chosen": [{"response": ["a", "b"], "instruct_reward": [0.45, 0.1]}],
        "below_margin": [
            {"response": ["a", "b", "c"], "instruct_reward": [0.6, 0.55, 0.52]},
            {"response": ["a", "b"], "instruct_reward": [0.95, 0.9]},
        ],
    }
    kept = [
        {"response": ["a", "b"], "instruct_reward": [0.6, 0.5]},  # margin 0.0999...98 counts as 0.1
        {"response": ["a", "b", "c", "d"], "instruct_reward": [0.1, None, 0.9, None]},  # two unscored
        {"response": ["same", "other", "same"], "instruct_reward": [0.9, 0.5, 0.2]},  # skips its identical twin
    ]
    rows = [{"instruction": f"{reason} {n}", **r} for reason, group in cases.items() for n, r in enumerate(group)]
    rows += [{"instruction": f"kept {n}", **r} for n, r in enumerate(kept)]
    # One row per batch: a string and a list in one column cannot share a Parquet shard.
    out, stats, dropped = run_pairs(tmp_path, "reasons", rows, batch_size=1, min_margin=0.1, min_chosen_score=0.5)
    assert stats["filtered"] == {reason: len(group) for reason, group in cases.items()}
    assert stats["counters"] == {"unscored_responses": 2} and not stats["failed"]
    assert [json.loads(d["row"])["instruction"].rsplit(" ", 1)[0] for d in dropped] == [d["reason"] for d in dropped]
    details = {d["reason"]: d["detail"] for d in dropped}
    assert "respond" in details["too_few_responses"] and "n > 1" in details["too_few_responses"]
    assert "3 responses" in details["score_count_mismatch"] and "2 scores" in details["score_count_mismatch"]
    assert "min_margin 0.1" in details["below_margin"] and "min_chosen_score 0.5" in details["below_min_chosen"]
    assert [(r["chosen"], r["rejected"]) for r in out] == [("a", "b"), ("c", "a"), ("same", "other")]
    assert out[0]["margin"] == pytest.approx(0.1)


def test_scores_that_are_not_numbers_are_left_out(tmp_path):
    """A reward model can give NaN and a judge None: those responses take no part in the pairing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "instruction": ["q1", "q2"],
            "response": [["a", "b", "c"], ["x", "y"]],
            "instruct_reward": [[float("nan"), 0.2, -0.5], [float("nan"), float("inf")]],
        }
    )
    pq.write_table(table, tmp_path / "scored.parquet")
    path = tmp_path / "p.yaml"
    path.write_text(
        "stages:\n  - {stage: load, path: scored.parquet}\n  - {stage: pairs, strategy: all_pairs}\n", encoding="utf-8"
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    assert [(r["chosen"], r["rejected"], r["margin"]) for r in rows] == [("b", "c", 0.7)]
    stats = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"][1]
    assert stats["filtered"] == {"missing_scores": 1} and stats["counters"] == {"unscored_responses": 1}


def test_best_random_lower_never_rejects_a_tie_with_the_best_and_follows_the_seed(tmp_path):
    rows = [
        {"instruction": f"q{i}", "response": [f"r{i}-{j}" for j in range(5)], "instruct_reward": [5, 5, 1, 2, 3]}
        for i in range(40)
    ]
    out, _, _ = run_pairs(tmp_path, "random", rows, strategy="best_random_lower")
    assert all(r["chosen_index"] == 0 and r["score_chosen"] == 5.0 for r in out)
    picks = Counter(r["rejected_index"] for r in out)
    assert set(picks) == {2, 3, 4}  # random among the lower-scored ones; index 1 ties with the best
    seeds = {r["provenance"]["pairs"]["seed"] for r in out}
    assert len(seeds) == 40 and None not in seeds
    again, _, _ = run_pairs(tmp_path, "random-again", rows, strategy="best_random_lower", batch_size=7)
    assert [r["rejected_index"] for r in again] == [r["rejected_index"] for r in out]  # batches do not matter
    other, _, _ = run_pairs(tmp_path, "random-seed", rows, strategy="best_random_lower", seed=8)
    assert [r["rejected_index"] for r in other] != [r["rejected_index"] for r in out]
    # With a margin, the random pick is among the responses far enough below the best.
    far, _, _ = run_pairs(tmp_path, "random-margin", rows, strategy="best_random_lower", min_margin=2.5)
    assert {r["rejected_index"] for r in far} == {2, 3}


def test_best_random_is_the_authors_pick_any_index_but_the_best(tmp_path):
    """CDR's process_preference_data.py and the UltraFeedback binarization: chosen = argmax (the first
    of a tie), rejected = random.choice of every other index, a tie with the best included; a row
    whose scores are all equal, or whose pick repeats the chosen text, gives no pair."""
    import random as stdlib_random

    from synth.seeds import derive_seed

    rows = [
        {"instruction": f"q{i}", "response": [f"r{i}-{j}" for j in range(5)], "instruct_reward": [5, 5, 1, 2, 3]}
        for i in range(40)
    ]
    rows += [
        {"instruction": "flat", "response": ["a", "b", "c"], "instruct_reward": [1, 1, 1]},
        {"instruction": "twin", "response": ["same", "same"], "instruct_reward": [2, 1]},
    ]
    out, stats, dropped = run_pairs(tmp_path, "authors", rows, strategy="best_random")
    assert stats["filtered"] == {"tie": 1, "identical_responses": 1}
    assert {json.loads(d["row"])["instruction"]: d["reason"] for d in dropped} == {
        "flat": "tie",
        "twin": "identical_responses",
    }
    for row in out:
        # the authors' formula, recomputed: the seed keys the row as the stage does
        seed = derive_seed(7, "pairs", row["instruction"], row["response"])
        assert row["provenance"]["pairs"]["seed"] == seed
        assert row["rejected_index"] == stdlib_random.Random(seed).choice([1, 2, 3, 4])
        assert row["chosen_index"] == 0 and row["margin"] == 5.0 - row["instruct_reward"][row["rejected_index"]]
    picks = Counter(r["rejected_index"] for r in out)
    assert set(picks) == {1, 2, 3, 4} and picks[1] >= 3  # index 1 ties the best and is still picked
    assert all(r["margin"] == 0 for r in out if r["rejected_index"] == 1)
    # An explicit margin drops the tied picks (the filters apply after the pick).
    far, stats, _ = run_pairs(tmp_path, "authors-margin", rows[:40], strategy="best_random", min_margin=1)
    assert stats["filtered"] == {"below_margin": picks[1]} and {r["rejected_index"] for r in far} == {2, 3, 4}


def test_par_scores_get_pars_filters_by_default(tmp_path):
    """On a `reward` stage's PAR output, min_margin 0.1 and min_chosen_score 0.5 apply unless overridden."""
    shaping = {"shaping": "par", "output": "par_score"}
    rows = [
        {"instruction": "kept", "response": ["a", "b"], "par_score": [0.6, 0.5], "reward_shaping": shaping},
        {"instruction": "close", "response": ["a", "b"], "par_score": [0.95, 0.9], "reward_shaping": shaping},
        {"instruction": "worse", "response": ["a", "b"], "par_score": [0.45, 0.1], "reward_shaping": shaping},
    ]
    out, stats, _ = run_pairs(tmp_path, "par", rows, scores="par_score")
    assert [r["instruction"] for r in out] == ["kept"]
    assert stats["filtered"] == {"below_margin": 1, "below_min_chosen": 1}
    record = out[0]["provenance"]["pairs"]
    assert (record["min_margin"], record["min_chosen_score"], record["par_filters"]) == (0.1, 0.5, True)
    off, stats, _ = run_pairs(tmp_path, "par-off", rows, scores="par_score", par_filters=False)
    assert len(off) == 3 and off[0]["provenance"]["pairs"]["min_margin"] == 0.0
    mine, stats, _ = run_pairs(tmp_path, "par-mine", rows, scores="par_score", min_chosen_score=0.4)
    assert [r["instruction"] for r in mine] == ["kept", "worse"]  # 0.45 >= 0.4; margin 0.35 >= 0.1
    # Other scores (a raw reward, or another column) keep the plain defaults.
    raw = [{**r, "reward_shaping": {"shaping": "centered", "output": "par_score"}} for r in rows]
    plain, _, _ = run_pairs(tmp_path, "not-par", raw, scores="par_score")
    assert len(plain) == 3 and plain[0]["provenance"]["pairs"]["par_filters"] is False


def test_all_pairs_writes_one_row_per_pair(tmp_path):
    rows = [
        {"instruction": "q", "response": ["a", "b", "c", "d", "a"], "instruct_reward": [3, 1, 2, 1, 0]},
        {"instruction": "tied", "response": ["x", "y"], "instruct_reward": [1, 1]},
    ]
    out, stats, dropped = run_pairs(tmp_path, "all", rows, strategy="all_pairs")
    # (a, a) is identical text and (b, d) a tie: neither is a pair.
    assert [(r["chosen_index"], r["rejected_index"]) for r in out] == [
        (0, 1), (0, 2), (0, 3), (1, 4), (2, 1), (2, 3), (2, 4), (3, 4)
    ]  # fmt: skip
    assert all(r["margin"] == r["score_chosen"] - r["score_rejected"] > 0 for r in out)
    assert (stats["rows_in"], stats["rows_out"], stats["filtered"]) == (2, 8, {"tie": 1})
    assert [d["reason"] for d in dropped] == ["tie"]
    wide, _, _ = run_pairs(tmp_path, "all-margin", rows, strategy="all_pairs", min_margin=2)
    assert [(r["chosen"], r["rejected"]) for r in wide] == [("a", "b"), ("a", "d"), ("c", "a")]


def test_best_random_is_the_same_after_a_resume(tmp_path):
    rows = [
        {"instruction": f"q{i}", "response": [f"r{i}-{j}" for j in range(6)], "instruct_reward": [9, 1, 2, 3, 4, 5]}
        for i in range(24)
    ]
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(rows, strategy="best_random"), encoding="utf-8")
    reference = tmp_path / "reference"
    run_pipeline(load_pipeline(path), reference)
    # A run stopped after its first batches: the later pairs shards (and the output) never written.
    run = tmp_path / "resumed"
    run_pipeline(load_pipeline(path), run)
    pairs_dir = RunStore(run).stage(1, "pairs")
    for index in range(2, 6):
        pairs_dir.forget(index)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    # Resumed by the CLI in another process, with another hash seed.
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    done = subprocess.run(
        [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q"], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(pairs_dir.done_indices()) == list(range(6))
    assert read_output(run).to_pylist() == read_output(reference).to_pylist()
    assert len({r["rejected_index"] for r in read_output(run).to_pylist()}) > 2


def test_validate_names_missing_columns_and_bad_options(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        """
stages:
  - stage: load
    rows: [{"instruction": "q", "response": "a"}]
  - stage: pairs
    scores: judge_scores
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert "p.yaml:6: stages[1].scores: no earlier stage writes 'judge_scores'" in message
    assert "score the responses first (e.g. `reward` with response: response)" in message
    path.write_text(
        """
stages:
  - stage: load
    rows: [{"instruction": "q", "candidates": ["a", "b"], "s": [1, 2]}]
  - stage: pairs
    responses: candidates
    scores: s
    strategy: best_of
    min_margin: -1
""",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "stages[1].strategy" in result.output and "best_random" in result.output
    assert "stages[1].min_margin" in result.output
    path.write_text(path.read_text().replace("    strategy: best_of\n    min_margin: -1\n", ""), encoding="utf-8")
    assert CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0


def test_verdict_pairs_the_winner_of_a_pairwise_judgment(tmp_path):
    def judged(a, b, reward, verdict):
        return {"instruction": "q", "response_a": a, "response_b": b, "judge_reward": reward, "judge_verdict": verdict}

    rows_in = [
        judged("A wins clearly.", "b", 1.0, "A>>B"),
        judged("a", "B wins a little.", -0.5, "B>A"),
        judged("same", "same", 1.0, "A>>B"),
        judged("x", "y", 0, "A=B"),
        judged("x", "y", None, None),
    ]
    options = {"strategy": "verdict", "responses": ["response_a", "response_b"]}
    rows, stats, dropped = run_pairs(tmp_path, "verdict", rows_in, **options)
    assert [(r["chosen"], r["rejected"], r["chosen_index"]) for r in rows] == [
        ("A wins clearly.", "b", 0),
        ("B wins a little.", "a", 1),
    ]
    # The verdict seen from each side: margin 2 for "much better", 1 for "slightly better".
    assert [(r["score_chosen"], r["score_rejected"], r["margin"]) for r in rows] == [(1.0, -1.0, 2.0), (0.5, -0.5, 1.0)]
    assert stats["filtered"] == {"identical_responses": 1, "tie": 1, "missing_scores": 1}
    assert {d["reason"] for d in dropped} == {"identical_responses", "tie", "missing_scores"}
    assert rows[0]["provenance"]["pairs"]["scores"] == "judge_reward"
    # Only the clear wins; and a list column stands in for the two columns.
    as_list = [{"instruction": "q", "response": [r["response_a"], r["response_b"]], **r} for r in rows_in[:2]]
    rows, stats, _ = run_pairs(tmp_path, "strong", as_list, strategy="verdict", min_margin=2)
    assert [r["chosen"] for r in rows] == ["A wins clearly."] and stats["filtered"] == {"below_margin": 1}


def test_carry_copies_per_response_values_for_the_pair(tmp_path):
    row = {**MAGPIE_ROW, "avg_fine_score": [1.0, 3.5, 2.0, 4.25, 1.5], "judge_model": "m"}
    rows, _, _ = run_pairs(tmp_path, "carry", [row], carry=["avg_fine_score"])
    assert (rows[0]["avg_fine_score_chosen"], rows[0]["avg_fine_score_rejected"]) == (4.25, 1.5)


def test_validate_checks_verdict_and_carry_columns(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text(
        """
stages:
  - stage: load
    rows: [{"instruction": "q", "response_a": "a", "response_b": "b"}]
  - stage: pairs
    strategy: verdict
    responses: [response_a, response_b]
    carry: [fine]
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert "stages[1].verdict: no earlier stage writes 'judge_reward'" in message
    assert "stages[1].carry[0]: no earlier stage writes 'fine'" in message
    path.write_text(path.read_text().replace("strategy: verdict", "strategy: best_worst"), encoding="utf-8")
    with pytest.raises(ConfigError, match="only with strategy verdict"):
        load_pipeline(path)


# ---- end to end on the embedded model ----


INSTRUCTIONS = [
    "How do I keep basil alive indoors?",
    "What causes the seasons on Earth?",
    "Give me a tip for learning to juggle.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, reward_model) -> Path:
    pytest.importorskip("llama_cpp")
    root = tmp_path_factory.mktemp("e2e")
    path = root / "dpo.yaml"
    path.write_text(
        f"""
name: tiny-dpo
seed: 5
run: {{max_failure_rate: 0.5}}  # an empty sample fails its row; the rest still pair
stages:
  - stage: load
    rows: {json.dumps([{"instruction": t} for t in INSTRUCTIONS])}
  - stage: respond
    template: magpie/respond_few_shot.jinja
    n: 3
    temperature: 0.8
    max_tokens: 40
    stop: ["\\nRequest:", "\\nAnswer:", "\\n\\n"]
  - stage: reward
    model: {reward_model}
  - stage: pairs
""",
        encoding="utf-8",
    )
    run_pipeline(load_pipeline(path), root / "run")
    return root / "run"


def test_embedded_model_responses_become_pairs_and_export(e2e_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = read_output(e2e_run).to_pylist()
    manifest = json.loads((e2e_run / "manifest.json").read_text())
    pairs = manifest["stages"][-1]
    assert pairs["rows_in"] == len(rows) + sum(pairs["filtered"].values())
    assert len(rows) >= 2, pairs  # three samples at 0.8 rarely all tie under a real reward model
    for row in rows:
        assert len(row["response"]) == len(row["instruct_reward"]) == 3
        scores = row["instruct_reward"]
        assert row["chosen"] == row["response"][scores.index(max(scores))] != row["rejected"]
        assert row["rejected"] == row["response"][scores.index(min(scores))]
        assert row["margin"] == pytest.approx(max(scores) - min(scores)) and row["margin"] > 0
        assert row["provenance"]["pairs"]["strategy"] == "best_worst"
        assert row["gen_response_configs"]["temperature"] == 0.8
    for fmt, extra in (("preference", []), ("kto", []), ("kto-split", ["--test-size", "0.5"])):
        command = ["export", str(e2e_run), "-o", str(tmp_path / fmt), "--format", fmt.split("-")[0], *extra]
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, result.output
    dpo = datasets.load_dataset("parquet", data_dir=str(tmp_path / "preference"), split="train")
    assert dpo.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin"]
    assert dpo[0]["prompt"] == [{"role": "user", "content": rows[0]["instruction"]}]
    assert dpo[0]["chosen"] == [{"role": "assistant", "content": rows[0]["chosen"]}]
    assert dpo["margin"] == pytest.approx([r["margin"] for r in rows])
    kto = datasets.load_dataset("parquet", data_dir=str(tmp_path / "kto"), split="train")
    assert kto.column_names == ["prompt", "completion", "label"] and len(kto) == 2 * len(rows)
    assert kto["label"] == [True, False] * len(rows)
    # Each pair gives a desirable and an undesirable row; undesirable rows are those of the pair two
    # further on, so that no row sits next to its own pair's other answer (TRL's KL estimate).
    shifted = [rows[(i + 2) % len(rows)] for i in range(len(rows))]
    assert [c[0]["content"] for c in kto["completion"]][0::2] == [r["chosen"] for r in rows]
    assert [c[0]["content"] for c in kto["completion"]][1::2] == [r["rejected"] for r in shifted]
    assert [p[0]["content"] for p in kto["prompt"]][1::2] == [r["instruction"] for r in shifted]
    # With a test split, a pair's two rows land in the same split.
    split = datasets.load_dataset("parquet", data_dir=str(tmp_path / "kto-split"))
    n_test = max(1, round(len(rows) * 0.5))
    assert (len(split["train"]), len(split["test"])) == (2 * (len(rows) - n_test), 2 * n_test)
    prompts = {name: Counter((p[0]["content"], label) for p, label in zip(part["prompt"], part["label"], strict=True))
               for name, part in split.items()}  # fmt: skip
    assert not {p for p, _ in prompts["train"]} & {p for p, _ in prompts["test"]}
    for counts in prompts.values():
        assert all(counts[(p, True)] == counts[(p, False)] == 1 for p, _ in counts)


def test_validate_refuses_pairs_of_one_response_per_row(tmp_path):
    """respond with n: 1 writes one text per row: pairs (and best) need several, known before any request."""
    path = tmp_path / "one.yaml"
    path.write_text(
        """
stages:
  - stage: load
    rows: [{"instruction": "q"}]
  - stage: respond
  - stage: reward
    method: cdr
    strong: default
    weak: default
  - stage: pairs
    scores: cdr_reward
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "one.yaml:10: stages[3].responses: 'response' holds one response per row (written with n: 1)" in str(
        info.value
    )
    path.write_text(
        path.read_text().replace("  - stage: respond\n", "  - stage: respond\n    n: 3\n    temperature: 0.8\n")
    )
    load_pipeline(path)
