"""`synth stages`, `synth templates` and `synth pipelines`: what synth ships, to build a pipeline from."""

from __future__ import annotations

import json

import click

from ..errors import SynthError
from .common import friendly


@click.command()
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
    from ..describe import describe_stages

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


@click.command()
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
    from ..resources import list_resources, resource_dir

    if name:
        from ..templating import template_problem, template_variables

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


@click.command()
@click.option("--path", "name", help="print the full path of this shipped pipeline")
@friendly
def pipelines(name: str | None):
    """List the ready pipeline files shipped with synth.

    \b
    Examples:
      synth pipelines
      synth run "$(synth pipelines --path quickstart)"
    """
    from ..resources import list_resources, resource_dir

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


COMMANDS = (stages, templates, pipelines)  # registered on `synth` by synth/cli/__init__.py
