"""The run's record of its batch jobs: `batches/journal.jsonl` in the run directory.

A batch job costs money the moment it is created, so its ids are written down (one JSON line,
flushed and fsynced) before the next step starts: a run killed at any point finds, on resume, the
job it already paid for and polls or downloads it instead of submitting again. The journal is
append-only; a job's state is the fold of its lines. It imports no HTTP client: `synth inspect`
and `synth batches` read it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FOLDER = "batches"  # in the run directory (store.RUN_ENTRIES)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class JobRecord:
    """One batch job as the journal tells it."""

    job: str
    backend: str = ""
    url: str = ""  # the base URL the job went to (credentials are refused there: specs.py)
    endpoint: str = ""
    input: str = ""  # the request lines, kept in the run directory (file name in batches/)
    requests: int = 0
    input_file_id: str | None = None
    batch_id: str | None = None
    status: str = "preparing"
    counts: dict = field(default_factory=dict)
    output: str | None = None  # downloaded answers (file name in batches/)
    errors: str | None = None
    files: str | None = None  # offline mode: where the request file was written

    @property
    def in_flight(self) -> bool:
        """Created at the provider and its answers not yet downloaded."""
        return self.batch_id is not None and self.output is None


class Journal:
    def __init__(self, root: Path):
        self.folder = Path(root) / FOLDER
        self.path = self.folder / "journal.jsonl"

    def append(self, event: dict) -> None:
        """One line, on disk before the caller takes the next step."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def jobs(self) -> dict[str, JobRecord]:
        jobs: dict[str, JobRecord] = {}
        if not self.path.exists():
            return jobs
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill: its step is done again
            name = event.get("job")
            if not isinstance(name, str):
                continue
            record = jobs.setdefault(name, JobRecord(name))
            for key, value in event.items():
                if key not in ("event", "job") and hasattr(record, key):
                    setattr(record, key, value)
        return jobs

    def write_file(self, name: str, data: bytes) -> Path:
        """A file of the job's (its request lines, its downloaded answers), whole or not at all."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path


def in_flight(root: Path) -> list[JobRecord]:
    """The batch jobs of a run still running at the provider (or not yet collected)."""
    return [j for j in Journal(root).jobs().values() if j.in_flight]
