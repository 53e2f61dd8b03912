"""Test helpers that ship with synth, for its own tests and for users' tests of their pipelines.

`FaultProxy` sits between a backend and a real OpenAI-compatible server on 127.0.0.1 and breaks
things on purpose: answer the next N requests with 429 or 500 (or any status and message), or 200
with no choices, cut the next N connections without an answer, delay every answer, or stop
listening altogether (a dead server) and come back later. It counts what it saw, including the
most requests in flight at once, which is how a test checks a concurrency limit. Its event loop
runs in a thread, so plain (sync) tests can use it:

    with FaultProxy("127.0.0.1", 8080) as proxy:
        proxy.fail_next(2, status=429)
        ...  # point the backend at proxy.url

`InstantServer` answers /v1/completions and /v1/chat/completions at once with fixed text: it
measures synth's own overhead in benchmarks, and must never stand in for a real model in tests
of behaviour.

Both speak just enough HTTP/1.1 for JSON APIs (bodies by Content-Length, no chunked requests).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["FaultProxy", "GpuLikeServer", "InstantServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, (await reader.readexactly(length) if length else b"")


def _response(status: int, payload: bytes, extra: str = "", close: bool = True) -> bytes:
    head = f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\nContent-Type: application/json\r\n{extra}"
    head += f"Content-Length: {len(payload)}\r\n" + ("Connection: close\r\n" if close else "")
    return (head + "\r\n").encode() + payload


class _LoopThread:
    """An asyncio loop in a daemon thread, and a listening server on it that can stop and restart."""

    def __init__(self, port: int | None):
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def start_listening(self) -> None:
        async def start():
            if self._server is None:
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        self._call(start())

    def stop_listening(self) -> None:
        async def stop():
            if self._server is not None:
                self._server.close()  # no wait_closed: from 3.12 it waits for open connections
                self._server = None

        self._call(stop())

    def __enter__(self):
        self._thread.start()
        self.start_listening()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_listening()

        async def cancel_handlers():  # connections still being answered (a delay), ended cleanly
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        self._call(cancel_handlers())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


@dataclass
class _Faults:
    status: int = 500
    message: str = "injected by FaultProxy"
    fail: int = 0  # answer this many more requests with `status`
    empty: int = 0  # answer this many more requests 200 with no choices (or empty text)
    empty_text: bool = False
    null_text: bool = False
    drop: int = 0  # cut this many more connections after reading the request
    retry_after: float | None = None
    delay: float = 0.0  # seconds before every answer (injected ones too)
    strip_usage: bool = False  # take `usage` out of forwarded answers: a server that reports none


class FaultProxy(_LoopThread):
    """A proxy to a real server at upstream_host:upstream_port that injects faults on demand."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None):
        super().__init__(port)
        self.upstream = (upstream_host, upstream_port)
        self.faults = _Faults()
        self.requests = 0  # every request received, faulty or not
        self.forwarded = 0
        self.injected = 0
        self.dropped = 0
        self.in_flight = 0
        self.max_in_flight = 0
        # What the server reported and was asked, counted here: the usage of every answer passed
        # through (prompt_tokens, completion_tokens, answers) and how often each body was sent.
        self.usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "answers": 0}
        self.bodies: collections.Counter[str] = collections.Counter()
        self._open: set[asyncio.StreamWriter] = set()

    # ---- control, from any thread ----
    def fail_next(
        self, count: int, status: int = 500, retry_after: float | None = None, message: str = "injected by FaultProxy"
    ) -> None:
        """Answer the next `count` requests with `status` and an OpenAI-style error `message` (and
        a Retry-After header if given)."""
        self.faults.status, self.faults.fail, self.faults.retry_after = status, count, retry_after
        self.faults.message = message

    def empty_next(self, count: int, empty_text: bool = False, null_text: bool = False) -> None:
        """Answer the next `count` requests 200 OK with `choices: []` (or, with empty_text, one
        choice whose text is empty; with null_text, one whose text is null): a broken server's answers."""
        self.faults.empty, self.faults.empty_text, self.faults.null_text = count, empty_text, null_text

    def drop_next(self, count: int) -> None:
        """Close the next `count` connections after reading the request, without an answer."""
        self.faults.drop = count

    def set_delay(self, seconds: float) -> None:
        self.faults.delay = seconds

    def strip_usage(self, strip: bool = True) -> None:
        """Forward answers without their `usage` (still counted in `self.usage`): a server that
        reports none, in front of one that does."""
        self.faults.strip_usage = strip

    def stop_listening(self, drop_open: bool = True) -> None:
        """Refuse new connections; with drop_open, also cut the ones in progress, as a crash would."""
        super().stop_listening()
        if drop_open:

            async def cut():
                for writer in list(self._open):
                    writer.transport.abort()

            self._call(cut())

    # ---- the proxy ----
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head, body = await _read_request(reader)
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self._answer(head, body, writer)
            finally:
                self.in_flight -= 1
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        faults = self.faults
        if faults.delay:
            await asyncio.sleep(faults.delay)
            if writer.transport.is_closing():  # cut by stop_listening meanwhile: a dead server
                return
        if faults.drop > 0:
            faults.drop -= 1
            self.dropped += 1
            writer.transport.abort()
            return
        if faults.fail > 0:
            faults.fail -= 1
            self.injected += 1
            extra = f"Retry-After: {faults.retry_after:g}\r\n" if faults.retry_after is not None else ""
            body = json.dumps({"error": {"message": faults.message}}).encode()
            writer.write(_response(faults.status, body, extra))
            await writer.drain()
            return
        if faults.empty > 0:
            faults.empty -= 1
            self.injected += 1
            text = None if faults.null_text else ""
            choices = [{"index": 0, "text": text, "message": {"role": "assistant", "content": text}}]
            shown = faults.empty_text or faults.null_text
            body = {"object": "text_completion", "choices": choices if shown else [], "usage": {}}
            writer.write(_response(200, json.dumps(body).encode()))
            await writer.drain()
            return
        self.forwarded += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            # One request per connection both ways keeps the proxy free of HTTP framing.
            lines = [ln for ln in head.split(b"\r\n") if ln and not ln.lower().startswith(b"connection:")]
            up_writer.write(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
            await up_writer.drain()
            response = await up_reader.read()
        finally:
            up_writer.close()
        self._count(body, response)
        if faults.strip_usage:
            response = _without_usage(response)
        writer.write(response)
        await writer.drain()

    def _count(self, body: bytes, response: bytes) -> None:
        """Add a forwarded answer's `usage` to the totals, and its request body to the sent ones."""
        self.bodies[hashlib.sha256(body).hexdigest()] += 1
        _, answer = _answer_json(response)
        if not isinstance(answer, dict) or "choices" not in answer:  # not a completion (a probe, /tokenize)
            return
        usage = answer.get("usage") or {}
        self.usage["answers"] += 1
        for key in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(key), int):
                self.usage[key] += usage[key]


