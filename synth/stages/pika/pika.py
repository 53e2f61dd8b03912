"""`pika`: one expert-level, knowledge-intensive instruction per persona (PiKa, Yin et al. 2025).

PiKa builds its SFT and preference data from instructions that a strong model writes in the
voice of expert personas (I = LLM(persona)), then samples several responses per instruction and
keeps the reward model's best (SFT) or best and worst (preference). This stage is the first step:
for each persona it asks for one self-contained request that the persona would plausibly send to
an assistant, written after a fixed tag ("User prompt:", as PersonaHub's instruction template
does), at temperature 0.7 as PersonaHub's generation script samples. PiKa's own prompt is not
public; templates/pika/ holds ours.

An answer is parsed after the tag. Answers without it (chat mode), empty ones, and ones that go
on to answer their own request (an "Answer:" or "Solution:" line, as Magpie's sanitizer looks
for) are asked again with new seeds, `parse_retries` rounds, then the row fails with the reason
and the raw answers. `difficulty: true` also asks for a rating on Magpie's five levels, parsed
from a "Difficulty:" line after the request; a row whose rating never parses keeps its
instruction with difficulty None (counted as `difficulty_unparsed`).

Base models without a chat template (the embedded default) get a few-shot prompt that ends in
the tag (`mode: complete`); `auto` picks chat when the model has a chat template (servers always).
Columns: `instruction`, `instruction_generator` (+ `difficulty`); the persona column is kept.
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal

import jinja2
from pydantic import Field

from ...llm.base import Request, RequestFailed
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LEVELS, LLMParams, add_provenance, auto_mode, check_template, template_sha

# A line where the model starts answering its own request (markdown bold or headings allowed).
_ANSWER = re.compile(
    r"^[\s>#*_]*(?:answer|solution|response|explanation|assistant|ai|a)\s*[*_]*\s*:|^[\s#*_]*the answer is\b",
    re.IGNORECASE | re.MULTILINE,
)
_LEVEL = "|".join(sorted(LEVELS, key=len, reverse=True))  # Magpie's five levels, longest first
_DIFFICULTY = re.compile(rf"^[\s*_]*difficulty[\s*_]*[:\-][\s*_]*({_LEVEL})\b.*$", re.IGNORECASE | re.MULTILINE)
_DIFFICULTY_LINE = re.compile(r"^[\s*_]*difficulty[\s*_]*[:\-].*$", re.IGNORECASE | re.MULTILINE)
_NEXT = re.compile(r"^[\s*_]*(?:persona|user prompt)[\s*_]*:", re.IGNORECASE | re.MULTILINE)
_TAG = re.compile(r"[*_]*user prompt[*_]*\s*:[*_]*", re.IGNORECASE)


def parse_instruction(text: str, tagged: bool) -> tuple[str, str | None, str]:
    """(instruction, difficulty, failure reason) from an answer; the reason is "" when it parsed.
    `tagged`: the prompt already ended in the tag (few-shot), so the answer starts after it."""
    if not tagged:
        found = _TAG.search(text)
        if found is None:
            return "", None, "missing_tag"
        text = text[found.end() :]
    cut = _NEXT.search(text)
    if cut is not None:  # the model went on to another persona or a second prompt
        text = text[: cut.start()]
    levels = _DIFFICULTY.findall(text)
    difficulty = levels[-1].lower() if levels else None
    rated = _DIFFICULTY_LINE.search(text)
    if rated is not None:
        text = text[: rated.start()]
    instruction = text.strip().strip('"“”').strip()
    if not instruction:
        return "", difficulty, "empty_instruction"
    if _ANSWER.search(instruction):
        return instruction, difficulty, "contains_answer"
    return instruction, difficulty, ""


class PikaParams(LLMParams):
    input: str = Field("persona", description="column holding the persona")
    output: str = Field("instruction", description="column for the instruction")
    difficulty: bool = Field(False, description="also ask for a difficulty rating (very easy .. very hard)")
    mode: Literal["auto", "chat", "complete"] = Field(
        "auto",
        description="chat: chat template; complete: few-shot prompt for base models; auto: chat when the model "
        "has a chat template (servers always), else complete",
    )
    template: str = Field("pika/instruction.jinja", description="prompt template in chat mode")
    few_shot_template: str = Field(
        "pika/instruction_few_shot.jinja", description="prompt template in complete mode (ends in the tag)"
    )
    parse_retries: int = Field(2, ge=0, description="extra rounds, with new seeds, for answers that do not parse")
    temperature: float = 0.7
    max_tokens: int = 512


class Pika(MapStage):
    """Write one expert-level, knowledge-intensive instruction per persona (PiKa)."""

    Params = PikaParams
    params: PikaParams

    @classmethod
    def reads(cls, params: PikaParams) -> list[str]:
        return [params.input]

    @classmethod
    def writes(cls, params: PikaParams) -> list[str]:
        return [params.output, "instruction_generator"] + (["difficulty"] if params.difficulty else [])

    @classmethod
    def check(cls, params: PikaParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        problems = []
        if params.n != 1:
            problems.append((("n",), "pika writes one instruction per persona: leave n at 1"))
        for field in ("template", "few_shot_template"):
            problems += check_template(getattr(params, field), field, env, {"persona", "difficulty", "row"})
        return problems

    async def open(self) -> None:
        p = self.params
        llm = self.ctx.llm(p.backend)
        self.mode = p.mode if p.mode != "auto" else await asyncio.to_thread(auto_mode, llm.backend, self.ctx.label)
        self.template = p.few_shot_template if self.mode == "complete" else p.template
        self.sampling = p.sampling()
        if self.mode == "complete":  # stop where the few-shot list goes on to the next persona
            self.sampling = self.sampling.model_copy(update={"stop": (*p.stop, "\nPersona:", "\n\n")})

    def _request(self, prompt: str, persona: str, attempt: int) -> Request:
        seed = self.ctx.seed_for(persona, attempt)
        if self.mode == "complete":
            return Request(self.sampling, seed, prompt=prompt)
        return Request(self.sampling, seed, messages=(("user", prompt),))

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        call = llm.complete if self.mode == "complete" else llm.chat
        prompts: dict[int, str] = {}
        for i, row in enumerate(batch.rows):
            persona = row.get(p.input)
            try:
                variables = {**row, "row": row, "persona": persona, "difficulty": p.difficulty}
                prompts[i] = render(self.template, self.ctx.base_dir, **variables)
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
        done: dict[int, tuple[str, str | None, int, int]] = {}  # (instruction, difficulty, seed, attempt)
        partial: dict[int, tuple[str, None, int, int]] = {}  # parsed, but without the difficulty asked for
        raw: dict[int, list[str]] = {i: [] for i in prompts}
        reasons: dict[int, str] = {}
        pending = list(prompts)
        for attempt in range(p.parse_retries + 1):
            if not pending:
                break
            if attempt == 1:
                batch.count("parse_retried", len(pending))
            requests = [self._request(prompts[i], str(batch.rows[i].get(p.input)), attempt) for i in pending]
            results = await call(requests)
            still = []
            for i, request, result in zip(pending, requests, results, strict=True):
                if isinstance(result, RequestFailed):  # a prompt too long stays too long: no retry
                    reasons[i] = f"request_failed:{result.reason}"
                    raw[i].append(result.detail)
                    continue
                text = result[0].text
                raw[i].append(text)
                instruction, difficulty, reason = parse_instruction(text, tagged=self.mode == "complete")
                if reason:
                    reasons[i] = reason
                    still.append(i)
                elif p.difficulty and difficulty is None:
                    partial.setdefault(i, (instruction, None, request.seed, attempt))
                    still.append(i)
                else:
                    done[i] = (instruction, difficulty, request.seed, attempt)
            pending = still
        record = {
            "stage": "pika",
            "model": llm.model_id,
            "mode": self.mode,
            "template": self.template,
            "template_sha": template_sha(self.template, self.ctx.base_dir),
            **self.sampling.model_dump(mode="json"),
        }
        out = []
        for i in prompts:
            row = batch.rows[i]
            if i not in done and i in partial:
                batch.count("difficulty_unparsed")
                done[i] = partial[i]
            if i not in done:
                batch.fail(row, reasons.get(i, "parse_failed"), "raw answers: " + repr(raw[i])[:4000])
                continue
            instruction, difficulty, seed, attempt = done[i]
            columns = {p.output: instruction, "instruction_generator": llm.model_id}
            if p.difficulty:
                columns["difficulty"] = difficulty
            out.append(add_provenance({**row, **columns}, self.ctx.label, {**record, "seed": seed, "attempt": attempt}))
        return out
