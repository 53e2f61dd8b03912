"""The runner on real files: outputs, determinism, resume and recompute, empty inputs, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth import InputError, RunError, load_pipeline, read_output, run_pipeline
from synth.runs import Run
from synth.store import RunStore

ROWS = [{"topic": f"topic {i}", "n": i} for i in range(23)]


def pipeline_text(extra_stages: str = "", batch_size: int = 5) -> str:
    rows = json.dumps(ROWS)
    return f"""
name: t
seed: 7
run: {{batch_size: {batch_size}, max_batches_in_flight: 3}}
stages:
  - stage: load
    rows: {rows}
  - stage: template
    template: p.jinja
    output: prompt
{extra_stages}
"""


@pytest.fixture
def make(write):
    write("p.jinja", "Tell me about {{ topic }} (#{{ n }}).")

    def _make(extra: str = "", batch_size: int = 5, name: str = "p.yaml"):
        return load_pipeline(write(name, pipeline_text(extra, batch_size)))

    return _make


def test_rows_flow_through_stages_into_output(make, tmp_path):
    result = run_pipeline(make(), tmp_path / "run")
    rows = read_output(tmp_path / "run").to_pylist()
    assert [r["prompt"] for r in rows] == [f"Tell me about topic {i} (#{i})." for i in range(23)]
    assert result.output_rows == 23
    stages = {s["label"]: s for s in result.manifest["stages"]}
    assert stages["template"]["rows_in"] == 23 and stages["template"]["rows_out"] == 23
    # 23 rows in batches of 5: five shards per stage, each with a completion marker
    assert RunStore(tmp_path / "run").stage(1, "template").done_indices() == [0, 1, 2, 3, 4]


def test_output_loads_with_datasets(make, tmp_path):
    datasets = pytest.importorskip("datasets")
    run_pipeline(make("  - stage: sample\n    n: 10\n    shuffle: true"), tmp_path / "run")
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "run" / "output"), split="train")
    assert len(loaded) == 10
    assert loaded.column_names == ["topic", "n", "prompt"]
    assert list(loaded) == read_output(tmp_path / "run").to_pylist()


def test_sample_is_seeded_and_reproducible(make, tmp_path):
    stage = "  - stage: sample\n    n: 6\n"
    run_pipeline(make(stage), tmp_path / "a")
    run_pipeline(make(stage), tmp_path / "b")
    a = read_output(tmp_path / "a").column("n").to_pylist()
    assert a == read_output(tmp_path / "b").column("n").to_pylist()
    assert len(a) == 6 and a == sorted(a) and a != list(range(6))
    sampled = run_pipeline(make(stage), tmp_path / "a").manifest["stages"][2]
    assert sampled["filtered"] == {"not_sampled": 17}


def test_rerun_resumes_without_recomputing(make, tmp_path):
    pipeline = make()
    run_pipeline(pipeline, tmp_path / "run")
    marker = RunStore(tmp_path / "run").stage(1, "template").marker(2)
    before = marker.stat().st_mtime_ns
    result = run_pipeline(pipeline, tmp_path / "run")
    assert marker.stat().st_mtime_ns == before
    assert len(result.manifest["sessions"]) == 2
    assert result.output_rows == 23


def test_changed_stage_is_recomputed_and_earlier_stages_kept(make, write, tmp_path):
    run_pipeline(make("  - stage: limit\n    n: 20\n"), tmp_path / "run")
    store = RunStore(tmp_path / "run")
    load_marker = store.stage(0, "load").marker(0)
    before = load_marker.stat().st_mtime_ns
    result = run_pipeline(make("  - stage: limit\n    n: 4\n"), tmp_path / "run")
    assert load_marker.stat().st_mtime_ns == before
    assert result.output_rows == 4
    assert read_output(tmp_path / "run").column("n").to_pylist() == [0, 1, 2, 3]


def test_overwrite_starts_over(make, tmp_path):
    run_pipeline(make(), tmp_path / "run")
    result = run_pipeline(make(), tmp_path / "run", overwrite=True)
    assert len(result.manifest["sessions"]) == 1


def test_limit_caps_source_rows(make, tmp_path):
    result = run_pipeline(make(), tmp_path / "run", limit=7)
    assert result.output_rows == 7
    assert result.manifest["stages"][0]["rows_out"] == 7


def test_everything_filtered_gives_an_empty_dataset_not_a_hang(make, tmp_path):
    result = run_pipeline(
        make(
            "  - stage: limit\n    n: 0\n  - stage: template\n    name: again\n    template: p.jinja\n    output: p2\n"
        ),
        tmp_path / "run",
    )
    assert result.output_rows == 0
    assert read_output(tmp_path / "run").num_rows == 0


def test_rows_failing_a_stage_are_kept_with_their_reason(write, tmp_path):
    write("p.jinja", "{{ topic }} needs {{ extra }}")
    path = write(
        "p.yaml",
        """
        run: {batch_size: 2, max_failure_rate: 1.0}
        stages:
          - stage: load
            rows: [{topic: a, extra: x}, {topic: b}, {topic: c, extra: z}]
          - stage: template
            template: p.jinja
            output: prompt
    """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert result.output_rows == 2
    stage = result.manifest["stages"][1]
    assert stage["failed"] == {"template_error": 1}
    dropped = list(Run(tmp_path / "run").iter_dropped("template"))
    assert len(dropped) == 1 and json.loads(dropped[0]["row"]) == {"topic": "b"}
    assert "extra" in dropped[0]["detail"]


def test_max_failure_rate_makes_the_run_fail(write, tmp_path):
    write("p.jinja", "{{ topic }} needs {{ extra }}")
    path = write(
        "p.yaml",
        """
        run: {max_failure_rate: 0.1}
        stages:
          - stage: load
            rows: [{topic: a, extra: x}, {topic: b}]
          - stage: template
            template: p.jinja
            output: prompt
    """,
    )
    expected = r"failed on 1 of 2 rows \(50.0%: template_error: 1\), above run.max_failure_rate=0.1"
    with pytest.raises(RunError, match=expected):
        run_pipeline(load_pipeline(path), tmp_path / "run")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "hf"])
def test_load_reads_every_input_format(fmt, write, tmp_path):
    rows = [{"topic": f"t{i}", "text": f"hello {i}"} for i in range(9)]
    if fmt == "jsonl":
        source = write("in.jsonl", "\n".join(json.dumps(r) for r in rows))
    elif fmt == "parquet":
        source = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
    elif fmt == "csv":
        source = write("in.csv", "topic,text\n" + "\n".join(f"{r['topic']},{r['text']}" for r in rows))
    else:
        datasets = pytest.importorskip("datasets")
        source = tmp_path / "hfds"
        datasets.Dataset.from_list(rows).save_to_disk(str(source))
    path = write(
        "p.yaml",
        f"""
        run: {{batch_size: 4}}
        stages:
          - stage: load
            path: {source}
            rename: {{text: body}}
    """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    assert read_output(tmp_path / "run").to_pylist() == [{"topic": r["topic"], "body": r["text"]} for r in rows]


def test_bad_jsonl_line_is_reported_with_file_and_line(write, tmp_path):
    long = '{"topic": "' + "a" * 2**20 + '"}\n'  # past the first MB, which validate reads: found by the run
    source = write("in.jsonl", long + '{"topic": "b"\n')
    path = write(
        "p.yaml",
        f"""
        stages:
          - stage: load
            path: {source}
    """,
    )
    with pytest.raises(InputError, match=rf"{source}:2: not valid JSON"):
        run_pipeline(load_pipeline(path), tmp_path / "run")


def test_a_second_process_on_the_same_run_directory_is_refused(make, tmp_path):
    store = RunStore(tmp_path / "run")
    store.lock()
    try:
        with pytest.raises(RunError, match="in use by another synth process"):
            run_pipeline(make(), tmp_path / "run")
    finally:
        store.unlock()


def test_cli_run_reports_user_mistakes_in_one_line(write, tmp_path):
    long = '{"topic": "' + "a" * 2**20 + '"}\n'  # past the first MB, which validate reads: found by the run
    source = write("in.jsonl", long + "not json\n")
    path = write(
        "p.yaml",
        f"""
        stages:
          - stage: load
            path: {source}
    """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(tmp_path / "r"), "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {source}:2: not valid JSON (Expecting value); fix or remove that line"


def test_cli_inspect_shows_counts_and_rows(make, tmp_path):
    run_pipeline(make(), tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "synth.cli", "inspect", str(tmp_path / "run"), "-n", "1"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": ""},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "status: complete" in out
    assert "output: 23 rows" in out
    assert "Tell me about topic 0 (#0)." in out


def test_sort_by_length_keeps_the_longest_and_records_the_rest(write, tmp_path):
    path = write(
        "p.yaml",
        """
        run: {batch_size: 2}
        stages:
          - stage: load
            rows: [{r: "aaa"}, {r: "a"}, {r: "aaaaa"}, {r: "bbb"}, {r: "aa"}, {r: null}]
          - stage: sort
            by: r
            key: length
            descending: true
            top: 3
    """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert read_output(tmp_path / "run").column("r").to_pylist() == ["aaaaa", "aaa", "bbb"]  # ties: source order
    assert result.manifest["stages"][1]["filtered"] == {"not_in_top_3": 3}


def test_a_vllm_backend_that_cannot_start_is_a_clear_error(write, tmp_path):
    path = write(
        "p.yaml",
        """
        backends:
          default: {type: vllm, model: /no/such/model-folder}
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: generate
            template: quickstart/question.jinja
            output: q
    """,
    )
    import importlib.util

    from synth import SynthError

    with pytest.raises(SynthError) as info:
        run_pipeline(load_pipeline(path), tmp_path / "run")
    if importlib.util.find_spec("vllm") is None:
        assert "pip install" in str(info.value) and "vllm" in str(info.value)
    else:
        assert "vLLM could not start with /no/such/model-folder" in str(info.value)


def test_every_stage_folder_loads_as_a_dataset(make, tmp_path):
    import pyarrow.parquet as pq

    datasets = pytest.importorskip("datasets")
    run_pipeline(make(extra="  - stage: limit\n    n: 7\n"), tmp_path / "run")
    for folder in sorted((tmp_path / "run" / "stages").iterdir()):
        table = pq.read_table(folder)
        loaded = datasets.load_dataset("parquet", data_dir=str(folder), split="train")
        assert table.num_rows == loaded.num_rows > 0 and "reason" not in loaded.column_names, folder


def test_inspect_shows_content_first_and_provenance_on_request(write, tmp_path):
    pytest.importorskip("llama_cpp")
    write("q.jinja", "Questions about {{ topic }}:\nQuestion:")
    path = write(
        "p.yaml",
        "stages:\n  - stage: load\n    rows: [{topic: boats}]\n  - stage: generate\n    template: q.jinja\n"
        "    output: question\n    max_tokens: 4\n",
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")

    def inspect(*extra: str) -> str:
        command = [sys.executable, "-m", "synth.cli", "inspect", str(tmp_path / "run"), "-n", "1", *extra]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    plain, full = inspect(), inspect("--provenance")
    assert '"topic": "boats"' in plain and '"template_sha"' not in plain and "add --provenance" in plain
    assert '"template_sha"' in full and full.index('"topic"') < full.index('"provenance"')


def test_templates_prints_one_with_its_variables():
    done = subprocess.run(
        [sys.executable, "-m", "synth.cli", "templates", "quickstart/question.jinja"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "{{ topic }}" in done.stdout and "# variables: topic" in done.stderr


def test_llama_cpp_log_lines_show_only_with_verbose(write, tmp_path):
    pytest.importorskip("llama_cpp")
    write("q.jinja", "Questions about {{ topic }}:\nQuestion:")
    path = write(
        "p.yaml",
        "stages:\n  - stage: load\n    rows: [{topic: boats}]\n  - stage: generate\n    template: q.jinja\n"
        "    output: question\n    max_tokens: 2\n",
    )

    def run(name: str, *extra: str) -> str:
        command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(tmp_path / name), "-q", *extra]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stderr

    native = re.compile(r"^llama_\w+:", re.MULTILINE)  # llama.cpp's own lines, e.g. its KV cache notice
    assert not native.search(run("quiet"))
    assert native.search(run("loud", "-v"))


def test_progress_knows_the_total_and_moves_with_each_answer(write, tmp_path):
    pytest.importorskip("llama_cpp")
    from synth.progress import Progress

    class Recorder(Progress):
        def __init__(self):
            self.total, self.events = None, []

        def start(self, stages, total=None):
            self.total = total

        def advance(self, label, rows, tokens=0, in_flight=None):
            self.events.append((label, rows, tokens))

    write("q.jinja", "Questions about {{ topic }}:\nQuestion:")
    write("in.jsonl", "".join(json.dumps({"topic": t}) + "\n" for t in ["boats", "bread", "bees", "bells", "birds"]))
    path = write(
        "p.yaml",
        "run: {batch_size: 3}\nstages:\n  - stage: load\n    path: in.jsonl\n  - stage: generate\n"
        "    template: q.jinja\n    output: question\n    max_tokens: 3\n",
    )
    first = Recorder()
    run_pipeline(load_pipeline(path), tmp_path / "run", progress=first)
    assert first.total == 5
    answers = [e for e in first.events if e[0] == "generate"]
    assert sum(rows for _, rows, _ in answers) == 5
    assert answers[0][1] == 1 and answers[0][2] > 0  # the first answer moved the bar, before its batch ended
    assert sum(tokens for _, _, tokens in answers) > 0
    again = Recorder()  # a finished run: every stage counted as done at once
    run_pipeline(load_pipeline(path), tmp_path / "run", progress=again)
    assert {label: sum(r for lb, r, _ in again.events if lb == label) for label in ("load", "generate")} == {
        "load": 5,
        "generate": 5,
    }


def test_a_stage_that_cannot_open_is_the_error_reported(write, tmp_path):
    """magpie cannot open (an OpenAI backend with no chat template to cut the pre-query prompt
    from); the reward stage after it never opened, and closing it must not hide that error."""
    path = write(
        "p.yaml",
        """
        backends:
          default: {type: openai, model: m, base_url: "http://127.0.0.1:9/v1", api_key_env: null}
          strong: {type: local}
          weak: {type: local, chat_template: chatml}
        stages:
          - {stage: magpie, num_rows: 2}
          - {stage: respond}
          - {stage: reward, method: cdr, strong: strong, weak: weak}
        """,
    )
    with pytest.raises(Exception, match="set chat_template on this backend") as info:
        run_pipeline(load_pipeline(path), tmp_path / "run")
    assert "scorer" not in str(info.value)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"


def test_empty_samples_leave_the_list_and_only_an_all_empty_answer_fails_the_row():
    from synth.llm.base import Generation
    from synth.stages.base import Batch
    from synth.stages.common import answer_value

    batch = Batch(rows=[])
    row = {"instruction": "q"}
    some = [Generation("a"), Generation("  "), Generation("b"), Generation("")]
    assert answer_value(batch, row, some, 4) == ["a", "b"]
    assert batch.counters == {"empty_samples": 2} and not batch.dropped
    assert answer_value(batch, row, [Generation(""), Generation(" ")], 2, empty_reason="empty_response") is None
    assert [(d.reason, d.failed) for d in batch.dropped] == [("empty_response", True)]
    assert answer_value(batch, row, [Generation("")], 1) is None and len(batch.dropped) == 2
