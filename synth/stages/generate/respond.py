"""`respond`: answer each instruction (Magpie's gen_res.py), greedy by default as in the paper.

Chat models answer through their chat template; a base model (the embedded default) answers a
few-shot completion prompt given with `template:`. With `n` > 1 it samples n responses per
instruction into a list, the input of preference building (the paper's DPO sets use n=5 at
temperature 0.8)."""

from __future__ import annotations

import jinja2
from pydantic import Field, model_validator

from ...llm.base import Request
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LLMParams, answer_value, check_template, template_sha


class RespondParams(LLMParams):
    input: str = Field("instruction", description="column holding the instruction")
    output: str = Field("response", description="column for the response (a list when n > 1)")
    system: str | None = Field(None, description="system prompt (chat models)")
    template: str | None = Field(None, description="few-shot completion template, for base models")
    temperature: float = 0.0
    max_tokens: int = 4096

    @model_validator(mode="after")
    def _sampling_makes_sense(self):
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                "n > 1 at temperature 0 gives n identical responses: set a temperature "
                "(the Magpie preference sets use 0.8)"
            )
        return self


class Respond(MapStage):
    """Answer each instruction with the model (chat template, or a few-shot template for base models)."""

    Params = RespondParams
    params: RespondParams

    @classmethod
    def reads(cls, params: RespondParams) -> list[str]:
        return [params.input]

    @classmethod
    def single_columns(cls, params: RespondParams) -> set[str]:
        return {params.output} if params.n == 1 else set()

    @classmethod
    def writes(cls, params: RespondParams) -> list[str]:
        return [params.output, "gen_response_configs"]

    @classmethod
    def check(cls, params: RespondParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        return check_template(params.template, "template", env, {"row"}) if params.template else []

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        sampling = p.sampling()
        prepared: list[tuple[Row, Request]] = []
        for row in batch.rows:
            instruction = str(row[p.input])
            seed = self.ctx.seed_for(instruction)
            if p.template:
                try:
                    prompt = render(p.template, self.ctx.base_dir, **row, row=row)
                except jinja2.TemplateError as exc:
                    batch.fail(row, "template_error", str(exc))
                    continue
                prepared.append((row, Request(sampling, seed, prompt=prompt)))
            else:
                system = (("system", p.system),) if p.system else ()
                prepared.append((row, Request(sampling, seed, messages=(*system, ("user", instruction)))))
        call = llm.complete if p.template else llm.chat
        results = await call([r for _, r in prepared])
        configs = {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "repetition_penalty": p.repetition_penalty,
            "max_tokens": p.max_tokens,
            "stop_tokens": list(p.stop),
            "output_generator": llm.model_id,
            "template": p.template,
            "template_sha": template_sha(p.template, self.ctx.base_dir) if p.template else None,
        }
        out = []
        for (row, request), result in zip(prepared, results, strict=True):
            value = answer_value(batch, row, result, p.n, empty_reason="empty_response")
            if value is not None:
                out.append({**row, p.output: value, "gen_response_configs": {**configs, "seed": request.seed}})
        return out
