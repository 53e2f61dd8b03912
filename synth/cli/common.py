"""What the command modules share: synth's one-line errors, the trust options, parameters from
options, the dataset options of export and push, and reading and writing a dataset file.

Command modules import this module and lower layers only, never `synth.cli` or each other.
Heavy imports (pyarrow, stages, pydantic) stay inside the functions so `synth --help` starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError, InputError, SynthError
from ..scrub import scrub

if TYPE_CHECKING:
    import pyarrow as pa

    from ..records import Row
    from ..stages.base import StageContext

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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


def trust_options(fn):
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


def apply_trust(allow_read: tuple[Path, ...], allow_key: tuple[str, ...]) -> None:
    """The permissions travel in the environment, where validation and the backends read them."""
    from ..inputs import ALLOW_KEYS_ENV, ALLOW_READ_ENV

    if allow_read:
        known = [p for p in os.environ.get(ALLOW_READ_ENV, "").split(os.pathsep) if p]
        os.environ[ALLOW_READ_ENV] = os.pathsep.join([*known, *(str(p.expanduser().resolve()) for p in allow_read)])
    if allow_key:
        known = [k for k in os.environ.get(ALLOW_KEYS_ENV, "").split(",") if k]
        os.environ[ALLOW_KEYS_ENV] = ",".join([*known, *allow_key])


def trust_named_files(*paths: Path | str | None) -> None:
    """Files the user names on the command line may be read wherever they are: the read policy
    guards against pipeline files from strangers, not against the user."""
    from ..inputs import ALLOW_READ_ENV

    folders = [str(Path(p).expanduser().resolve().parent) for p in paths if p]
    known = [f for f in os.environ.get(ALLOW_READ_ENV, "").split(os.pathsep) if f]
    os.environ[ALLOW_READ_ENV] = os.pathsep.join(dict.fromkeys([*known, *folders]))


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


def output_folder(help: str, required: bool = False):
    """-o/--output: the folder a command writes to, passed as `out`."""
    return click.option(
        "-o", "--output", "out", required=required, type=click.Path(file_okay=False, path_type=Path), help=help
    )


def dataset_options(fn):
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


def read_rows(source: Path, column: str, label: str) -> tuple[list[Row], StageContext]:
    """SOURCE's rows (any format the load stage reads) and a context to run one stage over them
    outside a pipeline; an input without COLUMN is an error that names the columns it has."""
    from ..stages.base import StageContext
    from ..stages.generate.load import Load, LoadParams

    ctx = StageContext(seed=0, label=label, index=0, base_dir=Path.cwd())
    rows = list(Load(LoadParams(path=str(source)), ctx).iter_rows(None))
    if rows and column not in rows[0]:
        raise InputError(f"{source} has no column '{column}' (it has: {', '.join(rows[0])}); set --column")
    return rows, ctx


def write_table(table: pa.Table, out: Path) -> None:
    """Write TABLE to OUT as Parquet or JSONL, chosen by OUT's suffix."""
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        pq.write_table(table, out)
    elif out.suffix in (".jsonl", ".ndjson"):
        with open(out, "w", encoding="utf-8") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    else:
        raise InputError(f"cannot write {out}: name the output .jsonl or .parquet")
