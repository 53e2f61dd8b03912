"""CDR (Dr.SoW, gx-ai-architect/CDR-preference-annotation) for `reward`: a density-ratio reward.

The reward of a response is how much more likely a strong (preferred) model finds it than a weak
one: the sum of the response's token log-probabilities under the strong model minus the same sum
under the weak model, with no length normalization. By default (`format: strong`) the text both
models score is the authors': rendered once with the strong model's chat template, the eos token
appended, prompt and response cut to 1,024 tokens each (formatting.py). With `format: own` each
model scores the conversation formatted with its own chat template. Either way the response's
tokens are those after the formatted prompt (the generation prompt), so the end-of-turn marker the
template writes after the response is scored too, as in the authors' code, which scores every
token past the prompt.

Customization: an LLM router sorts each prompt into SAFETY, REASONING or CHAT (its answer wrapped
in [START]...[END]; anything else counts as CHAT), and a system prompt for that domain goes into
the context both models score: SAFETY and REASONING get a safety-guideline prompt, CHAT a
step-by-step prompt, or nothing with `vanilla_domain` (the plain density ratio for chat). Without
a router no system prompt is added: the plain CDR reward. With `few_shot` (the authors'
fs_domain_icl) a seeded draw from the domain's pool of good/bad exemplars (data/reward/
cdr_exemplars.yaml; CHAT's pool without a router) goes before the user's turn, which then ends in
"Good Assistant:", in the text both models score; `vanilla_domain` leaves CHAT turns as they are.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ...errors import InputError
from ...llm.base import Request, RequestFailed, Sampling, ScoreRequest
from ...llm.templates import ChatTemplate
from ...templating import render
from .formatting import Tokenizer, authors_format
from .formatting import render as render_turns

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


def load_exemplars(path: Path) -> dict[str, list[str]]:
    """The few-shot pool: {domain: [exemplar block, ...]} for each of DOMAINS."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read the exemplar pool {path}: {exc}") from None
    if not isinstance(data, dict) or any(
        not isinstance(data.get(d), list) or not data[d] or not all(isinstance(b, str) and b.strip() for b in data[d])
        for d in DOMAINS
    ):
        raise InputError(f"{path}: give a non-empty list of exemplar texts for each of {', '.join(DOMAINS)}")
    return {d: [b.strip() for b in data[d]] for d in DOMAINS}


def few_shot_turn(pool: dict[str, list[str]], domain: str, instruction: str, seed: int) -> str:
    """The authors' fs_domain_icl user turn: a random exemplar of the domain, the query, and
    "Good Assistant:" (the exemplars end with "User:")."""
    block = random.Random(seed).choice(pool[domain])
    return f"{block}\n{instruction}\nGood Assistant:"


def score_request(
    template: ChatTemplate, system: str | None, instruction: str, response: str
) -> tuple[ScoreRequest, bool]:
    """The scored context in one model's format: the prompt up to the generation prompt, and the
    rest of the formatted conversation as the continuation. False when the template does not
    extend its own prompt (then the bare response is scored after the prompt)."""
    prompt, full = render_turns(template, system, instruction, response)
    if full.startswith(prompt) and len(full) > len(prompt):
        return ScoreRequest(prompt, full[len(prompt) :]), True
    return ScoreRequest(prompt, response), False


@dataclass
class CdrScore:
    reward: float
    strong: float  # sum of the response's token log-probabilities under the strong model
    weak: float
    tokens: int  # response tokens under the strong model's tokenizer


@dataclass
class AuthorsFormat:
    """format: strong: the strong model's template and eos, its tokenizer, the two limits."""

    template: ChatTemplate
    eos: str
    tokenizer: Tokenizer
    max_prompt: int
    max_response: int


async def cdr_scores(
    strong: LLM,
    weak: LLM,
    items: Sequence[tuple[str | None, str, str]],
    templates: tuple[ChatTemplate, ChatTemplate],
    authors: AuthorsFormat | None,
) -> tuple[list[CdrScore | RequestFailed], dict[str, int]]:
    """(system, user turn, response) -> strong sum - weak sum, and counters: contexts a template
    did not extend (scored as the bare response), texts cut to the limits."""
    counters = {"cdr_template_not_extended": 0, "cdr_truncated": 0}
    if authors is not None:  # one text, scored under both models
        formatted = await authors_format(
            authors.template, authors.eos, authors.tokenizer, items, authors.max_prompt, authors.max_response
        )
        counters["cdr_template_not_extended"] = sum(not f.extended for f in formatted)
        counters["cdr_truncated"] = sum(f.truncated for f in formatted)
        per_side = [[f.request for f in formatted]] * 2
    else:
        per_side = []
        for template in templates:
            requests = []
            for system, instruction, response in items:
                request, extended = score_request(template, system, instruction, response)
                requests.append(request)
                counters["cdr_template_not_extended"] += not extended
            per_side.append(requests)
    strong_results, weak_results = await asyncio.gather(strong.score(per_side[0]), weak.score(per_side[1]))
    out: list[CdrScore | RequestFailed] = []
    for s, w in zip(strong_results, weak_results, strict=True):
        failed = s if isinstance(s, RequestFailed) else w if isinstance(w, RequestFailed) else None
        if failed is not None:
            out.append(failed)
        else:
            out.append(CdrScore(s.total - w.total, s.total, w.total, len(s.token_logprobs)))
    return out, {k: v for k, v in counters.items() if v}
