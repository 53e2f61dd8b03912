"""Pipeline files, templates and input files from strangers: each attack or accident is one clear
error, found by `synth validate` where it can be (else a row's failure, or an InputError at run
time), in bounded memory and time. tests/hostile/ holds the pipeline-file cases as files, which
test_hostile.py runs through the command line in a subprocess."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from synth import BackendError, ConfigError, InputError, load_pipeline, run_pipeline
from synth.cli import main
from synth.llm.templates import ChatTemplate
from synth.runs import Run
from synth.stages.base import StageContext
from synth.stages.generate.load import Load, LoadParams
from synth.templating import MissingValue, TemplateRefused, render, template_problem
from synth.yamlfile import load_yaml, load_yaml_file

HOSTILE = Path(__file__).parent / "hostile"


@contextmanager
def bounded(seconds: float = 10, megabytes: int = 64):
    """The block must finish within `seconds` and allocate at most `megabytes` at its peak."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - start < seconds
    assert peak < megabytes * 2**20, f"{peak / 2**20:.0f} MB"


def validate(path: Path) -> list[str]:
    """`synth validate` on a file that must fail: its `error:` lines, one short line per problem."""
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors and all(len(line) < 600 for line in errors), result.output
    return errors


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return [str(p) for p in info.value.problems]


def load_rows(path: Path, base_dir: Path, **params) -> list[dict]:
    """The rows of a load stage as a run reads them, checks included."""
    ctx = StageContext(seed=0, label="load", index=0, base_dir=base_dir)
    return list(Load(LoadParams(path=str(path), **params), ctx).iter_rows(None))


def pipeline(write, load: str, then: str = "") -> Path:
    return write("p.yaml", "stages:\n  - stage: load\n" + load + then)


# ---- YAML ----


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("alias-bomb.yaml", "invalid YAML: YAML aliases expand too far (to more than 100,000 values)"),
        ("recursive-alias.yaml", ":2: invalid YAML: the alias *a is inside the &a it refers to (a recursive alias)"),
        ("deep-nesting.yaml", ":4: invalid YAML: nested more than 100 levels deep"),
        ("huge-number.yaml", ":2: invalid YAML: cannot read this value: Exceeds the limit (4300 digits)"),
        ("not-utf8.yaml", ":2: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
        ("indentation.yaml", ":6: invalid YAML: mapping values are not allowed here; check the indentation on this"),
        ("tabs.yaml", ":4: invalid YAML: found character '\\t' that cannot start any token; YAML indents with spaces"),
    ],
)
def test_a_hostile_yaml_file_is_one_line_at_its_line(name, message):
    with bounded(seconds=5, megabytes=32):
        (problem,) = problems(HOSTILE / name)
    assert problem.startswith(str(HOSTILE / name)) and message in problem
    assert validate(HOSTILE / name) == [f"error: {problem}"]


def test_aliases_within_bounds_and_merge_keys_still_work():
    doc = load_yaml("base: &b {temperature: 0.5, top_p: 0.9}\nx: {<<: *b, temperature: 1}\ny: [*b, *b]\n")
    assert doc.data["x"] == {"temperature": 1, "top_p": 0.9} and doc.data["y"][1]["top_p"] == 0.9
    assert doc.problems == []  # the merged key is no duplicate


def test_yaml_python_or_pyyaml_cannot_read_is_one_line_at_its_line():
    for text, message in [
        ("a: 1\nb: 2024-13-45\n", "f.yaml:2: invalid YAML: cannot read this value: month must be in 1..12"),
        ("a: 1\nb: \x00\n", "f.yaml:2: invalid YAML: character #x0000 is not allowed in YAML; remove it"),
        ("a: 1\n---\nb: 2\n", "f.yaml:2: invalid YAML: expected a single document in the stream, but found another"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_yaml(text, "f.yaml")
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_file_with_too_many_values_is_refused_while_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("stages:\n  - stage: load\n    rows:\n" + "      - {a: 1}\n" * 40_000)
    start = time.monotonic()  # (under tracemalloc PyYAML is several times slower)
    with pytest.raises(ConfigError, match=r"big.yaml:\d+: invalid YAML: more than 100,000 values; put large inline"):
        load_yaml_file(path)
    assert time.monotonic() - start < 10


def test_a_pipeline_file_that_is_large_or_not_a_file_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 3 * 2**20 + "\n")
    with pytest.raises(ConfigError, match="is larger than 2 MB"):
        load_yaml_file(big)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_yaml_file(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_yaml_file("/dev/zero")
    assert validate(fifo) == [f"error: {fifo}: is not a regular file (a device, FIFO or socket)"]


# ---- templates: bombs ----


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("template-bomb.yaml", "template 'template-bomb.jinja' line 1: the template makes a value of more than"),
        ("filter-bomb.yaml", "template 'filter-bomb.jinja' line 1: the template makes a value of more than"),
        ("range-bomb.yaml", "template 'range-bomb.jinja' line 1: Range too big"),
    ],
)
def test_a_template_bomb_in_constants_is_found_by_validate(name, message):
    with bounded(seconds=5, megabytes=32):
        (problem,) = problems(HOSTILE / name)
    assert ":6: stages[1].template: " + message in problem
    assert len(validate(HOSTILE / name)) == 1


