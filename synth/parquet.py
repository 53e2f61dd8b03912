"""Reading and writing Parquet files: one shard at a time, or a run's rows a chunk at a time.

Shards are written to a temporary name and renamed into place (`write_parquet`), and read without
pyarrow's dataset layer (`read_parquet`). A run's rows can be millions of Magpie-sized texts, so the
final output and the export never hold them all: they read the Parquet files a chunk of rows at a
time (`iter_chunks`), in the schema the files share (`unified_schema`: the schema concatenating them
would give, a column one batch lacks is null there), and write as they go (`ParquetParts`). Row
counts come from the files' footers (`footer`, `count_rows`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunError
from .records import Row

# Rows read (and formatted, and written) at a time: a few MB of Magpie-sized text.
DEFAULT_CHUNK_ROWS = 4096
# Rows of a written Parquet row group (the output's files hold 10,000 rows: one group each).
DEFAULT_GROUP_ROWS = 10_000


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of a run's batches as one: columns in order of first appearance, types promoted."""
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _mixed_types([t.schema for t in tables], str(exc)) from None


def _mixed_types(schemas: list[pa.Schema], otherwise: str = "") -> RunError:
    """The error for batches whose columns differ in type, naming the columns ("'n' is int64 and string")."""
    types: dict[str, set[str]] = {}
    for schema in schemas:
        for f in schema:
            types.setdefault(f.name, set()).add(str(f.type))
    mixed = {name: kinds for name, kinds in types.items() if len(kinds) > 1}
    shown = "; ".join(f"'{n}' is {' and '.join(sorted(k))}" for n, k in mixed.items()) or otherwise
    return RunError(
        f"a column holds values of different types in different batches ({shown}); make the input column one "
        "type (e.g. quote numbers in a text column)"
    )


# ---- one file: a shard ----


def rows_to_table(rows: list[Row]) -> pa.Table:
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise RunError(f"rows cannot be stored as Parquet: {exc} (a column holds values of mixed types)") from None


