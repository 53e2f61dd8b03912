"""Pipeline files: every mistake is reported at once, with file:line, the field and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synth import ConfigError, load_pipeline
from synth.config import Pipeline


def problems_of(path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return [str(p) for p in info.value.problems]


def test_valid_pipeline_loads_with_defaults(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}, {topic: b}]
          - stage: generate
            template: quickstart/question.jinja
            output: instruction
    """,
    )
    pipeline = load_pipeline(path)
    assert isinstance(pipeline, Pipeline)
    assert pipeline.name == "p"
    assert [s.label for s in pipeline.stages] == ["load", "generate"]
    assert pipeline.backends["default"].type == "local"  # the embedded default
    assert pipeline.stages[1].params.temperature == 1.0


def test_missing_required_field_names_line_and_field(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: generate
            template: quickstart/question.jinja
    """,
    )
    assert problems_of(path) == [f"{path}:4: stages[1].output: required field is missing"]


def test_wrong_type_names_line_field_and_value(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: generate
            template: quickstart/question.jinja
            output: instruction
            max_tokens: lots
    """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:7: stages[1].max_tokens:")
    assert "integer" in problem and "'lots'" in problem


def test_unknown_stage_suggests_the_closest(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: genrate
            output: x
    """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:4: stages[1].stage:")
    assert "unknown stage 'genrate'; did you mean 'generate'?" in problem


def test_unknown_parameter_suggests_the_closest(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: generate
            template: quickstart/question.jinja
            output: instruction
            temprature: 0.7
    """,
    )
    assert problems_of(path) == [f"{path}:7: stages[1].temprature: unknown field; did you mean 'temperature'?"]


def test_bad_template_name(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: template
            template: quickstart/questions.jinja
            output: prompt
    """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:5: stages[1].template: template 'quickstart/questions.jinja' not found")
    assert "did you mean 'quickstart/question.jinja'?" in problem


def test_template_variable_that_no_stage_provides(write):
    write("t.jinja", "Write about {{ topic }} for {{ audience }}.")
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: template
            template: t.jinja
            output: prompt
    """,
    )
    (problem,) = problems_of(path)
    assert "uses audience, which no earlier stage provides (available columns: topic)" in problem


def test_template_syntax_error_is_reported_with_its_line(write):
    write("t.jinja", "line one\n{% if topic %}never closed\n")
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: template
            template: t.jinja
            output: prompt
    """,
    )
    (problem,) = problems_of(path)
    assert "template 't.jinja' line" in problem


def test_every_problem_is_reported_at_once(write):
    path = write(
        "p.yaml",
        """
        name: bad name!
        seed: forty-two
        stages:
          - stage: load
            path: does/not/exist.jsonl
          - stage: generate
            output: x
          - stage: smaple
            n: 3
          - stage: generate
            template: quickstart/question.jinja
            output: y
            backend: judge
    """,
    )
    problems = problems_of(path)
    text = "\n".join(problems)
    assert len(problems) >= 5, text
    assert f"{path}:1: name:" in text
    assert f"{path}:2: seed:" in text
    assert "does not exist" in text
    assert "give exactly one of 'template' or 'prompt_column'" in text
    assert "did you mean 'sample'?" in text
    assert "no backend named 'judge'" in text


def test_invalid_yaml_names_the_line(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}
          - stage: generate
    """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "invalid YAML" in problem


def test_duplicate_keys_are_errors(write):
    path = write(
        "p.yaml",
        """
        seed: 1
        stages:
          - stage: load
            rows: [{topic: a}]
        seed: 2
    """,
    )
    assert problems_of(path) == [f"{path}:5: seed: duplicate key (first given on line 1)"]


def test_column_read_before_it_exists(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: generate
            prompt_column: prompt
            output: answer
    """,
    )
    (problem,) = problems_of(path)
    assert "reads column(s) prompt that no earlier stage provides (available: topic)" in problem


def test_first_stage_must_be_a_source_and_labels_unique(write):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: sample
            n: 2
          - stage: load
            rows: [{topic: a}]
    """,
    )
    text = "\n".join(problems_of(path))
    assert "the first stage must produce rows" in text
    assert "'load' produces rows and can only be the first stage" in text


def test_backend_errors_name_the_field(write):
    path = write(
        "p.yaml",
        """
        backends:
          default: {type: openai, model: m}
        stages:
          - stage: load
            rows: [{topic: a}]
    """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: backends.default:") and "give base_url" in problem


def test_yaml_tags_that_run_code_are_refused(write):
    path = write(
        "p.yaml",
        """
        seed: !!python/object/apply:os.system ["echo pwned"]
        stages:
          - stage: load
            rows: [{topic: a}]
    """,
    )
    (problem,) = problems_of(path)
    assert "invalid YAML" in problem


def test_cli_validate_prints_problems_without_traceback(write):
    bad = write(
        "bad.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - stage: genrate
    """,
    )
    good = write(
        "good.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
    """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "synth.cli", "validate", str(good), str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{good}: ok (1 stages)" in result.stdout
    assert f"error: {bad}:4: stages[1].stage: unknown stage 'genrate'; did you mean 'generate'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_fingerprint_ignores_speed_settings_but_not_sampling(write):
    base = """
        backends:
          default: {{type: openai, model: m, base_url: "http://127.0.0.1:1/v1", max_concurrency: {conc}}}
        run: {{max_batches_in_flight: {flight}}}
        stages:
          - stage: load
            rows: [{{topic: a}}]
          - stage: generate
            template: quickstart/question.jinja
            output: q
            temperature: {temp}
    """
    fp = lambda **kw: load_pipeline(write("p.yaml", base.format(**kw))).fingerprint()  # noqa: E731
    reference = fp(conc=8, flight=2, temp=0.5)
    assert fp(conc=64, flight=8, temp=0.5) == reference
    assert fp(conc=8, flight=2, temp=0.7) != reference


def test_include_expands_a_preset_with_overrides(write, tmp_path):
    write(
        "recipe.yaml",
        """
        stages:
          - stage: sort
            name: longest
            by: topic
            key: length
            descending: true
          - stage: limit
            name: top
            n: 100
    """,
    )
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}, {topic: bbb}, {topic: cc}]
          - include: recipe
            with: {top: {n: 2}}
    """,
    )
    pipeline = load_pipeline(path)
    assert [s.label for s in pipeline.stages] == ["load", "longest", "top"]
    assert pipeline.stages[2].params.n == 2
    from synth import read_output, run_pipeline

    run_pipeline(pipeline, tmp_path / "run")
    assert read_output(tmp_path / "run").column("topic").to_pylist() == ["bbb", "cc"]

    path.write_text(path.read_text().replace("{top: {n: 2}}", "{top: false}"))
    assert [s.label for s in load_pipeline(path).stages] == ["load", "longest"]
    path.write_text(path.read_text().replace("{top: false}", "{top: 2}"))
    assert f"{path}:5: stages[1].with.top: give the parameters to change as a mapping" in "\n".join(problems_of(path))


def test_mistakes_inside_a_preset_point_at_the_preset(write):
    preset = write(
        "recipe.yaml",
        """
        stages:
          - stage: sort
            by: topic
            kee: length
    """,
    )
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows: [{topic: a}]
          - include: recipe
            with: {nope: {n: 2}}
          - include: missing-recipe
    """,
    )
    text = "\n".join(problems_of(path))
    assert f"{preset}:4: stages[0].kee: unknown field; did you mean 'key'?" in text
    assert f"{path}:5: stages[1].with.nope: preset 'recipe' has no stage labelled 'nope' (it has: sort)" in text
    assert f"{path}:6: stages[2].include: no preset 'missing-recipe'" in text


def test_an_unknown_backend_type_gets_a_suggestion(write):
    path = write(
        "p.yaml",
        """
        backends:
          default: {type: vllmm, model: x}
        stages:
          - stage: load
            rows: [{a: 1}]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    (problem,) = info.value.problems
    assert problem.field == "backends.default.type" and problem.line == 2
    assert problem.message == "unknown type 'vllmm'; did you mean 'vllm'? (types: local, openai, vllm)"
