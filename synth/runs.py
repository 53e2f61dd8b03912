"""Reading a run directory, finished or still running: the one place `export`, `report`, `inspect`
and `push` read a run from.

    run = Run("runs/magpie")
    run.manifest, run.status         the manifest, and the status as it is now ("interrupted")
    run.stages(), run.stage("dedup") the stage folders in order, one by its label
    run.check()                      every file against its marker (synth/integrity.py), once
    run.rows("dedup"), run.rows()    a stage's rows or the output's, read lazily (`RowFiles`)
    run.output()                     the final dataset's files (a RunError before the run wrote it)
    run.iter_dropped("dedup")        the rows a stage dropped, with why, each row resolved

None of it imports the runner: reading a run needs only the files the runner left (synth/store.py
lays them out and writes them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunError
from .integrity import Part, RunCheck, require_intact, stage_dirs
from .parquet import DEFAULT_CHUNK_ROWS, concat, footer, iter_chunks, read_parquet, unify
from .store import RunStore, StageDir

if TYPE_CHECKING:
    import polars as pl

# Dropped records resolved at a time: the rows a global stage dropped are read by position from the
# stage before, a batch of positions in one pass.
DROPPED_BATCH = 4096


def text_type(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def number_type(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _scalar(kind: pa.DataType) -> bool:
    return text_type(kind) or number_type(kind)


class RowFiles:
    """The rows of a stage or of the output, spread over Parquet files, read lazily."""

    def __init__(self, parts: list[Part]):
        self.parts = parts
        self.offsets = np.cumsum([0, *(p.rows for p in parts)], dtype=np.int64)
        self.num_rows = int(self.offsets[-1])
        with_columns = list(dict.fromkeys(p.schema for p in parts if len(p.schema)))
        self.schema = unify(with_columns)

    @classmethod
    def of_files(cls, files: list[Path]) -> RowFiles:
        """These files as they are, their footers read (a RunError naming a file that does not read)."""
        metas = [footer(path) for path in files]
        return cls(
            [Part(path, meta.num_rows, meta.schema.to_arrow_schema()) for path, meta in zip(files, metas, strict=True)]
        )

    @property
    def files(self) -> list[Path]:
        return [p.path for p in self.parts]

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Every row in order, `chunk_rows` at most at a time, in the common schema (only `columns`)."""
        return iter_chunks(self.files, self.schema, chunk_rows, columns=columns)

    def scan(self, columns: Sequence[str]) -> pl.LazyFrame:
        """One lazy frame of these columns over every file: scalar columns cast to their common
        type (missing ones null), any other column as whether it is null (all its stats need)."""
        import polars as pl

        kinds = {name: self.schema.field(name).type for name in columns}
        target = {n: pl.from_arrow(pa.array([], type=k)).dtype for n, k in kinds.items() if _scalar(k)}
        groups: dict[pa.Schema, list[str]] = {}
        for part in self.parts:
            if part.rows:
                groups.setdefault(part.schema, []).append(str(part.path))
        frames = []
        for schema, files in groups.items():
            exprs = []
            for name in columns:
                present = name in schema.names
                # A column these files lack: one value a row (a bare literal would make one row in all).
                if name in target:
                    missing = pl.repeat(None, pl.len(), dtype=target[name])
                    exprs.append(pl.col(name).cast(target[name]) if present else missing.alias(name))
                else:
                    exprs.append(pl.col(name).is_null() if present else pl.repeat(True, pl.len()).alias(name))
            frames.append(pl.scan_parquet(files, hive_partitioning=False).select(exprs))
        if not frames:
            empty = {n: target.get(n, pl.Boolean) for n in columns}
            return pl.LazyFrame(schema=empty)
        return pl.concat(frames, how="vertical")

    def rows_at(self, positions: Sequence[int]) -> list[dict]:
        """The rows at these positions (0-based, over the files in order), as dicts with every
        column of the common schema, in the order asked."""
        wanted = np.unique(np.asarray(positions, dtype=np.int64))
        if not len(wanted):
            return []
        if wanted[0] < 0 or wanted[-1] >= self.num_rows:
            raise IndexError(f"row positions must be below {self.num_rows:,}")
        files = np.searchsorted(self.offsets, wanted, side="right") - 1
        found: dict[int, dict] = {}
        for file in np.unique(files):
            mine = wanted[files == file]
            for position, row in zip(mine, self._read(self.parts[file].path, mine - self.offsets[file]), strict=True):
                found[int(position)] = row
        return [found[int(p)] for p in positions]

    def _read(self, path: Path, local: np.ndarray) -> list[dict]:
        """Rows of one file by their sorted indices in it, reading only the row groups that hold them."""
        handle = pq.ParquetFile(path)
        sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
        starts = np.cumsum([0, *sizes])
        groups = np.searchsorted(starts, local, side="right") - 1
        pieces = [
            handle.read_row_group(int(g)).take(pa.array(local[groups == g] - starts[g])) for g in np.unique(groups)
        ]
        # Every column of the common schema, as the whole table would have them (missing ones null).
        return concat([self.schema.empty_table(), *pieces]).to_pylist()

    def head(self, n: int) -> list[dict]:
        return self.rows_at(range(min(n, self.num_rows)))

    def sample(self, n: int, seed: int) -> list[dict]:
        """n rows picked at random (seeded) without reading the others, in dataset order."""
        if n >= self.num_rows:
            return self.head(n)
        positions = np.sort(np.random.default_rng(seed).choice(self.num_rows, size=n, replace=False))
        return self.rows_at(positions)


def _label(stage: StageDir) -> str:
    """A stage folder's label: `03-respond` is the stage labelled `respond`."""
    return stage.path.name.split("-", 1)[1]


