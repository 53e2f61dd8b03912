"""`synth report RUN`: one self-contained HTML page about a run, plus its plots as PNG files.

Rows per stage, why rows were dropped, length histograms, task categories, score and dedup
neighbour-distance distributions, tokens and time per stage, and a few sample rows, shown as
people read them (a preference pair side by side, a conversation: synth/rowhtml.py) with their
labels. The PNGs are embedded in the page as data URIs, so the page can be mailed or attached as
one file; `synth view` serves the same page with each plot linked to the rows behind it.

It reads a run of millions of rows in seconds: the row count comes from the Parquet footers, the
histograms and category counts from polars streaming scans of only the columns they plot (every
value, not a sample; a column of text becomes a column of lengths as it is read), and the sample rows are picked
at random positions with the run's seed, reading only the row groups that hold them."""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from .errors import MissingDependency
from .inspect_run import measure, measures
from .labels import Labels, row_key
from .rowhtml import STYLE as ROW_STYLE
from .rowhtml import row_html
from .runs import RowFiles, Run, number_type, text_type
from .scrub import scrub, without_yaml_comments
from .spend import spend_lines
from .store import events_text

SCORE_HINTS = ("reward", "score")


def _wall(stage: dict) -> float:
    """Wall-clock seconds of a stage (manifests before 0.1 had only the summed batch times)."""
    return stage.get("wall_seconds", stage.get("seconds", 0))


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency("matplotlib", "report", "synth report") from None
    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buffer.getvalue()


def _bar(labels, series: dict[str, list], title: str, xlabel: str = "", horizontal: bool = False) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(labels)) if horizontal else 3.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        positions = [p + i * width for p in range(len(labels))]
        (ax.barh if horizontal else ax.bar)(positions, values, width, label=name)
    ticks = [p + width * (len(series) - 1) / 2 for p in range(len(labels))]
    if horizontal:  # long reasons ("input_quality: input_quality in [good, excellent]") wrap, not squeeze
        ax.set_yticks(ticks, [textwrap.fill(str(label), 32) for label in labels], fontsize=9)
        ax.invert_yaxis()
    else:
        ax.set_xticks(ticks, labels, rotation=30, ha="right")
    if len(series) > 1:
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return _png(fig)


