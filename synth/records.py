"""Row conventions: what a row is, what a dropped row carries, and the columns stages agree on.

A row is a plain dict of columns. The columns with a meaning across stages: `instruction` and
`response` (the first turn), Magpie's later turns `instruction_2`/`response_2`, `instruction_3`/...
(`turn_columns`), `system` (a conditioning turn before the first), `messages` (the conversational
format), `chosen`/`rejected` (a preference pair) and `provenance`. Reading and writing them as
Parquet is synth/parquet.py's job, the output formats synth/outputs.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]

# A later turn of a multi-turn row: instruction_2, response_2, instruction_3, ...
LATER_TURN = re.compile(r"^(instruction|response)_\d+$")


@dataclass
class Dropped:
    """A row a stage left out, with why: a filter's decision, or a failure (`failed`: an
    unparseable answer, a request that ran out of retries)."""

    row: Row | None  # None for a row dropped by position (Arrow and global stages)
    reason: str
    detail: str = ""
    failed: bool = False
    position: int | None = None  # where such a row is in the stage's input


def text_of(value: Any) -> str:
    """The text to compare: a string, or the user turns of a messages list."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role", m.get("from")) in ("user", "human")] or value
        return "\n".join(str(m.get("content", m.get("value", ""))) for m in users)
    return str(value)


def turn_columns(names: list[str]) -> list[str]:
    """The later turns a conversation reads: instruction_2, response_2, instruction_3, ... while both exist."""
    columns, k = [], 2
    while f"instruction_{k}" in names and f"response_{k}" in names:
        columns += [f"instruction_{k}", f"response_{k}"]
        k += 1
    return columns
