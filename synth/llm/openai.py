"""Any OpenAI-compatible server: `vllm serve`, `python -m llama_cpp.server`, OpenAI itself.

Requests fan out concurrently (at most `max_concurrency` in flight per backend) over one or more
base URLs, each request to the URL with the fewest outstanding requests among those not cooling
down after a failure. Connection errors, timeouts, 408/409/429 and 5xx are retried with
exponential backoff and full jitter (honouring Retry-After); when retries run out the run stops
with a BackendError, and running the same command again resumes it from the cache. Any other 4xx
rejects that one request (a prompt too long, say): the row is dropped with the server's message.

The API key comes only from the environment variable named by `api_key_env`; it is never logged.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ..errors import BackendError, MissingDependency
from .base import CompleteResult, Generation, Request, RequestFailed, Scored, ScoreRequest, ScoreResult, sample_seed
from .specs import OpenAISpec

RETRY_STATUS = {408, 409, 429}
BACKOFF_BASE, BACKOFF_CAP, RETRY_AFTER_CAP = 0.5, 30.0, 60.0


@dataclass
class _Endpoint:
    url: str
    outstanding: int = 0
    cooling_until: float = 0.0
    failures: int = 0


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend:
    def __init__(self, spec: OpenAISpec, *, backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP):
        try:
            import httpx
        except ImportError:
            raise MissingDependency("httpx", "openai", "The openai backend") from None
        self.spec = spec
        self.model_id = f"openai:{spec.model}"
        self.endpoints = [_Endpoint(u.rstrip("/")) for u in spec.urls()]
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        key = os.environ.get(spec.api_key_env) or "EMPTY"
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(spec.timeout, connect=10.0),
            limits=httpx.Limits(max_connections=spec.max_concurrency, max_keepalive_connections=spec.max_concurrency),
        )
        self._slots = asyncio.Semaphore(spec.max_concurrency)
        self._vllm: bool | None = None  # whether the server understands prompt_logprobs

    # ---- transport ----
    def _pick(self) -> _Endpoint:
        now = time.monotonic()
        ready = [e for e in self.endpoints if e.cooling_until <= now]
        if ready:
            return min(ready, key=lambda e: e.outstanding)
        return min(self.endpoints, key=lambda e: e.cooling_until)

    async def _post(self, path: str, body: dict) -> dict | RequestFailed:
        import httpx

        last = ""
        for attempt in range(self.spec.max_retries + 1):
            endpoint = self._pick()
            endpoint.outstanding += 1
            try:
                async with self._slots:
                    response = await self._client.post(endpoint.url + path, json=body)
                if response.status_code < 400:
                    endpoint.failures = 0
                    return response.json()
                message = response.text[:500]
                if response.status_code in RETRY_STATUS or response.status_code >= 500:
                    retry_after = response.headers.get("retry-after")
                    raise _Retryable(
                        f"HTTP {response.status_code}: {message}",
                        float(retry_after) if retry_after and retry_after.isdigit() else None,
                    )
                return RequestFailed("rejected", f"HTTP {response.status_code}: {message}")
            except (httpx.TransportError, _Retryable) as exc:
                last = f"{endpoint.url}: {type(exc).__name__}: {exc}"
                endpoint.failures += 1
                delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
                if isinstance(exc, _Retryable) and exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, RETRY_AFTER_CAP))
                endpoint.cooling_until = time.monotonic() + delay
                if attempt < self.spec.max_retries:
                    await asyncio.sleep(delay)
            finally:
                endpoint.outstanding -= 1
        urls = ", ".join(e.url for e in self.endpoints)
        raise BackendError(
            f"no answer from {urls} after {self.spec.max_retries + 1} attempts (last error: {last}); "
            f"check that the server is up, then run the same command again to resume"
        )

    async def _fan_out(self, items: Sequence, one) -> AsyncIterator:
        async def indexed(i, item):
            return i, await one(item)

        tasks = [asyncio.create_task(indexed(i, item)) for i, item in enumerate(items)]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()

    # ---- the protocol ----
    def _sampling(self, request: Request) -> dict:
        s = request.sampling
        body = {
            "model": self.spec.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "n": s.n,
            "seed": request.seed,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        return body

    @staticmethod
    def _generations(data: dict, chat: bool) -> list[Generation]:
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        out = []
        for i, choice in enumerate(choices):
            text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
            out.append(
                Generation(
                    text or "",
                    choice.get("finish_reason") or "stop",
                    usage.get("completion_tokens", 0) if i == 0 else 0,
                    usage.get("prompt_tokens", 0) if i == 0 else 0,
                )
            )
        return out

    async def _generate(self, path: str, request: Request, payload: dict, chat: bool) -> CompleteResult:
        data = await self._post(path, {**self._sampling(request), **payload})
        if isinstance(data, RequestFailed):
            return data
        generations = self._generations(data, chat)
        # Some servers (llama.cpp's) ignore n and return one choice: ask for the missing samples
        # one by one, with the per-sample seeds the local backend uses too.
        for index in range(len(generations), request.sampling.n):
            single = Request(
                request.sampling.model_copy(update={"n": 1}),
                sample_seed(request.seed, index),
                request.prompt,
                request.messages,
            )
            extra = await self._post(path, {**self._sampling(single), **payload})
            if isinstance(extra, RequestFailed):
                return extra
            generations += self._generations(extra, chat)
        return generations

    async def _complete_one(self, request: Request) -> CompleteResult:
        return await self._generate("/completions", request, {"prompt": request.prompt}, chat=False)

    async def _chat_one(self, request: Request) -> CompleteResult:
        messages = [{"role": role, "content": content} for role, content in request.messages or ()]
        return await self._generate("/chat/completions", request, {"messages": messages}, chat=True)

    def complete(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        return self._fan_out(requests, self._complete_one)

    def chat(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        return self._fan_out(requests, self._chat_one)

    async def _score_one(self, request: ScoreRequest) -> ScoreResult:
        text = request.prompt + request.continuation
        if self._vllm is not False:
            body = {"model": self.spec.model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
            data = await self._post("/completions", body)
            if not isinstance(data, RequestFailed) and data["choices"][0].get("prompt_logprobs") is not None:
                self._vllm = True
                return await self._score_vllm(request, data)
            self._vllm = False
        body = {
            "model": self.spec.model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        data = await self._post("/completions", body)
        if isinstance(data, RequestFailed):
            return data
        logprobs = data["choices"][0].get("logprobs") or {}
        offsets, values = logprobs.get("text_offset") or [], logprobs.get("token_logprobs") or []
        if not offsets:
            return RequestFailed("no_logprobs", "the server returned no echo logprobs; it cannot score")
        start = len(request.prompt)
        picked = [v for off, v in zip(offsets, values, strict=False) if start <= off < len(text) and v is not None]
        return Scored([float(v) for v in picked], prompt_tokens=(data.get("usage") or {}).get("prompt_tokens", 0))

    async def _score_vllm(self, request: ScoreRequest, data: dict) -> ScoreResult:
        base = self.endpoints[0].url.removesuffix("/v1")
        tokens = await self._post_raw(base + "/tokenize", {"model": self.spec.model, "prompt": request.prompt})
        entries = data["choices"][0]["prompt_logprobs"]
        n_prompt = tokens.get("count", len(tokens.get("tokens", [])))
        values = []
        for entry in entries[n_prompt:]:
            # With prompt_logprobs=0 each position holds exactly the prompt's own token.
            values.append(float(next(iter(entry.values()))["logprob"]) if entry else 0.0)
        return Scored(values, prompt_tokens=(data.get("usage") or {}).get("prompt_tokens", 0))

    async def _post_raw(self, url: str, body: dict) -> dict:
        response = await self._client.post(url, json=body)
        response.raise_for_status()
        return response.json()

    def score(self, requests: Sequence[ScoreRequest]) -> AsyncIterator[tuple[int, ScoreResult]]:
        return self._fan_out(requests, self._score_one)

    async def close(self) -> None:
        await self._client.aclose()
