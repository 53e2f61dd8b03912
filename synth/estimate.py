"""`synth estimate`: a full run's requests, tokens, cost and time, extrapolated from a sample.

A sample run (the pipeline with `--limit N`, in its own directory) says, for every stage, how many
requests and tokens it needed per input row, filters' pass rates included; the full run is that
times the input's rows. Needed means answered: requests the cache answered count as much as those
sent (with the tokens they cost when they were bought), so estimating again from a sample the
cache already holds gives the same figures.

The range comes from the sample's own spread. For stages that follow the source without a global
stage between, shard i of every stage holds the rows of the source's batch i, and the estimate is
a ratio estimator over those shards (Cochran, Sampling Techniques, 6.3): total = (sum of y / sum of
x) * rows, with its standard error from the shards' deviations from that ratio and the finite
population correction, and the range is three standard errors either side (clamped at what the
sample itself spent). Stages after a global stage get the same relative error as the stage before
the global one, since how a global stage (dedup, a top-k) scales is not a ratio. The sample is the
input's first N rows: an input sorted by something that matters wants shuffling first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import SynthError
from .pricing import Pricing, money
from .store import StageDir

Z = 3.0  # standard errors either side: about 99.7% for a normal spread
QUANTITIES = ("requests", "prompt_tokens", "completion_tokens", "rows_in", "rows_out")


def _shard_values(marker: dict) -> dict[str, float]:
    counters = marker.get("counters") or {}
    return {
        # needed = sent + served from the cache (a re-estimate of a cached sample sees the same)
        "requests": counters.get("requests", 0) + counters.get("cache_hits", 0),
        "prompt_tokens": counters.get("prompt_tokens", 0) + counters.get("cached_prompt_tokens", 0),
        "completion_tokens": counters.get("completion_tokens", 0) + counters.get("cached_completion_tokens", 0),
        "rows_in": marker.get("rows_in", 0),
        "rows_out": marker.get("rows_out", 0),
        "sent_completion_tokens": counters.get("completion_tokens", 0),
    }


def shards(stage: StageDir) -> dict[int, dict[str, float]]:
    out = {}
    for index in stage.done_indices():
        try:
            out[index] = _shard_values(json.loads(stage.marker(index).read_text()))
        except (OSError, ValueError):
            continue
    return out


def ratio_estimate(xs: list[float], ys: list[float], population: float) -> tuple[float, float]:
    """(total, standard error) of y over a population of `population` x, from sampled units."""
    k, sx, sy = len(xs), sum(xs), sum(ys)
    if not sx:
        return 0.0, 0.0
    r = sy / sx
    total = r * population
    if k < 2:
        return total, abs(total)  # one unit says nothing about the spread: as wide as the estimate
    spread = sum((y - r * x) ** 2 for x, y in zip(xs, ys, strict=True)) / (k - 1)
    mean_x = sx / k
    correction = max(0.0, 1 - sx / population) if population else 0.0
    se = population * math.sqrt(spread / k * correction) / mean_x
    return total, se


def extrapolate(
    stages: list[tuple[str, str, StageDir, list[str]]],
    segments: list[list[int]],
    full_rows: int,
    sample_rows: int,
    wall_seconds: dict[str, float],
) -> list[dict]:
    """Per stage (label, key, folder, backends): needed requests, tokens and rows for the full
    input, each as {"estimate", "low", "high"}, and the sample's own figures."""
    results: list[dict] = []
    source = shards(stages[0][2])
    first_segment = set(segments[0]) if segments else {0}
    carried = 0.0  # relative error carried across a global stage
    for i, (label, key, folder, backends) in enumerate(stages):
        mine = shards(folder)
        entry: dict = {"label": label, "stage": key, "backends": backends, "sample": {}, "full": {}}
        for q in QUANTITIES:
            observed = sum(v[q] for v in mine.values())
            entry["sample"][q] = observed
            if i in first_segment:
                common = sorted(set(source) & set(mine))
                xs = [source[n]["rows_out"] for n in common]
                ys = [mine[n][q] for n in common]
                total, se = ratio_estimate(xs, ys, full_rows)
            else:
                total = observed * full_rows / sample_rows if sample_rows else 0.0
                se = total * carried
            low, high = max(observed, total - Z * se), max(observed, total + Z * se)
            entry["full"][q] = {"estimate": round(total), "low": math.floor(low), "high": math.ceil(high)}
        if i in first_segment and entry["full"]["rows_out"]["estimate"]:
            rows = entry["full"]["rows_out"]
            carried = (rows["high"] - rows["estimate"]) / (Z * rows["estimate"])
        sent = sum(v["sent_completion_tokens"] for v in mine.values())
        wall = wall_seconds.get(label, 0.0)
        entry["sample"]["tokens_per_second"] = sent / wall if sent and wall else None
        results.append(entry)
    return results


