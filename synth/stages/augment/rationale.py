"""`rationale`: a machine-written reason why each pair's chosen response beats the rejected one.

Just et al. ("Data-Centric Human Preference Optimization with Rationales", 2024) add to every
preference pair a rationale that a model wrote, and train with an extra likelihood term on it
(RDPO, RORPO): the policy learns why one response is preferred, not only which, which in their
experiments speeds up learning and curbs verbosity. Their data comes in two styles, both here as
`style:`: `general`, a high-level reason (which qualities make the chosen response better), and
`specific`, a detailed one that points at passages of both texts. The prompts are our own
(templates/rationale/); the authors' exact generation prompt is not published with their code.

The model is told which response won and asked for the rationale alone. Chat models get
rationale/<style>.jinja through their chat template; base models without one (the embedded
default) continue a few-shot prompt, rationale/<style>_few_shot.jinja (`mode: auto` picks).
Answers are cleaned: code fences, quotes, a preamble ("Sure, here is...") and a label
("Rationale:") are stripped, and text after a few-shot continuation marker is cut; an answer cut
by max_tokens is trimmed to its last full sentence. An answer that is then empty, shorter than
`min_chars`, a loop of repeated words or lines, or a copy of a response is asked again with a new
seed at `retry_temperature` (`parse_retries` rounds, counted as `parse_retried`), then fails the row
with the reason and every raw answer. Column: `rationale` (the preference export carries it).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

import jinja2
from pydantic import Field

from ...llm.base import Request, RequestFailed
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LLMParams, add_provenance, auto_mode, check_template, retry_sampling, template_sha

TEMPLATE_VARIABLES = {"instruction", "chosen", "rejected", "row"}
FEW_SHOT_STOP = ("\n\n", "\nPrompt:")
_LABEL = re.compile(
    r"^\s*(?:#+\s*)?(\*\*|__)?\s*(?:rationale|explanation|reason(?:ing)?|answer|why the preferred response is "
    r"better)[ \t]*(?:\1)?[ \t]*(?:[:\-]|\n)\s*(?:\1)?\s*",
    re.IGNORECASE,
)
_OPENER = r"(?:sure|certainly|of course|okay|ok)\b[!.,]?[ \t]*"
_PREAMBLE = re.compile(  # "Sure! Here is the rationale:", "Here's why:", "Certainly." on a line of its own
    rf"^\s*(?:(?:{_OPENER})?here\b[^\n]{{0,100}}?:[ \t]*|{_OPENER}\n)", re.IGNORECASE
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_NEXT_EXAMPLE = re.compile(r"\n\s*(?:Prompt|Instruction|Preferred response|Rejected response|Rationale)\s*:")
_QUOTES = {('"', '"'), ("'", "'"), ("\u201c", "\u201d")}


def _unquote(text: str) -> str:
    """Text without quotes that wrap all of it (quotes that open and close passages inside stay)."""
    if len(text) < 2 or (text[0], text[-1]) not in _QUOTES:
        return text
    wrapped = text.count(text[0]) == 2 if text[0] == text[-1] else text.count(text[0]) == text.count(text[-1]) == 1
    return text[1:-1] if wrapped else text


def clean(text: str, truncated: bool = False, few_shot: bool = False) -> str:
    """The rationale in a model's answer: fences, preamble, label and wrapping quotes stripped, a
    following few-shot example cut off, and a truncated answer trimmed to its last full sentence."""
    text = text.strip()
    cut = _NEXT_EXAMPLE.search(text) if few_shot else None
    if cut:
        text = text[: cut.start()]
    while True:
        before = text
        text = text.strip()
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1)
        text = _PREAMBLE.sub("", text, count=1)
        text = _LABEL.sub("", text, count=1).strip()
        text = _unquote(text)
        if text == before:
            break
    if truncated:
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
        if ends:
            text = text[: ends[-1]]
    return text.strip()


def problem(text: str, row_texts: tuple[str, ...], min_chars: int) -> str | None:
    """Why a cleaned rationale is unusable (the failure reason), or None when it is fine."""
    if not text:
        return "empty_rationale"
    if len(text) < min_chars or not re.search(r"[^\W\d_]{2,}", text):
        return "short_rationale"
    words = re.findall(r"\w+", text.lower())
    if len(words) >= 12 and len(set(words)) / len(words) < 0.25:
        return "repetitive_rationale"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 4 and len(set(lines)) / len(lines) <= 0.5:
        return "repetitive_rationale"
    if any(text == t.strip() for t in row_texts if t):
        return "copied_response"
    return None


class RationaleParams(LLMParams):
    style: Literal["general", "specific"] = Field(
        "general", description="general: a high-level reason; specific: a detailed one pointing at the texts"
    )
    input: str = Field("instruction", description="column holding the prompt")
    chosen: str = Field("chosen", description="column holding the preferred response")
    rejected: str = Field("rejected", description="column holding the other response")
    output: str = Field("rationale", description="column for the rationale (the preference export carries it)")
    mode: Literal["auto", "chat", "complete"] = Field(
        "auto",
        description="chat: chat template; complete: few-shot prompt for base models; auto: chat when the "
        "model has a chat template (servers always), else complete",
    )
    template: str | None = Field(
        None, description="prompt template (default: rationale/<style>.jinja, <style>_few_shot.jinja in complete)"
    )
    min_chars: int = Field(20, ge=1, description="shorter answers (after cleaning) are asked again")
    parse_retries: int = Field(2, ge=0, description="extra rounds, with new seeds, for empty or unusable answers")
    retry_temperature: float = Field(0.7, ge=0, description="temperature of retry rounds (the first is greedy)")
    temperature: float = 0.0
    max_tokens: int = 512


class Rationale(MapStage):
    """Explain why each pair's chosen response beats the rejected one (general or specific rationales)."""

    Params = RationaleParams
    params: RationaleParams

    @classmethod
    def reads(cls, params: RationaleParams) -> list[str]:
        return [params.input, params.chosen, params.rejected]

    @classmethod
    def writes(cls, params: RationaleParams) -> list[str]:
        return [params.output]

    @classmethod
    def check(cls, params: RationaleParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        p, problems = params, []
        if p.n != 1:
            problems.append((("n",), "one rationale per pair: leave n at 1 (parse_retries asks again when needed)"))
        if p.template:
            problems += check_template(p.template, "template", env, TEMPLATE_VARIABLES)
        if env.columns is not None:
            for field in ("chosen", "rejected", "input"):
                column = getattr(p, field)
                if column not in env.columns:
                    hint = "put a `pairs` stage before rationale" if field != "input" else "name the prompt column"
                    problems.append(((field,), f"no earlier stage writes '{column}': {hint}, or set {field}:"))
        return problems

    async def open(self) -> None:
        p = self.params
        self.check_again()
        llm = self.ctx.llm(p.backend)
        self.mode = p.mode if p.mode != "auto" else await asyncio.to_thread(auto_mode, llm.backend, self.ctx.label)
        self.template = p.template or f"rationale/{p.style}{'_few_shot' if self.mode == 'complete' else ''}.jinja"
        self.sampling = p.sampling()
        if self.mode == "complete":  # a few-shot rationale is one paragraph
            self.sampling = self.sampling.model_copy(update={"stop": (*self.sampling.stop, *FEW_SHOT_STOP)})

    def _request(self, prompt: str, attempt: int) -> Request:
        sampling = retry_sampling(self.sampling, attempt, self.params.retry_temperature)
        seed = self.ctx.seed_for(prompt, attempt)
        if self.mode == "complete":
            return Request(sampling, seed, prompt=prompt)
        return Request(sampling, seed, messages=(("user", prompt),))

    def _prompt(self, row: Row) -> str:
        p = self.params
        texts = {name: row.get(getattr(p, name)) for name in ("chosen", "rejected")}
        missing = [getattr(p, name) for name, value in texts.items() if not isinstance(value, str) or not value]
        if missing:
            raise ValueError(f"column(s) {', '.join(missing)} hold no response text")
        instruction = row.get(p.input)
        variables = {"instruction": None if instruction is None else str(instruction), **texts}
        return render(self.template, self.ctx.base_dir, **{**row, "row": row, **variables})

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        call = llm.complete if self.mode == "complete" else llm.chat
        jobs: list[tuple[Row, str]] = []
        for row in batch.rows:
            try:
                jobs.append((row, self._prompt(row)))
            except ValueError as exc:
                batch.fail(row, "missing_pair", str(exc))
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
        done: dict[int, tuple[str, int, int]] = {}  # job -> (rationale, seed, attempt)
        raw: dict[int, list[str]] = {i: [] for i in range(len(jobs))}
        reasons: dict[int, str] = {}
        pending = list(range(len(jobs)))
        for attempt in range(p.parse_retries + 1):
            if not pending:
                break
            if attempt == 1:
                batch.count("parse_retried", len(pending))
            requests = [self._request(jobs[i][1], attempt) for i in pending]
            still = []
            for i, request, result in zip(pending, requests, await call(requests), strict=True):
                if isinstance(result, RequestFailed):  # a prompt too long stays too long: no retry
                    reasons[i] = f"request_failed:{result.reason}"
                    raw[i].append(result.detail)
                    continue
                answer = result[0]
                raw[i].append(answer.text)
                text = clean(answer.text, answer.finish_reason == "length", self.mode == "complete")
                row = jobs[i][0]
                why = problem(text, (row[p.chosen], row[p.rejected]), p.min_chars)
                if why is None:
                    if answer.finish_reason == "length":
                        batch.count("truncated")
                    done[i] = (text, request.seed, attempt)
                else:
                    reasons[i] = why
                    still.append(i)
            pending = still
        record: dict[str, Any] = {
            "stage": "rationale",
            "style": p.style,
            "model": llm.model_id,
            "mode": self.mode,
            "template": self.template,
            "template_sha": template_sha(self.template, self.ctx.base_dir),
            **self.sampling.model_dump(mode="json"),
        }
        out = []
        for i, (row, _) in enumerate(jobs):
            if i not in done:
                batch.fail(row, reasons[i], "raw answers: " + repr(raw[i])[:4000])
                continue
            text, seed, attempt = done[i]
            provenance = {**record, "seed": seed, "attempt": attempt}
            if attempt:
                provenance["temperature"] = max(p.temperature, p.retry_temperature)
            out.append(add_provenance({**row, p.output: text}, self.ctx.label, provenance))
        return out
