"""The judge stage: verdict rules and parsers directly, config checks, and the stage end to end on
the embedded base model (real llama.cpp, JSON grammar on): absolute scores on single and listed
responses, pairwise with recorded swaps, the length rule, both orders, malformed answers, resume."""

from __future__ import annotations

import json
import sqlite3

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.errors import ConfigError
from synth.runs import Run
from synth.seeds import derive_seed
from synth.stages.judge.rubric import ULTRAFEEDBACK, Criterion, absolute_columns, parse_absolute
from synth.stages.judge.verdicts import (
    REWARD,
    VERDICTS,
    coin,
    combine,
    length_rule,
    normalize_verdict,
    pairwise_columns,
    parse_pairwise,
    unswap,
)

# ---- verdicts, rules and parsers (deterministic) ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A>>B", "A>>B"),
        (" a > b ", "A>B"),
        ("tie", "A=B"),
        ("B=A", "A=B"),
        ("B<A", "A>B"),
        ("A<<B", "B>>A"),
        ("B >> A", "B>>A"),
        ("A", None),
        ("A>>>B", None),
    ],
)
def test_normalize_verdict(text, expected):
    assert normalize_verdict(text) == expected


def test_unswap_maps_verdicts_back_to_the_rows_terms():
    # The judge saw (B, A) in positions (A, B): "A>>B" on screen means the row's B won by far.
    assert [unswap(v, True) for v in VERDICTS] == ["B>>A", "B>A", "A=B", "A>B", "A>>B"]
    assert [unswap(v, False) for v in VERDICTS] == list(VERDICTS)
    assert all(unswap(unswap(v, True), True) == v for v in VERDICTS)
    assert all(REWARD[unswap(v, True)] == -REWARD[v] for v in VERDICTS)


def test_combine_both_orders():
    assert combine("A>B", "A>B") == "A>B"
    assert combine("A>>B", "A>B") == "A>B"  # same winner, two strengths: the milder
    assert combine("B>A", "B>>A") == "B>A"
    assert combine("A>B", "B>A") == "A=B"  # disagreement: a tie
    assert combine("A>>B", "B>>A") == "A=B"
    assert combine("A>B", "A=B") == "A=B"
    assert combine("A=B", "A=B") == "A=B"


def test_length_rule():
    assert length_rule("A>B", 1501, 1000, 500) == "A=B"  # the winner is longer by 501
    assert length_rule("A>B", 1500, 1000, 500) == "A>B"  # by exactly 500: kept
    assert length_rule("B>A", 100, 700, 500) == "A=B"
    assert length_rule("B>A", 700, 100, 500) == "B>A"  # the loser is the longer one
    assert length_rule("A>B", 100, 900, 500) == "A>B"
    assert length_rule("A>>B", 5000, 10, 500) == "A>>B"  # "much better" is never touched
    assert length_rule("B>>A", 10, 5000, 500) == "B>>A"
    assert length_rule("A>B", 5000, 10, None) == "A>B"  # null disables it
    assert length_rule("A>B", 11, 10, 0) == "A=B"


def test_pairwise_columns_report_in_original_terms():
    # Shown swapped, the judge said A (the row's B) is slightly better; B is 600 characters longer.
    cols = pairwise_columns(["A>B"], ["why"], [True], (100, 700), 500)
    assert cols["judge_raw_verdicts"] == ["B>A"] and cols["judge_verdict"] == "A=B" and cols["judge_length_tie"]
    assert cols["judge_swapped"] is True and cols["judge_reward"] == 0.0
    cols = pairwise_columns(["A>B"], ["why"], [True], (100, 700), None)
    assert cols["judge_verdict"] == "B>A" and cols["judge_reward"] == -0.5 and not cols["judge_length_tie"]
    # Both orders: the same on-screen verdict in both orders is a disagreement about the responses.
    cols = pairwise_columns(["A>>B", "A>>B"], ["x", "y"], [False, True], (10, 10), 500)
    assert cols["judge_raw_verdicts"] == ["A>>B", "B>>A"] and cols["judge_verdict"] == "A=B"
    cols = pairwise_columns(["A>>B", "B>A"], ["x", "y"], [False, True], (10, 10), 500)
    assert cols["judge_raw_verdicts"] == ["A>>B", "A>B"] and cols["judge_verdict"] == "A>B"


