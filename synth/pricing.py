"""Prices the user gives, and what a run's usage costs at them.

synth keeps no price table: provider prices change without notice and a built-in table would be
wrong without anyone seeing. A backend says what it costs in its own `pricing:` block, per million
input and output tokens (with the discount its Batch API gives) or, for servers the user runs, per
server-hour with the number of servers. A run without prices shows tokens and server-hours only.

Server-hours are the hours the run's sessions ran, times the servers: they are charged whether a
request is sent or not. Their cost is shared among the stages in proportion to the tokens each
stage sent to that backend.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .usage import Totals, flatten


class Pricing(BaseModel):
    """A backend's prices, in the currency the user chooses (`currency`, a label only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_million: float | None = Field(None, ge=0, description="price of a million prompt tokens")
    output_per_million: float | None = Field(None, ge=0, description="price of a million completion tokens")
    batch_discount: float = Field(
        0.0, ge=0, lt=1, description="share taken off token prices for requests sent through a Batch API (0.5: half)"
    )
    per_server_hour: float | None = Field(
        None, ge=0, description="price of one server for an hour, for servers you run (charged for the run's time)"
    )
    servers: int = Field(1, ge=1, description="servers booked for the run, with per_server_hour")
    currency: str = Field("USD", max_length=8, description="the currency's name, shown beside amounts")

    @model_validator(mode="after")
    def _one_way(self):
        tokens = self.input_per_million is not None or self.output_per_million is not None
        if tokens and self.per_server_hour is not None:
            raise ValueError(
                "price a backend either per token (input_per_million, output_per_million) or per server-hour "
                "(per_server_hour, servers), not both"
            )
        if not tokens and self.per_server_hour is None:
            raise ValueError("give input_per_million and output_per_million, or per_server_hour (with servers)")
        return self

    def token_cost(self, counters: dict[str, int]) -> float:
        """What these counters' tokens cost (Batch API tokens at the discount); 0 for server-hour pricing."""
        if self.per_server_hour is not None:
            return 0.0
        total = 0.0
        for kind, price in (("prompt", self.input_per_million), ("completion", self.output_per_million)):
            batch = counters.get(f"batch_{kind}_tokens", 0)
            plain = counters.get(f"{kind}_tokens", 0) - batch
            total += (plain + batch * (1 - self.batch_discount)) * (price or 0.0) / 1e6
        return total

    def worst_price(self) -> tuple[float, float]:
        """Price of one prompt token and one completion token (no discount: a budget's worst case)."""
        return (self.input_per_million or 0.0) / 1e6, (self.output_per_million or 0.0) / 1e6

    def hour_cost(self, hours: float) -> float:
        return (self.per_server_hour or 0.0) * self.servers * hours


def costs(totals: Totals, pricing: dict[str, Pricing], hours: float) -> dict | None:
    """Cost per stage, per backend and in total, or None when no backend that was used has a price.
    `hours` is the wall time of the run's sessions, for server-hour prices."""
    used = set(flatten(totals, "backend"))
    priced = {b: p for b, p in pricing.items() if b in used or p.per_server_hour is not None}
    if not priced:
        return None
    stages: dict[str, float] = {}
    backends: dict[str, float] = {}
    for stage, by_backend in totals.items():
        for backend, counters in by_backend.items():
            if backend in priced:
                cost = priced[backend].token_cost(counters)
                stages[stage] = stages.get(stage, 0.0) + cost
                backends[backend] = backends.get(backend, 0.0) + cost
    for backend, p in priced.items():
        if p.per_server_hour is None:
            continue
        charge = p.hour_cost(hours)
        backends[backend] = backends.get(backend, 0.0) + charge
        shares = {s: _tokens(b.get(backend, {})) for s, b in totals.items()}
        whole = sum(shares.values())
        for stage, share in shares.items():
            if whole and share:
                stages[stage] = stages.get(stage, 0.0) + charge * share / whole
    currencies = sorted({p.currency for p in priced.values()})
    return {
        "total": round(sum(backends.values()), 6),
        "stages": {k: round(v, 6) for k, v in stages.items()},
        "backends": {k: round(v, 6) for k, v in backends.items()},
        "currency": "/".join(currencies),
        "server_hours": {b: round(hours * p.servers, 4) for b, p in priced.items() if p.per_server_hour is not None},
    }


def _tokens(counters: dict[str, int]) -> int:
    return counters.get("prompt_tokens", 0) + counters.get("completion_tokens", 0)


def money(amount: float, currency: str) -> str:
    return f"{amount:,.4f} {currency}" if amount < 1 else f"{amount:,.2f} {currency}"


def manifest_costs(manifest: dict, totals: Totals, rows: int | None = None) -> dict | None:
    """Costs from a manifest's own record of its prices (the pipeline's `pricing:` blocks as the
    run saw them) and its sessions' wall time; with `rows`, also the cost per 1,000 output rows."""
    pricing = {}
    for name, spec in (manifest.get("pricing") or {}).items():
        try:
            pricing[name] = Pricing.model_validate(spec)
        except ValueError:
            continue
    hours = sum(s.get("seconds") or 0.0 for s in manifest.get("sessions") or []) / 3600
    found = costs(totals, pricing, hours)
    if found is not None and rows:
        found["per_1000_rows"] = round(found["total"] * 1000 / rows, 6)
    return found
