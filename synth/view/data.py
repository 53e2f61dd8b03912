"""The viewer's data: a stage's rows paged, filtered, searched and sorted straight from its shards.

A run can hold millions of rows in thousands of shards, finished or still being written, so
nothing here loads a stage: `Run.rows` gives the intact shards (a shard counts once its marker is
written, synth/integrity.py), a page with no filter is read by position (only the row groups that
hold it), and a filter, search or sort is one polars streaming scan of only the columns it reads
plus each row's position, after which the page's rows are read by position like the first page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..errors import RunError
from ..labels import Labels, origin_key, row_key, source_columns
from ..runs import RowFiles, Run, number_type, text_type

OUTPUT = "output"  # the pseudo-stage of the final dataset
POSITION = "\x00position"  # the scan's row-position column (no run column can be called so)
OPS = ("eq", "ne", "contains", "gt", "ge", "lt", "le", "null", "notnull")
MAX_PAGE = 200


def kind_of(t: pa.DataType) -> str:
    """What the viewer can do with a column: filter and sort `text` and `number`; search `text`
    and `texts` (a list of strings: n responses); show the rest."""
    if text_type(t):
        return "text"
    if number_type(t) or pa.types.is_boolean(t):
        return "number"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and text_type(t.value_type):
        return "texts"
    return "other"


@dataclass
class Query:
    """What a page shows: filters are (column, op, value) with an op of OPS."""

    offset: int = 0
    limit: int = 20
    filters: list[tuple[str, str, str]] = field(default_factory=list)
    search: str = ""
    sort: str | None = None
    descending: bool = False
    # Count every match (a full scan), or stop at the page's: a search for a common word then
    # answers in a fraction of a second, and the page asks for the count after showing the rows.
    count: bool = True

    @property
    def plain(self) -> bool:
        return not (self.filters or self.search.strip() or self.sort)


def _number(value: str, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise RunError(f"the filter on {column} compares numbers: {value!r} is not one") from None


def _filter(name: str, kind: str, op: str, value: str) -> pl.Expr:
    col = pl.col(name)
    if op not in OPS:
        raise RunError(f"unknown filter {op!r} on {name}: use one of {', '.join(OPS)}")
    if op == "null":
        return col.is_null()
    if op == "notnull":
        return col.is_not_null()
    if kind == "text":
        if op == "contains":
            return col.str.contains(f"(?i){re.escape(value)}")
        if op in ("eq", "ne"):
            return (col == value) if op == "eq" else (col != value)
        return {"gt": col > value, "ge": col >= value, "lt": col < value, "le": col <= value}[op]
    if kind == "number":
        if op == "contains":
            raise RunError(f"{name} holds numbers: filter it with eq, ne, gt, ge, lt or le")
        number = _number(value, name)
        return {
            "eq": col == number,
            "ne": col != number,
            "gt": col > number,
            "ge": col >= number,
            "lt": col < number,
            "le": col <= number,
        }[op]
    if kind == "texts" and op == "contains":
        return col.list.join("\n").str.contains(f"(?i){re.escape(value)}")
    raise RunError(f"{name} can only be filtered as null or notnull (it holds {kind} values)")


class StageRows:
    """One stage's (or the output's) rows as the viewer reads them."""

    def __init__(self, name: str, rows: RowFiles):
        self.name = name
        self.rows = rows
        self.kinds = {f.name: kind_of(f.type) for f in rows.schema}

    def _scan(self, columns: list[str]) -> pl.LazyFrame:
        """These columns and each row's position over every file in order. Files are scanned in
        runs that share a schema (usually one), each numbered from its first row's position."""
        frames, at = [], 0
        parts = [p for p in self.rows.parts if p.rows]
        offsets = {id(p): int(o) for p, o in zip(self.rows.parts, self.rows.offsets, strict=False)}
        while at < len(parts):
            end = at
            while end + 1 < len(parts) and parts[end + 1].schema == parts[at].schema:
                end += 1
            group = parts[at : end + 1]
            names = group[0].schema.names
            scan = pl.scan_parquet(
                [str(p.path) for p in group],
                row_index_name=POSITION,
                row_index_offset=offsets[id(group[0])],
                hive_partitioning=False,
            )
            exprs = [pl.col(POSITION).cast(pl.Int64)]
            for name in columns:
                target = pl.from_arrow(pa.array([], type=self.rows.schema.field(name).type)).dtype
                exprs.append(pl.col(name).cast(target) if name in names else pl.lit(None, dtype=target).alias(name))
            frames.append(scan.select(exprs))
            at = end + 1
        if not frames:
            return pl.LazyFrame(schema={POSITION: pl.Int64})
        return pl.concat(frames, how="vertical")

    def _column(self, name: str) -> str:
        if name not in self.kinds:
            raise RunError(f"{self.name} has no column {name!r} (columns: {', '.join(self.kinds)})")
        return self.kinds[name]

    def positions(self, query: Query) -> tuple[int | None, list[int]]:
        """How many rows match (None when `query.count` is off and more rows than the page's may
        match), and the positions of the page's rows."""
        limit = max(1, min(query.limit, MAX_PAGE))
        offset = max(0, query.offset)
        if not self.rows.num_rows:  # a stage that has written nothing yet (the run is still going)
            return 0, []
        if query.plain:
            total = self.rows.num_rows
            return total, list(range(offset, min(offset + limit, total)))
        conditions = [_filter(c, self._column(c), op, v) for c, op, v in query.filters]
        words = query.search.strip()
        if words:
            searched = [n for n, k in self.kinds.items() if k in ("text", "texts")]
            if not searched:
                raise RunError(f"{self.name} has no text column to search")
            conditions.append(pl.any_horizontal([_filter(n, self.kinds[n], "contains", words) for n in searched]))
        columns = [c for c, _, _ in query.filters]
        if words:
            columns += [n for n, k in self.kinds.items() if k in ("text", "texts")]
        if query.sort:
            if self._column(query.sort) not in ("text", "number"):
                raise RunError(f"sort by a text or number column; {query.sort} holds {self.kinds[query.sort]} values")
            columns.append(query.sort)
        frame = self._scan(list(dict.fromkeys(columns)))
        if conditions:
            frame = frame.filter(pl.all_horizontal(conditions))
        if query.sort:  # sorted and sliced lazily: polars keeps only the top offset + limit rows
            order = frame.select([POSITION, query.sort]).sort(
                [query.sort, POSITION], descending=[query.descending, False], nulls_last=True
            )
            page = order.slice(offset, limit).collect(engine="streaming")[POSITION].to_list()
            if not conditions:
                return self.rows.num_rows, page
            total = frame.select(pl.len()).collect(engine="streaming").item() if query.count else None
            return total, page
        if not query.count:  # the scan stops once the page is full; the count is asked for apart
            found = frame.select(POSITION).head(offset + limit).collect(engine="streaming")[POSITION]
            total = None if found.len() == offset + limit else found.len()  # short of a page: all there is
            return total, found.slice(offset, limit).to_list()
        found = frame.select(POSITION).collect(engine="streaming")[POSITION]
        return found.len(), found.slice(offset, limit).to_list()