class Run:
    """A run directory as its readers see it. The manifest and the integrity check are read once."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.store = RunStore(self.root)
        self._manifest: dict | None = None
        self._check: RunCheck | None = None
        self._rows: dict[str, RowFiles] = {}  # a stage's rows, read for its next stage's dropped rows

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = self.store.read_manifest()
        return self._manifest

    @property
    def status(self) -> str:
        """The status as it is now: a `running` manifest no live process holds is `interrupted`."""
        return self.store.status(self.manifest)

    @property
    def resume_hint(self) -> str:
        return self.store.resume_hint(self.manifest)

    def stages(self) -> list[StageDir]:
        """The stage folders, in pipeline order."""
        return stage_dirs(self.root)

    def stage(self, stage: str | StageDir) -> StageDir:
        """A stage by its label (`respond` for the folder `03-respond`)."""
        if isinstance(stage, StageDir):
            return stage
        dirs = self.stages()
        for d in dirs:
            if _label(d) == stage:
                return d
        raise RunError(f"no stage '{stage}' in {self.root} (stages: {', '.join(_label(d) for d in dirs)})")

    def check(self) -> RunCheck:
        """Every stage's shards and the output against their markers and the manifest: a RunError
        naming the broken files and the command that recomputes them."""
        if self._check is None:
            self._check = require_intact(self.root, self.manifest)
        return self._check

    def before(self, stage: StageDir) -> StageDir | None:
        """The stage whose rows `stage` took in (the folder before it); None for the first."""
        dirs = self.stages()
        paths = [d.path for d in dirs]
        at = paths.index(stage.path) if stage.path in paths else 0
        return dirs[at - 1] if at else None

    def rows(self, stage: str | StageDir | None = None) -> RowFiles:
        """The intact rows of a stage, or with no stage of the output (none before the run wrote it)."""
        checked = self.check()
        if stage is None:
            return RowFiles(checked.output.parts if checked.output else [])
        return RowFiles(checked.stages[self.stage(stage).path.name].parts)

    def output_files(self) -> list[Path]:
        """The files of the final dataset, in order."""
        out = self.root / "output"
        if not out.is_dir():
            raise RunError(f"{self.root} has no output yet: finish the run with 'synth run' first")
        return sorted(out.glob("*.parquet"))

    def output(self) -> RowFiles:
        """The final dataset's files as they are (the export streams over them)."""
        return RowFiles.of_files(self.output_files())

    def iter_dropped(self, stage: str | StageDir, limit: int | None = None) -> Iterator[dict]:
        """The rows `stage` dropped, shard by shard (`limit` at most): records of `reason`, `detail`,
        `failed` and `row`, the row as JSON text. A map stage stores the row itself; a global stage
        stores its `position` in the stage's input, and a filter on its Arrow path the `input_row`
        in the same shard of the stage before: those rows are read from there. A shard without its
        marker (a killed batch, to be redone) counts for nothing."""
        stage = self.stage(stage)
        before = self.before(stage)
        left = limit
        for index in stage.done_indices():
            path = stage.dropped_path(index)
            if left is not None and left <= 0:
                return
            if not path.exists():
                continue
            batch_size = DROPPED_BATCH if left is None else max(1, min(left, DROPPED_BATCH))
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                records = batch.to_pylist()[:left]
                if "input_row" in batch.schema.names:
                    self._rows_of_shard(stage, before, index, records)
                elif "position" in batch.schema.names:
                    self._rows_by_position(stage, before, path, records)
                yield from records
                if left is not None:
                    left -= len(records)
                    if left <= 0:
                        return

    def _rows_of_shard(self, stage: StageDir, source: StageDir | None, index: int, records: list[dict]) -> None:
        """Fill in the rows of a filter's Arrow-path drops: `input_row` in the same shard of the stage before."""
        shard = source.shard(index) if source is not None else None
        if shard is None or not shard.exists():
            raise RunError(
                f"{stage.dropped_path(index).relative_to(self.root)} names rows of a shard that is gone; recompute "
                f"it with: {self.resume_hint}"
            )
        found = read_parquet(shard).take(pa.array([r["input_row"] for r in records], pa.int64())).to_pylist()
        for record, row in zip(records, found, strict=True):
            record["row"] = _json(row)

    def _rows_by_position(self, stage: StageDir, source: StageDir | None, path: Path, records: list[dict]) -> None:
        """Fill in the rows of a global stage's drops: `position` in the rows of the stage before."""
        wanted = [r for r in records if r.get("row") is None and r.get("position") is not None]
        if not wanted:
            return
        if source is None:
            raise RunError(
                f"{path.relative_to(self.root)} names rows by position, but {stage.path.name} has no stage before "
                f"it; recompute it with: {self.resume_hint}"
            )
        if source.path.name not in self._rows:
            self._rows[source.path.name] = self.rows(source)
        rows = self._rows[source.path.name]
        beyond = [r["position"] for r in wanted if r["position"] >= rows.num_rows]
        if beyond:
            raise RunError(
                f"{path.relative_to(self.root)} names row {beyond[0]:,} of {source.path.name}, which holds "
                f"{rows.num_rows:,} rows; recompute it with: {self.resume_hint}"
            )
        for record, row in zip(wanted, rows.rows_at([r["position"] for r in wanted]), strict=True):
            record["row"] = _json(row)


def _json(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


def output_files(root: str | Path) -> list[Path]:
    """The files of a finished run's final dataset, in order."""
    return Run(root).output_files()


def read_output(root: str | Path) -> pa.Table:
    """The final dataset of a finished run as one Arrow table (for runs that fit in memory; the
    export streams over `Run.output`)."""
    return concat([pq.read_table(p) for p in output_files(root)])
