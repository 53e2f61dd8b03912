"""Pieces of the `aggregate` stage that need no model: the candidates a row offers, the windows
Self-MoA-Seq slides over them, the system message the references go into, and what makes an
aggregated answer unusable."""

from __future__ import annotations

import re
from typing import Any

from ..base import Row

# A reference shorter than this may be quoted whole by a good answer ("Paris."): it never counts
# as a copy.
MIN_COPY_CHARS = 16
# Lines of a prompt's own wording at least this long are looked for (their first this many
# characters) in answers: shorter ones ("Answers:", "Best answer:") may occur in any text.
MIN_LINE_CHARS = 24


def candidate_columns(candidates: str | list[str]) -> list[str]:
    return [candidates] if isinstance(candidates, str) else list(candidates)


def candidates_of(row: Row, columns: list[str]) -> tuple[list[str], int]:
    """The row's candidate responses in column order (a list column gives all its items), and how
    many were empty or missing and so left out."""
    found: list[str] = []
    skipped = 0
    for column in columns:
        value: Any = row.get(column)
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            text = "" if item is None else str(item).strip()
            if text:
                found.append(text)
            else:
                skipped += 1
    return found, skipped


def windows(count: int, window: int | None, stride: int | None) -> list[tuple[int, int]]:
    """The candidate slices [start, end) of the aggregation calls over `count` candidates.

    One call sees them all when `window` is None or they fit. Otherwise (Self-MoA-Seq) the first
    call sees the first `window` candidates, and every later call the running answer plus the
    next `stride` candidates (default and most: `window - 1`), after the last `window - 1 - stride`
    candidates of the call before (none at the default). The last call may hold fewer."""
    if window is None or count <= window:
        return [(0, count)]
    stride = stride or window - 1
    plan = [(0, window)]
    end = window
    while end < count:
        start, end = end - (window - 1 - stride), min(end + stride, count)
        plan.append((start, end))
    return plan


def with_references(system: str | None, block: str) -> str:
    """The system message: the conversation's own system text, then the references block."""
    return f"{system}\n\n{block}" if system else block


_NUMBER = re.compile(r"^\d+\.\s*")  # a list number before a reference


def _norm(text: str) -> str:
    return " ".join(text.split())


def prompt_lines(prompt: str, *texts: str | None) -> list[str]:
    """The lines of a rendered prompt that none of `texts` (the references, the instruction, the
    system text) holds, list numbers aside: its own wording and examples, which an answer should
    never repeat."""
    shown = [_norm(t) for t in texts if t]
    lines = (_norm(line) for line in prompt.splitlines())
    return [
        line for line in lines if len(line) >= MIN_LINE_CHARS and not any(_NUMBER.sub("", line) in t for t in shown)
    ]


def degenerate(answer: str, references: list[str], fixed: list[str] = ()) -> str | None:
    """Why an aggregated answer cannot be used, or None: `empty_answer`, or `copied_references`
    when it copies the references block: two or more different references whole (choosing one
    candidate is an answer, stitching several is not), or the start of a line of the prompt's own
    wording (`fixed`, from prompt_lines), which a weak model echoes instead of answering."""
    text = _norm(answer)
    if not text:
        return "empty_answer"
    refs = {r for r in (_norm(r) for r in references) if len(r) >= MIN_COPY_CHARS and r in text}
    whole = [r for r in refs if not any(r != other and r in other for other in refs)]
    if len(whole) >= 2 or any(line[:MIN_LINE_CHARS] in text for line in fixed):
        return "copied_references"
    return None
