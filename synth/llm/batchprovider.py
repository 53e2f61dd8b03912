"""One batch job at a provider, step by step: upload, create, poll, download (synth/llm/batchapi.py
gathers the jobs and maps their answers back).

Each step is written to the run's journal before the next starts, so a resumed run attaches to the
batch it paid for. A job whose file was uploaded but whose batch id was never written down (killed
while the batch was being created) is looked up by the `synth_job` name in its metadata before a
batch is created for it. Calls are retried like generations (connection errors, 408, 409, 429,
5xx) for the backend's `retry_seconds`; any other status stops the run with the provider's words.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BackendError
from .batchjournal import TERMINAL, JobRecord, Journal

RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
FIRST_POLL = 1.0


class Provider:
    """The Batch API of one openai backend's first base URL, through its HTTP session and key."""

    def __init__(self, backend: Any, journal: Journal, name: str, note: Callable[[str], None] | None = None):
        self.backend, self.spec, self.journal, self.name = backend, backend.spec, journal, name
        self.note = note or (lambda message: None)

    async def run(self, record: JobRecord, data: bytes) -> dict[str, dict]:
        """Upload, create, poll and download one job (each step journaled before the next); its
        output and error lines by custom_id."""
        if record.batch_id is None and record.input_file_id is not None:
            # Uploaded by an earlier session, which may have been killed while the batch was being
            # created: the provider lists it with our job name in its metadata.
            record.batch_id = await self._find(record.job)
            if record.batch_id is not None:
                self.journal.append({"event": "created", "job": record.job, "batch_id": record.batch_id})
        if record.batch_id is None and record.input_file_id is None:
            record.input = f"{record.job}.input.jsonl"
            record.requests = data.count(b"\n")
            self.journal.write_file(record.input, data)
            self.journal.append(
                {
                    "event": "upload",
                    "job": record.job,
                    "backend": self.name,
                    "url": record.url,
                    "endpoint": record.endpoint,
                    "input": record.input,
                    "requests": record.requests,
                    "status": "uploading",
                }
            )
            uploaded = await self.call("POST", "/files", files=(record.input, data))
            record.input_file_id = str(uploaded["id"])
            self.journal.append({"event": "uploaded", "job": record.job, "input_file_id": record.input_file_id})
        if record.batch_id is None:
            created = await self.call(
                "POST",
                "/batches",
                {
                    "input_file_id": record.input_file_id,
                    "endpoint": record.endpoint,
                    "completion_window": self.spec.completion_window,
                    "metadata": {"synth_job": record.job},
                },
            )
            record.batch_id = str(created["id"])
            self.journal.append(
                {"event": "created", "job": record.job, "batch_id": record.batch_id, "status": created.get("status")}
            )
        batch = await self._poll(record)
        answers: dict[str, dict] = {}
        for field_name, kind in (("output_file_id", "output"), ("error_file_id", "errors")):
            file_id = batch.get(field_name)
            if not file_id:
                continue
            raw = await self.call("GET", f"/files/{file_id}/content", raw=True)
            name = f"{record.job}.{kind}.jsonl"
            self.journal.write_file(name, raw)
            setattr(record, kind, name)
            for text in raw.decode("utf-8").splitlines():
                try:
                    line = json.loads(text)
                except ValueError:
                    continue
                if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                    answers.setdefault(line["custom_id"], line)
        record.output = record.output or f"{record.job}.output.jsonl"  # nothing to download: collected all the same
        failed = batch.get("status") == "failed"  # the provider refused the file as a whole: say why
        self.journal.append(
            {
                "event": "downloaded",
                "job": record.job,
                "output": record.output,
                "errors": record.errors,
                "status": batch.get("status"),
            }
        )
        if failed:
            errors = (batch.get("errors") or {}).get("data") if isinstance(batch.get("errors"), dict) else None
            why = "; ".join(str(e.get("message", e)) for e in errors or [] if isinstance(e, dict)) or "no reason given"
            raise BackendError(
                f"the provider failed batch {record.batch_id} of backend '{self.name}' as a whole: {why[:500]}; fix "
                "that (the model name, the endpoint, the file's limits), then run the same command again"
            )
        return answers

    async def _find(self, job: str) -> str | None:
        """The batch created for `job` (by its metadata), among the provider's latest 100."""
        listed = await self.call("GET", "/batches?limit=100")
        for batch in (listed.get("data") or []) if isinstance(listed, dict) else []:
            if isinstance(batch, dict) and (batch.get("metadata") or {}).get("synth_job") == job:
                return str(batch["id"])
        return None

    async def _poll(self, record: JobRecord) -> dict:
        """Look at the batch with a growing pause (1 s, doubling, up to batch_poll_seconds) until it ends."""
        self.note(
            f"batch job {record.batch_id} of backend '{self.name}': {record.requests} requests, "
            f"answers within {self.spec.completion_window} (Ctrl-C leaves it running; the same command collects it)"
        )
        delay = FIRST_POLL
        while True:
            batch = await self.call("GET", f"/batches/{record.batch_id}")
            status, counts = str(batch.get("status")), batch.get("request_counts") or {}
            if status != record.status or counts != record.counts:
                record.status, record.counts = status, counts
                self.journal.append({"event": "status", "job": record.job, "status": status, "counts": counts})
            if status in TERMINAL:
                return batch
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, self.spec.batch_poll_seconds)

    async def call(self, method: str, path: str, body: dict | None = None, *, files=None, raw: bool = False) -> Any:
        """One Batch API call, retried like a generation (connection errors, 408/409/429/5xx)."""
        import aiohttp

        url = self.backend.endpoints[0].url + path
        deadline = time.monotonic() + self.spec.retry_seconds
        attempt, last = 0, ""
        while True:
            headers, data = None, None
            if files is not None:  # multipart by hand: the session's JSON content type must not apply
                boundary = uuid.uuid4().hex
                name, content = files
                data = (
                    (
                        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                        "Content-Type: application/jsonl\r\n\r\n"
                    ).encode()
                    + content
                    + f"\r\n--{boundary}--\r\n".encode()
                )
                headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            elif body is not None:
                data = json.dumps(body).encode()
            try:
                async with self.backend._session().request(method, url, data=data, headers=headers) as response:
                    status, content = response.status, await response.read()
                if status < 300:
                    return content if raw else json.loads(content)
                message = content.decode("utf-8", "replace")[:300]
                if status not in RETRY_STATUS:
                    raise BackendError(
                        f"{url} answered HTTP {status}: {message}; check that the provider offers the Batch API "
                        f"there (files and batches), the model name ({self.spec.model}) and the key in "
                        f"${self.spec.api_key_env}; finished requests are cached, the same command resumes"
                    )
                last = f"HTTP {status}: {message}"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            attempt += 1
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"the Batch API at {url} failed {attempt} times in {self.spec.retry_seconds:g} s (last: {last}); "
                    "run the same command again to resume: jobs already created are polled, not created again"
                )
            await asyncio.sleep(random.uniform(0, min(30.0, 0.5 * 2 ** min(attempt, 8))))


async def cancel_jobs(root: Path, backends: dict) -> list[str]:
    """Cancel a run's batch jobs still running at the provider (`synth batches cancel`), through
    the run's openai backends by name: the answers of lines already done stay collectable; a
    resume sends the rest in a new job."""
    journal, done = Journal(root), []
    for record in journal.jobs().values():
        if not record.in_flight or record.status in ("cancelling", "cancelled") or record.backend not in backends:
            continue
        provider = Provider(backends[record.backend], journal, record.backend)
        batch = await provider.call("POST", f"/batches/{record.batch_id}/cancel", {})
        journal.append({"event": "status", "job": record.job, "status": str(batch.get("status", "cancelling"))})
        done.append(str(record.batch_id))
    return done
