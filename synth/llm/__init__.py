"""LLM backends behind one small protocol (see base.py). Engines and clients import lazily."""

from __future__ import annotations

from .base import Backend, Generation, Request, RequestFailed, Sampling, Scored, ScoreRequest
from .specs import BackendSpecBase

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


def make_backend(spec: BackendSpecBase) -> Backend:
    """The backend that runs these settings: the class its type names (a plugin's included)."""
    import importlib

    module, _, name = spec.backend.partition(":")
    return getattr(importlib.import_module(module), name)(spec)