BOMBS = {
    "repeat": "{{ 'x' * n }}",
    "repeat a list": "{{ [topic * 1000] * 100000 }}",
    "power": "{{ 9 ** n }}",
    "center": "{{ 'x'|center(n) }}",
    "ljust": "{{ 'x'.ljust(n) }}",
    "indent": "{{ ('a\n' * 100000)|indent(n) }}",
    "replace": "{{ ('a' * 100000)|replace('a', 'aaaaaaaaaaaaaaaaaaaaaa') }}",
    "join": "{{ (['x' * 1000] * 10000)|join('y' * 1000) }}",
    "batch": "{{ [1]|batch(n, 0)|list }}",
    "str.format": "{{ ('{:>' ~ n ~ '}').format(1) }}",
    "format fields": "{{ ('{0}' * 1000).format(topic * 10000) }}",
    "% mapping": "{{ ('%(a)s' * 1000) % {'a': topic * 10000} }}",
    "join a generator": "{{ ('y' * 100000).join(range(10000)|map('string')) }}",
    "% width": "{{ '%*d' % (n, 1) }}",
    "lipsum": "{{ lipsum(n) }}",
    "range": "{% for i in range(n) %}{% endfor %}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "nesting": "{% set ns = namespace(s=[1]) %}{% for i in range(80) %}{% set ns.s = [ns.s, ns.s] %}{% endfor %}"
    "{{ ns.s }}",
    "macro": "{% macro f(s, k) %}{{ f(s ~ s, k - 1) if k else s|length }}{% endmacro %}{{ f('x', 60) }}",
    "macro tree": "{% macro f(k) %}{% if k %}{{ f(k - 1) }}{{ f(k - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "include itself": "{% include 'bomb.jinja' %}",
    "big integer": "{% set ns = namespace(k=3) %}{% for i in range(40) %}{% set ns.k = ns.k * ns.k %}{% endfor %}",
    "division by zero": "{{ 1 / 0 }}",
    "types": "{{ topic + 1 }}",
}


@pytest.mark.parametrize("source", BOMBS.values(), ids=BOMBS.keys())
def test_a_template_bomb_at_render_is_a_template_error(source, tmp_path):
    (tmp_path / "bomb.jinja").write_text(source)
    with bounded(seconds=12, megabytes=100), pytest.raises(jinja2.TemplateError) as info:
        render("bomb.jinja", tmp_path, topic="a", n=1_000_000_000)
    assert str(info.value)


def test_a_template_bomb_in_a_run_fails_its_row_with_the_reason(write, tmp_path):
    write("t.jinja", "{{ topic }}{{ 'x' * n }}")
    path = write(
        "p.yaml",
        """
        run: {max_failure_rate: 1.0}
        stages:
          - stage: load
            rows: [{topic: a, n: 3}, {topic: b, n: 1000000000}]
          - stage: template
            template: t.jinja
            output: text
    """,
    )
    with bounded(seconds=30, megabytes=200):
        result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert result.output_rows == 1 and result.manifest["stages"][1]["failed"] == {"template_error": 1}
    (dropped,) = Run(tmp_path / "run").iter_dropped("template")
    assert "the template makes a value of more than" in dropped["detail"]


