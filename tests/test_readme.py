"""The README's commands are the ones CI runs, and the CLI documents itself."""

from __future__ import annotations

import re

from click.testing import CliRunner

import synth
from synth.cli import main

from .conftest import REPO


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    quickstart, tests = readme_commands()
    assert "synth run pipelines/quickstart.yaml" in quickstart
    ci = (REPO / ".ci" / "run").read_text()
    # CI makes its own venv, then runs the README's command after the venv part.
    assert tests.split(" && ", 2)[2] in ci.splitlines()


def test_readme_pipeline_is_the_shipped_quickstart():
    block = re.search(r"```yaml\n(name: quickstart.+?)```", (REPO / "README.md").read_text(), re.S).group(1)
    shipped = (REPO / "pipelines" / "quickstart.yaml").read_text()
    assert block.strip() in shipped


def test_every_command_has_help_with_examples():
    runner = CliRunner()
    commands = [[]] + [[name] for name in main.commands]
    for args in commands:
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Examples:" in result.output, f"'synth {' '.join(args)} --help' has no examples"


def test_public_api_is_pinned():
    assert sorted(synth.__all__) == [
        "BackendError",
        "Batch",
        "ConfigError",
        "InputError",
        "MissingDependency",
        "Pipeline",
        "RunError",
        "RunResult",
        "Stage",
        "StageParams",
        "SynthError",
        "__version__",
        "load_pipeline",
        "read_output",
        "run_pipeline",
    ]
    for name in synth.__all__:
        assert hasattr(synth, name)


def test_shipped_pipelines_validate():
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        synth.load_pipeline(path)


def test_docs_cli_md_matches_help():
    from synth.cli.docs import render

    assert (REPO / "docs" / "cli.md").read_text() == render(), "regenerate: python -m synth.cli.docs > docs/cli.md"
