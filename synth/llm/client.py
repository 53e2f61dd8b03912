"""What a stage holds: a backend seen through the request cache and the run's counters.

Every answer is written to the cache as the backend yields it (in groups, at most half a second
apart), before any row moves on;
an answer that is not one (no samples, only empty text, a failure) is never cached, so a resume
asks again instead of replaying it.
Identical requests within one call are sent once. Counters (requests sent, cache hits, tokens)
go to the batch being processed, found through a context variable the runner sets per task, so
per-shard stats stay exact however many batches run at once.

This is also the one place a request's usage is recorded (synth/usage.py): the session's totals
per stage and backend, journaled with the answers they paid for, and the budget's gate
(synth/budget.py), asked before each request is handed to the backend.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from ..cache import RequestCache
from ..usage import Meter, RequestUsage, add, current_stage, reset_retry_tally, retry_tally
from .base import (
    Backend,
    CompleteResult,
    Generation,
    Request,
    RequestFailed,
    Scored,
    ScoreRequest,
    ScoreResult,
    request_key,
)

if TYPE_CHECKING:
    from ..budget import BudgetGuard

# Answers are committed to the cache in groups, in a thread: one transaction per group instead of
# one per answer, off the event loop. A kill -9 loses at most the last FLUSH_SECONDS of answers.
FLUSH_ANSWERS, FLUSH_SECONDS = 64, 0.5


class Ticker:
    """One batch's progress: each answer advances its stage by a row (up to the batch's rows), the
    rest come when the batch is done, so progress moves as answers arrive, not per batch."""

    def __init__(self, progress, label: str, rows: int):
        self.progress, self.label, self.rows, self.advanced = progress, label, rows, 0

    def answer(self, tokens: int, in_flight: int | None) -> None:
        step = 1 if self.advanced < self.rows else 0
        self.advanced += step
        self.progress.advance(self.label, step, tokens, in_flight)

    def finish(self) -> None:
        self.progress.advance(self.label, self.rows - self.advanced)
        self.advanced = self.rows


current_ticker: contextvars.ContextVar[Ticker | None] = contextvars.ContextVar("synth_ticker", default=None)
current_counters: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("synth_counters", default=None)


def _count(name: str, n: int = 1) -> None:
    counters = current_counters.get()
    if counters is not None and n:
        counters[name] = counters.get(name, 0) + n


count_event = _count  # for backends: an event worth a counter in the batch's stats (a 429 under rate limits)


def _encode(result: CompleteResult | ScoreResult) -> dict:
    if isinstance(result, Scored):
        return {"scored": asdict(result)}
    return {
        "generations": [
            {
                "text": g.text,
                "finish_reason": g.finish_reason,
                "completion_tokens": g.completion_tokens,
                "prompt_tokens": g.prompt_tokens,
                **({"batch": True} if g.batch else {}),  # only when set: other entries stay as they were
            }
            for g in result  # type: ignore[union-attr]
        ]
    }


def _decode(data: dict) -> CompleteResult | ScoreResult:
    if "scored" in data:
        return Scored(**data["scored"])
    return [Generation(**g) for g in data["generations"]]


def _valid(request: Request | ScoreRequest, result: CompleteResult | ScoreResult) -> bool:
    """Whether an answer may be cached (and a cached one used): a cached non-answer would come
    back on every resume, even once the server is healthy again. Every one of the n samples must
    be there and one of them must say something."""
    if isinstance(request, ScoreRequest):
        return isinstance(result, Scored)
    return (
        isinstance(result, list)
        and len(result) == request.sampling.n
        and all(isinstance(g, Generation) and isinstance(g.text, str) for g in result)
        and any(g.text.strip() for g in result)
    )


def _empty(request: Request | ScoreRequest) -> str | None:
    """Why a request has nothing to send (an empty prompt, messages without content), or None."""
    if not isinstance(request, Request):
        return None
    if request.messages is not None:
        users = [c for r, c in request.messages if r == "user"] or [c for r, c in request.messages if r != "assistant"]
        if users and isinstance(users[-1], str) and users[-1].strip():
            return None
        return "the messages have no content: nothing was sent; check the template or column they come from"
    if request.prompt is not None and not request.prompt.strip():
        return "the prompt is empty: nothing was sent; check the template or column it comes from"
    return None


def _cached(request: Request | ScoreRequest, data) -> CompleteResult | ScoreResult | None:
    """A cached answer, or None when the entry is unreadable or not a valid answer (then the
    request is sent again and the entry replaced)."""
    try:
        result = _decode(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return result if _valid(request, result) else None


def usage_of(result: CompleteResult | ScoreResult) -> dict[str, int]:
    """The usage counters of one request sent (synth.usage.FIELDS): its tokens as the backend
    gave them, reported by a server or counted by synth, and whether it went through a Batch API."""
    if isinstance(result, RequestFailed):
        return RequestUsage(failed=True).counters()
    if isinstance(result, Scored):
        return RequestUsage(prompt_tokens=result.prompt_tokens).counters()
    first = result[0] if result else Generation("")
    return RequestUsage(
        prompt_tokens=sum(g.prompt_tokens for g in result),
        completion_tokens=sum(g.completion_tokens for g in result),
        reported=first.usage == "reported",
        batch=first.batch,
    ).counters()


def prompt_chars(request: Request | ScoreRequest) -> tuple[int, int]:
    """Characters and chat messages of what a request sends, for a budget's estimate of its prompt."""
    if isinstance(request, ScoreRequest):
        return len(request.prompt) + len(request.continuation), 0
    if request.messages is not None:
        return sum(len(c) for _, c in request.messages), len(request.messages)
    return len(request.prompt or ""), 0


