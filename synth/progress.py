"""What a run tells the world while it goes (`Progress`) and when it ends (`RunResult`).

Its own small module so that what shows a run (the console, `synth inspect`, the report) needs
nothing of the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import StageSpec
    from .store import ShardStats


class Progress:
    """Progress events; the CLI shows them with rich, library use ignores them.

    `advance` counts rows a stage has taken in (so every stage's total is the source's) and the
    tokens it generated; LLM stages advance as answers arrive, one row per answer up to the size
    of the batch, the rest when the batch is written, with the requests their backend has in flight."""

    def start(self, stages: list[StageSpec], total: int | None = None) -> None: ...
    def advance(self, label: str, rows: int, tokens: int = 0, in_flight: int | None = None) -> None: ...
    def note(self, message: str) -> None: ...
    def trouble(self, message: str | None) -> None:
        """A backend's server stopped answering (what failed, how long synth keeps trying), or
        answers again (None)."""

    def stop(self) -> None: ...


@dataclass
class RunResult:
    root: Path
    manifest: dict
    stages: list[tuple[StageSpec, ShardStats]] = field(default_factory=list)
    output_rows: int = 0
