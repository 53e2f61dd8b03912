"""The stage contract. A stage renders requests and parses answers; it never schedules.

The runner owns batching, concurrency across batches, checkpoints, resume and stats; backends own
request concurrency, retries and the cache. A stage is one class with a pydantic `Params` model,
the columns it reads and writes, its kind (subclass `SourceStage`, `MapStage` or `GlobalStage`,
or set `kind` on a `Stage`), and the entry point of that kind:

- `kind = "source"`: `iter_rows(limit)`, a cheap deterministic row stream, cut into batches by
  the runner. A source may also implement `process(batch)` (Magpie does its LLM work there).
- `kind = "map"`: `process(batch)`, called on each batch, possibly concurrently for different
  batches, possibly in another process (synth/executors). It returns the rows it keeps, as dicts
  or as one Arrow table. The batch hands the stage its rows either way: `batch.rows` (dicts) or
  `batch.table` (Arrow, no dict per row). A stage that works on `batch.table` sets
  `columnar = True`: the runner then gives it Arrow as read from disk, and runs it in the driver
  (cheap filters over millions of rows, where a round trip to a worker would cost more).
- `kind = "global"`: `process_all(rows, batch)`, once, over the whole output of the stage before
  (dedup, sort, sample, skill lists). `rows` (synth/shards.py `Rows`) reads that output out of
  core, a few columns or parts at a time. The stage returns either a `Selection` (input positions
  to keep in output order and new columns, gathered by the runner shard by shard: memory follows
  the arrays, not the run) or, when its output is new and small, an Arrow table.

One way to leave a row out, in every kind: `batch.drop(row, reason, detail)`, or `batch.fail(...)`
for a row that could not be processed (a request that ran out of retries, an unparseable answer).
`row` is a dict of `batch.rows`, or positions (an int or an array) in the stage's input, as Arrow
and global stages name rows. Dropped rows go to the stage's dropped file with their reason, which
is counted in the run's stats; failures are rows, never None. `batch.count(name)` counts any other
event. Writing a stage, step by step: docs/design.md ("Extending synth").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import SynthError
from ..records import Dropped, Row
from ..seeds import derive_seed
from .batch import Batch

if TYPE_CHECKING:
    import pyarrow as pa

    from ..llm.client import LLM
    from ..shards import Rows, Selection

__all__ = [
    "Batch",
    "CheckEnv",
    "Dropped",
    "GlobalStage",
    "MapStage",
    "Row",
    "SourceStage",
    "Stage",
    "StageContext",
    "StageParams",
    "check_stage_class",
]

KINDS = ("source", "map", "global")


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
    kind: ClassVar[Literal["source", "map", "global"]]  # declared by every stage: no default
    columnar: ClassVar[bool] = False  # a map stage that works on batch.table (see the module docstring)

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
        fingerprint: its `backend:` when its params have one (LLMParams do); stages with several
        (a judge and a reference, strong and weak models) list them all."""
        name = getattr(params, "backend", None)
        return [name] if isinstance(name, str) else []

    @classmethod
    def check(cls, params: StageParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        """Problems found without running anything: (field path within the stage, message)."""
        return []

    @classmethod
    def driver_only(cls) -> bool:
        """Whether this stage always runs in the driver process: source and global stages, and
        columnar map stages. An executor may run the others anywhere."""
        return cls.kind != "map" or cls.columnar

    # ---- running ----
    async def open(self) -> None:
        """Load what the stage needs (models, templates) once, before the first batch."""

    def check_again(self) -> None:
        """The static checks once more as the stage opens, for a pipeline built in code that never
        went through `synth validate`: the first problem stops the run, named."""
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

    async def process(self, batch: Batch) -> list[Row] | pa.Table:  # map stages (and generator sources)
        return batch.rows

    async def process_all(self, rows: Rows, batch: Batch) -> Selection | pa.Table:  # global stages
        raise NotImplementedError


class SourceStage(Stage):
    """A stage that makes the run's rows: implement `iter_rows` (and optionally `process`)."""

    kind = "source"


class MapStage(Stage):
    """A stage that works batch by batch: implement `process`."""

    kind = "map"


class GlobalStage(Stage):
    """A stage that sees every row at once: implement `process_all`."""

    kind = "global"


def check_stage_class(cls: type) -> None:
    """A registered stage must subclass Stage, declare its kind and implement that kind's entry
    point: said when the pipeline loads, not halfway through a run."""
    where = f"stage '{getattr(cls, 'key', cls.__name__)}' ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise SynthError(f"{where} is not a synth.stages.base.Stage subclass")
    kind = getattr(cls, "kind", None)
    if kind not in KINDS:
        raise SynthError(f"{where} declares no kind: set kind = 'source', 'map' or 'global' on the class")
    needs = {"source": "iter_rows", "map": "process", "global": "process_all"}[kind]
    if getattr(cls, needs) is getattr(Stage, needs):
        raise SynthError(f"{where} is a {kind} stage but does not implement {needs}()")
