"""The stage contract. A stage renders requests and parses answers; it never schedules.

The runner owns batching, concurrency across batches, checkpoints, resume and stats; backends own
request concurrency, retries and the cache. A stage is one class with a pydantic `Params` model,
the columns it reads and writes, and one method:

- `map` stages (the default) implement `process(batch) -> rows`, called on each batch,
  possibly concurrently for different batches;
- `source` stages implement `iter_rows(limit)`, a cheap deterministic row stream; they may also
  implement `process` (a generator source like Magpie does its LLM work there);
- `global` stages see every row at once (dedup, sort, sample); the pipeline streams between
  global stages and waits at them. They implement `select(rows, batch) -> Selection`: from the
  few columns they need, read out of core from the previous stage's shards, the positions to keep
  in output order, new columns and the dropped positions with reasons (synth/shards.py); the runner
  gathers the rows. Stages whose output is small and new (skill lists) implement
  `process_all(table, batch) -> table` instead, with the whole input in memory.
- a map stage may also implement `process_table(table, batch) -> table`, the same work on an Arrow
  table, without a Python dict per row: the runner uses it when the batch comes from disk.

A filter is a stage that calls `batch.drop(row, reason)`: the row is kept in the stage's dropped
file with its reason, and the reason is counted in the run's stats. Failures are rows, never None.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..records import Dropped, Row
from ..seeds import derive_seed

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from ..llm.client import LLM
    from ..shards import Rows, Selection


class StageParams(BaseModel):
    """Fields every stage accepts. Subclasses add their own; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        None,
        description="label for this stage in the run directory and stats (default: the stage key)",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        max_length=64,
    )


@dataclass
class Batch:
    """Rows on their way through one stage, plus what the stage dropped from them."""

    rows: list[Row]
    index: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    dropped_rows: list[pa.Table] = field(default_factory=list)  # process_table's drops, by input row

    def drop_rows(self, positions: np.ndarray, reasons: list[str], details: list[str], failed: np.ndarray) -> None:
        """process_table's drops: rows of the input batch by position, each with its reason and
        detail; the rows stay in the stage before (a copy of each would double a big run's disk)."""
        import numpy as np
        import pyarrow as pa

        from ..scrub import scrub_many

        n = len(positions)
        self.dropped_rows.append(
            pa.table(
                {
                    "reason": pa.array(scrub_many(reasons), pa.string()),
                    "detail": pa.array(scrub_many(details), pa.string()),
                    "failed": pa.array(np.asarray(failed, dtype=bool)),
                    "row": pa.nulls(n, pa.string()),
                    "input_row": pa.array(np.asarray(positions, dtype=np.int64)),
                }
            )
        )

    def drop(self, row: Row, reason: str, detail: str = "") -> None:
        """A filter decided against this row."""
        self.dropped.append(Dropped(row, reason, detail))

    def fail(self, row: Row, reason: str, detail: str = "") -> None:
        """This row could not be processed (detail: the error and raw answer)."""
        self.dropped.append(Dropped(row, reason, detail, failed=True))

    def count(self, name: str, n: int = 1) -> None:
        """Count an event (a retried parse, a truncated answer) into the run stats."""
        self.counters[name] = self.counters.get(name, 0) + n


@dataclass
class CheckEnv:
    """What static checks (`synth validate`) may consult: no network, no model loading."""

    base_dir: Path
    backends: set[str]
    columns: set[str] | None  # known columns arriving at this stage, None when unknown
    specs: dict[str, Any] = field(default_factory=dict)  # backend name -> its parsed spec, where it parsed
    singles: set[str] = field(default_factory=set)  # columns known to hold one text per row, not a list


