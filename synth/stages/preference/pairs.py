"""`pairs`: chosen/rejected preference pairs from several scored responses per prompt.

The published recipes sample several responses per prompt, score each one, then keep one pair:
- `best_worst` (default): the highest- against the lowest-scored response. Magpie's DPO sets
  (5 responses at temperature 0.8, ArmoRM scores) and PiKa's preference data do this; so does
  PAR-shaped data (Fu et al. 2025).
- `best_random`: the highest-scored response against a seeded random other one, as CDR (Dr.SoW)
  and the UltraFeedback binarization of Zhang et al.'s reward-augmented data pick it: any index but
  the best's, so the rejected one may tie the best (that pair is kept with margin 0 unless
  `min_margin` says otherwise). A row whose scores are all equal gives no pair, nor a pick whose
  text is the chosen one's, as in the authors' code.
- `best_random_lower`: the same, but the random pick is among the responses scored strictly lower
  (synth's earlier `best_random`).
- `all_pairs`: every pair of responses with different scores, one output row each (so this stage
  can write more rows than it reads).
- `verdict`: the two responses a pairwise `judge` compared (`responses: [response_a, response_b]`,
  or a list column's first two) and its verdict (`verdict: judge_reward`, WB-Reward from A's side):
  the winner is chosen. The scores are the verdict seen from each side (+1 or +0.5 for the chosen,
  the negative for the rejected), so `margin` is 2 for "much better" and 1 for "slightly better"
  (`min_margin: 2` keeps only the clear wins); a tie (0) is no pair.

PAR's filters: on scores that a `reward` stage shaped with `par` (its `reward_shaping` column names
the output), `min_margin` defaults to 0.1 and `min_chosen_score` to 0.5 (the chosen response beats
the reference): thresholds that mean the same on every prompt. Explicit values win, and
`par_filters: false` turns the defaults off (`true` applies them to any scores).

A pair whose texts are identical, or whose scores tie (except best_random's pick), is never made. A row
that yields no pair is dropped with the reason (`too_few_responses`, `missing_scores`,
`score_count_mismatch`, `identical_responses`, `tie`, `below_min_chosen`, `below_margin`).
Responses whose score is missing or not a number are left out of the pairing and counted
(`unscored_responses`), as the UltraFeedback preprocessing leaves out completions rated N/A.

Columns written: `chosen`, `rejected` (strings), `score_chosen`, `score_rejected`, `margin`,
`chosen_index`, `rejected_index` (positions in the response list); the rest of the row is kept.
`carry:` names further per-response list columns whose chosen and rejected entries a later stage
needs as plain values: `carry: [avg_fine_score]` writes `avg_fine_score_chosen` and
`avg_fine_score_rejected` (the reward-augmented recipe filters pairs on them).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from ..base import Batch, CheckEnv, MapStage, Row, StageParams
from ..common import add_provenance, list_problem

Strategy = Literal["best_worst", "best_random", "best_random_lower", "all_pairs", "verdict"]
RANDOM = ("best_random", "best_random_lower")
PAR_MIN_MARGIN, PAR_MIN_CHOSEN = 0.1, 0.5  # PAR's pair filters on its shaped score
WRITES = ["chosen", "rejected", "score_chosen", "score_rejected", "margin", "chosen_index", "rejected_index"]


class PairsParams(StageParams):
    input: str = Field("instruction", description="column holding the prompt (kept; keys best_random's seed)")
    responses: str | list[str] = Field(
        "response",
        description="column holding the list of responses (`respond` with n > 1); with strategy verdict, the two "
        "columns the pairwise judge compared ([response_a, response_b]) or a list column",
    )
    scores: str = Field(
        "instruct_reward", description="column holding one score per response (`reward` on a list of responses)"
    )
    strategy: Strategy = Field(
        "best_worst",
        description="best_worst: highest vs lowest score (Magpie DPO, PiKa, PAR); best_random: highest vs a "
        "seeded random other one, which may tie it (UltraFeedback binarization, CDR); best_random_lower: highest "
        "vs a seeded random one scored strictly lower; all_pairs: every pair, a row each; verdict: the winner of "
        "a pairwise judge's verdict",
    )
    verdict: str = Field(
        "judge_reward", description="strategy verdict: column holding the pairwise verdict as WB-Reward from A's side"
    )
    carry: list[str] = Field(
        [], description="per-response list columns to copy for the pair as <column>_chosen and <column>_rejected"
    )
    min_margin: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="keep pairs with score_chosen - score_rejected >= this (default: 0.1 on PAR scores, else 0)",
    )
    min_chosen_score: float | None = Field(
        None,
        allow_inf_nan=False,
        description="keep pairs whose chosen score is at least this (default: 0.5 on PAR scores, else none)",
    )
    par_filters: bool | None = Field(
        None,
        description="PAR's filters (min_margin 0.1, min_chosen_score 0.5) as the defaults; null: on when the scores "
        "are a `reward` stage's shaping: par output, false: off (explicit min_margin/min_chosen_score still apply)",
    )

    @model_validator(mode="after")
    def _distinct_columns(self):
        if isinstance(self.responses, list):
            if self.strategy != "verdict" or len(self.responses) != 2 or len(set(self.responses)) != 2:
                raise ValueError(
                    "responses is a list of columns only with strategy verdict, and then names two columns "
                    "(e.g. [response_a, response_b]); otherwise it names the one column holding the list"
                )
        elif self.responses == self.scores and self.strategy != "verdict":
            raise ValueError(f"responses and scores both name column '{self.scores}': they must be two columns")
        return self

    def response_columns(self) -> list[str]:
        return self.responses if isinstance(self.responses, list) else [self.responses]

    def score_column(self) -> str:
        return self.verdict if self.strategy == "verdict" else self.scores

    def carried(self) -> list[str]:
        return [f"{c}_{side}" for c in self.carry for side in ("chosen", "rejected")]


@dataclass(frozen=True)
class Limits:
    """The pair filters in force for one row."""

    min_margin: float
    min_chosen_score: float | None
    par: bool  # PAR's defaults applied


def par_scored(p: PairsParams, row: Row) -> bool:
    """Whether the row's `scores` column is the output of a `reward` stage with shaping: par."""
    shaping = row.get("reward_shaping")
    if p.strategy == "verdict" or not isinstance(shaping, dict) or shaping.get("shaping") != "par":
        return False
    return shaping.get("output", "par_score") == p.scores


