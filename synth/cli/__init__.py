"""The `synth` command line. Every command's help ends with examples; user mistakes print one
clear line (no traceback) and exit non-zero.

One module per group of commands, each registered on `main` below; what they share (the one-line
errors, the trust and dataset options, parameters from options) is in `common`. Imports point down:
this package imports the command modules, they import `common` and the rest of synth, never this
package or each other. `docs` renders docs/cli.md from `main`.
"""

from __future__ import annotations

import click

from .. import __version__
from . import batches, catalog, datasets, decontaminate, dedup, estimate, models, run, runs
from .common import CONTEXT_SETTINGS

__all__ = ["main"]

# The command modules; each names the commands it defines in its COMMANDS.
COMMAND_MODULES = (run, estimate, catalog, runs, batches, datasets, dedup, decontaminate, models)


@click.group(context_settings=CONTEXT_SETTINGS, commands=[c for m in COMMAND_MODULES for c in m.COMMANDS])
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
      synth estimate my-pipeline.yaml              # requests, tokens, cost and time, from a sample
      synth stages                                 # every stage with its parameters
      synth inspect runs/quickstart                # counts, sample rows, stats
    """
