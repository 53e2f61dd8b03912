"""`synth batches`: a run's batch jobs at the provider (the openai backend's `batch: true`)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import friendly

RUN_DIR = click.Path(file_okay=False, exists=True, path_type=Path)


@click.group()
def batches():
    """A run's batch jobs at the provider: list them, cancel them.

    Batch jobs keep running at the provider when a run stops (Ctrl-C, a crash): the same
    `synth run` command collects their answers when they are done. Cancel them to stop paying.

    \b
    Examples:
      synth batches list runs/judge
      synth batches cancel runs/judge
    """


@batches.command("list")
@click.argument("run_dir", type=RUN_DIR)
@friendly
def list_jobs(run_dir: Path):
    """Every batch job of a run with its state and request counts.

    \b
    Examples:
      synth batches list runs/judge
    """
    from ..llm.batchjournal import Journal

    jobs = Journal(run_dir).jobs()
    if not jobs:
        click.echo("no batch jobs")
    for job in jobs.values():
        counts = ", ".join(f"{k} {v}" for k, v in job.counts.items()) or f"{job.requests} requests"
        where = job.batch_id or job.files or "not created"
        state = "in flight" if job.in_flight else "collected" if job.output else job.status
        click.echo(f"{job.job}  {job.backend}  {where}  {job.status} ({counts})  {state}")


@batches.command()
@click.argument("run_dir", type=RUN_DIR)
@friendly
def cancel(run_dir: Path):
    """Cancel a run's batch jobs still running at the provider.

    Answers of lines already done are collected when the run resumes; the requests without an
    answer go out again then, in a new job.

    \b
    Examples:
      synth batches cancel runs/judge
    """
    import asyncio

    from ..llm.batchprovider import cancel_jobs
    from ..llm.openai import OpenAIBackend
    from ..llm.specs import OpenAISpec
    from ..runs import Run
    from ..yamlfile import load_yaml

    config = load_yaml(Run(run_dir).manifest.get("config") or "", str(run_dir / "pipeline.yaml")).data
    specs = {
        name: OpenAISpec(**spec)
        for name, spec in ((config or {}).get("backends") or {}).items()
        if isinstance(spec, dict) and spec.get("type") == "openai"
    }

    async def cancel_all() -> list[str]:
        backends = {name: OpenAIBackend(spec) for name, spec in specs.items()}  # refuses keys to strangers
        try:
            return await cancel_jobs(run_dir, backends)
        finally:
            for backend in backends.values():
                await backend.close()

    cancelled = asyncio.run(cancel_all())
    click.echo(f"cancelled {len(cancelled)} batch job(s)" + (f": {', '.join(cancelled)}" if cancelled else ""))


COMMANDS = (batches,)  # registered on `synth` by synth/cli/__init__.py
