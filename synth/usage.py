"""What a run spent: requests and tokens per stage and backend, per session and for the whole run.

A request's usage is recorded once, by the LLM client, when its answer (or its failure) arrives:
the server's `usage` where it reports one (`reported`), the engine's own tokenizer or an estimate
otherwise (`counted`). An answer served from the cache is not spent: it is counted as a cache hit
and nothing else, so a resumed run never pays twice for what an earlier session bought.

Totals are plain nested dicts, `{stage: {backend: {counter: n}}}`, so they go into the manifest
as they are. A session's totals are journaled in the request cache in the same transaction as
the answers they paid for (synth/cache.py), so even after kill -9 the next session knows what the
killed one spent; the manifest's session entries keep a copy, and the run's totals are their sum.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

# The counters of one (stage, backend): what a budget, a price and a reader need.
FIELDS = (
    "requests",  # sent to the backend (answered or failed); cache hits are not requests
    "retried",  # extra attempts after a timeout, 429 or 5xx (each may be billed by a provider)
    "failed",  # requests that ended without an answer
    "cache_hits",  # answers served from the run's cache: not spent
    "prompt_tokens",
    "completion_tokens",
    "counted",  # requests whose tokens synth counted (engine tokenizer, estimate), not a server's usage
    "batch_requests",  # of `requests`, sent through a provider's Batch API (priced with its discount)
    "batch_prompt_tokens",
    "batch_completion_tokens",
)

Totals = dict[str, dict[str, dict[str, int]]]  # stage label -> backend name -> counter -> n


@dataclass(frozen=True)
class RequestUsage:
    """One request's usage, as the client records it when the answer arrives. `reported` says the
    tokens are the server's own count; `batch`, that the request went through a Batch API."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = True
    batch: bool = False
    failed: bool = False

    def counters(self) -> dict[str, int]:
        out = {"requests": 1, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        if self.failed:
            out["failed"] = 1
        if not self.reported:
            out["counted"] = 1
        if self.batch:
            out["batch_requests"] = 1
            out["batch_prompt_tokens"] = self.prompt_tokens
            out["batch_completion_tokens"] = self.completion_tokens
        return {k: v for k, v in out.items() if v}


def add(into: dict[str, int], counters: dict[str, int]) -> dict[str, int]:
    for k, v in counters.items():
        if v:
            into[k] = into.get(k, 0) + v
    return into


def add_totals(into: Totals, other: Totals) -> Totals:
    for stage, backends in (other or {}).items():
        for backend, counters in (backends or {}).items():
            add(into.setdefault(stage, {}).setdefault(backend, {}), counters)
    return into


def run_totals(manifest: dict) -> Totals:
    """The whole run's usage: the sum of every session's (each paid for its own requests)."""
    out: Totals = {}
    for session in manifest.get("sessions") or []:
        add_totals(out, session.get("usage") or {})
    return out


def flatten(totals: Totals, by: str = "all") -> dict[str, int] | dict[str, dict[str, int]]:
    """One dict of counters for everything (`all`), or one per stage (`stage`) or backend (`backend`)."""
    if by == "all":
        out: dict[str, int] = {}
        for backends in totals.values():
            for counters in backends.values():
                add(out, counters)
        return out
    grouped: dict[str, dict[str, int]] = {}
    for stage, backends in totals.items():
        for backend, counters in backends.items():
            add(grouped.setdefault(stage if by == "stage" else backend, {}), counters)
    return grouped


class Meter:
    """This session's usage as it happens, for the budget and the summary. The client adds each
    request's counters under the stage being processed (`current_stage`) and its backend."""

    def __init__(self) -> None:
        self.totals: Totals = {}

    def record(self, stage: str, backend: str, counters: dict[str, int]) -> None:
        add(self.totals.setdefault(stage, {}).setdefault(backend, {}), counters)


# The stage whose batch is being processed (the runner sets it per batch, like the counters).
current_stage: contextvars.ContextVar[str] = contextvars.ContextVar("synth_stage", default="")
# Retries a backend makes for the request being sent: its own counter per client call.
_retries: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("synth_retries", default=None)


def count_retry(n: int = 1) -> None:
    """A backend retried a request (called from its retry loop). The one place a backend reports
    usage that is not in an answer: the tokens themselves travel on the `Generation`s."""
    tally = _retries.get()
    if tally is not None:
        tally["retried"] = tally.get("retried", 0) + n


def retry_tally() -> tuple[dict[str, int], contextvars.Token]:
    """A fresh retry counter for one client call (backends' tasks inherit it)."""
    tally: dict[str, int] = {}
    return tally, _retries.set(tally)


def reset_retry_tally(token: contextvars.Token) -> None:
    _retries.reset(token)


def tokens_text(counters: dict[str, int]) -> str:
    """'1,204 requests, 53,010 prompt + 8,115 completion tokens (3 retried, 1 failed, 40 cached)'."""
    if not counters:
        return "no requests"
    extra = [
        f"{counters[k]:,} {name}"
        for k, name in (("retried", "retried"), ("failed", "failed"), ("cache_hits", "from the cache"))
        if counters.get(k)
    ]
    if counters.get("counted"):
        extra.append(f"{counters['counted']:,} counted by synth, not reported by a server")
    more = f" ({', '.join(extra)})" if extra else ""
    return (
        f"{counters.get('requests', 0):,} requests, {counters.get('prompt_tokens', 0):,} prompt + "
        f"{counters.get('completion_tokens', 0):,} completion tokens{more}"
    )
