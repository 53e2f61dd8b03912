"""synth: synthetic alignment data (SFT and preference datasets) from LLMs."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Pipeline, load_pipeline
from .errors import BackendError, ConfigError, InputError, MissingDependency, RunError, SynthError
from .pipeline import RunResult, read_output, run_pipeline
from .stages.base import Batch, Stage, StageParams

__all__ = [
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
