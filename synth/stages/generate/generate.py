"""`generate`: one LLM call per row, its answer into a column.

The prompt is a template rendered with the row (or a column holding the prompt). `mode: complete`
sends raw text (base models, Magpie-style prompting); `mode: chat` sends the prompt as the user
turn through the model's chat template, after an optional system prompt."""

from __future__ import annotations

from typing import Literal

import jinja2
from pydantic import Field, model_validator

from ...llm.base import Request
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LLMParams, add_provenance, answer_value, check_template, template_sha


class GenerateParams(LLMParams):
    template: str | None = Field(None, description="prompt template rendered with the row's columns")
    prompt_column: str | None = Field(None, description="column holding a ready prompt (instead of template)")
    output: str = Field(description="column for the answer (a list when n > 1)")
    mode: Literal["complete", "chat"] = "complete"
    system: str | None = Field(None, description="system prompt (chat mode)")
    strip: bool = Field(True, description="strip whitespace around answers")
    drop_empty: bool = Field(True, description="drop rows whose answer is empty (counted as a failure)")

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.template is None) == (self.prompt_column is None):
            raise ValueError("give exactly one of 'template' or 'prompt_column'")
        return self


class Generate(MapStage):
    """Ask the LLM once per row (a prompt template or prompt column) and store the answer."""

    Params = GenerateParams
    params: GenerateParams

    @classmethod
    def reads(cls, params: GenerateParams) -> list[str]:
        return [params.prompt_column] if params.prompt_column else []

    @classmethod
    def single_columns(cls, params: GenerateParams) -> set[str]:
        return {params.output} if params.n == 1 else set()

    @classmethod
    def writes(cls, params: GenerateParams) -> list[str]:
        return [params.output, "provenance"]

    @classmethod
    def check(cls, params: GenerateParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        return check_template(params.template, "template", env, {"row"}) if params.template else []

    def _prompt(self, row: Row) -> str:
        if self.params.prompt_column:
            return str(row[self.params.prompt_column])
        return render(self.params.template, self.ctx.base_dir, **row, row=row)  # type: ignore[arg-type]

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        sampling = p.sampling()
        prepared: list[tuple[Row, Request]] = []
        for row in batch.rows:
            try:
                prompt = self._prompt(row)
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
                continue
            seed = self.ctx.seed_for(prompt)
            if p.mode == "chat":
                messages = ((("system", p.system),) if p.system else ()) + (("user", prompt),)
                prepared.append((row, Request(sampling, seed, messages=messages)))
            else:
                prepared.append((row, Request(sampling, seed, prompt=prompt)))
        call = llm.chat if p.mode == "chat" else llm.complete
        results = await call([r for _, r in prepared])
        provenance = {
            "stage": "generate",
            "model": llm.model_id,
            "mode": p.mode,
            "template": p.template,
            "template_sha": template_sha(p.template, self.ctx.base_dir) if p.template else None,
            **sampling.model_dump(mode="json"),
        }
        out = []
        for (row, request), result in zip(prepared, results, strict=True):
            value = answer_value(batch, row, result, p.n, strip=p.strip, drop_empty=p.drop_empty)
            if value is not None:
                record = {**provenance, "seed": request.seed}
                out.append(add_provenance({**row, p.output: value}, self.ctx.label, record))
        return out
