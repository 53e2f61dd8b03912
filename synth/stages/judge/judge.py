"""`judge`: an LLM judge's scores (absolute) or verdicts (pairwise) on responses.

Absolute (UltraFeedback, Cui et al. 2023): each response is rated on fine-grained aspects,
helpfulness, honesty, instruction following and truthfulness, 1-5 each with a short rationale,
plus an overall score of 1-10. `criteria:` swaps in any rubric (name, description, scale). Columns,
flat so filters can use them: `overall_score`, `score_<criterion>`, `avg_fine_score` (the mean of
the fine-grained scores, which the reward-augmented recipe of Zhang et al. filters pairs on),
`judge_rationales` ({criterion: rationale}) and `judge_model`. A list of responses gives lists,
aligned with the responses, ready for the `pairs` stage (`scores: overall_score`).

Pairwise (WildBench, Lin et al. 2024): two responses (`response_a`/`response_b`, or the first two
of a list) are compared with five outcomes, A>>B, A>B, A=B (tie), B>A, B>>A. Position bias is
evened out by a seeded coin per row that shows B first (`judge_swapped`); the verdict is reported
in the row's own A/B terms. `both_orders` judges both orders, keeps an agreed verdict (the milder
one when only the strength differs) and calls a disagreement a tie. Then WildBench's length rule:
a "slightly better" verdict becomes a tie when the winner is longer than the loser by more than
`length_tie_chars` characters (500, null disables). Columns: `judge_verdict`, `judge_reward`
(WB-Reward from A's side: +1, +0.5, 0, -0.5, -1), `judge_swapped`, `judge_raw_verdicts` (each
judgment in original terms, before the rules), `judge_verdict_rationales`, `judge_length_tie`,
`judge_model`.

The judge is greedy and answers in JSON. With `schema: auto` (the default) the answer's JSON schema
goes to every backend that can constrain generation to it (a grammar in llama.cpp, structured
outputs in vLLM); `on` makes a backend that cannot an error, `off` sends none. Answers that still
do not parse, or hold a value out of range, are asked again with new seeds at `retry_temperature`
(`parse_retries` rounds, counted as `parse_retried`), then fail the row (`parse_failed`, with the
raw answers). Base models without a chat template (the embedded default) get few-shot prompts
(`mode: complete`). vLLM lets a constrained answer hold any amount of whitespace, which a weak
model can loop on until max_tokens; serving it with `--structured-outputs-config '{"backend":
"xgrammar", "disable_any_whitespace": true}'` prevents that.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any, Literal

import jinja2
from pydantic import Field

from ...errors import SynthError
from ...llm.base import Request, RequestFailed
from ...templating import render, template_problem, template_variables
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LLMParams, add_provenance, auto_mode, check_template, retry_sampling, template_sha
from . import rubric
from .verdicts import PAIRWISE_COLUMNS, coin, pairwise_columns, pairwise_schema, parse_pairwise

TEMPLATE_VARIABLES = {"instruction", "row", "criteria", "overall", "response", "response_a", "response_b"}

with warnings.catch_warnings():  # `schema` shadows pydantic's deprecated BaseModel.schema(): harmless here
    warnings.filterwarnings("ignore", message='Field name "schema"')

    class JudgeParams(LLMParams):
        task: Literal["absolute", "pairwise"] = Field(
            "absolute", description="absolute: score each response (UltraFeedback); pairwise: compare two (WildBench)"
        )
        input: str = Field("instruction", description="column holding the instruction")
        response: str = Field(
            "response", description="column with a response or a list of them (pairwise: the first two are compared)"
        )
        response_a: str | None = Field(None, description="pairwise: column of response A (give response_b too)")
        response_b: str | None = Field(None, description="pairwise: column of response B")
        criteria: list[rubric.Criterion] = Field(
            default_factory=lambda: list(rubric.ULTRAFEEDBACK),
            description="absolute: the rubric, each {name, description, scale: [low, high]} (default: "
            "UltraFeedback's helpfulness, honesty, instruction_following, truthfulness, 1-5)",
        )
        overall_scale: list[int] | None = Field([1, 10], description="absolute: overall score's scale (null: none)")
        mode: Literal["auto", "chat", "complete"] = Field(
            "auto",
            description="chat: chat template; complete: few-shot prompt for base models; auto: chat when "
            "the model has a chat template (servers always), else complete",
        )
        template: str | None = Field(
            None, description="prompt template (default: judge/<task>.jinja, judge/<task>_few_shot.jinja in complete)"
        )
        schema: Literal["auto", "on", "off"] = Field(
            "auto", description="send the answer's JSON schema to the backend (on: fail if it cannot take one)"
        )
        rationale_chars: int | None = Field(400, ge=1, description="longest rationale the JSON schema allows")
        length_tie_chars: int | None = Field(
            500, ge=0, description="pairwise: A>B/B>A becomes a tie if the winner is this much longer (null: off)"
        )
        both_orders: bool = Field(False, description="pairwise: judge both orders; a disagreement is a tie")
        parse_retries: int = Field(2, ge=0, description="extra rounds, with new seeds, for answers that do not parse")
        retry_temperature: float = Field(0.7, ge=0, description="temperature of retry rounds (the first is greedy)")
        temperature: float = 0.0
        max_tokens: int = 1024


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


class Unjudgeable(Exception):
    """A row without the responses a judgment needs: (reason, detail)."""


class Judge(MapStage):
    """Score responses on a rubric (UltraFeedback) or compare two of them (WildBench) with an LLM judge."""

    Params = JudgeParams
    params: JudgeParams

    @classmethod
    def reads(cls, params: JudgeParams) -> list[str]:
        if params.task == "pairwise" and params.response_a and params.response_b:
            return [params.input, params.response_a, params.response_b]
        return [params.input, params.response]

    @classmethod
    def writes(cls, params: JudgeParams) -> list[str]:
        if params.task == "pairwise":
            return [*PAIRWISE_COLUMNS, "judge_model"]
        return [*rubric.absolute_column_names(params.criteria, params.overall_scale), "judge_model"]

    @classmethod
    def check(cls, params: JudgeParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        p, problems = params, []
        if p.n != 1:
            problems.append((("n",), "a judge answers once per judgment: leave n at 1 (use parse_retries for retries)"))
        if p.task == "pairwise":
            if (p.response_a is None) != (p.response_b is None):
                missing = "response_b" if p.response_b is None else "response_a"
                why = "pairwise needs two responses: set both response_a and response_b, or neither (the first two"
                problems.append(((missing,), f"{why} of the list in `{p.response}` are compared)"))
            elif p.response_a is not None and p.response_a == p.response_b:
                problems.append((("response_b",), f"response_a and response_b both name '{p.response_a}'"))
            for name in ("criteria", "overall_scale"):
                if name in p.model_fields_set:
                    problems.append(((name,), f"{name} is for task: absolute (this stage has task: pairwise)"))
        else:
            for name in ("response_a", "response_b", "both_orders"):
                if getattr(p, name):
                    problems.append(((name,), f"{name} is for task: pairwise (this stage has task: absolute)"))
            problems += rubric.rubric_problems(p.criteria, p.overall_scale)
        template = p.template
        if template:
            problems += check_template(template, "template", env, TEMPLATE_VARIABLES)
            if not template_problem(template, env.base_dir):
                shown = template_variables(template, env.base_dir)
                needed = ["response_a", "response_b"] if p.task == "pairwise" else ["response"]
                lacking = " and ".join("{{ " + v + " }}" for v in needed if v not in shown)
                if lacking:
                    problems.append((("template",), f"template '{template}' never shows what it judges: add {lacking}"))
        return problems

    # ---- running ----
    async def open(self) -> None:
        p = self.params
        self.check_again()
        llm = self.ctx.llm(p.backend)
        self.mode = p.mode if p.mode != "auto" else await asyncio.to_thread(auto_mode, llm.backend, self.ctx.label)
        self.template = p.template or f"judge/{p.task}{'_few_shot' if self.mode == 'complete' else ''}.jinja"
        supported = getattr(llm.backend, "structured_output", False)
        if p.schema == "on" and not supported:
            raise SynthError(
                f"stage '{self.ctx.label}': backend '{p.backend}' ({llm.model_id}) cannot constrain "
                "answers to a JSON schema: set schema: auto or off"
            )
        self.schema = None
        if p.schema != "off" and supported:
            self.schema = (
                pairwise_schema(p.rationale_chars)
                if p.task == "pairwise"
                else rubric.absolute_schema(p.criteria, p.overall_scale, p.rationale_chars)
            )
        self.sampling = p.sampling()
        if self.mode == "complete" and self.schema is None:  # few-shot answers are one line of JSON
            self.sampling = self.sampling.model_copy(update={"stop": (*self.sampling.stop, "\n")})

    def _prompt(self, row: Row, **texts: str) -> str:
        p = self.params
        criteria = [c.model_dump() for c in p.criteria]
        instruction = row.get(p.input)  # None stays None: the template then fails the row, naming it
        variables = {"instruction": None if instruction is None else _text(instruction), **texts}
        variables |= {"criteria": criteria, "overall": p.overall_scale}
        return render(self.template, self.ctx.base_dir, **{**row, "row": row, **variables})

    def _request(self, prompt: str, attempt: int) -> Request:
        p = self.params
        sampling = retry_sampling(self.sampling, attempt, p.retry_temperature)
        seed = self.ctx.seed_for(prompt, attempt)
        if self.mode == "complete":
            return Request(sampling, seed, prompt=prompt, json_schema=self.schema)
        return Request(sampling, seed, messages=(("user", prompt),), json_schema=self.schema)

    async def _ask(self, prompts: list[str], parse, batch: Batch) -> list[tuple[Any, str, int, str]]:
        """(parsed or None, raw answer, seed, failure reason) per prompt, after up to parse_retries
        more rounds for answers that do not parse."""
        llm = self.ctx.llm(self.params.backend)
        call = llm.complete if self.mode == "complete" else llm.chat
        out: list[tuple[Any, str, int, str]] = [(None, "", 0, "")] * len(prompts)
        pending = list(range(len(prompts)))
        for attempt in range(self.params.parse_retries + 1):
            if not pending:
                break
            if attempt == 1:
                batch.count("parse_retried", len(pending))
            requests = [self._request(prompts[i], attempt) for i in pending]
            results = await call(requests)
            still = []
            for i, request, result in zip(pending, requests, results, strict=True):
                if isinstance(result, RequestFailed):  # a prompt too long stays too long: no retry
                    out[i] = (None, result.detail, request.seed, f"request_failed:{result.reason}")
                    continue
                parsed = parse(result[0].text)
                out[i] = (parsed, result[0].text, request.seed, "parse_failed")
                if parsed is None:
                    still.append(i)
            pending = still
        if pending:
            batch.count("parse_failed", len(pending))
        return out

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        jobs: list[tuple[int, str, Any]] = []  # (row position, prompt, what the judgment is of)
        rows: dict[int, Row] = {}
        for pos, row in enumerate(batch.rows):
            try:
                items = self._pairwise_jobs(row) if p.task == "pairwise" else self._absolute_jobs(row)
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
                continue
            except Unjudgeable as exc:
                batch.fail(row, exc.args[0], exc.args[1])
                continue
            rows[pos] = row
            jobs += [(pos, prompt, what) for prompt, what in items]
        if p.task == "pairwise":
            parse = parse_pairwise
        else:

            def parse(text: str) -> dict | None:
                return rubric.parse_absolute(text, p.criteria, p.overall_scale)

        answers = await self._ask([prompt for _, prompt, _ in jobs], parse, batch)
        by_row: dict[int, list] = {pos: [] for pos in rows}
        for (pos, _, what), answer in zip(jobs, answers, strict=True):
            by_row[pos].append((what, *answer))
        record = {
            "stage": "judge",
            "task": p.task,
            "model": llm.model_id,
            "mode": self.mode,
            "template": self.template,
            "template_sha": template_sha(self.template, self.ctx.base_dir),
            "json_schema": self.schema is not None,
            **self.sampling.model_dump(mode="json"),
        }
        out = []
        for pos, row in rows.items():
            judged = by_row[pos]
            failed = [(reason, raw) for _, parsed, raw, _, reason in judged if parsed is None]
            if failed:
                batch.fail(row, failed[0][0], "raw answers: " + repr([raw for _, raw in failed])[:4000])
                continue
            parsed = [answer for _, answer, *_ in judged]
            if p.task == "pairwise":
                swaps = [what[0] for what, *_ in judged]
                lengths = judged[0][0][1:]
                verdicts, rationales = [a[0] for a in parsed], [a[1] for a in parsed]
                columns = pairwise_columns(verdicts, rationales, swaps, lengths, p.length_tie_chars)
            else:
                columns = rubric.absolute_columns(parsed, p.criteria, p.overall_scale, many=judged[0][0])
            columns["judge_model"] = llm.model_id
            seeds = [seed for _, _, _, seed, _ in judged]
            out.append(add_provenance({**row, **columns}, self.ctx.label, {**record, "seeds": seeds}))
        return out

    # ---- absolute ----
    def _absolute_jobs(self, row: Row) -> list[tuple[str, Any]]:
        value = row.get(self.params.response)
        responses = [_text(v) for v in value] if isinstance(value, list) else [] if value is None else [_text(value)]
        if not responses:
            raise Unjudgeable("no_response", f"column '{self.params.response}' is empty")
        many = isinstance(value, list)
        return [(self._prompt(row, response=r), many) for r in responses]

    # ---- pairwise ----
    def _pair(self, row: Row) -> tuple[str, str]:
        p = self.params
        if p.response_a and p.response_b:
            a, b = row.get(p.response_a), row.get(p.response_b)
            if a is None or b is None:
                raise Unjudgeable("no_response", f"column '{p.response_a if a is None else p.response_b}' is empty")
            return _text(a), _text(b)
        value = row.get(p.response)
        if not isinstance(value, list) or len(value) < 2:
            raise Unjudgeable("fewer_than_two_responses", f"column '{p.response}' holds {value!r}"[:500])
        return _text(value[0]), _text(value[1])

    def _pairwise_jobs(self, row: Row) -> list[tuple[str, Any]]:
        a, b = self._pair(row)
        swapped = coin(self.ctx.seed_for("swap", _text(row[self.params.input]), a, b))
        orders = [swapped, not swapped] if self.params.both_orders else [swapped]
        jobs = []
        for swap in orders:
            first, second = (b, a) if swap else (a, b)
            jobs.append((self._prompt(row, response_a=first, response_b=second), (swap, len(a), len(b))))
        return jobs
