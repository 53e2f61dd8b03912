"""Test helpers that ship with synth, for its own tests and for users' tests of their pipelines.

`FaultProxy` sits between a backend and a real OpenAI-compatible server on 127.0.0.1 and breaks
things on purpose: answer the next N requests with 429 or 500, delay them, or stop listening
altogether (a dead server) and come back later. It counts requests and the most it saw in flight,
which is how a test checks a concurrency limit. It runs in a thread, so plain tests can use it.

It speaks just enough HTTP/1.1 for JSON APIs: one request per connection (it answers with
`Connection: close`), bodies by Content-Length.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Faults:
    status: int | None = None
    remaining: int = 0
    delay: float = 0.0
    retry_after: int | None = None


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    port: int = field(default_factory=free_port)
    requests: int = 0
    injected: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self):
        self._faults = _Faults()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- control (from any thread) ----
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self.start_listening()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_listening()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def start_listening(self) -> None:
        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        self._call(start())

    def stop_listening(self) -> None:
        async def stop():
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None

        self._call(stop())

    def fail_next(self, count: int, status: int = 500, retry_after: int | None = None) -> None:
        self._faults = _Faults(status=status, remaining=count, retry_after=retry_after, delay=self._faults.delay)

    def set_delay(self, seconds: float) -> None:
        self._faults.delay = seconds

    # ---- the proxy ----
    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        return head, body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, body = await self._read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.requests += 1
        faults = self._faults
        try:
            if faults.delay:
                await asyncio.sleep(faults.delay)
            if faults.remaining > 0:
                faults.remaining -= 1
                self.injected += 1
                extra = f"Retry-After: {faults.retry_after}\r\n" if faults.retry_after is not None else ""
                payload = b'{"error": "injected by FaultProxy"}'
                writer.write(
                    f"HTTP/1.1 {faults.status} Injected\r\nContent-Type: application/json\r\n{extra}"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                return
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
                lines = [ln for ln in head.split(b"\r\n") if ln and not ln.lower().startswith(b"connection:")]
                up_writer.write(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
                await up_writer.drain()
                response = await up_reader.read()
                up_writer.close()
            finally:
                self.in_flight -= 1
            writer.write(response)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class InstantServer:
    """An OpenAI-compatible server that answers at once with fixed text: for measuring synth's
    own overhead in benchmarks, never for testing behaviour."""

    def __init__(self, text: str = "ok", port: int | None = None):
        self.text, self.port = text, port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import json

        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(x.split(b":", 1)[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")),
                    0,
                )
                if length:
                    await reader.readexactly(length)
                chat = b"/chat/completions" in head.split(b"\r\n", 1)[0]
                choice = {"index": 0, "finish_reason": "stop"}
                choice.update({"message": {"role": "assistant", "content": self.text}} if chat else {"text": self.text})
                payload = json.dumps(
                    {"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(payload)).encode()
                    + b"\r\n\r\n"
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def __enter__(self) -> InstantServer:
        self._thread.start()

        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
