"""How CDR's scored text is made, as the authors make it (`format: strong`, the default).

The conversation is rendered ONCE, with the strong model's chat template, and that same text is
scored under both models: the prompt up to the generation prompt, then the rest of the rendered
conversation (the response and the template's end-of-turn marker) with the strong tokenizer's eos
token appended unless it already ends with it. Before that, the prompt keeps its last
`max_prompt_tokens` tokens and the response its first `max_response_tokens` (1,024 each), counted
with the strong model's tokenizer, and both are decoded back to text. Each model then finds the
response's first token with its own tokenizer, as the authors' code does.

`format: own` keeps synth's earlier formatting: each model scores the conversation rendered with
its own chat template (no eos appended, no truncation).

A tokenizer is asked only when a part could be too long: a token covers at least one byte, so a
part of no more bytes than its limit has no more tokens either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...llm.base import ScoreRequest
from ...llm.templates import ChatTemplate


@dataclass
class Formatted:
    request: ScoreRequest
    extended: bool  # the template's full text starts with its own prompt
    truncated: bool  # the prompt or the response was cut


def messages_of(system: str | None, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def render(template: ChatTemplate, system: str | None, user: str, response: str) -> tuple[str, str]:
    """(prompt with the generation prompt, the whole conversation) in the template's format."""
    messages = messages_of(system, user)
    prompt = template.render(messages, add_generation_prompt=True)
    full = template.render([*messages, {"role": "assistant", "content": response}], add_generation_prompt=False)
    return prompt, full


def cut(prompt_ids: list[int], full_ids: list[int], max_prompt: int, max_response: int) -> tuple[list, list]:
    """The authors' truncate_prompt: the prompt's last max_prompt tokens, and of the tokens after
    the prompt's count, the first max_response."""
    output = full_ids[len(prompt_ids) :]
    return prompt_ids[-max_prompt:], output[:max_response]


def needs_cut(prompt: str, full: str, max_prompt: int, max_response: int) -> bool:
    prompt_bytes = len(prompt.encode())
    return prompt_bytes > max_prompt or len(full.encode()) - prompt_bytes > max_response


class Tokenizer:
    """The strong backend's tokenize/detokenize (local llama.cpp, a vLLM server or engine)."""

    def __init__(self, backend, label: str):
        self.backend, self.label = backend, label

    def available(self) -> bool:
        return hasattr(self.backend, "tokenize") and hasattr(self.backend, "detokenize")

    async def truncate(self, prompt: str, full: str, max_prompt: int, max_response: int) -> tuple[str, str, bool]:
        prompt_ids, full_ids = await self.backend.tokenize([prompt, full])
        if len(prompt_ids) <= max_prompt and len(full_ids) - len(prompt_ids) <= max_response:
            return prompt, full, False
        kept_prompt, kept_output = cut(prompt_ids, full_ids, max_prompt, max_response)
        text_prompt, text_full = await self.backend.detokenize([kept_prompt, kept_prompt + kept_output])
        return text_prompt, text_full, True


async def authors_format(
    template: ChatTemplate,
    eos: str,
    tokenizer: Tokenizer | None,
    items: Sequence[tuple[str | None, str, str]],
    max_prompt: int,
    max_response: int,
) -> list[Formatted]:
    """(system, user, response) -> one ScoreRequest for both models, formatted as the authors do."""
    out = []
    for system, user, response in items:
        prompt, full = render(template, system, user, response)
        truncated = False
        if needs_cut(prompt, full, max_prompt, max_response):
            if tokenizer is None:
                raise ValueError("a text longer than the limits needs the strong backend's tokenizer")
            prompt, full, truncated = await tokenizer.truncate(prompt, full, max_prompt, max_response)
        if eos and not full.endswith(eos):
            full += eos
        extended = full.startswith(prompt) and len(full) > len(prompt)
        continuation = full[len(prompt) :] if extended else response + eos
        out.append(Formatted(ScoreRequest(prompt, continuation), extended, truncated))
    return out
