"""LLM backends behind one small protocol (see base.py). Engines and clients import lazily."""

from __future__ import annotations

from .base import Backend, Generation, Request, RequestFailed, Sampling, Scored, ScoreRequest
from .specs import LocalSpec, OpenAISpec, VLLMSpec

__all__ = [
    "Backend",
    "Generation",
    "Request",
    "RequestFailed",
    "Sampling",
    "ScoreRequest",
    "Scored",
    "make_backend",
]


def make_backend(spec) -> Backend:
    if isinstance(spec, LocalSpec):
        from .local import LocalBackend

        return LocalBackend(spec)
    if isinstance(spec, OpenAISpec):
        from .openai import OpenAIBackend

        return OpenAIBackend(spec)
    if isinstance(spec, VLLMSpec):
        try:
            from .vllm import VLLMBackend
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.vllm":
                raise
            from ..errors import SynthError

            raise SynthError(
                "the in-process vllm backend is not in this version of synth yet: run "
                "'vllm serve MODEL' and use a backend with type: openai and its base_url"
            ) from None
        return VLLMBackend(spec)
    raise TypeError(f"unknown backend spec {spec!r}")
