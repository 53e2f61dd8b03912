"""Issue 33, each case as a user met it: a run directory taken over by another pipeline, a good
output replaced by a failed run, an empty prompt sent, malformed answers not retried, silence on a
dead server, tracebacks, wrong reasons, a key at rest, SIGTERM. Real files, a real server behind
synth.testing.FaultProxy."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from synth import BackendError, RunError, load_pipeline, read_output, run_pipeline
from synth.cli import main
from synth.llm.openai import OpenAIBackend
from synth.llm.specs import OpenAISpec
from synth.testing import free_port

from .conftest import REPO
from .test_hardening import _cached, _generate_pipeline, run_with_file_size_limit

# ---- a run directory belongs to the pipeline that made it ----


def _load_pipeline(write, name: str, rows: int, extra: str = "") -> object:
    data = "".join(f'{{"a": "{i}"}}\n' for i in range(rows))
    write(f"{name}.jsonl", data)
    return write(f"{name}.yaml", f"stages:\n  - stage: load\n    path: {name.split('/')[-1]}.jsonl\n{extra}")


def test_a_run_directory_of_another_pipeline_is_refused(write, tmp_path):
    mine = _load_pipeline(write, "mine", 7)
    other = _load_pipeline(write, "other", 3)
    run_dir = tmp_path / "runs" / "x"
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(mine), "-o", str(run_dir), "-q"]).exit_code == 0
    result = runner.invoke(main, ["run", str(other), "-o", str(run_dir), "-q"])
    assert result.exit_code == 1, result.output
    assert f"{run_dir} holds a run of another pipeline, 'mine'" in result.output
    assert "(complete, 7 rows in output/)" in result.output
    assert "another run directory with -o" in result.output and "--overwrite" in result.output
    assert read_output(run_dir).num_rows == 7  # untouched
    assert json.loads((run_dir / "manifest.json").read_text())["name"] == "mine"

    # The same name from another file that shares no stage with the run is refused too.
    (tmp_path / "elsewhere").mkdir()
    twin = _load_pipeline(write, "elsewhere/mine", 2)
    result = runner.invoke(main, ["run", str(twin), "-o", str(run_dir), "-q"])
    assert result.exit_code == 1 and "shares no stage with" in result.output

    # --overwrite is the way to take it over.
    result = runner.invoke(main, ["run", str(other), "-o", str(run_dir), "--overwrite", "-q"])
    assert result.exit_code == 0, result.output
    assert read_output(run_dir).num_rows == 3


def test_an_edited_pipeline_resumes_and_loses_the_folders_of_stages_it_dropped(write, tmp_path):
    write("t.jinja", "say {{ a }}")
    path = _load_pipeline(write, "p", 4, "  - stage: template\n    template: t.jinja\n    output: prompt\n")
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path), run_dir)
    assert (run_dir / "stages" / "01-template").is_dir()
    path.write_text(path.read_text().split("  - stage: template")[0] + "  - stage: sample\n    n: 2\n")
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run_dir / "stages").iterdir()) == ["00-load", "01-sample"]
    assert "01-template" in result.output.split("Run summary")[-1]  # listed in the summary
    assert read_output(run_dir).num_rows == 2


# ---- an output is replaced only by a run that succeeds ----


def test_a_failed_run_leaves_the_previous_output_in_place(write, tmp_path):
    write("t.jinja", "Tell me about {{ a }}.")
    data = write("in.csv", "a\n" + "".join(f"topic {i}\n" for i in range(12)))
    path = write(
        "p.yaml",
        "stages:\n  - stage: load\n    path: in.csv\n  - stage: template\n    template: t.jinja\n    output: prompt\n",
    )
    run_dir = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(path), "-o", str(run_dir), "-q"]).exit_code == 0
    assert read_output(run_dir).num_rows == 12
    data.write_text("b\n" + "".join(f"topic {i}\n" for i in range(12)))  # every row now fails its template
    result = runner.invoke(main, ["run", str(path), "-o", str(run_dir), "-q"])
    assert result.exit_code == 1
    assert "failed on 12 of 12 rows" in result.output
    assert "the previous output (12 rows) is left in place" in result.output
    table = read_output(run_dir)
    assert table.num_rows == 12 and table.column("prompt")[0].as_py() == "Tell me about topic 0."
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["output"]["rows"] == 12

    # The input path became a folder of notes: refused before anything runs, not 12 failed rows.
    data.unlink()
    write("in.csv/notes.txt", "remember to buy milk\n")
    result = runner.invoke(main, ["run", str(path), "-o", str(run_dir), "-q"])
    assert result.exit_code == 2 and "in.csv holds no data files (it has: notes.txt)" in result.output
    assert read_output(run_dir).num_rows == 12


# ---- an empty prompt is never sent ----


def _dropped(run_dir, stage: str = "01-generate") -> list[dict]:
    files = sorted((run_dir / "stages" / stage / ".synth").glob("*.dropped.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def test_an_empty_prompt_fails_its_row_naming_the_template_and_is_never_sent(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url, rows=4)
    path.write_text(path.read_text().replace("batch_size: 3", "batch_size: 3, max_failure_rate: 1.0"))
    question = (tmp_path / "q.jinja").read_text()
    write("q.jinja", "{% if topic == 'cooking' %}" + question + "{% endif %}")  # empty for 3 of 4 rows
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert result.output_rows == 1 and proxy.forwarded == 1  # only the row with a prompt was sent
    assert result.manifest["stages"][1]["failed"] == {"template_error": 3}
    detail = _dropped(tmp_path / "run")[0]["detail"]
    assert "template 'q.jinja' rendered an empty prompt" in detail

    # A prompt column that is empty never reaches the server either, and a run of nothing but fails.
    text = path.read_text().replace("template: q.jinja", "prompt_column: topic").replace("max_failure_rate: 1.0", "")
    path.write_text(re.sub(r"rows: \[.*\]", "rows: [{topic: ''}, {topic: '  '}, {topic: ''}]", text))
    with pytest.raises(RunError, match=r"failed on 3 of 3 rows .*request_failed:empty_prompt: 3"):
        run_pipeline(load_pipeline(path), tmp_path / "run2")
    assert proxy.forwarded == 1
    assert "the prompt is empty: nothing was sent" in _dropped(tmp_path / "run2")[0]["detail"]
    path.write_text(path.read_text().replace("prompt_column: topic", "prompt_column: topic\n    mode: chat"))
    with pytest.raises(RunError, match=r"request_failed:empty_prompt: 3"):  # a chat turn without content
        run_pipeline(load_pipeline(path), tmp_path / "run3")
    assert proxy.forwarded == 1
    assert "the messages have no content" in _dropped(tmp_path / "run3")[0]["detail"]


# ---- a malformed 200 is a transient fault ----


@pytest.mark.parametrize("fault", ["no_choices", "null_text"])
def test_a_malformed_answer_is_retried_like_a_server_error(fault, proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url)
    proxy.empty_next(3, null_text=fault == "null_text")  # 3 of 6 answers hold no text
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert result.output_rows == 6 and result.manifest["status"] == "complete"
    assert proxy.injected == 3 and proxy.forwarded == 6
    assert _cached(tmp_path / "run") == 6


def test_a_finished_run_with_failed_rows_says_how_to_retry_them(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url)
    path.write_text(path.read_text().replace("batch_size: 3", "batch_size: 3, max_failure_rate: 0.5"))
    proxy.fail_next(2, status=400, message="prompt rejected")  # 400s fail their row, no retry
    run_dir = tmp_path / "run"
    command = ["run", str(path), "-o", str(run_dir), "-q"]
    first = CliRunner().invoke(main, command)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, command)  # a plain re-run keeps them, and says so
    assert again.exit_code == 0 and proxy.forwarded == 4
    last = "".join(again.output[again.output.rindex("done:") :].split())  # the last line, however wrapped
    assert "4rowsin" in last and "2row(s)failedandareleftout" in last
    assert f"synthrun{path}-o{run_dir}--retry-failed".replace(" ", "") in last


# ---- SIGTERM stops a run as Ctrl-C does ----


def test_sigterm_leaves_the_manifest_interrupted_and_the_run_resumes(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url)
    proxy.set_delay(30)  # requests hang: the run is in the middle of its work
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run_dir), "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while proxy.requests == 0 and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: finished work is saved" in stderr and "Traceback" not in stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["sessions"][-1]["status"] == "interrupted"
    proxy.set_delay(0)
    assert run_pipeline(load_pipeline(path), run_dir).output_rows == 6


# ---- one line, never a traceback ----


def test_a_full_disk_while_the_cache_commits_is_one_line(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url)
    path.write_text(path.read_text().replace("batch_size: 3", "batch_size: 1"))  # a commit per answer
    # The cache's write-ahead log reaches the limit first (the shards of one row each stay far below it).
    proc = run_with_file_size_limit(20_000, "run", str(path), "-o", str(tmp_path / "run"), "-q")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr
    assert "cache.sqlite: cannot write the request cache" in proc.stderr
    assert "free some space" in proc.stderr and "run the same command again" in proc.stderr
    assert run_pipeline(load_pipeline(path), tmp_path / "run").output_rows == 6


def test_an_included_preset_whose_name_is_a_list_is_one_line(write, tmp_path):
    write("recipe.yaml", "stages:\n  - stage: sample\n    name: [a, b]\n    n: 1\n")
    path = write(
        "p.yaml",
        "stages:\n  - stage: load\n    rows: [{a: 1}]\n  - include: recipe\n    with: {sample: {n: 2}}\n",
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"{tmp_path / 'recipe.yaml'}:3: stages[0].name" in result.output


def test_a_timeout_leaves_no_task_exception_behind(proxy, caplog):
    from .test_openai_backend import QUESTION, complete

    spec = OpenAISpec(model="gemma", base_url=proxy.url, timeout=0.5, max_retries=0, retry_seconds=5)
    proxy.set_delay(30)  # 40 requests in flight time out at the same moment
    with pytest.raises(BackendError, match=r"no answer within the backend's timeout \(0.5 s\)"):
        complete(OpenAIBackend(spec), [f"{QUESTION} {i}" for i in range(40)])
    gc.collect()  # the tasks that failed after the first: each was logged with a traceback
    assert "never retrieved" not in caplog.text


# ---- reasons that name the real cause ----


def test_a_line_longer_than_the_validate_peek_is_valid_and_one_past_the_limit_names_it(write, tmp_path, monkeypatch):
    # One JSONL line of 1.5 MB: past what validate reads of a file (1 MB), well under the limit.
    data = write("in.jsonl", json.dumps({"instruction": "x" * 1_500_000}) + "\n" + '{"instruction": "short"}\n')
    write("t.jinja", "{{ instruction[:10] }}")
    path = write(
        "p.yaml",
        "stages:\n  - stage: load\n    path: in.jsonl\n  - stage: template\n    template: t.jinja\n    output: p\n",
    )
    runner = CliRunner()
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["run", str(path), "-o", str(tmp_path / "run"), "-q"]).exit_code == 0
    assert read_output(tmp_path / "run").column("p").to_pylist() == ["x" * 10, "short"]

    monkeypatch.setenv("SYNTH_MAX_LINE_MB", "1")
    result = runner.invoke(main, ["run", str(path), "-o", str(tmp_path / "run2"), "-q"])
    assert result.exit_code == 1
    assert f"error: {data}:1: the line is longer than the limit of 1 MB" in result.output
    assert "raise the limit with SYNTH_MAX_LINE_MB=2" in result.output


def test_a_csv_quote_left_open_is_an_error_naming_its_line(write, tmp_path):
    data = write("in.csv", 'a,b\n1,"fine, quoted"\n2,"multi\nline"\n3,"never closed\n4,x\n5,y\n')
    path = write("p.yaml", "stages:\n  - stage: load\n    path: in.csv\n")
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output  # found by the checks before a run
    assert f"stages[0].path: {data}:5: a quoted field opened in this row is never closed" in result.output
    data.write_text('a,b\n1,"fine, quoted"\n2,"multi\nline"\n')  # a closed multi-line field still loads
    assert CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "run2"), "-q"]).exit_code == 0
    assert read_output(tmp_path / "run2").column("b").to_pylist() == ["fine, quoted", "multi\nline"]


# ---- a dead server is never silence ----


def test_a_dead_server_is_told_at_once_even_with_q(write, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    path = _generate_pipeline(write, dead)
    path.write_text(path.read_text().replace("max_retries: 1, ", ""))  # retry_seconds: 5 decides
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(tmp_path / "run"), "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    lines = [(time.monotonic(), line) for line in proc.stderr]  # as they come
    assert proc.wait(timeout=60) == 1
    error = next(i for i, (_, line) in enumerate(lines) if line.startswith("error:"))
    assert lines[error][0] - lines[0][0] > 3  # told when the retries began, not when they ended
    told = " ".join(line.strip() for _, line in lines[:error])  # rich wraps at 80 columns here
    port = dead.split(":")[2].split("/")[0]
    assert told.startswith(f"waiting for server: {dead}/completions: Cannot connect to host 127.0.0.1:{port} ")
    assert "(Connection refused); " in told
    assert "synth keeps retrying for up to 5 s (retry_seconds), then stops" in told
    assert "no answer from" in lines[error][1] and "Traceback" not in "".join(line for _, line in lines)

    # The progress bars say it too, until the server answers again.
    from synth.console import ConsoleProgress, _Rate

    progress = ConsoleProgress()
    progress.start(load_pipeline(path).stages)
    task = progress.bar.tasks[progress.tasks["generate"]]
    progress.trouble("cannot connect")
    assert "waiting for server" in _Rate().render(task).plain
    progress.trouble(None)
    assert "waiting for server" not in _Rate().render(task).plain
    progress.stop()


def test_validate_warns_when_the_first_row_renders_an_empty_prompt(write):
    write("q.jinja", "{% if topic %}Questions about {{ topic }}:{% endif %}")
    path = write(
        "p.yaml",
        """
        backends:
          default: {type: openai, model: m, base_url: "http://127.0.0.1:9/v1"}
        stages:
          - stage: load
            rows: [{topic: ""}, {topic: trees}]
          - stage: generate
            template: q.jinja
            output: question
    """,
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"warning: {path}:7: stages[1].template: template 'q.jinja' renders an empty prompt" in result.output
    write("q.jinja", "Questions about {{ topic }}:")
    assert "warning" not in CliRunner().invoke(main, ["validate", str(path)]).output


def test_a_server_that_fails_now_and_then_is_told_once_a_minute(proxy):
    from .test_openai_backend import QUESTION, complete

    told: list[str | None] = []
    backend = OpenAIBackend(OpenAISpec(model="gemma", base_url=proxy.url), backoff_base=0.05, backoff_cap=0.1)
    backend.on_trouble = told.append
    for _ in range(3):  # three short outages, each of one 503
        proxy.fail_next(1, status=503)
        (result,) = complete(backend, [QUESTION])
        assert result[0].text
    assert len(told) == 2 and told[1] is None
    assert told[0] is not None and told[0].startswith(f"{proxy.url}/completions: HTTP 503: injected by FaultProxy")
