"""The segment loop: batches of rows through a run of map stages, each batch on its own.

Batch i of a segment's first stage becomes shard i of every stage in the segment, so on resume a
batch restarts after the last stage that finished it, and the LLM requests it had already sent are
answered from the cache. Enough batches travel at once to keep the backends busy (see
`batches_in_flight`); a batch's rows go from stage to stage as dicts, or as Arrow when read back
from disk or made by a columnar stage, and each stage's batch converts on demand.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING

import pyarrow as pa

from ..llm.client import Ticker, current_counters, current_ticker
from ..stages.batch import Batch
from ..store import ShardStats, atomic_write_json
from ..usage import current_stage

if TYPE_CHECKING:
    from ..config import Pipeline
    from ..executors import Executor
    from ..progress import Progress
    from ..records import Row
    from ..stages.base import Stage
    from ..store import StageDir


def chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while batch := list(islice(rows, size)):
        yield batch


def batches_in_flight(pipeline: Pipeline, segment: list[int]) -> int:
    """`run.max_batches_in_flight`, or enough batches to hold three times the rows the segment's
    backends take at once: each batch waits for its slowest request, and while it does the
    others' requests keep every slot of the server busy."""
    if pipeline.run.max_batches_in_flight is not None:
        return pipeline.run.max_batches_in_flight
    concurrency = 1
    for i in segment:
        stage = pipeline.stages[i]
        for backend in stage.cls.backend_names(stage.params):
            if backend in pipeline.backends:
                concurrency = max(concurrency, pipeline.backends[backend].concurrency())
    return min(max(4, -(-3 * concurrency // pipeline.run.batch_size)), 1024)


class Spans:
    """Each stage's wall-clock span this session, [first start, last end]: stages overlap in
    time, so the sum of their per-batch times says nothing about how long a stage took."""

    def __init__(self) -> None:
        self.spans: dict[int, tuple[float, float]] = {}

    def stretch(self, i: int, started: float) -> None:
        first, _ = self.spans.get(i, (started, started))
        self.spans[i] = (min(first, started), time.perf_counter())

    def seconds(self, i: int) -> float:
        first, last = self.spans.get(i, (0.0, 0.0))
        return last - first


class SegmentLoop:
    """Runs the map stages of one segment over every batch not yet done."""

    def __init__(
        self,
        pipeline: Pipeline,
        stages: list[Stage],
        dirs: list[StageDir],
        executor: Executor,
        progress: Progress,
        spans: Spans,
        limit: int | None,
    ):
        self.pipeline, self.stages, self.dirs = pipeline, stages, dirs
        self.executor, self.progress, self.spans, self.limit = executor, progress, spans, limit

    def _batches(self, head: int) -> Iterator[tuple[int, list[Row] | None]]:
        stage = self.stages[head]
        if stage.kind == "source" and not self.dirs[head].complete_marker.exists():
            yield from enumerate(chunks(iter(stage.iter_rows(self.limit)), self.pipeline.run.batch_size))
        else:  # a source read to its end before needs no reading again (millions of rows)
            for index in self.dirs[head].done_indices():
                yield index, None

    async def run(self, segment: list[int]) -> None:
        head = segment[0]
        in_flight: set[asyncio.Task] = set()
        slots = asyncio.Semaphore(batches_in_flight(self.pipeline, segment))
        failure: list[BaseException] = []

        async def one(index: int, rows: list[Row] | None) -> None:
            try:
                await self._chain(segment, index, rows)
            except BaseException as exc:
                failure.append(exc)
            finally:
                slots.release()

        try:
            for index, rows in self._batches(head):
                if self.dirs[segment[-1]].done(index):
                    for i in segment:  # done in an earlier session: counted as done now
                        self.progress.advance(self.pipeline.stages[i].label, self.dirs[i].rows_in(index))
                    continue
                await slots.acquire()
                if failure:
                    break
                task = asyncio.create_task(one(index, rows))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            for task in list(in_flight):
                task.cancel()
        if failure:
            raise failure[0]
        await asyncio.to_thread(os.sync)  # the segment's shards on disk before anything builds on them
        if self.stages[head].kind == "source" and not self.dirs[head].complete_marker.exists():
            atomic_write_json(self.dirs[head].complete_marker, {"shards": len(self.dirs[head].done_indices())})

    async def _chain(self, segment: list[int], index: int, rows: list[Row] | None) -> None:
        start = -1
        for position, i in enumerate(segment):
            if self.dirs[i].done(index):
                start = position
        data: list[Row] | pa.Table | None = rows
        if start >= 0:  # from disk as Arrow: a columnar stage never makes a dict per row
            data = await asyncio.to_thread(self.dirs[segment[start]].read_table, index)
        assert data is not None
        for i in segment[start + 1 :]:
            data = await self._process(i, index, data)

    async def _process(self, i: int, index: int, data: list[Row] | pa.Table) -> list[Row] | pa.Table:
        stage, label = self.stages[i], self.pipeline.stages[i].label
        started = time.perf_counter()
        batch = Batch(data, index=index)
        counters: dict[str, int] = {}
        ticker = Ticker(self.progress, label, len(batch))
        token, tick, named = current_counters.set(counters), current_ticker.set(ticker), current_stage.set(label)
        try:
            if not len(batch):
                out: list[Row] | pa.Table = data
            elif stage.driver_only():  # columnar: in the driver, whatever the executor
                out = await stage.process(batch)
            else:
                out = await self.executor.process(i, stage, batch)
        finally:
            current_counters.reset(token)
            current_ticker.reset(tick)
            current_stage.reset(named)
        for k, v in batch.counters.items():
            counters[k] = counters.get(k, 0) + v
        stats = ShardStats(
            rows_in=len(batch),
            rows_out=out.num_rows if isinstance(out, pa.Table) else len(out),
            counters=counters,
            seconds=round(time.perf_counter() - started, 4),
        )
        for reason, failed, n in batch.dropped.counts():
            stats.count_drop(reason, failed, n)
        # Parquet encoding and the fsyncs happen in a thread: the event loop keeps feeding the
        # backends meanwhile. The marker is still written after the data, in the same call.
        await asyncio.to_thread(self.dirs[i].write, index, out, batch.dropped.table("input_row"), stats)
        self.spans.stretch(i, started)
        ticker.finish()
        return out
