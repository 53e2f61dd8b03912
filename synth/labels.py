"""People's labels on a run's rows: good or bad, with a note, kept in `RUN/labels.parquet`.

A label names its row by content, not by position, so it holds across resumes (a resumed run
writes the same rows) and wherever the row travels:

- `key`: the digest of the row as the labelled stage wrote it (the viewer shows the label there);
- `origin`: the digest of the row's values of the first stage's columns, its source row. Every
  later row made from that source row shares it, so a label on a prompt, a response or a pair
  reaches the exported rows made from it: `synth export --drop-labeled bad` leaves out the rows
  whose origin carries a bad label (a pipeline that makes several pairs from one prompt loses all
  of them, as a row labelled at any stage vouches for its source).

The file is small (one row per label) and rewritten whole, atomically, at each change; the
viewer is the one writer. `synth run` never touches it (it is not one of the run's own entries),
so labels outlive resumes and `--overwrite`; labels of rows a changed pipeline no longer makes
simply match nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunError
from .runs import Run
from .seeds import digest
from .store import atomic_write_bytes

FILE = "labels.parquet"
VALUES = ("good", "bad")
SCHEMA = pa.schema(
    [
        ("stage", pa.string()),  # the stage label, or "output"
        ("key", pa.string()),
        ("origin", pa.string()),
        ("label", pa.string()),
        ("note", pa.string()),
        ("preview", pa.string()),  # the row's first text, so the file reads on its own
    ]
)


def row_key(row: dict) -> str:
    return digest(row, 32)


def origin_key(row: dict, columns: Iterable[str]) -> str | None:
    """The digest of the row's source columns; None when the row lacks one of them."""
    columns = list(columns)
    if not columns or any(c not in row for c in columns):
        return None
    return digest({c: row[c] for c in columns}, 32)


def source_columns(run: Run) -> list[str]:
    """The columns of the run's first stage: what identifies a row's source."""
    stages = run.stages()
    return list(run.rows(stages[0]).schema.names) if stages else []


def preview(row: dict, width: int = 200) -> str:
    for value in row.values():
        if isinstance(value, str) and value.strip():
            return value[:width]
    return ""


class Labels:
    """The labels of one run, read once; `set` writes the file again."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / FILE
        self.records: list[dict] = pq.read_table(self.path).to_pylist() if self.path.exists() else []

    def __len__(self) -> int:
        return len(self.records)

    def of(self, stage: str) -> dict[str, dict]:
        """key -> label record, for one stage's rows."""
        return {r["key"]: r for r in self.records if r["stage"] == stage}

    def set(self, stage: str, row: dict, origin: str | None, label: str | None, note: str = "") -> dict | None:
        """Label a row (`label` None removes its label); returns the record kept."""
        if label is not None and label not in VALUES:
            raise RunError(f"a label is one of {', '.join(VALUES)}, not {label!r}")
        key = row_key(row)
        self.records = [r for r in self.records if not (r["stage"] == stage and r["key"] == key)]
        record = None
        if label is not None:
            record = {
                "stage": stage,
                "key": key,
                "origin": origin,
                "label": label,
                "note": note or "",
                "preview": preview(row),
            }
            self.records.append(record)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.records, schema=SCHEMA), buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
        return record

    def origins(self, label: str) -> set[str]:
        return {r["origin"] for r in self.records if r["label"] == label and r["origin"]}

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(VALUES, 0)
        for r in self.records:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        return counts

    def summary(self) -> str:
        """One line for `synth inspect` and the report: "2 labelled: 1 good, 1 bad"."""
        counts = self.counts()
        return f"{len(self)} labelled: " + ", ".join(f"{v} {k}" for k, v in counts.items())


def labelled_origins(run: Run, label: str) -> tuple[list[str], set[str]]:
    """The source columns, and the origins carrying `label`, for dropping rows from an export
    (a RunError when labels name a label that is not one)."""
    if label not in VALUES:
        raise RunError(f"--drop-labeled takes one of {', '.join(VALUES)}, not {label!r}")
    labels = Labels(run.root)
    return source_columns(run), labels.origins(label)


def origin_mask(rows: list[dict], columns: list[str], origins: set[str]) -> list[bool]:
    """Whether each row comes from a labelled source row."""
    return [origin_key(row, columns) in origins for row in rows]