def test_coin_is_seeded_and_fair():
    flips = [coin(derive_seed(7, "judge", "swap", str(i))) for i in range(4000)]
    assert 1850 < sum(flips) < 2150
    assert flips == [coin(derive_seed(7, "judge", "swap", str(i))) for i in range(4000)]


def test_parse_pairwise_tolerates_fences_and_prose():
    assert parse_pairwise('Sure.\n```json\n{"rationale": "B is right", "verdict": "B >> A"}\n```') == (
        "B>>A",
        {"rationale": "B is right"},
    )
    assert parse_pairwise('{"verdict": "tie"}') == ("A=B", {})
    assert parse_pairwise('{"rationale": "x", "verdict": "C>A"}') is None
    assert parse_pairwise("A is better.") is None


def test_parse_pairwise_reads_wildbench_answers():
    """WildBench's five choices (A++, A+, A=B, B+, B++) and its analyses, in the row's terms after a swap."""
    from synth.stages.judge.verdicts import CHOICES, pairwise_schema, unswap_rationale

    answer = {
        "analysis of A": "wrong city",
        "analysis of B": "right",
        "reason of A=B": "none",
        "reason of A>B": "shorter",
        "reason of B>A": "correct",
        "choice": "B++",
    }
    verdict, rationale = parse_pairwise(json.dumps(answer))
    assert verdict == "B>>A" and rationale == {k: v for k, v in answer.items() if k != "choice"}
    assert [parse_pairwise(json.dumps({**answer, "choice": c}))[0] for c in CHOICES] == list(VERDICTS)
    # Shown swapped, the judge's "analysis of A" was about the row's B.
    mapped = unswap_rationale(rationale, True)
    assert mapped["analysis of B"] == "wrong city" and mapped["reason of B>A"] == "shorter"
    assert mapped["reason of A=B"] == "none"
    schema = pairwise_schema(30)
    assert list(schema["properties"]) == [*list(answer)]  # analyses and reasons before the choice
    assert schema["properties"]["choice"]["enum"] == ["A++", "A+", "A=B", "B+", "B++"]
    assert (
        schema["properties"]["analysis of A"]["maxLength"] == 30
        and "maxLength" not in pairwise_schema(None)["properties"]["analysis of A"]
    )


def test_empty_responses_lose_without_a_call():
    from synth.stages.judge.verdicts import empty_verdict

    assert empty_verdict("", "Paris.") == "B>>A" and empty_verdict("Paris.", "  ") == "A>>B"
    assert empty_verdict("", " ") == "A=B" and empty_verdict("a", "b") is None


def render_judge(name: str, **variables) -> str:
    from synth.resources import resource_dir
    from synth.templating import render

    base = {"row": {}, "criteria": [], "overall": None, "length_rule": True, "checklist": []}
    return render(f"judge/{name}", resource_dir("templates").parent, **{**base, **variables})


CHECKLIST = ["Does it name Rome?", "Is the answer direct?"]


def test_pairwise_prompt_follows_wildbench():
    """eval_template.pairwise.v2.md's order: query, A, B, the checklist (one "- item" a line), then the
    rules (analyses, reasons, five choices, A=B sparingly) and the JSON keys; nothing on length while
    the length rule handles it."""
    text = render_judge("pairwise.jinja", instruction="Capital of Italy?", response_a="Rome.", response_b="Milan.",
                        checklist=CHECKLIST)  # fmt: skip
    order = ["Capital of Italy?", "<|begin_of_response_A|>\nRome.", "<|begin_of_response_B|>\nMilan.", "# Checklist",
             "- Does it name Rome?\n- Is the answer direct?\n", "do not limit your evaluation to it", "# Rules",
             '"A++"', '"A+"', '"A=B"', '"B+"', '"B++"', '"analysis of A"', '"choice"']  # fmt: skip
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert "Use this choice sparingly" in text and "longer" not in text and "length" not in text.lower()
    off = render_judge("pairwise.jinja", instruction="q", response_a="a", response_b="b", length_rule=False)
    assert "Do not prefer a response for being longer" in off and "# Checklist" not in off
    few = render_judge("pairwise_few_shot.jinja", instruction="q", response_a="a", response_b="b", checklist=CHECKLIST)
    assert few.endswith("Query: q\nChecklist: Does it name Rome? | Is the answer direct?\nResponse A: a\n"
                        "Response B: b\nJudgment:\n")  # fmt: skip
    assert "Length alone" not in few and "sparingly" in few


