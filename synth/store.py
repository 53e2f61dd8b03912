"""The run directory: everything a run writes, laid out so a kill -9 loses nothing finished.

    runs/<name>/
      pipeline.yaml            the pipeline file as given
      manifest.json            config, fingerprint, versions, per-stage counts and timings
      cache.sqlite             the request cache (WAL)
      stages/03-respond/
        shard-00007.parquet    rows out of batch 7 (the folder loads as a dataset: only shards here)
        .synth/stage.json      this stage's cumulative fingerprint
        .synth/shard-00007.dropped.parquet   rows this stage dropped from batch 7, with reason and detail
        .synth/shard-00007.json              completion marker: counts, drop reasons, counters, seconds
      output/                  the final dataset (Parquet), written when every stage is done

A shard counts as done only once its marker exists; data files are written to a temporary name
and renamed into place first, so a marker never points at a half-written file.

This module writes the run directory (the runner's side); synth/runs.py reads it for `inspect`,
`report`, `export` and `push`, with the dropped rows resolved from the stage before.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from .errors import RunError
from .parquet import concat, read_parquet, read_rows, rows_to_table, write_parquet
from .records import Row

# Everything synth writes in a run directory. `--overwrite` deletes these names and nothing else,
# and a directory holding anything else is refused as a run directory.
RUN_ENTRIES = frozenset(
    {
        ".lock",
        "pipeline.yaml",
        "manifest.json",
        "batches",
        ".manifest.json.tmp",
        "cache.sqlite",
        "cache.sqlite-wal",
        "cache.sqlite-shm",
        "cache.sqlite-journal",
        "stages",
        "output",
        ".output.tmp",
        "report",
    }
)


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value, sync: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode(), sync)


@dataclass
class ShardStats:
    rows_in: int = 0
    rows_out: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count_drop(self, reason: str, failed: bool, n: int = 1) -> None:
        """n rows dropped for `reason`: failures and filter decisions are counted apart."""
        if n:
            bucket = self.failed if failed else self.filtered
            bucket[reason] = bucket.get(reason, 0) + n

    def add(self, other: ShardStats) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.seconds += other.seconds
        for mine, theirs in (
            (self.filtered, other.filtered),
            (self.failed, other.failed),
            (self.counters, other.counters),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


# Counters every LLM stage has, shown in their own columns; the rest are events worth seeing
# (truncated answers, parse retries and failures, truncated reward inputs...).
TRAFFIC_COUNTERS = frozenset(
    {
        "requests",
        "cache_hits",
        "prompt_tokens",
        "completion_tokens",
        "cached_prompt_tokens",  # what answers served from the cache cost when they were bought
        "cached_completion_tokens",
    }
)


def stage_events(stage: dict) -> dict[str, int]:
    """A manifest stage entry's counters other than traffic, for the summary, inspect, report and card."""
    counters = stage.get("counters") or {}
    return {k: v for k, v in sorted(counters.items()) if k not in TRAFFIC_COUNTERS and v}


def events_text(stage: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in stage_events(stage).items()) or "-"


