"""Row conventions and the output schemas.

`sft` output is the conversational format TRL's SFTTrainer reads directly: a `messages` column
of {role, content} turns (built from instruction/response columns when a run has no `messages`),
with the other columns kept beside it.
"""

from __future__ import annotations

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
    messages = [
        [{"role": "user", "content": i}, {"role": "assistant", "content": r}]
        for i, r in zip(table.column(ins).to_pylist(), table.column(res).to_pylist(), strict=True)
    ]
    return table.append_column("messages", pa.array(messages))
