"""What `synth inspect RUN` prints: status, counts per stage, sample rows and column stats.

A run can hold millions of rows in thousands of shards, so nothing here loads a whole table: row
counts come from the Parquet footers (read once, by the integrity check), column stats from one
polars scan of only the columns they need, and rows are read by position, only the row groups that
hold them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from rich.markup import escape

from .console import console, stage_table
from .labels import FILE as LABELS_FILE
from .labels import Labels, row_key
from .runs import RowFiles, Run, number_type, text_type
from .spend import spend_lines
from .store import StageDir


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


def show_dropped(run: Run, dirs: list[StageDir], n: int) -> None:
    """Dropped rows with their reasons, stage by stage until n are shown (`Run.iter_dropped` reads
    the rows that global stages and filters on their Arrow path keep only in the stage before)."""
    shown = 0
    for d in dirs:
        for record in run.iter_dropped(d, limit=max(1, n - shown)):
            if shown >= n:
                return
            kind = "failed" if record["failed"] else "filtered"
            detail = escape(str(record.get("detail") or "")[:200])
            console.print(f"[yellow]{d.path.name}[/] {kind}: {escape(str(record['reason']))}  {detail}")
            if record.get("row") is not None:
                _print_row(json.loads(record["row"]))
            shown += 1
        if shown >= n:
            return
    if not shown:
        console.print("no dropped rows")


def show_batches(root: Path) -> None:
    """Batch jobs still running at the provider (the openai backend's `batch: true`)."""
    from .llm.batchjournal import in_flight

    jobs = in_flight(root)
    if jobs:
        console.print(
            f"[bold]{len(jobs)} batch job(s) in flight[/] (resume collects them; cancel: synth batches cancel)"
        )
    for job in jobs:
        counts = ", ".join(f"{k} {v}" for k, v in job.counts.items()) or f"{job.requests} requests"
        console.print(f"  {escape(str(job.batch_id))}  {job.backend}  {job.status}  ({counts})")


def _budget_resume(manifest: dict, run: Run) -> str:
    return (manifest.get("budget") or {}).get("resume") or f"{run.resume_hint} --budget ..."


def show_run(
    root: Path,
    n: int = 3,
    stage_label: str | None = None,
    dropped: bool = False,
    provenance: bool = False,
    seed: int | None = None,
) -> None:
    """`seed`: show n rows picked at random with this seed instead of the first n."""
    run = Run(root)
    manifest = run.manifest
    status = run.status
    console.print(f"[bold]{manifest['name']}[/]  status: {status}  fingerprint: {manifest['fingerprint']}")
    if status in ("interrupted", "failed"):
        how = "stopped before finishing" if status == "interrupted" else "failed"
        console.print(f"the run {how}; resume it with: {run.resume_hint}")
    elif status == "budget":
        console.print(f"the run stopped at its budget; resume it with: {escape(_budget_resume(manifest, run))}")
    elif status == "running":
        console.print("a synth process is working on this run now")
    if manifest.get("stages"):
        console.print(stage_table(manifest["stages"]))
    labels = Labels(root)
    if len(labels):
        console.print(f"labels ({LABELS_FILE}, from synth view): {labels.summary()}")
    show_batches(root)
    for line in spend_lines(manifest):
        console.print(escape(line))
    dirs = run.stages()
    chosen = run.stage(stage_label) if stage_label else None
    checked = run.check()
    if dropped:
        show_dropped(run, [chosen] if chosen else dirs, n)
        return
    if chosen is not None:
        rows, where, named = run.rows(chosen), f"stage {stage_label}", stage_label
    elif checked.output is not None:
        rows, where, named = run.rows(), "output", "output"
    else:
        done = [d for d in dirs if d.done_indices()]
        if not done:
            console.print("no rows yet")
            return
        rows, where = run.rows(done[-1]), f"stage {done[-1].path.name} (the run is not finished)"
        named = done[-1].path.name.split("-", 1)[1]
    console.print(f"\n[bold]{where}[/]: {rows.num_rows:,} rows")
    for name, text in column_stats(rows):
        console.print(f"  {name}: {text}")
    picked = rows.head(n) if seed is None else rows.sample(n, seed)
    if seed is not None and picked:
        console.print(f"{len(picked)} rows picked at random (seed {seed}):")
    marks = labels.of(named) if len(labels) else {}
    for row in picked:
        mark = marks.get(row_key(row))
        if mark:
            console.print(f"[bold]labelled {mark['label']}[/]" + (f": {escape(mark['note'])}" if mark["note"] else ""))
        _print_row(_content_first(row, provenance))
    if n and "provenance" in rows.schema.names and not provenance:
        console.print("(each row's provenance: add --provenance)")
