"""Export a finished run as a training dataset, with a dataset card.

Formats are the ones TRL reads without reshaping:
- `sft`: `messages`, a list of {role, content} (built from instruction/response when needed);
- `preference`: `prompt`, `chosen`, `rejected` as message lists (DPO's conversational format:
  the prompt is the user turn, after the run's `system` turn when it has one; chosen and rejected
  are one assistant turn each), plus `score_chosen`, `score_rejected`, `margin` and `rationale`
  when the run has them;
- `kto`: `prompt`, `completion` (message lists) and a boolean `label`; each preference pair
  becomes two rows, or a run's own `label` column is used;
- `raw`: every column as the run made it.
Files are Parquet (default) or JSONL, split into train/test with a seeded shuffle of the prompts
(all rows of one prompt land in the same split).

The export streams: it reads the run's output a chunk of rows at a time and writes each split as
it goes, so a run of millions of rows exports in bounded memory; what it keeps per row is a
16-byte hash of the prompt, its group number, a test-split flag and the card's text lengths, in
numpy arrays (a few tens of bytes a row). A split of more than about 500 MB (estimated from the
run's Parquet sizes) is written as several `train-0000K-of-0000N.parquet` files (the shard size
`datasets`' push_to_hub uses), which the Hub and `load_dataset` read as one split; a smaller one
keeps the single `train-00000-of-00001.parquet`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import deque
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .card import StatsReader, write_card
from .errors import RunError
from .labels import labelled_origins, origin_mask
from .outputs import content_type, conversation, conversations, messages_type
from .parquet import DEFAULT_CHUNK_ROWS, ParquetParts
from .records import turn_columns
from .runs import Run
from .splits import held_out_mask

Format = Literal["sft", "preference", "kto", "raw"]
# The files an export writes (and so replaces): a split name, a shard suffix, a data extension.
_DATA_FILE = re.compile(r"^(?:train|test|validation|valid|dev|eval)(?:-\d{5}-of-\d{5})?\.(?:parquet|jsonl|json|csv)$")
# A split's Parquet files hold about this many bytes each (datasets' push_to_hub default shard size).
MAX_FILE_BYTES = 500 * 1024 * 1024

# Columns a preference export keeps beside prompt/chosen/rejected when the run has them.
PREFERENCE_EXTRAS = ("score_chosen", "score_rejected", "margin", "rationale")


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _prompt(row: dict, column: str) -> list[dict]:
    """The prompt turns: the row's `system` text first when it has one, then the user turn."""
    system = row.get("system")
    return ([{"role": "system", "content": system}] if system else []) + _user(row[column])


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _need(names: list[str], *columns: str, fmt: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise RunError(f"the '{fmt}' format needs column(s) {', '.join(missing)}; the run has: {', '.join(names)}")


class Converter:
    """One format's rows from the run's, chunk by chunk: which columns it reads, the schema it
    writes, the checks it makes before a row is written (with the run's column names)."""

    def __init__(self, schema: pa.Schema, fmt: Format, keep: list[str] | None):
        self.schema, self.fmt, self.names = schema, fmt, schema.names
        names = self.names
        self.keep = [c for c in names if c != "provenance"] if keep == ["all"] else list(keep or [])
        self.keep_asked = bool(keep) and fmt != "raw"
        self.labels = fmt == "kto" and "label" in names
        self._first: list[dict] = []  # KTO: the split's first two pairs, the partners of its last two
        self._pending: deque[dict] = deque()
        self._pairs = 0
        self.arrow = False
        if fmt == "raw":
            self.columns, self.out_schema = names, schema
            return
        turns = turn_columns(names)
        read = {
            "sft": ["messages", "instruction", "response", "system", *turns],
            "preference": ["instruction", "chosen", "rejected", "system", *PREFERENCE_EXTRAS],
            "kto": ["instruction", "system", "label", "response", "chosen", "rejected"],
        }[fmt]
        self.columns = list(dict.fromkeys(c for c in [*read, *self.keep] if c in names))
        self.out_schema = self._out_schema(turns)
        self.sft_missing = [c for c in ("instruction", "response") if c not in names]
        # SFT from instruction/response texts: the messages built in Arrow, not row by row
        self.arrow = (
            fmt == "sft"
            and "messages" not in names
            and self.out_schema.field("messages").type == (messages_type(pa.string()))
        )

    def _out_schema(self, turns: list[str]) -> pa.Schema:
        s, names = self.schema, self.names
        system = ["system"] if "system" in names else []
        if self.fmt == "sft":
            messages = s.field("messages").type if "messages" in names else None
            if not _is_messages(messages):
                string_system = system and content_type(s, system, "sft export") == pa.string()
                sources = ["instruction", "response", *turns, *(system if string_system else [])]
                messages = messages_type(content_type(s, sources, "sft export"))
            made = [pa.field("messages", messages)]
        elif self.fmt == "preference":
            made = [pa.field("prompt", messages_type(content_type(s, ["instruction", *system], "preference prompt")))]
            made += [
                pa.field(c, messages_type(content_type(s, [c], f"preference {c}"))) for c in ("chosen", "rejected")
            ]
            made += [s.field(c) for c in PREFERENCE_EXTRAS if c in names]
        else:
            answers = ["response"] if self.labels else ["chosen", "rejected"]
            made = [
                pa.field("prompt", messages_type(content_type(s, ["instruction", *system], "kto prompt"))),
                pa.field("completion", messages_type(content_type(s, answers, "kto completion"))),
                pa.field("label", pa.bool_()),
            ]
        made_names = {f.name for f in made}
        kept = [s.field(c) for c in self.keep if c not in made_names and c in names] if self.keep_asked else []
        return pa.schema(kept + made)

    def check(self, rows: int) -> None:
        """The checks the format makes of a split of `rows` rows, before anything is written."""
        if self.fmt == "raw":
            return
        if rows and self.fmt == "preference":
            _need(self.names, "instruction", "chosen", "rejected", fmt="preference")
        if rows and self.fmt == "kto":
            _need(self.names, "instruction", *(["response"] if self.labels else ["chosen", "rejected"]), fmt="kto")
        if rows and self.fmt == "sft" and "messages" not in self.names:
            _need(self.names, "instruction", "response", fmt="sft")
        if not self.keep_asked:
            return
        if self.fmt == "kto":
            raise RunError("--keep-columns works with the sft and preference formats (a KTO row is half a pair)")
        missing = [c for c in self.keep if rows and c not in self.names]
        if missing:
            raise RunError(
                f"--keep-columns: the run has no column(s) {', '.join(missing)}; it has: {', '.join(self.names)}"
            )

    def output_rows(self, rows: int) -> int:
        return 2 * rows if self.fmt == "kto" and not self.labels else rows

    def records(self, rows: list[dict]) -> list[dict]:
        if self.fmt == "sft":
            out = [self._sft(row) for row in rows]
        elif self.fmt == "preference":
            out = [self._preference(row) for row in rows]
        elif self.labels:
            out = [
                {
                    "prompt": _prompt(r, "instruction"),
                    "completion": _assistant(r["response"]),
                    "label": bool(r["label"]),
                }
                for r in rows
            ]
        else:
            out = []
            for row in rows:
                if len(self._first) < 2:
                    self._first.append(row)
                self._pending.append(row)
                self._pairs += 1
                if len(self._pending) == 3:
                    out += _kto_pair(self._pending.popleft(), row)
            return out
        if not self.keep_asked:
            return out
        return [
            {**{c: row.get(c) for c in self.keep if c not in made}, **made} for row, made in zip(rows, out, strict=True)
        ]

    def finish(self) -> list[dict]:
        """A split's last rows: the KTO pairs whose partner is one of the split's first two."""
        if self.fmt != "kto" or self.labels:
            return []
        out, n = [], self._pairs
        for k, row in enumerate(self._pending):  # pairs n-2 and n-1 (or only 0): partners 0 and 1
            out += _kto_pair(row, self._first[(n - len(self._pending) + k + 2) % n])
        return out

    def table(self, part: pa.Table) -> pa.Table:
        """The SFT rows of `part` in Arrow (when `self.arrow`): the kept columns, then messages."""
        kept = [part.column(f.name) for f in self.out_schema if f.name != "messages"]
        return pa.Table.from_arrays([*kept, conversations(part, "instruction", "response")], schema=self.out_schema)

    def _sft(self, row: dict) -> dict:
        if row.get("messages"):
            return {"messages": row["messages"]}
        if self.sft_missing:
            _need(self.names, "instruction", "response", fmt="sft")
        return {"messages": conversation(row, "instruction", "response")}

    def _preference(self, row: dict) -> dict:
        record = {
            "prompt": _prompt(row, "instruction"),
            "chosen": _assistant(row["chosen"]),
            "rejected": _assistant(row["rejected"]),
        }
        for column in PREFERENCE_EXTRAS:
            if column in row:
                record[column] = row[column]
        return record


def _kto_pair(row: dict, other: dict) -> list[dict]:
    """Pair i's desirable row, then pair i+2's undesirable one: TRL's KTOTrainer estimates its KL
    term from each row's prompt with the previous row's completion (rotated within a batch), and
    a pair's two rows side by side would make half of those the same prompt's own answers."""
    return [
        {"prompt": _prompt(row, "instruction"), "completion": _assistant(row["chosen"]), "label": True},
        {"prompt": _prompt(other, "instruction"), "completion": _assistant(other["rejected"]), "label": False},
    ]


def _is_messages(t: pa.DataType | None) -> bool:
    if t is None or not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return False
    fields = {t.value_type.field(i).name for i in range(t.value_type.num_fields)}
    return {"role", "content"} <= fields


# ---- the train/test split ----


class SplitWriter:
    """One split's file(s): JSONL line by line, or Parquet through ParquetParts."""

    def __init__(self, folder: Path, name: str, file_format: str, conv: Converter, rows: int, bytes_per_row: float):
        self.conv, self.file_format, self.count = conv, file_format, 0
        out_rows = conv.output_rows(rows)
        if file_format == "jsonl":
            self.path = folder / f"{name}.jsonl"
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            return
        files = max(1, math.ceil(out_rows * bytes_per_row / MAX_FILE_BYTES))
        per_file = max(1, math.ceil(out_rows / files))
        schema = conv.out_schema if out_rows else pa.schema([])  # an empty split: a file of no column
        self._parts = ParquetParts(
            folder, lambda k, n: f"{name}-{k:05d}-of-{n:05d}.parquet", out_rows, per_file, schema
        )

    def write(self, part: pa.Table) -> None:
        if not part.num_rows:
            return
        conv = self.conv
        if conv.arrow and self.file_format != "jsonl":
            self._parts.write(conv.table(part))
            self.count += part.num_rows
            return
        if conv.fmt == "raw":
            if self.file_format == "jsonl":
                self._lines(part.to_pylist())
            else:
                self._parts.write(part)
                self.count += part.num_rows
            return
        self._records(conv.records(part.select(conv.columns).to_pylist()))

    def _records(self, records: list[dict]) -> None:
        if not records:
            return
        if self.file_format == "jsonl":
            self._lines(records)
            return
        try:
            table = pa.Table.from_pylist(records, schema=self.conv.out_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise RunError(
                f"the '{self.conv.fmt}' rows cannot be stored as Parquet: {exc}; export with --jsonl"
            ) from None
        self._parts.write(table)
        self.count += len(records)

    def _lines(self, rows: list[dict]) -> None:
        self._fh.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
        self.count += len(rows)

    def close(self) -> list[Path]:
        self._records(self.conv.finish())
        if self.file_format == "jsonl":
            self._fh.close()
            return [self.path]
        return self._parts.close()

    def abort(self) -> None:
        if self.file_format == "jsonl":
            self._fh.close()


def _decontamination_reports(run: Run) -> list[Path]:
    """The reports `decontaminate` stages wrote, so a published dataset says what it was checked against."""
    found = [s.meta / "decontamination.json" for s in run.stages()]
    return [p for p in found if p.exists() and p.with_suffix(".md").exists()]


def _labelled(run: Run, output, label: str | None, chunk_rows: int) -> np.ndarray | None:
    """Which output rows come from a source row labelled `label` (None when none is to be left out)."""
    if label is None:
        return None
    columns, origins = labelled_origins(run, label)
    missing = [c for c in columns if c not in output.schema.names]
    if missing:
        raise RunError(
            f"--drop-labeled needs the output to keep the source column(s) {', '.join(missing)}, which identify "
            "a labelled row; drop `output.columns` from the pipeline (or keep those columns) and run it again"
        )
    if not origins:
        return None
    marks = [origin_mask(chunk.to_pylist(), columns, origins) for chunk in output.chunks(chunk_rows, columns=columns)]
    return np.concatenate([np.asarray(m, dtype=bool) for m in marks]) if marks else None


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: Format = "sft",
    *,
    file_format: str = "parquet",
    test_size: float = 0.0,
    seed: int = 42,
    license: str | None = None,
    keep_columns: list[str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    drop_labeled: str | None = None,
) -> dict[str, int]:
    """Write the run's dataset in `fmt` to out_dir, with a README.md dataset card; returns rows per split.
    `drop_labeled` ("bad"): leave out the rows made from a source row carrying that label (synth/labels.py)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = Run(run_dir)
    manifest = run.manifest
    if manifest.get("status") != "complete":
        raise RunError(
            f"{run_dir} is not finished (status: {manifest.get('status')}): "
            f"run 'synth run' on its pipeline again to complete it"
        )
    output = run.output()
    files, schema, total = output.files, output.schema, output.num_rows
    # Rows made from a row labelled `drop_labeled` leave first; then the run's rows are split and
    # converted: a KTO pair's two rows stay in the same split.
    left_out = _labelled(run, output, drop_labeled, chunk_rows)
    kept = total - (int(left_out.sum()) if left_out is not None else 0)
    in_test = held_out_mask(files, schema, total, test_size, seed, chunk_rows) if test_size else None
    if in_test is not None and left_out is not None:
        in_test = in_test & ~left_out
    n_test = int(in_test.sum()) if in_test is not None else 0
    sizes = {"train": kept - n_test, "test": n_test} if in_test is not None else {"train": kept}
    conv = Converter(schema, fmt, keep_columns)
    for rows in sizes.values():
        conv.check(rows)
    bytes_per_row = sum(p.stat().st_size for p in files) / max(total, 1)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".synth-export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writers: dict[str, SplitWriter] = {}
    try:
        for name, rows in sizes.items():  # a converter each: KTO pairs rows within a split
            writers[name] = SplitWriter(
                tmp, name, file_format, Converter(schema, fmt, keep_columns), rows, bytes_per_row
            )
        stats = StatsReader(schema)  # the card's statistics, from the same reads
        columns = schema.names if fmt == "raw" else list(dict.fromkeys([*conv.columns, *stats.columns]))
        start = 0
        for chunk in output.chunks(chunk_rows, columns=columns):
            rows = chunk.num_rows
            test = pa.array(in_test[start : start + rows]) if in_test is not None else None
            if left_out is not None:  # out of the dataset and of the card's statistics
                keep = pa.array(~left_out[start : start + rows])
                chunk, test = chunk.filter(keep), (test.filter(keep) if test is not None else None)
            stats.add(chunk)
            if test is None:
                writers["train"].write(chunk)
            else:
                writers["train"].write(chunk.filter(pc.invert(test)))
                writers["test"].write(chunk.filter(test))
            start += rows
        written = [p for w in writers.values() for p in w.close()]
    except BaseException:
        for w in writers.values():
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    # An export replaces the folder's dataset: a test split left from an earlier export would be
    # loaded beside the new train split (and overlap it).
    for stale in out_dir.iterdir():
        if _DATA_FILE.match(stale.name) and not (tmp / stale.name).exists():
            stale.unlink()
    for path in written:
        os.replace(path, out_dir / path.name)
    tmp.rmdir()
    counts = {name: w.count for name, w in writers.items()}
    reports = [p.with_suffix(".md").read_text(encoding="utf-8") for p in _decontamination_reports(run)]
    write_card(
        out_dir,
        manifest,
        stats.result(kept),
        fmt=fmt,
        counts=counts,
        file_format=file_format,
        license=license,
        extra_sections=reports,
    )
    return counts
