"""Executors: where a map stage's batches run. Stages never know which one runs them.

The runner owns the run directory, the order of batches, shards, markers, the manifest and the
request cache; an executor only takes one batch of one map stage and hands back its rows, with
what the stage dropped and counted. It learns what it needs about the run from a `Plan`, never
from the runner. Source and global stages, and map stages that say `driver_only()`, always run in
the driver.

Executors register by name like stages do: the built-in ones in `synth.registry.BUILTIN_EXECUTORS`
(`local`: this process, the default; `ray`: an actor pool per stage on a Ray cluster, docs/ray.md),
others through the `synth.executors` entry-point group. `run: executor:` and `synth run
--executor` take any registered name. An executor class is built as `cls(address)` (`run:
address:` or `--address`, None when not given) and follows the `Executor` protocol below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Pipeline
    from ..records import Row
    from ..stages.base import Stage
    from ..stages.batch import Batch


@dataclass(frozen=True)
class Plan:
    """What an executor may know about the run it serves (given to `start`)."""

    pipeline: Pipeline  # stages (classes, parameters, labels), backends, seed, base_dir, run settings
    segments: list[list[int]]  # stage positions, cut at source and global stages; a batch crosses one whole
    stage_dirs: list[Path]  # each stage's folder in the run directory (a stage may keep reports there)
    cache_path: Path  # the run's request cache (SQLite): answers go there, whoever asked
    limit: int | None  # the run's --limit, which stages that make rows respect
    batches_in_flight: list[int]  # per segment: how many batches the runner sends at once
    note: Callable[[str], None]  # a line for the user (the progress display)
    session: str | None = None  # the session (its start time), under which the cache journals usage

    def segment_of(self, index: int) -> int:
        return next(n for n, segment in enumerate(self.segments) if index in segment)


class Executor(Protocol):
    name: str

    async def start(self, plan: Plan) -> None:
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


def make_executor(pipeline: Pipeline, name: str | None = None, address: str | None = None) -> Executor:
    """The executor a run uses: `name`/`address` (from `synth run --executor/--address`) over the
    pipeline's `run: executor:`/`address:`."""
    from ..registry import get_executor

    cls = get_executor(name or pipeline.run.executor)
    return cls(address if address is not None else pipeline.run.address)
