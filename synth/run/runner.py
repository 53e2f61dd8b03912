"""The runner: one session of a run, from opening its directory to the manifest's last word.

Stages are cut into segments at source and global stages (synth/run/directory.py). A segment of
map stages streams its batches through (synth/run/segments.py), each batch on its own; a global
stage waits for every row of the stage before it (synth/run/globals.py). Every stage's output is
checkpointed shard by shard, so a killed run resumes where it stopped, its LLM requests answered
from the cache. Where map stages run is the executor's business (synth/executors), told only
what a `Plan` says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from pathlib import Path

from ..budget import Budget, BudgetGuard
from ..cache import RequestCache
from ..config import Pipeline, StageSpec
from ..errors import BudgetReached, RunError
from ..executors import Plan, make_executor
from ..llm import make_backend
from ..llm.batchapi import BatchFilesWritten
from ..llm.client import LLM
from ..progress import Progress, RunResult
from ..scrub import scrub
from ..stages.base import Stage, StageContext
from ..store import RunStore, ShardStats
from ..usage import Meter, run_totals
from .directory import RunDirectory
from .globals import run_global
from .segments import SegmentLoop, Spans, batches_in_flight

OFFLINE_BATCHES_IN_FLIGHT = 1024  # the most batches_in_flight gives


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
        batch_files: str | Path | None = None,
        batch_results: str | Path | None = None,
        budget: Budget | None = None,
    ):
        if (batch_files or batch_results) and pipeline.run.max_batches_in_flight is None:
            # Offline batch files: one round writes the requests of every batch in flight, so many travel.
            run = pipeline.run.model_copy(update={"max_batches_in_flight": OFFLINE_BATCHES_IN_FLIGHT})
            pipeline = dataclasses.replace(pipeline, run=run)
        self.pipeline = pipeline
        self.batch_files, self.batch_results = batch_files, batch_results  # offline batch files (batchapi.py)
        self.budget = budget or pipeline.run.budget  # --budget over run.budget
        self.retry_failed = retry_failed
        self.store = RunStore(root)
        self.overwrite = overwrite
        self.limit = limit
        self.progress = progress or Progress()
        self.directory = RunDirectory(pipeline, self.store, limit, self.progress)
        self.stages: list[Stage] = []
        self.opened: list[Stage] = []
        self.llms: dict[str, LLM] = {}
        self.cache: RequestCache | None = None
        self.meter = Meter()  # this session's usage (synth/usage.py)
        self.guard: BudgetGuard | None = None
        self.spans = Spans()
        self.executor = make_executor(pipeline, executor, address)  # where map stages run (synth/executors)
        if self.budget is not None and getattr(self.executor, "name", "local") != "local":
            # The budget's gate sits in this process; an executor's workers send their own requests.
            # A cap that is not held is worse than none: refuse before anything is sent.
            raise RunError(
                f"run.budget is held before requests this process sends, and the {self.executor.name} "
                "executor's workers send their own: run it with --executor local, or without a budget "
                "(synth estimate tells what it would cost)"
            )

    @property
    def dirs(self):
        return self.directory.dirs

    # ---- set-up ----
    def _llm(self, name: str) -> LLM:
        if name not in self.llms:
            backend = make_backend(self.pipeline.backends[name])
            if hasattr(backend, "on_trouble"):  # HTTP backends say when their server stops answering
                backend.on_trouble = self.progress.trouble
            if hasattr(backend, "use_run"):  # batch mode keeps its jobs' journal in the run directory
                files, results = self.batch_files, self.batch_results
                backend.use_run(self.store.root, name, files=files, results=results, note=self.progress.note)
            self.llms[name] = LLM(name, backend, self.cache, self.meter, self.guard)
        return self.llms[name]

    async def _open_stages(self, manifest: dict) -> None:
        self.cache = RequestCache(self.store.root / "cache.sqlite")
        self._open_usage(manifest)
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
            self.stages.append(spec.cls(spec.params, ctx))
        segments = self.directory.segments
        await self.executor.start(
            Plan(
                pipeline=self.pipeline,
                segments=segments,
                stage_dirs=[d.path for d in self.dirs],
                cache_path=self.cache.path,
                limit=self.limit,
                batches_in_flight=[batches_in_flight(self.pipeline, s) for s in segments],
                note=self.progress.note,
                session=self.cache.session,
            )
        )
        for i, stage in enumerate(self.stages):
            if self.executor.runs_here(i):  # on Ray, map stages open in their actors instead
                await stage.open()
                self.opened.append(stage)

    def _open_usage(self, manifest: dict) -> None:
        """Journal this session's usage under its start time; fill in what killed sessions spent (their
        manifest entry never got it) from the journal; start the budget from every session's spend."""
        assert self.cache is not None
        sessions = manifest["sessions"]
        self.cache.session = sessions[-1]["started"]
        for session in sessions[:-1]:
            if "usage" not in session and session.get("started"):
                session["usage"] = self.cache.usage(session["started"])
        manifest["pricing"] = {
            name: spec.pricing.model_dump(mode="json")
            for name, spec in self.pipeline.backends.items()
            if spec.pricing is not None
        }
        if self.budget is not None:
            sessions[-1]["budget"] = self.budget.text()
            earlier = sum(s.get("seconds") or 0.0 for s in sessions[:-1]) / 3600
            pricing = {n: s.pricing for n, s in self.pipeline.backends.items() if s.pricing is not None}
            self.guard = BudgetGuard(self.budget, pricing, run_totals(manifest), earlier)

    # ---- running ----
    async def run(self) -> RunResult:
        try:
            manifest = self.directory.open(self.overwrite, self.retry_failed)
        except OSError as exc:
            self.store.unlock()
            raise _disk_error(exc, self.store.root) from None
        except BaseException:
            self.store.unlock()
            raise
        started = time.perf_counter()
        output_rows = 0
        stats: list[tuple[StageSpec, ShardStats]] = []
        too_many: RunError | None = None
        try:
            await self._open_stages(manifest)
            self.progress.start(self.pipeline.stages, self.stages[0].total_rows(self.limit))
            loop = SegmentLoop(
                self.pipeline, self.stages, self.dirs, self.executor, self.progress, self.spans, self.limit
            )
            for segment in self.directory.segments:
                head = segment[0]
                if self.stages[head].kind == "global":
                    label, size = self.pipeline.stages[head].label, self.pipeline.run.batch_size
                    await run_global(head, self.stages[head], label, self.dirs, size, self.progress, self.spans)
                await loop.run(segment)
            too_many = self._failure_rate_error(self._stats())
            if too_many is None or "output" not in manifest:
                output_rows = self._write_output()
            else:  # an output is replaced only by a run that succeeds
                output_rows = manifest["output"].get("rows", 0)
                too_many = RunError(f"{too_many}; the previous output ({output_rows:,} rows) is left in place")
            status, error = "complete", None
        except BudgetReached as exc:  # requests sent are answered and cached, finished batches written
            status, error = "budget", None
            manifest["budget"] = {"reached": str(exc), "resume": self._budget_hint(manifest)}
        except BaseException as exc:
            stopped = (KeyboardInterrupt, asyncio.CancelledError, BatchFilesWritten)  # files written: resumable
            status = "interrupted" if isinstance(exc, stopped) else "failed"
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
            stats = self._stats()
            if too_many is not None:
                status, error = "failed", too_many
            session = manifest["sessions"][-1]
            session.update(status=status, finished=dt.datetime.now(dt.timezone.utc).isoformat())
            self.executor.record(session)
            session["seconds"] = round(time.perf_counter() - started, 3)
            if error is not None:
                session["error"] = scrub(str(error))[:500]
            session["usage"] = self.cache.usage(self.cache.session) if self.cache is not None else self.meter.totals
            manifest["usage"] = run_totals(manifest)
            if status != "budget":
                manifest.pop("budget", None)
            manifest["stages"] = [self._stage_entry(spec, s) for spec, s in stats]
            manifest["status"] = status
            if status == "complete" or (too_many is not None and "output" not in manifest):
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

    def _budget_hint(self, manifest: dict) -> str:
        """The command that resumes a run stopped by its budget, with room for more."""
        assert self.budget is not None
        spent = self.guard.spent_now() if self.guard is not None else {}
        more = {}
        for unit in ("cost", "tokens", "requests"):
            cap = getattr(self.budget, unit)
            if cap is not None:  # twice the cap, or what was spent plus the cap
                raised = max(cap * 2, spent.get(unit, 0) + cap)
                more[unit] = round(raised, 2) if unit == "cost" else int(raised)
        return f"{self.store.resume_hint(manifest)} --budget {Budget(**more).text()}"

    def _stats(self) -> list[tuple[StageSpec, ShardStats]]:
        return [(spec, d.stats()) for spec, d in zip(self.pipeline.stages, self.dirs, strict=False)]

    def _stage_entry(self, spec: StageSpec, s: ShardStats) -> dict:
        entry = {"label": spec.label, "stage": spec.key, "kind": spec.cls.kind, **s.__dict__}
        busy = entry.pop("seconds")
        earlier = self.directory.earlier_wall.get(spec.label, 0.0)
        entry["wall_seconds"] = round(earlier + self.spans.seconds(spec.index), 3)
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
