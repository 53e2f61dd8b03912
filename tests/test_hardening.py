"""What an attacker or a broken server tried, each reproduced: run directories that escape runs/,
poisoned caches, failures that stuck, stale rows, silent failures, short retry budgets, secrets
in what synth writes, keys sent anywhere. Servers are a real `python -m llama_cpp.server` behind
synth.testing.FaultProxy, which injects the faults."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from synth import BackendError, ConfigError, RunError, load_pipeline, read_output, run_pipeline
from synth.cli import main
from synth.llm.openai import OpenAIBackend
from synth.llm.specs import OpenAISpec
from synth.scrub import scrub, without_yaml_comments
from synth.store import RunStore
from synth.testing import free_port

from .conftest import REPO

# ---- run directories ----


@pytest.mark.parametrize("name", ["..", ".", "../elsewhere", ".hidden", "-rf", "a/b", "x" * 101])
def test_a_pipeline_name_cannot_leave_runs(name, write):
    path = write("p.yaml", f"name: {json.dumps(name)}\nstages:\n  - stage: load\n    rows: [{{a: 1}}]\n")
    with pytest.raises(ConfigError, match="name"):
        load_pipeline(path)


def test_a_file_named_dot_dot_yaml_gets_a_safe_run_name(write):
    path = write("..yaml", "stages:\n  - stage: load\n    rows: [{a: 1}]\n")
    assert load_pipeline(path).name == "pipeline"


def test_a_stage_label_is_short_and_safe(write):
    path = write("p.yaml", f"stages:\n  - stage: load\n    name: {'s' * 300}\n    rows: [{{a: 1}}]\n")
    with pytest.raises(ConfigError, match=r"stages\[0\].name"):
        load_pipeline(path)


def test_run_refuses_a_folder_synth_did_not_make_and_overwrite_deletes_only_its_own(write, tmp_path):
    path = write("p.yaml", "stages:\n  - stage: load\n    rows: [{a: 1}, {a: 2}]\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(path), "-o", str(mine), "--overwrite", "-q"])
    assert result.exit_code == 1 and "is not a synth run directory" in result.output
    assert (mine / "thesis.tex").read_text() == "years of work"

    # A file named manifest.json is not enough to be taken for a run directory.
    (mine / "manifest.json").write_text("{}")
    result = runner.invoke(main, ["run", str(path), "-o", str(mine), "--overwrite", "-q"])
    assert result.exit_code == 1 and (mine / "thesis.tex").exists()

    run_dir = tmp_path / "run"
    assert runner.invoke(main, ["run", str(path), "-o", str(run_dir), "-q"]).exit_code == 0
    (run_dir / "notes.txt").write_text("my notes about this run")
    result = runner.invoke(main, ["run", str(path), "-o", str(run_dir), "--overwrite", "-q"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "notes.txt").read_text() == "my notes about this run"
    assert read_output(run_dir).num_rows == 2


# ---- a real server behind a fault proxy ----


def _generate_pipeline(write, url: str, rows: int = 6, extra: str = "") -> str:
    topics = ", ".join(f"{{topic: {t}}}" for t in ["cooking", "space", "music", "trees", "boats", "maths"][:rows])
    write("q.jinja", "Questions people asked about {{ topic }}.\nQuestion: How do I boil an egg?\nQuestion:")
    return write(
        "p.yaml",
        f"""
        seed: 3
        backends:
          default: {{type: openai, model: gemma, base_url: "{url}", max_retries: 1, retry_seconds: 5}}
        stages:
          - stage: load
            rows: [{topics}]
          - stage: generate
            template: q.jinja
            output: question
            max_tokens: 12
            temperature: 0.8
            stop: ["\\n"]
        {extra}
        run: {{batch_size: 3}}
    """,
    )


def _cached(run_dir) -> int:
    with sqlite3.connect(run_dir / "cache.sqlite") as db:
        return db.execute("select count(*) from requests").fetchone()[0]


def test_answers_without_choices_are_never_cached_and_a_resume_retries_them(proxy, write, tmp_path):
    # Issue 33 changed this: `choices: []` is retried like a 5xx; only when the retries run out
    # (max_retries: 1, so 2 attempts per row) does the row fail.
    path = _generate_pipeline(write, proxy.url)
    proxy.empty_next(1000)  # every request gets `choices: []`, as from a broken server
    with pytest.raises(RunError, match=r"failed on 6 of 6 rows .*request_failed:no_choices: 6"):
        run_pipeline(load_pipeline(path), tmp_path / "run")
    assert RunStore(tmp_path / "run").read_manifest()["status"] == "failed"
    assert _cached(tmp_path / "run") == 0 and proxy.injected == 12 and proxy.forwarded == 0
    proxy.empty_next(0)
    result = run_pipeline(load_pipeline(path), tmp_path / "run")  # the server is healthy again
    assert result.output_rows == 6 and result.manifest["status"] == "complete"
    assert proxy.forwarded == 6  # the failed rows were asked again
    assert _cached(tmp_path / "run") == 6


def test_empty_answers_are_not_cached_either(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url, extra="")
    proxy.empty_next(2, empty_text=True)
    with pytest.raises(RunError, match="empty_answer: 2"):
        run_pipeline(load_pipeline(path), tmp_path / "run")
    assert _cached(tmp_path / "run") == 4
    assert run_pipeline(load_pipeline(path), tmp_path / "run").output_rows == 6


def test_a_poisoned_cache_entry_is_asked_again(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url)
    first = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert first.output_rows == 6
    with sqlite3.connect(tmp_path / "run" / "cache.sqlite") as db:  # as an older synth could have left it
        keys = [k for (k,) in db.execute("select key from requests order by key")]
        db.executemany("update requests set response = ? where key = ?", [('{"generations": []}', k) for k in keys[:3]])
        db.execute("update requests set response = 'not json' where key = ?", (keys[3],))
    stage = tmp_path / "run" / "stages" / "01-generate"
    for shard in [*stage.glob("shard-*"), *stage.glob(".synth/shard-*")]:
        shard.unlink()  # the stage must be redone from the cache
    before = proxy.forwarded
    again = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert again.output_rows == 6 and proxy.forwarded - before == 4
    assert read_output(tmp_path / "run").num_rows == 6


def test_keep_failed_keeps_them_and_a_complete_run_is_retried_only_when_asked(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url, extra="")
    text = path.read_text().replace("run: {batch_size: 3}", "run: {batch_size: 3, max_failure_rate: 1.0}")
    path.write_text(text)
    proxy.fail_next(2, status=400)  # a 400 fails its row (a `choices: []` is retried since issue 33)
    assert run_pipeline(load_pipeline(path), tmp_path / "run").output_rows == 4  # completes, 2 failed
    before = proxy.forwarded
    assert run_pipeline(load_pipeline(path), tmp_path / "run").output_rows == 4  # complete: nothing retried
    assert run_pipeline(load_pipeline(path), tmp_path / "run", retry_failed=False).output_rows == 4
    assert proxy.forwarded == before
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "run"), "--retry-failed", "-q"])
    assert result.exit_code == 0, result.output
    assert read_output(tmp_path / "run").num_rows == 6 and proxy.forwarded - before == 2


def test_a_server_restart_does_not_stop_the_run(proxy, write, tmp_path):
    spec = OpenAISpec(model="gemma", base_url=proxy.url, retry_seconds=60)  # no max_retries: time decides
    assert spec.max_retries is None and OpenAISpec(model="m", base_url=proxy.url).retry_seconds == 300
    from .test_openai_backend import QUESTION, complete

    proxy.stop_listening()
    timer = threading.Timer(4.0, proxy.start_listening)
    timer.start()
    started = time.monotonic()
    (result,) = complete(OpenAIBackend(spec, backoff_base=0.2, backoff_cap=1.0), [QUESTION])
    assert time.monotonic() - started >= 3.5 and result[0].text


def test_the_retry_budget_is_time(monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    from .test_openai_backend import QUESTION, complete

    spec = OpenAISpec(model="gemma", base_url=dead, retry_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"attempts in 1.5 s .*retry_seconds"):
        complete(OpenAIBackend(spec, backoff_base=0.1, backoff_cap=0.4), [QUESTION])
    assert 1.4 <= time.monotonic() - started < 10


def test_a_server_error_quoting_a_key_is_scrubbed_everywhere(proxy, write, tmp_path):
    path = _generate_pipeline(write, proxy.url)
    leaked = "Authorization: Bearer abcdefghijklmnop0123456789 and hf_" + "Q" * 30
    proxy.fail_next(1, status=400, message=f"bad request; you sent {leaked}")
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "abcdefghijklmnop0123456789" not in result.output
    dropped = pq.read_table(next((tmp_path / "run" / "stages" / "01-generate" / ".synth").glob("*.dropped.parquet")))
    detail = dropped.column("detail")[0].as_py()
    assert "bad request" in detail and "<redacted>" in detail
    assert "abcdefghijklmnop0123456789" not in detail and "Q" * 30 not in detail


# ---- stale rows ----


def test_editing_a_template_or_the_input_recomputes_what_they_feed(write, tmp_path):
    write("t.jinja", "old: {{ a }}")
    data = write("in.jsonl", '{"a": 1}\n{"a": 2}\n')
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            path: in.jsonl
          - stage: template
            template: t.jinja
            output: prompt
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    assert read_output(tmp_path / "run").column("prompt").to_pylist() == ["old: 1", "old: 2"]
    write("t.jinja", "new: {{ a }}")
    run_pipeline(load_pipeline(path), tmp_path / "run")
    assert read_output(tmp_path / "run").column("prompt").to_pylist() == ["new: 1", "new: 2"]
    data.write_text('{"a": 1}\n{"a": 3}\n')
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert read_output(tmp_path / "run").column("prompt").to_pylist() == ["new: 1", "new: 3"]
    assert result.manifest["templates"]["t.jinja"] != ""
    # Nothing changed: nothing is redone (the stage shards keep their files).
    shard = tmp_path / "run" / "stages" / "01-template" / "shard-00000.parquet"
    stamp = shard.stat().st_mtime_ns
    run_pipeline(load_pipeline(path), tmp_path / "run")
    assert shard.stat().st_mtime_ns == stamp


# ---- silent failures ----


def test_a_run_where_every_row_fails_exits_non_zero(write, tmp_path):
    write("t.jinja", "{{ missing_column }}")
    write("in.csv", "a\n1\n2\n")  # validation cannot see a CSV's columns, so only the run finds out
    path = write(
        "p.yaml",
        "stages:\n  - stage: load\n    path: in.csv\n  - stage: template\n    template: t.jinja\n    output: prompt\n",
    )
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 1
    assert "failed on 2 of 2 rows" in result.output and "Traceback" not in result.output


def test_a_regex_that_backtracks_forever_costs_one_row(write, tmp_path):
    path = write(
        "p.yaml",
        f"""
        run: {{max_failure_rate: 1.0}}
        stages:
          - stage: load
            rows: [{{text: "{"x" * 3000}"}}, {{text: "fine"}}]
          - stage: regex
            column: text
            patterns: ["(x+x+)+y"]
            timeout: 0.3
    """,
    )
    started = time.monotonic()
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert time.monotonic() - started < 10
    assert result.output_rows == 1 and result.manifest["stages"][1]["failed"] == {"regex_timeout": 1}


def test_columns_whose_type_changes_between_batches_are_one_line(write, tmp_path):
    data = write("in.jsonl", '{"a": "text"}\n{"a": 5}\n')
    path = write(
        "p.yaml",
        "run: {batch_size: 1}\nstages:\n  - stage: load\n    path: in.jsonl\n  - stage: sample\n    n: 2\n",
    )
    assert data.exists()
    with pytest.raises(RunError, match=r"'a' is int64 and string"):
        run_pipeline(load_pipeline(path), tmp_path / "run")


def run_with_file_size_limit(limit: int, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """`synth ARGS` in a process that may write no file past `limit` bytes: Python ignores
    SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk."""
    code = (
        "import resource, sys; from synth.cli import main; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); sys.argv = sys.argv[1:]; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, "synth", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_a_full_disk_is_one_line_and_the_run_resumes(write, tmp_path):
    import hashlib

    lines = [
        json.dumps({"text": "".join(hashlib.sha256(f"{i}-{j}".encode()).hexdigest() for j in range(5))})
        for i in range(1000)
    ]
    write("in.jsonl", "\n".join(lines) + "\n")
    path = write("p.yaml", "run: {batch_size: 100}\nstages:\n  - stage: load\n    path: in.jsonl\n")
    proc = run_with_file_size_limit(100_000, "run", str(path), "-o", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert "File too large" in proc.stderr and "run the same command again" in proc.stderr
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"
    assert run_pipeline(load_pipeline(path), tmp_path / "run").output_rows == 1000


# ---- validation of what a file can make synth do ----


@pytest.mark.parametrize(
    "backend, message",
    [
        ('base_url: "http://bob:hunter22@127.0.0.1:9/v1"', "must not carry credentials"),
        ('base_url: "http://ghp_abcdefabcdefabcdefabcdef@127.0.0.1:9/v1"', "must not carry credentials"),
        ('base_url: "http://127.0.0.1:9/v1?alt=json&key=hunter22"', r"credentials \(the query parameter 'key'\)"),
        ('base_urls: ["http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1?access_token=hunter22"]', "access_token"),
        ('base_url: "file:///etc/passwd"', "is not an http"),
        ('base_url: "http://127.0.0.1:9/v1", api_key_env: "A B"', "api_key_env"),
    ],
)
def test_backend_urls_and_keys_are_checked(backend, message, write):
    path = write(
        "p.yaml",
        f"""
        backends:
          default: {{type: openai, model: m, {backend}}}
        stages:
          - stage: load
            rows: [{{a: 1}}]
          - stage: generate
            prompt_column: a
            output: b
    """,
    )
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(path)
    assert "hunter22" not in str(info.value) or "credentials" in str(info.value)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "hunter22" not in result.output and "ghp_abcdef" not in result.output


@pytest.mark.parametrize(
    "field, value",
    [("run", "{batch_size: 1e23}"), ("stage", "max_tokens: -5"), ("stage", "top_p: 2"), ("stage", "n: 10000000")],
)
def test_absurd_numbers_are_validation_errors(field, value, write):
    run = value if field == "run" else "{}"
    stage = value if field == "stage" else "max_tokens: 4"
    path = write(
        "p.yaml",
        f"""
        run: {run}
        stages:
          - stage: load
            rows: [{{a: 1}}]
          - stage: respond
            input: a
            temperature: 0.5
            {stage}
    """,
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("error:") == 1


def test_a_key_is_sent_only_where_the_user_allows(write, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "z" * 30)
    monkeypatch.setenv("SYNTH_ALLOW_KEYS", "")  # --allow-key sets it in this process: restored after the test
    text = """
        backends:
          default: {{type: openai, model: m, base_url: "{url}", api_key_env: HF_TOKEN}}
        stages:
          - stage: load
            rows: [{{a: 1}}]
          - stage: generate
            prompt_column: a
            output: b
    """
    far = write("far.yaml", text.format(url="https://collector.example.com/v1"))
    near = write("near.yaml", text.format(url="http://127.0.0.1:9/v1"))
    with pytest.raises(ConfigError, match=r"backends.default.api_key_env: would send \$HF_TOKEN to collector"):
        load_pipeline(far)
    with pytest.raises(BackendError, match="--allow-key HF_TOKEN"):
        OpenAIBackend(OpenAISpec(model="m", base_url="https://collector.example.com/v1", api_key_env="HF_TOKEN"))
    load_pipeline(near)  # loopback: fine
    result = CliRunner().invoke(main, ["validate", str(far), "--allow-key", "HF_TOKEN"])
    assert result.exit_code == 0, result.output
    assert "sends:    $HF_TOKEN (set) to collector.example.com (backend default)" in result.output
    assert "contacts: collector.example.com (backend default)" in result.output
    assert "z" * 30 not in result.output
    # OpenAI's own key may go to OpenAI without asking.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "k" * 30)
    OpenAIBackend(OpenAISpec(model="m", base_url="https://api.openai.com/v1"))


def test_a_pipeline_reads_only_its_folder_and_the_working_directory(write, tmp_path, monkeypatch):
    secret_dir = tmp_path / "home" / ".ssh"
    secret_dir.mkdir(parents=True)
    (secret_dir / "id_rsa").write_text("a,b\nPRIVATE,KEY\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "rows.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path / "home")
    monkeypatch.setenv("SYNTH_ALLOW_READ", "")  # --allow-read sets it in this process: restored after the test
    write("pipe/t.jinja", "{{ row }}")
    text = "stages:\n  - stage: load\n    path: {path}\n    format: csv\n  - stage: template\n    template: t.jinja\n"
    text += "    output: prompt\n"
    for path, problem in [
        (secret_dir / "id_rsa", "hidden file or folder (.ssh)"),  # inside the working directory, but hidden
        (tmp_path / "other" / "rows.csv", "outside the pipeline's folder and the working directory"),
    ]:
        pipe = write("pipe/p.yaml", text.format(path=path))
        with pytest.raises(ConfigError, match=r"stages\[0\].path: reads .*" + re.escape(problem)):
            load_pipeline(pipe)
    result = CliRunner().invoke(main, ["validate", str(pipe), "--allow-read", str(tmp_path / "other")])
    assert result.exit_code == 0, result.output
    assert f"reads:    {tmp_path / 'other' / 'rows.csv'}" in result.output
    assert "contacts: no server" in result.output


def test_validate_lists_what_the_quickstart_does():
    result = CliRunner().invoke(main, ["validate", "pipelines/quickstart.yaml"])
    assert result.exit_code == 0, result.output
    assert "quickstart/question.jinja (synth)" in result.output
    assert "runs:     the embedded model in-process (backend default)" in result.output


# ---- secrets in what synth writes ----

SECRETS = [
    "hf_AbCdEfGhIjKlMnOpQrStUv",
    "sk-proj-AbCdEfGhIjKlMnOp1234",
    "ghp_" + "A1" * 18,
    "github_pat_" + "B2" * 20,
    "AKIAABCDEFGHIJKLMNOP",
    "xoxb-1234567890-abcdefghij",
    "glpat-" + "c" * 20,
]


@pytest.mark.parametrize(
    "text",
    [
        *(f"the key is {s} ok" for s in SECRETS),
        "https://tok3nOnlyValue@github.com/org/repo",
        "http://alice:pa55word@proxy.local:8080",
        "https://api.example.com/v1/models?alt=json&key=tok3nOnlyValue",
        '{"Authorization": "Bearer tok3nOnlyValue"}',
        "Authorization: Basic dG9rM25Pbmx5VmFsdWU=",
        "# password: tok3nOnlyValue",
        "api_key = tok3nOnlyValue",
        "-----BEGIN OPENSSH PRIVATE KEY-----\ntok3nOnlyValue\n-----END OPENSSH PRIVATE KEY-----",
    ],
)
def test_scrub_removes_every_credential_form(text):
    cleaned = scrub(text)
    assert "<redacted>" in cleaned
    for secret in [*SECRETS, "tok3nOnlyValue", "pa55word", "dG9rM25Pbmx5VmFsdWU="]:
        assert secret not in cleaned


def test_scrub_keeps_what_is_not_a_secret(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "a-private-value-123")
    text = 'max_tokens: 48, "prompt_tokens": 12, http://127.0.0.1:8000/v1, tokenizer: minilm, a-private-value-123'
    assert scrub(text) == text.replace("a-private-value-123", "<redacted>")
    yaml = 'name: x  # token: abc\n# only a comment\nurl: "http://h/#anchor"\nkey: a#b\n'
    assert without_yaml_comments(yaml) == 'name: x\nurl: "http://h/#anchor"\nkey: a#b'


def test_run_errors_in_the_manifest_are_scrubbed(write, tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_SECRET", "value-of-the-secret-1")
    data = write("in.jsonl", '{"a": "value-of-the-secret-1"}\n{"a": 1}\n')
    path = write(
        "p.yaml", "run: {batch_size: 1}\nstages:\n  - stage: load\n    path: in.jsonl\n  - stage: sample\n    n: 2\n"
    )
    assert data.exists()
    with pytest.raises(RunError):
        run_pipeline(load_pipeline(path), tmp_path / "run")
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert "value-of-the-secret-1" not in json.dumps(json.loads(manifest)["sessions"])
    assert os.environ["SOME_SECRET"] == "value-of-the-secret-1"


def test_a_chat_template_file_is_read_only_where_data_files_are(write, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_ALLOW_READ", "")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    monkeypatch.chdir(write("pipe/x.txt", "").parent)  # the working directory is the pipeline's folder
    path = write(
        "pipe/p.yaml",
        f"""
        backends:
          default: {{type: openai, model: m, base_url: "http://127.0.0.1:9/v1", chat_template: "{outside}"}}
        stages:
          - stage: load
            rows: [{{a: 1}}]
    """,
    )
    with pytest.raises(ConfigError, match=r"backends.default.chat_template: reads .*elsewhere, outside"):
        load_pipeline(path)
