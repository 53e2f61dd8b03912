"""`load`: rows from a file, a folder, a Hugging Face dataset on disk, or a list in the YAML.

Rows stream in file order (never all in memory), so batch i is the same rows on every run and a
resumed run lines up with the shards it already wrote.

The file may be a stranger's choice, and `{{ row }}` sends whatever is loaded to a server: a path
is read only where inputs.read_problem allows (the pipeline's folder and the working directory,
links resolved, or a folder given with --allow-read), and only a regular file, or a folder of them
for the folder formats (never /dev/zero, a FIFO or a socket). Every fault of an input is one
InputError naming the file, the line where there is one, and the fix; `synth validate` reads the
first MB of each file the same way, so most faults are found before a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ...errors import InputError
from ...inputs import read_problem
from ...readers import (
    RESERVED,
    count_rows,
    detect_format,
    file_problem,
    input_path,
    iter_jsonl,
    parquet_columns,
    read_checked,
    read_rows,
)
from ..base import CheckEnv, Row, SourceStage, StageParams


class LoadParams(StageParams):
    path: str | None = Field(
        None,
        description="file or folder: .jsonl, .json, .parquet, .csv, or a datasets folder",
        json_schema_extra={"reads": "file"},
    )
    rows: list[dict[str, Any]] | None = Field(None, description="rows given inline in the pipeline file")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "hf"] = "auto"
    split: str = Field("train", description="split to read from a Hugging Face dataset folder")
    columns: list[str] | None = Field(None, description="keep only these columns")
    rename: dict[str, str] = Field(default_factory=dict, description="old name -> new name")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.rows is None):
            raise ValueError("give exactly one of 'path' (a file or folder) or 'rows' (a list of mappings)")
        return self


def _format(params: LoadParams, path: Path) -> str:
    return params.format if params.format != "auto" else detect_format(path)


# ---- what may be read ----


def _foreign_provenance(value: Any) -> bool:
    """Whether a `provenance` value is not synth's own record ({stage: {...}}, from an earlier run)."""
    if value is None:
        return False
    return not (isinstance(value, dict) and all(v is None or isinstance(v, dict) for v in value.values()))


def shaped(params: LoadParams, rows: Iterable[Row], source: str) -> Iterator[Row]:
    """Rows with `columns` and `rename` applied; a row without a listed column, or with a
    `provenance` that is not synth's, is an error."""
    for number, row in enumerate(rows, start=1):
        if params.columns is not None:
            missing = [c for c in params.columns if c not in row]
            if missing:
                raise InputError(
                    f"{source}: row {number} has no column(s) {', '.join(missing)} (it has: {', '.join(row)}); "
                    "fix the input or columns:"
                )
            row = {c: row[c] for c in params.columns}
        if params.rename:
            row = {params.rename.get(k, k): v for k, v in row.items()}
        if RESERVED in row and _foreign_provenance(row[RESERVED]):
            raise InputError(
                f"{source}: row {number} has a column '{RESERVED}', a name synth keeps for the record of what "
                f"made each row; rename it, e.g. rename: {{{RESERVED}: source_{RESERVED}}}"
            )
        yield row


class Load(SourceStage):
    """Read rows from JSONL, JSON, Parquet, CSV, a Hugging Face dataset folder, or an inline list."""

    Params = LoadParams
    params: LoadParams

    @classmethod
    def check(cls, params: LoadParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        if params.path is None:
            return cls._peek_problem(params, params.rows or [], "the rows given inline", "rows")
        path = input_path(params.path, env.base_dir)
        if path.exists() and read_problem(path, env.base_dir):
            return []  # config reports it, as for every file a stage reads; nothing of it is read
        fmt = _format(params, path)
        problem = file_problem(path, fmt, env.base_dir)
        if problem:
            return [(("path",), problem)]
        return cls._peek_problem(params, read_rows(path, fmt, params.split, peek=True), str(path), "path")

    @staticmethod
    def _peek_problem(params: LoadParams, rows: Iterable[Row], source: str, field: str) -> list[tuple[tuple, str]]:
        try:
            for _ in shaped(params, rows, source):
                pass
        except InputError as exc:
            return [((field,), str(exc))]
        return []

    @classmethod
    def output_columns(cls, params: LoadParams, env: CheckEnv) -> set[str] | None:
        if params.columns is not None:
            names = set(params.columns)
        elif params.rows is not None:
            names = set().union(*(r.keys() for r in params.rows)) if params.rows else set()
        else:
            path = input_path(params.path, env.base_dir)  # type: ignore[arg-type]
            fmt = _format(params, path)
            if fmt not in ("jsonl", "parquet") or read_problem(path, env.base_dir):
                return None
            try:
                if file_problem(path, fmt, env.base_dir):
                    return None
                if fmt == "parquet":
                    names = set(parquet_columns(path))
                else:
                    first = next(iter_jsonl(path, peek=True), None)
                    if first is None:  # an empty file, or a first line longer than the peek: unknown
                        return None
                    names = set(first)
            except (InputError, OSError):
                return None
        return {params.rename.get(n, n) for n in names}

    def _source(self) -> str:
        return str(input_path(self.params.path, self.ctx.base_dir)) if self.params.path else "the inline rows"

    def _raw(self) -> Iterator[Row]:
        p = self.params
        if p.rows is not None:
            yield from (dict(r) for r in p.rows)
            return
        path = input_path(p.path, self.ctx.base_dir)  # type: ignore[arg-type]
        yield from read_checked(path, self.ctx.base_dir, _format(p, path), p.split, f"stage '{self.ctx.label}'")

    def total_rows(self, limit: int | None) -> int | None:
        p = self.params
        if p.rows is not None:
            total = len(p.rows)
        else:
            path = input_path(p.path, self.ctx.base_dir)  # type: ignore[arg-type]
            total = count_rows(path, _format(p, path))
        return total if total is None or limit is None else min(total, limit)

    def iter_rows(self, limit: int | None) -> Iterator[Row]:
        yield from shaped(self.params, islice(self._raw(), limit), self._source())
