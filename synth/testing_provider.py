"""A stand-in for a hosted provider, for tests: its Batch API and its rate limits.

No provider's Batch API can be reached from a test machine, so `ProviderServer` speaks its files
and batches endpoints the way OpenAI documents them and executes the lines against a real
OpenAI-compatible server upstream (llama.cpp's, in synth's tests):

- `POST /v1/files` (multipart, purpose=batch) and `GET /v1/files/{id}/content`;
- `POST /v1/batches`, `GET /v1/batches` (newest first), `GET /v1/batches/{id}`,
  `POST /v1/batches/{id}/cancel`. A batch moves one
  status per look: validating, in_progress (its lines run upstream meanwhile), finalizing,
  completed; output lines are `{"id", "custom_id", "response": {"status_code", "request_id",
  "body"}, "error"}`, and lines that failed go to the error file;
- `/v1/completions` and `/v1/chat/completions` forwarded upstream, under a requests-per-minute
  limit when one is set (a bucket of `burst` requests refilled at rpm/60 a second, answering 429
  past it, with `x-ratelimit-remaining-requests` / `x-ratelimit-reset-requests` headers).

It counts uploads and batches created (a resumed run must not create a batch twice), can fail the
next lines, expire the next batch part-way, and hold its answer at a step (`pause_at("upload" |
"create" | "created" | "polling" | "download")`) so a test can kill the client there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time

from .testing import _LoopThread, _read_request, _response

__all__ = ["ProviderServer"]

STEPS = ("upload", "create", "created", "polling", "download")


async def _post_upstream(host: str, port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """POST one JSON body upstream; the status and the body of its answer (by Content-Length,
    chunks, or to the end of the connection)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        top = (await reader.readuntil(b"\r\n\r\n")).lower()
        status = int(top.split(b" ", 2)[1])
        length = re.search(rb"content-length:\s*(\d+)", top)
        if length:
            return status, await reader.readexactly(int(length.group(1)))
        if b"transfer-encoding: chunked" not in top:
            return status, await reader.read()
        payload = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16):
            payload += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, payload
    finally:
        writer.close()


def _multipart_file(head: bytes, body: bytes) -> bytes | None:
    match = re.search(rb"boundary=([^\s;\r]+)", head, re.IGNORECASE)
    if not match:
        return None
    for part in body.split(b"--" + match.group(1).strip(b'"')):
        headers, _, content = part.partition(b"\r\n\r\n")
        if b'name="file"' in headers:
            return content.removesuffix(b"\r\n")
    return None