class _CallUsage:
    """One client call's usage, recorded as answers arrive: into the batch's counters (the shard's
    stats), and into a delta that is journaled with the answers it paid for (the session's totals)."""

    def __init__(self, backend: str):
        self.stage, self.backend = current_stage.get(), backend
        self.delta: dict[str, int] = {}
        self.since = 0.0

    def hits(self, found: list[CompleteResult | ScoreResult]) -> None:
        """Answers served from the cache: not spent, but what they would cost is counted for the
        batch (`cached_*_tokens`), so `synth estimate` measures a sample the cache answered."""
        _count("cache_hits", len(found))
        add(self.delta, {"cache_hits": len(found)})
        for result in found:
            counters = usage_of(result)
            _count("cached_prompt_tokens", counters.get("prompt_tokens", 0))
            _count("cached_completion_tokens", counters.get("completion_tokens", 0))

    def answer(self, result: CompleteResult | ScoreResult) -> int:
        counters = usage_of(result)
        _count("requests")
        _count("requests_failed", counters.get("failed", 0))
        _count("prompt_tokens", counters.get("prompt_tokens", 0))
        _count("completion_tokens", counters.get("completion_tokens", 0))
        for name in ("batch_requests", "batch_prompt_tokens", "batch_completion_tokens"):  # priced at the discount
            _count(name, counters.get(name, 0))
        add(self.delta, counters)
        return counters.get("completion_tokens", 0)

    def due(self, pending: int) -> bool:
        """Whether the answers waiting should be committed now (64 of them, or half a second)."""
        if pending == 1:
            self.since = time.monotonic()
        return pending >= FLUSH_ANSWERS or time.monotonic() - self.since >= FLUSH_SECONDS

    def take(self, retries: dict[str, int]) -> tuple[str, str, dict[str, int]] | None:
        add(self.delta, retries)
        retries.clear()
        delta, self.delta = self.delta, {}
        return (self.stage, self.backend, delta) if delta else None


