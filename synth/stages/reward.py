"""`reward`: score each (instruction, response) with a reward model, as Magpie's unitag.py does.

Magpie scores with sfairXC/FsfairX-LLaMA3-RM-v0.1 through a transformers text-classification
pipeline: the conversation rendered with the reward model's own chat template, the raw first logit
kept unnormalized as `instruct_reward` (the 300K recipe keeps rows with > -10). This stage does the
same with any transformers sequence-classification reward model in a local folder (FsfairX,
Skywork-Reward, ...); a tokenizer without a chat template gets "User: ...\\n\\nAssistant: ...".
Nothing is downloaded: `model` is a folder, or a name already in the local Hugging Face cache.

A list of responses (`respond` with n > 1) gets a list of scores, the input of preference pairs
(chosen = max, rejected = min, as in Magpie's DPO sets). Conversations longer than `max_length`
tokens are cut from the left of the instruction's side and counted (`reward_truncated`). Scoring
runs on the GPU when torch sees one, else on the CPU, in batches of similar length.
"""

from __future__ import annotations

import asyncio
import threading
from functools import cache
from typing import Any

from pydantic import Field

from ..errors import InputError, MissingDependency
from .base import Batch, Row, Stage, StageParams


class RewardParams(StageParams):
    model: str = Field(description="folder of a transformers sequence-classification reward model")
    input: str = Field("instruction", description="column holding the user turn")
    response: str = Field("response", description="column holding the response (or a list of them)")
    output: str = Field("instruct_reward", description="column for the score (a list for a list of responses)")
    batch_size: int = Field(8, ge=1, description="conversations per forward pass")
    max_length: int = Field(4096, ge=16, description="tokens per conversation; longer ones are cut")


_lock = threading.Lock()  # one forward pass at a time: batches from concurrent shards share the model


@cache
def load_reward_model(model: str):
    """(tokenizer, model, device), loaded once per process, offline."""
    try:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise MissingDependency("transformers", "embed", "Reward scoring") from None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # no loading bars in the middle of synth's own progress display
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        net = AutoModelForSequenceClassification.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load reward model '{model}' ({exc.__class__.__name__}): give a local folder of a "
            "transformers sequence-classification model (synth downloads nothing)"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    net.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, net, device


def render_conversation(tokenizer, instruction: str, response: str) -> str:
    messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"User: {instruction}\n\nAssistant: {response}"


def score_texts(model: str, texts: list[str], batch_size: int, max_length: int) -> tuple[list[float], int]:
    """The first logit of each text, and how many texts were cut to max_length."""
    import torch

    tokenizer, net, device = load_reward_model(model)
    # A chat template writes the BOS itself; a plain text gets the tokenizer's special tokens.
    specials = not getattr(tokenizer, "chat_template", None)
    encoded = list(tokenizer(texts, add_special_tokens=specials)["input_ids"])
    long = [i for i, ids in enumerate(encoded) if len(ids) > max_length]
    if long:  # only these are tokenized again, cut from the left so the response's end and special tokens stay
        tokenizer.truncation_side = "left"
        cut = tokenizer([texts[i] for i in long], add_special_tokens=specials, truncation=True, max_length=max_length)
        for i, ids in zip(long, cut["input_ids"], strict=True):
            encoded[i] = ids
    truncated = len(long)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    scores: list[float] = [0.0] * len(encoded)
    pad = tokenizer.pad_token_id or 0
    with _lock, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # right padding: sequence classifiers read the last real token
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            logits = net(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(chunk):
                scores[i] = float(logits[row, 0])
    return scores, truncated


class Reward(Stage):
    """Score (instruction, response) pairs with a local reward model (Magpie's instruct_reward)."""

    Params = RewardParams
    params: RewardParams

    @classmethod
    def reads(cls, params: RewardParams) -> list[str]:
        return [params.input, params.response]

    @classmethod
    def writes(cls, params: RewardParams) -> list[str]:
        return [params.output, "reward_model"]

    async def open(self) -> None:
        await asyncio.to_thread(load_reward_model, self.params.model)

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        tokenizer = load_reward_model(p.model)[0]
        texts: list[str] = []
        spans: list[tuple[Row, int, int, bool]] = []
        for row in batch.rows:
            value: Any = row.get(p.response)
            many = isinstance(value, list)
            responses = [str(v) for v in value] if many else [] if value is None else [str(value)]
            if not responses:
                batch.fail(row, "no_response", f"{p.response} is empty")
                continue
            start = len(texts)
            texts += [render_conversation(tokenizer, str(row.get(p.input) or ""), r) for r in responses]
            spans.append((row, start, len(texts), many))
        scores, truncated = await asyncio.to_thread(score_texts, p.model, texts, p.batch_size, p.max_length)
        if truncated:
            batch.count("reward_truncated", truncated)
        out = []
        for row, start, end, many in spans:
            values = [round(s, 6) for s in scores[start:end]]
            out.append({**row, p.output: values if many else values[0], "reward_model": p.model})
        return out