def _answer_json(response: bytes) -> tuple[bytes, object]:
    """A raw HTTP answer's head and its body as JSON (None when it is not JSON)."""
    head, _, payload = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _unchunk(payload)
    try:
        return head, json.loads(payload)
    except ValueError:
        return head, None


def _without_usage(response: bytes) -> bytes:
    """A forwarded JSON answer with its `usage` taken out (other answers as they were)."""
    head, data = _answer_json(response)
    if not isinstance(data, dict) or "usage" not in data:
        return response
    data.pop("usage")
    return _response(int(head.split(b" ", 2)[1]), json.dumps(data).encode())


def _unchunk(payload: bytes) -> bytes:
    out, rest = b"", payload
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        length = int(size.split(b";")[0] or b"0", 16)
        if not length:
            break
        out, rest = out + rest[:length], rest[length + 2 :]
    return out


class InstantServer(_LoopThread):
    """An OpenAI-compatible server that answers at once with fixed text (keep-alive, n choices).
    For measuring synth's own overhead in benchmarks, never for testing behaviour."""

    def __init__(self, text: str = "ok", port: int | None = None):
        super().__init__(port)
        self.text = text
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await _read_request(reader)
                self.requests += 1
                path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                request = json.loads(body or b"{}")
                writer.write(_response(*self._reply(path, request), close=False))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _reply(self, path: str, request: dict) -> tuple[int, bytes]:
        if path.endswith("/completions"):
            chat = path.endswith("/chat/completions")
            n = int(request.get("n") or 1)
            choices = [
                {"index": i, "finish_reason": "stop"}
                | ({"message": {"role": "assistant", "content": self.text}} if chat else {"text": self.text})
                for i in range(n)
            ]
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n}
            return 200, json.dumps({"object": "text_completion", "choices": choices, "usage": usage}).encode()
        if path.endswith("/models"):
            return 200, json.dumps({"object": "list", "data": [{"id": "instant", "object": "model"}]}).encode()
        return 404, json.dumps({"error": {"message": f"InstantServer has no route {path}"}}).encode()


