"""The dataset card (README.md) of an exported run, generated from its manifest and rows.

It says what made the data (pipeline, models, templates with hashes, sampling parameters, seed),
how many rows each stage kept and why it dropped the others, what the rows look like (lengths,
categories), the licence, and how to load it. Every card passes through `scrub`, so no key or
token can reach it, even one a user pasted into a pipeline's description or a URL.

The row statistics come from one pass over the output's columns a chunk at a time (`output_stats`):
a numpy array of text lengths per described column, counts per category, the first row's provenance.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .parquet import DEFAULT_CHUNK_ROWS, count_rows, iter_chunks
from .scrub import scrub, without_yaml_comments
from .spend import spend_lines
from .store import events_text

LENGTH_COLUMNS = ("instruction", "response", "chosen", "rejected")
COUNT_COLUMNS = (
    ("task_category", "task category"),
    ("difficulty", "difficulty"),
    ("input_quality", "input quality"),
    ("language", "language"),
)


@dataclass
class OutputStats:
    """What the card says about the rows: column names, text lengths, category counts."""

    column_names: list[str]
    num_rows: int = 0
    lengths: dict[str, str | None] = field(default_factory=dict)  # column -> "min .., median .., ..."
    counts: dict[str, Counter] = field(default_factory=dict)
    first_provenance: dict | None = None

    @classmethod
    def of_table(cls, table: pa.Table) -> OutputStats:
        stats = StatsReader(table.schema)
        stats.add(table)
        return stats.result(table.num_rows)


class StatsReader:
    """Takes the output's rows a chunk at a time (the columns in `columns`, at least) and keeps
    per row only a text length per described column, in numpy."""

    def __init__(self, schema: pa.Schema):
        names = schema.names
        self.names = names
        self.texts = [c for c in LENGTH_COLUMNS if c in names and _is_text(schema.field(c).type)]
        self.lengths: dict[str, list[np.ndarray]] = {c: [] for c in self.texts}
        self.counts = {c: Counter() for c, _ in COUNT_COLUMNS if c in names}
        self.first_provenance: dict | None = None
        self.columns = [c for c in (*LENGTH_COLUMNS, *(c for c, _ in COUNT_COLUMNS), "provenance") if c in names]

    def add(self, chunk: pa.Table) -> None:
        if self.first_provenance is None and chunk.num_rows and "provenance" in self.names:
            self.first_provenance = chunk.column("provenance")[0].as_py() or {}
        for c in self.texts:
            lengths = pc.utf8_length(chunk.column(c).drop_null())
            self.lengths[c].append(lengths.to_numpy(zero_copy_only=False).astype(np.int32))
        for c, counter in self.counts.items():
            counter.update(chunk.column(c).to_pylist())

    def result(self, num_rows: int) -> OutputStats:
        lengths = {
            c: _length_stats(np.concatenate(parts) if parts else np.zeros(0)) for c, parts in self.lengths.items()
        }
        return OutputStats(self.names, num_rows, lengths, self.counts, self.first_provenance)


def output_stats(files: list[Path], schema: pa.Schema, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> OutputStats:
    """The card's statistics of a run's output files, read a chunk of rows at a time."""
    stats = StatsReader(schema)
    for chunk in iter_chunks(files, schema, chunk_rows, columns=stats.columns) if stats.columns else []:
        stats.add(chunk)
    return stats.result(count_rows(files))


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _length_stats(lengths: np.ndarray) -> str | None:
    """min, median, mean and max of text lengths in characters (as statistics.median and fmean give them)."""
    if not len(lengths):
        return None
    mean = int(lengths.sum(dtype=np.int64)) / len(lengths)
    return (
        f"min {int(lengths.min()):,}, median {float(np.median(lengths)):,.0f}, "
        f"mean {mean:,.0f}, max {int(lengths.max()):,}"
    )


def _counts_table(counter: Counter, title: str) -> list[str]:
    lines = [f"| {title} | rows |", "|---|---:|"]
    lines += [f"| {value if value is not None else '(none)'} | {count:,} |" for value, count in counter.most_common()]
    return lines


def _relabel_section(manifest: dict, stats: OutputStats) -> list[str]:
    """Which condition to give at inference a model trained on reward-augmented (relabeled) pairs:
    the text the `relabel` stage recorded in each row's provenance, filled with the top score."""
    labels = [s["label"] for s in manifest.get("stages") or [] if s.get("stage") == "relabel"]
    if not labels or stats.first_provenance is None:
        return []
    provenance = stats.first_provenance
    lines = []
    for label in labels:
        record = provenance.get(label) or {}
        if not record.get("inference_text"):
            continue
        where = "as the system message" if record.get("mode") == "system" else "before the user turn, then a blank line"
        lines += [
            "## Conditioning at inference",
            "",
            f"Stage `{label}` (reward-augmented relabeling) made each pair two rows, each conditioned on a target "
            "score: the chosen response's, and the rejected response's with the two responses swapped. At "
            f"inference, condition the trained model on the top score: give this text {where}.",
            "",
            "```text",
            record["inference_text"],
            "```",
            "",
        ]
    return lines


