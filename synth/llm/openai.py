"""Any OpenAI-compatible server: `vllm serve`, `python -m llama_cpp.server`, OpenAI itself.

Requests fan out concurrently (at most `max_concurrency` in flight per backend, whatever the
number of calls) over one or more base URLs, each to the URL with the fewest requests in flight
among those not cooling down after a failure. Connection errors, timeouts, 408/409/429 and 5xx are
retried with exponential backoff and full jitter (honouring Retry-After) for `retry_seconds` (five
minutes by default: a server restart does not stop a run); when that runs out the run stops with a
BackendError, and running the same command again resumes it from the cache. A 200 that holds no
answer (`choices: []`, `text: null`) is retried the same way, and then fails its row only (the
server does answer). Any other 4xx rejects that one request (a prompt too long, say): the row is
dropped with the server's message.

The API key comes only from the environment variable named by `api_key_env`; it lives in the HTTP
client's headers and is never logged or put in an error.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BackendError, MissingDependency
from ..inputs import key_refusal
from ..usage import count_retry
from .base import (
    CompleteResult,
    Generation,
    Request,
    RequestFailed,
    Scored,
    ScoreRequest,
    ScoreResult,
    request_key,
    sample_seed,
)
from .client import count_event
from .ratelimit import RateLimiter, estimated_tokens
from .specs import OpenAISpec
from .templates import ChatTemplate

RETRY_STATUS = {408, 409, 429}
FATAL_STATUS = frozenset({401, 403, 404})  # a wrong key, model or URL: no row can succeed
BACKOFF_BASE, BACKOFF_CAP, RETRY_AFTER_CAP = 0.5, 30.0, 60.0
TELL_EVERY = 60.0  # seconds between two "waiting for server" lines


@dataclass
class _Endpoint:
    url: str  # ends in /v1 (or whatever the user gave)
    in_flight: int = 0
    failures: int = 0  # consecutive; a success resets it
    cooling_until: float = 0.0

    proxy: str | None = None  # from HTTP(S)_PROXY / NO_PROXY, looked up once

    @property
    def root(self) -> str:
        """Where vLLM's non-OpenAI routes live (/version, /tokenize)."""
        return self.url.removesuffix("/v1")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Malformed(_Retryable):
    """A 200 that is no answer (no choices, a choice without text): a transient fault, retried like
    a 5xx; when the retries run out, the row fails with `reason` (the server does answer)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def no_choices(data: Any) -> tuple[str, str] | None:
    """(reason, message) when a 200 holds no choices, else None."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if isinstance(choices, list) and choices:
        return None
    return "no_choices", f"the server answered without choices: {json.dumps(data)[:300]}"


def malformed_generations(data: Any, chat: bool) -> tuple[str, str] | None:
    """(reason, message) when a 200 from a generation route holds no choices, or a choice without
    text (`text: null`), else None."""
    missing = no_choices(data)
    if missing is not None:
        return missing
    for choice in data["choices"]:
        if not isinstance(choice, dict):
            text = None
        elif chat:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            return "no_text", f"the server answered a choice without text: {json.dumps(data)[:300]}"
    return None


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), never for
    loopback. Looked up once per URL: aiohttp's own per-request lookup costs two thread hops."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("localhost", "::1") or host.startswith("127.") or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _server_message(data: Any, text: str) -> str:
    """The server's own words: OpenAI, llama.cpp and vLLM nest them differently."""
    if isinstance(data, dict):
        error = data.get("error")
        for candidate in (
            error.get("message") if isinstance(error, dict) else error,
            data.get("message"),
            data.get("detail"),
        ):
            if candidate:
                return str(candidate)[:500]
    return text[:500]


_NOT_JSON = object()
_JSON_HEADERS = {"Content-Type": "application/json"}

try:  # msgspec encodes and decodes JSON several times faster than json: it shows at 3,000 requests/s
    import msgspec

    _encode_json = msgspec.json.encode

    def _decode_json(raw: bytes) -> Any:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return _NOT_JSON

