"""`limit` and `sample`: keep some rows. Global stages: they see every row before choosing."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from ...seeds import derive_seed
from ...shards import Rows, Selection
from ..base import Batch, GlobalStage, StageParams


class LimitParams(StageParams):
    n: int = Field(ge=0, description="keep the first n rows")


class Limit(GlobalStage):
    """Keep the first n rows (in source order)."""

    Params = LimitParams
    params: LimitParams

    async def process_all(self, rows: Rows, batch: Batch) -> Selection:
        n, total = self.params.n, rows.num_rows
        kept = np.arange(min(n, total), dtype=np.int64)
        batch.drop(np.arange(len(kept), total, dtype=np.int64), f"beyond_first_{n}")
        return Selection(kept)


class SampleParams(StageParams):
    n: int | None = Field(None, ge=0, description="number of rows to keep")
    fraction: float | None = Field(None, gt=0, le=1, description="share of rows to keep")
    shuffle: bool = Field(False, description="return the rows in random order instead of source order")
    seed: int | None = Field(None, description="a fixed seed (Magpie's recipe: 42); default: from the pipeline seed")

    @model_validator(mode="after")
    def _one(self):
        if (self.n is None) == (self.fraction is None):
            raise ValueError("give exactly one of 'n' or 'fraction'")
        return self


class Sample(GlobalStage):
    """Keep a random sample of rows, drawn from the pipeline seed (the same rows every run)."""

    Params = SampleParams
    params: SampleParams

    async def process_all(self, rows: Rows, batch: Batch) -> Selection:
        p = self.params
        total = rows.num_rows
        k = min(total, p.n) if p.n is not None else round(total * p.fraction)  # type: ignore[operator]
        rng = np.random.default_rng(p.seed if p.seed is not None else derive_seed(self.ctx.seed, self.ctx.label))
        chosen = rng.choice(total, size=k, replace=False)
        if not p.shuffle:
            chosen = np.sort(chosen)
        kept = np.zeros(total, dtype=bool)
        kept[chosen] = True
        batch.drop(np.flatnonzero(~kept), "not_sampled")
        return Selection(chosen.astype(np.int64))
