"""`skills`: the skill list and query types of Instruct-SkillMix, by prompting the model itself
(Kaur et al. 2024, the seed-dataset-agnostic variant, "SDA", the paper's headline): the model lists
the skills an assistant needs for instruction following in general (or for a `domain`) and the
types of queries people send, the "LLM metacognition" of Didolkar et al. 2024.

The authors released the resulting lists but not the extraction prompts; ours (templates/skills/)
ask for snake_case names and for query types in the authors' `### n. **Name**` format. `rounds`
seeded requests are made for each list; names are normalized to snake_case, counted over the
rounds, and near duplicates merged by embedding similarity (synth/stages/skillmix/extraction.py).

`method: file` reads the lists instead (`skills_file`, `queries_file`, in the authors' formats):
the way to use the authors' released lists or your own.

A source stage: its one input row is the extraction task, and its output has one row per skill
(`kind: skill`) and per query type (`kind: query_type`), with `name`, `definition` (query types),
`count` (rounds that named it, with its aliases) and `aliases`; `skill_draw` draws from them and
synth.skillfiles.write_run_lists writes them back out in the authors' formats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from ...inputs import data_path
from ...llm.base import Request, RequestFailed
from ...skillfiles import read_queries, read_skills
from ...templating import render
from ..base import Batch, CheckEnv, Row, SourceStage
from ..common import add_provenance, auto_mode, check_template, retry_sampling, template_sha
from .extraction import ExtractParams, merge, open_tail, parse_query_list, parse_skill_list

COLUMNS = ["kind", "name", "definition", "count", "aliases"]
KINDS = {"skill": "skills", "query_type": "query_types"}  # row kind -> template name


class SkillsParams(ExtractParams):
    method: Literal["prompt", "file"] = Field("prompt", description="prompt: ask the model (SDA); file: read the lists")
    domain: str | None = Field(None, description="the area to list skills for (default: instruction following)")
    rounds: int = Field(5, ge=1, le=10_000, description="seeded requests for each list, merged")
    query_types: bool = Field(True, description="also list query types (else skill_draw reads queries_file)")
    skills_file: str | None = Field(
        None, description="method file: skills, one snake_case name a line", json_schema_extra={"reads": "file"}
    )
    queries_file: str | None = Field(
        None,
        description="method file: query types, '### n. **Name**' + definition",
        json_schema_extra={"reads": "file"},
    )


class Skills(SourceStage):
    """List the skills and query types of instruction following by prompting the model (Instruct-SkillMix SDA)."""

    Params = SkillsParams
    params: SkillsParams

    @classmethod
    def backend_names(cls, params: SkillsParams) -> list[str]:
        return [params.backend] if params.method == "prompt" else []

    @classmethod
    def writes(cls, params: SkillsParams) -> list[str]:
        return [*COLUMNS, "domain"]

    @classmethod
    def output_columns(cls, params: SkillsParams, env: CheckEnv) -> set[str] | None:
        return {*COLUMNS, "domain", "provenance"}

    @classmethod
    def check(cls, params: SkillsParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        p, problems = params, []
        if p.method == "file":
            if not p.skills_file and not p.queries_file:
                problems.append((("skills_file",), "method file reads the lists: set skills_file and/or queries_file"))
            for field in ("skills_file", "queries_file"):
                name = getattr(p, field)
                if name and not data_path(name, env.base_dir).is_file():
                    problems.append(
                        ((field,), f"file '{name}' not found (beside the pipeline file or in synth's data/)")
                    )
            return problems
        for field in ("skills_file", "queries_file"):
            if getattr(p, field):
                problems.append(((field,), f"{field} is for method: file (this stage has method: prompt)"))
        variables = {"domain", "round", "rounds", "row"}
        for kind in ("skills", "query_types") if p.query_types else ("skills",):
            for suffix in ("", "_few_shot"):
                problems += check_template(f"{p.template_dir}/{kind}{suffix}.jinja", "template_dir", env, variables)
        return problems

    def total_rows(self, limit: int | None) -> int | None:
        return 0 if limit == 0 else 1

    def iter_rows(self, limit: int | None) -> Iterator[Row]:
        if limit != 0:
            yield {"domain": self.params.domain or "instruction following"}

    async def open(self) -> None:
        p = self.params
        self.mode = "file"
        if p.method == "prompt":
            llm = self.ctx.llm(p.backend)
            self.mode = p.mode if p.mode != "auto" else await asyncio.to_thread(auto_mode, llm.backend, self.ctx.label)

    async def process(self, batch: Batch) -> list[Row]:
        out: list[Row] = []
        for row in batch.rows:
            found = self._from_files() if self.params.method == "file" else await self._ask(row, batch)
            if not any(r["kind"] == "skill" for r in found) and (self.params.method == "prompt" or not found):
                batch.fail(row, "no_skills", "no round listed a skill name that parsed (see the parse_failed count)")
                continue
            out += [{**r, "domain": row["domain"]} for r in found]
        return out

    def _from_files(self) -> list[Row]:
        p, rows = self.params, []
        record = {"stage": "skills", "method": "file", "skills_file": p.skills_file, "queries_file": p.queries_file}
        if p.skills_file:
            for name in read_skills(data_path(p.skills_file, self.ctx.base_dir)):
                rows.append({"kind": "skill", "name": name, "definition": None, "count": 1, "aliases": []})
        if p.queries_file:
            for q in read_queries(data_path(p.queries_file, self.ctx.base_dir)):
                row = {"kind": "query_type", "name": q.name, "definition": q.definition, "count": 1, "aliases": []}
                rows.append(row)
        return [add_provenance(r, self.ctx.label, record) for r in rows]

    async def _ask(self, row: Row, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        call = llm.complete if self.mode == "complete" else llm.chat
        kinds = ["skill", "query_type"] if p.query_types else ["skill"]
        suffix = "_few_shot" if self.mode == "complete" else ""
        templates = {k: f"{p.template_dir}/{KINDS[k]}{suffix}.jinja" for k in kinds}
        answers: dict[tuple[str, int], list] = {}
        pending = [(k, r) for k in kinds for r in range(p.rounds)]
        seeds: dict[str, list[int]] = {k: [] for k in kinds}
        for attempt in range(p.parse_retries + 1):
            if not pending:
                break
            if attempt:
                batch.count("parse_retried", len(pending))
            sampling = retry_sampling(p.sampling(), attempt, p.retry_temperature)
            requests = []
            for kind, r in pending:
                variables = {"domain": row["domain"], "round": r, "rounds": p.rounds, "row": row}
                prompt = render(templates[kind], self.ctx.base_dir, **variables)
                seed = self.ctx.seed_for(kind, row["domain"], r, attempt)
                seeds[kind].append(seed)
                if self.mode == "complete":  # a list of names ends at a blank line, query types span several
                    stop = (*sampling.stop, "\n\n" if kind == "skill" else "\n\n\n")
                    requests.append(Request(sampling.model_copy(update={"stop": stop}), seed, prompt=prompt))
                else:
                    requests.append(Request(sampling, seed, messages=(("user", prompt),)))
            results = await call(requests)
            still = []
            for (kind, r), request, result in zip(pending, requests, results, strict=True):
                if isinstance(result, RequestFailed):
                    continue
                text = result[0].text
                if self.mode == "complete":  # the list the prompt leaves open
                    text = open_tail(request.prompt or "", "\n###" if kind == "query_type" else "\n") + text
                parsed = parse_skill_list(text) if kind == "skill" else parse_query_list(text)
                if parsed:
                    answers[(kind, r)] = parsed
                else:
                    still.append((kind, r))
            pending = still
        if pending:
            batch.count("parse_failed", len(pending))
        return await asyncio.to_thread(self._merged, kinds, answers, templates, seeds, llm.model_id)

    def _merged(self, kinds, answers, templates, seeds, model: str) -> list[Row]:
        p, rows = self.params, []
        for kind in kinds:
            counts: dict[str, int] = {}
            definitions: dict[str, str] = {}
            for (k, _), items in sorted(answers.items(), key=lambda kv: kv[0][1]):
                if k != kind:
                    continue
                for item in items:
                    name = item if kind == "skill" else item.name
                    counts[name] = counts.get(name, 0) + 1
                    if kind == "query_type":
                        definitions.setdefault(name, item.definition)
            record = {
                "stage": "skills",
                "method": "prompt",
                "model": model,
                "mode": self.mode,
                "template": templates[kind],
                "template_sha": template_sha(templates[kind], self.ctx.base_dir),
                "rounds": p.rounds,
                "seeds": seeds[kind],
                "merge_threshold": p.merge_threshold,
                "embed_model": p.embed_model if p.merge_threshold is not None else None,
                **p.sampling().model_dump(mode="json"),
            }
            for name, count, aliases in merge(counts, p.merge_threshold, p.embed_model):
                if count >= p.min_count:
                    definition = definitions.get(name) if kind == "query_type" else None
                    row = {"kind": kind, "name": name, "definition": definition, "count": count, "aliases": aliases}
                    rows.append(add_provenance(row, self.ctx.label, record))
        return rows
