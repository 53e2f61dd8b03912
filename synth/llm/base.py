"""The backend protocol and the request/answer types that cross it.

A backend takes many requests at once and yields `(index, result)` as each finishes, so an HTTP
backend can fan out, an engine can batch, and the caller can cache every answer the moment it
exists (a kill -9 then loses only what was in flight).

A result is a list of `n` generations, or a `RequestFailed` when that one request cannot succeed
(the prompt is too long, the server rejects it): the row is dropped with the reason. A backend
that cannot serve at all (nothing listens after every retry) raises `BackendError` instead: the
run stops, and resumes later from its cache.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from ..seeds import derive_seed
from ..seeds import digest as derive_key


class Sampling(BaseModel):
    """Sampling parameters, part of every request's cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    stop: tuple[str, ...] = ()
    repetition_penalty: float = Field(1.0, gt=0)
    n: int = Field(1, ge=1)
    top_k: int = Field(0, ge=0, description="sample from the k likeliest tokens only (0: off)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """top_k appears only when set: requests without it keep the cache keys and provenance
        they had before it existed."""
        data = handler(self)
        if not data.get("top_k"):
            data.pop("top_k", None)
        return data


@functools.lru_cache(maxsize=1024)
def _sampling_json(sampling: Sampling) -> dict[str, Any]:
    """A stage sends thousands of requests with one Sampling: dump it once. (Callers only read
    the dict: it goes into a JSON digest and the cache.)"""
    return sampling.model_dump(mode="json")


@dataclass(frozen=True)
class Request:
    """One completion (`prompt`) or chat (`messages`) request, with its own seed.

    `json_schema`, when set, asks the backend to constrain the answer to JSON of that schema
    (structured output: a grammar in llama.cpp, xgrammar in vLLM). It joins the cache key only
    when set, so requests without one keep the keys they always had."""

    sampling: Sampling
    seed: int
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...)
    json_schema: dict[str, Any] | None = field(default=None, hash=False)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"sampling": _sampling_json(self.sampling), "seed": self.seed}
        if self.prompt is not None:
            body["prompt"] = self.prompt
        if self.messages is not None:
            body["messages"] = [list(m) for m in self.messages]
        if self.json_schema is not None:
            body["json_schema"] = self.json_schema
        return body


@dataclass(frozen=True)
class ScoreRequest:
    """Log-probability of `continuation` given `prompt` (token by token)."""

    prompt: str
    continuation: str

    def payload(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "continuation": self.continuation}


def request_key(kind: str, model_id: str, payload: dict[str, Any]) -> str:
    """A request's cache key: the digest of its canonical JSON. A batch job's lines carry it as
    their `custom_id`, so an answer that comes back in a file finds its request again."""
    return derive_key({"kind": kind, "model": model_id, **payload})


@dataclass
class Generation:
    text: str
    finish_reason: str = "stop"
    completion_tokens: int = 0
    prompt_tokens: int = 0  # counted on the first generation of a request only
    # Where the token counts come from (read on the first generation, for the run's usage): a
    # server's `usage` ("reported"), or synth's own count ("counted": the engine's tokenizer, or
    # an estimate when a server reports none). Not cached: an answer from the cache is not spent.
    usage: str = "reported"
    batch: bool = False  # sent through a provider's Batch API (priced with pricing.batch_discount)


@dataclass
class Scored:
    token_logprobs: list[float] = field(default_factory=list)
    prompt_tokens: int = 0

    @property
    def total(self) -> float:
        return float(sum(self.token_logprobs))


@dataclass
class RequestFailed:
    reason: str
    detail: str = ""


CompleteResult = list[Generation] | RequestFailed
ScoreResult = Scored | RequestFailed


def sample_seed(seed: int, index: int) -> int:
    """Seed of the index-th of a request's n samples, where a backend draws them one by one:
    sample 0 uses the request's own seed. Every backend uses this rule, so n samples are the
    same whichever backend draws them one at a time."""
    return seed if index == 0 else derive_seed(seed, index)


def single_bos(ids: list[int], bos_id: int | None) -> list[int]:
    """Token ids with one BOS at the start, not two.

    A prompt whose text already starts with the BOS token (a Magpie pre-query template such as
    `<bos><start_of_turn>user\n`, or a chat template that writes `{{ bos_token }}`) gets a second
    one from a tokenizer that adds BOS itself; the model never saw that in training."""
    if bos_id is not None and bos_id >= 0 and len(ids) >= 2 and ids[0] == ids[1] == bos_id:
        return ids[1:]
    return ids


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. A backend that honours `Request.json_schema` also sets the
    class attribute `structured_output = True` (the built-in ones do); stages send a schema only
    to those, and parse the answer either way."""

    model_id: str  # what produced the text: part of every cache key and of provenance

    def complete(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]: ...

    def chat(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]: ...

    def score(self, requests: Sequence[ScoreRequest]) -> AsyncIterator[tuple[int, ScoreResult]]: ...

    async def close(self) -> None: ...
