"""A global stage: once, over every row of the stage before, in the driver.

The stage reads its input out of core (`Rows` over the previous stage's shards) and returns a
`Selection`, which is gathered into shards of the run's batch size file by file, or a new table,
cut into shards the same way. Its dropped rows go to shard 0's dropped file, by position in its
input (or as rows, for a stage that drops them by value). A global stage that was killed halfway
redoes its whole output; one that finished is never run again.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..llm.client import current_counters
from ..shards import Rows, Selection, gather
from ..stages.batch import Batch
from ..store import ShardStats, atomic_write_json
from ..usage import current_stage

if TYPE_CHECKING:
    from ..progress import Progress
    from ..stages.base import Stage
    from ..store import StageDir
    from .segments import Spans


async def run_global(
    i: int, stage: Stage, label: str, dirs: list[StageDir], batch_size: int, progress: Progress, spans: Spans
) -> None:
    stage_dir = dirs[i]
    if stage_dir.complete_marker.exists():
        return
    stage_dir.clear()  # a killed earlier attempt: global stages redo their whole output
    started = time.perf_counter()
    batch = Batch(index=0)
    counters: dict[str, int] = {}
    token, named = current_counters.set(counters), current_stage.set(label)
    try:
        rows = await asyncio.to_thread(Rows.from_files, dirs[i - 1].files())
        if rows.num_rows:
            result = await stage.process_all(rows, batch)
        else:
            result = Selection(np.zeros(0, np.int64))
    finally:
        current_counters.reset(token)
        current_stage.reset(named)
    first = ShardStats(rows_in=rows.num_rows)
    first.counters = {**counters, **batch.counters}
    for reason, failed, n in batch.dropped.counts():
        first.count_drop(reason, failed, n)
    dropped = batch.dropped.table("position")
    written = [0, 0]  # shards, rows
    loop = asyncio.get_running_loop()

    def emit(table: pa.Table) -> None:
        n = written[0]
        stats = first if n == 0 else ShardStats()
        stats.rows_out = table.num_rows
        if n == 0:
            stats.seconds = round(time.perf_counter() - started, 4)
        stage_dir.write(n, table, dropped if n == 0 else None, stats)
        written[0] += 1
        written[1] += table.num_rows
        loop.call_soon_threadsafe(progress.advance, label, table.num_rows)

    def write() -> None:
        if isinstance(result, Selection):  # gathered in a thread: the rows of a big run take a while to move
            gather(rows, result, emit, batch_size, tmp_dir=stage_dir.meta)
        else:
            for offset in range(0, result.num_rows, batch_size):
                emit(result.slice(offset, batch_size))
        if not written[
            0
        ]:  # an empty table (gather emits one itself): shard 0 still records the stage's input and drops
            emit(result)

    await asyncio.to_thread(write)
    await asyncio.to_thread(os.sync)
    atomic_write_json(stage_dir.complete_marker, {"rows_in": first.rows_in, "rows_out": written[1]})
    spans.stretch(i, started)
