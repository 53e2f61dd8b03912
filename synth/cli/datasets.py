"""`synth export` and `synth push`: a finished run as a training dataset, on disk or on the Hub."""

from __future__ import annotations

from pathlib import Path

import click

from .common import build_params, dataset_options, friendly, output_folder


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("repo_id")
@click.option("--private/--public", default=True, show_default=True, help="visibility of a repo synth creates")
@dataset_options
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
    from ..config import PushSettings
    from ..hub import push_run

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


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@output_folder("folder to write the dataset and its README.md card to", required=True)
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
@click.option(
    "--drop-labeled",
    type=click.Choice(["bad", "good"]),
    help="leave out the rows made from a row labelled so in `synth view` (RUN/labels.parquet)",
)
@dataset_options
@friendly
def export(
    run_dir: Path,
    out: Path,
    fmt: str,
    jsonl: bool,
    skill_lists: bool,
    keep: str | None,
    drop_labeled: str | None,
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
      synth export runs/ultrafeedback-dpo -o out/uf --format preference --drop-labeled bad
    """
    if skill_lists:
        from ..skillfiles import export_run_lists

        written = [str(p) for p in export_run_lists(run_dir, out) if p is not None]
        click.echo(f"wrote {', '.join(written) or 'no list (the stage found no skills)'}")
        return
    from ..export import export_run

    counts = export_run(
        run_dir,
        out,
        fmt,
        file_format="jsonl" if jsonl else "parquet",
        test_size=test_size,
        seed=seed,
        license=license_,
        keep_columns=[c.strip() for c in keep.split(",") if c.strip()] if keep else None,
        drop_labeled=drop_labeled,
    )
    click.echo(f"wrote {', '.join(f'{k}: {v:,} rows' for k, v in counts.items())} to {out} (card: {out / 'README.md'})")


COMMANDS = (export, push)  # registered on `synth` by synth/cli/__init__.py
