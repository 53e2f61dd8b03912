"""Row conventions, the output schemas, and reading and writing a run's Parquet files in chunks.

`sft` output is the conversational format TRL's SFTTrainer reads directly: a `messages` column
of {role, content} turns (built from instruction/response columns, and Magpie's multi-turn
instruction_2/response_2, ..., when a run has no `messages`),
with the other columns kept beside it.

A run's rows can be millions of Magpie-sized texts, so the final output and the export never
hold them all: they read the Parquet files a chunk of rows at a time (`iter_chunks`), in the
schema the files share (`unified_schema`: the schema concatenating them would give, a column one
batch lacks is null there), and write as they go (`ParquetParts`). Row counts come from the
files' footers.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import RunError

# Rows read (and formatted, and written) at a time: a few MB of Magpie-sized text.
DEFAULT_CHUNK_ROWS = 4096
# Rows of a written Parquet row group (the output's files hold 10,000 rows: one group each).
DEFAULT_GROUP_ROWS = 10_000
_LATER_TURN = re.compile(r"^(instruction|response)_\d+$")

Row = dict[str, Any]


@dataclass
class Dropped:
    """A row a stage left out, with why: a filter's decision, or a failure (`failed`: an
    unparseable answer, a request that ran out of retries)."""

    row: Row | None  # None for a row dropped by position (Arrow and global stages)
    reason: str
    detail: str = ""
    failed: bool = False
    position: int | None = None  # where such a row is in the stage's input


def text_of(value: Any) -> str:
    """The text to compare: a string, or the user turns of a messages list."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role", m.get("from")) in ("user", "human")] or value
        return "\n".join(str(m.get("content", m.get("value", ""))) for m in users)
    return str(value)


def concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        types: dict[str, set[str]] = {}
        for table in tables:
            for f in table.schema:
                types.setdefault(f.name, set()).add(str(f.type))
        mixed = {name: kinds for name, kinds in types.items() if len(kinds) > 1}
        shown = "; ".join(f"'{n}' is {' and '.join(sorted(k))}" for n, k in mixed.items()) or str(exc)
        raise RunError(
            f"a column holds values of different types in different batches ({shown}); make the input column one "
            "type (e.g. quote numbers in a text column)"
        ) from None


# ---- reading Parquet files in chunks ----


def _metadata(path: Path) -> pq.FileMetaData:
    try:
        return pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RunError(
            f"{path}: missing or unreadable ({exc.__class__.__name__}: {exc}); recompute it by deleting the run's "
            "marker for it (or the whole stage folder) and running 'synth run' on the pipeline again"
        ) from None


def unified_schema(files: Iterable[Path]) -> pa.Schema:
    """The schema of the files' rows taken together, as `concat` in synth.store makes it: columns in
    order of first appearance, types promoted (null to any, int to float...); files without a
    column (an empty batch) count for nothing."""
    schemas = [s for s in (_metadata(p).schema.to_arrow_schema() for p in files) if len(s)]
    if not schemas:
        return pa.schema([])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise RunError(
            f"a column holds values of different types in different batches ({exc}); make the input column one "
            "type (e.g. quote numbers in a text column)"
        ) from None


def count_rows(files: Iterable[Path]) -> int:
    return sum(_metadata(p).num_rows for p in files)


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
        meta = _metadata(path)
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


# ---- the run's output ----


