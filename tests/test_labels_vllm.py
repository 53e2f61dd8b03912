"""CDR's default formatting on the session's real vLLM CPU server (tests/conftest.py): the strong
backend's text, cut through the server's /tokenize and /detokenize, the eos appended, scored under
both backends through prompt_logprobs. The expectation is built without synth: the authors'
prepare_dialogue_from_tokenizer and truncate_prompt with the served model's own Hugging Face
tokenizer, then one prompt_logprobs request summed from the prompt's token count, as the authors'
dpo_vllm.py sums."""

from __future__ import annotations

import httpx
import pytest

from synth.llm.specs import OpenAISpec

from .test_cdr import drive

pytestmark = pytest.mark.slow

ROWS = [
    {"instruction": "Please list the first ten prime numbers.", "response": "2, 3, 5, 7, 11, 13, 17, 19, 23, 29."},
    {"instruction": "What is the capital of France?", "response": ["Paris.", "It is Paris, on the Seine."]},
]


def authors_text(tokenizer, user: str, response: str, max_prompt: int, max_response: int) -> tuple[str, str]:
    messages = [{"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    tokens = tokenizer.encode(prompt, add_special_tokens=False)
    output = tokenizer.encode(full, add_special_tokens=False)[len(tokens) :]
    if len(tokens) > max_prompt or len(output) > max_response:
        tokens, output = tokens[-max_prompt:], output[:max_response]
        prompt, full = tokenizer.decode(tokens), tokenizer.decode(tokens + output)
    return prompt, full if full.endswith(tokenizer.eos_token) else full + tokenizer.eos_token


def served_sum(server, prompt: str, full: str, bos: str) -> float:
    """Sum of the prompt_logprobs of `full`'s tokens past `prompt`'s (one BOS: a text that starts with
    its own goes without the server's)."""
    own = {"add_special_tokens": False} if prompt.startswith(bos) else {}
    root = server.url.removesuffix("/v1")

    def tokenize(text: str) -> list[int]:
        return httpx.post(f"{root}/tokenize", json={"model": server.model, "prompt": text, **own}).json()["tokens"]

    body = {"model": server.model, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, **own}
    answer = httpx.post(f"{server.url}/completions", json={**body, "prompt": full}, timeout=120).json()
    entries = answer["choices"][0]["prompt_logprobs"]
    tokens, full_ids = tokenize(prompt), tokenize(full)
    start = len(tokens)
    assert full_ids[:start] == tokens  # the prompt's tokens are a prefix of the full text's here
    return float(sum(entries[t][str(full_ids[t])]["logprob"] for t in range(start, len(full_ids))))


def test_cdr_default_formatting_on_the_vllm_server(vllm_server, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("SYNTH_ALLOW_READ", vllm_server.model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(vllm_server.model, local_files_only=True)
    # One request at a time, as served_sum sends them: vLLM's CPU arithmetic depends on the batch a
    # request lands in (by up to 0.1 in these sums on an AMX host), so concurrent requests would
    # not be comparable to 2e-3.
    spec = OpenAISpec(
        model=vllm_server.model, base_url=vllm_server.url, chat_template=vllm_server.model, max_concurrency=1
    )
    params = {"method": "cdr", "strong": "strong", "weak": "weak", "max_prompt_tokens": 8, "max_response_tokens": 6}
    out, batch = drive(params, ROWS, tmp_path, {"strong": spec, "weak": spec})
    assert not batch.dropped
    assert batch.counters["cdr_truncated"] == 3  # every prompt is longer than 8 tokens
    for row in out:
        responses = row["response"] if isinstance(row["response"], list) else [row["response"]]
        strongs = row["strong_logprob"] if isinstance(row["strong_logprob"], list) else [row["strong_logprob"]]
        for response, value in zip(responses, strongs, strict=True):
            prompt, full = authors_text(tokenizer, row["instruction"], response, 8, 6)
            assert full.endswith(tokenizer.eos_token) and len(tokenizer.encode(prompt, add_special_tokens=False)) == 8
            assert value == pytest.approx(served_sum(vllm_server, prompt, full, tokenizer.bos_token), abs=2e-3)
        # One model stands in for both, so the two scores of one text differ only by vLLM's CPU
        # arithmetic, which depends on the batch a request lands in (concurrent requests, AMX):
        # the reward is their difference, and small.
        rewards = row["cdr_reward"] if isinstance(row["cdr_reward"], list) else [row["cdr_reward"]]
        weaks = row["weak_logprob"] if isinstance(row["weak_logprob"], list) else [row["weak_logprob"]]
        for reward, strong, weak in zip(rewards, strongs, weaks, strict=True):
            assert reward == pytest.approx(strong - weak, abs=2e-6) and abs(reward) < 0.5
        assert row["provenance"]["reward"]["eos"] == tokenizer.eos_token
