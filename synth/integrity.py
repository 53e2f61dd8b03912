"""Whether a run directory holds what its markers promise, checked before anything reads it.

A shard counts as done once its marker exists (see synth/store.py), but its files can still go
missing or be cut short afterwards: a copy of the run that stopped halfway, a disk that filled up
under another program, a file deleted by hand. Reading such a run would show fewer rows than it has
or fail deep inside Parquet with no file named. So inspect, report and export check first, one
Parquet footer and one marker per file and no data (15,625 shards, a 4M-row stage at the default
batch size, in about a second), and name the broken files with the command that recomputes them;
the runner forgets those shards on resume (`forget_broken`) and computes them again."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunError
from .store import RunStore, StageDir

try:
    from pyarrow._parquet import ParquetReader as _Reader
except ImportError:  # a pyarrow that moved it: the public call, a little slower
    _Reader = None

OUTPUT_NAME = re.compile(r"data-(\d{5})-of-(\d{5})\.parquet")
SHOWN = 3  # broken files named in the error; the rest are counted


@dataclass(frozen=True)
class Part:
    """One intact Parquet file: a stage's shard or a file of the output, with its footer's facts."""

    path: Path
    rows: int
    schema: pa.Schema


@dataclass(frozen=True)
class Broken:
    path: Path
    problem: str  # "is missing", "has 12 rows where its marker says 256", ...
    index: int | None = None  # the shard, for shard files and markers

    def text(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        return f"{shown} {self.problem}"


@dataclass
class Checked:
    """The intact files of a stage (shards in index order) or of the output, and what is broken."""

    parts: list[Part] = field(default_factory=list)
    problems: list[Broken] = field(default_factory=list)
    marked: int = 0  # rows the markers count, broken shards included

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)


class _Schemas:
    """Shards of one stage share one or a few schemas: keep one object of each, found by the Arrow
    schema pyarrow stores in the footer (its bytes hash faster than the schema converts)."""

    def __init__(self):
        self.seen: dict[bytes | pa.Schema, pa.Schema] = {}

    def __call__(self, meta: pq.FileMetaData) -> pa.Schema:
        key = (meta.metadata or {}).get(b"ARROW:schema")
        if key is not None and key in self.seen:
            return self.seen[key]
        schema = meta.schema.to_arrow_schema()
        schema = self.seen.setdefault(schema, schema)
        if key is not None:
            self.seen[key] = schema
        return schema


def _read_footer(path: Path) -> pq.FileMetaData:
    if _Reader is None:
        return pq.read_metadata(path)
    reader = _Reader()  # what pq.read_metadata does, less the Python work of a ParquetFile: half the time
    reader.open(str(path))
    try:
        return reader.metadata
    finally:
        reader.close()


def _footer(path: Path) -> tuple[pq.FileMetaData | None, str | None]:
    try:
        return _read_footer(path), None
    except (OSError, pa.ArrowException):
        if not path.exists():
            return None, "is missing"
        return None, "is truncated or corrupt (its Parquet footer does not read)"


def _count(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"


def _check_file(
    path: Path, expected: int | None, whose: str, index: int | None
) -> tuple[Broken | None, pq.FileMetaData]:
    meta, problem = _footer(path)
    if problem is not None:
        said = f" ({whose} says {_count(expected)})" if expected is not None else ""
        return Broken(path, problem + said, index), meta
    if expected is not None and meta.num_rows != expected:
        return Broken(path, f"has {_count(meta.num_rows)} where {whose} says {expected:,}", index), meta
    return None, meta


def check_stage(stage: StageDir, schemas: _Schemas | None = None) -> Checked:
    """Every shard whose marker exists: the shard reads and holds the rows its marker counts, and
    its dropped rows (the marker's filtered + failed) are all in its dropped file."""
    schemas = schemas or _Schemas()
    checked = Checked()
    for index in stage.done_indices():
        marker = stage.marker(index)
        try:
            stats = json.loads(marker.read_text())
            rows_out = int(stats["rows_out"])
            dropped = sum(stats.get("filtered", {}).values()) + sum(stats.get("failed", {}).values())
        except FileNotFoundError:
            continue  # forgotten since it was listed (a running synth redoing it)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            checked.problems.append(Broken(marker, "is not a readable shard marker", index))
            continue
        checked.marked += rows_out
        shard = stage.shard(index)
        broken, meta = _check_file(shard, rows_out, "its marker", index)
        if broken:
            checked.problems.append(broken)
        else:
            checked.parts.append(Part(shard, meta.num_rows, schemas(meta)))
        if dropped:
            broken, _ = _check_file(stage.dropped_path(index), dropped, "its marker", index)
            if broken:
                checked.problems.append(broken)
    return checked


def stage_problems(stage_dir: Path | StageDir) -> list[Broken]:
    stage = stage_dir if isinstance(stage_dir, StageDir) else StageDir(Path(stage_dir))
    return check_stage(stage).problems


def forget_broken(stage_dir: Path | StageDir) -> list[int]:
    """Make every broken shard of a stage not done (marker, shard and dropped file go), so a resume
    computes it again; returns their indices. The runner must also forget the same indices in the
    later stages of the segment, which would otherwise be taken as done."""
    stage = stage_dir if isinstance(stage_dir, StageDir) else StageDir(Path(stage_dir))
    indices = sorted({p.index for p in check_stage(stage).problems if p.index is not None})
    for index in indices:
        stage.forget(index)
    return indices


def check_output(root: Path, expected: int | None = None, schemas: _Schemas | None = None) -> Checked:
    """The files of `output/`: every `data-N-of-M` file there is, each footer reads, and together
    they hold the rows the manifest counts."""
    schemas = schemas or _Schemas()
    checked = Checked()
    folder = root / "output"
    files = sorted(folder.glob("*.parquet"))
    totals = {int(m.group(2)) for f in files if (m := OUTPUT_NAME.fullmatch(f.name))}
    names = {f.name for f in files}
    for total in sorted(totals):
        for n in range(total):
            name = f"data-{n:05d}-of-{total:05d}.parquet"
            if name not in names:
                checked.problems.append(Broken(folder / name, "is missing"))
    for path in files:
        broken, meta = _check_file(path, None, "", None)
        if broken:
            checked.problems.append(broken)
        else:
            checked.parts.append(Part(path, meta.num_rows, schemas(meta)))
    if expected is not None and not checked.problems and checked.rows != expected:
        checked.problems.append(
            Broken(folder, f"holds {_count(checked.rows)} where the manifest says {expected:,} (a file is missing)")
        )
    return checked


def stage_dirs(root: Path) -> list[StageDir]:
    return [StageDir(d) for d in sorted((Path(root) / "stages").glob("*-*")) if d.is_dir()]


@dataclass
class RunCheck:
    stages: dict[str, Checked]  # stage folder name -> its intact shards
    output: Checked | None
    problems: list[Broken]


def check_run(root: str | Path, manifest: dict | None = None) -> RunCheck:
    """Every stage and the output. On a complete run also: each stage's shards are numbered 0..n-1
    without a gap and hold the rows the manifest counts (a shard gone with its marker)."""
    root = Path(root)
    store = RunStore(root)
    manifest = manifest if manifest is not None else store.read_manifest()
    live = store.held()  # a running synth rewrites shards and the output: check only what it marked done
    complete = not live and manifest.get("status") == "complete"
    counted = {s.get("label"): s.get("rows_out") for s in manifest.get("stages") or []}
    schemas = _Schemas()
    stages: dict[str, Checked] = {}
    problems: list[Broken] = []
    for stage in stage_dirs(root):
        checked = check_stage(stage, schemas)
        if live:
            checked.problems = [p for p in checked.problems if p.index is None or stage.done(p.index)]
        if complete:
            indices = stage.done_indices()
            gaps = sorted(set(range(indices[-1] + 1)) - set(indices)) if indices else []
            checked.problems += [Broken(stage.shard(i), "is missing, and so is its marker", i) for i in gaps]
            want = counted.get(stage.path.name.split("-", 1)[1])
            if not gaps and isinstance(want, int) and checked.marked != want:
                checked.problems.append(
                    Broken(stage.path, f"holds {_count(checked.marked)} in its shards where the manifest says {want:,}")
                )
        stages[stage.path.name] = checked
        problems += checked.problems
    output = None
    if not live and (root / "output").is_dir():
        expected = (manifest.get("output") or {}).get("rows") if complete else None
        output = check_output(root, expected, schemas)
        problems += output.problems
    return RunCheck(stages, output, problems)


def broken_message(root: Path, problems: list[Broken], manifest: dict) -> str:
    named = "; ".join(p.text(root) for p in problems[:SHOWN])
    more = f" (and {len(problems) - SHOWN:,} more broken files)" if len(problems) > SHOWN else ""
    them = "it" if len(problems) == 1 else "them"
    return f"{root} is damaged: {named}{more}; recompute {them} with: {RunStore(root).resume_hint(manifest)}"


def require_intact(run_root: str | Path, manifest: dict | None = None) -> RunCheck:
    """The run's check; a RunError naming the first broken files and the command that recomputes
    them if anything is broken."""
    root = Path(run_root)
    manifest = manifest if manifest is not None else RunStore(root).read_manifest()
    checked = check_run(root, manifest)
    if checked.problems:
        raise RunError(broken_message(root, checked.problems, manifest))
    return checked
