"""`followup`: one more turn of a Magpie conversation (the paper's gen_mt.py), for multi-turn data.

For turn t the model sees the paper's multi-turn system prompt (templates/magpie/mt_system.jinja:
the user asks a question, then related follow-ups) and the conversation so far, rendered with its
chat template up to the header of the next user turn. What it writes is the follow-up instruction
(temperature 1, top_p 1, one line by default, as in the paper). The response is then generated
WITHOUT the system prompt, greedily, through the chat template. Columns: `instruction_t`,
`response_t` (the paper's keys); use the stage twice for three turns (`turn: 2`, then `turn: 3`).

The prefix is cut with the sentinel technique of the pre-query extraction: render the
conversation plus a user message holding a sentinel and cut at the sentinel, so any template
works, including those that fold the system prompt into the first user turn (Gemma). A template
that refuses a system message gets the conversation without one (counted:
`followup_without_system`).

Base models without a chat template (the embedded default) get few-shot prompts instead
(magpie/followup_few_shot.jinja, magpie/followup_respond_few_shot.jinja): like the magpie
stage's few-shot mode, this shows the flow, not the paper's method.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...errors import BackendError
from ...llm.base import Request, RequestFailed, Sampling
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LLMParams, answer_value, check_template, model_chat_template


class FollowupParams(LLMParams):
    turn: int = Field(2, ge=2, description="the turn this stage adds: writes instruction_<turn>, response_<turn>")
    mode: Literal["auto", "pre_query", "few_shot"] = Field(
        "auto", description="auto: the model's chat template when it has one, else few_shot"
    )
    system_template: str | None = Field(
        "magpie/mt_system.jinja", description="the multi-turn system prompt (null: none)"
    )
    early_stop: bool = Field(True, description="stop the instruction at the first newline (single-line queries)")
    max_tokens: int = 512
    response_temperature: float = Field(0.0, ge=0, description="responses are greedy in the paper")
    response_top_p: float = Field(1.0, gt=0, le=1)
    response_max_tokens: int = Field(4096, ge=1)
    response_stop: list[str] = Field(default_factory=list)
    few_shot_template: str = "magpie/followup_few_shot.jinja"
    few_shot_response_template: str = "magpie/followup_respond_few_shot.jinja"


def turn_columns(turn: int) -> tuple[str, str]:
    return ("instruction", "response") if turn == 1 else (f"instruction_{turn}", f"response_{turn}")


def as_messages(turns: list[dict]) -> list[tuple[str, str]]:
    """(role, content) pairs of the turns so far."""
    return [m for t in turns for m in (("user", t["instruction"]), ("assistant", t["response"]))]


def turns_of(row: Row, upto: int) -> list[dict]:
    """The row's turns before `upto`, as [{instruction, response}, ...]."""
    out = []
    for t in range(1, upto):
        ins, res = turn_columns(t)
        out.append({"instruction": str(row[ins]), "response": str(row[res])})
    return out


