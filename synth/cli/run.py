"""`synth run` and `synth validate`: a pipeline file, run or checked."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import click

from ..errors import ConfigError
from .common import apply_trust, friendly, output_folder, trust_options


def _on_sigterm(signum, frame) -> None:
    """What Ctrl-C would do now: asyncio's handler cancels the run, which then writes its manifest
    (`interrupted`) and stops; before or after the event loop, a KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    (handler if callable(handler) else signal.default_int_handler)(signal.SIGINT, frame)


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (`kill`, a job scheduler, a container stopping) stops a run as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@output_folder("run directory (default: runs/<pipeline name>)")
@click.option(
    "--resume/--overwrite",
    default=True,
    show_default=True,
    help="continue the run in an existing run directory, or delete it and start over",
)
@click.option("--limit", type=click.IntRange(min=0), help="read at most N source rows (for a quick trial)")
@click.option(
    "--retry-failed/--keep-failed",
    default=None,
    help="on resume, run again the rows that failed (a request out of retries, an empty or unparseable answer); "
    "default: retry when the last run did not complete",
)
@click.option(
    "--executor",
    metavar="NAME",
    help="where map stages' batches run, a registered executor: local (this process), ray (Ray actors, "
    "docs/ray.md) or one a plugin adds; default: the pipeline's run.executor",
)
@click.option(
    "--address",
    metavar="ADDR",
    help="the Ray cluster for --executor ray: auto, local (a private one) or HOST:PORT; default: run.address, "
    "else RAY_ADDRESS",
)
@click.option(
    "--batch-files",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="write the requests of the openai backends as OpenAI batch files (DIR/requests-*.jsonl) and stop, "
    "to run them anywhere (vllm run-batch, a provider's console); docs/batches.md",
)
@click.option(
    "--batch-results",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="take the output files of those batch files in (every *.jsonl in DIR) and go on; requests still "
    "without an answer are written to DIR as new request files",
)
@click.option(
    "--budget",
    metavar="CAPS",
    help="stop before the next request could exceed this, for the whole run across resumes: cost=12.5 (at the "
    "backends' pricing:), tokens=2000000, requests=500, several with commas; overrides run.budget",
)
@trust_options
@click.option("-q", "--quiet", is_flag=True, help="no progress bars (notes and errors are still shown)")
@click.option("-v", "--verbose", is_flag=True, help="keep the engines' own log lines (llama.cpp's)")
@friendly
def run(
    pipeline_file: Path,
    out: Path | None,
    resume: bool,
    limit: int | None,
    retry_failed: bool | None,
    executor: str | None,
    address: str | None,
    batch_files: Path | None,
    batch_results: Path | None,
    budget: str | None,
    allow_read: tuple[Path, ...],
    allow_key: tuple[str, ...],
    quiet: bool,
    verbose: bool,
):
    """Run a pipeline, or resume it if its run directory exists.

    Each stage's output is saved as Parquet shards in the run directory as it is produced, and
    every LLM answer is cached, so after Ctrl-C, a crash or kill -9 the same command continues
    where the run stopped without repeating a finished request. Changing a stage's parameters
    recomputes that stage and the ones after it (cached answers are reused).

    With a budget (--budget or run.budget) the run stops before a request could exceed it:
    requests already sent finish and are cached, finished rows are kept, and the run ends with
    status `budget` (exit 3) and the command that resumes it with a higher --budget.

    \b
    Examples:
      synth run pipelines/quickstart.yaml
      synth run pipelines/quickstart.yaml --limit 20 -o runs/trial
      synth run my.yaml --overwrite                # start from scratch
      synth run my.yaml --keep-failed              # resume without retrying failed rows
      synth run their.yaml --allow-read ~/data --allow-key VLLM_API_KEY
      synth run my.yaml --executor ray --address auto   # map stages on a Ray cluster
      synth run judge.yaml --batch-files batches/  # write request files, run them elsewhere,
      synth run judge.yaml --batch-results batches/  # then take their answers in and go on
      synth run my.yaml --budget tokens=2000000    # stop before 2M tokens are spent
    """
    from ..config import load_pipeline
    from ..llm.batchapi import BatchFilesWritten
    from ..run import run_pipeline

    apply_trust(allow_read, allow_key)
    caps = None
    if budget is not None:
        from ..budget import parse_budget

        try:
            caps = parse_budget(budget)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--budget") from None
    pipeline = load_pipeline(pipeline_file)
    if executor is not None:
        from .. import registry

        if executor not in registry.names("executors"):
            raise click.BadParameter(registry.unknown("executors", executor), param_hint="--executor")
    root = out or Path("runs") / pipeline.name
    if not verbose and any(getattr(b, "type", "") == "local" for b in pipeline.backends.values()):
        from ..llm.local import silence_llama_logs

        silence_llama_logs()
    from ..console import ConsoleProgress

    progress = ConsoleProgress(bars=not quiet)  # -q keeps the notes: a dead server is never silence
    with sigterm_as_ctrl_c():
        try:
            result = run_pipeline(
                pipeline,
                root,
                overwrite=not resume,
                limit=limit,
                progress=progress,
                retry_failed=retry_failed,
                executor=executor,
                address=address,
                batch_files=batch_files,
                batch_results=batch_results,
                budget=caps,
            )
        except BatchFilesWritten as stopped:  # not a failure: the run waits for the answers
            click.echo(f"stopped: {stopped}")
            return
    from ..console import print_summary

    print_summary(result)
    if result.manifest.get("status") == "budget":
        stop = result.manifest["budget"]
        click.secho(f"stopped: {stop['reached']}; resume with: {stop['resume']}", fg="yellow", err=True)
        raise SystemExit(3)
    push = pipeline.output.push_to_hub
    if push is not None and result.manifest.get("status") == "complete":
        from ..hub import push_run

        click.echo(f"pushed to {push.repo_id}: {push_run(root, push)}")


