"""Column conditions for the `filter` stage, without eval: structured YAML or a tiny grammar.

Structured: `{column: input_quality, in: [good, excellent]}`, `{column: instruct_reward, gt: -10}`,
`{column: representative_id, null: true}`. Operators: eq, ne, gt, ge, lt, le, in, not_in, null.

Text: `"column OP VALUE"` with OP one of `== != > >= < <= in`, `not in`, or `column is null` /
`column is not null`; VALUE is read as a YAML scalar or flow list (`-10`, `good`, `[good, excellent]`,
`'a: b'`), never evaluated. Examples: `"input_quality in [good, excellent]"`, `"instruct_reward > -10"`.

A row passes when every condition holds. A missing column, a null value or values that cannot be
compared (text against a number) fail the condition, so the row is dropped with that reason.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SYMBOLS = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<=", "in_": "in", "not_in": "not in"}
_TEXT = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(==|!=|>=|<=|>|<|not\s+in\b|in\b)\s*(.+?)\s*$")
_NULL = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s+is\s+(not\s+)?null\s*$", re.IGNORECASE)


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    column: str
    eq: Any = None
    ne: Any = None
    gt: int | float | None = None
    ge: int | float | None = None
    lt: int | float | None = None
    le: int | float | None = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    null: bool | None = Field(None, description="true: the value must be null; false: it must not be")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data):
        if isinstance(data, dict) and None in data:
            # YAML reads an unquoted `null:` key as the null value, not the word: take it as meant.
            data = {("null" if k is None else k): v for k, v in data.items()}
        return parse(data) if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_operator(self):
        given = [op for op in (*SYMBOLS, "null") if op in self.model_fields_set]
        if len(given) != 1:
            names = ", ".join(o.rstrip("_") for o in (*SYMBOLS, "null"))
            raise ValueError(f"give exactly one operator ({names}) for column '{self.column}'")
        return self

    @property
    def op(self) -> str:
        return next(op for op in (*SYMBOLS, "null") if op in self.model_fields_set)

    def __str__(self) -> str:
        op = self.op
        if op == "null":
            return f"{self.column} is {'' if self.null else 'not '}null"
        value = getattr(self, op)
        shown = "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
        return f"{self.column} {SYMBOLS[op]} {shown}"

    def holds(self, row: dict) -> bool:
        value = row.get(self.column)
        op = self.op
        if op == "null":
            return (value is None) == self.null
        if value is None:
            return False
        target = getattr(self, op)
        try:
            if op == "eq":
                return value == target
            if op == "ne":
                return value != target
            if op == "in_":
                return value in target
            if op == "not_in":
                return value not in target
            return {"gt": value > target, "ge": value >= target, "lt": value < target, "le": value <= target}[op]
        except TypeError:
            return False


def parse(text: str) -> dict:
    """'instruct_reward > -10' -> {'column': 'instruct_reward', 'gt': -10}."""
    if m := _NULL.match(text):
        return {"column": m.group(1), "null": not m.group(2)}
    m = _TEXT.match(text)
    if not m:
        raise ValueError(
            f"cannot read condition {text!r}: write 'column OP value' with OP one of == != > >= < <= in, "
            "'not in', or 'column is null'"
        )
    column, symbol, raw = m.group(1), " ".join(m.group(2).split()), m.group(3)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ValueError(f"cannot read the value {raw!r} in condition {text!r}; quote it") from None
    op = {v: k for k, v in SYMBOLS.items()}[symbol]
    if op in ("in_", "not_in") and not isinstance(value, list):
        raise ValueError(f"'{symbol}' needs a list, as in: {column} {symbol} [a, b]")
    return {"column": column, ("in" if op == "in_" else op): value}