def _python_type(t: pa.DataType) -> pa.DataType:
    """The type pyarrow infers back from the Python values of a column of type t."""
    if pa.types.is_dictionary(t):
        return _python_type(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    return t


def content_type(schema: pa.Schema, columns: Iterable[str], what: str) -> pa.DataType:
    """The type of a message's `content` filled from these columns: text, almost always."""
    kinds = {_python_type(schema.field(c).type) for c in columns if c in schema.names}
    kinds = {k for k in kinds if not pa.types.is_null(k)}
    if kinds == {pa.int64(), pa.float64()}:
        return pa.float64()
    if len(kinds) > 1:
        raise RunError(
            f"{what}: the columns {', '.join(c for c in columns if c in schema.names)} hold values of different "
            f"types ({', '.join(sorted(map(str, kinds)))}); make them one type (text)"
        )
    return kinds.pop() if kinds else pa.null()


def messages_type(content: pa.DataType) -> pa.DataType:
    return pa.list_(pa.struct([("role", pa.string()), ("content", content)]))


class OutputFormat:
    """`output:`'s rules for the final dataset, decided once from the run's schema and row count and
    applied chunk by chunk: raw keeps every column (or `output.columns`), sft adds `messages`
    unless the run has it."""

    def __init__(self, schema: pa.Schema, output, num_rows: int):
        names = schema.names
        self.select: list[str] | None = None
        self.build: tuple[str, str, list[str]] | None = None
        self.schema = schema
        if output.format == "raw":
            if output.columns:
                missing = [c for c in output.columns if c not in names]
                if missing and num_rows:
                    raise RunError(
                        f"output.columns names {', '.join(missing)}, which the run does not have "
                        f"(it has: {', '.join(names)})"
                    )
                self.select = [c for c in output.columns if c in names]
                self.schema = pa.schema([schema.field(c) for c in self.select])
            return
        if "messages" in names or not num_rows:
            return
        ins, res = output.instruction_column, output.response_column
        missing = [c for c in (ins, res) if c not in names]
        if missing:
            raise RunError(
                f"sft output needs a 'messages' column or columns {ins!r} and {res!r}; missing "
                f"{', '.join(missing)} (set output.instruction_column / output.response_column)"
            )
        turns = [c for c in names if _LATER_TURN.match(c)]
        system = ["system"] if "system" in names else []
        self.build = (ins, res, [*system, *turns])
        string_system = system and _python_type(schema.field("system").type) == pa.string()
        sources = [ins, res, *turn_columns(names), *(["system"] if string_system else [])]
        self.type = messages_type(content_type(schema, sources, "sft output"))
        self.schema = schema.append(pa.field("messages", self.type))

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.select is not None:
            return table.select(self.select)
        if self.build is None:
            return table
        ins, res, others = self.build
        if self.type == messages_type(pa.string()):
            return table.append_column("messages", conversations(table, ins, res))
        rows = table.select([ins, res, *others]).to_pylist()
        return table.append_column("messages", pa.array([conversation(r, ins, res) for r in rows], type=self.type))


def format_output(table: pa.Table, output) -> pa.Table:
    """A whole table in `output`'s format (small tables; the runner streams with OutputFormat)."""
    return OutputFormat(table.schema, output, table.num_rows)(table)


def write_output(
    files: list[Path], output, out_dir: Path, rows_per_file: int, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> int:
    """The final dataset from the last stage's shards: `data-NNNNN-of-MMMMM.parquet` files of
    `rows_per_file` rows, written chunk by chunk into a temporary folder renamed into place
    (a run killed meanwhile leaves the previous output whole). Returns the row count."""
    schema = unified_schema(files)
    total = count_rows(files)
    fmt = OutputFormat(schema, output, total)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    parts = ParquetParts(tmp, lambda k, n: f"data-{k:05d}-of-{n:05d}.parquet", total, rows_per_file, fmt.schema)
    for chunk in iter_chunks(files, schema, chunk_rows):
        parts.write(fmt(chunk))
    parts.close()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return total


def turn_columns(names: list[str]) -> list[str]:
    """The later turns `conversation` reads: instruction_2, response_2, instruction_3, ... while both exist."""
    columns, k = [], 2
    while f"instruction_{k}" in names and f"response_{k}" in names:
        columns += [f"instruction_{k}", f"response_{k}"]
        k += 1
    return columns


def _valid(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).is_valid().to_numpy(zero_copy_only=False)


def conversations(table: pa.Table, instruction: str = "instruction", response: str = "response") -> pa.Array:
    """`conversation` of every row, built in Arrow without Python per row, for text columns: each
    row's turns are positions in the concatenated columns, taken in one go."""
    n, names = table.num_rows, table.column_names
    system = "system" in names and _python_type(table.schema.field("system").type) == pa.string()
    later = turn_columns(names)
    turns = list(zip(later[::2], later[1::2], strict=True))
    columns = [instruction, response, *(["system"] if system else []), *later]
    source = pa.concat_arrays([table.column(c).combine_chunks().cast(pa.string()) for c in columns])
    has_system = np.zeros(n, dtype=bool)
    if system:
        text = table.column("system")
        has_system = pc.fill_null(pc.greater(pc.binary_length(text), 0), False).to_numpy(zero_copy_only=False)
    alive, taking = np.ones(n, dtype=bool), []
    for a, b in turns:  # a later turn counts while it and every turn before it are present
        alive = alive & _valid(table, a) & _valid(table, b)
        taking.append(alive)
    counts = 2 + has_system.astype(np.int64) + 2 * np.sum(taking, axis=0, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    take = np.empty(offsets[-1], dtype=np.int64)
    role = np.empty(offsets[-1], dtype=np.int8)  # 0 system, 1 user, 2 assistant
    position, rows = offsets[:-1].copy(), np.arange(n)

    def put(which: np.ndarray, column: int, role_code: int) -> None:
        take[position[which]] = column * n + which
        role[position[which]] = role_code
        position[which] += 1

    put(np.flatnonzero(has_system), 2, 0)
    put(rows, 0, 1)
    put(rows, 1, 2)
    first_turn = 3 if system else 2
    for t, mask in enumerate(taking):
        which = np.flatnonzero(mask)
        put(which, first_turn + 2 * t, 1)
        put(which, first_turn + 2 * t + 1, 2)
    roles = pa.array(["system", "user", "assistant"]).take(pa.array(role))
    turns_array = pa.StructArray.from_arrays([roles, source.take(pa.array(take))], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), turns_array)


def conversation(row: dict, instruction: str = "instruction", response: str = "response") -> list[dict]:
    """A row's turns as messages: the row's `system` text first when it has one (a conditioning
    such as a preference direction belongs to the training data, as in the preference export), the
    first turn from `instruction`/`response`, then Magpie's multi-turn keys instruction_2/response_2,
    instruction_3/... while both are present."""
    system = row.get("system")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    messages += [{"role": "user", "content": row[instruction]}, {"role": "assistant", "content": row[response]}]
    turn = 2
    while row.get(f"instruction_{turn}") is not None and row.get(f"response_{turn}") is not None:
        messages += [
            {"role": "user", "content": row[f"instruction_{turn}"]},
            {"role": "assistant", "content": row[f"response_{turn}"]},
        ]
        turn += 1
    return messages
