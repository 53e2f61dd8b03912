"""`load`: rows from a file, a folder, a Hugging Face dataset on disk, or a list in the YAML.

Rows stream in file order (never all in memory), so batch i is the same rows on every run and a
resumed run lines up with the shards it already wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..errors import InputError, MissingDependency
from .base import CheckEnv, Row, Stage, StageParams

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")


class LoadParams(StageParams):
    path: str | None = Field(None, description="file or folder: .jsonl, .json, .parquet, .csv, or a datasets folder")
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


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "dataset_dict.json").exists()
            or any(path.glob("*/dataset_info.json"))
        ):
            return "hf"
        if any(path.glob("*.parquet")):
            return "parquet"
        return "hf"
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    return {
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".jsonl.gz": "jsonl",
        ".json": "json",
        ".parquet": "parquet",
        ".csv": "csv",
    }.get(suffix.lower(), "jsonl")


def _iter_jsonl(path: Path) -> Iterator[Row]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
            yield row


def _iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]
    for file in files:
        for record_batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
            yield from record_batch.to_pylist()


def _iter_hf(path: Path, split: str) -> Iterator[Row]:
    try:
        import datasets
    except ImportError:
        raise MissingDependency("datasets", "hub", "Loading a Hugging Face dataset") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        loaded = datasets.load_dataset(str(path), split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(f"{path} has no split '{split}' (it has: {', '.join(loaded)}); set split:")
        loaded = loaded[split]
    yield from loaded


class Load(Stage):
    """Read rows from JSONL, JSON, Parquet, CSV, a Hugging Face dataset folder, or an inline list."""

    Params = LoadParams
    kind = "source"
    params: LoadParams

    @classmethod
    def check(cls, params: LoadParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        if params.path is None:
            return []
        path = Path(params.path).expanduser()
        path = path if path.is_absolute() else env.base_dir / path
        if not path.exists():
            return [(("path",), f"{path} does not exist (paths are relative to the pipeline file)")]
        return []

    @classmethod
    def output_columns(cls, params: LoadParams, env: CheckEnv) -> set[str] | None:
        if params.columns is not None:
            names = set(params.columns)
        elif params.rows is not None:
            names = set().union(*(r.keys() for r in params.rows)) if params.rows else set()
        else:
            try:
                path = Path(params.path).expanduser()  # type: ignore[arg-type]
                path = path if path.is_absolute() else env.base_dir / path
                fmt = params.format if params.format != "auto" else detect_format(path)
                if fmt not in ("jsonl", "parquet"):
                    return None
                first = next(iter(_iter_jsonl(path) if fmt == "jsonl" else _iter_parquet(path)), {})
                names = set(first)
            except Exception:
                return None
        return {params.rename.get(n, n) for n in names}

    def _path(self) -> Path:
        return self.ctx.resolve(self.params.path)  # type: ignore[arg-type]

    def _raw(self) -> Iterator[Row]:
        p = self.params
        if p.rows is not None:
            yield from (dict(r) for r in p.rows)
            return
        path = self._path()
        if not path.exists():
            raise InputError(f"{path} does not exist")
        fmt = p.format if p.format != "auto" else detect_format(path)
        if fmt == "jsonl":
            yield from _iter_jsonl(path)
        elif fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise InputError(f"{path}: a .json input must hold a list of objects (use .jsonl for one per line)")
            yield from data
        elif fmt == "parquet":
            yield from _iter_parquet(path)
        elif fmt == "csv":
            import csv

            with open(path, newline="", encoding="utf-8") as fh:
                yield from csv.DictReader(fh)
        else:
            yield from _iter_hf(path, p.split)

    def iter_rows(self, limit: int | None) -> Iterator[Row]:
        p = self.params
        for row in islice(self._raw(), limit):
            if p.columns is not None:
                missing = [c for c in p.columns if c not in row]
                if missing:
                    raise InputError(f"input row has no column(s) {', '.join(missing)} (it has: {', '.join(row)})")
                row = {c: row[c] for c in p.columns}
            if p.rename:
                row = {p.rename.get(k, k): v for k, v in row.items()}
            yield row
