"""`synth estimate`: a full run's requests, tokens, cost and time, extrapolated from a sample.

A sample run (the pipeline with `--limit N`, in its own directory) says, for every stage, which
share of its rows it passed on and how many requests and tokens it needed per row it took in;
the full run follows the rows down the stages from the whole input. Needed means answered:
requests the cache answered count as much as those sent (with the tokens they cost when they
were bought), so estimating again from a sample the cache already holds gives the same figures.

Each figure has a range. A stage's share of rows passed is a proportion: its range is the Wilson
score interval at three standard errors, which stays honest for small samples and for shares of
0 or 1 (a sample where a filter kept every row does not promise it always will). Two exceptions:
the source gives the whole input, and a stage that asks a model and dropped no row of the sample
is taken to pass every row (it drops rows only when they fail, and failed rows are retried). Requests and
tokens per row are ratios over the sample's shards (each shard a batch of rows), with a range of
as many standard errors of the ratio as Student's t asks for the same confidence from that many
shards (`synth estimate` cuts its sample into ten). Shards that all agree give a range of no width:
a sample of a few rows can miss a spread the full input has. A stage's rows in range over the previous stage's rows out,
and its requests and tokens over its rows in times the per-row range. A stage that gave out more
rows than it took (n samples a row) scales by its ratio instead. Global stages (dedup, a top-k)
are taken to pass the share they passed in the sample, which for dedup is a guess: duplicates
grow with the data. The sample is the input's first N rows: an input sorted by something that
matters wants shuffling first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import SynthError
from .pricing import Pricing, money
from .store import StageDir

Z = 3.0  # standard errors either side: about 99.7% for a normal spread
# Student's t for the same 99.7% when the spread comes from k shards (k - 1 degrees of freedom):
# a handful of shards says little about their spread, so the range widens. Beyond 30: Z.
T = {1: 212.2, 2: 19.2, 3: 9.2, 4: 6.6, 5: 5.5, 6: 4.9, 7: 4.5, 8: 4.3, 9: 4.1, 10: 3.96, 15: 3.59, 20: 3.42}


def t_factor(k: int) -> float:
    """Standard errors either side for a spread measured over k shards."""
    if k - 1 >= 30:
        return Z
    return next(T[d] for d in sorted(T, reverse=True) if d <= max(1, k - 1))


PER_ROW = ("requests", "prompt_tokens", "completion_tokens")
BOUNDS = ("estimate", "low", "high")


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


def shards(stage: StageDir) -> list[dict[str, float]]:
    out = []
    for index in stage.done_indices():
        try:
            out.append(_shard_values(json.loads(stage.marker(index).read_text())))
        except (OSError, ValueError):
            continue
    return out


def wilson(passed: float, n: float, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion passed/n (0..1 when nothing was seen)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, passed / n)
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def ratio(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(sum y / sum x, its standard error) over sampled units, e.g. tokens per row over shards
    (Cochran, Sampling Techniques, 6.3, without the finite population correction). With one
    unit there is no spread to go by: the error is the ratio itself."""
    k, sx, sy = len(xs), sum(xs), sum(ys)
    if not sx:
        return 0.0, 0.0
    r = sy / sx
    if k < 2:
        return r, r
    spread = sum((y - r * x) ** 2 for x, y in zip(xs, ys, strict=True)) / (k - 1)
    return r, math.sqrt(spread / k) / (sx / k)


def extrapolate(
    stages: list[tuple[str, str, StageDir, list[str]]], full_rows: int, wall_seconds: dict[str, float]
) -> list[dict]:
    """Per stage (label, key, folder, backends): its rows in and out and the requests and tokens it
    needs for the full input, each as {"estimate", "low", "high"}, and the sample's own figures."""
    results: list[dict] = []
    rows_in = {"estimate": float(full_rows), "low": float(full_rows), "high": float(full_rows)}
    for label, key, folder, backends in stages:
        mine = shards(folder)
        seen = {q: sum(v[q] for v in mine) for q in (*PER_ROW, "rows_in", "rows_out")}
        entry: dict = {"label": label, "stage": key, "backends": backends, "sample": dict(seen), "full": {}}
        entry["full"]["rows_in"] = _rounded(rows_in, seen["rows_in"])
        fed = [v for v in mine if v["rows_in"]]  # shards a filter before emptied say nothing per row
        xs = [v["rows_in"] for v in fed]
        for q in PER_ROW:
            r, se = ratio(xs, [v[q] for v in fed])
            low, high = max(0.0, r - t_factor(len(xs)) * se), r + t_factor(len(xs)) * se
            if seen["rows_in"] == 0 and q == "requests" and backends:
                high = 1.0  # no row reached it in the sample: at least say a request a row may follow
                entry["unmeasured"] = True
            full = {"estimate": rows_in["estimate"] * r, "low": rows_in["low"] * low, "high": rows_in["high"] * high}
            entry["full"][q] = _rounded(full, seen[q])
        if not results or (backends and seen["rows_in"] and seen["rows_out"] == seen["rows_in"]):
            p = p_low = p_high = 1.0  # the source gives the input; a model stage that dropped nothing passes all
        elif seen["rows_out"] <= seen["rows_in"]:
            p_low, p_high = wilson(seen["rows_out"], seen["rows_in"])
            p = seen["rows_out"] / seen["rows_in"] if seen["rows_in"] else 0.0
        else:  # more rows out than in (n samples a row): a ratio
            p, se = ratio(xs, [v["rows_out"] for v in fed])
            p_low, p_high = max(0.0, p - t_factor(len(xs)) * se), p + t_factor(len(xs)) * se
        rows_in = {"estimate": rows_in["estimate"] * p, "low": rows_in["low"] * p_low, "high": rows_in["high"] * p_high}
        entry["full"]["rows_out"] = _rounded(rows_in, seen["rows_out"])
        sent = sum(v["sent_completion_tokens"] for v in mine)
        wall = wall_seconds.get(label, 0.0)
        entry["sample"]["tokens_per_second"] = sent / wall if sent and wall else None
        results.append(entry)
    return results


def unmeasured(results: list[dict]) -> list[str]:
    """Stages that ask a model but no sample row reached: nothing says what they cost per row."""
    return [e["label"] for e in results if e.get("unmeasured")]


def _rounded(value: dict[str, float], observed: float) -> dict[str, int]:
    """A range as whole numbers, never below what the sample itself already took."""
    return {
        "estimate": round(max(value["estimate"], observed)),
        "low": math.floor(max(value["low"], observed)),
        "high": math.ceil(max(value["high"], observed)),
    }


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

    lines = [
        f"estimate for {full_rows:,} input rows, from a sample of {sample_rows:,} (ranges at about 99.7% confidence)"
    ]
    for entry in results:
        full = entry["full"]
        if entry.get("unmeasured"):
            lines.append(f"  {entry['label']}: no sample row reached it: a larger --sample measures it")
        if not full["requests"]["high"]:
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
    return f"{seconds / 3600:,.1f} h" if seconds >= 7200 else f"{seconds / 60:,.1f} min"


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
