"""synth: synthetic alignment data (SFT and preference datasets) from LLMs.

The public names below load on first use (PEP 562), so `import synth.report` or `synth export`
loads what it needs and never the runner, the backends or the stages.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "Pipeline": "synth.config",
    "load_pipeline": "synth.config",
    "BackendError": "synth.errors",
    "ConfigError": "synth.errors",
    "InputError": "synth.errors",
    "MissingDependency": "synth.errors",
    "RunError": "synth.errors",
    "SynthError": "synth.errors",
    "RunResult": "synth.progress",
    "read_output": "synth.runs",
    "run_pipeline": "synth.run",
    "Batch": "synth.stages.base",
    "Stage": "synth.stages.base",
    "StageParams": "synth.stages.base",
}

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


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'synth' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .config import Pipeline, load_pipeline
    from .errors import BackendError, ConfigError, InputError, MissingDependency, RunError, SynthError
    from .progress import RunResult
    from .run import run_pipeline
    from .runs import read_output
    from .stages.base import Batch, Stage, StageParams