@click.command()
@click.argument("pipeline_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@trust_options
@friendly
def validate(pipeline_files: tuple[Path, ...], allow_read: tuple[Path, ...], allow_key: tuple[str, ...]):
    """Check pipeline files without running them: every problem at once, with file:line.

    Checks the YAML, every field of every stage (unknown names get a suggestion), that
    templates and input files exist, that backends are defined, and that each stage's input
    columns are made by an earlier stage. For each valid file it then lists what the pipeline
    reads, which hosts it contacts, which environment variables it sends to which host, and
    where it pushes: read that before running a pipeline someone else wrote.

    \b
    Examples:
      synth validate pipelines/quickstart.yaml
      synth validate pipelines/*.yaml
      synth validate their.yaml --allow-read ~/datasets --allow-key VLLM_API_KEY
    """
    from ..config import load_pipeline
    from ..estimate import budget_warnings
    from ..inputs import access_summary

    apply_trust(allow_read, allow_key)
    problems = []
    for path in pipeline_files:
        try:
            pipeline = load_pipeline(path)
            click.echo(f"{path}: ok ({len(pipeline.stages)} stages)")
            for problem in empty_prompts(pipeline):
                click.secho(f"warning: {problem}", fg="yellow", err=True)
            for message in budget_warnings(pipeline):
                click.secho(f"warning: {path}: {message}", fg="yellow", err=True)
            for line in access_summary(pipeline):
                click.echo(line)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)


def empty_prompts(pipeline) -> list:
    """Templates that render to nothing for the first row a `load` stage reads: every such row
    would fail its template (a warning: other rows may fill it). A template that needs columns
    later stages make, or fails for another reason, is left to the run."""
    import jinja2

    from ..errors import Problem, SynthError
    from ..stages.base import StageContext
    from ..templating import render
    from ..yamlfile import format_path

    source = pipeline.stages[0]
    if source.key != "load":
        return []
    try:
        context = StageContext(seed=pipeline.seed, label=source.label, index=0, base_dir=pipeline.base_dir)
        row = next(iter(source.cls(source.params, context).iter_rows(1)), None)
    except (SynthError, OSError):
        return []
    found = []
    for spec in pipeline.stages[1:] if row else []:
        for key, value in spec.params.model_dump().items():
            if not (isinstance(value, str) and value.endswith(".jinja")):
                continue
            try:
                text = render(value, pipeline.base_dir, allow_empty=True, **row, row=row)
            except (jinja2.TemplateError, TypeError):
                continue
            if not text.strip():
                where = (*spec.where, key)
                message = f"template '{value}' renders an empty prompt for the first input row; such rows fail"
                found.append(Problem(spec.doc.file, spec.doc.line_of(where), format_path(where), message))
    return found


COMMANDS = (run, validate)  # registered on `synth` by synth/cli/__init__.py
