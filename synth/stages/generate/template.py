"""`template`: render a Jinja template from templates/ (or beside the pipeline) into a column.

Each row's columns are the template's variables, and `row` is the whole row."""

from __future__ import annotations

import jinja2
from pydantic import Field

from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row, StageParams
from ..common import check_template


class TemplateParams(StageParams):
    template: str = Field(description="template file name, e.g. quickstart/question.jinja")
    output: str = Field(description="column to write the rendered text to")


class Template(MapStage):
    """Render a sandboxed Jinja template per row into a column."""

    Params = TemplateParams
    params: TemplateParams

    @classmethod
    def writes(cls, params: TemplateParams) -> list[str]:
        return [params.output]

    @classmethod
    def check(cls, params: TemplateParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        return check_template(params.template, "template", env, {"row"})

    async def process(self, batch: Batch) -> list[Row]:
        out = []
        for row in batch.rows:
            try:
                text = render(self.params.template, self.ctx.base_dir, **row, row=row)
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
                continue
            out.append({**row, self.params.output: text})
        return out