class GpuLikeServer(InstantServer):
    """An OpenAI-compatible stand-in shaped like vLLM on a GPU, for benchmarks of how full synth
    keeps a server: at most `capacity` sequences run at once (more requests queue, as in vLLM's
    scheduler), each takes `latency` seconds plus `per_token` seconds per generated token, and the
    number of tokens varies by prompt (a hash of the prompt, between 1 and max_tokens).

    GET /stats reports the requests served and the sequences in flight: the peak and the
    time-average over the busy period (first request to last answer), the figure to compare
    between clients. Like InstantServer it measures orchestration, never behaviour."""

    def __init__(self, capacity: int = 256, latency: float = 0.05, per_token: float = 0.002, port: int | None = None):
        super().__init__(text="", port=port)
        self.capacity, self.latency, self.per_token = capacity, latency, per_token
        self._slots: asyncio.Semaphore | None = None
        self.in_flight = self.peak = 0
        self._area = 0.0
        self._first: float | None = None
        self._last = 0.0

    def _account(self, delta: int) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        else:
            self._area += self.in_flight * (now - self._last)
        self._last = now
        self.in_flight += delta
        self.peak = max(self.peak, self.in_flight)

    def stats(self) -> dict:
        busy = (self._last - self._first) if self._first is not None else 0.0
        mean = self._area / busy if busy > 0 else 0.0
        return {"requests": self.requests, "peak_in_flight": self.peak, "mean_in_flight": round(mean, 1)}

    @staticmethod
    def tokens_for(request: dict) -> int:
        """Generated tokens for a request: fixed per prompt, so every client gets the same work."""
        text = json.dumps(request.get("messages") or request.get("prompt") or "", sort_keys=True)
        limit = max(int(request.get("max_tokens") or 16), 1)
        return 1 + int(hashlib.blake2b(text.encode(), digest_size=4).hexdigest(), 16) % limit

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        try:
            while True:
                head, body = await _read_request(reader)
                path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                if path.endswith("/stats"):
                    writer.write(_response(200, json.dumps(self.stats()).encode(), close=False))
                    await writer.drain()
                    continue
                self.requests += 1
                request = json.loads(body or b"{}")
                async with self._slots:
                    self._account(+1)
                    tokens = self.tokens_for(request) if path.endswith("completions") else 0
                    try:
                        await asyncio.sleep(self.latency + self.per_token * tokens)
                    finally:
                        self._account(-1)
                status, payload = self._reply(path, request, tokens)
                writer.write(_response(status, payload, close=False))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _reply(self, path: str, request: dict, tokens: int = 1) -> tuple[int, bytes]:
        if not path.endswith("/completions"):
            return super()._reply(path, request)
        n = int(request.get("n") or 1)
        text = " ".join(["tok"] * tokens)
        chat = path.endswith("/chat/completions")
        choices = [
            {"index": i, "finish_reason": "length" if tokens >= int(request.get("max_tokens") or 16) else "stop"}
            | ({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            for i in range(n)
        ]
        usage = {"prompt_tokens": 8, "completion_tokens": tokens * n, "total_tokens": 8 + tokens * n}
        return 200, json.dumps({"object": "text_completion", "choices": choices, "usage": usage}).encode()


def _serve(argv: list[str] | None = None) -> None:
    """`python -m synth.testing --port P [--gpu-like --capacity 256 ...]`: an InstantServer (or a
    GpuLikeServer) in its own process until Ctrl-C or SIGTERM, so that a benchmark's client does
    not share a core (and the GIL) with it."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m synth.testing", description=_serve.__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--text", default="ok")
    parser.add_argument("--gpu-like", action="store_true", help="a GpuLikeServer instead of an InstantServer")
    parser.add_argument("--capacity", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--per-token", type=float, default=0.002)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = (
        GpuLikeServer(args.capacity, args.latency, args.per_token, port=args.port)
        if args.gpu_like
        else InstantServer(text=args.text, port=args.port)
    )
    with server:
        print(f"{type(server).__name__} on {server.url}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _serve()
