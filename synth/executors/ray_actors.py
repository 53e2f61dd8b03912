"""What runs inside Ray: a map stage's actor, and the one actor that holds the request cache.

A stage actor opens its stage once (its models, backends, templates) and then takes batches, each
on its own event loop thread, so a threaded actor runs several batches at once the way the local
runner does. Its LLMs see the run's cache through `RemoteCache`: every lookup and every group of
new answers goes to the `CacheServer`, the only process that opens cache.sqlite, pinned to the
driver's node (SQLite must not be shared over a network file system). Answers are committed as
they arrive, exactly as in a local run, so a batch lost with its actor or its driver never asks
again for an answer that reached the cache.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import ray

from ..cache import RequestCache
from ..llm import make_backend
from ..llm.client import LLM, current_counters
from ..stages.base import Batch, StageContext
from ..usage import current_stage


class CacheServer:
    """The run's request cache, served to the stage actors (one per run, on the driver's node)."""

    def __init__(self, path: str, session: str | None = None):
        self.cache = RequestCache(Path(path))
        self.cache.session = session  # actors' usage is journaled under the driver's session

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        return self.cache.get_many(keys)

    def put_many(self, entries: list[tuple[str, str, str, dict, dict]], usage: list = ()) -> None:
        self.cache.put_many(entries, usage)

    def close(self) -> None:
        self.cache.close()


class RemoteCache:
    """RequestCache's interface over the CacheServer; the calls block their thread (the LLM client
    looks up on its event loop, which is this actor's own thread, and writes from a worker thread)."""

    def __init__(self, server):
        self.server = server

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        return ray.get(self.server.get_many.remote(keys))

    def put_many(self, entries: list[tuple[str, str, str, dict, dict]], usage: list = ()) -> None:
        ray.get(self.server.put_many.remote(entries, list(usage)))

    def __bool__(self) -> bool:
        return True

    def close(self) -> None:
        return None


class StageActor:
    """One map stage, opened once; `process` takes a batch's rows and gives back what the runner
    writes. An error while opening is kept and raised by every call, so the driver reports it as
    the stage's error instead of a dead actor."""

    def __init__(self, setup: dict[str, Any]):
        os.environ.update(setup["env"])
        self.node = ray.get_runtime_context().get_node_id()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="synth-stage-loop", daemon=True)
        self.thread.start()
        self.stage = None
        self.llms: dict[str, LLM] = {}
        self.error: BaseException | None = None
        try:
            self.stage = self._call(_open(setup, self.llms))
        except Exception as exc:
            self.error = exc

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def ready(self) -> str:
        if self.error is not None:
            raise self.error
        return self.node

    def process(self, index: int, rows: list[dict]) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        result = self._call(_process(self.stage, index, rows))
        result["node"] = self.node
        return result

    def close(self) -> None:
        try:
            self._call(_close(self.stage, self.llms))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


# The coroutines live outside the actor class: Ray treats a class with any `async def` method as an
# asyncio actor and would run `process` on its own event loop, which `_call` then blocks.
async def _open(setup: dict[str, Any], llms: dict[str, LLM]):
    name, namespace = setup["cache"]
    cache = RemoteCache(ray.get_actor(name, namespace=namespace))
    ctx = StageContext(
        seed=setup["seed"],
        label=setup["label"],
        index=setup["index"],
        base_dir=Path(setup["base_dir"]),
        stage_dir=Path(setup["stage_dir"]),
        limit=setup["limit"],
    )
    for name, spec in setup["backends"].items():
        llms[name] = ctx.llms[name] = LLM(name, make_backend(spec), cache)  # type: ignore[arg-type]
    stage = setup["cls"](setup["params"], ctx)
    await stage.open()
    return stage


async def _process(stage, index: int, rows: list[dict]) -> dict[str, Any]:
    counters: dict[str, int] = {}
    current_counters.set(counters)  # this task's own context: counts go to this batch only
    current_stage.set(stage.ctx.label)  # and the session's usage to this stage
    batch = Batch(rows=rows, index=index)
    out = await stage.process(batch)
    return {
        "rows": out,
        "dropped": [(d.row, d.reason, d.detail, d.failed, d.position) for d in batch.dropped],
        "counters": batch.counters,
        "traffic": counters,
    }


async def _close(stage, llms: dict[str, LLM]) -> None:
    if stage is not None:
        await stage.close()
    for llm in llms.values():
        await llm.backend.close()
