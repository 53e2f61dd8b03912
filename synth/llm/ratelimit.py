"""A provider's rate limits kept on our side: requests and tokens per minute as token buckets.

Hosted APIs enforce requests-per-minute and tokens-per-minute limits and answer 429 past them.
Learning the limits from 429s costs a backoff each time and, under a tight limit, most of the run;
a bucket that never sends faster than the limit costs nothing. A request takes one request and
its tokens ahead (prompt, estimated from its characters, plus max_tokens for every sample): the
most it can cost. When the answer reports its usage the difference goes back, so a limit on
tokens is not wasted on answers shorter than max_tokens.

Providers say where their buckets stand (`x-ratelimit-remaining-requests`, `-tokens`, and
`x-ratelimit-reset-*` as "1s", "6m0s" or "20ms"): each answer's headers set ours to the provider's
count, less what we have sent since, so a limit shared with other clients, or a burst the provider
allows, is followed as it is. A 429 after all that means the limits are set higher than the
provider's: it is counted (`rate_limited`) and the run's summary says so.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping

CHARS_PER_TOKEN = 4  # a prompt's tokens, estimated before it is sent (settled on the reported usage)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def estimated_tokens(text: str) -> int:
    """Tokens of a text no tokenizer counted: about four characters each, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


def parse_reset(value: str | None) -> float | None:
    """Seconds in a reset header: "1s", "6m0s", "20ms", "1h2m3.5s", or a plain number of seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(a + b for a, b in parts) != value:
        return None
    return sum(float(amount) * _UNIT[unit] for amount, unit in parts)


class Bucket:
    """One limit: `per_minute` units refill continuously up to `capacity` (one second's worth
    until the provider's headers show a larger burst)."""

    def __init__(self, per_minute: int, now: float):
        self.limit = self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` units are there (0: now)."""
        self.refill(now)
        cost = min(cost, self.capacity)  # a request larger than the bucket waits for a full one
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate

    def observe(self, remaining: float, reset: float | None, in_flight: float, now: float) -> None:
        """The provider's count after one answer, less what is still on its way to it. Its bucket
        holds at least `remaining` + the unit just spent (a burst it allows), and refills the
        difference to full in `reset` seconds: a slower pace than the limit set is followed."""
        self.refill(now)
        self.capacity = max(self.capacity, remaining + 1)
        self.level = min(self.capacity, remaining - in_flight)
        if reset and remaining < self.capacity:
            self.rate = min(self.limit, max((self.capacity - remaining) / reset, self.limit / 100))


class RateLimiter:
    """Both limits of one backend; every request waits here before it is sent."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock  # a test's own clock: refills depend on time passing, not on a busy machine
        self.requests = Bucket(requests_per_minute, clock()) if requests_per_minute else None
        self.tokens = Bucket(tokens_per_minute, clock()) if tokens_per_minute else None
        self._lock = asyncio.Lock()  # first come, first served: a large request is not starved
        self._in_flight_requests = 0
        self._in_flight_tokens = 0.0

    @staticmethod
    def estimate(body: Mapping) -> int:
        """Tokens a request may cost: its prompt (by characters) plus max_tokens for each sample."""
        prompt = body.get("prompt")
        if prompt is None:
            prompt = "".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, Mapping))
        samples = body.get("n") or 1
        return len(str(prompt)) // CHARS_PER_TOKEN + 1 + int(body.get("max_tokens") or 16) * int(samples)

    async def acquire(self, tokens: int) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                wait = max(
                    self.requests.wait_for(1, now) if self.requests else 0.0,
                    self.tokens.wait_for(tokens, now) if self.tokens else 0.0,
                )
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.requests:
                self.requests.level -= 1
            if self.tokens:
                self.tokens.level -= min(tokens, self.tokens.capacity)
            self._in_flight_requests += 1
            self._in_flight_tokens += tokens

    def settle(self, estimated: int, used: int | None, headers: Mapping[str, str] | None) -> None:
        """After the answer: give back what the request did not use; follow the provider's headers."""
        self._in_flight_requests -= 1
        self._in_flight_tokens -= estimated
        now = self.clock()
        if self.tokens and used is not None and used < estimated:
            self.tokens.refill(now)
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + (estimated - used))
        if not headers:
            return
        for bucket, name, in_flight in (
            (self.requests, "requests", self._in_flight_requests),
            (self.tokens, "tokens", self._in_flight_tokens),
        ):
            remaining = headers.get(f"x-ratelimit-remaining-{name}")
            if bucket is None or remaining is None:
                continue
            try:
                value = float(remaining)
            except ValueError:
                continue
            bucket.observe(value, parse_reset(headers.get(f"x-ratelimit-reset-{name}")), in_flight, now)
