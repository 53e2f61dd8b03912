"""The `synth` command line. Every command's help ends with examples; user mistakes print one
clear line (no traceback) and exit non-zero."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import ConfigError, SynthError
from .scrub import scrub


def friendly(fn):
    """Turn synth's own errors into one-line messages; leave real bugs their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                click.secho(f"error: {scrub(str(problem))}", fg="red", err=True)
            click.echo(f"{len(exc.problems)} problem(s) found", err=True)
            sys.exit(2)
        except SynthError as exc:
            click.secho(f"error: {scrub(str(exc))}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.secho(
                "interrupted: finished work is saved; run the same command again to resume", fg="yellow", err=True
            )
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="synth")
def main():
    """synth: synthetic alignment data (SFT and preference datasets) from LLMs.

    A pipeline is a YAML file of stages (load, generate, magpie, dedup, filter, ...) run
    against an LLM backend: the embedded llama.cpp model by default, any OpenAI-compatible
    server, or vLLM. Runs are checkpointed: re-running a killed run resumes it.

    \b
    Examples:
      synth run pipelines/quickstart.yaml          # run (or resume) into runs/quickstart
      synth validate my-pipeline.yaml              # check a pipeline without running it
      synth stages                                 # every stage with its parameters
      synth inspect runs/quickstart                # counts, sample rows, stats
    """


