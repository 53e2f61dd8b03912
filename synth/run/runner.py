"""The runner: streams batches through stages, checkpoints every stage's output, resumes.

Stages are cut into segments at global stages. Within a segment each batch travels through
every stage on its own (by default enough batches at once to hold three times the rows the
backends take at once, so a server always has work while a batch waits on its slowest request);
a global stage waits for all rows of the stage before it. Batch i of the source becomes shard i
of every stage in the segment, so on resume each batch restarts after the last stage that
finished it, and LLM requests it had already sent are answered from the cache.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import time
from collections.abc import Iterator
from importlib import metadata
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..cache import RequestCache
from ..config import Pipeline, StageSpec
from ..errors import RunError
from ..llm import make_backend
from ..llm.client import LLM, Ticker, current_counters, current_ticker
from ..progress import Progress, RunResult
from ..scrub import scrub
from ..seeds import digest
from ..shards import Rows, Selection, dropped_table, gather
from ..stages.base import Batch, Row, Stage, StageContext
from ..store import RunStore, ShardStats, StageDir, atomic_write_json

RECORDED_PACKAGES = (
    "synth",
    "pyarrow",
    "pydantic",
    "jinja2",
    "llama_cpp_python",
    "openai",
    "vllm",
    "datasets",
    "faiss-cpu",
    "sentence-transformers",
    "torch",
)


def package_versions() -> dict[str, str]:
    found = {}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while batch := list(islice(rows, size)):
        yield batch


class Runner:
    def __init__(
        self,
        pipeline: Pipeline,
        root: str | Path,
        *,
        overwrite: bool = False,
        limit: int | None = None,
        progress: Progress | None = None,
        retry_failed: bool | None = None,
        executor: str | None = None,
        address: str | None = None,
    ):
        from ..executors import make_executor

        self.pipeline = pipeline
        self.retry_failed = retry_failed
        self.store = RunStore(root)
        self.overwrite = overwrite
        self.limit = limit
        self.progress = progress or Progress()
        self.stages: list[Stage] = []
        self.opened: list[Stage] = []
        self.dirs: list[StageDir] = []
        self.llms: dict[str, LLM] = {}
        self.cache: RequestCache | None = None
        self._spans: dict[int, tuple[float, float]] = {}  # stage -> (first start, last end), this session
        self._earlier_wall: dict[str, float] = {}  # stage label -> wall seconds of earlier sessions
        self.executor = make_executor(pipeline, executor, address)  # where map stages run (synth/executors)

    # ---- set-up ----
    def _fingerprints(self, known: dict) -> list[str]:
        # The row limit decides shard boundaries, so it belongs to every stage's fingerprint.
        return [digest([fp, self.limit]) for fp in self.pipeline.stage_fingerprints(known)]

    def _open_store(self) -> dict:
        store = self.store
        store.lock()
        if store.exists() and self.overwrite:
            store.wipe()
        previous = store.read_manifest() if store.exists() else None
        known = dict((previous or {}).get("input_digests") or {})
        fingerprints = self._fingerprints(known)
        manifest = {
            "synth_manifest": 1,
            "name": self.pipeline.name,
            "pipeline_file": str(self.pipeline.path),
            "fingerprint": self.pipeline.fingerprint(known),
            "seed": self.pipeline.seed,
            "limit": self.limit,
            "config": self.pipeline.text,
            "backends": {k: v.identity() for k, v in self.pipeline.backends.items()},
            "models": self._stage_models(),
            "templates": self._template_hashes(),
            "input_digests": known,
            "python": platform.python_version(),
            "packages": package_versions(),
            "sessions": (previous or {}).get("sessions", []),
            "status": "running",
        }
        manifest["sessions"].append({"started": dt.datetime.now(dt.timezone.utc).isoformat(), "status": "running"})
        (store.root / "pipeline.yaml").write_text(self.pipeline.text, encoding="utf-8")
        store.write_manifest(manifest)
        earlier = {e.get("label"): e.get("wall_seconds", 0.0) for e in (previous or {}).get("stages", [])}
        for spec, fp in zip(self.pipeline.stages, fingerprints, strict=True):
            stage_dir, discarded = store.prepare_stage(spec.index, spec.label, fp)
            if not discarded and isinstance(earlier.get(spec.label), (int, float)):
                self._earlier_wall[spec.label] = float(earlier[spec.label])
            if discarded:
                self.progress.note(
                    f"stage '{spec.label}' changed since the last run (its parameters, templates or input files): "
                    f"recomputing it (LLM answers already cached are reused)"
                )
            self.dirs.append(stage_dir)
        self._forget_broken()
        retry = self.retry_failed
        if retry is None:  # by default a resume retries what failed, unless the run had completed
            retry = previous is not None and previous.get("status") != "complete"
        if retry:
            self._forget_failures()
        return manifest

    def _forget_broken(self) -> None:
        """Shards whose files went missing or were cut short (a copy of the run stopped halfway, a
        power cut before the disk caught up) are forgotten with the rest of their batch's segment,
        and so are batches a later stage finished but an earlier one has no marker for: computed
        again, their requests from the cache."""
        from ..integrity import forget_broken

        redone: list[str] = []
        for segment in self._segments():
            before: set[int] | None = None  # batches the previous stage of the segment has done
            for p, i in enumerate(segment):
                broken = set(forget_broken(self.dirs[i]))
                done = set(self.dirs[i].done_indices())
                if before is not None:  # done here but not in the stage before: redo it from there
                    broken |= done - before
                    done &= before
                for index in sorted(broken):
                    redone.append(f"{self.dirs[i].path.name}/shard-{index:05d}")
                    for j in segment[p:]:
                        self.dirs[j].forget(index)
                before = done
        if redone:
            shown = ", ".join(redone[:3]) + (f" and {len(redone) - 3} more" if len(redone) > 3 else "")
            self.progress.note(f"recomputing {len(redone)} shard(s) whose files are missing or damaged: {shown}")

    def _forget_failures(self) -> None:
        """Make rows that failed (a request that ran out of retries, an empty or unparseable
        answer) run again: each shard with failures is redone from the first stage that failed in
        it, and every stage after that segment is redone whole, since its input changes. Rows a
        filter dropped stay dropped; answers already cached are reused, failures never cached."""
        retried, changed = 0, False
        for segment in self._segments():
            if changed:
                for i in segment:
                    self.dirs[i].clear()
                continue
            head = segment[0]
            if self.pipeline.stages[head].cls.kind == "global" and self.dirs[head].failed_rows(0):
                retried += self.dirs[head].failed_rows(0)
                for i in segment:
                    self.dirs[i].clear()
                changed = True
                continue
            for index in sorted({n for i in segment for n in self.dirs[i].done_indices()}):
                first = next((p for p, i in enumerate(segment) if self.dirs[i].failed_rows(index)), None)
                if first is None:
                    continue
                retried += self.dirs[segment[first]].failed_rows(index)
                for i in segment[first:]:
                    self.dirs[i].forget(index)
                changed = True
        if retried:
            self.progress.note(f"retrying {retried:,} row(s) that failed in the last run (--keep-failed keeps them)")

    def _segments(self) -> list[list[int]]:
        """Stage positions cut at every source and global stage (from the pipeline, so it serves
        before the stages are opened too)."""
        segments: list[list[int]] = []
        for i, spec in enumerate(self.pipeline.stages):
            if spec.cls.kind in ("source", "global") or not segments:
                segments.append([i])
            else:
                segments[-1].append(i)
        return segments

    def _stage_models(self) -> dict[str, list[str]]:
        """Which model made each stage's columns, by name (a file or a repo id), for the card."""
        from ..llm.specs import model_name

        found: dict[str, list[str]] = {}
        for spec in self.pipeline.stages:
            names = [
                model_name(self.pipeline.backends[b])
                for b in spec.cls.backend_names(spec.params)
                if b in self.pipeline.backends
            ]
            model = getattr(spec.params, "model", None)  # a local model folder (reward, embeddings)
            if isinstance(model, str) and model:
                names.append(model)
            if names:
                found[spec.label] = list(dict.fromkeys(names))
        return found

    def _template_hashes(self) -> dict[str, str]:
        """sha256 of every prompt template a stage names, for the manifest and the dataset card."""
        from ..stages.common import template_sha
        from ..templating import template_problem

        found = {}
        for spec in self.pipeline.stages:
            for value in spec.params.model_dump().values():
                if (
                    isinstance(value, str)
                    and value.endswith(".jinja")
                    and not template_problem(value, self.pipeline.base_dir)
                ):
                    found[value] = template_sha(value, self.pipeline.base_dir)
        return found

    def _llm(self, name: str) -> LLM:
        if name not in self.llms:
            self.llms[name] = LLM(name, make_backend(self.pipeline.backends[name]), self.cache)
        return self.llms[name]

    async def _open_stages(self) -> None:
        self.cache = RequestCache(self.store.root / "cache.sqlite")
        for spec in self.pipeline.stages:
            ctx = StageContext(
                seed=self.pipeline.seed,
                label=spec.label,
                index=spec.index,
                base_dir=self.pipeline.base_dir,
                stage_dir=self.dirs[spec.index].path,
                limit=self.limit,
            )
            for backend in spec.cls.backend_names(spec.params):
                ctx.llms[backend] = self._llm(backend)
            stage = spec.cls(spec.params, ctx)
            self.stages.append(stage)
        await self.executor.start(self)
        for i, stage in enumerate(self.stages):
            if self.executor.runs_here(i):  # on Ray, map stages open in their actors instead
                await stage.open()
                self.opened.append(stage)

    # ---- running ----
    async def run(self) -> RunResult:
        try:
            manifest = self._open_store()
        except OSError as exc:
            self.store.unlock()
            raise _disk_error(exc, self.store.root) from None
        started = time.perf_counter()
        output_rows = 0
        stats: list[tuple[StageSpec, ShardStats]] = []
        try:
            await self._open_stages()
            self.progress.start(self.pipeline.stages, self.stages[0].total_rows(self.limit))
            for segment in self._segments():
                await self._run_segment(segment)
            output_rows = self._write_output()
            status, error = "complete", None
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)) else "failed"
            error = _disk_error(exc, self.store.root) if isinstance(exc, OSError) else exc
            if error is not exc:
                raise error from None
            raise
        finally:
            self.progress.stop()
            for stage in self.opened:  # a stage whose open() never ran (an earlier one failed) has nothing to close
                await stage.close()
            for llm in self.llms.values():
                await llm.backend.close()
            await self.executor.stop()
            stats = [(spec, d.stats()) for spec, d in zip(self.pipeline.stages, self.dirs, strict=False)]
            too_many = self._failure_rate_error(stats) if status == "complete" else None
            if too_many is not None:
                status, error = "failed", too_many
            session = manifest["sessions"][-1]
            session.update(status=status, finished=dt.datetime.now(dt.timezone.utc).isoformat())
            self.executor.record(session)
            session["seconds"] = round(time.perf_counter() - started, 3)
            if error is not None:
                session["error"] = scrub(str(error))[:500]
            manifest["stages"] = [self._stage_entry(spec, s) for spec, s in stats]
            manifest["status"] = status
            if status == "complete" or too_many is not None:
                manifest["output"] = {"path": "output", "rows": output_rows, "format": self.pipeline.output.format}
            try:
                self.store.write_manifest(manifest)
            except OSError:
                pass  # a full or read-only disk: the error raised above says so; the lock shows the run stopped
            if self.cache is not None:
                self.cache.close()
            self.store.unlock()
        if too_many is not None:
            raise too_many
        return RunResult(self.store.root, manifest, stats, output_rows)

    def _stage_entry(self, spec: StageSpec, s: ShardStats) -> dict:
        entry = {"label": spec.label, "stage": spec.key, "kind": spec.cls.kind, **s.__dict__}
        busy = entry.pop("seconds")
        first, last = self._spans.get(spec.index, (0.0, 0.0))
        entry["wall_seconds"] = round(self._earlier_wall.get(spec.label, 0.0) + (last - first), 3)
        entry["busy_seconds"] = round(busy, 3)  # summed over batches, which run concurrently
        return entry

    def _failure_rate_error(self, stats: list[tuple[StageSpec, ShardStats]]) -> RunError | None:
        limit = self.pipeline.run.max_failure_rate
        for spec, s in stats:
            failed = sum(s.failed.values())
            if s.rows_in and failed / s.rows_in > limit:
                reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s.failed.items(), key=lambda kv: -kv[1])[:3])
                return RunError(
                    f"stage '{spec.label}' failed on {failed} of {s.rows_in} rows ({failed / s.rows_in:.1%}: "
                    f"{reasons}), above run.max_failure_rate={limit}; see them with 'synth inspect "
                    f"{self.store.root} --dropped', then run the same command again to retry them (or raise "
                    f"run.max_failure_rate to accept the loss)"
                )
        return None

    def _batches(self, head: int) -> Iterator[tuple[int, list[Row] | None]]:
        stage = self.stages[head]
        if stage.kind == "source" and not self.dirs[head].complete_marker.exists():
            yield from enumerate(chunks(iter(stage.iter_rows(self.limit)), self.pipeline.run.batch_size))
        else:  # a source read to its end before needs no reading again (millions of rows)
            for index in self.dirs[head].done_indices():
                yield index, None

    async def _run_segment(self, segment: list[int]) -> None:
        head = segment[0]
        if self.stages[head].kind == "global":
            await self._run_global(head)
        in_flight: set[asyncio.Task] = set()
        slots = asyncio.Semaphore(self.batches_in_flight(segment))
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

    def batches_in_flight(self, segment: list[int]) -> int:
        """`run.max_batches_in_flight`, or enough batches to hold three times the rows the
        segment's backends take at once: each batch waits for its slowest request, and while it
        does the others' requests keep every slot of the server busy."""
        if self.pipeline.run.max_batches_in_flight is not None:
            return self.pipeline.run.max_batches_in_flight
        concurrency = 1
        for i in segment:
            stage = self.pipeline.stages[i]
            for backend in stage.cls.backend_names(stage.params):
                if backend in self.pipeline.backends:
                    concurrency = max(concurrency, self.pipeline.backends[backend].concurrency())
        return min(max(4, -(-3 * concurrency // self.pipeline.run.batch_size)), 1024)

    async def _chain(self, segment: list[int], index: int, rows: list[Row] | None) -> None:
        start = -1
        for position, i in enumerate(segment):
            if self.dirs[i].done(index):
                start = position
        data: list[Row] | pa.Table | None = rows
        if start >= 0:  # from disk as Arrow: a stage with process_table never makes a dict per row
            data = await asyncio.to_thread(self.dirs[segment[start]].read_table, index)
        assert data is not None
        for i in segment[start + 1 :]:
            if isinstance(data, pa.Table):
                if self.stages[i].vectorized():
                    data = await self._process_table(i, index, data)
                    continue
                data = data.to_pylist()
            data = await self._process(i, index, data)

    async def _process_table(self, i: int, index: int, table: pa.Table) -> pa.Table:
        """_process for a stage with process_table, on an Arrow batch (filters after a global stage)."""
        stage, spec = self.stages[i], self.pipeline.stages[i]
        started = time.perf_counter()
        batch = Batch(rows=[], index=index)
        out = await stage.process_table(table, batch) if table.num_rows else table
        stats = ShardStats(
            rows_in=table.num_rows, rows_out=out.num_rows, counters=dict(batch.counters),
            seconds=round(time.perf_counter() - started, 4),
        )  # fmt: skip
        dropped = pa.concat_tables(batch.dropped_rows) if batch.dropped_rows else None
        if dropped is not None:
            for reason, failed in zip(dropped.column("reason").to_pylist(), dropped.column("failed").to_pylist(),
                                      strict=True):  # fmt: skip
                stats.count_drop(reason, failed)
        await asyncio.to_thread(self.dirs[i].write, index, out, dropped, stats)
        self._span(i, started)
        self.progress.advance(spec.label, table.num_rows)
        return out

    async def _process(self, i: int, index: int, rows: list[Row]) -> list[Row]:
        stage, spec = self.stages[i], self.pipeline.stages[i]
        started = time.perf_counter()
        batch = Batch(rows=rows, index=index)
        counters: dict[str, int] = {}
        ticker = Ticker(self.progress, spec.label, len(rows))
        token, tick = current_counters.set(counters), current_ticker.set(ticker)
        try:
            out = await self.executor.process(i, stage, batch) if rows else []
        finally:
            current_counters.reset(token)
            current_ticker.reset(tick)
        for k, v in batch.counters.items():
            counters[k] = counters.get(k, 0) + v
        stats = ShardStats(
            rows_in=len(rows), rows_out=len(out), counters=counters, seconds=round(time.perf_counter() - started, 4)
        )
        for d in batch.dropped:
            stats.count_drop(d.reason, d.failed)
        # Parquet encoding and the fsyncs happen in a thread: the event loop keeps feeding the
        # backends meanwhile. The marker is still written after the data, in the same call.
        await asyncio.to_thread(self.dirs[i].write, index, out, batch.dropped, stats)
        self._span(i, started)
        ticker.finish()
        return out

    def _span(self, i: int, started: float) -> None:
        """Stretch stage i's wall-clock span over [started, now]: stages overlap in time, so the
        sum of their per-batch times says nothing about how long a stage took."""
        first, _ = self._spans.get(i, (started, started))
        self._spans[i] = (min(first, started), time.perf_counter())

    async def _run_global(self, i: int) -> None:
        stage_dir, stage = self.dirs[i], self.stages[i]
        if stage_dir.complete_marker.exists():
            return
        stage_dir.clear()  # a killed earlier attempt: global stages redo their whole output
        started = time.perf_counter()
        batch = Batch(rows=[], index=0)
        counters: dict[str, int] = {}
        token = current_counters.set(counters)
        try:
            if stage.selects():  # out of core: the stage reads the columns it needs, the runner gathers
                rows = await asyncio.to_thread(Rows.from_files, self.dirs[i - 1].files())
                selection = await stage.select(rows, batch) if rows.num_rows else Selection(np.zeros(0, np.int64))
            else:
                table = self.dirs[i - 1].table()
                out = await stage.process_all(table, batch) if table.num_rows else table
        finally:
            current_counters.reset(token)
        first = ShardStats(rows_in=rows.num_rows if stage.selects() else table.num_rows)
        first.counters = {**counters, **batch.counters}
        label = self.pipeline.stages[i].label
        if stage.selects():  # its drops are in the selection (a selecting stage never calls batch.drop)
            for d in selection.drops:
                first.count_drop(d.reason, d.failed, len(d.positions))
            loop = asyncio.get_running_loop()
            rows_out = await asyncio.to_thread(self._write_selection, i, rows, selection, first, started, loop)
        else:
            for d in batch.dropped:
                first.count_drop(d.reason, d.failed)
            rows_out = out.num_rows
            size = self.pipeline.run.batch_size
            offsets = list(range(0, out.num_rows, size)) or [0]
            for n, offset in enumerate(offsets):
                part = out.slice(offset, size)
                stats = first if n == 0 else ShardStats()
                stats.rows_out = part.num_rows
                stats.seconds = round(time.perf_counter() - started, 4) if n == 0 else 0.0
                stage_dir.write(n, part, batch.dropped if n == 0 else [], stats)
                self.progress.advance(label, part.num_rows)
        await asyncio.to_thread(os.sync)
        atomic_write_json(stage_dir.complete_marker, {"rows_in": first.rows_in, "rows_out": rows_out})
        self._span(i, started)

    def _write_selection(
        self, i: int, rows: Rows, selection: Selection, first: ShardStats, started: float, loop
    ) -> int:
        """Gather a global stage's rows into shards of the batch size (in a thread: the rows of a
        big run take a while to move)."""
        stage_dir, label = self.dirs[i], self.pipeline.stages[i].label
        written = [0, 0]  # shards, rows

        def emit(table: pa.Table) -> None:
            n = written[0]
            stats = first if n == 0 else ShardStats()
            stats.rows_out = table.num_rows
            if n == 0:
                stats.seconds = round(time.perf_counter() - started, 4)
            stage_dir.write(n, table, dropped_table(selection) if n == 0 else None, stats)
            written[0] += 1
            written[1] += table.num_rows
            loop.call_soon_threadsafe(self.progress.advance, label, table.num_rows)

        gather(rows, selection, emit, self.pipeline.run.batch_size, tmp_dir=stage_dir.meta)
        return written[1]

    # ---- output ----
    def _write_output(self) -> int:
        from ..outputs import write_output

        size = max(self.pipeline.run.batch_size, 10_000)
        return write_output(self.dirs[-1].files(), self.pipeline.output, self.store.root / "output", size)


def _disk_error(exc: OSError, root: Path) -> RunError:
    """A full or read-only disk, a vanished run directory: one line naming the path and the fix."""
    where = exc.filename or root
    return RunError(
        f"{where}: {exc.strerror or exc}; if the disk is full or read-only, free some space or make {root} writable "
        "(or choose another run directory with -o), then run the same command again to resume"
    )


def run_pipeline(pipeline: Pipeline, root: str | Path, **kwargs) -> RunResult:
    """Run (or resume) a pipeline; the library entry point behind `synth run`."""
    try:  # uvloop's event loop costs a third less per request than asyncio's (synth[openai] has it)
        import uvloop
    except ImportError:
        return asyncio.run(Runner(pipeline, root, **kwargs).run())
    return uvloop.run(Runner(pipeline, root, **kwargs).run())
