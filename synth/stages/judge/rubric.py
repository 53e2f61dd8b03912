"""The absolute judge's rubric: criteria and their scales, the JSON schema of an answer, the parser
that accepts an answer only when every score is in range, and the columns made from it. Pure and
deterministic, so parsing can be replayed from cached answers."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..common import find_json


class Criterion(BaseModel):
    """One fine-grained aspect of an absolute judgment: a column `score_<name>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="snake_case name; the score goes to the column score_<name>")
    description: str = Field(description="what the judge should look at, in a sentence or two")
    scale: list[int] = Field(default_factory=lambda: [1, 5], description="[lowest, highest] score, integers")

    def __repr__(self) -> str:  # short, for `synth stages`: helpfulness 1-5
        return f"{self.name} {'-'.join(map(str, self.scale))}"


# UltraFeedback's four fine-grained aspects, 1-5 each (their rubrics, paraphrased in short).
ULTRAFEEDBACK = [
    Criterion(
        name="helpfulness",
        description="Is the response correct, informative and relevant to the task, clear and complete "
        "without being padded or repetitive?",
    ),
    Criterion(
        name="honesty",
        description="Is the response confident where it is right and open about uncertainty where it is not, "
        "instead of sounding sure about things it does not know?",
    ),
    Criterion(
        name="instruction_following",
        description="Does the response do what the instruction asks, respecting every stated requirement "
        "(goal, format, length, style)?",
    ),
    Criterion(
        name="truthfulness",
        description="Is the response free of hallucinations: no claims that contradict established facts, "
        "the instruction or the response itself?",
    ),
]
OVERALL = "overall"
MAX_SCALE_STEPS = 100  # a scale becomes an enum in the schema: keep it small
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def scale_problem(scale: list[int]) -> str | None:
    """Why `scale` is not a usable [lowest, highest] pair, or None."""
    if len(scale) != 2:
        return f"give two integers, [lowest, highest] (got {len(scale)} values)"
    low, high = scale
    if low >= high:
        return f"the lowest score must be below the highest (got [{low}, {high}])"
    if high - low > MAX_SCALE_STEPS:
        return f"at most {MAX_SCALE_STEPS} steps between lowest and highest (got [{low}, {high}])"
    return None


def rubric_problems(criteria: list[Criterion], overall: list[int] | None) -> list[tuple[tuple, str]]:
    """(field path, message) for every unusable criterion or scale."""
    problems: list[tuple[tuple, str]] = []
    if not criteria and not overall:
        problems.append((("criteria",), "nothing to score: give criteria or an overall_scale"))
    seen: set[str] = set()
    for i, c in enumerate(criteria):
        if not NAME.match(c.name) or c.name == OVERALL:
            message = (
                f"'{c.name}' cannot name a criterion: use snake_case (lowercase letters, digits, _) and not "
                "'overall'; it becomes the column score_<name>"
            )
            problems.append((("criteria", i, "name"), message))
        elif c.name in seen:
            problems.append((("criteria", i, "name"), f"criterion '{c.name}' appears twice: give each its own name"))
        seen.add(c.name)
        if not c.description.strip():
            problems.append((("criteria", i, "description"), "describe what the judge should look at"))
        if (why := scale_problem(c.scale)) is not None:
            problems.append((("criteria", i, "scale"), why))
    if overall is not None and (why := scale_problem(overall)) is not None:
        problems.append((("overall_scale",), why))
    return problems


def rationale_schema(max_chars: int | None) -> dict[str, Any]:
    return {"type": "string", **({"maxLength": max_chars} if max_chars else {})}


def _rated(scale: list[int], max_chars: int | None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "rationale": rationale_schema(max_chars),
            "score": {"type": "integer", "enum": list(range(scale[0], scale[1] + 1))},
        },
        "required": ["rationale", "score"],
        "additionalProperties": False,
    }


def absolute_schema(criteria: list[Criterion], overall: list[int] | None, max_chars: int | None) -> dict:
    """One object per criterion (then `overall`), each {"rationale": ..., "score": ...}: the
    rationale comes first, so the model reasons before it scores."""
    properties = {c.name: _rated(c.scale, max_chars) for c in criteria}
    if overall:
        properties[OVERALL] = _rated(overall, max_chars)
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def score_value(value: Any, scale: list[int]) -> int | None:
    """An integer score within the scale (4, 4.0 and "4" all read as 4), or None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    if not number.is_integer() or not scale[0] <= number <= scale[1]:
        return None
    return int(number)


def parse_absolute(text: str, criteria: list[Criterion], overall: list[int] | None) -> dict | None:
    """{name: (score, rationale)} for every criterion (and overall), or None when the answer holds
    no JSON object, misses a criterion, or scores one outside its scale."""
    data = find_json(text)
    if data is None:
        return None
    wanted = [(c.name, c.scale) for c in criteria] + ([(OVERALL, overall)] if overall else [])
    out = {}
    for name, scale in wanted:
        item = data.get(name)
        if isinstance(item, dict):  # {"rationale": ..., "score": ...}
            score, rationale = score_value(item.get("score"), scale), item.get("rationale")
        else:  # a bare score is accepted too
            score, rationale = score_value(item, scale), None
        if score is None:
            return None
        out[name] = (score, str(rationale).strip() if rationale is not None else "")
    return out


def absolute_column_names(criteria: list[Criterion], overall: list[int] | None) -> list[str]:
    scores = (["overall_score"] if overall else []) + [f"score_{c.name}" for c in criteria]
    return scores + (["avg_fine_score"] if criteria else []) + ["judge_rationales"]


def absolute_columns(parsed: list[dict], criteria: list[Criterion], overall: list[int] | None, many: bool) -> dict:
    """A row's columns from its parsed judgments (one per response; lists when `many`):
    overall_score, score_<criterion>, avg_fine_score (mean of the criteria), judge_rationales."""
    names = ([OVERALL] if overall else []) + [c.name for c in criteria]

    def value(values: list) -> Any:
        return values if many else values[0]

    columns: dict[str, Any] = {}
    for name in names:
        columns["overall_score" if name == OVERALL else f"score_{name}"] = value([p[name][0] for p in parsed])
    if criteria:
        means = [round(sum(p[c.name][0] for c in criteria) / len(criteria), 4) for p in parsed]
        columns["avg_fine_score"] = value(means)
    columns["judge_rationales"] = value([{name: p[name][1] for name in names} for p in parsed])
    return columns