class ProviderServer(_LoopThread):
    """A provider's Batch API and rate limits on 127.0.0.1, executing lines on a real upstream server."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        requests_per_minute: int | None = None,
        burst: int = 1,
        concurrency: int = 2,
        port: int | None = None,
    ):
        super().__init__(port)
        self.upstream = (upstream_host, upstream_port)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.uploads = 0
        self.creates = 0
        self.cancels = 0
        self.lines_run = 0
        self.served = 0  # generations forwarded (streaming)
        self.too_many = 0  # 429s answered
        self.arrivals: list[float] = []  # time.monotonic() of every generation request (streaming)
        self.bodies: list[dict] = []  # every generation's body, streamed or a batch line, as upstream got it
        self.concurrency = concurrency
        self.rpm, self.burst = requests_per_minute, burst
        self._level, self._stamp = float(burst), time.monotonic()
        self._fail_lines: tuple[int, int] = (0, 500)
        self._expire_after: int | None = None
        self._refuse: str | None = None
        self._free_lines = 1 << 62  # lines that may start before run_lines()
        self._started = 0
        self._lines_open = asyncio.Event()
        self._lines_open.set()
        self._pause: str | None = None
        self.paused = threading.Event()  # set when a request is being held at the pause step
        self._release: asyncio.Event | None = None
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    # ---- control, from any thread ----
    def pause_at(self, step: str | None) -> None:
        """Hold the answer at `step` (one of STEPS) until release(): the client waits there."""
        assert step is None or step in STEPS, step
        self._pause = step
        self.paused.clear()

    def release(self) -> None:
        self._pause = None
        self.paused.clear()
        if self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def fail_lines(self, count: int, status: int = 500) -> None:
        """The next `count` lines executed fail with `status` (in the error file)."""
        self._fail_lines = (count, status)

    def hold_lines(self, after: int) -> None:
        """Start only the first `after` lines of batches until run_lines(): a provider's queue,
        so that a test can cancel a batch part-way."""
        self._free_lines = self._started + after
        self._loop.call_soon_threadsafe(self._lines_open.clear)

    def run_lines(self) -> None:
        self._free_lines = 1 << 62
        self._loop.call_soon_threadsafe(self._lines_open.set)

    def refuse_next(self, message: str) -> None:
        """The next batch fails validation as a whole (status `failed`, `errors` saying `message`)."""
        self._refuse = message

    def expire_next(self, after_lines: int) -> None:
        """The next batch expires once `after_lines` of its lines ran: the rest get no answer."""
        self._expire_after = after_lines

    # ---- HTTP ----
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, body = await _read_request(reader)
            method, path = head.split(b"\r\n", 1)[0].decode().split(" ")[:2]
            status, payload, extra = await self._route(method, path, head, body)
            writer.write(_response(status, payload, extra))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _hold(self, step: str) -> None:
        if self._pause == step:
            self._release = asyncio.Event()
            self.paused.set()
            await self._release.wait()

    async def _route(self, method: str, path: str, head: bytes, body: bytes) -> tuple[int, bytes, str]:
        path = path.split("?")[0]
        if method == "POST" and path.endswith(("/completions", "/chat/completions")) and "/batches" not in path:
            return await self._generate(path, body)
        if method == "POST" and path == "/v1/files":
            content = _multipart_file(head, body)
            if content is None:
                return 400, json.dumps({"error": {"message": "expected multipart/form-data with a file"}}).encode(), ""
            file_id = f"file-{next(self._ids)}"
            self.files[file_id] = content
            self.uploads += 1
            await self._hold("upload")  # stored, but the client never hears its id
            meta = {"id": file_id, "object": "file", "bytes": len(content), "purpose": "batch"}
            return 200, json.dumps({**meta, "created_at": int(time.time()), "filename": "input.jsonl"}).encode(), ""
        match = re.fullmatch(r"/v1/files/([\w-]+)/content", path)
        if method == "GET" and match:
            if match.group(1) not in self.files:
                return 404, json.dumps({"error": {"message": "no such file"}}).encode(), ""
            await self._hold("download")
            return 200, self.files[match.group(1)], ""
        if method == "POST" and path == "/v1/batches":
            created = self._create(json.loads(body))
            await self._hold("create")  # created, but the client never hears its id
            return 200, json.dumps(created).encode(), ""
        if method == "GET" and path == "/v1/batches":  # newest first, as OpenAI lists them
            listed = [self.public(b) for b in reversed(self.batches)]
            return 200, json.dumps({"object": "list", "data": listed, "has_more": False}).encode(), ""
        match = re.fullmatch(r"/v1/batches/([\w-]+)(/cancel)?", path)
        if match and match.group(1) in self.batches:
            batch = self.batches[match.group(1)]
            if match.group(2) and method == "POST":
                self.cancels += 1
                if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                    batch["status"] = "cancelling"
                    batch["cancelling_at"] = int(time.time())
                return 200, json.dumps(self.public(batch["id"])).encode(), ""
            if method == "GET":
                await self._hold("created" if batch["status"] == "validating" else "polling")
                self._advance(batch)
                return 200, json.dumps(self.public(batch["id"])).encode(), ""
        return 404, json.dumps({"error": {"message": f"the stand-in has no route {method} {path}"}}).encode(), ""

    # ---- rate limits ----
    async def _generate(self, path: str, body: bytes) -> tuple[int, bytes, str]:
        extra = ""
        self.arrivals.append(time.monotonic())
        if self.rpm:
            now = time.monotonic()
            rate = self.rpm / 60.0
            self._level = min(float(self.burst), self._level + (now - self._stamp) * rate)
            self._stamp = now
            if self._level < 1:
                self.too_many += 1
                wait = (1 - self._level) / rate
                headers = f"x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: {wait:.3f}s\r\n"
                message = {"error": {"message": "Rate limit reached for requests", "type": "requests"}}
                return 429, json.dumps(message).encode(), headers + f"Retry-After: {max(1, round(wait))}\r\n"
            self._level -= 1
            reset = (self.burst - self._level) / rate
            extra = (
                f"x-ratelimit-remaining-requests: {int(self._level)}\r\nx-ratelimit-reset-requests: {reset:.3f}s\r\n"
            )
        self.served += 1
        self.bodies.append(json.loads(body))
        status, payload = await _post_upstream(*self.upstream, path, body)
        return status, payload, extra

    # ---- batches ----
    def _create(self, request: dict) -> dict:
        self.creates += 1
        batch_id = f"batch_{next(self._ids)}"
        now = int(time.time())
        lines = self.files.get(request.get("input_file_id", ""), b"").decode().splitlines()
        self.batches[batch_id] = batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": request.get("endpoint"),
            "errors": None,
            "input_file_id": request.get("input_file_id"),
            "completion_window": request.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": request.get("metadata"),
            "_results": [],
            "_errors": [],
            "_done": False,
        }
        batch["_expire"], self._expire_after = self._expire_after, None
        batch["_refuse"], self._refuse = self._refuse, None
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _advance(self, batch: dict) -> None:
        """One status further per look, as a provider's batch moves while the client polls."""
        status, now = batch["status"], int(time.time())
        if status == "validating" and batch["_refuse"]:
            error = {"code": "invalid_file", "message": batch["_refuse"], "param": None, "line": None}
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": [error]})
        elif status == "validating":
            batch.update(status="in_progress", in_progress_at=now)
            task = self._loop.create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif status == "in_progress" and batch["_done"]:
            if batch["_expire"] is not None:
                self._files_out(batch)
                batch.update(status="expired", expired_at=now)
            else:
                batch.update(status="finalizing", finalizing_at=now)
        elif status == "finalizing":
            self._files_out(batch)
            batch.update(status="completed", completed_at=now)
        elif status == "cancelling" and batch["_done"]:
            self._files_out(batch)
            batch.update(status="cancelled", cancelled_at=now)

    def _files_out(self, batch: dict) -> None:
        for kind, key in (("_results", "output_file_id"), ("_errors", "error_file_id")):
            if batch[kind]:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = b"".join(json.dumps(line).encode() + b"\n" for line in batch[kind])
                batch[key] = file_id

    async def _execute(self, batch: dict) -> None:
        lines = [json.loads(t) for t in self.files[batch["input_file_id"]].decode().splitlines() if t.strip()]
        if batch["_expire"] is not None:
            lines = lines[: batch["_expire"]]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(line: dict) -> None:
            async with gate:
                self._started += 1
                if self._started > self._free_lines:
                    await self._lines_open.wait()
                if batch["status"] == "cancelling":
                    return
                count, failing = self._fail_lines
                request_id = f"req_{next(self._ids)}"
                if count > 0:
                    self._fail_lines = (count - 1, failing)
                    status, body = failing, {"error": {"message": "injected by ProviderServer"}}
                else:
                    self.bodies.append(line["body"])
                    status, raw = await _post_upstream(*self.upstream, line["url"], json.dumps(line["body"]).encode())
                    body = json.loads(raw)
                self.lines_run += 1
                entry = {
                    "id": f"batch_req_{next(self._ids)}",
                    "custom_id": line["custom_id"],
                    "response": {"status_code": status, "request_id": request_id, "body": body},
                    "error": None,
                }
                counts = batch["request_counts"]
                if status == 200:
                    batch["_results"].append(entry)
                    counts["completed"] += 1
                else:
                    batch["_errors"].append(entry)
                    counts["failed"] += 1

        await asyncio.gather(*(one(line) for line in lines))
        batch["_done"] = True

    def public(self, batch_id: str) -> dict:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}
