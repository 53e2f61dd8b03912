"""The preference and KTO exports go through TRL's own data preparation and train a step.

A run pairs scored responses (`pairs`), `synth export` writes `--format preference` and
`--format kto`, and the Parquet files are loaded with `datasets` and handed, unchanged, to TRL:
its chat-template helpers, then DPOTrainer and KTOTrainer, which tokenize them and train two
steps on the CPU. The model is a randomly initialised tiny Llama built from a config and the
tokenizer a byte-level BPE trained here on the run's own text with a ChatML chat template:
nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.export import export_run

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from trl.data_utils import apply_chat_template, is_conversational, maybe_apply_chat_template  # noqa: E402

SYSTEM = "You are a concise assistant."
PROMPTS = [
    ("How do I keep basil alive indoors?", SYSTEM),
    ("What causes the seasons on Earth?", None),
    ("Give me one tip for learning to juggle.", SYSTEM),
    ("Why is the sky blue?", None),
    ("How long should I boil an egg for a soft yolk?", None),
    ("What is a prime number?", SYSTEM),
    ("Name a good first programming language.", None),
    ("How do plants drink water?", None),
    ("Why do cats purr?", SYSTEM),
]
ROWS = [
    {
        "instruction": prompt,
        "system": system,
        "response": [
            f"A careful, correct answer to '{prompt}', with one concrete example.",
            f"I am not sure about {prompt.lower()}",
            f"Something unrelated, number {i}.",
        ],
        "instruct_reward": [2.0 + i / 10, 0.5, -1.0 - i],
        "rationale": f"The first answer addresses '{prompt}' directly; the other does not.",
    }
    for i, (prompt, system) in enumerate(PROMPTS)
]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trl")
    pipeline = root / "pairs.yaml"
    pipeline.write_text(f"stages:\n  - stage: load\n    rows: {json.dumps(ROWS)}\n  - stage: pairs\n", encoding="utf-8")
    run_pipeline(load_pipeline(pipeline), root / "run")
    assert read_output(root / "run").num_rows == len(ROWS)
    for fmt in ("preference", "kto"):
        export_run(root / "run", root / fmt, fmt)
    return {"preference": root / "preference", "kto": root / "kto"}


def chatml_tokenizer(texts: list[str], vocab_size: int = 600):
    """A small byte-level BPE trained here on `texts`, with a ChatML chat template (nothing is
    downloaded); the test modules that hand exports to TRL share it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet)
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def tokenizer():
    return chatml_tokenizer([text for row in ROWS for text in (row["instruction"], SYSTEM, *row["response"])])


def tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def train_args(config_cls, out: Path, **extra):
    return config_cls(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        max_length=256,
        **extra,
    )


def rendered(tokenizer, prompt: str, system: str | None) -> str:
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def test_preference_export_is_trl_conversational_and_trains_with_dpo(exported, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    ds = datasets.load_dataset("parquet", data_dir=str(exported["preference"]), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin", "rationale"]
    for example, (prompt, system) in zip(ds, PROMPTS, strict=True):
        assert is_conversational(example)
        roles = [m["role"] for m in example["prompt"]]
        assert roles == (["system", "user"] if system else ["user"])
        text = maybe_apply_chat_template(example, tokenizer)
        assert text == apply_chat_template(example, tokenizer)
        assert text["prompt"] == rendered(tokenizer, prompt, system)
        assert text["chosen"].startswith("A careful, correct answer") and text["chosen"].endswith("<|im_end|>\n")
        assert text["rejected"].startswith("Something unrelated")
        assert example["margin"] == pytest.approx(example["score_chosen"] - example["score_rejected"])
        assert prompt in example["rationale"]

    trainer = DPOTrainer(
        model=tiny_llama(tokenizer),
        ref_model=tiny_llama(tokenizer),  # the same seeded weights (a model built in memory has no path to reload)
        args=train_args(DPOConfig, tmp_path / "dpo"),
        train_dataset=ds,
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset
    assert len(prepared) == len(PROMPTS)  # nothing dropped as too long or malformed
    for example, (prompt, system) in zip(prepared, PROMPTS, strict=True):
        # TRL's tokenization found the rendered prompt as a prefix of prompt + completion.
        assert tokenizer.decode(example["prompt_ids"]) == rendered(tokenizer, prompt, system)
        assert tokenizer.decode(example["chosen_ids"]).startswith("A careful, correct answer")
        assert tokenizer.decode(example["rejected_ids"]).endswith("<|im_end|>\n")
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert any("rewards/margins" in entry for entry in trainer.state.log_history)


def test_kto_export_trains_with_kto_and_its_kl_pairs_mix_prompts(exported, tokenizer, tmp_path):
    from trl import KTOConfig, KTOTrainer

    ds = datasets.load_dataset("parquet", data_dir=str(exported["kto"]), split="train")
    assert ds.column_names == ["prompt", "completion", "label"]
    assert len(ds) == 2 * len(PROMPTS) and sum(ds["label"]) == len(PROMPTS)
    for example in ds:
        assert is_conversational(example)
        text = maybe_apply_chat_template(example, tokenizer)
        assert text["prompt"].endswith("<|im_start|>assistant\n") and text["completion"].endswith("<|im_end|>\n")
        good = text["completion"].startswith("A careful, correct answer")
        assert good == example["label"]
        asked = example["prompt"][-1]["content"]
        assert asked in text["completion"] if good else text["completion"].startswith("Something unrelated")

    trainer = KTOTrainer(
        model=tiny_llama(tokenizer),
        ref_model=tiny_llama(tokenizer),
        args=train_args(KTOConfig, tmp_path / "kto"),
        train_dataset=ds,
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset
    assert len(prepared) == len(ds)
    # KTO's KL term pairs each prompt with another row's completion (rotated within a batch):
    # the export's row order must not hand a prompt its own pair's answer.
    answers = {}
    for example in prepared:
        answers.setdefault(tuple(example["prompt_ids"]), set()).add(tuple(example["completion_ids"]))
    for example in prepared:
        assert tuple(example["KL_completion_ids"]) not in answers[tuple(example["prompt_ids"])]
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
