"""What `synth inspect RUN` prints: status, counts per stage, sample rows and column stats."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .console import console, stage_table
from .errors import RunError
from .store import RunStore, StageDir, concat


def _shorten(value, width: int = 300):
    if isinstance(value, str) and len(value) > width:
        return value[:width] + f"... [{len(value):,} chars]"
    if isinstance(value, list):
        return [_shorten(v, width) for v in value]
    if isinstance(value, dict):
        return {k: _shorten(v, width) for k, v in value.items()}
    return value


def column_stats(table: pa.Table) -> list[tuple[str, str]]:
    stats = []
    for name in table.column_names:
        column = table.column(name)
        nulls = column.null_count
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            lengths = pc.utf8_length(column)
            text = (
                f"text: chars min {pc.min(lengths).as_py()}, mean {pc.mean(lengths).as_py() or 0:,.0f}, "
                f"max {pc.max(lengths).as_py()}; distinct {pc.count_distinct(column).as_py():,}"
            )
        elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            text = f"number: min {pc.min(column).as_py()}, mean {pc.mean(column).as_py()}, max {pc.max(column).as_py()}"
        else:
            text = str(column.type)
        stats.append((name, text + (f"; {nulls:,} null" if nulls else "")))
    return stats


def _content_first(row: dict, provenance: bool) -> dict:
    """A sample row as people read it: its content, not the record of how it was made (which is
    most of its text) unless asked for."""
    shown = {k: v for k, v in row.items() if k != "provenance"}
    if provenance and "provenance" in row:
        shown["provenance"] = row["provenance"]
    return shown


def show_run(
    root: Path, n: int = 3, stage_label: str | None = None, dropped: bool = False, provenance: bool = False
) -> None:
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
    stage_dirs = sorted((root / "stages").glob("*-*"))
    if stage_label:
        matches = [d for d in stage_dirs if d.name.split("-", 1)[1] == stage_label]
        if not matches:
            labels = ", ".join(d.name.split("-", 1)[1] for d in stage_dirs)
            raise RunError(f"no stage '{stage_label}' in {root} (stages: {labels})")
        chosen = StageDir(matches[0])
    else:
        chosen = None
    if dropped:
        dirs = [chosen] if chosen else [StageDir(d) for d in stage_dirs]
        shown = 0
        for d in dirs:
            for record in d.iter_dropped():
                if shown >= n:
                    return
                console.print(
                    f"[yellow]{d.path.name}[/] {'failed' if record['failed'] else 'filtered'}: "
                    f"{record['reason']}  {record['detail'][:200]}"
                )
                console.print_json(json.dumps(_shorten(json.loads(record["row"]))))
                shown += 1
        if not shown:
            console.print("no dropped rows")
        return
    if chosen is not None:
        table = chosen.table()
        where = f"stage {stage_label}"
    elif (root / "output").is_dir():
        import pyarrow.parquet as pq

        table = concat([pq.read_table(p) for p in sorted((root / "output").glob("*.parquet"))])
        where = "output"
    else:
        done = [StageDir(d) for d in stage_dirs if StageDir(d).done_indices()]
        if not done:
            console.print("no rows yet")
            return
        table, where = done[-1].table(), f"stage {done[-1].path.name} (the run is not finished)"
    console.print(f"\n[bold]{where}[/]: {table.num_rows:,} rows")
    for name, text in column_stats(table):
        console.print(f"  {name}: {text}")
    for row in table.slice(0, n).to_pylist():
        console.print_json(json.dumps(_shorten(_content_first(row, provenance)), ensure_ascii=False, default=str))
    if n and "provenance" in table.column_names and not provenance:
        console.print("(each row's provenance: add --provenance)")
