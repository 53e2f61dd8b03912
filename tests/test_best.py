"""The best stage: the highest-scored response of a list, ties to the lower index, rows without a
numeric score dropped with the reason, the lists moved when asked; real runs through the runner
on inline rows, and `synth validate` on mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth import ConfigError, load_pipeline, read_output, run_pipeline
from synth.cli import main
from synth.runs import Run
from synth.stages.preference.best import BestParams, NoBest, best_index


def run_best(tmp_path: Path, name: str, rows: list[dict], **best) -> tuple[list[dict], dict, list[dict]]:
    """Output rows, the best stage's manifest entry and its dropped rows."""
    options = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in best.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"run: {{batch_size: 3}}\nstages:\n  - stage: load\n    rows: {json.dumps(rows)}\n  - stage: best{options}\n",
        encoding="utf-8",
    )
    run_pipeline(load_pipeline(path), tmp_path / name)
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    dropped = list(Run(tmp_path / name).iter_dropped("best"))
    return read_output(tmp_path / name).to_pylist(), manifest["stages"][1], dropped


def test_best_index_picks_the_highest_and_breaks_ties_to_the_first():
    p = BestParams()
    assert best_index(["a", "b", "c"], [0.5, 2.0, -1.0], p) == (1, 0)
    assert best_index(["a", "b", "c"], [3, 1, 3], p) == (0, 0)
    assert best_index(["a", "b", "c"], [None, "n/a", 1], p) == (2, 2)  # two left out, counted
    assert best_index(["a", "b"], [float("nan"), -7], p) == (1, 1)
    assert best_index(["a", None], [1, 5], p) == (0, 0)  # a missing response never wins
    assert best_index("only", 0.25, p) == (0, 0)  # one response and one score
    for responses, scores, reason in [
        ([], [], "no_responses"),
        (None, [1], "no_responses"),
        (["a", "b"], None, "missing_scores"),
        (["a", "b"], [1], "score_count_mismatch"),
        (["a", "b"], [None, True], "missing_scores"),  # a bool is not a score
    ]:
        with pytest.raises(NoBest) as info:
            best_index(responses, scores, p)
        assert info.value.reason == reason


def test_best_replaces_the_list_and_drops_rows_without_a_score(tmp_path):
    rows = [
        {"instruction": "q1", "response": ["weak", "strong", "medium"], "instruct_reward": [0.1, 0.9, 0.5]},
        {"instruction": "q2", "response": ["first", "second"], "instruct_reward": [2, 2]},
        {"instruction": "q3", "response": ["x", "y"], "instruct_reward": [None, None]},
        {"instruction": "q4", "response": ["x", "y", "z"], "instruct_reward": [1, 2]},
        {"instruction": "q5", "response": ["a", "b", "c"], "instruct_reward": [None, -3, -1]},
    ]
    out, stats, dropped = run_best(tmp_path, "plain", rows)
    assert [(r["instruction"], r["response"], r["best_index"], r["best_score"]) for r in out] == [
        ("q1", "strong", 1, 0.9),
        ("q2", "first", 0, 2.0),
        ("q5", "c", 2, -1.0),
    ]
    assert out[0]["instruct_reward"] == [0.1, 0.9, 0.5]  # the scores stay; the list was replaced
    assert out[0]["provenance"]["best"] == {
        "stage": "best",
        "responses": "response",
        "scores": "instruct_reward",
        "index": 1,
    }
    assert stats["filtered"] == {"missing_scores": 1, "score_count_mismatch": 1}
    assert stats["counters"]["unscored_responses"] == 1
    assert sorted((json.loads(d["row"])["instruction"], d["reason"]) for d in dropped) == [
        ("q3", "missing_scores"),
        ("q4", "score_count_mismatch"),
    ]


def test_best_keeps_the_lists_under_other_names(tmp_path):
    rows = [{"instruction": "q", "response": ["a", "bb", "c"], "reward": [-2.0, 4.5, 1.0]}]
    out, _, _ = run_best(tmp_path, "kept", rows, scores="reward", keep_responses="responses", keep_scores="rewards")
    (row,) = out
    assert row["response"] == "bb" and row["responses"] == ["a", "bb", "c"] and row["rewards"] == [-2.0, 4.5, 1.0]
    assert "reward" not in row  # moved
    # A list in its own column stays there; the best goes to `output`.
    rows = [{"instruction": "q", "responses": ["a", "bb"], "rewards": [3, 1]}]
    out, _, _ = run_best(tmp_path, "separate", rows, responses="responses", scores="rewards")
    assert out[0]["response"] == "a" and out[0]["responses"] == ["a", "bb"] and out[0]["rewards"] == [3, 1]


def test_validate_names_missing_columns_and_clashes(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        """
stages:
  - stage: load
    rows: [{"instruction": "q", "response": ["a", "b"]}]
  - stage: best
    scores: rewards
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "p.yaml:6: stages[1].scores: no earlier stage writes 'rewards'" in str(info.value)
    path.write_text(
        """
stages:
  - stage: load
    rows: [{"instruction": "q", "response": ["a", "b"], "s": [1, 2]}]
  - stage: best
    scores: response
""",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "they must be two columns" in result.output
    path.write_text(path.read_text().replace("scores: response", "scores: s"), encoding="utf-8")
    assert CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0
