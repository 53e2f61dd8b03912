"""`best`: keep the highest-scored of several responses (best-of-n).

Rejection sampling for SFT data samples several responses per prompt, scores each with a reward
model or a judge, and keeps the best one. PiKa's SFT set is made this way (the strongest reward
model score among k candidates per expert instruction), and so is any best-of-n recipe.

From a list of responses (`respond` with n > 1) and a list of scores aligned with it (`reward`
or `judge` on that list), this stage writes the best response as a string into `output`
(`response` by default, which replaces the list when the responses live there too; `keep_responses`
and `keep_scores` move the lists to other names, e.g. `responses` and `rewards`). Ties go
to the lower index. Scores that are missing or not numbers (a judge's N/A) are left out and
counted (`unscored_responses`); a row without a single numeric score is dropped with the reason.
Columns written: `output`, `best_score`, `best_index`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from ..base import Batch, CheckEnv, MapStage, Row, StageParams
from ..common import add_provenance, list_problem


class BestParams(StageParams):
    responses: str = Field("response", description="column holding the list of responses (`respond` with n > 1)")
    scores: str = Field("instruct_reward", description="column holding one score per response (`reward`, `judge`)")
    output: str = Field("response", description="column for the best response (a string)")
    keep_responses: str | None = Field(
        None, description="move the list of responses to this column (default: it stays)"
    )
    keep_scores: str | None = Field(None, description="move the list of scores to this column (default: it stays)")

    @model_validator(mode="after")
    def _distinct_columns(self):
        if self.responses == self.scores:
            raise ValueError(f"responses and scores both name column '{self.scores}': they must be two columns")
        taken = [c for c in (self.keep_responses, self.keep_scores) if c is not None]
        if self.output in taken or len(set(taken)) != len(taken):
            raise ValueError("output, keep_responses and keep_scores must name different columns")
        return self


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class NoBest(Exception):
    """Why a row has no best response: the drop reason and a detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def best_index(responses: Any, scores: Any, p: BestParams) -> tuple[int, int]:
    """(index of the best response, how many were left out for lack of a score); raises NoBest."""
    if isinstance(responses, str):  # one response and one score: keep it if it is scored
        responses, scores = [responses], scores if isinstance(scores, list) else [scores]
    if not isinstance(responses, list) or not responses:
        raise NoBest("no_responses", f"'{p.responses}' holds {responses!r}"[:2000])
    if not isinstance(scores, list):
        raise NoBest("missing_scores", f"'{p.scores}' holds {scores!r}, not a list with one score per response")
    if len(scores) != len(responses):
        raise NoBest(
            "score_count_mismatch",
            f"{len(responses)} responses in '{p.responses}' but {len(scores)} scores in '{p.scores}': {scores!r}",
        )
    values = [_number(s) if isinstance(r, str) else None for r, s in zip(responses, scores, strict=True)]
    scored = [i for i, v in enumerate(values) if v is not None]
    if not scored:
        raise NoBest("missing_scores", f"no response has a numeric score: {scores!r}"[:2000])
    best = max(values[i] for i in scored)  # type: ignore[type-var]
    return min(i for i in scored if values[i] == best), sum(isinstance(r, str) for r in responses) - len(scored)


class Best(MapStage):
    """Keep the highest-scored response of a list (best-of-n; PiKa SFT), ties to the lower index."""

    Params = BestParams
    params: BestParams

    @classmethod
    def reads(cls, params: BestParams) -> list[str]:
        return [params.responses, params.scores]

    @classmethod
    def writes(cls, params: BestParams) -> list[str]:
        kept = [c for c in (params.keep_responses, params.keep_scores) if c]
        return [params.output, "best_score", "best_index", *kept]

    @classmethod
    def output_columns(cls, params: BestParams, env: CheckEnv) -> set[str] | None:
        if env.columns is None:
            return None
        gone = {params.responses} if params.keep_responses and params.responses != params.output else set()
        if params.keep_scores:
            gone.add(params.scores)
        return (env.columns - gone) | set(cls.writes(params))

    @classmethod
    def check(cls, params: BestParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        if env.columns is None:
            return []
        problems = list_problem(params.responses, env)
        if params.responses not in env.columns:
            problems.append(
                (
                    ("responses",),
                    f"no earlier stage writes '{params.responses}': sample several responses per prompt first "
                    "(`respond` with n > 1), or set responses: to the column that holds them",
                )
            )
        if params.scores not in env.columns:
            problems.append(
                (
                    ("scores",),
                    f"no earlier stage writes '{params.scores}': score the responses first (`reward` or `judge` "
                    f"with response: {params.responses}), or set scores: to the column that holds the scores",
                )
            )
        return problems

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        out = []
        for row in batch.rows:
            responses, scores = row.get(p.responses), row.get(p.scores)
            try:
                index, unscored = best_index(responses, scores, p)
            except NoBest as why:
                batch.drop(row, why.reason, why.detail)
                continue
            if unscored:
                batch.count("unscored_responses", unscored)
            many = isinstance(responses, list)
            listed = responses if many else [responses]
            values = scores if isinstance(scores, list) else [scores]
            moved = {p.responses} if p.keep_responses else set()
            new = {k: v for k, v in row.items() if k not in moved and not (p.keep_scores and k == p.scores)}
            if p.keep_responses:
                new[p.keep_responses] = responses
            if p.keep_scores:
                new[p.keep_scores] = scores
            new.update({p.output: listed[index], "best_score": float(values[index]), "best_index": index})
            record = {"stage": "best", "responses": p.responses, "scores": p.scores, "index": index}
            out.append(add_provenance(new, self.ctx.label, record))
        return out