def test_score_prompt_and_wb_score():
    from synth.stages.judge.answers import parse_score, score_columns, wb_score

    text = render_judge("score.jinja", instruction="Capital of Italy?", response="Rome.", checklist=CHECKLIST)
    order = ["<|begin_of_response|>\nRome.", "- Does it name Rome?", "strengths", "1-2", "9-10", '"score"']
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert parse_score('{"strengths": "s", "weaknesses": "w", "score": "7"}') == (7, "s", "w")
    assert parse_score('{"strengths": "s", "weaknesses": "w", "score": 11}') is None
    assert [wb_score(s) for s in (1, 5, 7, 10)] == [-8.0, 0.0, 4.0, 10.0]  # WildBench: (score - 5) x 2
    cols = score_columns([(7, "s", "w"), (3, "", "bad")], many=True)
    assert cols["judge_score"] == [7, 3] and cols["wb_score"] == [4.0, -4.0] and cols["judge_weaknesses"][1] == "bad"


def test_ultrafeedback_prompt_shows_every_text_for_one_aspect():
    from synth.stages.judge.answers import aspect_columns, aspect_schema, parse_aspect

    [helpfulness, honesty, *_] = ULTRAFEEDBACK
    shown = [{"index": 1, "text": "Rome."}, {"index": 2, "text": "Milan."}, {"index": 3, "text": "Turin."}]
    text = render_judge("ultrafeedback.jinja", instruction="Capital of Italy?", responses=shown,
                        criterion=helpfulness.model_dump())  # fmt: skip
    assert "<text 1> Rome.\n<text 2> Milan.\n<text 3> Turin.\n" in text and "Helpfulness Assessment" in text
    assert "5. Outstandingly helpful" in text and "Honesty" not in text  # one aspect per prompt
    assert '"text 3": {"rating": [1-5], "rationale": "..."}}' in text
    answer = '{"text 1": {"rating": 5, "rationale": "ok"}, "text 2": {"rating": 1, "rationale": "no"}, "text 3": 2}'
    assert parse_aspect(answer, 3, [1, 5]) == [(5, "ok"), (1, "no"), (2, "")]
    assert parse_aspect(answer, 4, [1, 5]) is None and parse_aspect(answer.replace(": 5,", ": 6,"), 3, [1, 5]) is None
    assert list(aspect_schema(3, [1, 5], None)["properties"]) == ["text 1", "text 2", "text 3"]
    cols = aspect_columns({helpfulness.name: [(5, "a"), (1, "b")], honesty.name: [(4, "c"), (2, "d")]},
                          [helpfulness, honesty], many=True)  # fmt: skip
    assert cols["score_helpfulness"] == [5, 1] and cols["avg_fine_score"] == [4.5, 1.5]
    assert cols["judge_rationales"][1] == {"helpfulness": "b", "honesty": "d"}


def test_checklist_answers_and_columns():
    from synth.stages.judge.answers import clean_checklist, parse_checklist, shorten

    assert parse_checklist('{"checklist": ["Is it right?", "Is it right?", " - Is it short?"]}', 10) == [
        "Is it right?",
        "Is it short?",
    ]
    assert clean_checklist("1. First?\n2. Second?\n\n- Third?") == ["First?", "Second?", "Third?"]
    assert clean_checklist(None) is None and parse_checklist('{"checklist": []}', 5) is None
    assert shorten("one two three", 2) == "one two... (truncated)" and shorten("one two", 2) == "one two"


def test_parse_absolute_checks_every_score():
    rubric = [Criterion(name="clarity", description="clear?", scale=[1, 5])]
    good = 'Here: {"clarity": {"rationale": "ok", "score": "4"}, "overall": {"rationale": "fine", "score": 7.0}}'
    assert parse_absolute(good, rubric, [1, 10]) == {"clarity": (4, "ok"), "overall": (7, "fine")}
    assert parse_absolute('{"clarity": 5}', rubric, None) == {"clarity": (5, "")}  # bare scores are fine
    assert parse_absolute('{"clarity": {"score": 6}}', rubric, None) is None  # outside the scale
    assert parse_absolute('{"clarity": {"score": 4.5}}', rubric, None) is None
    assert parse_absolute('{"clarity": {"score": 4}}', rubric, [1, 10]) is None  # overall missing
    assert parse_absolute("4/5", rubric, None) is None


