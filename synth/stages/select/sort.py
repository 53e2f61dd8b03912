"""`sort`: order rows by a column (or its length) and optionally keep the top n.

Magpie's filter recipe keeps the N rows with the longest responses; that is
`{stage: sort, by: response, key: length, descending: true, top: 300000}`. Ties keep source
order (a stable sort), so the result is the same on every run. Only the sort key is read into
memory (one value per row); the rows are gathered from the shards in the new order."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from ...shards import Rows, Selection
from ..base import Batch, GlobalStage, StageParams


class SortParams(StageParams):
    by: str = Field(description="column to sort by")
    key: Literal["value", "length"] = Field("value", description="sort by the value or by its length in characters")
    descending: bool = False
    top: int | None = Field(None, ge=0, description="keep only the first n rows after sorting")


def _length(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return pc.list_value_length(column)
    return pc.utf8_length(column.cast(pa.string()))


class Sort(GlobalStage):
    """Sort rows by a column's value or length (stable); optionally keep the top n."""

    Params = SortParams
    params: SortParams

    @classmethod
    def reads(cls, params: SortParams) -> list[str]:
        return [params.by]

    async def process_all(self, rows: Rows, batch: Batch) -> Selection:
        p = self.params
        if p.by not in rows.column_names:
            column = pa.chunked_array([pa.nulls(rows.num_rows)])
        elif p.key == "length":
            column = pa.chunked_array([c for _, t in rows.tables([p.by]) for c in _length(t.column(p.by)).chunks])
        else:
            column = rows.column(p.by)
        # Rows without a value go last either way; ties keep source order.
        keyed = pa.table({"missing": pc.is_null(column), "key": column, "position": pa.array(np.arange(rows.num_rows))})
        order = pc.sort_indices(
            keyed,
            sort_keys=[
                ("missing", "ascending"),
                ("key", "descending" if p.descending else "ascending"),
                ("position", "ascending"),
            ],
        ).to_numpy()
        if p.top is None:
            return Selection(order)
        batch.drop(order[p.top :], f"not_in_top_{p.top}")
        return Selection(order[: p.top])
