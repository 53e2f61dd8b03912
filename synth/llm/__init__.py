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
        from .vllm import VLLMBackend

        return VLLMBackend(spec)
    raise TypeError(f"unknown backend spec {spec!r}")
