"""CDR (Dr.SoW, gx-ai-architect/CDR-preference-annotation) for `reward`: a density-ratio reward.

The reward of a response is how much more likely a strong (preferred) model finds it than a weak
one: the sum of the response's token log-probabilities under the strong model minus the same sum
under the weak model, with no length normalization. Each model scores the conversation formatted
with its own chat template; the response's tokens are those after the formatted prompt (the
generation prompt), so the end-of-turn marker the template writes after the response is scored
too, as in the authors' code, which scores every token past the prompt.

Customization: an LLM router sorts each prompt into SAFETY, REASONING or CHAT (its answer wrapped
in [START]...[END]; anything else counts as CHAT), and a system prompt for that domain goes into
the context both models score: SAFETY and REASONING get a safety-guideline prompt, CHAT a
step-by-step prompt, or nothing with `vanilla_domain` (the plain density ratio for chat). Without
a router no system prompt is added: the plain CDR reward.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...llm.base import Request, RequestFailed, Sampling, ScoreRequest
from ...llm.templates import ChatTemplate
from ...templating import render

if TYPE_CHECKING:
    from ...llm.client import LLM

DOMAINS = ("SAFETY", "REASONING", "CHAT")
FALLBACK = "CHAT"


def parse_domain(text: str) -> str | None:
    """The domain between [START] and [END], or None when the answer holds no valid one."""
    if "[START]" not in text or "[END]" not in text:
        return None
    label = text.split("[START]", 1)[1].split("[END]", 1)[0].strip()
    return label if label in DOMAINS else None


@dataclass
class Routed:
    domain: str
    answer: str  # the router's raw answer ("" when the request failed)
    fallback: bool  # the answer held no valid domain: CHAT, as the method says


async def route(
    llm: LLM,
    instructions: Sequence[str],
    system: str,
    seed_for: Callable[..., int],
    max_tokens: int,
) -> list[Routed | RequestFailed]:
    """Ask the router (greedy) for each instruction's domain."""
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
    requests = [
        Request(sampling, seed_for("router", text), messages=(("system", system), ("user", text)))
        for text in instructions
    ]
    out: list[Routed | RequestFailed] = []
    for result in await llm.chat(requests):
        if isinstance(result, RequestFailed):
            out.append(result)
            continue
        answer = result[0].text
        domain = parse_domain(answer)
        out.append(Routed(domain or FALLBACK, answer, domain is None))
    return out


def domain_system(domain: str | None, vanilla_domain: bool, safety: str, chat: str, base_dir: Path) -> str | None:
    """The system prompt a domain puts into the scored context (None: no system turn)."""
    if domain is None or (domain == "CHAT" and vanilla_domain):
        return None
    return render(chat if domain == "CHAT" else safety, base_dir, allow_empty=True).strip()


def score_request(
    template: ChatTemplate, system: str | None, instruction: str, response: str
) -> tuple[ScoreRequest, bool]:
    """The scored context in one model's format: the prompt up to the generation prompt, and the
    rest of the formatted conversation as the continuation. False when the template does not
    extend its own prompt (then the bare response is scored after the prompt)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": instruction}]
    prompt = template.render(messages, add_generation_prompt=True)
    full = template.render([*messages, {"role": "assistant", "content": response}], add_generation_prompt=False)
    if full.startswith(prompt) and len(full) > len(prompt):
        return ScoreRequest(prompt, full[len(prompt) :]), True
    return ScoreRequest(prompt, response), False


@dataclass
class CdrScore:
    reward: float
    strong: float  # sum of the response's token log-probabilities under the strong model
    weak: float
    tokens: int  # response tokens under the strong model's tokenizer


async def cdr_scores(
    strong: tuple[LLM, ChatTemplate],
    weak: tuple[LLM, ChatTemplate],
    items: Sequence[tuple[str | None, str, str]],
) -> tuple[list[CdrScore | RequestFailed], int]:
    """(system, instruction, response) -> strong sum - weak sum, and how many contexts a template
    did not extend (scored as the bare response)."""
    sides = []
    mismatched = 0
    for llm, template in (strong, weak):
        requests = []
        for system, instruction, response in items:
            request, extended = score_request(template, system, instruction, response)
            requests.append(request)
            mismatched += not extended
        sides.append(llm.score(requests))
    strong_results, weak_results = await asyncio.gather(*sides)
    out: list[CdrScore | RequestFailed] = []
    for s, w in zip(strong_results, weak_results, strict=True):
        failed = s if isinstance(s, RequestFailed) else w if isinstance(w, RequestFailed) else None
        if failed is not None:
            out.append(failed)
        else:
            out.append(CdrScore(s.total - w.total, s.total, w.total, len(s.token_logprobs)))
    return out, mismatched