class StageDir:
    def __init__(self, path: Path):
        self.path = path
        # Markers, dropped rows and the fingerprint live in a hidden folder, so the stage folder
        # holds nothing but its rows' Parquet shards: pyarrow and `datasets` load it as it is.
        self.meta = path / ".synth"

    def shard(self, index: int) -> Path:
        return self.path / f"shard-{index:05d}.parquet"

    def marker(self, index: int) -> Path:
        return self.meta / f"shard-{index:05d}.json"

    def dropped_path(self, index: int) -> Path:
        return self.meta / f"shard-{index:05d}.dropped.parquet"

    def done(self, index: int) -> bool:
        return self.marker(index).exists()

    def done_indices(self) -> list[int]:
        return sorted(int(p.name[6:11]) for p in self.meta.glob("shard-*.json"))

    def write(self, index: int, rows: list[Row] | pa.Table, dropped: pa.Table | None, stats: ShardStats) -> None:
        """Shard `index`: its rows, its dropped rows (a batch's `Drops.table()`: reasons, and each row
        as JSON or as its position in the input), then its completion marker.

        Each file is renamed into place once complete, so a killed process leaves no marker
        without its data. They are not synced one by one (two fsyncs per shard took longer than
        filtering it, at millions of rows): the runner syncs when a segment ends, and a resume
        checks every shard's footer and row count, so a shard a power cut truncated is redone."""
        write_parquet(self.shard(index), rows if isinstance(rows, pa.Table) else rows_to_table(rows), sync=False)
        if dropped is not None and dropped.num_rows:
            write_parquet(self.dropped_path(index), dropped, sync=False)
        atomic_write_json(self.marker(index), stats.__dict__, sync=False)

    def failed_rows(self, index: int) -> int:
        """How many rows of shard `index` failed (not filtered), from its completion marker."""
        try:
            return sum(json.loads(self.marker(index).read_text()).get("failed", {}).values())
        except (OSError, ValueError, AttributeError):
            return 0

    def rows_in(self, index: int) -> int:
        """Rows shard `index` took in, from its completion marker (0 when unknown)."""
        try:
            return int(json.loads(self.marker(index).read_text()).get("rows_in", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            return 0

    def forget(self, index: int) -> None:
        """Make shard `index` not done: its marker goes first, so a kill midway leaves no marker
        pointing at a missing file."""
        for path in (self.marker(index), self.shard(index), self.dropped_path(index)):
            path.unlink(missing_ok=True)
        self.complete_marker.unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget every shard (the stage's input changed as a whole)."""
        self.complete_marker.unlink(missing_ok=True)
        for path in sorted(self.meta.glob("shard-*.json")):
            path.unlink()
        for path in [*self.meta.glob("shard-*"), *self.path.glob("shard-*")]:
            path.unlink()
        for path in self.meta.glob("synth-*"):  # a global stage's scratch files, from a killed attempt
            shutil.rmtree(path, ignore_errors=True)

    def read(self, index: int) -> list[Row]:
        return read_rows(self.shard(index))

    def read_table(self, index: int) -> pa.Table:
        return read_parquet(self.shard(index))

    def files(self) -> list[Path]:
        """The shards whose marker exists, in index order: the stage's rows."""
        return [self.shard(i) for i in self.done_indices()]

    def stats(self) -> ShardStats:
        total = ShardStats()
        for marker in self.meta.glob("shard-*.json"):
            total.add(ShardStats(**json.loads(marker.read_text())))
        return total

    def table(self) -> pa.Table:
        return concat([read_parquet(self.shard(i)) for i in self.done_indices()])

    @property
    def complete_marker(self) -> Path:
        return self.meta / "complete.json"


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fh = None

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def is_run(self) -> bool:
        """Whether root holds a manifest that synth wrote (not merely a file of that name)."""
        try:
            return json.loads(self.manifest_path.read_text()).get("synth_manifest") is not None
        except (OSError, ValueError, AttributeError):
            return False

    def check_usable(self) -> None:
        """Refuse a directory synth did not make: a run writes and, with --overwrite, deletes
        inside it, so pointing it at a folder of the user's must never touch their files. A run
        directory (one with synth's manifest) may hold other files: they are left alone."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise RunError(f"{self.root} exists and is not a directory; choose another run directory with -o")
        if self.is_run():
            return
        foreign = sorted(p.name for p in self.root.iterdir() if p.name not in RUN_ENTRIES)
        if foreign or self.exists():
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "") if foreign else "manifest.json"
            raise RunError(
                f"{self.root} is not a synth run directory (it holds {shown}); synth writes and deletes only in "
                "its own run directories: choose a new or empty directory with -o"
            )

    def lock(self) -> None:
        """One process per run directory; the OS releases the lock if the process is killed."""
        self.check_usable()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock_fh = open(self.root / ".lock", "w")  # noqa: SIM115 - held for the run's life
        except OSError as exc:
            raise RunError(f"cannot create the run directory {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{self.root} is in use by another synth process; wait for it or use another -o") from None

    def held(self) -> bool:
        """Whether a live process holds this run's lock (the OS drops it when a process dies)."""
        path = self.root / ".lock"
        if not path.exists():
            return False
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False

    def status(self, manifest: dict) -> str:
        """The run's status as it is now: a manifest says `running` forever after a kill -9 or a
        crash; with no live process holding the lock, that run was interrupted."""
        status = manifest.get("status", "unknown")
        if status == "running" and not self.held():
            return "interrupted"
        return status

    def resume_hint(self, manifest: dict) -> str:
        return f"synth run {manifest.get('pipeline_file', 'PIPELINE.yaml')} -o {self.root}"

    def unlock(self) -> None:
        if self._lock_fh:
            self._lock_fh.close()
            self._lock_fh = None

    def wipe(self) -> None:
        """Delete what synth wrote here (never anything else), for `--overwrite`."""
        if not self.is_run():
            raise RunError(f"{self.root} holds no synth manifest: refusing to delete anything in it")
        for child in self.root.iterdir():
            if child.name in RUN_ENTRIES and child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def stage(self, index: int, label: str) -> StageDir:
        return StageDir(self.root / "stages" / f"{index:02d}-{label}")

    def prepare_stage(self, index: int, label: str, fingerprint: str) -> tuple[StageDir, bool]:
        """Open a stage's directory; if it was made by a different pipeline (or an older synth's
        layout), clear it. Returns (dir, whether old shards were discarded)."""
        stage = self.stage(index, label)
        meta = stage.meta / "stage.json"
        discarded = False
        if stage.path.exists():
            old = json.loads(meta.read_text()).get("fingerprint") if meta.exists() else None
            if old != fingerprint:
                shutil.rmtree(stage.path)
                discarded = True
        stage.meta.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            atomic_write_json(meta, {"label": label, "index": index, "fingerprint": fingerprint})
        return stage, discarded

    def read_manifest(self) -> dict:
        if not self.exists():
            raise RunError(f"{self.root} is not a synth run directory (no manifest.json)")
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)