def _hist(values: np.ndarray, title: str, xlabel: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(values, bins=min(40, max(5, len(values) // 3)))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return _png(fig)


def _column_values(rows: RowFiles) -> tuple[dict[str, np.ndarray], list[tuple[str, int]]]:
    """The plotted columns' values (text columns as lengths), nulls left out, from one streaming
    scan of those columns; and the task categories with their counts, most common first."""
    schema = rows.schema
    keys = {}  # plot -> column of `measures`
    for column in ("instruction", "response", "chosen", "rejected"):
        if column in schema.names and text_type(schema.field(column).type):
            keys[f"length_{column}"] = column
    for f in schema:
        if number_type(f.type) and any(h in f.name for h in SCORE_HINTS):
            keys[f"score_{f.name}"] = f.name
        elif number_type(f.type) and f.name == "min_neighbor_distance":
            keys["dedup"] = f.name
    values: dict[str, np.ndarray] = {}
    if keys and rows.num_rows:
        frame = measures(rows, list(dict.fromkeys(keys.values())), hashes=False)
        for key, column in keys.items():
            kind = "len" if key.startswith("length_") else "value"
            values[key] = frame[measure(kind, column)].drop_nulls().to_numpy()
    categories: list[tuple[str, int]] = []
    if "task_category" in schema.names and text_type(schema.field("task_category").type) and rows.num_rows:
        counts = (
            rows.scan(["task_category"])
            .drop_nulls()
            .group_by("task_category")
            .len()
            .sort(["len", "task_category"], descending=[True, False])
            .collect(engine="streaming")
        )
        categories = list(counts.iter_rows())
    return values, categories


def _column_plots(rows: RowFiles) -> dict[str, tuple[str, bytes]]:
    plots: dict[str, tuple[str, bytes]] = {}
    values, categories = _column_values(rows)
    for column in ("instruction", "response", "chosen", "rejected"):
        lengths = values.get(f"length_{column}")
        if lengths is not None and len(lengths):
            plots[f"length_{column}"] = (
                f"Length of `{column}` in characters",
                _hist(lengths, f"{column} length", "characters"),
            )
    if categories:
        plots["categories"] = (
            "Task categories",
            _bar([k for k, _ in categories], {"rows": [v for _, v in categories]}, "Task categories", horizontal=True),
        )
    for key, column in ((k, k.removeprefix("score_")) for k in values if k.startswith("score_")):
        if len(values[key]):
            plots[key] = (f"Distribution of `{column}`", _hist(values[key], column, column))
    if "dedup" in values and len(values["dedup"]):
        plots["dedup"] = (
            "Dedup: distance to the nearest neighbour",
            _hist(values["dedup"], "min_neighbor_distance", "distance"),
        )
    return plots


def make_plots(manifest: dict, rows: RowFiles) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes), for what this run has."""
    plots: dict[str, tuple[str, bytes]] = {}
    stages = manifest.get("stages") or []
    if stages:
        labels = [s["label"] for s in stages]
        plots["rows_per_stage"] = (
            "Rows into and out of each stage",
            _bar(
                labels, {"in": [s["rows_in"] for s in stages], "out": [s["rows_out"] for s in stages]}, "Rows per stage"
            ),
        )
        reasons: Counter = Counter()
        for s in stages:
            for k, v in s.get("filtered", {}).items():
                reasons[f"{s['label']}: {k}"] += v
            for k, v in s.get("failed", {}).items():
                reasons[f"{s['label']}: failed {k}"] += v
        if reasons:
            top = reasons.most_common(20)
            plots["dropped"] = (
                "Rows dropped, by stage and reason",
                _bar([k for k, _ in top], {"rows": [v for _, v in top]}, "Dropped rows", horizontal=True),
            )
        tokens = [s.get("counters", {}).get("completion_tokens", 0) for s in stages]
        if any(tokens):
            plots["tokens"] = ("Generated tokens per stage", _bar(labels, {"tokens": tokens}, "Tokens generated"))
        plots["time"] = (
            "Processing time per stage (summed over batches)",
            _bar(labels, {"seconds": [_wall(s) for s in stages]}, "Wall-clock seconds per stage"),
        )
    plots.update(_column_plots(rows))
    return plots


def _table_html(stages: list[dict]) -> str:
    head = (
        "<tr><th>stage</th><th>in</th><th>out</th><th>dropped (why)</th><th>events</th><th>requests</th><th>cached</th>"
        "<th>tokens out</th><th>wall s</th><th>busy s</th></tr>"
    )
    body = []
    for s in stages:
        c = s.get("counters", {})
        why = {**s.get("filtered", {}), **{f"failed {k}": v for k, v in s.get("failed", {}).items()}}
        body.append(
            f"<tr><td>{html.escape(s['label'])} <small>({html.escape(s['stage'])})</small></td>"
            f"<td>{s['rows_in']:,}</td><td>{s['rows_out']:,}</td>"
            f"<td>{html.escape(', '.join(f'{k}: {v:,}' for k, v in sorted(why.items())) or '-')}</td>"
            f"<td>{html.escape(events_text(s))}</td>"
            f"<td>{c.get('requests', 0):,}</td><td>{c.get('cache_hits', 0):,}</td>"
            f"<td>{c.get('completion_tokens', 0):,}</td><td>{_wall(s):,.1f}</td>"
            f"<td>{s.get('busy_seconds', s.get('seconds', 0)):,.1f}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _spend_html(manifest: dict) -> str:
    """Requests, tokens and cost per stage and session (synth/spend.py), as the summary shows them."""
    lines = spend_lines(manifest)
    return f"<h2>Usage and cost</h2><pre>{html.escape(chr(10).join(lines))}</pre>" if lines else ""


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(4){text-align:left}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:1em}figure{margin:0}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto;white-space:pre-wrap}h1 small{color:#777;font-size:60%}"""


def _view_link(name: str, manifest: dict, view_url: str) -> str:
    """Where the viewer shows the rows behind a plot (the page's hash: stage, tab, sort)."""
    stages = manifest.get("stages") or []
    params: dict[str, str] = {"stage": "output"}
    if name == "dropped" and stages:
        most = max(stages, key=lambda s: sum(s.get("filtered", {}).values()) + sum(s.get("failed", {}).values()))
        params = {"stage": most["label"], "tab": "dropped"}
    elif name.startswith("score_") or name == "dedup":
        params["sort"] = name.removeprefix("score_") if name != "dedup" else "min_neighbor_distance"
        params["desc"] = "1" if name != "dedup" else ""
    elif name == "categories":
        params["sort"] = "task_category"
    elif name in ("rows_per_stage", "tokens", "time") and stages:
        params = {"stage": stages[-1]["label"]}
    return view_url + "#" + urlencode({k: v for k, v in params.items() if v})


def report_page(run_dir: str | Path, sample_rows: int = 3, view_url: str | None = None) -> str:
    """The report as one page (plots inline); with `view_url` (served by `synth view`), each plot
    links to the viewer's rows behind it."""
    return _report(Path(run_dir), sample_rows, view_url)[0]


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, sample_rows: int = 3) -> Path:
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    page, plots = _report(run_dir, sample_rows, None)
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, png) in plots.items():
        (out / f"{name}.png").write_bytes(png)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _report(run_dir: Path, sample_rows: int, view_url: str | None) -> tuple[str, dict[str, tuple[str, bytes]]]:
    run = Run(run_dir)
    manifest = run.manifest
    rows = run.rows()
    plots = make_plots(manifest, rows)
    figures = []
    for name, (caption, png) in plots.items():
        data = base64.b64encode(png).decode()
        image = f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        if view_url is not None:
            image = f'<a href="{html.escape(_view_link(name, manifest, view_url))}" target="_top">{image}</a>'
        figures.append(f'<figure id="{name}">{image}<figcaption>{html.escape(caption)}</figcaption></figure>')
    seed = manifest.get("seed") if isinstance(manifest.get("seed"), int) else 0
    picked = rows.sample(sample_rows, seed)
    labels = Labels(run_dir)
    marks = labels.of("output")
    samples = "".join(row_html(row, marks.get(row_key(row))) for row in picked)
    picked_how = (
        f"all {rows.num_rows:,} rows"
        if len(picked) == rows.num_rows
        else f"{len(picked)} of {rows.num_rows:,} rows, picked at random (seed {seed})"
    )
    sessions = manifest.get("sessions", [])
    name = html.escape(manifest["name"])
    summary = (
        f"status: {html.escape(run.status)}, {rows.num_rows:,} rows out, "
        f"{len(sessions)} session(s), {sum(s.get('seconds', 0) for s in sessions):,.1f} s"
        + (f", {html.escape(labels.summary())}" if len(labels) else "")
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>synth report: {name}</title>
<style>{STYLE}{ROW_STYLE}</style></head><body>
<h1>{name} <small>{summary}</small></h1>
<h2>Stages</h2>{_table_html(manifest.get("stages") or [])}
{_spend_html(manifest)}
<h2>Plots</h2><div class="plots">{"".join(figures) or "<p>no plots: the run has no rows yet</p>"}</div>
<h2>Sample rows</h2><p>{picked_how}</p>{samples}
<h2>Pipeline</h2><pre>{html.escape(scrub(without_yaml_comments(manifest.get("config", ""))))}</pre>
</body></html>"""
    return scrub(page), plots