def test_what_prompts_need_still_renders(tmp_path):
    (tmp_path / "t.jinja").write_text(
        "{{ topic|title }} {{ 'ab' * 2 }} {{ items|join(', ') }} {{ '%03d' % n }} {{ '{:>4}'.format(n) }}"
        "{% for x in items %}[{{ loop.index }}/{{ loop.length }} {{ x }}]{% endfor %}{{ ' hint' if hint }}|"
        "{% set ns = namespace(s='') %}{% for x in items %}{% set ns.s = ns.s ~ x %}{% endfor %}{{ ns.s }}"
    )
    text = render("t.jinja", tmp_path, topic="cats", items=["a", "b"], n=7, hint=False)
    assert text == "Cats abab a, b 007    7[1/2 a][2/2 b]|ab"
    doc = "d" * 3_000_000  # data larger than what a template may build is still rendered whole
    (tmp_path / "doc.jinja").write_text("{{ doc|trim }}{{ doc + '!' }}")
    assert len(render("doc.jinja", tmp_path, doc=doc)) == 6_000_001


# ---- templates: missing values ----


def test_a_none_is_a_template_error_naming_the_value(tmp_path):
    (tmp_path / "t.jinja").write_text("Q: {{ row.q }}")
    with pytest.raises(MissingValue) as info:
        render("t.jinja", tmp_path, row={"q": None})
    assert str(info.value) == (
        "template 't.jinja' line 1: {{ row.q }} is None (the value is missing); give it a value, "
        "or write {{ row.q or '' }}"
    )
    (tmp_path / "u.jinja").write_text("{{ q or '' }}|{{ 'x' if q }}|{{ nope }}")
    with pytest.raises(jinja2.UndefinedError, match="'nope' is undefined"):
        render("u.jinja", tmp_path, q=None)


def test_rows_with_a_missing_value_fail_instead_of_saying_none(write, tmp_path):
    write("t.jinja", "Write about {{ topic }}.")
    path = write(
        "p.yaml",
        """
        run: {max_failure_rate: 1.0}
        stages:
          - stage: load
            rows: [{topic: cats}, {topic: null}]
          - stage: template
            template: t.jinja
            output: prompt
    """,
    )
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    assert result.output_rows == 1 and result.manifest["stages"][1]["failed"] == {"template_error": 1}
    (dropped,) = Run(tmp_path / "run").iter_dropped("template")
    assert "{{ topic }} is None" in dropped["detail"]


def test_chat_templates_render_none_but_are_bounded():
    messages = [{"role": "user", "content": "hi"}]
    assert ChatTemplate("{{ messages[0].content }}|{{ tools }}", "t").render(messages, tools=None) == "hi|None"
    assert ChatTemplate("{{ tools }}", "t", strict=False).render(messages) == ""
    for source in ("{{ 'x' * 1000000000 }}", "{% for i in range(1000000000) %}{% endfor %}"):
        with bounded(seconds=5, megabytes=32), pytest.raises(BackendError, match="chat template 't' failed"):
            ChatTemplate(source, "t").render(messages)


# ---- templates: where they are read from ----


def test_a_template_linking_out_of_its_folder_is_refused(tmp_path):
    pipe, outside = tmp_path / "pipe", tmp_path / "outside"
    pipe.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("a secret")
    (pipe / "escape.jinja").symlink_to(outside / "secret.txt")
    (pipe / "sub").symlink_to(outside)
    (pipe / "real.jinja").write_text("fine {{ topic }}")
    (pipe / "alias.jinja").symlink_to("real.jinja")
    shutil.copy(HOSTILE / "escaping-template.yaml", pipe)
    real = (outside / "secret.txt").resolve()
    assert template_problem("escape.jinja", pipe) == (
        f"template 'escape.jinja' is a link to outside the pipeline folder: {real}"
    )
    assert template_problem("sub/secret.txt", pipe).endswith(f"is a link to outside the pipeline folder: {real}")
    with pytest.raises(TemplateRefused):
        render("escape.jinja", pipe, topic="a")
    assert render("alias.jinja", pipe, topic="a") == "fine a"  # a link inside the folder is fine
    (error,) = validate(pipe / "escaping-template.yaml")
    assert "stages[1].template: template 'escape.jinja' is a link to outside the pipeline folder" in error


