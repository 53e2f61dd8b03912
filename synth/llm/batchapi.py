"""Generations through a provider's Batch API, or through batch files run anywhere.

OpenAI and the providers that copy it answer a file of requests within a day at half price:
upload a JSONL file whose lines are `{"custom_id", "method", "url", "body"}`, create a batch,
poll it until it is `completed` (or `expired`, `cancelled`, `failed`), download its output file
(`{"custom_id", "response": {"status_code", "body"}, "error"}` per line) and its error file.
`vllm run-batch` reads and writes the same files offline.

Stages do not know: the openai backend hands each generation it would have POSTed to
`BatchJobs.submit` and gets the response body back, so parsing, caching, retries, drops and
provenance are those of streamed answers. Requests from every batch of rows in flight gather into
one job per endpoint until it holds `batch_max_requests` lines or `batch_max_mb`, or until no new
request joined for `batch_collect_seconds`. A line's `custom_id` is its request's cache key.

The steps of one job at the provider are synth/llm/batchprovider.py's.

Resume: every step is written to the run's journal (synth/llm/batchjournal.py) before the next
one, and request lines and downloaded answers are kept in the run directory. A resumed run
attaches to the jobs it created (polls or downloads them, never creates them again), reads the
answers it downloaded, and sends in a new job only the requests without an answer: those of a job
that expired, was cancelled, or whose lines failed with a status worth retrying (429, 5xx).

Offline (`synth run --batch-files DIR`): a job is written to `DIR/requests-<job>.jsonl` and the
run stops; `--batch-results DIR` reads every output file in DIR (lines with `custom_id` and
`response`) as answers and goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError
from .base import RequestFailed
from .batchjournal import JobRecord, Journal
from .batchprovider import RETRY_STATUS, Provider

LINE_ATTEMPTS = 3  # a line that keeps failing with a retryable status fails its row after this many jobs


class BatchFilesWritten(RunError):
    """The run stopped after writing request files for the user to run (`--batch-files`)."""


@dataclass
class _Line:
    key: str
    path: str  # /completions or /chat/completions
    body: dict
    check: Callable[[Any], tuple[str, str] | None] | None
    attempts: int = 0

    def json(self) -> bytes:
        line = {"custom_id": self.key, "method": "POST", "url": "/v1" + self.path, "body": self.body}
        return json.dumps(line, ensure_ascii=False, sort_keys=True).encode() + b"\n"


@dataclass
class _Job:
    record: JobRecord
    lines: dict[str, _Line] = field(default_factory=dict)


def read_answers(folder: Path) -> dict[str, dict]:
    """Output lines (`custom_id` + `response` or `error`) of every JSONL file in a folder, by custom_id."""
    answers: dict[str, dict] = {}
    for path in sorted(Path(folder).glob("*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            answer = isinstance(line, dict) and ("response" in line or "error" in line) and "method" not in line
            if answer and isinstance(line.get("custom_id"), str):
                answers[line["custom_id"]] = line
    return answers


def _requests_in(folder: Path) -> dict[str, str]:
    """custom_id -> request file, for the request files already written to a folder."""
    found: dict[str, str] = {}
    for path in sorted(Path(folder).glob("requests-*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                found[json.loads(text)["custom_id"]] = path.name
            except (ValueError, KeyError, TypeError):
                continue
    return found


class BatchJobs:
    """One openai backend's batch jobs: gathers its requests, runs the jobs, maps the answers back."""

    def __init__(
        self,
        backend: Any,  # the OpenAIBackend it serves (its spec, endpoints and HTTP session)
        root: Path | None,
        name: str,
        *,
        files: Path | None = None,
        results: Path | None = None,
        note: Callable[[str], None] | None = None,
    ):
        self.backend, self.spec, self.name = backend, backend.spec, name
        self.journal = Journal(root) if root is not None else None
        self.files = Path(files) if files is not None else None
        self.note = note or (lambda message: None)
        self.answers: dict[str, dict] = {}  # custom_id -> output line, from files downloaded or given
        self.written: dict[str, str] = {}  # offline: custom_id -> request file still waiting for its answer
        self.attached: dict[str, _Job] = {}  # custom_id -> a job created by an earlier session
        self.futures: dict[str, asyncio.Future] = {}
        self.pending: dict[str, list[_Line]] = {}
        self.pending_bytes: dict[str, int] = {}
        self.last_added = 0.0
        self.tasks: set[asyncio.Task] = set()
        self.flusher: asyncio.Task | None = None
        self.running: dict[str, _Job] = {}  # job name -> job with a task
        if results is not None:
            self.answers.update(read_answers(results))
        if self.files is not None:
            self.written = {k: v for k, v in _requests_in(self.files).items() if k not in self.answers}
        self.provider = Provider(backend, self.journal, name, self.note) if self.journal is not None else None
        if self.journal is not None:
            self._load()

    # ---- what an earlier session left ----
    def _load(self) -> None:
        assert self.journal is not None
        for record in self.journal.jobs().values():
            if record.backend != self.name:
                continue
            for name in (record.output, record.errors):
                if name and (self.journal.folder / name).exists():
                    for text in (self.journal.folder / name).read_text(encoding="utf-8").splitlines():
                        line = json.loads(text)
                        self.answers.setdefault(line["custom_id"], line)
            if record.in_flight or (record.input_file_id and not record.batch_id):  # uploaded: maybe created
                job = _Job(record)
                source = self.journal.folder / record.input
                for text in source.read_text(encoding="utf-8").splitlines() if source.exists() else []:
                    line = json.loads(text)
                    path = line["url"].removeprefix("/v1")
                    job.lines[line["custom_id"]] = _Line(line["custom_id"], path, line["body"], None)
                for key in job.lines:
                    self.attached[key] = job

    # ---- the backend's side ----
    async def submit(self, key: str, path: str, body: dict, check) -> Any:
        """The response body of one generation (what a POST to `path` would have returned), or a
        RequestFailed for a line the provider rejected."""
        line = _Line(key, path, body, check)
        answer = self.answers.pop(key, None)  # once used it is in the cache: not kept twice in memory
        if answer is not None:
            result = self._result(line, answer)
            if result is not None:
                return result
        future = self.futures.get(key)
        if future is None:
            future = self.futures[key] = asyncio.get_running_loop().create_future()
            job = self.attached.get(key)
            if job is not None:
                job.lines[key].check = check
                self._start(job)
            else:
                self._enqueue(line)
        return await asyncio.shield(future)

    def _result(self, line: _Line, answer: dict) -> Any:
        """The body of a good answer, a RequestFailed for a rejected line, or None to send it again."""
        response = answer.get("response") if isinstance(answer.get("response"), dict) else None
        status = response.get("status_code") if response else None
        body = response.get("body") if response else None
        if status == 200 and isinstance(body, dict):
            problem = line.check(body) if line.check is not None else None
            if problem is None:
                return body
            if line.attempts + 1 >= LINE_ATTEMPTS:
                return RequestFailed(problem[0], f"{problem[1]} (in {line.attempts + 1} batch jobs)")
            return None
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        message = (body or {}).get("error") if isinstance(body, dict) else None
        message = message.get("message") if isinstance(message, dict) else message
        message = message or error.get("message") or json.dumps(answer)[:300]
        if isinstance(status, int) and status not in RETRY_STATUS:
            return RequestFailed("rejected", f"HTTP {status}: {str(message)[:500]}")
        if line.attempts + 1 >= LINE_ATTEMPTS:
            return RequestFailed("batch_failed", f"{status or error.get('code') or 'error'}: {str(message)[:500]}")
        return None

    def _enqueue(self, line: _Line) -> None:
        lines = self.pending.setdefault(line.path, [])
        lines.append(line)
        self.pending_bytes[line.path] = self.pending_bytes.get(line.path, 0) + len(line.json())
        self.last_added = time.monotonic()
        full = len(lines) >= self.spec.batch_max_requests
        if full or self.pending_bytes[line.path] >= self.spec.batch_max_mb * 1e6 * 0.98:
            self._flush(line.path)
        elif self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        """Submit what gathered once no request joined for batch_collect_seconds."""
        while self.pending:
            quiet = time.monotonic() - self.last_added
            if quiet >= self.spec.batch_collect_seconds:
                for path in list(self.pending):
                    self._flush(path)
                return
            await asyncio.sleep(min(0.2, self.spec.batch_collect_seconds - quiet + 0.01))

    def _flush(self, path: str) -> None:
        lines = self.pending.pop(path, [])
        self.pending_bytes.pop(path, None)
        if not lines:
            return
        name = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        record = JobRecord(name, backend=self.name, url=self.backend.endpoints[0].url, endpoint="/v1" + path)
        job = _Job(record, {line.key: line for line in lines})
        self._start(job)

    def _start(self, job: _Job) -> None:
        if job.record.job in self.running:
            return
        self.running[job.record.job] = job
        task = asyncio.ensure_future(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: _Job) -> None:
        try:
            if self.files is not None:
                self._write_files(job)
                return
            assert self.provider is not None, "batch mode needs a run directory"
            answers = await self.provider.run(job.record, b"".join(line.json() for line in job.lines.values()))
        except BaseException as exc:
            for key in job.lines:
                future = self.futures.pop(key, None)
                if future is None or future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()  # its waiters raise it; one that left (Ctrl-C) need not be told
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.running.pop(job.record.job, None)
        for key, line in job.lines.items():
            self.attached.pop(key, None)
            future = self.futures.get(key)
            if future is None or future.done():
                if key in answers:  # a line of an earlier session's job that this session has not asked for yet
                    self.answers[key] = answers[key]
                continue
            result = self._result(line, answers[key]) if key in answers else None
            if result is not None:
                future.set_result(result)
                self.futures.pop(key, None)
            elif line.attempts + 1 >= LINE_ATTEMPTS:
                reason = f"no answer after {line.attempts + 1} batch jobs (the last ended {job.record.status})"
                future.set_result(RequestFailed("batch_failed", reason))
                self.futures.pop(key, None)
            else:  # expired, cancelled, or a line worth retrying: in a later job
                line.attempts += 1
                self._enqueue(line)

    # ---- offline files ----
    def _write_files(self, job: _Job) -> None:
        assert self.files is not None
        self.files.mkdir(parents=True, exist_ok=True)
        fresh = {k: v for k, v in job.lines.items() if k not in self.written}
        path = self.files / f"requests-{job.record.job}.jsonl"
        if fresh:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(b"".join(line.json() for line in fresh.values()))
            tmp.replace(path)
            for key in fresh:
                self.written[key] = path.name
            if self.journal is not None:
                self.journal.append(
                    {
                        "event": "files",
                        "job": job.record.job,
                        "backend": self.name,
                        "files": str(path),
                        "requests": len(fresh),
                        "status": "written",
                    }
                )
        waiting = sorted({self.written[k] for k in job.lines})
        model = self.spec.model
        example = f"vllm run-batch -i {self.files / waiting[0]} -o {self.files / ('results-' + waiting[0][9:])}"
        raise BatchFilesWritten(
            f"{len(job.lines)} requests of backend '{self.name}' are waiting in {', '.join(waiting)} in {self.files} "
            f"({len(fresh)} written now); answer them wherever OpenAI batch files run (e.g. `{example} --model "
            f"{model}`), put the output files in {self.files}, then run the same command with --batch-results "
            f"{self.files}"
        )

    # ---- the end ----
    async def close(self) -> None:
        for task in list(self.tasks) + ([self.flusher] if self.flusher else []):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.journal is not None:
            left = [j for j in self.journal.jobs().values() if j.in_flight and j.backend == self.name]
            if left:
                ids = ", ".join(j.batch_id or "" for j in left[:3]) + (" ..." if len(left) > 3 else "")
                self.note(
                    f"{len(left)} batch job(s) of backend '{self.name}' are still running at the provider ({ids}); "
                    f"the same command collects their answers, `synth batches cancel {self.journal.folder.parent}` "
                    "cancels them"
                )
