"""`synth dedup IN OUT`: deduplicate an existing dataset, outside any pipeline, with a report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import CONTEXT_SETTINGS, build_params, friendly, read_rows, trust_named_files, write_table

if TYPE_CHECKING:
    from ..stages.dedup.dedup import DedupParams


def run_dedup(source: Path, out: Path, params: DedupParams, report: Path | None, show: int) -> dict:
    import asyncio

    import pyarrow as pa

    from ..parquet import rows_to_table
    from ..records import text_of
    from ..shards import Rows, in_memory
    from ..stages.base import Batch
    from ..stages.dedup.dedup import Dedup

    trust_named_files(source, params.reference)
    rows, ctx = read_rows(source, params.column, "dedup")
    table = rows_to_table(rows)
    stage = Dedup(params, ctx)
    batch = Batch(rows=[])

    async def go() -> pa.Table:
        await stage.open()
        if not table.num_rows:
            return table
        rows = Rows.from_table(table)
        return in_memory(rows, await stage.process_all(rows, batch))

    kept = asyncio.run(go())
    write_table(kept, out)
    result, positions_left = getattr(stage, "result", None), getattr(stage, "kept", None)
    texts = [text_of(v) for v in table.column(params.column).to_pylist()] if table.num_rows else []
    clusters = []
    for members in result.clusters() if result is not None else []:
        positions = [int(positions_left[i]) for i in members]  # the result counts the rows left after --reference
        clusters.append({"size": len(members), "rows": [{"position": i, "text": texts[i]} for i in positions]})
    summary = {
        "input": str(source),
        "output": str(out),
        "method": params.method,
        "threshold": params.effective_threshold(),
        "rows_in": table.num_rows,
        "rows_out": kept.num_rows,
        "dropped": dict(Counter(d.reason for d in batch.dropped)),
        "clusters": len(clusters),
        "info": result.info if result is not None else {},
    }
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({**summary, "clusters": clusters}, indent=1, ensure_ascii=False, default=str))
    summary["top_clusters"] = clusters[:show]
    return summary


@click.command("dedup", context_settings=CONTEXT_SETTINGS)
@click.argument("source", metavar="IN", type=click.Path(exists=True, path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-c", "--column", default="instruction", show_default=True, help="text column to compare")
@click.option(
    "-m", "--method", type=click.Choice(["exact", "minhash", "embedding"]), default="embedding", show_default=True
)
@click.option("-t", "--threshold", type=float, help="minhash: Jaccard (0.7); embedding: cosine (0.95; Magpie 0.975)")
@click.option("--model", default="all-MiniLM-L6-v2", show_default=True, help="sentence-transformers model folder")
@click.option(
    "--no-cascade",
    is_flag=True,
    help="embed every row with --model even above 10,000 rows (slow) instead of static candidates",
)
@click.option("--reference", type=click.Path(exists=True), help="also drop rows matching this dataset's rows")
@click.option("--reference-column", help="text column of --reference (default: --column)")
@click.option("--id-column", help="column naming rows in representative_id (default: row position)")
@click.option("--keep-all", is_flag=True, help="keep every row; only add representative_id, repeat_count, ...")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="write every cluster to this JSON")
@click.option("--show", default=5, show_default=True, help="clusters of duplicates to print")
@friendly
def dedup(source, out, column, method, threshold, model, no_cascade, reference, reference_column, id_column,
          keep_all, report, show):  # fmt: skip
    """Deduplicate a dataset: JSONL, JSON, CSV, Parquet, or a `datasets` folder, into OUT.

    Writes OUT (.jsonl or .parquet) with the rows kept and the columns representative_id,
    repeat_count (and min_neighbor_distance for embeddings), and prints the largest clusters of
    duplicates (--report writes them all as JSON). Everything runs offline.

    \b
    Examples:
      synth dedup data.jsonl clean.jsonl                        # embedding dedup of 'instruction'
      synth dedup data.parquet clean.parquet -c prompt -m minhash -t 0.8
      synth dedup data.jsonl clean.jsonl -m exact --report dups.json
      synth dedup train.jsonl clean.jsonl --reference bench.jsonl --reference-column question
    """
    from ..stages.dedup.dedup import DedupParams

    params = build_params(
        DedupParams,
        column=column,
        method=method,
        threshold=threshold,
        model=model,
        cascade=False if no_cascade else "auto",
        reference=str(Path(reference).resolve()) if reference else None,
        reference_column=reference_column,
        id_column=id_column,
        keep="all" if keep_all else "representatives",
    )
    summary = run_dedup(source, out, params, report, show)
    dropped = ", ".join(f"{k}: {v}" for k, v in summary["dropped"].items()) or "none"
    click.echo(
        f"{summary['rows_in']} rows in, {summary['rows_out']} out ({dropped}); "
        f"{summary['clusters']} clusters of duplicates -> {out}"
    )
    for cluster in summary["top_clusters"]:
        click.echo(f"\n{cluster['size']} rows:")
        for member in cluster["rows"][:5]:
            click.echo(f"  [{member['position']}] {' '.join(member['text'].split())[:100]}")
        if cluster["size"] > 5:
            click.echo(f"  ... and {cluster['size'] - 5} more")


COMMANDS = (dedup,)  # registered on `synth` by synth/cli/__init__.py
