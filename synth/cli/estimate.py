"""`synth estimate`: what a full run will take, from a sample run (synth/estimate.py does the sums)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from .common import apply_trust, friendly, output_folder, trust_options

SHARDS = 10  # the sample is cut into about this many shards: their spread gives the range


@click.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sample", type=click.IntRange(min=1), help="input rows to run as the sample (default: 10% of them)")
@click.option(
    "--from-run",
    "from_run",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="measure this run (a --limit trial, or an earlier sample) instead of running a sample",
)
@click.option("--rows", type=click.IntRange(min=1), help="rows of the full input (default: counted from the source)")
@output_folder("the run directory the real run will use (default: runs/<name>): it receives the sample's answers")
@click.option("--json", "as_json", is_flag=True, help="print the estimate as JSON")
@trust_options
@click.option("-q", "--quiet", is_flag=True, help="no progress bars while the sample runs")
@friendly
def estimate(
    pipeline_file: Path,
    sample: int | None,
    from_run: Path | None,
    rows: int | None,
    out: Path | None,
    as_json: bool,
    allow_read: tuple[Path, ...],
    allow_key: tuple[str, ...],
    quiet: bool,
):
    """Estimate a full run's requests, tokens, cost and time from a sample of its input.

    Runs the pipeline on the first N input rows (10% by default) into RUN-estimate, measures
    what every stage needed per input row (filters' pass rates included), and extrapolates to
    the whole input, each figure with a range (about 99.7% confidence, from the spread of the
    sample's shards and the filters' pass rates). Cost uses the backends' pricing:; time, their
    declared tokens_per_second or the speed the sample measured. The sample's answers are copied
    into the real run's cache, so `synth run` does not pay for them again.

    \b
    Examples:
      synth estimate pipelines/quickstart.yaml
      synth estimate my.yaml --sample 200
      synth estimate my.yaml --from-run runs/trial     # a run made with --limit
      synth estimate my.yaml --json
    """
    from ..config import load_pipeline
    from ..estimate import add_time_and_cost, estimate_lines, source_rows, unmeasured

    apply_trust(allow_read, allow_key)
    pipeline = load_pipeline(pipeline_file)
    full = rows or source_rows(pipeline, count=True)
    root = out or Path("runs") / pipeline.name
    scratch = from_run or Path(f"{root}-estimate")
    n = sample or max(1, math.ceil(full / 10))
    while True:
        if from_run is None:
            _run_sample(pipeline, scratch, n, quiet)
        results, sampled = _measure(pipeline, scratch, full)
        empty = unmeasured(results)
        if not empty or from_run is not None or n >= full:
            break
        n = min(full, n * 2)  # a filter left a stage without rows: a larger sample (the cache keeps the first)
        click.echo(f"no sample row reached {', '.join(empty)}: sampling {n:,} rows", err=True)
    if from_run is None:
        _hand_over(scratch, root)
    pricing = {n: b.pricing for n, b in pipeline.backends.items() if b.pricing is not None}
    speeds = {n: b.tokens_per_second for n, b in pipeline.backends.items() if b.tokens_per_second}
    totals = add_time_and_cost(results, pricing, speeds)
    if as_json:
        click.echo(
            json.dumps({"input_rows": full, "sample_rows": sampled, "stages": results, "total": totals}, indent=2)
        )
        return
    for line in estimate_lines(results, totals, full, sampled):
        click.echo(line)


def _measure(pipeline, scratch: Path, full: int):
    """Each stage's figures in a run directory, extrapolated, and the sample's size."""
    from ..errors import RunError
    from ..estimate import extrapolate, run_stage_dirs, stage_wall
    from ..store import RunStore

    manifest = RunStore(scratch).read_manifest()
    folders = run_stage_dirs(scratch)
    missing = [s.label for s in pipeline.stages if s.label not in folders]
    if missing:
        raise RunError(
            f"{scratch} has no folder for stage(s) {', '.join(missing)}: run a sample first (drop --from-run)"
        )
    stages = [
        (s.label, s.key, folders[s.label], [b for b in s.cls.backend_names(s.params) if b in pipeline.backends])
        for s in pipeline.stages
    ]
    sampled = int(folders[pipeline.stages[0].label].stats().rows_out)
    return extrapolate(stages, full, stage_wall(manifest)), sampled


def _run_sample(pipeline, scratch: Path, n: int, quiet: bool) -> None:
    """The pipeline on its first n rows, cut into about SHARDS shards (batch size decides only
    shard boundaries: requests and their cache keys stay the same)."""
    from ..console import ConsoleProgress
    from ..run import run_pipeline

    pipeline.run = pipeline.run.model_copy(update={"batch_size": max(1, math.ceil(n / SHARDS))})
    run_pipeline(pipeline, scratch, limit=n, progress=ConsoleProgress(bars=not quiet))


def _hand_over(scratch: Path, root: Path) -> None:
    """The sample's answers into the real run's cache (made if the run does not exist yet)."""
    from ..cache import RequestCache
    from ..store import RunStore

    RunStore(root).check_usable()
    root.mkdir(parents=True, exist_ok=True)
    cache = RequestCache(root / "cache.sqlite")
    try:
        added = cache.absorb(scratch / "cache.sqlite")
    finally:
        cache.close()
    click.echo(f"{added:,} answers of the sample copied into {root / 'cache.sqlite'}", err=True)


COMMANDS = (estimate,)  # registered on `synth` by synth/cli/__init__.py
