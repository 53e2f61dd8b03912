"""A stage's rows on disk, read and rewritten out of core.

A global stage (sort, sample, dedup) decides which rows to keep and in what order from a few
values per row (a length, a hash, a random draw) held in numpy arrays; the rows themselves stay in
the previous stage's Parquet shards and are gathered file by file into the output. Memory then
follows the size of a shard and of those arrays, not the size of the run: Magpie's recipe filters
4M generated rows, several GB of text, on one machine.

A `Selection` says what to write: input positions in output order and columns to add (one value
per input row); the stage names what it dropped through its batch (synth/stages/batch.py). `gather`
writes a selection in chunks of the run's batch size; when the order is not increasing (a sort, a
shuffle) rows go through bucket files on disk, each small enough to sort in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunError
from .parquet import unify

RANK = "__synth_rank"
BUCKET_BYTES = 256 * 2**20  # rows of one sort bucket held in memory at once (as Arrow; about 3x that at peak)


@dataclass
class Selection:
    order: np.ndarray  # int64 input positions, in output order
    columns: dict[str, pa.Array | pa.ChunkedArray] = field(default_factory=dict)  # one value per input row


class Rows:
    """The rows a global stage reads: Parquet shards in index order, or one table in memory
    (`synth dedup` on a file). Positions count rows across the parts in order."""

    def __init__(self, parts: list[Path | pa.Table], counts: list[int], schema: pa.Schema | None = None):
        kept = [(p, c) for p, c in zip(parts, counts, strict=True) if c]
        self.parts = [p for p, _ in kept]
        self.counts = np.asarray([c for _, c in kept], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.schema = schema if schema is not None else pa.schema([])

    @classmethod
    def from_files(cls, files: list[Path]) -> Rows:
        counts, schemas = [], []
        for path in files:
            try:
                meta = pq.read_metadata(path)
            except (OSError, pa.ArrowInvalid) as exc:
                raise RunError(f"{path}: cannot read this shard ({exc})") from None
            counts.append(meta.num_rows)
            if meta.num_rows:
                schemas.append(meta.schema.to_arrow_schema())
        return cls(list(files), counts, unify(schemas))

    @classmethod
    def from_table(cls, table: pa.Table) -> Rows:
        return cls([table], [table.num_rows], table.schema)

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    def read(self, k: int, columns: list[str] | None = None) -> pa.Table:
        part = self.parts[k]
        if isinstance(part, pa.Table):
            table = part
        else:
            file = pq.ParquetFile(part)  # not pq.read_table: its dataset layer doubles a shard's read time
            present = None if columns is None else [c for c in columns if c in file.schema_arrow.names]
            table = file.read(columns=present)
        return conform(table, self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns]))

    def table(self) -> pa.Table:
        """Every row in memory: for global stages whose input is small (skill lists, a few
        thousand instructions), never for a big run's texts."""
        parts = [t for _, t in self.tables()]
        return pa.concat_tables(parts) if parts else self.schema.empty_table()

    def tables(self, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        """(first position, rows) per part, reading only `columns` when given."""
        for k in range(len(self.parts)):
            yield int(self.starts[k]), self.read(k, columns)

    def column(self, name: str) -> pa.ChunkedArray:
        """One column, whole: for a key column (a length, an id), not for long texts at scale."""
        chunks = [t.column(name) for _, t in self.tables([name])]
        arrays = [c for chunked in chunks for c in chunked.chunks]
        return pa.chunked_array(arrays, self.schema.field(name).type)

    def values(self, name: str, fn: Callable[[pa.ChunkedArray], np.ndarray], dtype) -> np.ndarray:
        """fn applied to the column part by part, into one numpy array (one value per row)."""
        out = np.empty(self.num_rows, dtype=dtype)
        for start, table in self.tables([name]):
            out[start : start + table.num_rows] = fn(table.column(name))
        return out


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in its order (missing ones null, types promoted)."""
    if table.schema.equals(schema):
        return table
    columns = []
    for f in schema:
        if f.name in table.column_names:
            column = table.column(f.name)
            columns.append(column if column.type == f.type else column.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _with_columns(table: pa.Table, columns: dict[str, pa.ChunkedArray], positions: np.ndarray) -> pa.Table:
    """Add (or replace) the selection's new columns, taken at `positions`."""
    index = pa.array(positions, pa.int64())
    for name, values in columns.items():
        column = values.take(index)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table


def gather(
    rows: Rows,
    selection: Selection,
    emit: Callable[[pa.Table], None],
    chunk_rows: int,
    tmp_dir: Path | None = None,
    bucket_bytes: int = BUCKET_BYTES,
) -> int:
    """Write the selected rows in order as tables of `chunk_rows` rows (the last may be shorter);
    returns how many. Increasing orders stream; others go through sorted buckets on disk."""
    order = np.asarray(selection.order, dtype=np.int64)
    columns = {k: v if isinstance(v, pa.ChunkedArray) else pa.chunked_array([v]) for k, v in selection.columns.items()}
    out = _Chunker(emit, chunk_rows)
    if len(order) == 0:
        return out.close()
    if len(order) == 1 or bool(np.all(order[1:] > order[:-1])):
        for k, (start, end) in enumerate(zip(rows.starts[:-1], rows.starts[1:], strict=True)):
            lo, hi = np.searchsorted(order, [start, end])
            if lo == hi:
                continue
            picked = order[lo:hi]
            table = rows.read(k).take(pa.array(picked - start, pa.int64()))
            out.add(_with_columns(table, columns, picked))
        return out.close()
    rank = np.full(rows.num_rows, -1, dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    with _Buckets(len(order), chunk_rows, bucket_bytes, tmp_dir) as buckets:
        for k, (start, end) in enumerate(zip(rows.starts[:-1], rows.starts[1:], strict=True)):
            local = np.flatnonzero(rank[start:end] >= 0)
            if not len(local):
                continue
            table = rows.read(k).take(pa.array(local, pa.int64()))
            table = _with_columns(table, columns, local + start)
            buckets.add(table, rank[start:end][local])
        for table in buckets.sorted():
            out.add(table)
    return out.close()


class _Chunker:
    """Re-cut a stream of tables into tables of `size` rows."""

    def __init__(self, emit: Callable[[pa.Table], None], size: int):
        self.emit, self.size = emit, max(1, size)
        self.parts: list[pa.Table] = []
        self.held = 0
        self.emitted = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.parts.append(table)
            self.held += table.num_rows
        while self.held >= self.size:
            self._flush(self.size)

    def _flush(self, n: int) -> None:
        whole = pa.concat_tables(self.parts, promote_options="permissive") if len(self.parts) > 1 else self.parts[0]
        self.emit(whole.slice(0, n).combine_chunks())
        rest = whole.slice(n)
        self.parts, self.held = ([rest] if rest.num_rows else []), rest.num_rows
        self.emitted += 1

    def close(self) -> int:
        if self.held or not self.emitted:
            if self.parts:
                self._flush(self.held)
            else:
                self.emit(pa.table({}))
                self.emitted += 1
        return self.emitted


class _Buckets:
    """Rows tagged with their output rank, spilled to one Arrow stream file per range of ranks
    (a multiple of the chunk size), then read back one bucket at a time and sorted."""

    def __init__(self, total: int, chunk_rows: int, bucket_bytes: int, tmp_dir: Path | None):
        self.total, self.chunk_rows, self.bucket_bytes = total, chunk_rows, bucket_bytes
        self.tmp_dir = tmp_dir
        self.per_bucket: int | None = None  # ranks per bucket, fixed from the first rows seen
        self.memory: list[pa.Table] = []
        self.writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self.schemas: dict[int, pa.Schema] = {}
        self.dir: Path | None = None

    def __enter__(self) -> _Buckets:
        return self

    def __exit__(self, *exc) -> None:
        for writer in self.writers.values():
            writer.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _size(self, table: pa.Table) -> int:
        per_row = max(1, table.nbytes // max(table.num_rows, 1))
        rows = max(self.chunk_rows, self.bucket_bytes // per_row // self.chunk_rows * self.chunk_rows)
        return self.total if rows >= self.total else rows

    def add(self, table: pa.Table, ranks: np.ndarray) -> None:
        if self.per_bucket is None:
            self.per_bucket = self._size(table)
        table = table.append_column(RANK, pa.array(ranks, pa.int64()))
        if self.per_bucket >= self.total:
            self.memory.append(table)
            return
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="synth-sort-", dir=self.tmp_dir))
        bucket = ranks // self.per_bucket
        for b in np.unique(bucket).tolist():
            part = table.filter(pa.array(bucket == b))
            writer = self.writers.get(b)
            if writer is None:
                writer = self.writers[b] = pa.ipc.new_stream(self.dir / f"bucket-{b:05d}.arrow", part.schema)
                self.schemas[b] = part.schema
            writer.write_table(conform(part, self.schemas[b]))

    def sorted(self) -> Iterator[pa.Table]:
        if self.per_bucket is None:
            return
        if self.memory:
            yield from self._sort([self.memory])
            return
        for writer in self.writers.values():
            writer.close()
        for b in sorted(self.writers):
            path = self.dir / f"bucket-{b:05d}.arrow"  # type: ignore[operator]
            with pa.memory_map(str(path)) as source:
                tables = [pa.ipc.open_stream(source).read_all()]
                yield from self._sort([tables])
            path.unlink()
        self.writers = {}

    @staticmethod
    def _sort(groups: list[list[pa.Table]]) -> Iterator[pa.Table]:
        for tables in groups:
            whole = pa.concat_tables(tables, promote_options="permissive")
            order = np.argsort(whole.column(RANK).to_numpy(), kind="stable")
            yield whole.take(pa.array(order, pa.int64())).drop_columns([RANK])


def take(rows: Rows, positions: np.ndarray) -> pa.Table:
    """The rows at `positions` (in that order), reading only the parts that hold them."""
    positions = np.asarray(positions, dtype=np.int64)
    part = np.searchsorted(rows.starts, positions, side="right") - 1
    pieces, order = [], []
    for k in np.unique(part).tolist():
        mine = np.flatnonzero(part == k)
        local = positions[mine] - rows.starts[k]
        pieces.append(rows.read(k).take(pa.array(local, pa.int64())))
        order.append(mine)
    if not pieces:
        return pa.table({})
    table = pa.concat_tables(pieces, promote_options="permissive")
    back = np.empty(len(positions), dtype=np.int64)
    back[np.concatenate(order)] = np.arange(len(positions))
    return table.take(pa.array(back, pa.int64()))


def in_memory(rows: Rows, result: Selection | pa.Table) -> pa.Table:
    """A global stage's result as one table (`synth dedup` and `synth decontaminate` on a file):
    a selection gathered in memory, a table as it is."""
    if isinstance(result, pa.Table):
        return result
    if not len(result.order):
        return rows.schema.empty_table()
    parts: list[pa.Table] = []
    gather(rows, result, parts.append, max(rows.num_rows, 1))
    return parts[0]