def limits(p: PairsParams, row: Row) -> Limits:
    par = p.par_filters if p.par_filters is not None else par_scored(p, row)
    margin = p.min_margin if p.min_margin is not None else PAR_MIN_MARGIN if par else 0.0
    chosen = p.min_chosen_score if p.min_chosen_score is not None else PAR_MIN_CHOSEN if par else None
    return Limits(margin, chosen, par)


class NoPair(Exception):
    """Why a row gives no pair: the drop reason and a detail for the dropped file."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _at_least(margin: float, limit: float) -> bool:
    """margin >= limit, forgiving float rounding (0.6 - 0.5 is 0.0999...98)."""
    return margin >= limit or math.isclose(margin, limit, rel_tol=1e-9, abs_tol=1e-12)


def scored_responses(p: PairsParams, row: Row) -> tuple[list[str | None], list[float | None]]:
    """The row's responses and scores, checked for shape: raises NoPair when they cannot pair."""
    responses, scores = row.get(p.responses), row.get(p.scores)
    if not isinstance(responses, list):
        what = "nothing" if responses is None else "one response, not a list"
        raise NoPair(
            "too_few_responses", f"'{p.responses}' holds {what}: sample several per prompt (`respond` with n > 1)"
        )
    if len(responses) < 2:
        raise NoPair("too_few_responses", f"'{p.responses}' holds {len(responses)} response(s); pairs need 2 or more")
    if not isinstance(scores, list):
        raise NoPair("missing_scores", f"'{p.scores}' holds {scores!r}, not a list with one score per response")
    if len(scores) != len(responses):
        raise NoPair(
            "score_count_mismatch",
            f"{len(responses)} responses in '{p.responses}' but {len(scores)} scores in '{p.scores}': {scores!r}",
        )
    texts = [r if isinstance(r, str) else None for r in responses]
    return texts, [_number(s) if t is not None else None for s, t in zip(scores, texts, strict=True)]


