"""What `synth inspect RUN` prints: status, counts per stage, sample rows and column stats.

A run can hold millions of rows in thousands of shards, so nothing here loads a whole table: row
counts come from the Parquet footers (read once, by the integrity check), column stats from one
polars scan of only the columns they need, and rows are read by position, only the row groups that
hold them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.markup import escape

from .console import console, stage_table
from .errors import RunError
from .integrity import Part, require_intact, stage_dirs
from .shards import unify
from .store import RunStore, StageDir, concat


def text_type(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def number_type(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


class RowFiles:
    """The rows of a stage or of the output, spread over Parquet files, read lazily."""

    def __init__(self, parts: list[Part]):
        self.parts = parts
        self.offsets = np.cumsum([0, *(p.rows for p in parts)], dtype=np.int64)
        self.num_rows = int(self.offsets[-1])
        with_columns = list(dict.fromkeys(p.schema for p in parts if len(p.schema)))
        self.schema = unify(with_columns)

    def scan(self, columns: Sequence[str]) -> pl.LazyFrame:
        """One lazy frame of these columns over every file: scalar columns cast to their common
        type (missing ones null), any other column as whether it is null (all its stats need)."""
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


def _scalar(kind: pa.DataType) -> bool:
    return text_type(kind) or number_type(kind)


def measure(kind: str, name: str) -> str:
    """The name of a column's measure in `measures`' frame (no column of a run can be called so)."""
    return f"\x00{kind}\x00{name}"


def measures(rows: RowFiles, names: Sequence[str], hashes: bool = True) -> pl.DataFrame:
    """What the stats and plots of these columns need, a few bytes a row, from one streaming scan
    that reads only them: a text column becomes its lengths (`measure("len", name)`) and 64-bit
    hashes ("hash", null for null), a number column its values ("value"), any other column whether
    each value is null ("null"). Aggregating this narrow frame in memory, rather than in the scan, keeps the
    scan streaming: several distinct counts in one streaming query make polars hold whole columns."""
    exprs = []
    for name in names:
        kind, col = rows.schema.field(name).type, pl.col(name)
        if text_type(kind):
            exprs.append(col.str.len_chars().alias(measure("len", name)))
            if hashes:
                exprs.append(pl.when(col.is_not_null()).then(col.hash()).alias(measure("hash", name)))
        elif number_type(kind):
            exprs.append(col.alias(measure("value", name)))
        else:
            exprs.append(col.alias(measure("null", name)))  # the scan gives it as is-null
    return rows.scan(names).select(exprs).collect(engine="streaming")


def column_stats(rows: RowFiles) -> list[tuple[str, str]]:
    """Per column: text lengths and distinct values, or number min/mean/max, and nulls. Distinct
    texts are counted by their 64-bit hashes (exact unless two differ and collide: about one chance
    in a million among 4M distinct texts)."""
    names = rows.schema.names
    if not names:
        return []
    frame = measures(rows, names)
    exprs = []
    for name in names:
        kind = rows.schema.field(name).type
        if text_type(kind):
            length, digest = pl.col(measure("len", name)), pl.col(measure("hash", name))
            exprs += [length.min(), length.mean(), length.max(), digest.drop_nulls().n_unique(), length.null_count()]
        elif number_type(kind):
            col = pl.col(measure("value", name))
            exprs += [col.min(), col.mean(), col.max(), col.null_count()]
        else:
            exprs += [pl.col(measure("null", name)).sum()]
    values = iter(frame.select([e.alias(f"_{j}") for j, e in enumerate(exprs)]).row(0))
    stats = []
    for name in names:
        kind = rows.schema.field(name).type
        if text_type(kind):
            low, mean, high, distinct, nulls = (next(values) for _ in range(5))
            text = f"text: chars min {low}, mean {mean or 0:,.0f}, max {high}; distinct {distinct:,}"
        elif number_type(kind):
            low, mean, high, nulls = (next(values) for _ in range(4))
            # 12 digits: polars sums in parallel, in an order that changes the last bits from run to run
            mean = float(f"{mean:.12g}") if mean is not None else None
            text = f"number: min {low}, mean {mean}, max {high}"
        else:
            nulls = next(values)
            text = str(kind)
        stats.append((name, text + (f"; {nulls:,} null" if nulls else "")))
    return stats


def _shorten(value, width: int = 300):
    if isinstance(value, str) and len(value) > width:
        return value[:width] + f"... [{len(value):,} chars]"
    if isinstance(value, list):
        return [_shorten(v, width) for v in value]
    if isinstance(value, dict):
        return {k: _shorten(v, width) for k, v in value.items()}
    return value


def _content_first(row: dict, provenance: bool) -> dict:
    """A sample row as people read it: its content, not the record of how it was made (which is
    most of its text) unless asked for."""
    shown = {k: v for k, v in row.items() if k != "provenance"}
    if provenance and "provenance" in row:
        shown["provenance"] = row["provenance"]
    return shown


def _print_row(row: dict) -> None:
    console.print_json(json.dumps(_shorten(row), ensure_ascii=False, default=str))


def show_dropped(root: Path, dirs: list[StageDir], parts: dict[str, list[Part]], n: int, hint: str) -> None:
    """Dropped rows with their reasons, read file by file until n are shown. A dropped row stored by
    its position (global stages) is read from the previous stage's rows; one stored by input_row
    (filters on their Arrow path) from the same shard of the stage before."""
    every = stage_dirs(root)
    before = {d.path.name: (every[i - 1] if i else None) for i, d in enumerate(every)}
    previous: dict[str, RowFiles] = {}
    shown = 0
    for d in dirs:
        for path in sorted(d.meta.glob("shard-*.dropped.parquet")):
            if not d.done(int(path.name[6:11])):
                continue  # a shard killed before its marker: it is redone, its dropped rows with it
            for batch in pq.ParquetFile(path).iter_batches(batch_size=max(1, n - shown)):
                for record in batch.to_pylist():
                    if shown >= n:
                        return
                    kind = "failed" if record["failed"] else "filtered"
                    detail = escape(str(record.get("detail") or "")[:200])
                    console.print(f"[yellow]{d.path.name}[/] {kind}: {escape(str(record['reason']))}  {detail}")
                    if record.get("row") is not None:
                        _print_row(json.loads(record["row"]))
                    elif record.get("position") is not None:
                        source = before[d.path.name]
                        if source is None:
                            raise RunError(
                                f"{path.relative_to(root)} names rows by position, but {d.path.name} has no stage "
                                f"before it; recompute it with: {hint}"
                            )
                        if source.path.name not in previous:
                            previous[source.path.name] = RowFiles(parts[source.path.name])
                        rows = previous[source.path.name]
                        if record["position"] >= rows.num_rows:
                            raise RunError(
                                f"{path.relative_to(root)} names row {record['position']:,} of {source.path.name}, "
                                f"which holds {rows.num_rows:,} rows; recompute it with: {hint}"
                            )
                        _print_row(rows.rows_at([record["position"]])[0])
                    elif record.get("input_row") is not None:  # a filter's Arrow path: same shard, stage before
                        source = before[d.path.name]
                        shard = source.shard(int(path.name[6:11])) if source is not None else None
                        if shard is None or not shard.exists():
                            raise RunError(f"{path.relative_to(root)} names rows of a shard that is gone; recompute "
                                           f"it with: {hint}")  # fmt: skip
                        _print_row(pq.read_table(shard).slice(record["input_row"], 1).to_pylist()[0])
                    shown += 1
                if shown >= n:
                    return
    if not shown:
        console.print("no dropped rows")


def show_run(
    root: Path,
    n: int = 3,
    stage_label: str | None = None,
    dropped: bool = False,
    provenance: bool = False,
    seed: int | None = None,
) -> None:
    """`seed`: show n rows picked at random with this seed instead of the first n."""
    root = Path(root)
    store = RunStore(root)
    manifest = store.read_manifest()
    status = store.status(manifest)
    console.print(f"[bold]{manifest['name']}[/]  status: {status}  fingerprint: {manifest['fingerprint']}")
    if status in ("interrupted", "failed"):
        how = "stopped before finishing" if status == "interrupted" else "failed"
        console.print(f"the run {how}; resume it with: {store.resume_hint(manifest)}")
    elif status == "running":
        console.print("a synth process is working on this run now")
    if manifest.get("stages"):
        console.print(stage_table(manifest["stages"]))
    dirs = stage_dirs(root)
    if stage_label:
        matches = [d for d in dirs if d.path.name.split("-", 1)[1] == stage_label]
        if not matches:
            labels = ", ".join(d.path.name.split("-", 1)[1] for d in dirs)
            raise RunError(f"no stage '{stage_label}' in {root} (stages: {labels})")
        chosen = matches[0]
    else:
        chosen = None
    checked = require_intact(root, manifest)
    parts = {name: c.parts for name, c in checked.stages.items()}
    if dropped:
        show_dropped(root, [chosen] if chosen else dirs, parts, n, store.resume_hint(manifest))
        return
    if chosen is not None:
        rows, where = RowFiles(parts[chosen.path.name]), f"stage {stage_label}"
    elif checked.output is not None:
        rows, where = RowFiles(checked.output.parts), "output"
    else:
        done = [d for d in dirs if d.done_indices()]
        if not done:
            console.print("no rows yet")
            return
        rows, where = RowFiles(parts[done[-1].path.name]), f"stage {done[-1].path.name} (the run is not finished)"
    console.print(f"\n[bold]{where}[/]: {rows.num_rows:,} rows")
    for name, text in column_stats(rows):
        console.print(f"  {name}: {text}")
    picked = rows.head(n) if seed is None else rows.sample(n, seed)
    if seed is not None and picked:
        console.print(f"{len(picked)} rows picked at random (seed {seed}):")
    for row in picked:
        _print_row(_content_first(row, provenance))
    if n and "provenance" in rows.schema.names and not provenance:
        console.print("(each row's provenance: add --provenance)")
