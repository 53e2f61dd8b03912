"""What a stage holds: a backend seen through the request cache and the run's counters.

Every answer is written to the cache as the backend yields it (in groups, at most half a second
apart), before any row moves on;
an answer that is not one (no samples, only empty text, a failure) is never cached, so a resume
asks again instead of replaying it.
Identical requests within one call are sent once. Counters (requests sent, cache hits, tokens)
go to the batch being processed, found through a context variable the runner sets per task, so
per-shard stats stay exact however many batches run at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Sequence
from dataclasses import asdict

from ..cache import RequestCache
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


class LLM:
    def __init__(self, name: str, backend: Backend, cache: RequestCache | None):
        self.name = name
        self.backend = backend
        self.cache = cache

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
        _count("cache_hits", sum(1 for k in keys if k in results))

        missing: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in results and key not in missing:
                empty = _empty(requests[i])
                if empty:  # never sent: every such row would get the same answer to nothing
                    results[key] = RequestFailed("empty_prompt", empty)
                else:
                    missing[key] = i
        if missing:
            todo = list(missing.items())
            pending: list[tuple] = []
            since = 0.0
            try:
                async for j, result in send([requests[i] for _, i in todo]):
                    key, request = todo[j][0], requests[todo[j][1]]
                    if isinstance(request, Request) and isinstance(result, list) and len(result) != request.sampling.n:
                        result = RequestFailed("missing_samples", f"asked for {request.sampling.n}, got {len(result)}")
                    results[key] = result
                    _count("requests")
                    if isinstance(result, RequestFailed):
                        _count("requests_failed")
                        continue
                    generated = 0
                    if isinstance(result, Scored):
                        _count("prompt_tokens", result.prompt_tokens)
                    else:
                        generated = sum(g.completion_tokens for g in result)
                        _count("prompt_tokens", sum(g.prompt_tokens for g in result))
                        _count("completion_tokens", generated)
                        if any(g.batch for g in result):  # for the cost: priced at the batch discount
                            _count("batch_requests")
                            _count("batch_prompt_tokens", sum(g.prompt_tokens for g in result))
                            _count("batch_completion_tokens", generated)
                    ticker = current_ticker.get()
                    if ticker is not None:
                        ticker.answer(generated, self.in_flight())
                    if self.cache is not None and _valid(request, result):
                        if not pending:
                            since = time.monotonic()
                        pending.append((key, kind, self.model_id, payloads[todo[j][1]], _encode(result)))
                        if len(pending) >= FLUSH_ANSWERS or time.monotonic() - since >= FLUSH_SECONDS:
                            batch, pending = pending, []
                            await asyncio.to_thread(self.cache.put_many, batch)
            finally:
                if pending and self.cache is not None:
                    self.cache.put_many(pending)  # the answers of an interrupted call are kept too
        return [results[k] for k in keys]
