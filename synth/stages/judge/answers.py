"""Answers of the judge's other tasks: the checklist a WildBench prompt carries, WB-Score (one
response, 1-10) and UltraFeedback's per-aspect ratings of all of a row's responses at once. Each
has its JSON schema, a parser that accepts an answer only when it is complete and in range, and
the columns made from parsed answers. Pure and deterministic, so parsing replays from the cache."""

from __future__ import annotations

from typing import Any

from ..common import find_json
from .rubric import Criterion, rationale_schema, score_value

# ---- the checklist ----


def checklist_schema(size: int, max_chars: int | None) -> dict:
    items = {"type": "array", "items": rationale_schema(max_chars), "minItems": 1, "maxItems": size}
    return {
        "type": "object",
        "properties": {"checklist": items},
        "required": ["checklist"],
        "additionalProperties": False,
    }


def clean_checklist(value: Any, size: int | None = None) -> list[str] | None:
    """A list of questions from a list, or from text with one a line ("- ", "1. " taken off)."""
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list):
        return None
    items = []
    for item in value:
        text = str(item).strip().lstrip("-*•").strip()
        text = text.split(". ", 1)[1] if text[:1].isdigit() and ". " in text[:4] else text
        if text and text not in items:  # a question asked twice counts once
            items.append(text)
    return items[:size] if items else None


def parse_checklist(text: str, size: int) -> list[str] | None:
    data = find_json(text)
    return clean_checklist(data.get("checklist"), size) if data is not None else None


# ---- WB-Score: one response, 1-10 ----

SCORE_SCALE = (1, 10)


def score_schema(max_chars: int | None) -> dict:
    properties = {
        "strengths": rationale_schema(max_chars),
        "weaknesses": rationale_schema(max_chars),
        "score": {"type": "integer", "enum": list(range(SCORE_SCALE[0], SCORE_SCALE[1] + 1))},
    }
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def parse_score(text: str) -> tuple[int, str, str] | None:
    """(score 1-10, strengths, weaknesses), or None."""
    data = find_json(text)
    if data is None:
        return None
    score = score_value(data.get("score"), list(SCORE_SCALE))
    if score is None:
        return None
    return score, str(data.get("strengths") or "").strip(), str(data.get("weaknesses") or "").strip()


def wb_score(score: int) -> float:
    """WildBench's rescaling of a 1-10 score: (score - 5) x 2, so 5 is 0 and 10 is 10."""
    return float((score - 5) * 2)


def score_columns(parsed: list[tuple[int, str, str]], many: bool) -> dict:
    def value(values: list) -> Any:
        return values if many else values[0]

    return {
        "judge_score": value([p[0] for p in parsed]),
        "wb_score": value([wb_score(p[0]) for p in parsed]),
        "judge_strengths": value([p[1] for p in parsed]),
        "judge_weaknesses": value([p[2] for p in parsed]),
    }


SCORE_COLUMNS = ["judge_score", "wb_score", "judge_strengths", "judge_weaknesses"]

# ---- UltraFeedback: one aspect, every response of the row ----


def text_key(i: int) -> str:
    return f"text {i + 1}"


def aspect_schema(n: int, scale: list[int], max_chars: int | None) -> dict:
    """One {"rating", "rationale"} per text, rating first as UltraFeedback's output format has it."""
    rated = {
        "type": "object",
        "properties": {
            "rating": {"type": "integer", "enum": list(range(scale[0], scale[1] + 1))},
            "rationale": rationale_schema(max_chars),
        },
        "required": ["rating", "rationale"],
        "additionalProperties": False,
    }
    properties = {text_key(i): rated for i in range(n)}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def parse_aspect(text: str, n: int, scale: list[int]) -> list[tuple[int, str]] | None:
    """[(rating, rationale)] for texts 1..n, or None when one is missing or out of range."""
    data = find_json(text)
    if data is None:
        return None
    out = []
    for i in range(n):
        item = data.get(text_key(i))
        if isinstance(item, dict):
            rating, rationale = score_value(item.get("rating"), scale), item.get("rationale")
        else:
            rating, rationale = score_value(item, scale), None
        if rating is None:
            return None
        out.append((rating, str(rationale).strip() if rationale is not None else ""))
    return out


def aspect_columns(parsed: dict[str, list[tuple[int, str]]], criteria: list[Criterion], many: bool) -> dict:
    """score_<aspect>, avg_fine_score and judge_rationales from one parsed answer per aspect."""
    n = len(parsed[criteria[0].name])

    def value(values: list) -> Any:
        return values if many else values[0]

    columns: dict[str, Any] = {f"score_{c.name}": value([r for r, _ in parsed[c.name]]) for c in criteria}
    means = [round(sum(parsed[c.name][i][0] for c in criteria) / len(criteria), 4) for i in range(n)]
    columns["avg_fine_score"] = value(means)
    columns["judge_rationales"] = value([{c.name: parsed[c.name][i][1] for c in criteria} for i in range(n)])
    return columns


def shorten(text: str, max_words: int | None) -> str:
    """WildBench's max_words_to_eval: a text longer than max_words words is cut there."""
    if max_words is None:
        return text
    words = text.split(" ")
    return text if len(words) <= max_words else " ".join(words[:max_words]) + "... (truncated)"
