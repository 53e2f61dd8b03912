"""`personas`: expert personas to write instructions for (PiKa, Yin et al. 2025).

PiKa draws complex expert personas (biology, engineering, medicine, law, ...) from PersonaHub
(Ge et al. 2024) and has a strong model write one knowledge-intensive instruction per persona.
This source stage supplies those personas: a PersonaHub-style JSONL file (a `persona` field per
line), a plain text file with one persona a line, or any table synth's readers take (JSON,
Parquet, CSV, a datasets folder). By default it reads the expert personas that ship with synth
(data/pika/personas.jsonl: persona, domain), written by the synth team.

`domains:` keeps personas whose domain column matches one of the names; `keywords:` keeps those
whose text mentions one of the words (case-insensitive). `count:` draws a seeded sample of that
many (reservoir sampling in one pass, so a PersonaHub file of millions of lines is never held in
memory), kept in file order: the same file and seed give the same rows on every run and resume.
The file goes through the same read policy as every data file a pipeline names.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field

from ...errors import InputError
from ...inputs import data_path, read_problem
from ...readers import _Lines, _open, _reading, detect_format, file_problem, read_rows
from ...seeds import derive_seed
from ..base import CheckEnv, Row, SourceStage, StageParams


class PersonasParams(StageParams):
    path: str = Field(
        "pika/personas.jsonl",
        description="persona file: .jsonl/.json/.parquet/.csv (a `column` field), .txt (one a line), or a "
        "datasets folder (default: the expert personas shipped with synth)",
        json_schema_extra={"reads": "file"},
    )
    format: Literal["auto", "text", "jsonl", "json", "parquet", "csv", "hf"] = Field(
        "auto", description="auto: from the file name (.txt is text, one persona a line)"
    )
    column: str = Field("persona", description="field holding the persona text (PersonaHub: persona)")
    domain_column: str = Field("domain", description="field holding the persona's domain, if the file has one")
    domains: list[str] | None = Field(None, description="keep personas whose domain is one of these (case-insensitive)")
    keywords: list[str] | None = Field(
        None, description="keep personas whose text mentions one of these words (case-insensitive)"
    )
    count: int | None = Field(None, ge=1, description="seeded sample of this many personas (default: all of them)")
    seed: int | None = Field(None, description="seed of the sample (default: from the pipeline seed)")


def _format(params: PersonasParams, path: Path) -> str:
    if params.format != "auto":
        return params.format
    return "text" if path.suffix.lower() == ".txt" else detect_format(path)


def _text_rows(path: Path) -> Iterator[Row]:
    with _reading(path), _open(path) as fh:
        for _, line in _Lines(fh, path):
            if line.strip():
                yield {"persona": line.strip()}


class Personas(SourceStage):
    """Expert personas from a PersonaHub-style file (default: synth's own), filtered and sampled (PiKa)."""

    Params = PersonasParams
    params: PersonasParams

    @classmethod
    def writes(cls, params: PersonasParams) -> list[str]:
        return ["persona", "domain", "persona_index"]

    @classmethod
    def output_columns(cls, params: PersonasParams, env: CheckEnv) -> set[str] | None:
        return set(cls.writes(params))

    @classmethod
    def check(cls, params: PersonasParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        path = data_path(params.path, env.base_dir)
        if path.exists() and read_problem(path, env.base_dir):
            return []  # config reports the read policy for every data file
        fmt = _format(params, path)
        problem = file_problem(path, "jsonl" if fmt == "text" else fmt, env.base_dir)
        if problem:
            return [(("path",), problem)]
        if fmt != "text":
            try:
                first = next(iter(read_rows(path, fmt, peek=True)), None)
            except InputError as exc:
                return [(("path",), str(exc))]
            if first is not None:
                problem = cls._row_problem(params, first, str(path))
                if problem:
                    return [(problem[0], problem[1])]
        return []

    @staticmethod
    def _row_problem(params: PersonasParams, row: Row, source: str) -> tuple[tuple, str] | None:
        if params.column not in row:
            have = ", ".join(map(str, row)) or "none"
            message = f"{source}: no field '{params.column}' (it has: {have}); set column: to the persona field"
            return ("column",), message
        if params.domains and params.domain_column not in row:
            return ("domains",), (
                f"{source}: no field '{params.domain_column}' to filter domains on; set domain_column: or use keywords:"
            )
        return None

    # ---- rows ----
    def _rows(self) -> Iterator[Row]:
        p = self.params
        path = data_path(p.path, self.ctx.base_dir)
        fmt = _format(p, path)
        problem = read_problem(path, self.ctx.base_dir) or file_problem(
            path, "jsonl" if fmt == "text" else fmt, self.ctx.base_dir
        )
        if problem:
            raise InputError(f"stage '{self.ctx.label}': {problem}")
        rows = _text_rows(path) if fmt == "text" else read_rows(path, fmt)
        domains = {d.strip().lower() for d in p.domains or []}
        keywords = [k.strip().lower() for k in p.keywords or [] if k.strip()]
        for index, row in enumerate(rows):
            problem = self._row_problem(p, row, f"{path} (row {index + 1})")
            if problem:
                raise InputError(f"stage '{self.ctx.label}': {problem[1]}")
            text = str(row[p.column] or "").strip()
            domain = row.get(p.domain_column)
            domain = None if domain is None else str(domain)
            if not text:
                continue
            if domains and (domain or "").strip().lower() not in domains:
                continue
            if keywords and not any(k in text.lower() for k in keywords):
                continue
            yield {"persona": text, "domain": domain, "persona_index": index}

    @cached_property
    def _selected(self) -> list[Row]:
        """The rows this stage gives, computed once: every match, or a seeded reservoir sample."""
        p = self.params
        if p.count is None:
            chosen = list(self._rows())
        else:
            rng = random.Random(p.seed if p.seed is not None else derive_seed(self.ctx.seed, self.ctx.label))
            chosen = []
            for seen, row in enumerate(self._rows()):
                if seen < p.count:
                    chosen.append(row)
                else:
                    slot = rng.randrange(seen + 1)
                    if slot < p.count:
                        chosen[slot] = row
            chosen.sort(key=lambda r: r["persona_index"])
        if not chosen:
            raise InputError(
                f"stage '{self.ctx.label}': no persona in {p.path} matches the domains:/keywords: given; widen them"
            )
        return chosen

    def total_rows(self, limit: int | None) -> int | None:
        total = len(self._selected)
        return total if limit is None else min(total, limit)

    def iter_rows(self, limit: int | None) -> Iterator[Row]:
        rows = self._selected
        yield from rows if limit is None else rows[:limit]