def verdict_pair(p: PairsParams, row: Row, lim: Limits) -> tuple[list[str | None], list[float], tuple[int, int]]:
    """The two judged responses, their scores as the verdict seen from each side, and (chosen, rejected)."""
    if isinstance(p.responses, list):
        responses = [row.get(c) for c in p.responses]
    else:
        responses = row.get(p.responses)
        if not isinstance(responses, list) or len(responses) < 2:
            raise NoPair("too_few_responses", f"'{p.responses}' holds {responses!r}, not a list of two responses")
        responses = responses[:2]
    texts = [r if isinstance(r, str) else None for r in responses]
    if None in texts:
        raise NoPair("too_few_responses", f"a judged response is missing: {responses!r}")
    reward = _number(row.get(p.verdict))
    if reward is None:
        raise NoPair("missing_scores", f"'{p.verdict}' holds {row.get(p.verdict)!r}, not a pairwise verdict reward")
    if texts[0] == texts[1]:
        raise NoPair("identical_responses", "both judged responses are the same text")
    if reward == 0:
        raise NoPair("tie", f"verdict {row.get('judge_verdict', reward)!r}")
    chosen = 0 if reward > 0 else 1
    scores = [abs(reward) if i == chosen else -abs(reward) for i in range(2)]
    if lim.min_chosen_score is not None and scores[chosen] < lim.min_chosen_score:
        raise NoPair("below_min_chosen", f"verdict reward {reward} (min_chosen_score {lim.min_chosen_score})")
    if not _at_least(2 * abs(reward), lim.min_margin):
        raise NoPair("below_margin", f"verdict reward {reward} (min_margin {lim.min_margin})")
    return texts, scores, (chosen, 1 - chosen)


def _filter(pairs: list[tuple[int, int]], texts, scores, lim: Limits, ties: bool) -> list[tuple[int, int]]:
    """The pairs that pass the checks, in order; raises NoPair with the check that removed the last."""
    steps = [
        ("identical_responses", lambda c, r: texts[c] != texts[r]),
        ("tie", lambda c, r: ties or scores[c] > scores[r]),
        ("below_min_chosen", lambda c, r: lim.min_chosen_score is None or scores[c] >= lim.min_chosen_score),
        ("below_margin", lambda c, r: _at_least(scores[c] - scores[r], lim.min_margin)),
    ]
    for reason, keep in steps:
        pairs = [(c, r) for c, r in pairs if keep(c, r)]
        if not pairs:
            shown = {
                "below_min_chosen": f" (min_chosen_score {lim.min_chosen_score})",
                "below_margin": f" (min_margin {lim.min_margin})",
            }
            raise NoPair(reason, f"scores {scores!r}{shown.get(reason, '')}")
    return pairs


def _valid(scores: list[float | None]) -> list[int]:
    valid = [i for i, s in enumerate(scores) if s is not None]
    if len(valid) < 2:
        raise NoPair("missing_scores", f"{len(valid)} of {len(scores)} responses have a numeric score: {scores!r}")
    return valid


def candidate_pairs(texts: list[str | None], scores: list[float | None], lim: Limits) -> list[tuple[int, int]]:
    """Every (chosen, rejected) pair with chosen scored above rejected that passes the checks, in
    index order; raises NoPair with the check that removed the last candidates."""
    valid = _valid(scores)
    pairs = [(c, r) for c in valid for r in valid if c != r and scores[c] >= scores[r]]  # type: ignore[operator]
    return _filter(pairs, texts, scores, lim, ties=False)


def authors_random_pair(texts, scores: list[float | None], lim: Limits, rng: random.Random) -> list[tuple[int, int]]:
    """CDR's and the UltraFeedback binarization's pick: the best (first of a tie) against a random
    other index, whatever its score; no pair when every score is equal."""
    valid = _valid(scores)
    values = [scores[i] for i in valid]
    if max(values) == min(values):  # type: ignore[type-var]
        raise NoPair("tie", f"scores {scores!r}")
    best = max(values)  # type: ignore[type-var]
    chosen = min(i for i in valid if scores[i] == best)
    rejected = rng.choice([i for i in valid if i != chosen])
    return _filter([(chosen, rejected)], texts, scores, lim, ties=True)


def _entry(values: Any, index: int) -> Any:
    """The index-th entry of a per-response list column (None when the column is not such a list)."""
    return values[index] if isinstance(values, list) and index < len(values) else None