def test_absolute_columns_single_and_list():
    one = {c.name: (4, f"{c.name} ok") for c in ULTRAFEEDBACK} | {"overall": (8, "good")}
    two = {c.name: (2, "meh") for c in ULTRAFEEDBACK} | {"helpfulness": (1, "no"), "overall": (3, "bad")}
    cols = absolute_columns([one], ULTRAFEEDBACK, [1, 10], many=False)
    assert cols["overall_score"] == 8 and cols["score_truthfulness"] == 4 and cols["avg_fine_score"] == 4.0
    assert cols["judge_rationales"]["honesty"] == "honesty ok"
    cols = absolute_columns([one, two], ULTRAFEEDBACK, [1, 10], many=True)
    assert cols["overall_score"] == [8, 3] and cols["score_helpfulness"] == [4, 1]
    assert cols["avg_fine_score"] == [4.0, 1.75]
    assert [r["overall"] for r in cols["judge_rationales"]] == ["good", "bad"]


# ---- config checks ----

LOAD = """
stages:
  - stage: load
    rows: [{instruction: "Hi", response: "Hello", other: "Hey"}]
"""


def problems(write, tmp_path, stage: str, files: dict[str, str] | None = None) -> str:
    for name, text in (files or {}).items():
        write(name, text)
    path = write("p.yaml", LOAD + stage)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return str(info.value)


def test_check_names_the_field(write, tmp_path):
    text = problems(
        write,
        tmp_path,
        """
  - stage: judge
    criteria:
      - {name: clarity, description: "Is it clear?", scale: [5, 1]}
      - {name: Bad Name, description: "x", scale: [1, 5, 9]}
      - {name: clarity, description: "again", scale: [0, 1000]}
    overall_scale: [3, 3]
""",
    )
    assert "stages[1].criteria[0].scale: the lowest score must be below the highest (got [5, 1])" in text
    assert "stages[1].criteria[1].name: 'Bad Name' cannot name a criterion" in text
    assert "stages[1].criteria[1].scale: give two integers" in text
    assert "stages[1].criteria[2].name: criterion 'clarity' appears twice" in text
    assert "stages[1].criteria[2].scale: at most 100 steps" in text
    assert "stages[1].overall_scale: the lowest score must be below the highest" in text


def test_check_pairwise_needs_two_responses(write, tmp_path):
    text = problems(write, tmp_path, "\n  - stage: judge\n    task: pairwise\n    response_a: response\n")
    assert "stages[1].response_b: pairwise needs two responses" in text
    text = problems(write, tmp_path, "\n  - stage: judge\n    task: pairwise\n    overall_scale: [1, 5]\n")
    assert "stages[1].overall_scale: overall_scale is for task: absolute" in text
    text = problems(write, tmp_path, "\n  - stage: judge\n    both_orders: true\n    response_a: other\n")
    assert "stages[1].both_orders: both_orders is for task: pairwise" in text
    assert "stages[1].response_a: response_a is for task: pairwise" in text


def test_check_template_must_show_the_response(write, tmp_path):
    text = problems(
        write,
        tmp_path,
        "\n  - stage: judge\n    template: mine.jinja\n",
        {"mine.jinja": "Rate this instruction: {{ instruction }}\n"},
    )
    assert "stages[1].template: template 'mine.jinja' never shows what it judges: add {{ response }}" in text
    text = problems(
        write,
        tmp_path,
        "\n  - stage: judge\n    task: pairwise\n    response_a: response\n    response_b: other\n"
        "    template: pw.jinja\n",
        {"pw.jinja": "{{ instruction }} {{ response_a }} {{ missing_column }}\n"},
    )
    assert "add {{ response_b }}" in text and "missing_column" in text


# ---- the stage on the embedded base model (real llama.cpp) ----

llama_cpp = pytest.importorskip("llama_cpp")


def run(path, root):
    result = run_pipeline(load_pipeline(path), root)
    return result, read_output(root).to_pylist()


def stage_stats(result, label: str) -> dict:
    return {s["label"]: s for s in result.manifest["stages"]}[label]