def add_time_and_cost(results: list[dict], pricing: dict[str, Pricing], speeds: dict[str, float]) -> dict:
    """Time at each stage's measured (or its backend's declared) generation speed, and cost at the
    backends' prices; returns the totals (each with its range)."""
    totals: dict = {"requests": [0, 0, 0], "tokens": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "cost": None}
    cost = [0.0, 0.0, 0.0]
    currency = None
    for entry in results:
        full = entry["full"]
        for n, bound in enumerate(("estimate", "low", "high")):
            totals["requests"][n] += full["requests"][bound]
            totals["tokens"][n] += full["prompt_tokens"][bound] + full["completion_tokens"][bound]
        declared = [speeds[b] for b in entry["backends"] if b in speeds]
        speed = declared[0] if declared else entry["sample"].get("tokens_per_second")
        if entry["backends"] and speed:
            entry["seconds"] = {b: full["completion_tokens"][b] / speed for b in ("estimate", "low", "high")}
            for n, bound in enumerate(("estimate", "low", "high")):
                totals["seconds"][n] += entry["seconds"][bound]
        priced = [pricing[b] for b in entry["backends"] if b in pricing]
        if priced and priced[0].per_server_hour is None:
            p = priced[0]
            currency = p.currency
            entry["cost"] = {
                b: p.token_cost(
                    {"prompt_tokens": full["prompt_tokens"][b], "completion_tokens": full["completion_tokens"][b]}
                )
                for b in ("estimate", "low", "high")
            }
            for n, bound in enumerate(("estimate", "low", "high")):
                cost[n] += entry["cost"][bound]
    hourly = [p for p in pricing.values() if p.per_server_hour is not None]
    if hourly and totals["seconds"][0]:
        currency = currency or hourly[0].currency
        for n in range(3):
            cost[n] += sum(p.hour_cost(totals["seconds"][n] / 3600) for p in hourly)
    if currency is not None:
        totals["cost"] = cost
        totals["currency"] = currency
    return totals


def estimate_lines(results: list[dict], totals: dict, full_rows: int, sample_rows: int) -> list[str]:
    def span(value: dict) -> str:
        return f"{value['estimate']:,} ({value['low']:,} - {value['high']:,})"

    lines = [f"estimate for {full_rows:,} input rows, from a sample of {sample_rows:,} (range: 3 standard errors)"]
    for entry in results:
        full = entry["full"]
        if not full["requests"]["estimate"]:
            rows = full["rows_out"]
            lines.append(f"  {entry['label']}: {span(full['rows_in'])} rows in, {span(rows)} out")
            continue
        lines.append(
            f"  {entry['label']}: {span(full['requests'])} requests, {span(full['prompt_tokens'])} prompt + "
            f"{span(full['completion_tokens'])} completion tokens; {span(full['rows_out'])} rows out"
        )
        if entry.get("cost"):
            c = entry["cost"]
            lines.append(f"    cost {c['estimate']:,.4f} ({c['low']:,.4f} - {c['high']:,.4f})")
    r, t, s = totals["requests"], totals["tokens"], totals["seconds"]
    lines.append(f"total: {r[0]:,} requests ({r[1]:,} - {r[2]:,}), {t[0]:,} tokens ({t[1]:,} - {t[2]:,})")
    if s[0]:
        lines.append(f"time: about {_hours(s[0])} ({_hours(s[1])} - {_hours(s[2])}) of generation, one stage at a time")
    else:
        lines.append(
            "time: not measured (the sample was answered from the cache): declare tokens_per_second on backends"
        )
    if totals["cost"] is not None:
        c, cur = totals["cost"], totals["currency"]
        lines.append(f"cost: {money(c[0], cur)} ({money(c[1], cur)} - {money(c[2], cur)})")
    else:
        lines.append("cost: no prices given (add pricing: to a backend)")
    return lines


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