@dataclass
class StageContext:
    """What a running stage may use."""

    seed: int
    label: str
    index: int
    base_dir: Path
    llms: dict[str, LLM] = field(default_factory=dict)
    stage_dir: Path | None = None  # the stage's folder in the run directory (reports go in its .synth/)
    limit: int | None = None  # the run's --limit: a stage that makes rows (not a source) makes at most this many

    def llm(self, name: str = "default") -> LLM:
        return self.llms[name]

    def seed_for(self, *parts) -> int:
        """A seed for one request: the pipeline seed, this stage's label and a stable row key."""
        return derive_seed(self.seed, self.label, *parts)

    def resolve(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path


class Stage:
    key: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    kind: ClassVar[Literal["source", "map", "global"]] = "map"
    uses_llm: ClassVar[bool] = False  # whether params carry a `backend` that must exist

    def __init__(self, params: StageParams, ctx: StageContext):
        self.params = params
        self.ctx = ctx

    # ---- static description (used by `synth validate` and `synth stages`) ----
    @classmethod
    def reads(cls, params: StageParams) -> list[str]:
        return []

    @classmethod
    def writes(cls, params: StageParams) -> list[str]:
        return []

    @classmethod
    def output_columns(cls, params: StageParams, env: CheckEnv) -> set[str] | None:
        """Columns after this stage, when knowable without running it."""
        if env.columns is None:
            return None
        return env.columns | set(cls.writes(params))

    @classmethod
    def single_columns(cls, params: StageParams) -> set[str]:
        """Columns this stage writes as one value per row where a sibling setting could make a
        list (e.g. `respond` with n: 1), so `synth validate` can refuse a stage that needs a list."""
        return set()

    @classmethod
    def backend_names(cls, params: StageParams) -> list[str]:
        """The backends this stage calls, each handed to it in ctx.llms and covered by its
        fingerprint: `backend:` for an LLM stage; stages with several (a judge and a reference,
        strong and weak models) list them all."""
        name = getattr(params, "backend", None)
        return [name] if cls.uses_llm and isinstance(name, str) else []

    @classmethod
    def check(cls, params: StageParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        """Problems found without running anything: (field path within the stage, message)."""
        return []

    # ---- running ----
    async def open(self) -> None:
        """Load what the stage needs (models, templates) once, before the first batch."""

    def check_again(self) -> None:
        """The static checks once more as the stage opens, for a pipeline built in code that never
        went through `synth validate`: the first problem stops the run, named."""
        from ..errors import SynthError
        from ..yamlfile import format_path

        problems = self.check(self.params, CheckEnv(self.ctx.base_dir, set(self.ctx.llms), None))
        if problems:
            (path, message), *_ = problems
            raise SynthError(f"stage '{self.ctx.label}': {format_path(path)}: {message}")

    async def close(self) -> None:
        pass

    def iter_rows(self, limit: int | None) -> Iterator[Row]:  # source stages
        raise NotImplementedError

    def total_rows(self, limit: int | None) -> int | None:  # source stages: for progress and ETA
        """How many rows iter_rows will give, when that is cheap to know; None otherwise."""
        return None

    async def process(self, batch: Batch) -> list[Row]:  # map stages (and generator sources)
        return batch.rows

    async def select(self, rows: Rows, batch: Batch) -> Selection:  # global stages, out of core
        raise NotImplementedError

    @classmethod
    def selects(cls) -> bool:
        return cls.select is not Stage.select

    @classmethod
    def driver_only(cls) -> bool:
        """Whether this stage always runs in the driver process: source and global stages, and map
        stages with an Arrow path (cheap filters the runner applies to whole tables, where a round
        trip to a worker would cost more than the work). An executor may run the others anywhere."""
        return cls.kind != "map" or cls.vectorized()

    @classmethod
    def vectorized(cls) -> bool:
        return cls.process_table is not Stage.process_table

    async def process_table(self, table: pa.Table, batch: Batch) -> pa.Table:  # map stages, optional
        raise NotImplementedError

    async def process_all(self, table: pa.Table, batch: Batch) -> pa.Table:  # global stages, in memory
        """A selecting stage on a table in memory (`synth dedup` on a file): its selection gathered,
        its dropped rows as rows."""
        if not self.selects():
            raise NotImplementedError
        import pyarrow as pa

        from ..shards import Rows, gather

        selection = await self.select(Rows.from_table(table), batch)
        if not len(selection.order):
            return table.slice(0, 0)
        parts: list[pa.Table] = []
        gather(Rows.from_table(table), selection, parts.append, max(table.num_rows, 1))
        for d in selection.drops:
            rows = table.take(pa.array(d.positions, pa.int64())).to_pylist()
            details = d.details if d.details is not None else [""] * len(rows)
            for row, detail in zip(rows, details, strict=True):
                batch.dropped.append(Dropped(row, d.reason, detail, d.failed))
        return parts[0]