class Followup(MapStage):
    """Add a follow-up turn to Magpie conversations (instruction_N and response_N)."""

    Params = FollowupParams
    params: FollowupParams

    @classmethod
    def reads(cls, params: FollowupParams) -> list[str]:
        return [c for t in range(1, params.turn) for c in turn_columns(t)]

    @classmethod
    def writes(cls, params: FollowupParams) -> list[str]:
        return [*turn_columns(params.turn), f"gen_turn_{params.turn}_configs"]

    @classmethod
    def check(cls, params: FollowupParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        problems = []
        if params.n != 1:
            problems.append((("n",), "a follow-up turn is one sample per conversation: leave n at 1"))
        for field in ("system_template", "few_shot_template", "few_shot_response_template"):
            name = getattr(params, field)
            if name:
                problems += check_template(name, field, env, {"turns", "instruction"})
        return problems

    async def open(self) -> None:
        p = self.params
        self.stops: list[str] = list(p.stop)
        self.template = None
        if p.mode != "few_shot":
            backend = self.ctx.llm(p.backend).backend
            self.template = model_chat_template(backend, self.ctx.label, required=p.mode == "pre_query")
        if self.template is not None:
            from ...llm import prequery

            extracted = prequery.extract(self.template.source, self.template.bos_token, self.template.eos_token)
            self.stops += list(extracted.stop)
        else:
            self.stops += ["\n"]  # few-shot: one request per line
        if p.early_stop:
            self.stops.append("\n")
        self.stops = list(dict.fromkeys(self.stops))
        self.system = (
            render(p.system_template, self.ctx.base_dir, allow_empty=True).strip() if p.system_template else ""
        )

    def _pre_query(self, turns: list[dict], batch: Batch) -> str:
        """The conversation so far, cut where the next user message would start."""
        from ...llm.prequery import SENTINEL

        messages = [{"role": role, "content": content} for role, content in as_messages(turns)]
        probe = [{"role": "user", "content": SENTINEL}]
        assert self.template is not None
        if self.system:
            try:
                text = self.template.render([{"role": "system", "content": self.system}, *messages, *probe], False)
                if SENTINEL in text:
                    return text[: text.index(SENTINEL)]
            except BackendError:
                pass
            batch.count("followup_without_system")
        text = self.template.render([*messages, *probe], add_generation_prompt=False)
        return text[: text.index(SENTINEL)]

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        ins_col, res_col = turn_columns(p.turn)
        sampling = p.sampling().model_copy(update={"stop": tuple(self.stops), "n": 1})
        prepared: list[tuple[Row, list[dict], Request]] = []
        for row in batch.rows:
            turns = turns_of(row, p.turn)
            seed = self.ctx.seed_for(p.turn, *(t["instruction"] for t in turns))
            try:
                if self.template is not None:
                    prompt = self._pre_query(turns, batch)
                else:
                    prompt = render(p.few_shot_template, self.ctx.base_dir, turns=turns)
            except BackendError as exc:
                batch.fail(row, "chat_template", str(exc))
                continue
            prepared.append((row, turns, Request(sampling, seed, prompt=prompt)))
        results = await llm.complete([r for _, _, r in prepared])

        reply = Sampling(
            temperature=p.response_temperature,
            top_p=p.response_top_p,
            max_tokens=p.response_max_tokens,
            stop=tuple(p.response_stop),
            repetition_penalty=p.repetition_penalty,
        )
        asked: list[tuple[Row, str, int, Request]] = []
        for (row, turns, request), result in zip(prepared, results, strict=True):
            if isinstance(result, RequestFailed):
                batch.fail(row, f"request_failed:{result.reason}", result.detail)
                continue
            instruction = result[0].text.strip()
            if not instruction:
                batch.drop(row, "empty_instruction", repr(result[0].text))
                continue
            seed = self.ctx.seed_for(p.turn, "response", instruction)
            if self.template is not None:  # the response sees no system prompt, as in the paper
                answer = Request(reply, seed, messages=(*as_messages(turns), ("user", instruction)))
            else:
                text = render(p.few_shot_response_template, self.ctx.base_dir, turns=turns, instruction=instruction)
                stops = tuple(p.response_stop) or ("\nFollow-up request:", "\nRequest:", "\n\n")
                answer = Request(reply.model_copy(update={"stop": stops}), seed, prompt=text)
            asked.append((row, instruction, request.seed, answer))

        call = llm.chat if self.template is not None else llm.complete
        answers = await call([a for *_, a in asked])
        out = []
        for (row, instruction, seed, answer), result in zip(asked, answers, strict=True):
            value = answer_value(batch, row, result, 1, empty_reason="empty_response")
            if value is None:
                continue
            config = {
                "temperature": p.temperature,
                "top_p": p.top_p,
                "input_generator": llm.model_id,
                "seed": seed,
                "mode": "pre_query" if self.template is not None else "few_shot",
                "system_prompt": bool(self.system) and self.template is not None,
                "response_temperature": p.response_temperature,
                "response_seed": answer.seed,
            }
            out.append({**row, ins_col: instruction, res_col: value, f"gen_turn_{p.turn}_configs": config})
        return out
