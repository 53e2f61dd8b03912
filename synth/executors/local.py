"""`executor: local` (the default): every stage in this process, on the runner's event loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..records import Row
    from ..stages.base import Stage
    from ..stages.batch import Batch
    from . import Plan


class LocalExecutor:
    name = "local"

    def __init__(self, address: str | None = None):
        pass  # nothing to join: the address is for executors that run elsewhere

    async def start(self, plan: Plan) -> None:
        return None

    def runs_here(self, index: int) -> bool:
        return True

    async def process(self, index: int, stage: Stage, batch: Batch) -> list[Row]:
        return await stage.process(batch)

    async def stop(self) -> None:
        return None

    def record(self, session: dict) -> None:
        session["executor"] = {"type": "local"}