def test_absolute_on_single_responses_with_the_default_rubric(write, tmp_path):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows:
              - {instruction: "What is the capital of Italy?", response: "The capital of Italy is Rome."}
              - {instruction: "What is 7 times 8?", response: "It is 54."}
          - stage: judge
            max_tokens: 200
            rationale_chars: 16
        """,
    )
    result, rows = run(path, tmp_path / "run")
    assert len(rows) == 2, stage_stats(result, "judge")
    for row in rows:
        assert 1 <= row["overall_score"] <= 10
        fine = [row[f"score_{c.name}"] for c in ULTRAFEEDBACK]
        assert all(isinstance(s, int) and 1 <= s <= 5 for s in fine)
        assert row["avg_fine_score"] == pytest.approx(sum(fine) / 4)
        assert set(row["judge_rationales"]) == {"overall", *(c.name for c in ULTRAFEEDBACK)}
        assert all(len(r) <= 16 for r in row["judge_rationales"].values())  # the schema's maxLength held
        assert row["judge_model"] == "local:gemma-3-270m-q4_k_m.gguf"
        record = row["provenance"]["judge"]
        assert record["template"] == "judge/absolute_few_shot.jinja" and record["mode"] == "complete"
        assert record["temperature"] == 0.0 and record["json_schema"] is True and len(record["seeds"]) == 1
        assert len(record["template_sha"]) == 16
    # With the grammar every answer parses at once.
    assert stage_stats(result, "judge")["counters"]["requests"] == 2


def test_absolute_on_a_list_with_a_custom_rubric(write, tmp_path):
    path = write(
        "p.yaml",
        """
        stages:
          - stage: load
            rows:
              - {instruction: "Say hello in French.", response: ["Bonjour.", "Hola.", "Hello."]}
          - stage: judge
            criteria:
              - {name: correctness, description: "Is the answer right?", scale: [0, 3]}
            overall_scale: null
            max_tokens: 60
            rationale_chars: 12
        """,
    )
    result, [row] = run(path, tmp_path / "run")
    assert len(row["score_correctness"]) == 3 and all(0 <= s <= 3 for s in row["score_correctness"])
    assert row["avg_fine_score"] == [float(s) for s in row["score_correctness"]]
    assert "overall_score" not in row
    assert [set(r) for r in row["judge_rationales"]] == [{"correctness"}] * 3
    assert len(row["provenance"]["judge"]["seeds"]) == 3
    assert stage_stats(result, "judge")["counters"]["requests"] == 3


PAIRS = [
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "Milan."),
    ("What is 7 times 8?", "54", "7 times 8 is 56."),
    ("Name a color.", "Blue.", "Blue. " + "It is the color of a clear sky and of the deep sea. " * 12),
    ("Say hello in French.", "Bonjour, comment allez-vous aujourd'hui ? " * 15, "Hola."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius.", "About 50 degrees."),
    ("Give a synonym for big.", "Large.", "Small."),
]


def pairwise_pipeline(write, extra: str = ""):
    rows = json.dumps([{"instruction": q, "a": a, "b": b} for q, a, b in PAIRS])
    return write(
        "p.yaml",
        f"""
        seed: 5
        stages:
          - stage: load
            rows: {rows}
          - stage: judge
            task: pairwise
            response_a: a
            response_b: b
            max_tokens: 200
            rationale_chars: 6
            checklist: "off"  # checklists: test_checklist_score_and_ultrafeedback_on_the_embedded_model
        {extra}""",
    )


def cached_prompts(root) -> dict[str, list[str]]:
    """Prompt -> the answers the cache holds for it (one per attempt)."""
    out: dict[str, list[str]] = {}
    with sqlite3.connect(root / "cache.sqlite") as db:
        for request, response in db.execute("SELECT request, response FROM requests"):
            prompt = json.loads(request)["prompt"]
            out.setdefault(prompt, []).append(json.loads(response)["generations"][0]["text"])
    return out


def shown_order(prompts: dict[str, list[str]], row: dict) -> list[tuple[bool, str]]:
    """(whether B was shown first, the judge's answer) for each prompt that judged this row."""
    found = []
    for prompt, answers in prompts.items():
        question = prompt.rsplit("Query: ", 1)[1]
        if not question.startswith(row["instruction"] + "\n") or "Response A: " not in question:
            continue  # another row's, or the instruction's checklist
        swapped = f"Response A: {row['b']}\nResponse B: {row['a']}\n" in question
        assert swapped or f"Response A: {row['a']}\nResponse B: {row['b']}\n" in question
        found += [(swapped, answer) for answer in answers]
    return found


def sign(verdict: str) -> int:
    return (REWARD[verdict] > 0) - (REWARD[verdict] < 0)


def test_pairwise_swaps_length_rule_both_orders_and_resume(write, tmp_path):
    root = tmp_path / "run"
    first, rows = run(pairwise_pipeline(write), root)
    assert len(rows) == len(PAIRS)
    assert stage_stats(first, "judge")["counters"]["requests"] == len(PAIRS)
    swaps = [row["judge_swapped"] for row in rows]
    assert True in swaps and False in swaps  # seed 5 gives both sides of the coin on these rows
    prompts = cached_prompts(root)
    for row in rows:
        [(swapped, answer)] = shown_order(prompts, row)
        assert swapped == row["judge_swapped"]  # the recorded swap is the order the judge saw
        verdict, _ = parse_pairwise(answer)
        assert row["judge_raw_verdicts"] == [unswap(verdict, swapped)]  # reported in the row's terms
        expected = length_rule(row["judge_raw_verdicts"][0], len(row["a"]), len(row["b"]), 500)
        assert row["judge_verdict"] == expected and row["judge_reward"] == REWARD[expected]
        assert row["judge_length_tie"] == (expected != row["judge_raw_verdicts"][0])

    # Verdicts are replayed from the cache: another length rule sends no request.
    second, again = run(pairwise_pipeline(write, "    length_tie_chars: 0\n"), root)
    counters = stage_stats(second, "judge")["counters"]
    assert counters.get("requests", 0) == 0 and counters["cache_hits"] == len(PAIRS)
    for before, after in zip(rows, again, strict=True):
        assert after["judge_raw_verdicts"] == before["judge_raw_verdicts"]
        raw = after["judge_raw_verdicts"][0]
        assert after["judge_verdict"] == length_rule(raw, len(after["a"]), len(after["b"]), 0)

    # Both orders: the first order is the cached one; the second shows the other side first.
    third, both = run(pairwise_pipeline(write, "    both_orders: true\n"), root)
    counters = stage_stats(third, "judge")["counters"]
    assert counters["requests"] == len(PAIRS) and counters["cache_hits"] == len(PAIRS)
    prompts = cached_prompts(root)
    disagreements = 0
    for before, row in zip(rows, both, strict=True):
        assert row["judge_swapped"] == before["judge_swapped"]
        assert row["judge_raw_verdicts"][0] == before["judge_raw_verdicts"][0]
        assert sorted(s for s, _ in shown_order(prompts, row)) == [False, True]
        first_raw, second_raw = row["judge_raw_verdicts"]
        if sign(first_raw) != sign(second_raw):
            disagreements += 1
            assert row["judge_verdict"] == "A=B"  # the two orders disagree: a tie
        assert row["judge_verdict"] == length_rule(combine(first_raw, second_raw), len(row["a"]), len(row["b"]), 500)
        assert len(row["judge_verdict_rationales"]) == 2 and len(row["provenance"]["judge"]["seeds"]) == 2
    assert disagreements >= 1, "a 270M base model is position-biased: some orders should disagree"


def test_malformed_answers_are_retried_then_fail_with_the_raw_answer(write, tmp_path):
    write("prose.jinja", "Here is a short story about {{ instruction }} and {{ response }}.\n\nOnce upon a time,")
    path = write(
        "p.yaml",
        """
        run: {max_failure_rate: 1.0}  # every row fails here: the run must still finish
        stages:
          - stage: load
            rows:
              - {instruction: "a cat", response: "a dog"}
              - {instruction: "the sea", response: "a boat"}
          - stage: judge
            mode: complete
            template: prose.jinja
            schema: "off"
            parse_retries: 1
            max_tokens: 16
        """,
    )
    result, rows = run(path, tmp_path / "run")
    assert rows == [] and result.manifest["status"] == "complete"
    stats = stage_stats(result, "judge")
    assert stats["failed"] == {"parse_failed": 2}
    assert stats["counters"]["parse_retried"] == 2 and stats["counters"]["parse_failed"] == 2
    assert stats["counters"]["requests"] == 4  # a first round and one retry, each with its own seed
    dropped = list(Run(tmp_path / "run").iter_dropped("judge"))
    assert sorted(d["reason"] for d in dropped) == ["parse_failed", "parse_failed"]
    answers = cached_prompts(tmp_path / "run")
    for d in dropped:
        assert d["failed"] and d["detail"].startswith("raw answers: ")
        row = json.loads(d["row"])
        [texts] = [t for p, t in answers.items() if row["instruction"] in p]
        # two rounds, two seeds; the detail keeps the last round's answer as the model gave it
        assert len(texts) == 2 and sum(repr(t) in d["detail"] for t in texts) == 1


def test_checklist_score_and_ultrafeedback_on_the_embedded_model(write, tmp_path):
    """A checklist read from a column goes into the pairwise prompt as given; a generated one is asked
    once per instruction and shared by the next judge stage (same seed, same cache entry); WB-Score
    and UltraFeedback's per-aspect prompts over a list run through the grammar."""
    rows = [
        {"instruction": "What is the capital of Italy?", "a": "Rome.", "b": "Milan.", "qs": ["Is it Rome?"]},
        {"instruction": "What is 7 times 8?", "a": "54", "b": "56", "qs": ["1. Is it 56?", "- Is it short?"]},
    ]
    for row in rows:
        row["r"] = [row["a"], row["b"]]
    path = write(
        "p.yaml",
        f"""
        seed: 3
        stages:
          - stage: load
            rows: {json.dumps(rows)}
          - stage: judge
            name: pw
            task: pairwise
            response_a: a
            response_b: b
            checklist: column
            checklist_column: qs
            max_tokens: 160
            rationale_chars: 12
          - stage: judge
            name: sc1
            task: score
            response: a
            checklist_size: 2
            checklist_max_tokens: 48
            rationale_chars: 12
            max_tokens: 60
          - stage: judge
            name: sc
            task: score
            response: r
            checklist_size: 2
            checklist_max_tokens: 48
            rationale_chars: 12
            max_tokens: 60
          - stage: judge
            name: uf
            task: ultrafeedback
            response: r
            criteria:
              - {{name: helpfulness, description: "Is it right and useful?"}}
              - {{name: honesty, description: "Is its confidence warranted?"}}
            rationale_chars: 8
            max_tokens: 60
        """,
    )
    result, out = run(path, tmp_path / "run")
    assert len(out) == 2, [stage_stats(result, s) for s in ("pw", "sc1", "sc", "uf")]
    prompts = cached_prompts(tmp_path / "run")
    assert out[0]["judge_verdict"] in VERDICTS
    # the column's checklist, as given (numbering and bullets taken off)
    assert any("Query: What is the capital of Italy?\nChecklist: Is it Rome?\nResponse A:" in p for p in prompts)
    assert any("Query: What is 7 times 8?\nChecklist: Is it 56? | Is it short?\nResponse A:" in p for p in prompts)
    # score: a generated checklist per instruction, reused by the second score stage without a request
    sc1, sc = stage_stats(result, "sc1")["counters"], stage_stats(result, "sc")["counters"]
    retried = sc1.get("checklist_parse_retried", 0) + sc1.get("parse_retried", 0)  # a retry is a request too
    assert sc1["requests"] == 2 + 2 + retried, sc1  # two checklists, two responses
    assert sc["requests"] == 4 + sc.get("parse_retried", 0), sc  # the checklists came from the cache
    assert "checklist_parse_retried" not in sc
    for row in out:
        checklist = row["judge_checklist"]
        assert 1 <= len(checklist) <= 2 and all(isinstance(q, str) and q for q in checklist)
        asked = [p for p in prompts if p.endswith(f"Query: {row['instruction']}\nChecklist:\n")]
        assert len(asked) == 1  # one prompt per instruction (its answers: one, or more after a retry)
        scores = row["judge_score"]
        assert len(scores) == 2 and all(1 <= s <= 10 for s in scores)
        assert row["wb_score"] == [(s - 5) * 2.0 for s in scores]
        assert len(row["score_helpfulness"]) == 2 and all(1 <= s <= 5 for s in row["score_honesty"])
        assert row["avg_fine_score"] == [
            (h + o) / 2 for h, o in zip(row["score_helpfulness"], row["score_honesty"], strict=True)
        ]
    # ultrafeedback: one prompt per aspect and row, each showing both texts
    uf_counters = stage_stats(result, "uf")["counters"]
    assert uf_counters["requests"] == 4 + uf_counters.get("parse_retried", 0)
    uf = [p for p in prompts if "rates texts written for an instruction on one aspect" in p]
    assert len(uf) == 4 and all(
        "<text 1> Rome.\n<text 2> Milan.\n" in p or "<text 1> 54\n<text 2> 56\n" in p for p in uf
    )
