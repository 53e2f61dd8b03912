"""Executors: where a map stage's batches run. Stages never know which one runs them.

The runner owns the run directory, the order of batches, shards, markers, the manifest and the
request cache; an executor only takes one batch of one map stage and hands back its rows, with
what the stage dropped and counted. `local` calls the stage in this process (the default); `ray`
sends the batch to an actor of the stage's pool on a Ray cluster (docs/ray.md). Source and global
stages always run in the driver, on the local executor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import SynthError

if TYPE_CHECKING:
    from ..config import Pipeline
    from ..run.runner import Runner
    from ..stages.base import Batch, Row, Stage


class Executor(Protocol):
    name: str

    async def start(self, runner: Runner) -> None:
        """Get ready to take batches (before the driver opens its own stages)."""

    def runs_here(self, index: int) -> bool:
        """Whether stage `index` runs in the driver (which then opens and closes it)."""

    async def process(self, index: int, stage: Stage, batch: Batch) -> list[Row]:
        """Run one batch through stage `index`, as `stage.process(batch)` would: rows out, with
        `batch.dropped` and `batch.counters` filled and the LLM counters of the runner's context
        (current_counters) added to."""

    async def stop(self) -> None:
        """Release what start() took; never raises."""

    def record(self, session: dict) -> None:
        """Add what the manifest's session entry should say about where stages ran."""


class LocalExecutor:
    """Every stage in this process, on the runner's event loop."""

    name = "local"

    async def start(self, runner: Runner) -> None:
        return None

    def runs_here(self, index: int) -> bool:
        return True

    async def process(self, index: int, stage: Stage, batch: Batch) -> list[Row]:
        return await stage.process(batch)

    async def stop(self) -> None:
        return None

    def record(self, session: dict) -> None:
        session["executor"] = {"type": "local"}


def on_ray(cls: type[Stage]) -> bool:
    """Map stages run in actors, except those with an Arrow fast path (cheap filters the runner
    applies to whole tables in the driver, where a round trip through Ray would cost more)."""
    return not cls.driver_only()


def make_executor(pipeline: Pipeline, name: str | None = None, address: str | None = None) -> Executor:
    """The executor a run uses: `name`/`address` (from `synth run --executor/--address`) over the
    pipeline's `run: executor:`/`address:`."""
    chosen = name or pipeline.run.executor
    if chosen == "local":
        return LocalExecutor()
    if chosen == "ray":
        from .ray import RayExecutor

        return RayExecutor(pipeline, address if address is not None else pipeline.run.address)
    raise SynthError(f"unknown executor '{chosen}': use 'local' or 'ray'")
