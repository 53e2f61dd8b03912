"""`direction_select`: the selection step of Robust Preference Selection (Mao, Shi, Gu, Wei, ICLR
2026): of the candidates sampled around a target preference direction (`directions`), keep the one
whose attribute scores r best fit the ORIGINAL target direction v, the argmax of s = v·r.

The attribute vector of each candidate comes from one score column per attribute (`scores:`, by
default `score_<attribute>`, the columns an absolute `judge` with those criteria writes) or from a
column holding one vector per candidate, a reward model with several heads (`vector:` with
`heads:`, attribute -> index; for DPA's reward model {helpfulness: 9, verbosity: 4}, its
UltraFeedback helpfulness and HelpSteer verbosity outputs, as the RPS code reads them).

Columns: the selected response in `output` (default `response`, so an SFT export takes it; the
candidates then move to `candidates`), `candidate_vectors`, `direction_scores` (s per candidate, None
for a candidate without every score), `selected_index`, `selected_score`, `selected_angle` (when the
row has `gen_angles`). The `pairs` stage on `candidates` and `direction_scores` makes preference
pairs from the same pool (best vs worst under the target direction). A candidate with a missing or
non-numeric score is left out and counted (`unscored_candidates`; the RPS code scores it (0, 0)
instead); rows that cannot be scored are dropped with the reason (`no_candidates`,
`missing_direction`, `missing_attributes`, `score_count_mismatch`, `missing_scores`).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from ..base import Batch, MapStage, Row, StageParams
from ..common import add_provenance
from . import geometry as geo


class DirectionSelectParams(StageParams):
    responses: str = Field("response", description="column holding the candidate responses (a list)")
    direction: str = Field("direction", description="column holding the target direction, a unit vector")
    attributes: str = Field("attributes", description="column naming the direction's attributes, in order")
    scores: dict[str, str] | None = Field(
        None, description="attribute -> column of its scores, one per candidate (default: score_<attribute>)"
    )
    vector: str | None = Field(
        None, description="column holding one score vector per candidate (a multi-head reward), instead of scores"
    )
    heads: dict[str, int] | None = Field(None, description="with vector: attribute -> index in each vector")
    output: str = Field(
        "response",
        description="column for the selected response (when it is `responses`, the list moves to candidates)",
    )

    @model_validator(mode="after")
    def _one_route(self):
        if self.vector and self.scores:
            raise ValueError("give scores: (a column per attribute) or vector: with heads:, not both")
        if bool(self.vector) != bool(self.heads):
            raise ValueError("vector: and heads: go together (heads: attribute -> index in the vector)")
        if self.heads and any(i < 0 for i in self.heads.values()):
            raise ValueError("heads: indices start at 0")
        return self


class Unscorable(Exception):
    """Why a row cannot be scored: the drop reason and a detail."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _listed(value: Any, many: bool) -> Any:
    return value if many or value is None else [value]


def candidate_vectors(p: DirectionSelectParams, row: Row, attributes: list[str], count: int, many: bool) -> list:
    """One attribute vector per candidate (None where a score is missing or not a number)."""
    if p.vector:
        vectors = _listed(row.get(p.vector), many)
        if not isinstance(vectors, list) or len(vectors) != count:
            raise Unscorable("score_count_mismatch", f"{count} candidates but '{p.vector}' holds {vectors!r}"[:2000])
        out = []
        for v in vectors:
            ok = isinstance(v, list) and all(p.heads[a] < len(v) for a in attributes)  # type: ignore[index]
            values = [_number(v[p.heads[a]]) for a in attributes] if ok else [None]  # type: ignore[index]
            out.append(None if None in values else values)
        return out
    columns = [(p.scores or {}).get(a, f"score_{a}") for a in attributes]
    per_attribute = []
    for column in columns:
        values = _listed(row.get(column), many)
        if not isinstance(values, list) or len(values) != count:
            raise Unscorable("score_count_mismatch", f"{count} candidates but '{column}' holds {values!r}"[:2000])
        per_attribute.append([_number(v) for v in values])
    return [None if None in values else list(values) for values in zip(*per_attribute, strict=True)]


class DirectionSelect(MapStage):
    """Keep the candidate whose attribute scores best fit the target direction (argmax v·r, RPS)."""

    Params = DirectionSelectParams
    params: DirectionSelectParams

    @classmethod
    def reads(cls, params: DirectionSelectParams) -> list[str]:
        scored = [params.vector] if params.vector else list((params.scores or {}).values())
        return [params.responses, params.direction, params.attributes, *scored]

    @classmethod
    def writes(cls, params: DirectionSelectParams) -> list[str]:
        moved = ["candidates"] if params.output == params.responses else []
        chosen = ["selected_index", "selected_score", "selected_angle", "provenance"]
        return [params.output, *moved, "candidate_vectors", "direction_scores", *chosen]

    def _select(self, row: Row, batch: Batch) -> dict:
        p = self.params
        value = row.get(p.responses)
        many = isinstance(value, list)
        texts = value if many else [] if value is None else [value]
        if not texts:
            raise Unscorable("no_candidates", f"'{p.responses}' holds {value!r}"[:500])
        direction = row.get(p.direction)
        numbers = [_number(d) for d in direction] if isinstance(direction, list) else []
        if not numbers or None in numbers or not any(numbers):
            raise Unscorable("missing_direction", f"'{p.direction}' holds {direction!r}, not a direction vector")
        attributes = row.get(p.attributes)
        if not isinstance(attributes, list) or len(attributes) != len(numbers):
            raise Unscorable("missing_attributes", f"'{p.attributes}' holds {attributes!r} for direction {numbers}")
        missing = [a for a in attributes if p.heads is not None and a not in p.heads]
        if missing:
            raise Unscorable("missing_attributes", f"heads: has no index for {', '.join(map(str, missing))}")
        vectors = candidate_vectors(p, row, attributes, len(texts), many)
        unscored = sum(v is None for v in vectors)
        if unscored:
            batch.count("unscored_candidates", unscored)
        best = geo.best(numbers, vectors)
        if best is None:
            raise Unscorable("missing_scores", f"no candidate has every score of {attributes}: {vectors!r}"[:2000])
        scores = [None if v is None else round(geo.dot(numbers, v), 12) for v in vectors]
        angles = row.get("gen_angles")
        columns = {
            p.output: texts[best],
            "candidate_vectors": vectors,
            "direction_scores": scores,
            "selected_index": best,
            "selected_score": scores[best],
            "selected_angle": angles[best] if isinstance(angles, list) and len(angles) == len(texts) else None,
        }
        if p.output == p.responses:
            columns["candidates"] = list(texts)
        return columns

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        record = {"stage": "direction_select", "scores": p.scores, "vector": p.vector, "heads": p.heads}
        out = []
        for row in batch.rows:
            try:
                columns = self._select(row, batch)
            except Unscorable as why:
                batch.drop(row, why.args[0], why.args[1])
                continue
            out.append(add_provenance({**row, **columns}, self.ctx.label, record))
        return out
