"""The output formats: what `run.output:` makes of a run's rows, and the message lists the export builds.

`sft` output is the conversational format TRL's SFTTrainer reads directly: a `messages` column
of {role, content} turns (built from instruction/response columns, and Magpie's multi-turn
instruction_2/response_2, ..., when a run has no `messages`),
with the other columns kept beside it. `raw` keeps every column (or `output.columns`).

The final output is written chunk by chunk over the last stage's shards (`write_output`), so a run of
millions of rows never sits in memory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import RunError
from .parquet import DEFAULT_CHUNK_ROWS, ParquetParts, count_rows, iter_chunks, unified_schema
from .records import LATER_TURN, turn_columns


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
        turns = [c for c in names if LATER_TURN.match(c)]
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
