"""A batch on its way through one stage, and the one record of the rows the stage left out.

A batch holds its rows as dicts or as an Arrow table, whichever it arrived in, and hands a stage
the other on first use: a stage that reads `batch.rows` gets dicts, one that reads `batch.table`
gets Arrow (filters over millions of rows never make a dict per row).

Drops are recorded one way, `batch.drop` / `batch.fail`, naming the row by value (a dict the stage
holds) or by position in the stage's input (an int or an array of them, for Arrow and global
stages, whose rows stay where they are: a copy of each would double a big run's disk). `Drops`
keeps both and turns them into the stage's dropped file (synth/store.py reads it back).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pyarrow as pa

from ..parquet import rows_to_table
from ..records import Dropped, Row
from ..scrub import scrub, scrub_many


class Drops:
    """The rows a stage dropped from one batch (or, for a global stage, from its whole input)."""

    def __init__(self) -> None:
        self.by_value: list[Dropped] = []
        self._positions: list[np.ndarray] = []
        self._reasons: list[str] = []  # one per position
        self._details: list[str] = []
        self._failed: list[bool] = []

    def add(
        self,
        row: Row | int | np.ndarray,
        reason: str | list[str],
        detail: str | list[str] = "",
        failed: bool | np.ndarray = False,
    ) -> None:
        """One row by value (a dict), or rows by position with one reason, detail and failed flag
        for all or one per position."""
        if isinstance(row, dict):
            if not (isinstance(reason, str) and isinstance(detail, str) and isinstance(failed, bool)):
                raise TypeError("a row dropped by value takes one reason, detail and failed flag")
            self.by_value.append(Dropped(row, reason, detail, failed))
            return
        positions = np.atleast_1d(np.asarray(row, dtype=np.int64))
        n = len(positions)
        reasons = [reason] * n if isinstance(reason, str) else list(reason)
        details = [detail] * n if isinstance(detail, str) else list(detail)
        flags = [bool(failed)] * n if isinstance(failed, (bool, np.bool_)) else np.asarray(failed, bool).tolist()
        if not len(reasons) == len(details) == len(flags) == n:
            raise ValueError(
                f"{n} dropped positions with {len(reasons)} reasons, {len(details)} details, {len(flags)} flags"
            )
        self._positions.append(positions)
        self._reasons += reasons
        self._details += details
        self._failed += flags

    def extend(self, other: Drops) -> None:
        self.by_value += other.by_value
        self._positions += other._positions
        self._reasons += other._reasons
        self._details += other._details
        self._failed += other._failed

    def positions(self) -> np.ndarray:
        return np.concatenate(self._positions) if self._positions else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.by_value) + len(self._reasons)

    def __iter__(self) -> Iterator[Dropped]:
        """Every drop as a `Dropped`; one dropped by position has `row` None and its `position`."""
        yield from self.by_value
        for p, reason, detail, failed in zip(
            self.positions().tolist(), self._reasons, self._details, self._failed, strict=True
        ):
            yield Dropped(None, reason, detail, failed, position=p)

    def counts(self) -> Iterator[tuple[str, bool, int]]:
        """(reason, failed, how many), for the run's stats."""
        found: dict[tuple[str, bool], int] = {}
        for d in self.by_value:
            found[d.reason, d.failed] = found.get((d.reason, d.failed), 0) + 1
        for reason, failed in zip(self._reasons, self._failed, strict=True):
            found[reason, failed] = found.get((reason, failed), 0) + 1
        for (reason, failed), n in found.items():
            yield reason, failed, n

    def table(self, by: Literal["input_row", "position"]) -> pa.Table | None:
        """The stage's dropped file: reason, detail, failed, and the row as JSON (dropped by value) or
        its position under `by` (`input_row`: in the same shard of the stage before; `position`: in
        the stage's whole input, for global stages)."""
        if self.by_value and self._reasons:
            raise ValueError("a stage drops rows either by value or by position, not both in one batch")
        if self.by_value:
            return rows_to_table(
                [
                    {
                        "reason": scrub(d.reason),
                        "detail": scrub(d.detail),
                        "failed": d.failed,
                        "row": json.dumps(d.row, ensure_ascii=False, default=str),
                    }
                    for d in self.by_value
                ]
            )
        if not self._reasons:
            return None
        n = len(self._reasons)
        return pa.table(
            {
                "reason": pa.array(scrub_many(self._reasons), pa.string()),
                "detail": pa.array(scrub_many(self._details), pa.string()),
                "failed": pa.array(np.asarray(self._failed, dtype=bool)),
                "row": pa.nulls(n, pa.string()),
                by: pa.array(self.positions()),
            }
        )


class Batch:
    """Rows on their way through one stage, what the stage dropped from them, and its counters."""

    def __init__(self, rows: list[Row] | pa.Table | None = None, index: int = 0):
        self._rows: list[Row] | None = rows if isinstance(rows, list) else None
        self._table: pa.Table | None = rows if isinstance(rows, pa.Table) else None
        if self._rows is None and self._table is None:
            self._rows = []
        self.index = index
        self.dropped = Drops()
        self.counters: dict[str, int] = {}

    @property
    def rows(self) -> list[Row]:
        if self._rows is None:
            assert self._table is not None
            self._rows = self._table.to_pylist()
        return self._rows

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            self._table = rows_to_table(self.rows)
        return self._table

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else self._table.num_rows  # type: ignore[union-attr]

    def drop(self, row: Row | int | np.ndarray, reason: str, detail: str | list[str] = "") -> None:
        """A filter decided against this row: a dict of `rows`, or position(s) in the stage's input
        (with a detail each, or one for all)."""
        self.dropped.add(row, reason, detail)

    def fail(self, row: Row | int | np.ndarray, reason: str, detail: str | list[str] = "") -> None:
        """This row could not be processed (detail: the error and raw answer)."""
        self.dropped.add(row, reason, detail, failed=True)

    def count(self, name: str, n: int = 1) -> None:
        """Count an event (a retried parse, a truncated answer) into the run stats."""
        self.counters[name] = self.counters.get(name, 0) + n