def render_card(
    manifest: dict,
    table: OutputStats | pa.Table,
    *,
    fmt: str,
    counts: dict[str, int],
    file_format: str,
    license: str | None,
    extra_sections: list[str] | None = None,
) -> str:
    stats = OutputStats.of_table(table) if isinstance(table, pa.Table) else table
    name = manifest.get("name", "dataset")
    ext = "jsonl" if file_format == "jsonl" else "parquet"
    data_files = "\n".join(f"  - split: {split}\n    path: {split}*.{ext}" for split in counts)
    lines = [
        "---",
        f"license: {license or 'other'}",
        "task_categories:\n- text-generation",
        "tags:\n- synthetic\n- synth",
        f"configs:\n- config_name: default\n  data_files:\n{data_files}",
        "---",
        "",
        f"# {name}",
        "",
        f"Synthetic `{fmt}` data made with synth {manifest.get('packages', {}).get('synth', '')} "
        f"from the pipeline below (seed {manifest.get('seed')}).",
        "",
        "## Splits",
        "",
        *(f"- {split}: {n:,} rows" for split, n in counts.items()),
        "",
        "## How to load",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("{ext}", data_dir="path/to/this/folder")  # or load_dataset("<user>/<repo>")',
        "```",
        "",
        "## Models",
        "",
        "| stage | model |",
        "|---|---|",
        *(f"| {label} | {', '.join(names)} |" for label, names in (manifest.get("models") or {}).items()),
        "",
        "| backend | settings |",
        "|---|---|",
        *(
            f"| {k} | {', '.join(f'{a}={b}' for a, b in v.items() if b is not None)} |"
            for k, v in manifest.get("backends", {}).items()
        ),
        "",
    ]
    templates = manifest.get("templates") or {}
    if templates:
        lines += ["## Templates", "", "| template | sha256 (first 16) |", "|---|---|"]
        lines += [f"| {t} | {h} |" for t, h in sorted(templates.items())] + [""]
    stages = manifest.get("stages") or []
    if stages:
        lines += [
            "## Rows through each stage",
            "",
            "| stage | in | out | dropped (why) | events |",
            "|---|---:|---:|---|---|",
        ]
        for s in stages:
            why = {**s.get("filtered", {}), **{f"failed: {k}": v for k, v in s.get("failed", {}).items()}}
            reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(why.items())) or "-"
            lines.append(
                f"| {s['label']} ({s['stage']}) | {s['rows_in']:,} | {s['rows_out']:,} | {reasons} | {events_text(s)} |"
            )
        lines.append("")
    spent = spend_lines(manifest)
    if spent:  # requests, tokens and cost per stage, summed over every session of the run
        lines += ["## What it took", "", "```text", *spent, "```", ""]
    lines += ["## What the rows look like", ""]
    for column in LENGTH_COLUMNS:
        if stats.lengths.get(column):
            lines.append(f"- `{column}` length in characters: {stats.lengths[column]}")
    lines.append("")
    for column, title in COUNT_COLUMNS:
        if column in stats.counts:
            lines += _counts_table(stats.counts[column], title) + [""]
    lines += _relabel_section(manifest, stats)
    for section in extra_sections or []:  # e.g. the decontamination report, its headings one level down
        lines += [("#" + line if line.startswith("#") else line) for line in section.rstrip().splitlines()] + [""]
    lines += [
        "## Pipeline",
        "",
        "```yaml",
        without_yaml_comments(manifest.get("config", "")).rstrip(),
        "```",
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in sorted(manifest.get("packages", {}).items())),
        "",
    ]
    return scrub("\n".join(lines))


def write_card(out_dir: Path, manifest: dict, table: OutputStats | pa.Table, **kwargs) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_card(manifest, table, **kwargs), encoding="utf-8")
    return path
