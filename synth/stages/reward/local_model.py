"""The local reward-model path of `reward`: a transformers sequence-classification model in a folder.

As Magpie scores with a transformers text-classification pipeline: the conversation rendered with
the reward model's own chat template (or "User: ...\\n\\nAssistant: ..." for a tokenizer without
one), the raw first logit kept unnormalized. Loaded once per process, offline; scored in batches of
similar length, one forward pass at a time.
"""

from __future__ import annotations

import threading
from functools import cache

from ...errors import InputError, MissingDependency

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


def score_texts(
    model: str, texts: list[str], batch_size: int, max_length: int, heads: bool = False
) -> tuple[list[float] | list[list[float]], int]:
    """The first logit of each text (with `heads`, all of its logits), and how many texts were cut
    to max_length."""
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
    scores: list = [0.0] * len(encoded)
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
                scores[i] = [float(v) for v in logits[row]] if heads else float(logits[row, 0])
    return scores, truncated


def count_tokens(model: str, texts: list[str]) -> list[int]:
    """Tokens of each text under the reward model's tokenizer, without special tokens."""
    tokenizer = load_reward_model(model)[0]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