def write_parquet(path: Path, table: pa.Table, sync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:  # a file object: pyarrow skips resolving a filesystem for the path
        pq.write_table(table, fh, compression="zstd", use_dictionary=_dictionary_columns(table))
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _dictionary_columns(table: pa.Table) -> list[str] | bool:
    """Dictionary-encode every column but long texts: building a dictionary for a column of
    distinct paragraphs costs time and then falls back to plain encoding anyway."""
    if table.num_rows < 64:
        return True
    long = set()
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            data = sum(c.buffers()[2].size for c in column.chunks if c.buffers()[2] is not None)
            if data > 64 * table.num_rows:
                long.add(name)
    return [n for n in table.column_names if n not in long] if long else True


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file (a shard), read without the dataset layer pq.read_table goes through:
    half the time on a small file, which a big run reads tens of thousands of."""
    return pq.ParquetFile(path).read(columns=columns)


def read_rows(path: Path) -> list[Row]:
    return read_parquet(path).to_pylist()


# ---- reading Parquet files in chunks ----


def footer(path: Path) -> pq.FileMetaData:
    """A Parquet file's footer (its row count and schema); a RunError naming the file if it does not read."""
    try:
        return pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RunError(
            f"{path}: missing or unreadable ({exc.__class__.__name__}: {exc}); recompute it by deleting the run's "
            "marker for it (or the whole stage folder) and running 'synth run' on the pipeline again"
        ) from None


def unified_schema(files: Iterable[Path]) -> pa.Schema:
    """The schema of the files' rows taken together, as `concat` makes it: columns in
    order of first appearance, types promoted (null to any, int to float...); files without a
    column (an empty batch) count for nothing."""
    schemas = [s for s in (footer(p).schema.to_arrow_schema() for p in files) if len(s)]
    if not schemas:
        return pa.schema([])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise RunError(
            f"a column holds values of different types in different batches ({exc}); make the input column one "
            "type (e.g. quote numbers in a text column)"
        ) from None


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for rows of these schemas, as `concat` would make it; a RunError naming the mixed columns."""
    if not schemas:
        return pa.schema([])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise _mixed_types(schemas) from None


def count_rows(files: Iterable[Path]) -> int:
    return sum(footer(p).num_rows for p in files)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`: the columns it lacks as nulls, the others promoted as concat would."""
    if table.schema.equals(schema):
        return table
    if not table.num_columns:
        return pa.table({f.name: pa.nulls(table.num_rows, f.type) for f in schema}, schema=schema)
    return pa.concat_tables([schema.empty_table(), table], promote_options="permissive").select(schema.names)


def iter_chunks(
    files: Iterable[Path], schema: pa.Schema, chunk_rows: int = DEFAULT_CHUNK_ROWS, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """The files' rows in order, `chunk_rows` at most at a time, in `schema` (restricted to `columns`)."""
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    for path in files:
        meta = footer(path)
        if not meta.num_rows:
            continue
        have = set(meta.schema.to_arrow_schema().names)  # (the Parquet schema's names are leaf paths)
        present = [c for c in schema.names if c in have]
        if not present:  # none of the asked columns in this file: nulls, as many as its rows
            for start in range(0, meta.num_rows, chunk_rows):
                n = min(chunk_rows, meta.num_rows - start)
                yield pa.table({f.name: pa.nulls(n, f.type) for f in schema}, schema=schema)
            continue
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=present):
            yield conform(pa.Table.from_batches([batch]), schema)


# ---- writing Parquet files as rows come ----


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class ParquetParts:
    """Writes a stream of tables as `name(k, n)` files of `rows_per_file` rows each (the last one
    shorter), n known beforehand, each written with one ParquetWriter and fsynced when closed.
    Tables are gathered into row groups of about `group_rows` rows (a stage's shards may hold a
    few dozen rows each; a row group that small costs readers time)."""

    def __init__(
        self,
        folder: Path,
        name: Callable[[int, int], str],
        total: int,
        rows_per_file: int,
        schema: pa.Schema,
        group_rows: int = DEFAULT_GROUP_ROWS,
    ):
        self.folder, self.name, self.schema, self.group_rows = folder, name, schema, group_rows
        self.rows_per_file = max(1, rows_per_file)
        self.n_files = max(1, -(-total // self.rows_per_file))
        self.total, self.written, self.index = total, 0, 0
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def _path(self, k: int) -> Path:
        return self.folder / self.name(k, self.n_files)

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            room = self.rows_per_file - self._in_file - self._pending_rows
            part, table = table.slice(0, room), table.slice(room)
            self._pending.append(part)
            self._pending_rows += part.num_rows
            if self._pending_rows >= self.group_rows or self._in_file + self._pending_rows == self.rows_per_file:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            if self.index >= self.n_files:
                raise RunError(f"more rows than the {self.total:,} counted came to {self.folder}: run again")
            self._writer = pq.ParquetWriter(self._path(self.index), self.schema, compression="zstd")
        group = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._writer.write_table(group, row_group_size=group.num_rows)
        self._in_file += group.num_rows
        self.written += group.num_rows
        self._pending, self._pending_rows = [], 0
        if self._in_file == self.rows_per_file:
            self._close_file()

    def _close_file(self) -> None:
        assert self._writer is not None
        self._writer.close()
        _fsync(self._path(self.index))
        self._writer, self._in_file, self.index = None, 0, self.index + 1

    def close(self) -> list[Path]:
        """Finish; with no row at all, one empty file (of the schema, or of no column if it has none)."""
        self._flush()
        if self._writer is not None:
            self._close_file()
        if self.total == 0 and self.index == 0:
            pq.write_table(self.schema.empty_table(), self._path(0), compression="zstd")
            _fsync(self._path(0))
            self.index = 1
        if self.written != self.total or self.index != self.n_files:
            raise RunError(f"{self.folder}: {self.written:,} rows written where {self.total:,} were counted: run again")
        return [self._path(k) for k in range(self.n_files)]
