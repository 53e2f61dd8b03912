"""`synth inspect`, `synth report` and `synth view`: a run, read for people."""

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


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--port", default=8765, show_default=True, help="port to serve on (0: any free port)")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to bind; anything but loopback lets other machines read the run and label its rows",
)
@click.option("--open/--no-open", "open_browser", default=False, help="open the page in the default browser")
@friendly
def view(run_dir: Path, port: int, host: str, open_browser: bool):
    """Read a run in the browser: every stage's rows, pairs side by side, lineage, labels.

    A local web app over the run directory, finished or still running: page through each
    stage's rows (read from the shards, never loaded whole), filter columns, search every text
    column, sort, see dropped rows with their reasons, and follow a row back through the stages to
    the prompts and raw answers that made it. Preference rows show prompt, chosen and rejected side
    by side with scores and the differences marked; SFT rows show as a conversation. Label rows
    good or bad with a note: labels go to RUN/labels.parquet (the one file the viewer writes) and
    `synth export --drop-labeled bad` leaves those rows out. Ctrl-C stops it.

    \b
    Examples:
      synth view runs/ultrafeedback-dpo                  # then open http://127.0.0.1:8765/
      synth view runs/magpie --port 9000
      synth export runs/ultrafeedback-dpo -o out/uf --format preference --drop-labeled bad
    """
    from ..view.server import serve

    server = serve(run_dir, host, port)
    click.echo(f"synth view: {server.url} (Ctrl-C stops it)")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


COMMANDS = (inspect, report, view)  # registered on `synth` by synth/cli/__init__.py
