"""`synth decontaminate IN OUT --reference FILE ...`: drop benchmark copies from a dataset, with a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import InputError
from .common import CONTEXT_SETTINGS, build_params, friendly, read_rows, trust_named_files, write_table

if TYPE_CHECKING:
    from ..stages.dedup.decontaminate import DecontaminateParams


def run_decontaminate(source: Path, out: Path, params: DecontaminateParams, batch_size: int = 1024) -> dict:
    """Run the stage over SOURCE into OUT; write OUT's report beside it (.decontamination.json/.md)."""
    import asyncio

    from ..parquet import rows_to_table
    from ..similarity import decontam
    from ..stages.base import Batch
    from ..stages.dedup.decontaminate import Decontaminate, parse_reference

    names: set[str] = set()
    for spec in params.references:
        name, path = parse_reference(spec)
        if not Path(path).expanduser().exists():
            raise InputError(f"reference file {path} does not exist; give an existing file or folder to --reference")
        if name in names:
            raise InputError(f"two reference sets are named '{name}'; name one with --reference other={path}")
        names.add(name)
    trust_named_files(source, *(parse_reference(s)[1] for s in params.references))
    rows, ctx = read_rows(source, params.column, "decontaminate")
    stage = Decontaminate(params, ctx)
    kept, details = [], []

    async def go() -> None:
        await stage.open()
        for start in range(0, len(rows), batch_size):
            batch = Batch(rows=rows[start : start + batch_size])
            kept.extend(await stage.process(batch))
            details.extend(d.detail for d in batch.dropped)

    asyncio.run(go())
    write_table(rows_to_table(kept), out)
    report = decontam.summarize(details, len(rows), stage.references_info())
    report.update(input=str(source), output=str(out), rows_out=len(kept))
    report["params"] = json.loads(params.model_dump_json(exclude={"name"}))
    json_path, md_path = decontam.write_report(report, out.with_name(out.stem + ".decontamination.json"))
    report["report"] = {"json": str(json_path), "markdown": str(md_path)}
    return report


@click.command("decontaminate", context_settings=CONTEXT_SETTINGS)
@click.argument("source", metavar="IN", type=click.Path(exists=True, path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-r",
    "--reference",
    "references",
    multiple=True,
    required=True,
    metavar="[NAME=]FILE",
    help="benchmark prompts (a file or datasets folder); repeat for several sets; NAME defaults to the file stem",
)
@click.option("-c", "--column", default="instruction", show_default=True, help="text column to check")
@click.option("--reference-column", help="prompt column of the references (default: found by name)")
@click.option(
    "-m",
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(["exact", "ngram", "near_copy", "embedding"]),
    help="methods to use (repeat; default: all four)",
)
@click.option("--ngram", default=13, show_default=True, help="words in a shared run for the ngram method")
@click.option("-t", "--threshold", default=0.85, show_default=True, help="embedding: cosine with a reference prompt")
@click.option("--model", default="all-MiniLM-L6-v2", show_default=True, help="sentence-transformers model folder")
@click.option("--show", default=5, show_default=True, help="removed rows to print")
@friendly
def decontaminate(source, out, references, column, reference_column, methods, ngram, threshold, model, show):
    """Drop rows that copy benchmark prompts (AlpacaEval, Arena-Hard, MT-Bench, WildBench, ...).

    A row is removed when one of its prompts matches a reference prompt by normalized exact match,
    a shared 13-word run (or contains a shorter reference prompt whole), a near copy (typos, moved
    words, an added "Please answer:") or embedding similarity. Writes OUT (.jsonl or .parquet) with
    the rows kept, and OUT's name + .decontamination.json and .md beside it: counts per reference set
    and method, and examples naming the reference row matched. Runs offline; synth ships no
    benchmark data.

    \b
    Examples:
      synth decontaminate data.jsonl clean.jsonl --reference alpaca_eval.json
      synth decontaminate data.parquet clean.parquet -c prompt \\
          --reference mt_bench=question.jsonl --reference arena_hard=arena-hard-v0.1.jsonl
      synth decontaminate data.jsonl clean.jsonl -r bench.jsonl -m exact -m ngram   # no models
    """
    from ..stages.dedup.decontaminate import DecontaminateParams

    params = build_params(
        DecontaminateParams,
        references=list(references),
        column=column,
        reference_column=reference_column,
        methods=list(methods) or ["exact", "ngram", "near_copy", "embedding"],
        ngram=ngram,
        threshold=threshold,
        model=model,
    )
    report = run_decontaminate(source, out, params)
    by_method = ", ".join(f"{k}: {v}" for k, v in report["by_method"].items()) or "none"
    click.echo(
        f"{report['rows_in']} rows in, {report['rows_out']} out ({report['rows_removed']} contaminated: "
        f"{by_method}) -> {out}"
    )
    for name, s in report["sets"].items():
        click.echo(f"  {name}: {s['removed']} rows removed ({s.get('prompts', '?')} reference prompts)")
    for s in report["sets"].values():
        for e in s["examples"][:show]:
            click.echo(f"  [{e['set']} #{e['row']}, {e['method']} {e['score']}] {' '.join(e['text'].split())[:90]}")
    click.echo(f"report: {report['report']['json']} and {report['report']['markdown']}")


COMMANDS = (decontaminate,)  # registered on `synth` by synth/cli/__init__.py