def test_templates_that_cannot_be_read_or_compiled_are_problems(tmp_path):
    os.mkfifo(tmp_path / "fifo.jinja")
    (tmp_path / "latin1.jinja").write_bytes(b"caf\xe9 {{ topic }}")
    (tmp_path / "digits.jinja").write_text("{{ " + "9" * 5000 + " }}")
    (tmp_path / "deep.jinja").write_text("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    with bounded(seconds=10, megabytes=64):
        assert "is not a regular file (a device, FIFO or socket)" in template_problem("fifo.jinja", tmp_path)
        assert "is not UTF-8 text; save it as UTF-8" in template_problem("latin1.jinja", tmp_path)
        assert "cannot be compiled (Exceeds the limit" in template_problem("digits.jinja", tmp_path)
        assert template_problem("deep.jinja", tmp_path) == "template 'deep.jinja': nested too deeply to compile"


# ---- inputs: what may be read ----


@pytest.mark.timeout(60)
def test_special_files_are_refused_unread_at_validate_and_run(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "fifo.jsonl")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s.sock"))
    try:
        for name in ("fifo.jsonl", "s.sock"):
            path = pipeline(write, f"    path: {name}\n    format: jsonl\n")
            expected = f"{tmp_path / name} is not a regular file (a device, FIFO or socket); give a data file"
            assert problems(path) == [f"{path}:3: stages[0].path: {expected}"]
            with pytest.raises(InputError, match=r"is not a regular file"):
                load_rows(tmp_path / name, tmp_path)
    finally:
        server.close()
    path = pipeline(write, "    path: /dev/zero\n    format: jsonl\n")
    (error,) = validate(path)
    assert "reads /dev/zero, outside the pipeline's folder and the working directory" in error
    monkeypatch.setenv("SYNTH_ALLOW_READ", "/dev")
    assert problems(path) == [
        f"{path}:3: stages[0].path: /dev/zero is not a regular file (a device, FIFO or socket); give a data file"
    ]
    with pytest.raises(InputError, match="/dev/zero is not a regular file"):
        load_rows(Path("/dev/zero"), tmp_path, format="jsonl")


def test_a_read_outside_is_refused_at_validate_once_and_at_run_time(write, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "rows.jsonl").write_text('{"topic": "secret"}\n')
    pipe = tmp_path / "pipe"
    monkeypatch.chdir(write("pipe/t.jinja", "{{ row }}").parent)
    monkeypatch.delenv("SYNTH_ALLOW_READ", raising=False)
    path = write("pipe/p.yaml", f"stages:\n  - stage: load\n    path: {outside / 'rows.jsonl'}\n")
    (problem,) = problems(path)  # once: config reports the read, and the load stage does not read it
    assert "reads " in problem and "outside the pipeline's folder and the working directory" in problem
    with pytest.raises(InputError, match=r"stage 'load': reads .*outside the pipeline's folder"):
        load_rows(outside / "rows.jsonl", pipe)
    link = pipe / "data.jsonl"
    link.symlink_to(outside / "rows.jsonl")  # a link is followed to where it leads
    with pytest.raises(InputError, match="outside the pipeline's folder"):
        load_rows(link, pipe)
    monkeypatch.setenv("SYNTH_ALLOW_READ", str(outside))
    assert load_rows(link, pipe) == [{"topic": "secret"}]


def test_folders_are_checked_entry_by_entry(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, outside = tmp_path / "data", tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    pq.write_table(pa.table({"topic": ["a"]}), outside / "x.parquet")
    (tmp_path / "empty").mkdir()
    data.mkdir()
    pq.write_table(pa.table({"topic": ["b"]}), data / "a.parquet")
    (data / "b.parquet").symlink_to(outside / "x.parquet")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../../etc/passwd"}]}))
    cases = {
        "    path: empty\n": "empty is an empty folder; put the data files in it, or point path: at a file",
        "    path: data\n": "data/b.parquet is a link that reads ",
        "    path: hf\n    format: hf\n": "names a data file outside its folder ('../../etc/passwd')",
        "    path: data\n    format: jsonl\n": "data is a folder; format jsonl reads one file: point path: at it",
    }
    try:
        for load, message in cases.items():
            (problem,) = problems(pipeline(write, load))
            assert message in problem
        (data / "b.parquet").unlink()
        assert load_rows(data, tmp_path) == [{"topic": "b"}]
    finally:
        shutil.rmtree(outside)


# ---- inputs: damaged files, each one line naming the file, the line and the fix ----


def test_damaged_inputs_are_found_by_validate(write, tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"topic": "a"}\n{"topic": "caf\xe9"}\n')
    (tmp_path / "latin1.csv").write_bytes(b"topic\na\ncaf\xe9\n")
    (tmp_path / "latin1.json").write_bytes(b'[{"topic": "a"},\n {"topic": "caf\xe9"}]')
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "bad.json").write_text('[{"topic": "a"}, {"topic": \n')
    (tmp_path / "object.json").write_text('{"topic": "a"}')
    (tmp_path / "scalars.json").write_text('[{"topic": "a"}, 3]')
    (tmp_path / "extra.csv").write_text("topic,text\na,hi\nb,hi, there\n")
    (tmp_path / "short.csv").write_text('topic,text\n"a\nb",hi\nc\n')
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blank.csv").write_text("\ntopic\na\n")
    (tmp_path / "twice.csv").write_text("topic,topic\na,b\n")
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1" + b"\0" * 50)
    whole = gzip.compress(b'{"topic": "a"}\n' * 100)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    cases = {
        "latin1.jsonl": "latin1.jsonl:2: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        "latin1.csv": "latin1.csv:3: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        "latin1.json": "latin1.json:2: not UTF-8 text; save the file as UTF-8",
        "deep.jsonl": "deep.jsonl:1: cannot read this JSON (maximum recursion depth exceeded",
        "bad.json": "bad.json: not valid JSON (Expecting value); fix the file",
        "object.json": "object.json: a .json input must hold a list of objects (use .jsonl for one per line)",
        "scalars.json": "scalars.json: item 1 of the list is a int; each must be an object",
        "extra.csv": "extra.csv:3: 3 fields where the header has 2; fix that line (a field holding a comma",
        "short.csv": "short.csv:4: 1 fields where the header has 2",
        "empty.csv": "empty.csv: the first line is empty; a CSV input starts with a header row naming its columns",
        "blank.csv": "blank.csv: the first line is empty",
        "twice.csv": "twice.csv:1: the header names the column 'topic' twice; rename one",
        "empty.parquet": "empty.parquet: not a readable Parquet file (Parquet file size is 0 bytes); write it again",
        "cut.parquet": "cut.parquet: not a readable Parquet file",
        "cut.jsonl.gz": "cut.jsonl.gz: the gzip file is damaged or cut short (Compressed file ended before",
    }
    for name, message in cases.items():
        with bounded(seconds=5, megabytes=64):
            (problem,) = problems(pipeline(write, f"    path: {name}\n"))
        assert f"stages[0].path: {tmp_path / message}" in problem, problem
        with pytest.raises(InputError) as info:
            load_rows(tmp_path / name, tmp_path)
        assert str(info.value).startswith(str(tmp_path / message)), info.value


def test_validate_reads_the_first_mb_and_the_run_the_rest(write, tmp_path):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as fh:
        fh.truncate(2 * 2**30)  # one line of 2 GB (sparse: no disk is used)
    with bounded(seconds=5, megabytes=16):
        assert load_pipeline(pipeline(write, "    path: huge.jsonl\n")).stages[0].key == "load"
    with bounded(seconds=10, megabytes=200), pytest.raises(InputError, match=r"huge.jsonl:1: the line is longer"):
        load_rows(huge, tmp_path)
    late = tmp_path / "late.csv"
    late.write_text("topic\n" + "a\n" * 600_000 + "b,c\n")
    load_pipeline(pipeline(write, "    path: late.csv\n"))
    with pytest.raises(InputError, match=r"late.csv:600002: 2 fields where the header has 1"):
        load_rows(late, tmp_path)
    whole = gzip.compress(b"".join(b'{"topic": "t%07d"}\n' % i for i in range(200_000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) * 3 // 4])
    load_pipeline(pipeline(write, "    path: cut.jsonl.gz\n"))
    with pytest.raises(InputError, match="the gzip file is damaged or cut short"):
        load_rows(tmp_path / "cut.jsonl.gz", tmp_path)


def test_provenance_is_synths_own_column(write, tmp_path):
    (problem,) = problems(HOSTILE / "provenance-column.yaml")
    assert "row 1 has a column 'provenance', a name synth keeps for the record of what made each row" in problem
    assert "rename it, e.g. rename: {provenance: source_provenance}" in problem
    (tmp_path / "in.jsonl").write_text('{"topic": "a", "provenance": "made by hand"}\n')
    assert "has a column 'provenance'" in problems(pipeline(write, "    path: in.jsonl\n"))[0]
    renamed = "    path: in.jsonl\n    rename: {provenance: source_provenance}\n"
    assert load_pipeline(pipeline(write, renamed))
    assert load_rows(tmp_path / "in.jsonl", tmp_path, rename={"provenance": "source"}) == [
        {"topic": "a", "source": "made by hand"}
    ]
    earlier_run = {"topic": "a", "provenance": {"generate": {"model": "m"}, "respond": None}}
    (tmp_path / "out.jsonl").write_text(json.dumps(earlier_run) + "\n")
    assert load_rows(tmp_path / "out.jsonl", tmp_path) == [earlier_run]  # a synth output loads as it is
