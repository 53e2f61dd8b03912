"""The runner: runs (or resumes) a pipeline into a run directory. `run_pipeline` is the entry point."""

from .runner import Runner, run_pipeline

__all__ = ["Runner", "run_pipeline"]
