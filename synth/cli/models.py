"""`synth models`: get local models ready for a backend."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import CONTEXT_SETTINGS, friendly, output_folder


@click.group(context_settings=CONTEXT_SETTINGS)
def models():
    """Prepare local model files for synth's backends.

    \b
    Examples:
      synth models prepare                         # convert the shipped Gemma 3 270M for vLLM
      synth models prepare model.gguf -o models/m  # convert your own GGUF into models/m
    """


@models.command()
@click.argument("gguf", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_folder("folder to write (default: a cache folder under ~/.cache/synth/models, or $SYNTH_CACHE_DIR/models)")
@friendly
def prepare(gguf: Path | None, out: Path | None):
    """Convert a GGUF file into a Hugging Face model folder that vLLM can serve, and print it.

    vLLM does not load GGUF files like the shipped Gemma 3 270M directly. This dequantizes the
    weights into a bf16 model folder (about 540 MB and 1-2 minutes for the 270M model), with a
    tokenizer that adds BOS and, for Gemma base models, the Gemma chat template. The result is
    cached: running it again prints the same folder at once. Needs transformers, gguf and
    accelerate (and torch) in the environment.

    With no GGUF argument it converts the Gemma 3 270M GGUF that synth[local] installs.

    \b
    Examples:
      synth models prepare
      synth models prepare ~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf -o models/qwen
      python -m vllm.entrypoints.openai.api_server --model "$(synth models prepare)" --enforce-eager
    """
    from ..llm.prepare import prepare_gguf_for_vllm

    started = time.monotonic()
    folder = prepare_gguf_for_vllm(gguf, out)
    took = time.monotonic() - started
    if took > 5:
        click.echo(f"converted in {took:.0f} s", err=True)
    click.echo(str(folder))


COMMANDS = (models,)  # registered on `synth` by synth/cli/__init__.py
