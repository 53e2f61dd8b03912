"""Row conventions and the output schemas.

`sft` output is the conversational format TRL's SFTTrainer reads directly: a `messages` column
of {role, content} turns (built from instruction/response columns, and Magpie's multi-turn
instruction_2/response_2, ..., when a run has no `messages`),
with the other columns kept beside it.
"""

from __future__ import annotations

import re

import pyarrow as pa

from .errors import RunError


def format_output(table: pa.Table, output) -> pa.Table:
    if output.format == "raw":
        if output.columns:
            missing = [c for c in output.columns if c not in table.column_names]
            if missing and table.num_rows:
                raise RunError(
                    f"output.columns names {', '.join(missing)}, which the run does not have "
                    f"(it has: {', '.join(table.column_names)})"
                )
            return table.select([c for c in output.columns if c in table.column_names])
        return table
    if "messages" in table.column_names or not table.num_rows:
        return table
    ins, res = output.instruction_column, output.response_column
    missing = [c for c in (ins, res) if c not in table.column_names]
    if missing:
        raise RunError(
            f"sft output needs a 'messages' column or columns {ins!r} and {res!r}; missing "
            f"{', '.join(missing)} (set output.instruction_column / output.response_column)"
        )
    turns = [c for c in table.column_names if _LATER_TURN.match(c)]
    system = ["system"] if "system" in table.column_names else []
    rows = table.select([ins, res, *system, *turns]).to_pylist()
    return table.append_column("messages", pa.array([conversation(r, ins, res) for r in rows]))


_LATER_TURN = re.compile(r"^(instruction|response)_\d+$")


def conversation(row: dict, instruction: str = "instruction", response: str = "response") -> list[dict]:
    """A row's turns as messages: the row's `system` text first when it has one (a conditioning
    such as a preference direction belongs to the training data, as in the preference export), the
    first turn from `instruction`/`response`, then Magpie's multi-turn keys instruction_2/response_2,
    instruction_3/... while both are present."""
    system = row.get("system")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    messages += [{"role": "user", "content": row[instruction]}, {"role": "assistant", "content": row[response]}]
    turn = 2
    while row.get(f"instruction_{turn}") is not None and row.get(f"response_{turn}") is not None:
        messages += [
            {"role": "user", "content": row[f"instruction_{turn}"]},
            {"role": "assistant", "content": row[f"response_{turn}"]},
        ]
        turn += 1
    return messages