def choose(pairs: list[tuple[int, int]], scores: list, strategy: str, rng: random.Random | None) -> list[tuple]:
    """The pairs a strategy keeps from the candidates (ties broken by the lower index)."""
    if strategy in ("all_pairs", "verdict", "best_random"):  # best_random: picked already
        return sorted(pairs)
    best = max(scores[c] for c, _ in pairs)
    chosen = min(c for c, _ in pairs if scores[c] == best)
    others = sorted(r for c, r in pairs if c == chosen)
    if strategy == "best_worst":
        worst = min(scores[r] for r in others)
        return [(chosen, min(r for r in others if scores[r] == worst))]
    assert rng is not None
    return [(chosen, rng.choice(others))]  # best_random_lower


class Pairs(MapStage):
    """Chosen/rejected pairs from scored responses: best vs worst, best vs random, or all pairs."""

    Params = PairsParams
    params: PairsParams

    @classmethod
    def reads(cls, params: PairsParams) -> list[str]:
        return [params.input, *params.response_columns(), params.score_column(), *params.carry]

    @classmethod
    def writes(cls, params: PairsParams) -> list[str]:
        return [*WRITES, *params.carried()]

    @classmethod
    def check(cls, params: PairsParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        if env.columns is None:
            return []
        problems = []
        for column in params.response_columns():
            if column not in env.columns:
                problems.append(
                    (
                        ("responses",),
                        f"no earlier stage writes '{column}': sample several responses per prompt first "
                        f"(`respond` with n > 1), or set responses: to the column that holds them",
                    )
                )
        if isinstance(params.responses, str):
            problems += list_problem(params.responses, env)
        if params.strategy == "verdict" and params.verdict not in env.columns:
            problems.append(
                (
                    ("verdict",),
                    f"no earlier stage writes '{params.verdict}': compare the responses first (`judge` with "
                    f"task: pairwise), or set verdict: to the column that holds the verdict reward",
                )
            )
        if params.strategy != "verdict" and params.scores not in env.columns:
            problems.append(
                (
                    ("scores",),
                    f"no earlier stage writes '{params.scores}': score the responses first (e.g. `reward` "
                    f"with response: {params.responses}), or set scores: to the column that holds the scores",
                )
            )
        for i, column in enumerate(params.carry):
            if column not in env.columns:
                problems.append(((("carry", i)), f"no earlier stage writes '{column}' to carry"))
        reads = {params.input, *params.response_columns(), params.score_column(), *params.carry}
        clash = sorted(set(WRITES + params.carried()) & reads)
        if clash:
            problems.append(((), f"pairs writes column(s) {', '.join(clash)}: read the prompt and responses elsewhere"))
        return problems

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        out = []
        for row in batch.rows:
            lim = limits(p, row)
            seed = rng = None
            try:
                if p.strategy == "verdict":
                    texts, scores, pair = verdict_pair(p, row, lim)
                    candidates = [pair]
                else:
                    texts, scores = scored_responses(p, row)
                    if p.strategy in RANDOM:
                        seed = self.ctx.seed_for(row.get(p.input), texts)
                        rng = random.Random(seed)
                    if p.strategy == "best_random":
                        candidates = authors_random_pair(texts, scores, lim, rng)
                    else:
                        candidates = candidate_pairs(texts, scores, lim)
            except NoPair as why:
                batch.drop(row, why.reason, why.detail)
                continue
            unscored = sum(t is not None and s is None for t, s in zip(texts, scores, strict=True))
            if unscored:  # left out of this row's pairs
                batch.count("unscored_responses", unscored)
            record = {
                "stage": "pairs",
                "strategy": p.strategy,
                "responses": p.responses,
                "scores": p.score_column(),
                "min_margin": lim.min_margin,
                "min_chosen_score": lim.min_chosen_score,
                "par_filters": lim.par,
                "seed": seed,
            }
            for c, r in choose(candidates, scores, p.strategy, rng):
                pair = {
                    "chosen": texts[c],
                    "rejected": texts[r],
                    "score_chosen": scores[c],
                    "score_rejected": scores[r],
                    # rounded below float noise: 1.649183 - 1.308087 is 0.34109600000000007
                    "margin": round(scores[c] - scores[r], 12),  # type: ignore[operator]
                    "chosen_index": c,
                    "rejected_index": r,
                    **{
                        f"{col}_{side}": _entry(row.get(col), i)
                        for col in p.carry
                        for side, i in (("chosen", c), ("rejected", r))
                    },
                }
                out.append(add_provenance({**row, **pair}, self.ctx.label, record))
        return out