except ImportError:  # pragma: no cover - msgspec comes with synth[openai]

    def _encode_json(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()

    def _decode_json(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            return _NOT_JSON


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP) if value else None
    except ValueError:  # the HTTP-date form: our own backoff will do
        return None


def prompt_logprobs_continuation(prompt_ids: list[int], entries: list) -> list[float]:
    """vLLM's prompt_logprobs=0 gives each position the token that is there (its id as the key),
    the first position none. The continuation starts where those ids stop matching the prompt's
    own, so a token that merges across the boundary is scored, as in the local backend."""
    full_ids = [prompt_ids[0] if prompt_ids else None] + [int(next(iter(e))) if e else None for e in entries[1:]]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return [float(next(iter(e.values()))["logprob"]) for e in entries[max(start, 1) :] if e]


def echo_continuation(logprobs: dict, prompt: str, text: str) -> list[float]:
    """A token of an echoed prompt belongs to the continuation if it ends past the prompt (one
    straddling the boundary counts) and starts before the token generated after the text."""
    offsets, values = logprobs.get("text_offset") or [], logprobs.get("token_logprobs") or []
    ends = [*offsets[1:], len(text) + 1]
    return [
        float(v)
        for start, end, v in zip(offsets, ends, values, strict=False)
        if end > len(prompt) and start < len(text) and v is not None
    ]


MAX_STOPS = 4  # OpenAI's API takes at most 4 stop sequences, and vLLM's server refuses more


def server_stops(stops: Sequence[str]) -> list[str]:
    """The stops the server gets: all of them, or the 4 likeliest to end a text early (the
    shortest: a newline before a turn marker). The rest are applied to the answer here."""
    stops = list(dict.fromkeys(stops))
    return stops if len(stops) <= MAX_STOPS else sorted(stops, key=len)[:MAX_STOPS]


def apply_stops(generation: Generation, stops: Sequence[str]) -> None:
    """Cut the text at the first stop, as the server would have: the tokens before a stop are the
    same whichever side looks for it, so the text is too (only the token count is larger)."""
    cut = min((i for i in (generation.text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        generation.text = generation.text[:cut]
        generation.finish_reason = "stop"


@functools.lru_cache(maxsize=64)
def _gbnf(schema_json: str) -> str | None:
    """llama.cpp's grammar for a JSON schema, where llama-cpp-python is installed to convert it."""
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        return json_schema_to_gbnf(schema_json)
    except Exception:  # not installed, or a schema it cannot convert: the server gets the schema itself
        return None


# How a JSON schema travels, by server. vLLM (probed): chat takes OpenAI's `response_format`, raw
# completions vLLM's `structured_outputs: {"json": ...}` (>= 0.12; it was `guided_json` before).
# Other servers get a ladder, climbed when the server refuses the field (an HTTP 4xx naming it):
# chat first tries `{"type": "json_object", "schema": ...}`, which both llama.cpp servers read
# (llama-cpp-python's answers OpenAI's own form with an HTTP 500, which looks like a server fault),
# then OpenAI's form; completions try llama.cpp's `grammar`. The last rung sends no schema: the
# stage parses the text either way.
SCHEMA_LADDERS = {"vllm": ("vllm",), "chat": ("json_object", "openai", "none"), "complete": ("grammar", "none")}


def schema_fields(schema: dict, chat: bool, dialect: str) -> dict[str, Any]:
    """The request fields that carry `schema` in one server dialect (see SCHEMA_LADDERS)."""
    if dialect == "openai" or (dialect == "vllm" and chat):
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}
    if dialect == "vllm":
        return {"structured_outputs": {"json": schema}}
    if dialect == "json_object":
        return {"response_format": {"type": "json_object", "schema": schema}}
    if dialect == "grammar":
        grammar = _gbnf(json.dumps(schema))
        return {"grammar": grammar} if grammar else {"json_schema": schema}  # llama-server reads json_schema
    return {}


class Slots:
    """A FIFO semaphore. asyncio.Semaphore (3.11) scans all its waiters on every acquire; with
    thousands of requests queued that scan costs more than the request itself."""

    def __init__(self, value: int):
        self._free = value
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot straight to this waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class OpenAIBackend:
    structured_output = True  # Request.json_schema travels in the server's dialect (schema_fields)

    def __init__(self, spec: OpenAISpec, *, backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP):
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise MissingDependency("aiohttp", "openai", "The openai backend") from None
        self.spec = spec
        refused = key_refusal(spec)
        if refused:
            raise BackendError(refused)
        self.model_id = f"openai:{spec.model}"  # no URL: moving a server must not invalidate a cache
        self.endpoints = [_Endpoint(u.rstrip("/"), proxy=proxy_for(u)) for u in spec.urls()]
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        # The API key is read when the session is made, into its headers: never logged or stored.
        self._client = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._slots = Slots(spec.max_concurrency)
        self._vllm: bool | None = None  # whether to score with prompt_logprobs; probed once
        self._counter: str | None = None  # where to count tokens a server does not report; probed once
        self._counter_bos = 0
        self._template: ChatTemplate | None = None
        self._bos: str | None = None  # vLLM's BOS text when it adds one to raw prompts; probed once
        self._probe = asyncio.Lock()
        self._schema_rung = {"chat": 0, "complete": 0}  # where each kind stands on its SCHEMA_LADDERS
        # Told when requests start failing (a line for the user) and when answers come back (None):
        # the runner shows it, so a dead server is never minutes of silence.
        self.on_trouble: Callable[[str | None], None] | None = None
        self._troubled = False  # requests fail and no answer came since
        self._told_at: float | None = None  # when the last outage was told (a flapping server: once a minute)
        self._told_open = False  # an outage was told and its end not yet
        self._limiter = (
            RateLimiter(spec.requests_per_minute, spec.tokens_per_minute)
            if spec.requests_per_minute or spec.tokens_per_minute
            else None
        )
        self._jobs = None  # batch mode's BatchJobs (synth/llm/batchapi.py), made by use_run

    def use_run(self, root, name: str, *, files=None, results=None, note=None) -> None:
        """The run this backend serves: batch mode keeps its jobs' journal there. With `files` or
        `results` (`synth run --batch-files/--batch-results`), generations go through batch files."""
        if self.spec.batch or files is not None or results is not None:
            from .batchapi import BatchJobs

            self._jobs = BatchJobs(self, root, name, files=files or results, results=results, note=note)

    async def _post(self, path: str, body: dict, check, key: str) -> Any:
        """A generation's response body: one HTTP request, or a line of a batch job."""
        if self._jobs is None and self.spec.batch:
            raise BackendError(
                f"{self.model_id}: batch mode runs beside the run directory's journal, in the driver: run it with "
                "synth run (or run_pipeline) and the local executor"
            )
        if self._jobs is not None:
            return await self._jobs.submit(key, path, body, check)
        return await self._send(path, body, check=check)

    def _failure(self, exc: BaseException) -> str:
        """What went wrong with one attempt, in words."""
        import aiohttp

        if isinstance(exc, asyncio.TimeoutError):
            return f"no answer within the backend's timeout ({self.spec.timeout:g} s)"
        if isinstance(exc, aiohttp.ClientConnectorError):
            error = exc.os_error
            return (
                f"Cannot connect to host {exc.host}:{exc.port} ({os.strerror(error.errno) if error.errno else error})"
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "the server closed the connection without an answer"
        if isinstance(exc, _Retryable):
            return str(exc)
        return f"{type(exc).__name__}: {exc}".rstrip(": ")

    def _patience(self) -> str:
        retries = self.spec.max_retries
        most = f", at most {retries} retries" if retries is not None else ""
        return (
            f"synth keeps retrying for up to {self.spec.retry_seconds:g} s (retry_seconds{most}), then stops; "
            "the same command resumes it"
        )

    def _tell(self, trouble: str | None) -> None:
        """Say that the server stopped answering (a line), or answers again (None): an outage at
        once, then at most one a minute (a server that fails now and then is not a new story)."""
        if trouble is not None:
            now = time.monotonic()
            if self._told_at is not None and now - self._told_at < TELL_EVERY:
                return
            self._told_at, self._told_open = now, True
        elif not self._told_open:
            return
        else:
            self._told_open = False
        if self.on_trouble is not None:
            self.on_trouble(trouble)

    def _pick(self) -> _Endpoint:
        now = time.monotonic()
        ready = [e for e in self.endpoints if e.cooling_until <= now] or [
            min(self.endpoints, key=lambda e: e.cooling_until)
        ]
        return min(ready, key=lambda e: e.in_flight)

    def _session(self):
        """The HTTP session of the running event loop (aiohttp sessions belong to one loop)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.closed:
            variable = self.spec.api_key_env
            key = (os.environ.get(variable) if variable else None) or "EMPTY"  # local servers want a header
            self._client = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {key}", **_JSON_HEADERS},
                timeout=aiohttp.ClientTimeout(total=self.spec.timeout, connect=min(self.spec.timeout, 10.0)),
                connector=aiohttp.TCPConnector(limit=self.spec.max_concurrency, limit_per_host=0),
                json_serialize=json.dumps,
            )
            self._client_loop = loop
        return self._client

    async def _once(
        self, url: str, body: dict | None, fatal: Collection[int], proxy: str | None = None, seen: dict | None = None
    ) -> Any:
        """One attempt: the JSON answer, or RequestFailed for a 4xx that only this request gets.
        `seen` gets the answer's headers (for the rate limiter)."""
        if body is None:
            request = self._session().get(url, proxy=proxy)
        else:
            request = self._session().post(url, data=_encode_json(body), proxy=proxy)
        async with request as response:
            status, retry_after = response.status, response.headers.get("retry-after")
            raw = await response.read()
            if seen is not None:
                seen["headers"] = response.headers
        data = _decode_json(raw)
        if seen is not None:
            usage = data.get("usage") if isinstance(data, dict) else None
            seen["used"] = usage.get("total_tokens") if isinstance(usage, dict) else None
            if status == 429:  # the limits were kept, and still: they are set above the provider's
                count_event("rate_limited")
        text = raw.decode("utf-8", "replace") if data is _NOT_JSON or status >= 300 else ""
        if status in RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}: {_server_message(data, text)}", _retry_after(retry_after))
        if status in fatal:  # every request would get it: stop rather than drop every row
            raise BackendError(
                f"{url} answered HTTP {status}: {_server_message(data, text)}; check the model name "
                f"({self.spec.model}), the base_url (it usually ends in /v1) and the API key in "
                f"${self.spec.api_key_env}"
            )
        if status >= 300:
            return RequestFailed("rejected", f"HTTP {status}: {_server_message(data, text)}")
        if data is _NOT_JSON:
            raise _Retryable(f"HTTP {status} with a body that is not JSON: {text[:200]!r}")
        return data

    async def _send(
        self,
        path: str,
        body: dict | None = None,
        *,
        root: bool = False,
        fatal: Collection[int] = FATAL_STATUS,
        check: Callable[[Any], tuple[str, str] | None] | None = None,
    ) -> Any:
        """POST (GET without a body) to the least busy URL, retrying what may pass: with `check`,
        also a 200 that it finds malformed, which fails the request once the retries run out."""
        import aiohttp

        last, malformed = "", None
        attempt, deadline = 0, None
        limited = self._limiter is not None and body is not None and path in ("/completions", "/chat/completions")
        while True:
            retry_after: float | None = None
            seen: dict | None = None
            if limited:  # wait for the provider's limits before taking a slot
                assert self._limiter is not None and body is not None
                seen = {"estimate": self._limiter.estimate(body)}
                await self._limiter.acquire(seen["estimate"])
            async with self._slots:  # pick once a slot is free, so the choice is current
                endpoint = self._pick()
                url = (endpoint.root if root else endpoint.url) + path
                endpoint.in_flight += 1
                try:
                    answer = await self._once(url, body, fatal, endpoint.proxy, seen)
                    problem = None if check is None or isinstance(answer, RequestFailed) else check(answer)
                    if problem is not None:
                        raise _Malformed(*problem)
                    endpoint.failures = 0
                    if self._troubled:
                        self._troubled = False
                        self._tell(None)
                    return answer
                except (aiohttp.ClientError, asyncio.TimeoutError, _Retryable) as exc:
                    malformed = exc if isinstance(exc, _Malformed) else None
                    last = f"{url}: {self._failure(exc)}"
                    if not self._troubled:  # the first failure of an outage is told at once
                        self._troubled = True
                        self._tell(f"{last}; {self._patience()}")
                    retry_after = exc.retry_after if isinstance(exc, _Retryable) else None
                    endpoint.failures += 1
                    # The URL cools down for longer the more it fails, so other URLs take the
                    # traffic meanwhile; this request waits its own jittered time, then retries.
                    cool = min(self.backoff_cap, self.backoff_base * 2 ** min(endpoint.failures - 1, 16))
                    endpoint.cooling_until = time.monotonic() + max(cool, retry_after or 0.0)
                finally:
                    endpoint.in_flight -= 1
                    if seen is not None and self._limiter is not None:
                        self._limiter.settle(seen["estimate"], seen.get("used"), seen.get("headers"))
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + self.spec.retry_seconds
            attempt += 1
            if now >= deadline or (self.spec.max_retries is not None and attempt > self.spec.max_retries):
                break
            count_retry()  # the run's usage counts retries (a provider may bill each attempt)
            delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempt - 1, 16)))
            await asyncio.sleep(min(max(delay, retry_after or 0.0), max(deadline - now, 0.0)))
        if malformed is not None:  # the server answers, only not this request: the row fails
            return RequestFailed(malformed.reason, f"{malformed} (after {attempt} attempts)")
        raise BackendError(
            f"no answer from {', '.join(e.url for e in self.endpoints)} after {attempt} attempts in "
            f"{self.spec.retry_seconds:g} s (last error: {last}); check that the server is up and reachable (raise "
            "retry_seconds on the backend to wait longer), then run the same command again to resume: finished "
            "requests are cached"
        )

    async def _fan_out(self, items: Sequence, one) -> AsyncIterator:
        """Yield (index, result) in the order requests finish, so each is cached at once. (A done
        callback feeding a queue: asyncio.as_completed costs a coroutine and a future per item.)"""
        finished: asyncio.Queue = asyncio.Queue()
        index: dict[asyncio.Task, int] = {}
        for i, item in enumerate(items):
            task = asyncio.ensure_future(one(item))
            index[task] = i
            task.add_done_callback(finished.put_nowait)
        try:
            for _ in range(len(index)):
                task = await finished.get()
                yield index[task], task.result()
        finally:  # an error or an early exit must not leave requests running behind the caller
            pending = [t for t in index if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for task in index:  # failures after the first (the same timeout, say) were seen: not logged
                if not task.cancelled():
                    task.exception()

    def _body(self, request: Request, seed: int, n: int) -> dict:
        s = request.sampling
        body = {
            "model": self.spec.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "n": n,
            "seed": seed,
        }
        if s.stop:
            body["stop"] = server_stops(s.stop)
        if s.repetition_penalty != 1.0:  # not OpenAI's API: vLLM's extension, sent only when used
            body["repetition_penalty"] = s.repetition_penalty
        if s.top_k:  # likewise (vLLM and llama.cpp's server take it)
            body["top_k"] = s.top_k
        return body

    @staticmethod
    def _generations(data: dict, chat: bool) -> list[Generation]:
        """Usage is per response, not per choice: its tokens go on the response's first generation."""
        data = data if isinstance(data, dict) else {}
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
        out = []
        for i, choice in enumerate(
            sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)
        ):
            message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            text = message.get("content") if chat else choice.get("text")
            tokens = [(usage.get(k) or 0) if i == 0 else 0 for k in ("completion_tokens", "prompt_tokens")]
            tokens = [t if isinstance(t, int) else 0 for t in tokens]
            out.append(
                Generation(text if isinstance(text, str) else "", str(choice.get("finish_reason") or "stop"), *tokens)
            )
        if out and not isinstance(usage.get("completion_tokens"), int):  # a server that reports no usage
            for g in out:  # about four characters a token until _count_unreported counts them
                g.completion_tokens, g.usage = estimated_tokens(g.text), "counted"
        return out

    async def _structured(self, path: str, request: Request, payload: dict, chat: bool) -> CompleteResult:
        """Generate with the request's JSON schema in the server's dialect, climbing down the
        ladder when the server refuses the field (so a plain OpenAI-compatible server still answers)."""
        assert request.json_schema is not None
        kind = "chat" if chat else "complete"
        while True:
            vllm = await self._is_vllm()
            ladder = SCHEMA_LADDERS["vllm" if vllm else kind]
            rung = 0 if vllm else self._schema_rung[kind]
            fields = schema_fields(request.json_schema, chat, ladder[rung])
            result = await self._generate(path, request, {**payload, **fields}, chat)
            refused = (
                isinstance(result, RequestFailed)
                and result.reason == "rejected"
                and any(name in result.detail for name in fields)
            )
            if not refused or rung + 1 >= len(ladder):
                return result
            if self._schema_rung[kind] == rung:  # concurrent refusals climb one rung, not several
                self._schema_rung[kind] = rung + 1

    async def _generate(self, path: str, request: Request, payload: dict, chat: bool) -> CompleteResult:
        n = request.sampling.n
        check = functools.partial(malformed_generations, chat=chat)
        key = request_key("chat" if chat else "complete", self.model_id, request.payload())
        data = await self._post(path, {**self._body(request, request.seed, n), **payload}, check, key)
        if isinstance(data, RequestFailed):
            return data
        generations = self._generations(data, chat)
        if len(generations) < n:
            result = await self._missing_samples(path, request, payload, chat, generations, key)
        else:
            result = generations[:n]
        if not isinstance(result, RequestFailed) and result and result[0].usage == "counted":
            await self._count_unreported(payload, result, chat)
        if not isinstance(result, RequestFailed) and len(request.sampling.stop) > MAX_STOPS:
            for g in result:
                apply_stops(g, request.sampling.stop)
        if not isinstance(result, RequestFailed) and self.spec.batch and self._jobs is not None and not self._offline:
            for g in result:
                g.batch = True  # for the cost: the provider's batch price (files run elsewhere are not its)
        return result

    async def _missing_samples(
        self, path: str, request: Request, payload: dict, chat: bool, generations: list[Generation], key: str
    ) -> CompleteResult:
        n = request.sampling.n
        # Some servers (llama.cpp's) ignore n and answer once: draw the missing samples one by
        # one, seeded the way the local backend seeds them. Their prompt tokens are not counted
        # again, as if the server had drawn them all from one prompt.
        extra = await asyncio.gather(
            *(
                self._post(
                    path,
                    {**self._body(request, sample_seed(request.seed, i), 1), **payload},
                    functools.partial(malformed_generations, chat=chat),
                    f"{key}#{i}",  # the sample's own line in a batch job
                )
                for i in range(len(generations), n)
            )
        )
        for data in extra:
            if isinstance(data, RequestFailed):
                return data
            more = self._generations(data, chat)[:1]
            generations.append(more[0])  # its prompt was sent (and billed) again: its tokens count
        return generations

    def chat_template(self) -> ChatTemplate:
        """The served model's template as the pipeline gives it (`chat_template:`): servers do not
        publish theirs, and Magpie renders raw prompts client-side."""
        if self._template is None:
            if not self.spec.chat_template:
                raise BackendError(
                    f"{self.model_id}: set chat_template on this backend (the model's tokenizer_config.json or "
                    "folder) so synth can render raw prompts from it, or give the magpie stage a family:"
                )
            self._template = ChatTemplate.resolve(self.spec.chat_template, None, self.model_id)
        return self._template

    async def _complete_one(self, r: Request) -> CompleteResult:
        prompt = r.prompt or ""
        payload: dict[str, Any] = {"prompt": prompt}
        # BOS texts are special-token strings ("<s>", "<bos>", "<|begin_of_text|>"): only a prompt
        # that starts with "<" can carry one, so ordinary prompts never wait for the probe.
        bos = await self._bos_text() if prompt.startswith("<") else None
        if bos and prompt.startswith(bos):
            payload["add_special_tokens"] = False  # the prompt has its BOS: vLLM would add a second
        if r.json_schema is not None:
            return await self._structured("/completions", r, payload, False)
        return await self._generate("/completions", r, payload, False)

    def complete(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        return self._fan_out(requests, self._complete_one)

    def chat(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        def one(r: Request):
            messages = [{"role": role, "content": content} for role, content in r.messages or ()]
            if r.json_schema is not None:
                return self._structured("/chat/completions", r, {"messages": messages}, True)
            return self._generate("/chat/completions", r, {"messages": messages}, True)

        return self._fan_out(requests, one)

    @property
    def _offline(self) -> bool:
        """Generations go into batch files run elsewhere (--batch-files): no server to ask."""
        return self._jobs is not None and self._jobs.files is not None

    async def _is_vllm(self) -> bool:
        """vLLM answers GET /version; its echo offsets count raw token strings, so it is scored
        with prompt_logprobs instead. Other servers (llama.cpp: 404) get the echo route. Batch
        files are written in vLLM's dialect (`vllm run-batch`; OpenAI's chat form is the same)."""
        if self._offline:
            return True
        async with self._probe:
            if self._vllm is None:
                answer = await self._send("/version", root=True, fatal=())
                self._vllm = isinstance(answer, dict) and "version" in answer
        return self._vllm

    async def _bos_text(self) -> str | None:
        """The BOS token's text, where the server is vLLM and adds BOS to raw prompts; else None.

        Magpie's pre-query templates start with the BOS text (`<|begin_of_text|>`, `<bos>`); sent
        as they are, vLLM tokenizes them with a second BOS in front. Knowing the text, such prompts
        go out with `add_special_tokens: false`. Probed once per backend (two small requests)."""
        if self._offline or not await self._is_vllm():
            return None
        async with self._probe:
            if self._bos is None:
                self._bos = ""
                body = {"model": self.spec.model, "prompt": "", "add_special_tokens": True}
                tokens = await self._send("/tokenize", body, root=True, fatal=())
                ids = tokens.get("tokens") if isinstance(tokens, dict) else None
                if ids:
                    text = await self._send(
                        "/detokenize", {"model": self.spec.model, "tokens": ids[:1]}, root=True, fatal=()
                    )
                    self._bos = (text.get("prompt") if isinstance(text, dict) else None) or ""
        return self._bos or None

    # ---- usage a server does not report ----
    async def _token_counter(self) -> str:
        """Where to count the tokens of answers that came without `usage`: "vllm" (/tokenize, chat
        templates included), "llama.cpp" (llama_cpp.server's /extras/tokenize) or "estimate"."""
        async with self._probe:
            if self._counter is None:
                self._counter = "estimate"
                probes = [("vllm", "/tokenize", {"model": self.spec.model, "prompt": "a"})]
                probes.append(("llama.cpp", "/extras/tokenize", {"input": ""}))
                for name, path, body in probes:
                    answer = await self._send(path, body, root=True, fatal=())
                    if isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
                        self._counter = name
                        # llama.cpp's server puts BOS before every text it tokenizes: an empty one
                        # shows how many tokens that is, taken off each answer's count.
                        self._counter_bos = len(answer["tokens"]) if name == "llama.cpp" else 0
                        break
        return self._counter

    async def _tokens(self, counter: str, body: dict) -> int | None:
        if counter == "llama.cpp":
            answer = await self._send("/extras/tokenize", body, root=True, fatal=())
        else:
            answer = await self._send("/tokenize", {"model": self.spec.model, **body}, root=True, fatal=())
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        return len(tokens) if isinstance(tokens, list) else None

    async def _count_unreported(self, payload: dict, generations: list[Generation], chat: bool) -> None:
        """A server that answered without `usage`: count the prompt and every answer with the served
        model's tokenizer where the server has one, else keep the estimate of four characters a token.
        Either way marked as synth's count ("counted"), never as the server's."""
        counter = await self._token_counter()
        if chat:
            messages = payload.get("messages") or []
            text = "".join(str(m.get("content") or "") for m in messages)
        else:
            text = str(payload.get("prompt") or "")
        if counter == "estimate":
            generations[0].prompt_tokens = estimated_tokens(text)
            return
        if counter == "vllm":  # the prompt as the server renders it: chat template, BOS as sent
            if chat:
                prompt: dict = {"messages": payload.get("messages") or [], "add_generation_prompt": True}
            else:
                prompt = {"prompt": text, "add_special_tokens": payload.get("add_special_tokens", True)}
            answers = [{"prompt": g.text, "add_special_tokens": False} for g in generations]
        else:  # llama.cpp's server tokenizes plain text: a chat prompt counts its messages' texts only
            prompt = {"input": text}
            answers = [{"input": g.text} for g in generations]
        counted = await asyncio.gather(*(self._tokens(counter, body) for body in [prompt, *answers]))
        if counted[0] is not None:
            generations[0].prompt_tokens = counted[0]
        for g, tokens in zip(generations, counted[1:], strict=True):
            if tokens is not None:
                g.completion_tokens = max(tokens - self._counter_bos, 0)

    # ---- the tokenizer (vLLM's /tokenize and /detokenize; CDR's truncation) ----
    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text under the served model's tokenizer, no BOS added."""
        out = []
        for text in texts:
            body = {"model": self.spec.model, "prompt": text, "add_special_tokens": False}
            data = await self._send("/tokenize", body, root=True)
            if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
                raise BackendError(f"{self.model_id}: the server cannot tokenize (vLLM's /tokenize): {data!r}"[:500])
            out.append(data["tokens"])
        return out

    async def detokenize(self, ids: Sequence[list[int]]) -> list[str]:
        out = []
        for tokens in ids:
            data = await self._send("/detokenize", {"model": self.spec.model, "tokens": list(tokens)}, root=True)
            if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
                raise BackendError(
                    f"{self.model_id}: the server cannot detokenize (vLLM's /detokenize): {data!r}"[:500]
                )
            out.append(data["prompt"])
        return out

    async def _score_prompt_logprobs(self, r: ScoreRequest) -> ScoreResult | None:
        body = {"model": self.spec.model, "prompt": r.prompt + r.continuation, "max_tokens": 1, "temperature": 0.0}
        # A prompt rendered from a chat template starts with its BOS text: vLLM would add a second.
        bos = await self._bos_text() if r.prompt.startswith("<") else None
        own_bos = {"add_special_tokens": False} if bos and r.prompt.startswith(bos) else {}
        data = await self._send("/completions", {**body, "prompt_logprobs": 0, **own_bos}, check=no_choices)
        if isinstance(data, RequestFailed):
            return data
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            return RequestFailed("no_choices", f"the server answered without choices: {json.dumps(data)[:300]}")
        entries = choices[0].get("prompt_logprobs")
        tokens = None
        if entries is not None:
            tokens = await self._send(
                "/tokenize", {"model": self.spec.model, "prompt": r.prompt, **own_bos}, root=True, fatal=()
            )
        if not isinstance(tokens, dict) or "tokens" not in tokens:
            return None  # not vLLM after all: the caller falls back to echo
        values = prompt_logprobs_continuation(tokens["tokens"], entries)
        return Scored(values, prompt_tokens=(data.get("usage") or {}).get("prompt_tokens", 0))

    async def _score_echo(self, r: ScoreRequest) -> ScoreResult:
        text = r.prompt + r.continuation
        # max_tokens=1, not 0: llama.cpp reads 0 as "until the context is full".
        body = {"model": self.spec.model, "prompt": text, "max_tokens": 1, "temperature": 0.0}
        data = await self._send("/completions", {**body, "echo": True, "logprobs": 1}, check=no_choices)
        if isinstance(data, RequestFailed):
            return data
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            return RequestFailed("no_choices", f"the server answered without choices: {json.dumps(data)[:300]}")
        logprobs = choices[0].get("logprobs")
        if not logprobs or not logprobs.get("text_offset"):
            return RequestFailed("no_logprobs", "the server returned no echo logprobs, so it cannot score")
        values = echo_continuation(logprobs, r.prompt, text)
        return Scored(values, prompt_tokens=(data.get("usage") or {}).get("prompt_tokens", 0))

    async def _score_one(self, r: ScoreRequest) -> ScoreResult:
        if await self._is_vllm():
            result = await self._score_prompt_logprobs(r)
            if result is not None:
                return result
            self._vllm = False
        return await self._score_echo(r)

    def score(self, requests: Sequence[ScoreRequest]) -> AsyncIterator[tuple[int, ScoreResult]]:
        return self._fan_out(requests, self._score_one)

    async def close(self) -> None:
        if self._jobs is not None:
            await self._jobs.close()
        client = self._client
        if client is not None and not client.closed and self._client_loop is asyncio.get_running_loop():
            await client.close()
        self._client = None
