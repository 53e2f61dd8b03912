"""`run.budget`: a cap on what a run may spend, in money, tokens or requests, checked before every
request is sent.

A request is let through only when what the run has spent (every session's, so a resume
continues the count), plus what requests in flight may still cost, plus this request's worst case
(its prompt, estimated, and `max_tokens` for each of its `n` samples) stays within every cap. A
request that does not fit waits while others are in flight (their real cost is usually below
their worst case); when nothing is in flight and it still does not fit, the budget is spent: the
client raises `BudgetReached`, no request is sent after that, and requests already sent finish and
are cached. So a run never spends more than its budget, and stops within one request's worst case
of it.

Prompt tokens are not known before a server counts them: they are estimated from the prompt's
characters at the largest tokens-per-character ratio seen so far on that backend (at first one
token per two characters, more than any tokenizer of natural text gives), plus a few tokens per
chat message for the template around it.
"""

from __future__ import annotations

import asyncio
import re
import time

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import BudgetReached
from .pricing import Pricing
from .usage import FIELDS, Totals, flatten

UNITS = ("cost", "tokens", "requests")
TOKENS_PER_CHAR, TOKENS_PER_MESSAGE = 0.5, 8


class Budget(BaseModel):
    """At most this much for the whole run (every session together); any of the three, or several."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost: float | None = Field(None, gt=0, description="money, at the backends' pricing: (in their currency)")
    tokens: int | None = Field(None, gt=0, description="prompt and completion tokens together")
    requests: int | None = Field(None, gt=0, description="requests sent (answers from the cache are free)")

    @model_validator(mode="after")
    def _some(self):
        if self.cost is None and self.tokens is None and self.requests is None:
            raise ValueError("give cost, tokens or requests, e.g. budget: {tokens: 2000000}")
        return self

    def text(self) -> str:
        """As `--budget` takes it: 'tokens=2000000' (several caps, comma-separated)."""
        return ",".join(f"{k}={_number(getattr(self, k))}" for k in UNITS if getattr(self, k) is not None)


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_budget(text: str) -> Budget:
    """`--budget`: 'tokens=2000000', 'cost=12.5', 'requests=500', several with commas; a bare number
    is money. ValueError names the accepted forms."""
    caps: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        unit, _, value = part.rpartition("=") if "=" in part else ("cost", "=", part)
        unit = unit.strip().lower()
        if unit not in UNITS or not re.fullmatch(r"\d+(\.\d+)?(e\d+)?", value.strip()):
            raise ValueError(f"'{part}' is not a budget: write cost=12.5, tokens=2000000 or requests=500")
        number = float(value)
        caps[unit] = number if unit == "cost" else int(number)
    if not caps or not all(caps.values()):
        raise ValueError(f"'{text}' is not a budget: give a positive cost=, tokens= or requests=")
    return Budget.model_validate(caps)


class BudgetGuard:
    """The budget of one session, shared by every LLM client of the run (one event loop)."""

    def __init__(self, budget: Budget, pricing: dict[str, Pricing], spent: Totals, earlier_hours: float = 0.0):
        self.budget = budget
        self.pricing = pricing
        self.spent = flatten(spent, "backend")  # backend -> counters, earlier sessions included
        self.earlier_hours = earlier_hours
        self.started = time.monotonic()
        self.reserved = {"cost": 0.0, "tokens": 0.0, "requests": 0.0}
        self.ratio: dict[str, float] = {}  # backend -> largest prompt tokens per character seen
        self.reached: str | None = None  # why the budget is spent, once it is
        self._changed = asyncio.Event()

    # ---- what a request may cost ----
    def worst(self, backend: str, chars: int, messages: int, max_tokens: int) -> dict[str, float]:
        prompt = chars * self.ratio.get(backend, TOKENS_PER_CHAR) + TOKENS_PER_MESSAGE * messages + 1
        cost = 0.0
        if backend in self.pricing:
            per_in, per_out = self.pricing[backend].worst_price()
            cost = prompt * per_in + max_tokens * per_out
        return {"cost": cost, "tokens": prompt + max_tokens, "requests": 1.0}

    def spent_now(self) -> dict[str, float]:
        totals = {"cost": 0.0, "tokens": 0.0, "requests": 0.0}
        hours = self.earlier_hours + (time.monotonic() - self.started) / 3600
        for backend, counters in self.spent.items():
            totals["tokens"] += counters.get("prompt_tokens", 0) + counters.get("completion_tokens", 0)
            totals["requests"] += counters.get("requests", 0)
            if backend in self.pricing:
                totals["cost"] += self.pricing[backend].token_cost(counters)
        totals["cost"] += sum(p.hour_cost(hours) for p in self.pricing.values())
        return totals

    def _over(self, cost: dict[str, float]) -> str | None:
        spent = self.spent_now()
        for unit in UNITS:
            cap = getattr(self.budget, unit)
            if cap is not None and spent[unit] + self.reserved[unit] + cost[unit] > cap:
                return f"{unit}: {spent[unit]:,.6g} spent of {cap:,.6g}"
        return None

    # ---- the gate ----
    def try_reserve(self, cost: dict[str, float]) -> bool:
        """Reserve a request's worst case if it fits; once the budget is reached nothing fits."""
        if self.reached is not None or self._over(cost) is not None:
            return False
        for unit in UNITS:
            self.reserved[unit] += cost[unit]
        return True

    def in_flight(self) -> bool:
        return self.reserved["requests"] > 0

    async def wait(self) -> None:
        """Until a request in flight settles (and may leave room)."""
        self._changed.clear()
        await self._changed.wait()

    def exhausted(self, cost: dict[str, float]) -> BudgetReached:
        why = self._over(cost) or "no room for the next request"
        self.reached = self.reached or why
        self._changed.set()  # calls waiting for room: there is none now
        return BudgetReached(f"the run's budget is reached ({self.reached})")

    def settle(self, backend: str, cost: dict[str, float], counters: dict[str, int], chars: int) -> None:
        """A reserved request came back: its worst case is released, its real usage counted."""
        for unit in UNITS:
            self.reserved[unit] = max(0.0, self.reserved[unit] - cost[unit])
        mine = self.spent.setdefault(backend, {})
        for k in FIELDS:
            if counters.get(k):
                mine[k] = mine.get(k, 0) + counters[k]
        if chars and counters.get("prompt_tokens"):
            self.ratio[backend] = max(self.ratio.get(backend, 0.0), counters["prompt_tokens"] / chars)
        self._changed.set()