def _trust_options(fn):
    """--allow-read and --allow-key: what a user lets a pipeline file do beyond the defaults."""
    options = [
        click.option(
            "--allow-read",
            "allow_read",
            multiple=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="let the pipeline read files in this folder too (repeatable); by default it reads only in its "
            "own folder and the working directory, never hidden files",
        ),
        click.option(
            "--allow-key",
            "allow_key",
            multiple=True,
            metavar="VARIABLE",
            help="let a backend send this environment variable's API key to a host other than loopback "
            "(repeatable); OPENAI_API_KEY to api.openai.com needs no permission",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _apply_trust(allow_read: tuple[Path, ...], allow_key: tuple[str, ...]) -> None:
    """The permissions travel in the environment, where validation and the backends read them."""
    import os

    from .inputs import ALLOW_KEYS_ENV, ALLOW_READ_ENV

    if allow_read:
        known = [p for p in os.environ.get(ALLOW_READ_ENV, "").split(os.pathsep) if p]
        os.environ[ALLOW_READ_ENV] = os.pathsep.join([*known, *(str(p.expanduser().resolve()) for p in allow_read)])
    if allow_key:
        known = [k for k in os.environ.get(ALLOW_KEYS_ENV, "").split(",") if k]
        os.environ[ALLOW_KEYS_ENV] = ",".join([*known, *allow_key])


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="run directory (default: runs/<pipeline name>)",
)
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
    type=click.Choice(["local", "ray"]),
    help="where map stages' batches run: this process, or Ray actors (docs/ray.md); default: the pipeline's "
    "run.executor",
)
@click.option(
    "--address",
    metavar="ADDR",
    help="the Ray cluster for --executor ray: auto, local (a private one) or HOST:PORT; default: run.address, "
    "else RAY_ADDRESS",
)
@_trust_options
@click.option("-q", "--quiet", is_flag=True, help="no progress bars")
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

    \b
    Examples:
      synth run pipelines/quickstart.yaml
      synth run pipelines/quickstart.yaml --limit 20 -o runs/trial
      synth run my.yaml --overwrite                # start from scratch
      synth run my.yaml --keep-failed              # resume without retrying failed rows
      synth run their.yaml --allow-read ~/data --allow-key VLLM_API_KEY
      synth run my.yaml --executor ray --address auto   # map stages on a Ray cluster
    """
    from .config import load_pipeline
    from .run import run_pipeline

    _apply_trust(allow_read, allow_key)
    pipeline = load_pipeline(pipeline_file)
    root = out or Path("runs") / pipeline.name
    if not verbose and any(getattr(b, "type", "") == "local" for b in pipeline.backends.values()):
        from .llm.local import silence_llama_logs

        silence_llama_logs()
    progress = None
    if not quiet:
        from .console import ConsoleProgress

        progress = ConsoleProgress()
    result = run_pipeline(
        pipeline,
        root,
        overwrite=not resume,
        limit=limit,
        progress=progress,
        retry_failed=retry_failed,
        executor=executor,
        address=address,
    )
    from .console import print_summary

    print_summary(result)
    push = pipeline.output.push_to_hub
    if push is not None and result.manifest.get("status") == "complete":
        from .hub import push_run

        click.echo(f"pushed to {push.repo_id}: {push_run(root, push)}")


@main.command()
@click.argument("pipeline_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_trust_options
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
    from .config import load_pipeline
    from .inputs import access_summary

    _apply_trust(allow_read, allow_key)
    problems = []
    for path in pipeline_files:
        try:
            pipeline = load_pipeline(path)
            click.echo(f"{path}: ok ({len(pipeline.stages)} stages)")
            for line in access_summary(pipeline):
                click.echo(line)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)


@main.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly
def stages(names: tuple[str, ...], as_json: bool):
    """List the stages a pipeline can use, with their parameters and columns.

    \b
    Examples:
      synth stages
      synth stages generate load
    """
    from .describe import describe_stages

    described = describe_stages(list(names) or None)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for stage in described:
        click.secho(f"{stage['name']}  ({stage['kind']})", bold=True)
        click.echo(f"  {stage['summary']}")
        if stage["reads"]:
            click.echo(f"  reads:  {', '.join(stage['reads'])}")
        if stage["writes"]:
            click.echo(f"  writes: {', '.join(stage['writes'])}")
        for p in stage["params"]:
            default = "" if p["required"] else f" = {p['default']}"
            desc = f"  {p['description']}" if p["description"] else ""
            click.echo(f"    {p['name']}: {p['type']}{default}{desc}")
        click.echo()


@main.command()
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
    from .inspect_run import show_run

    show_run(run_dir, n=n, stage_label=stage_label, dropped=dropped, provenance=provenance, seed=seed)


def build_params(params_cls, arguments: tuple[str, ...] = (), /, **values):
    """A pydantic model from command-line values; a bad value is a usage error that names the
    option (`--threshold`) or the argument (`REPO_ID`) it came from."""
    from pydantic import ValidationError

    try:
        return params_cls(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        shown = name.upper() if name in arguments else "--" + name.replace("_", "-")
        raise click.UsageError(f"{shown}: {error['msg']}") from None


def _dataset_options(fn):
    """--format, --test-size, --seed and --license: what export and push share."""
    options = [
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["sft", "preference", "kto", "raw"]),
            default="sft",
            show_default=True,
            help="sft: messages; preference: prompt/chosen/rejected; kto: prompt/completion/label",
        ),
        click.option(
            "--test-size",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.0,
            show_default=True,
            help="share of rows for a test split (seeded shuffle)",
        ),
        click.option("--seed", type=int, default=42, show_default=True, help="seed of the train/test split"),
        click.option("--license", "license_", help="licence identifier for the card, e.g. apache-2.0 or llama3"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("repo_id")
@click.option("--private/--public", default=True, show_default=True, help="visibility of a repo synth creates")
@_dataset_options
@friendly
def push(run_dir: Path, repo_id: str, private: bool, fmt: str, test_size: float, seed: int, license_: str | None):
    """Push a finished run to the Hugging Face Hub as a dataset repo (data files and card).

    The token comes from the environment only: HF_TOKEN, or the login 'hf auth login' saved. The
    repo is created if it does not exist (private unless --public). HF_ENDPOINT selects another
    Hub. A pipeline can push by itself when it completes, with output: push_to_hub: {repo_id: ...}.

    \b
    Examples:
      HF_TOKEN=hf_... synth push runs/magpie-sft me/magpie-sft-demo
      synth push runs/magpie-dpo my-org/magpie-dpo --format preference --test-size 0.02 --public
    """
    from .config import PushSettings
    from .hub import push_run

    settings = build_params(
        PushSettings,
        ("repo_id",),
        repo_id=repo_id,
        private=private,
        format=fmt,
        test_size=test_size,
        seed=seed,
        license=license_,
    )
    click.echo(f"pushed to {repo_id}: {push_run(run_dir, settings)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder to write the dataset and its README.md card to",
)
@click.option("--jsonl", is_flag=True, help="write JSONL instead of Parquet")
@click.option(
    "--skill-lists",
    is_flag=True,
    help="write skills.txt and queries.txt (Instruct-SkillMix's formats) from the run's last skills stage instead",
)
@click.option(
    "--keep-columns",
    "keep",
    help="comma-separated run columns to keep beside the format's own (sft, preference), or 'all'",
)
@_dataset_options
@friendly
def export(
    run_dir: Path,
    out: Path,
    fmt: str,
    jsonl: bool,
    skill_lists: bool,
    keep: str | None,
    test_size: float,
    seed: int,
    license_: str | None,
):
    """Export a finished run as a training dataset (Parquet or JSONL) with a dataset card.

    The formats are the ones TRL trains on without reshaping. The README.md card records the
    pipeline, models, template hashes, sampling parameters, rows kept and dropped per stage, and
    length and category distributions; it never contains keys or tokens.

    \b
    Examples:
      synth export runs/magpie -o out/magpie-sft
      synth export runs/magpie-dpo -o out/dpo --format preference --test-size 0.02
      synth export runs/quickstart -o out/qs --jsonl --license apache-2.0
      synth export runs/magpie -o out/magpie --keep-columns task_category,difficulty,instruct_reward
      synth export runs/skillmix-sft -o out/skills --skill-lists
    """
    if skill_lists:
        from .skillfiles import export_run_lists

        written = [str(p) for p in export_run_lists(run_dir, out) if p is not None]
        click.echo(f"wrote {', '.join(written) or 'no list (the stage found no skills)'}")
        return
    from .export import export_run

    counts = export_run(
        run_dir,
        out,
        fmt,
        file_format="jsonl" if jsonl else "parquet",
        test_size=test_size,
        seed=seed,
        license=license_,
        keep_columns=[c.strip() for c in keep.split(",") if c.strip()] if keep else None,
    )
    click.echo(f"wrote {', '.join(f'{k}: {v:,} rows' for k, v in counts.items())} to {out} (card: {out / 'README.md'})")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for index.html and the PNG plots (default: RUN/report)",
)
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
    from .report import build_report

    click.echo(str(build_report(run_dir, out)))


@main.command()
@click.argument("name", required=False)
@friendly
def templates(name: str | None):
    """List the prompt and chat templates shipped with synth, or print one and the variables it uses.

    A pipeline names a template by this path (relative to templates/); a file of the same name
    beside the pipeline file takes its place.

    \b
    Examples:
      synth templates
      synth templates tag/quality.jinja
    """
    from .resources import list_resources, resource_dir

    if name:
        from .templating import template_problem, template_variables

        root = resource_dir("templates")
        problem = template_problem(name, root)
        if problem:
            raise SynthError(problem)
        click.echo((root / name).read_text(encoding="utf-8").rstrip("\n"))
        variables = ", ".join(sorted(template_variables(name, root))) or "none"
        click.echo(f"\n# variables: {variables}", err=True)
        return
    click.echo(f"# {resource_dir('templates')}")
    for item in list_resources("templates", "*.jinja"):
        click.echo(item)


@main.command()
@click.option("--path", "name", help="print the full path of this shipped pipeline")
@friendly
def pipelines(name: str | None):
    """List the ready pipeline files shipped with synth.

    \b
    Examples:
      synth pipelines
      synth run "$(synth pipelines --path quickstart)"
    """
    from .resources import list_resources, resource_dir

    root = resource_dir("pipelines")
    if name:
        path = root / (name if name.endswith(".yaml") else f"{name}.yaml")
        if not path.is_file():
            raise SynthError(f"no shipped pipeline '{name}' (run 'synth pipelines' to list them)")
        click.echo(str(path))
        return
    click.echo(f"# {root}")
    for item in list_resources("pipelines", "*.yaml"):
        click.echo(item)


def _register_commands() -> None:
    """Commands that live in their own modules, to keep this one short."""
    from .decontam_cli import decontaminate
    from .dedup_cli import dedup
    from .models_cli import models

    main.add_command(decontaminate)
    main.add_command(dedup)
    main.add_command(models)


_register_commands()

if __name__ == "__main__":
    main()
