"""`skill_draw`: the examples Instruct-SkillMix generates, each a random set of k skills and one
query type (Kaur et al. 2024; princeton-pli/Instruct-SkillMix, 1_generate_data.py).

The authors' scheme, reproduced draw for draw: a NumPy legacy generator seeded once; for each
example the whole skill list is shuffled and its first k skills taken (so a skill may appear in
many examples and a pair can repeat); then the query types are tiled (doubled until there are
as many as examples), shuffled, and cut to one per example; finally each example's k skills are
shuffled among themselves before they are joined into the prompt. With `seed: 42` and the same
lists it gives the authors' draws.

Skills and query types come from the rows arriving here, the output of a `skills` or
`skills_from_data` stage (`kind`, `name`, `definition`, `count`); a kind the rows do not give comes
from `skills_file` / `queries_file` in the authors' formats (default: the starter lists shipped in
data/skillmix/). This stage replaces its input with `count` example rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from ...errors import SynthError
from ...inputs import data_path
from ...seeds import derive_seed
from ...shards import Rows
from ...skillfiles import QueryType, read_queries, read_skills
from ..base import Batch, CheckEnv, GlobalStage, StageParams
from ..common import add_provenance

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ["id", "skills", "query_type", "query_definition"]


class SkillDrawParams(StageParams):
    count: int = Field(
        1000,
        ge=1,
        le=10_000_000,
        description="examples to draw (the paper's SFT sets: 1,000 and 4,000); a run with --limit N keeps the first N",
    )
    k: int = Field(2, ge=1, le=20, description="skills per example (the paper's default: 2)")
    seed: int | None = Field(None, description="a fixed seed (the authors': 42); default: from the pipeline seed")
    min_count: int = Field(1, ge=1, description="use only skills and query types extracted at least this many times")
    skills_file: str | None = Field(
        "skillmix/skills.txt",
        description="skills, one snake_case name a line, used when the rows arriving give none",
        json_schema_extra={"reads": "file"},
    )
    queries_file: str | None = Field(
        "skillmix/queries.txt",
        description="query types ('### n. **Name**' + definition), used when the rows arriving give none",
        json_schema_extra={"reads": "file"},
    )


def draw(
    skills: list[str], queries: list[QueryType], count: int, k: int, seed: int
) -> list[tuple[list[str], QueryType]]:
    """`count` (skills, query type) draws by the authors' scheme (module docstring)."""
    import numpy as np

    if len(skills) < k:
        raise SynthError(f"cannot draw {k} skills per example from a list of {len(skills)}: lower k or add skills")
    if not queries:
        raise SynthError("no query types to draw from: give queries_file or extract query types")
    rng = np.random.RandomState(seed % 2**32)
    pool = list(skills)
    combos = []
    for _ in range(count):
        rng.shuffle(pool)
        combos.append(pool[:k])
    tiled = list(queries)
    while len(tiled) < count:
        tiled += tiled
    rng.shuffle(tiled)
    for combo in combos:
        rng.shuffle(combo)
    return list(zip(combos, tiled[:count], strict=True))


class SkillDraw(GlobalStage):
    """Draw k random skills and a query type per example (Instruct-SkillMix); replaces the rows."""

    Params = SkillDrawParams
    params: SkillDrawParams

    @classmethod
    def writes(cls, params: SkillDrawParams) -> list[str]:
        return list(COLUMNS)

    @classmethod
    def output_columns(cls, params: SkillDrawParams, env: CheckEnv) -> set[str] | None:
        return set(COLUMNS) | {"provenance"}

    @classmethod
    def check(cls, params: SkillDrawParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        problems = []
        for field in ("skills_file", "queries_file"):
            name = getattr(params, field)
            if name and not data_path(name, env.base_dir).is_file():
                problems.append(((field,), f"file '{name}' not found (relative to the pipeline file or synth's data/)"))
        if env.columns is not None and "kind" not in env.columns:
            for field, what in (("skills_file", "skills"), ("queries_file", "query types")):
                if getattr(params, field) is None:
                    problems.append(
                        ((field,), f"no earlier stage gives {what} (a `kind` column): set {field} to a list file")
                    )
        return problems

    def _lists(self, table: pa.Table) -> tuple[list[str], list[QueryType], dict]:
        p = self.params
        skills: list[str] = []
        queries: list[QueryType] = []
        if "kind" in table.column_names and "name" in table.column_names:
            names = [c for c in ("kind", "name", "definition", "count") if c in table.column_names]
            for row in table.select(names).to_pylist():
                if (row.get("count") or 1) < p.min_count or not row.get("name"):
                    continue
                if row["kind"] == "skill":
                    skills.append(str(row["name"]))
                elif row["kind"] == "query_type":
                    queries.append(QueryType(str(row["name"]), str(row.get("definition") or "")))
        where = {"skills": "rows", "query_types": "rows"}
        if not skills:
            if p.skills_file is None:
                raise SynthError(f"stage '{self.ctx.label}': the rows give no skills and skills_file is null")
            where["skills"] = p.skills_file
            skills = read_skills(data_path(p.skills_file, self.ctx.base_dir))
        if not queries:
            if p.queries_file is None:
                raise SynthError(f"stage '{self.ctx.label}': the rows give no query types and queries_file is null")
            where["query_types"] = p.queries_file
            queries = read_queries(data_path(p.queries_file, self.ctx.base_dir))
        return skills, queries, where

    async def process_all(self, rows: Rows, batch: Batch) -> pa.Table:
        import pyarrow as pa

        table = rows.table()  # the whole input in memory: a few thousand instructions at most
        p = self.params
        skills, queries, where = self._lists(table)
        seed = p.seed if p.seed is not None else derive_seed(self.ctx.seed, self.ctx.label)
        try:
            draws = draw(skills, queries, p.count, p.k, seed)
            if self.ctx.limit is not None:  # a trial run (--limit): the first examples of the full draw
                draws = draws[: self.ctx.limit]
        except SynthError as exc:
            raise SynthError(f"stage '{self.ctx.label}': {exc}") from None
        record = {
            "stage": "skill_draw",
            "seed": seed,
            "k": p.k,
            "skills_from": where["skills"],
            "query_types_from": where["query_types"],
            "skills_available": len(skills),
            "query_types_available": len(queries),
        }
        batch.count("skills_available", len(skills))
        batch.count("query_types_available", len(queries))
        rows = [
            add_provenance(
                {"id": i, "skills": combo, "query_type": query.name, "query_definition": query.definition},
                self.ctx.label,
                record,
            )
            for i, (combo, query) in enumerate(draws)
        ]
        return pa.Table.from_pylist(rows)
