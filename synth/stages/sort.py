"""`sort`: order rows by a column (or its length) and optionally keep the top n.

Magpie's filter recipe keeps the N rows with the longest responses; that is
`{stage: sort, by: response, key: length, descending: true, top: 300000}`. Ties keep source
order (a stable sort), so the result is the same on every run."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from .base import Batch, Stage, StageParams


class SortParams(StageParams):
    by: str = Field(description="column to sort by")
    key: Literal["value", "length"] = Field("value", description="sort by the value or by its length in characters")
    descending: bool = False
    top: int | None = Field(None, ge=0, description="keep only the first n rows after sorting")


class Sort(Stage):
    """Sort rows by a column's value or length (stable); optionally keep the top n."""

    Params = SortParams
    kind = "global"
    params: SortParams

    @classmethod
    def reads(cls, params: SortParams) -> list[str]:
        return [params.by]

    async def process_all(self, table: pa.Table, batch: Batch) -> pa.Table:
        p = self.params
        column = table.column(p.by)
        if p.key == "length":
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                column = pc.list_value_length(column)
            else:
                column = pc.utf8_length(column.cast(pa.string()))
        # Rows without a value go last either way; ties keep source order.
        keyed = pa.table(
            {"missing": pc.is_null(column), "key": column, "position": pa.array(range(table.num_rows), pa.int64())}
        )
        order = pc.sort_indices(
            keyed,
            sort_keys=[
                ("missing", "ascending"),
                ("key", "descending" if p.descending else "ascending"),
                ("position", "ascending"),
            ],
        )
        if p.top is not None:
            dropped = order[p.top :]
            for index in dropped.to_pylist():
                batch.drop(table.slice(index, 1).to_pylist()[0], f"not_in_top_{p.top}")
            order = order[: p.top]
        return table.take(order)
