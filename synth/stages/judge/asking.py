"""Asking one backend for JSON answers, as every judge task and the checklist do: a chat or few-shot
prompt, greedy first, the answer's JSON schema where the backend can take one, and answers that do
not parse asked again with new seeds at `retry_temperature`, then counted and left to fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import SynthError
from ...llm.base import Request, RequestFailed, Sampling
from ..base import Batch
from ..common import auto_mode, retry_sampling

if TYPE_CHECKING:
    from ...llm.client import LLM

Job = tuple[str, Callable[[str], Any], dict | None]  # (prompt, parse, JSON schema)
Answer = tuple[Any, str, int, str]  # (parsed or None, raw answer, seed, failure reason)


@dataclass
class Asker:
    """One backend asked for JSON answers: its mode (chat or few-shot completion), sampling, schema."""

    llm: LLM
    mode: str
    sampling: Sampling
    schema: dict | None
    seed: Callable[[str, int], int]  # (prompt, attempt) -> the request's seed
    retries: int
    retry_temperature: float

    def request(self, prompt: str, attempt: int, schema: dict | None) -> Request:
        sampling = retry_sampling(self.sampling, attempt, self.retry_temperature)
        seed = self.seed(prompt, attempt)
        if self.mode == "complete":
            return Request(sampling, seed, prompt=prompt, json_schema=schema)
        return Request(sampling, seed, messages=(("user", prompt),), json_schema=schema)

    async def ask(self, jobs: list[Job], batch: Batch, counter: str = "parse") -> list[Answer]:
        """One answer per job, after up to `retries` more rounds for answers that do not parse
        (counted `<counter>_retried`; those still unparsed `<counter>_failed`)."""
        call = self.llm.complete if self.mode == "complete" else self.llm.chat
        out: list[Answer] = [(None, "", 0, "")] * len(jobs)
        pending = list(range(len(jobs)))
        for attempt in range(self.retries + 1):
            if not pending:
                break
            if attempt == 1:
                batch.count(f"{counter}_retried", len(pending))
            requests = [self.request(jobs[i][0], attempt, jobs[i][2]) for i in pending]
            results = await call(requests)
            still = []
            for i, request, result in zip(pending, requests, results, strict=True):
                if isinstance(result, RequestFailed):  # a prompt too long stays too long: no retry
                    out[i] = (None, result.detail, request.seed, f"request_failed:{result.reason}")
                    continue
                parsed = jobs[i][1](result[0].text)
                out[i] = (parsed, result[0].text, request.seed, f"{counter}_failed")
                if parsed is None:
                    still.append(i)
            pending = still
        if pending:
            batch.count(f"{counter}_failed", len(pending))
        return out


async def make_asker(
    llm: LLM, name: str, label: str, params, mode: str, schema: dict | None, max_tokens: int, seed
) -> Asker:
    """The Asker for backend `name` with the stage's sampling and schema policy (`schema: on` and a
    backend that cannot constrain answers is an error)."""
    if mode == "auto":
        mode = await asyncio.to_thread(auto_mode, llm.backend, label)
    supported = getattr(llm.backend, "structured_output", False)
    if params.schema == "on" and not supported:
        raise SynthError(
            f"stage '{label}': backend '{name}' ({llm.model_id}) cannot constrain "
            "answers to a JSON schema: set schema: auto or off"
        )
    schema = schema if params.schema != "off" and supported else None
    sampling = params.sampling().model_copy(update={"max_tokens": max_tokens})
    if mode == "complete" and schema is None:  # few-shot answers are one line of JSON
        sampling = sampling.model_copy(update={"stop": (*sampling.stop, "\n")})
    return Asker(llm, mode, sampling, schema, seed, params.parse_retries, params.retry_temperature)