class LLM:
    def __init__(
        self,
        name: str,
        backend: Backend,
        cache: RequestCache | None,
        meter: Meter | None = None,
        guard: BudgetGuard | None = None,
    ):
        self.name = name
        self.backend = backend
        self.cache = cache
        self.meter = meter  # the session's usage (synth/usage.py)
        self.guard = guard  # run.budget (synth/budget.py), checked before every request

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def in_flight(self) -> int | None:
        """Requests the backend has out now (HTTP backends count theirs), for the progress display."""
        endpoints = getattr(self.backend, "endpoints", None)
        return sum(e.in_flight for e in endpoints) if endpoints else None

    async def complete(self, requests: Sequence[Request]) -> list[CompleteResult]:
        return await self._run("complete", requests, self.backend.complete)  # type: ignore[return-value]

    async def chat(self, requests: Sequence[Request]) -> list[CompleteResult]:
        return await self._run("chat", requests, self.backend.chat)  # type: ignore[return-value]

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return await self._run("score", requests, self.backend.score)  # type: ignore[return-value]

    def _put(self, entries: list[tuple], journal: tuple[str, str, dict[str, int]] | None) -> None:
        """Commit answers with the usage that paid for them, in one transaction."""
        if self.cache is not None:
            self.cache.put_many(entries, [journal] if journal else [])

    def _record(self, journal: tuple[str, str, dict[str, int]] | None) -> None:
        if journal and self.meter is not None:
            self.meter.record(*journal)

    async def _send(self, send, requests: list) -> AsyncIterator[tuple[int, CompleteResult | ScoreResult]]:
        """The backend's answers; with a budget, sent in waves of the requests that fit in it (in
        order), waiting while requests in flight may free room, and `BudgetReached` once the next
        request cannot fit with nothing in flight: the answers of requests already sent come first."""
        if self.guard is None:
            async for item in send(requests):
                yield item
            return
        guard, at = self.guard, 0
        while at < len(requests):
            wave: list[tuple[int, dict[str, float], int]] = []
            for i in range(at, len(requests)):
                chars, messages = prompt_chars(requests[i])
                sampling = getattr(requests[i], "sampling", None)
                most = sampling.max_tokens * sampling.n if sampling is not None else 0
                cost = guard.worst(self.name, chars, messages, most)
                if not guard.try_reserve(cost):
                    break
                wave.append((i, cost, chars))
            if not wave:
                if guard.in_flight() and guard.reached is None:
                    await guard.wait()
                    continue
                chars, messages = prompt_chars(requests[at])
                raise guard.exhausted(guard.worst(self.name, chars, messages, 0))
            settled = set()
            try:
                async for j, result in send([requests[i] for i, _, _ in wave]):
                    i, cost, chars = wave[j]
                    guard.settle(self.name, cost, usage_of(result), chars)
                    settled.add(j)
                    yield i, result
            finally:  # an interrupted wave frees what it had reserved
                for j, (_, cost, _) in enumerate(wave):
                    if j not in settled:
                        guard.settle(self.name, cost, {}, 0)
            at += len(wave)

    async def _run(self, kind, requests, send) -> list:
        payloads = [r.payload() for r in requests]
        keys = [request_key(kind, self.model_id, p) for p in payloads]
        cached = self.cache.get_many(list(set(keys))) if self.cache is not None else {}
        results: dict[str, CompleteResult | ScoreResult] = {}
        for i, key in enumerate(keys):
            if key in cached and key not in results:
                found = _cached(requests[i], cached[key])
                if found is not None:
                    results[key] = found
        tally = _CallUsage(self.name)
        tally.hits([results[k] for k in keys if k in results])

        missing: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in results and key not in missing:
                empty = _empty(requests[i])
                if empty:  # never sent: every such row would get the same answer to nothing
                    results[key] = RequestFailed("empty_prompt", empty)
                else:
                    missing[key] = i
        retries, retry_token = retry_tally()
        pending: list[tuple] = []
        try:
            todo = list(missing.items())
            async for j, result in self._send(send, [requests[i] for _, i in todo]) if todo else _nothing():
                key, request = todo[j][0], requests[todo[j][1]]
                if isinstance(request, Request) and isinstance(result, list) and len(result) != request.sampling.n:
                    result = RequestFailed("missing_samples", f"asked for {request.sampling.n}, got {len(result)}")
                results[key] = result
                generated = tally.answer(result)
                if isinstance(result, RequestFailed):
                    continue
                ticker = current_ticker.get()
                if ticker is not None:
                    ticker.answer(generated, self.in_flight())
                if self.cache is not None and _valid(request, result):
                    pending.append((key, kind, self.model_id, payloads[todo[j][1]], _encode(result)))
                    if tally.due(len(pending)):
                        journal = tally.take(retries)
                        self._record(journal)
                        batch, pending = pending, []
                        await asyncio.to_thread(self._put, batch, journal)
        finally:
            reset_retry_tally(retry_token)
            journal = tally.take(retries)
            self._record(journal)
            if pending or journal:
                self._put(pending, journal)  # the answers of an interrupted call are kept too
        return [results[k] for k in keys]


async def _nothing() -> AsyncIterator:
    return
    yield
