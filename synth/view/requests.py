"""The LLM requests behind a row, read from the run's request cache.

A stage that prompts records in the row's `provenance` the model, template, sampling and the seed
of each request it sent (`seed`, or `seeds` for several: the judge's); Magpie's stages record them
in `gen_input_configs` / `gen_response_configs` as the released datasets do (the model under
`input_generator` / `output_generator`). Every seed derives from
the rendered prompt (`ctx.seed_for`), so the cache entries of that model with those seeds are the
row's requests: their rendered prompt or messages and the raw answers as the backend gave them.
The cache is opened read-only (the viewer never writes it) and looked up by seed, which scans the
table: fine for the thousands of answers of a run people read row by row; a cache of millions
answers in about a second.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

MAX_REQUESTS = 16  # per stage of one row


def _seeds(record: dict) -> list[int]:
    seeds = record.get("seeds") or ([record["seed"]] if isinstance(record.get("seed"), int) else [])
    return [s for s in seeds if isinstance(s, int)][:MAX_REQUESTS]


def _shown(kind: str, request: dict, response: dict) -> dict:
    answers = [g.get("text", "") for g in response.get("generations", [])]
    shown = {
        "kind": kind,
        "seed": request.get("seed"),
        "sampling": request.get("sampling"),
        "answers": answers,
        "finish_reasons": [g.get("finish_reason") for g in response.get("generations", [])],
    }
    if "prompt" in request:
        shown["prompt"] = request["prompt"]
    if "messages" in request:
        shown["messages"] = [{"role": r, "content": c} for r, c in request["messages"]]
    if "scored" in response:
        shown["score_tokens"] = len(response["scored"].get("token_logprobs", []))
    return shown


CONFIG_COLUMNS = {"gen_input_configs": "input_generator", "gen_response_configs": "output_generator"}


def records(row: dict, writer_of) -> dict[str, dict]:
    """stage label -> what it recorded of its requests: the row's provenance, and Magpie's config
    columns under the label of the stage that wrote them (`writer_of(column)`)."""
    found = {k: v for k, v in (row.get("provenance") or {}).items() if isinstance(v, dict)}
    for column, model in CONFIG_COLUMNS.items():
        record = row.get(column)
        if isinstance(record, dict) and isinstance(record.get(model), str):
            found.setdefault(writer_of(column) or column, {"model": record[model], **record})
    return found


def row_requests(run_root: Path, made: dict[str, dict]) -> list[dict]:
    """Per stage that made the row (`records`): what it recorded, and the requests the cache holds for it."""
    path = Path(run_root) / "cache.sqlite"
    db = None
    if path.exists():
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    steps = []
    try:
        for label, record in made.items():
            seeds, requests = _seeds(record), []
            model = record.get("model")
            if db is not None and seeds and isinstance(model, str):
                marks = ",".join("?" * len(seeds))
                found = db.execute(
                    f"SELECT kind, request, response FROM requests WHERE model = ? AND "
                    f"json_extract(request, '$.seed') IN ({marks}) LIMIT {MAX_REQUESTS}",
                    [model, *seeds],
                )
                for kind, request, response in found:
                    try:
                        requests.append(_shown(kind, json.loads(request), json.loads(response)))
                    except (ValueError, TypeError, AttributeError):
                        continue  # a damaged entry: the row's record still shows
                order = {s: i for i, s in enumerate(seeds)}
                requests.sort(key=lambda r: order.get(r["seed"], len(order)))
            steps.append({"stage": label, "record": record, "requests": requests})
    finally:
        if db is not None:
            db.close()
    return steps
