"""`skills_from_data`: Instruct-SkillMix's skill list extracted from an existing dataset (Kaur et
al. 2024, the seed-dataset-dependent variant, "SDD", after Didolkar et al. 2024's skill labelling):
the model names the skills each instruction needs; the names are normalized to snake_case,
counted over the dataset, near duplicates merged by embedding similarity
(synth/stages/skillmix/extraction.py), and the stage's output is the skill list, one row per skill
(`kind: skill`, `name`, `count`: instructions that needed it, `aliases`).

Query types are not extracted here: `skill_draw` reads them from its `queries_file` (or put a
`skills` stage's query types in front of it in another pipeline). An instruction whose answer
names no skill after `parse_retries` more rounds fails with the raw answers; a global stage, it
waits for every row of the stage before it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import Field

from ...llm.base import Request, RequestFailed
from ...shards import Rows
from ...templating import render
from ..base import Batch, CheckEnv, GlobalStage
from ..common import add_provenance, auto_mode, check_template, retry_sampling, template_sha
from .extraction import ExtractParams, merge, open_tail, parse_skill_list

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ["kind", "name", "definition", "count", "aliases"]


class SkillsFromDataParams(ExtractParams):
    input: str = Field("instruction", description="column holding the instructions")
    max_skills: int = Field(5, ge=1, le=50, description="names kept per instruction (the first ones)")
    max_tokens: int = 128


class SkillsFromData(GlobalStage):
    """Name the skills each instruction needs and merge them into a skill list (Instruct-SkillMix SDD)."""

    Params = SkillsFromDataParams
    params: SkillsFromDataParams

    @classmethod
    def reads(cls, params: SkillsFromDataParams) -> list[str]:
        return [params.input]

    @classmethod
    def writes(cls, params: SkillsFromDataParams) -> list[str]:
        return list(COLUMNS)

    @classmethod
    def output_columns(cls, params: SkillsFromDataParams, env: CheckEnv) -> set[str] | None:
        return {*COLUMNS, "provenance"}

    @classmethod
    def check(cls, params: SkillsFromDataParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        problems = []
        for suffix in ("", "_few_shot"):
            problems += check_template(
                f"{params.template_dir}/from_data{suffix}.jinja", "template_dir", env, {"row", "instruction"}
            )
        return problems

    async def open(self) -> None:
        p = self.params
        llm = self.ctx.llm(p.backend)
        self.mode = p.mode if p.mode != "auto" else await asyncio.to_thread(auto_mode, llm.backend, self.ctx.label)
        self.template = f"{p.template_dir}/from_data{'_few_shot' if self.mode == 'complete' else ''}.jinja"

    async def process_all(self, rows: Rows, batch: Batch) -> pa.Table:
        import pyarrow as pa

        table = rows.table()  # the whole input in memory: a few thousand instructions at most
        p = self.params
        llm = self.ctx.llm(p.backend)
        call = llm.complete if self.mode == "complete" else llm.chat
        rows = table.to_pylist()
        named: dict[int, list[str]] = {}
        raw: dict[int, list[str]] = {i: [] for i in range(len(rows))}
        pending = [i for i, r in enumerate(rows) if r.get(p.input) is not None]
        for i in set(range(len(rows))) - set(pending):
            batch.fail(rows[i], "no_instruction", f"column '{p.input}' is empty")
        prompts = {
            i: render(self.template, self.ctx.base_dir, **{**rows[i], "row": rows[i], "instruction": rows[i][p.input]})
            for i in pending
        }
        for attempt in range(p.parse_retries + 1):
            if not pending:
                break
            if attempt:
                batch.count("parse_retried", len(pending))
            sampling = retry_sampling(p.sampling(), attempt, p.retry_temperature)
            if self.mode == "complete":
                sampling = sampling.model_copy(update={"stop": (*sampling.stop, "\n\n")})
            requests = []
            for i in pending:
                seed = self.ctx.seed_for(prompts[i], attempt)
                if self.mode == "complete":
                    requests.append(Request(sampling, seed, prompt=prompts[i]))
                else:
                    requests.append(Request(sampling, seed, messages=(("user", prompts[i]),)))
            results = await call(requests)
            still = []
            for i, request, result in zip(pending, requests, results, strict=True):
                if isinstance(result, RequestFailed):
                    batch.fail(rows[i], f"request_failed:{result.reason}", result.detail)
                    continue
                text = result[0].text
                raw[i].append(text)
                if self.mode == "complete":
                    text = open_tail(request.prompt or "") + text
                names = parse_skill_list(text, limit=p.max_skills)
                if names:
                    named[i] = names
                else:
                    still.append(i)
            pending = still
        for i in pending:
            batch.fail(rows[i], "parse_failed", "raw answers: " + repr(raw[i])[:4000])
        counts: dict[str, int] = {}
        for i in sorted(named):
            for name in named[i]:
                counts[name] = counts.get(name, 0) + 1
        merged = await asyncio.to_thread(merge, counts, p.merge_threshold, p.embed_model)
        record = {
            "stage": "skills_from_data",
            "model": llm.model_id,
            "mode": self.mode,
            "template": self.template,
            "template_sha": template_sha(self.template, self.ctx.base_dir),
            "instructions": len(named),
            "merge_threshold": p.merge_threshold,
            "embed_model": p.embed_model if p.merge_threshold is not None else None,
            **p.sampling().model_dump(mode="json"),
        }
        out = [
            add_provenance(
                {"kind": "skill", "name": name, "definition": None, "count": count, "aliases": aliases},
                self.ctx.label,
                record,
            )
            for name, count, aliases in merged
            if count >= p.min_count
        ]
        batch.count("skills_named", sum(counts.values()))
        return pa.Table.from_pylist(out) if out else pa.table({c: pa.array([], pa.string()) for c in COLUMNS})