def source_rows(pipeline, count: bool = False) -> int | None:
    """Rows the pipeline's source gives without --limit, when it can say; with `count`, read it to
    count them otherwise. None when unknown."""
    from .stages.base import StageContext

    source = pipeline.stages[0]
    context = StageContext(seed=pipeline.seed, label=source.label, index=0, base_dir=pipeline.base_dir)
    stage = source.cls(source.params, context)
    total = stage.total_rows(None)
    if total is None and count:
        total = sum(1 for _ in stage.iter_rows(None))
    return total


def first_batch_need(pipeline, rows: int | None) -> dict[str, float] | None:
    """What the first batch needs at least: its rows through the first stage that asks a model
    (one request a row, max_tokens for each of its n samples; prompts not counted), priced."""
    batch = min(pipeline.run.batch_size, rows) if rows else pipeline.run.batch_size
    for spec in pipeline.stages:
        backends = [b for b in spec.cls.backend_names(spec.params) if b in pipeline.backends]
        if not backends:
            continue
        most = getattr(spec.params, "max_tokens", 0) * getattr(spec.params, "n", 1)
        pricing = pipeline.backends[backends[0]].pricing
        per_out = pricing.worst_price()[1] if pricing is not None else 0.0
        return {
            "label": spec.label,
            "rows": batch,
            "requests": batch,
            "tokens": batch * most,
            "cost": batch * most * per_out,
        }
    return None


def budget_warnings(pipeline) -> list[str]:
    """`synth validate`: a budget below what the first batch needs (or one in money with no
    prices) would stop the run before it wrote a row."""
    budget = pipeline.run.budget
    if budget is None:
        return []
    try:
        rows = source_rows(pipeline)
    except (SynthError, OSError):  # an input validate cannot read is reported on its own
        rows = None
    found = []
    if budget.cost is not None and not any(b.pricing is not None for b in pipeline.backends.values()):
        found.append("run.budget.cost is set but no backend has pricing:, so nothing counts against it")
    need = first_batch_need(pipeline, rows)
    if need is None:
        return found
    for unit in ("requests", "tokens", "cost"):
        cap = getattr(budget, unit)
        if cap is not None and need[unit] and cap < need[unit]:
            found.append(
                f"run.budget.{unit} = {cap:,} is below what the first batch may need: {need['rows']:,} rows through "
                f"stage '{need['label']}' take {need['requests']:,} requests and up to {need['tokens']:,} completion "
                f"tokens (cost {need['cost']:,.4f}); the run would stop before writing a row (raise it, or lower "
                "run.batch_size)"
            )
    return found


def stage_wall(manifest: dict) -> dict[str, float]:
    return {s["label"]: s.get("wall_seconds", 0.0) for s in manifest.get("stages") or []}


def run_stage_dirs(root: Path) -> dict[str, StageDir]:
    return {p.name.split("-", 1)[1]: StageDir(p) for p in sorted((root / "stages").glob("*-*")) if p.is_dir()}
