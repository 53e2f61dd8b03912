"""synth report: the HTML page and its plots, rendered for real in headless Chromium."""

from __future__ import annotations

import html
import json
import shutil
import subprocess

import pytest

from synth import load_pipeline, run_pipeline
from synth.report import build_report

pytest.importorskip("matplotlib")

ROWS = [
    {
        "instruction": "q" * (5 + i),
        "response": "r" * (20 + 3 * i),
        "task_category": ["Math", "Coding & Debugging"][i % 2],
        "instruct_reward": -2.0 + i / 4,
        "min_neighbor_distance": i / 40,
    }
    for i in range(30)
]


@pytest.fixture
def report(write, tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_API_TOKEN", "tok-1234567890abcdef")
    path = write(
        "p.yaml",
        f"""
        name: reported
        description: "token tok-1234567890abcdef"
        stages:
          - stage: load
            rows: {json.dumps(ROWS)}
          - stage: sort
            by: response
            key: length
            descending: true
            top: 25
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    return build_report(tmp_path / "run")


def test_report_has_every_plot_the_run_supports(report):
    folder = report.parent
    expected = {
        "rows_per_stage",
        "dropped",
        "time",
        "length_instruction",
        "length_response",
        "categories",
        "score_instruct_reward",
        "dedup",
    }
    assert {p.stem for p in folder.glob("*.png")} == expected
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report.read_text()
    assert page.count("data:image/png;base64,") == len(expected)  # self-contained
    assert "reported" in page and "25 rows out" in page and "not_in_top_25: 5" in page
    assert "tok-1234567890abcdef" not in page


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,1400",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] == 1400 and pixels.shape[1] == 1100
    # A rendered page with plots has many colours; a blank or error page has a handful.
    colours = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 50


def test_sample_rows_are_picked_at_seeded_positions(report):
    import numpy as np

    from synth.runs import read_output

    page = report.read_text()
    seed = json.loads((report.parent.parent / "manifest.json").read_text())["seed"]  # the pipeline's
    assert f"3 of 25 rows, picked at random (seed {seed})" in page
    rows = read_output(report.parent.parent).to_pylist()
    positions = np.sort(np.random.default_rng(seed).choice(25, size=3, replace=False))
    sample = page.split("<h2>Sample rows</h2>")[1].split("<h2>Pipeline</h2>")[0]
    # each row as a conversation (the instruction, then the response as the assistant's turn)
    shown = [i for i, row in enumerate(rows) if f'<div class="text">{html.escape(row["response"])}</div>' in sample]
    assert shown == positions.tolist() and sample.count('<div class="turn assistant">') == 3


def test_a_truncated_output_file_is_named_with_the_command(report):
    from synth import RunError

    run = report.parent.parent
    (data,) = (run / "output").glob("*.parquet")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(RunError) as info:
        build_report(run)
    assert str(info.value).startswith(f"{run} is damaged: output/{data.name} is truncated or corrupt")
    assert str(info.value).endswith(f"recompute it with: synth run {run.parent / 'p.yaml'} -o {run}")
