"""The dataset card (README.md) of an exported run, generated from its manifest and rows.

It says what made the data (pipeline, models, templates with hashes, sampling parameters, seed),
how many rows each stage kept and why it dropped the others, what the rows look like (lengths,
categories), the licence, and how to load it. Every card passes through `scrub`, so no key or
token can reach it, even one a user pasted into a pipeline's description or a URL.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pyarrow as pa

from .scrub import scrub, without_yaml_comments
from .store import events_text


def _length_stats(values: list) -> str | None:
    lengths = [len(v) for v in values if isinstance(v, str)]
    if not lengths:
        return None
    return (
        f"min {min(lengths):,}, median {statistics.median(lengths):,.0f}, "
        f"mean {statistics.fmean(lengths):,.0f}, max {max(lengths):,}"
    )


def _counts_table(counter: Counter, title: str) -> list[str]:
    lines = [f"| {title} | rows |", "|---|---:|"]
    lines += [f"| {value if value is not None else '(none)'} | {count:,} |" for value, count in counter.most_common()]
    return lines


def _relabel_section(manifest: dict, table: pa.Table) -> list[str]:
    """Which condition to give at inference a model trained on reward-augmented (relabeled) pairs:
    the text the `relabel` stage recorded in each row's provenance, filled with the top score."""
    labels = [s["label"] for s in manifest.get("stages") or [] if s.get("stage") == "relabel"]
    if not labels or "provenance" not in table.column_names or not table.num_rows:
        return []
    provenance = table.column("provenance")[0].as_py() or {}
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
    table: pa.Table,
    *,
    fmt: str,
    counts: dict[str, int],
    file_format: str,
    license: str | None,
    extra_sections: list[str] | None = None,
) -> str:
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
    lines += ["## What the rows look like", ""]
    for column in ("instruction", "response", "chosen", "rejected"):
        if column in table.column_names:
            stats = _length_stats(table.column(column).to_pylist())
            if stats:
                lines.append(f"- `{column}` length in characters: {stats}")
    lines.append("")
    for column, title in (
        ("task_category", "task category"),
        ("difficulty", "difficulty"),
        ("input_quality", "input quality"),
        ("language", "language"),
    ):
        if column in table.column_names:
            lines += _counts_table(Counter(table.column(column).to_pylist()), title) + [""]
    lines += _relabel_section(manifest, table)
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


def write_card(out_dir: Path, manifest: dict, table: pa.Table, **kwargs) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_card(manifest, table, **kwargs), encoding="utf-8")
    return path
