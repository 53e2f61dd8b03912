"""`judge`: an LLM judge's scores (absolute) or verdicts (pairwise) on responses.

Absolute (UltraFeedback, Cui et al. 2023): each response is rated on fine-grained aspects,
helpfulness, honesty, instruction following and truthfulness, 1-5 each with a short rationale,
plus an overall score of 1-10. `criteria:` swaps in any rubric (name, description, scale). Columns,
flat so filters can use them: `overall_score`, `score_<criterion>`, `avg_fine_score` (the mean of
the fine-grained scores, which the reward-augmented recipe of Zhang et al. filters pairs on),
`judge_rationales` ({criterion: rationale}) and `judge_model`. A list of responses gives lists,
aligned with the responses, ready for the `pairs` stage (`scores: overall_score`).

Pairwise (WildBench, Lin et al. 2024): two responses (`response_a`/`response_b`, or the first two
of a list) are compared as WildBench's prompt asks: with the instruction's checklist, an analysis of
each response and a reason for each outcome first, then one of five choices, reported as A>>B, A>B,
A=B (tie, "to be used sparingly"), B>A, B>>A. Texts are cut to `max_words` (1,000) words, and an
empty response loses without a call. Position bias is
evened out by a seeded coin per row that shows B first (`judge_swapped`); the verdict is reported
in the row's own A/B terms. `both_orders` judges both orders, keeps an agreed verdict (the milder
one when only the strength differs) and calls a disagreement a tie. Then WildBench's length rule:
a "slightly better" verdict becomes a tie when the winner is longer than the loser by more than
`length_tie_chars` characters (500, null disables). Columns: `judge_verdict`, `judge_reward`
(WB-Reward from A's side: +1, +0.5, 0, -0.5, -1), `judge_swapped`, `judge_raw_verdicts` (each
judgment in original terms, before the rules), `judge_verdict_rationales`, `judge_length_tie`,
`judge_model`, and `judge_checklist`. The prompt says nothing about length while the length rule is
on (length is then handled once, after judging).

Score (WildBench's WB-Score): each response alone, with the checklist, strengths and weaknesses,
then a score of 1-10: `judge_score`, `wb_score` ((score - 5) x 2), `judge_strengths`,
`judge_weaknesses`. UltraFeedback (`task: ultrafeedback`): as its authors annotate, one prompt per
aspect that shows all of a row's responses together ("text 1", "text 2", ...) and rates each one;
the columns are the absolute task's fine-grained ones (no overall score: UltraFeedback's comes from
a separate critique pass).

The checklist (pairwise and score by default, `checklist:`): 5-10 questions per instruction,
written once by `checklist_backend` (the judge's own by default) through the request cache, or read
from a column. A checklist answer that does not parse is retried like a judgment; a row without one
fails (`checklist_failed`).

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

from typing import Any

import jinja2

from ...seeds import derive_seed
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import add_provenance, template_sha
from . import answers, rubric
from .asking import Asker, make_asker
from .params import JudgeParams, check_params
from .verdicts import (
    ANALYSES,
    PAIRWISE_COLUMNS,
    coin,
    empty_verdict,
    pairwise_columns,
    pairwise_schema,
    parse_pairwise,
)

__all__ = ["Judge", "JudgeParams"]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


class Unjudgeable(Exception):
    """A row without the responses a judgment needs: (reason, detail)."""


class Judge(MapStage):
    """Score responses (UltraFeedback, WB-Score) or compare two of them (WildBench) with an LLM judge."""

    Params = JudgeParams
    params: JudgeParams

    @classmethod
    def reads(cls, params: JudgeParams) -> list[str]:
        extra = [params.checklist_column] if params.checklist == "column" else []
        if params.task == "pairwise" and params.response_a and params.response_b:
            return [params.input, params.response_a, params.response_b, *extra]
        return [params.input, params.response, *extra]

    @classmethod
    def writes(cls, params: JudgeParams) -> list[str]:
        extra = ["judge_checklist"] if params.checklist_on() else []
        if params.task == "pairwise":
            return [*PAIRWISE_COLUMNS, "judge_model", *extra]
        if params.task == "score":
            return [*answers.SCORE_COLUMNS, "judge_model", *extra]
        overall = params.overall_scale if params.task == "absolute" else None
        return [*rubric.absolute_column_names(params.criteria, overall), "judge_model", *extra]

    @classmethod
    def check(cls, params: JudgeParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        return check_params(params, env)

    @classmethod
    def backend_names(cls, params: JudgeParams) -> list[str]:
        names = [params.backend]
        if params.checklist_on() and params.checklist != "column" and params.checklist_backend:
            names.append(params.checklist_backend)
        return list(dict.fromkeys(names))

    # ---- running ----
    async def _asker(self, name: str, schema: dict | None, max_tokens: int, seed) -> Asker:
        p = self.params
        return await make_asker(self.ctx.llm(name), name, self.ctx.label, p, p.mode, schema, max_tokens, seed)

    def _schema(self) -> dict:
        p = self.params
        if p.task == "pairwise":
            return pairwise_schema(p.rationale_chars)
        if p.task == "score":
            return answers.score_schema(p.rationale_chars)
        return rubric.absolute_schema(p.criteria, p.overall_scale, p.rationale_chars)

    async def open(self) -> None:
        p = self.params
        self.check_again()
        schema = None if p.task == "ultrafeedback" else self._schema()  # ultrafeedback's depends on the row
        self.judge = await self._asker(p.backend, schema, p.max_tokens, self.ctx.seed_for)
        self.mode = self.judge.mode
        few_shot = "_few_shot" if self.mode == "complete" else ""
        self.template = p.template or f"judge/{p.task}{few_shot}.jinja"
        self.checklister = None
        if p.checklist_on() and p.checklist != "column":
            schema = answers.checklist_schema(p.checklist_size, p.rationale_chars)

            # Seeds without the stage's label: one checklist per instruction, whichever judge stage asks.
            def seed(prompt: str, attempt: int) -> int:
                return derive_seed(self.ctx.seed, "checklist", prompt, attempt)

            backend = p.checklist_backend or p.backend
            self.checklister = await self._asker(backend, schema, p.checklist_max_tokens, seed)
            suffix = "_few_shot" if self.checklister.mode == "complete" else ""
            self.checklist_template = p.checklist_template or f"judge/checklist{suffix}.jinja"

    def _prompt(self, template: str, row: Row, **texts: Any) -> str:
        p = self.params
        criteria = [c.model_dump() for c in p.criteria]
        instruction = row.get(p.input)  # None stays None: the template then fails the row, naming it
        variables = {"instruction": None if instruction is None else _text(instruction), **texts}
        variables |= {"criteria": criteria, "overall": p.overall_scale, "length_rule": p.length_tie_chars is not None}
        return render(template, self.ctx.base_dir, **{**row, "row": row, **variables})

    async def _checklists(self, batch: Batch, rows: dict[int, Row]) -> dict[int, list[str]]:
        """Each row's checklist (rows that get none fail); one request per distinct instruction."""
        p = self.params
        out: dict[int, list[str]] = {}
        if p.checklist == "column":
            for pos, row in list(rows.items()):
                items = answers.clean_checklist(row.get(p.checklist_column))
                if items is None:
                    batch.fail(
                        row,
                        "no_checklist",
                        f"column '{p.checklist_column}' holds {row.get(p.checklist_column)!r}"[:500],
                    )
                    del rows[pos]
                else:
                    out[pos] = items
            return out
        prompts: dict[str, str] = {}
        for pos, row in list(rows.items()):
            try:
                prompts.setdefault(
                    _text(row.get(p.input)), self._prompt(self.checklist_template, row, size=p.checklist_size)
                )
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
                del rows[pos]
        texts = list(prompts)

        def parse(text: str) -> list[str] | None:
            return answers.parse_checklist(text, p.checklist_size)

        schema = self.checklister.schema
        found = await self.checklister.ask([(prompts[t], parse, schema) for t in texts], batch, "checklist_parse")
        by_text = dict(zip(texts, found, strict=True))
        for pos, row in list(rows.items()):
            parsed, raw, _, reason = by_text[_text(row.get(p.input))]
            if parsed is None:
                batch.fail(row, "checklist_failed", f"{reason}; raw answer: {raw!r}"[:4000])
                del rows[pos]
            else:
                out[pos] = parsed
        return out

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        rows: dict[int, Row] = {}
        for pos, row in enumerate(batch.rows):
            try:
                self._responses(row)
            except Unjudgeable as exc:
                batch.fail(row, exc.args[0], exc.args[1])
                continue
            rows[pos] = row
        checklists = await self._checklists(batch, rows) if p.checklist_on() and rows else {}
        jobs: list[tuple[int, str, Any, Any, dict | None]] = []  # (row position, prompt, what, parse, schema)
        decided: dict[int, list] = {}  # pairwise rows settled without a call (an empty response)
        for pos, row in list(rows.items()):
            try:
                items = self._jobs(row, checklists.get(pos))
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
                del rows[pos]
                continue
            if isinstance(items, str):
                decided[pos] = [items]
                continue
            jobs += [(pos, *item) for item in items]
        answered = await self.judge.ask([(prompt, parse, schema) for _, prompt, _, parse, schema in jobs], batch)
        by_row: dict[int, list] = {pos: [] for pos in rows}
        for (pos, _, what, _, _), answer in zip(jobs, answered, strict=True):
            by_row[pos].append((what, *answer))
        record = {
            "stage": "judge",
            "task": p.task,
            "model": self.judge.llm.model_id,
            "mode": self.mode,
            "template": self.template,
            "template_sha": template_sha(self.template, self.ctx.base_dir),
            "json_schema": self.judge.schema is not None or any(schema is not None for *_, schema in jobs),
            **self.judge.sampling.model_dump(mode="json"),
        }
        if self.checklister is not None:
            record["checklist"] = {
                "model": self.checklister.llm.model_id,
                "template": self.checklist_template,
                "template_sha": template_sha(self.checklist_template, self.ctx.base_dir),
            }
        out = []
        for pos, row in rows.items():
            seeds: list[int] = []
            if pos in decided:
                columns = self._empty_columns(row, decided[pos][0])
                batch.count("empty_response_verdict")
            else:
                judged = by_row[pos]
                failed = [(reason, raw) for _, parsed, raw, _, reason in judged if parsed is None]
                if failed:
                    batch.fail(row, failed[0][0], "raw answers: " + repr([raw for _, raw in failed])[:4000])
                    continue
                columns = self._columns(row, judged)
                seeds = [seed for _, _, _, seed, _ in judged]
            if pos in checklists:
                columns["judge_checklist"] = checklists[pos]
            columns["judge_model"] = self.judge.llm.model_id
            out.append(add_provenance({**row, **columns}, self.ctx.label, {**record, "seeds": seeds}))
        return out

    # ---- per task ----
    def _responses(self, row: Row) -> tuple[list[str], bool]:
        """The row's responses and whether the column holds a list; raises Unjudgeable."""
        p = self.params
        if p.task == "pairwise":
            return list(self._pair(row)), False
        value = row.get(p.response)
        responses = [_text(v) for v in value] if isinstance(value, list) else [] if value is None else [_text(value)]
        if not responses:
            raise Unjudgeable("no_response", f"column '{p.response}' is empty")
        return responses, isinstance(value, list)

    def _jobs(self, row: Row, checklist: list[str] | None) -> list[tuple] | str:
        p = self.params
        responses, many = self._responses(row)
        if p.task == "pairwise":
            return self._pairwise_jobs(row, checklist)
        if p.task == "ultrafeedback":
            shown = [{"index": i + 1, "text": r} for i, r in enumerate(responses)]
            jobs = []
            for c in p.criteria:

                def parse(text: str, scale=c.scale, n=len(shown)):  # noqa: B008 - bound per criterion
                    return answers.parse_aspect(text, n, scale)

                prompt = self._prompt(self.template, row, responses=shown, criterion=c.model_dump())
                schema = (
                    answers.aspect_schema(len(responses), c.scale, p.rationale_chars) if p.schema != "off" else None
                )
                if not getattr(self.judge.llm.backend, "structured_output", False):
                    schema = None
                jobs.append((prompt, (c.name, many), parse, schema))
            return jobs
        if p.task == "score":
            parse = answers.parse_score
        else:

            def parse(text: str) -> dict | None:
                return rubric.parse_absolute(text, p.criteria, p.overall_scale)

        return [
            (self._prompt(self.template, row, response=answers.shorten(r, p.max_words) if p.task == "score" else r,
                          checklist=checklist or []), many, parse, self.judge.schema)
            for r in responses
        ]  # fmt: skip

    def _columns(self, row: Row, judged: list) -> dict:
        p = self.params
        parsed = [answer for _, answer, *_ in judged]
        if p.task == "pairwise":
            swaps = [what[0] for what, *_ in judged]
            lengths = judged[0][0][1:]
            verdicts, rationales = [a[0] for a in parsed], [a[1] for a in parsed]
            return pairwise_columns(verdicts, rationales, swaps, lengths, p.length_tie_chars)
        many = judged[0][0] if p.task != "ultrafeedback" else judged[0][0][1]
        if p.task == "score":
            return answers.score_columns(parsed, many)
        if p.task == "ultrafeedback":
            return answers.aspect_columns(
                {what[0]: a for (what, *_), a in zip(judged, parsed, strict=True)}, p.criteria, many
            )
        return rubric.absolute_columns(parsed, p.criteria, p.overall_scale, many=many)

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

    def _swapped(self, row: Row, a: str, b: str) -> bool:
        return coin(self.ctx.seed_for("swap", _text(row[self.params.input]), a, b))

    def _pairwise_jobs(self, row: Row, checklist: list[str] | None) -> list[tuple] | str:
        p = self.params
        a, b = self._pair(row)
        verdict = empty_verdict(a, b)
        if verdict is not None:
            return verdict
        swapped = self._swapped(row, a, b)
        orders = [swapped, not swapped] if p.both_orders else [swapped]
        shown_a, shown_b = answers.shorten(a, p.max_words), answers.shorten(b, p.max_words)
        jobs = []
        for swap in orders:
            first, second = (shown_b, shown_a) if swap else (shown_a, shown_b)
            prompt = self._prompt(self.template, row, response_a=first, response_b=second, checklist=checklist or [])
            jobs.append((prompt, (swap, len(a), len(b)), parse_pairwise, self.judge.schema))
        return jobs

    def _empty_columns(self, row: Row, verdict: str) -> dict:
        a, b = self._pair(row)
        reason = {key: "" for key in ANALYSES}
        for key, text in (("analysis of A", a), ("analysis of B", b)):
            if not text.strip():
                reason[key] = "empty response: it loses without a judgment (both empty: a tie)"
        return pairwise_columns([verdict], [reason], [False], (len(a), len(b)), None)
