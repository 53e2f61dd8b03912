"""`synth inspect` and `synth report`: a run, read for people."""

from __future__ import annotations

from pathlib import Path

import click

from .common import friendly, output_folder


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-n", "--rows", "n", default=3, show_default=True, help="sample rows to show")
@click.option("--stage", "stage_label", help="show rows of this stage instead of the final output")
@click.option("--dropped", is_flag=True, help="show dropped rows with their reasons")
@click.option("--provenance", is_flag=True, help="show each sample row's provenance too")
@click.option("--seed", type=int, help="show -n rows picked at random with this seed (default: the first rows)")
@friendly
def inspect(run_dir: Path, n: int, stage_label: str | None, dropped: bool, provenance: bool, seed: int | None):
    """Show a run: status, rows through each stage, filters, sample rows and column stats.

    \b
    Examples:
      synth inspect runs/quickstart
      synth inspect runs/quickstart --stage question -n 5
      synth inspect runs/quickstart --dropped
      synth inspect runs/quickstart -n 1 --provenance
      synth inspect runs/magpie -n 5 --seed 1
    """
    from ..inspect_run import show_run

    show_run(run_dir, n=n, stage_label=stage_label, dropped=dropped, provenance=provenance, seed=seed)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@output_folder("folder for index.html and the PNG plots (default: RUN/report)")
@friendly
def report(run_dir: Path, out: Path | None):
    """Write a self-contained HTML report of a run, with its plots as PNG files.

    Rows per stage, drop reasons, length histograms, task categories, score and dedup-distance
    distributions, tokens and time per stage, sample rows and the pipeline.

    \b
    Examples:
      synth report runs/quickstart                 # writes runs/quickstart/report/index.html
      synth report runs/magpie -o /tmp/magpie-report
    """
    from ..report import build_report

    click.echo(str(build_report(run_dir, out)))


COMMANDS = (inspect, report)  # registered on `synth` by synth/cli/__init__.py
