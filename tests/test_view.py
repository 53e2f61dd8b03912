"""`synth view`'s data layer, server and labels, and the report's row rendering, on a small run
the real runner writes (no model: a load and a filter stage, a handful of preference rows, one
of them with a `<script>` in its chosen answer). The browser story is tests/test_view_browser.py."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from synth import load_pipeline, run_pipeline
from synth.errors import RunError
from synth.labels import FILE, Labels
from synth.report import report_page
from synth.view.data import Query, RunView
from synth.view.server import ViewServer

from .pipeline_runs import synth_cli

SCRIPT = "<script>window.__pwned = 1</script>"
ROWS = [
    {
        "instruction": f"Question {i}?",
        "chosen": f"Good answer {i} with detail.",
        "rejected": f"Bad answer {i}.",
        "score_chosen": float(i),
        "score_rejected": 0.5,
        "topic": "math" if i % 2 else "code",
    }
    for i in range(8)
]
ROWS[3]["chosen"] = f"Here is markup: {SCRIPT} and ```print('x')```"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    stages = f"""name: viewed
seed: 3
run: {{batch_size: 3}}
stages:
  - stage: load
    rows: {json.dumps(ROWS)}
  - stage: filter
    where: ["score_chosen > 1.5"]
"""
    (folder / "p.yaml").write_text(stages)
    run_pipeline(load_pipeline(folder / "p.yaml"), folder / "run")
    return folder / "run"


def test_pages_filters_search_and_sort_read_the_shards(run_dir):
    view = RunView(run_dir)
    assert view.names() == ["load", "filter", "output"]
    first = view.page("load", Query(limit=3))
    assert first["total"] == 8 and [r["position"] for r in first["rows"]] == [0, 1, 2]
    assert [r["row"]["instruction"] for r in view.page("load", Query(offset=6, limit=5))["rows"]] == [
        "Question 6?",
        "Question 7?",
    ]
    math = view.page("output", Query(filters=[("topic", "eq", "math")]))
    assert math["total"] == 3 and {r["row"]["instruction"] for r in math["rows"]} == {
        "Question 3?",
        "Question 5?",
        "Question 7?",
    }
    ranged = view.page("load", Query(filters=[("score_chosen", "ge", "2"), ("score_chosen", "lt", "4")]))
    assert sorted(r["row"]["score_chosen"] for r in ranged["rows"]) == [2.0, 3.0]
    found = view.page("load", Query(search="MARKUP"))  # every text column, any case
    assert found["total"] == 1 and found["rows"][0]["position"] == 3
    # without the count, the scan stops at the page's rows: the total is known only short of a page
    first = view.page("load", Query(search="answer", limit=2, count=False))
    assert first["total"] is None and [r["position"] for r in first["rows"]] == [0, 1]
    assert view.page("load", Query(search="markup", limit=2, count=False))["total"] == 1
    top = view.page("output", Query(sort="score_chosen", descending=True, limit=2))
    assert [r["row"]["score_chosen"] for r in top["rows"]] == [7.0, 6.0] and top["total"] == 6
    math = Query(filters=[("topic", "eq", "math")], sort="score_chosen", limit=2)
    assert [r["row"]["score_chosen"] for r in view.page("output", math)["rows"]] == [3.0, 5.0]
    assert view.page("output", math)["total"] == 3
    with pytest.raises(RunError, match="compares numbers"):
        view.page("load", Query(filters=[("score_chosen", "gt", "high")]))
    with pytest.raises(RunError, match="no stage 'nope'"):
        view.page("nope", Query())


def test_dropped_rows_and_lineage_follow_the_source_row(run_dir):
    view = RunView(run_dir)
    dropped = view.dropped("filter", 0, 10)
    assert len(dropped["rows"]) == 2 and {d["reason"] for d in dropped["rows"]} == {"score_chosen > 1.5"}
    assert {json.loads(d["row"])["instruction"] for d in dropped["rows"]} == {"Question 0?", "Question 1?"}
    steps = view.lineage("output", 0)  # Question 2, kept: in every stage once
    assert [s["stage"] for s in steps] == ["load", "filter", "output"]
    assert [s["rows"][0]["position"] for s in steps] == [2, 0, 0]


def test_labels_are_saved_in_the_run_and_drop_rows_from_the_export(run_dir, tmp_path):
    view = RunView(run_dir)
    view.label("output", 1, "bad", "chosen is wrong")  # Question 3
    view.label("load", 4, "good", "")
    view.label("load", 5, "bad", "")
    view.label("load", 5, None, "")  # cleared again
    labels = Labels(run_dir)
    assert {(r["stage"], r["label"]) for r in labels.records} == {("output", "bad"), ("load", "good")}
    assert pq.read_table(run_dir / FILE).num_rows == 2
    page = view.page("output", Query(limit=3))
    assert [r["label"] for r in page["rows"]] == [
        None,
        {"label": "bad", "note": "chosen is wrong"},
        {"label": "good", "note": "", "from": "load"},  # Question 4's source row carries it
    ]
    # a resume (the run is complete: nothing to do) leaves the labels alone
    run_pipeline(load_pipeline(run_dir.parent / "p.yaml"), run_dir)
    assert len(Labels(run_dir)) == 2
    shown = synth_cli("inspect", str(run_dir), "-n", "2")
    assert shown.returncode == 0 and "2 labelled: 1 good, 1 bad" in shown.stderr and "labelled bad" in shown.stderr
    done = synth_cli(
        "export", str(run_dir), "-o", str(tmp_path / "out"), "--format", "preference", "--drop-labeled", "bad"
    )
    assert done.returncode == 0, done.stderr
    prompts = [
        m[-1]["content"] for m in pq.read_table(tmp_path / "out" / "train-00000-of-00001.parquet")["prompt"].to_pylist()
    ]
    assert len(prompts) == 5 and "Question 3?" not in prompts and "Question 4?" in prompts


def test_the_server_escapes_serves_nothing_else_and_writes_only_labels(run_dir):
    before = [p.name for p in run_dir.iterdir()]
    server = ViewServer(run_dir, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = server.url

    def get(path, **headers):
        request = urllib.request.Request(base + path.lstrip("/"), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.headers, answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read().decode()

    try:
        status, headers, page = get("/")
        assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"] and "<script src=" in page
        status, _, body = get("/api/rows?stage=load&q=markup")
        assert status == 200 and json.loads(body)["rows"][0]["row"]["chosen"].count(SCRIPT) == 1  # as data, in JSON
        for path in (
            "/../manifest.json",
            "/cache.sqlite",
            "/static/../server.py",
            "/app.js/../../p.yaml",
            "/api/rows?stage=../../etc",
            "/api/row?stage=load&position=99",
        ):
            status, _, body = get(path)
            assert status in (400, 404) and set(json.loads(body)) == {"error"}, path
        assert get("/", Host="evil.example:80")[0] == 403  # DNS rebinding
        label = urllib.request.Request(
            base + "api/label",
            data=b'{"stage": "load", "position": 0, "label": "good"}',
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError, match="415"):
            urllib.request.urlopen(label, timeout=30)
        label.headers = {"Content-type": "application/json", "Origin": "http://evil.example"}
        with pytest.raises(urllib.error.HTTPError, match="403"):  # a page elsewhere posting here
            urllib.request.urlopen(label, timeout=30)
        for value in ("good", None):  # from the page itself: set, then cleared again
            body = json.dumps({"stage": "load", "position": 0, "label": value}).encode()
            own = urllib.request.Request(
                base + "api/label",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "Origin": base.rstrip("/")},
            )
            with urllib.request.urlopen(own, timeout=30) as answer:
                assert json.loads(answer.read())["label"] == (value and {"label": "good", "note": ""})
            assert len(Labels(run_dir)) == (3 if value else 2)
        status, headers, report = get("/report")
        assert status == 200 and "script-src" not in headers["Content-Security-Policy"]  # no script at all
        assert 'class="pair"' in report and 'href="/#stage=' in report  # pairs side by side, plots link to the view
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(before)  # read-only but for labels


def test_the_report_shows_pairs_side_by_side_escaped(run_dir):
    page = report_page(run_dir, sample_rows=6)
    assert SCRIPT not in page and page.count('<div class="pair">') == 6
    assert "Here is markup: &lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "<mark>" in page and "score 3.0" in page  # the differing words marked; the sides' scores
    assert "2 labelled: 1 good, 1 bad" in page  # from the labels test above
    assert (
        '<strong>labelled bad</strong>: chosen is wrong</p><div class="prompt"><div class="role">prompt (instruction)'
        '</div><div class="text">Question 3?' in page
    )