class RunView:
    """A run directory as the viewer serves it: read-only, except its labels file."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.run = Run(self.root)
        self._stages: dict[str, StageRows] = {}
        self._sources: list[str] | None = None

    def refresh(self) -> None:
        """Read the run again (a running run has written shards since)."""
        self.run = Run(self.root)
        self._stages = {}

    def names(self) -> list[str]:
        labels = [d.path.name.split("-", 1)[1] for d in self.run.stages()]
        return labels + ([OUTPUT] if self.run.check().output is not None else [])

    def stage(self, name: str) -> StageRows:
        if name not in self._stages:
            if name == OUTPUT:
                rows = self.run.rows()
            elif name in self.names():
                rows = self.run.rows(name)
            else:
                raise RunError(f"no stage {name!r} in this run (stages: {', '.join(self.names())})")
            self._stages[name] = StageRows(name, rows)
        return self._stages[name]

    @property
    def sources(self) -> list[str]:
        if self._sources is None:
            self._sources = source_columns(self.run)
        return self._sources

    def writer_of(self, column: str) -> str | None:
        """The first stage whose rows have this column: the one that wrote it."""
        return next((n for n in self.names() if column in self.stage(n).kinds), None)

    def page(self, name: str, query: Query) -> dict:
        stage = self.stage(name)
        total, positions = stage.positions(query)
        labels = Labels(self.root)
        rows = stage.rows.rows_at(positions) if positions else []
        here = labels.of(name)
        inherited = {r["origin"]: r for r in labels.records if r["origin"] and r["stage"] != name}
        return {
            "stage": name,
            "total": total,
            "offset": query.offset,
            "rows": [self._entry(p, r, here, inherited) for p, r in zip(positions, rows, strict=True)],
        }

    def _entry(self, position: int, row: dict, here: dict[str, dict], inherited: dict[str, dict]) -> dict:
        """A row of a page with its label: its own, or the label of a row of another stage made
        from the same source row (`from`: that stage), which an export's --drop-labeled applies too."""
        label = here.get(row_key(row))
        if label is None and inherited:
            label = inherited.get(origin_key(row, self.sources))
            label = label and {"label": label["label"], "note": label["note"], "from": label["stage"]}
        elif label is not None:
            label = {"label": label["label"], "note": label["note"]}
        return {"position": position, "row": row, "label": label}

    def row(self, name: str, position: int) -> dict:
        stage = self.stage(name)
        if not 0 <= position < stage.rows.num_rows:
            raise RunError(f"{name} has {stage.rows.num_rows:,} rows: no row {position}")
        return stage.rows.rows_at([position])[0]

    def label(self, name: str, position: int, label: str | None, note: str) -> dict | None:
        row = self.row(name, position)
        return Labels(self.root).set(name, row, origin_key(row, self.sources), label, note)

    def dropped(self, name: str, offset: int, limit: int) -> dict:
        """A stage's dropped rows with their reasons (as `synth inspect --dropped` reads them)."""
        if name == OUTPUT:
            return {"stage": name, "rows": [], "more": False}
        limit = max(1, min(limit, MAX_PAGE))
        # skipped, not kept: a page deep into millions of dropped rows holds only its own
        records = list(islice(self.run.iter_dropped(name, limit=offset + limit + 1), offset, None))
        return {"stage": name, "offset": offset, "rows": records[:limit], "more": len(records) > limit}

    def lineage(self, name: str, position: int, per_stage: int = 3) -> list[dict]:
        """The row's source row through every stage: each stage's rows made from it (the rows
        sharing its origin, `per_stage` at most), found by a scan of the source columns."""
        row = self.row(name, position)
        origin = origin_key(row, self.sources)
        steps = []
        if origin is None:
            return steps
        for other in self.names():
            stage = self.stage(other)
            if any(c not in stage.kinds for c in self.sources):
                continue
            first = self.sources[0]
            found = []
            if stage.kinds[first] in ("text", "number"):
                frame = stage._scan([first]).filter(pl.col(first) == row[first]).select(POSITION)
                candidates = frame.collect(engine="streaming")[POSITION].to_list()
            else:
                candidates = list(range(min(stage.rows.num_rows, 1000)))
            for at in range(0, len(candidates), 256):
                chunk = candidates[at : at + 256]
                for p, r in zip(chunk, stage.rows.rows_at(chunk), strict=True):
                    if origin_key(r, self.sources) == origin:
                        found.append({"position": p, "row": r})
                if len(found) >= per_stage:
                    break
            steps.append({"stage": other, "rows": found[:per_stage], "more": len(found) > per_stage})
        return steps
