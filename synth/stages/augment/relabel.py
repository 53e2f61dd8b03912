"""`relabel`: reward-augmented preference data (Zhang et al., "Reward-Augmented Data Enhances Direct
Preference Alignment of LLMs").

A DPO pair says only that one response beats another, so a model learns to push the rejected one
down even when it was good. Conditioning each pair on the score a response earned lets the model
learn the whole range of quality instead: every pair becomes two rows,

- (a) conditioned on the chosen response's score, chosen and rejected as they were;
- (b) conditioned on the rejected response's score, the two responses swapped (under that target
  the old rejected response is the one to prefer).

The condition is a system message in the authors' words ("You are an assistant that generates
responses for the instruction while implicitly achieving the following target scores (on a scale
of 1-10, ...):\\nOverall score: 8."), the score printed as an integer when it is one
(templates/relabel/target.jinja). `mode: prefix` puts the same text, then a blank line, before the
user turn instead (the authors' "nosys" variant). Their nosys code does not actually swap the
responses of row (b); this stage swaps them in both modes. At inference the model is conditioned
on the top of the scale (10): the dataset card shows the text to use.

Before relabeling, pairs are kept only when the chosen response's average fine-grained score
(`avg_fine_score_chosen`, from `pairs` with `carry: [avg_fine_score]` after an absolute judge) is
at least the rejected one's (else dropped: `fine_score_below_rejected`); rows without those
columns skip the check (counted as `fine_filter_skipped`). A score that is not a number or lies
off the scale drops the row (`missing_score`, `score_out_of_scale`). `target: par` reads PAR
scores in [0, 1] (Fu et al. 2025) and targets round(low + (high - low) * par), i.e. 1 + 9 * par on
1-10, halves rounding up.

Row (b) swaps every pair of columns named chosen/rejected, `*_chosen`/`*_rejected` and
`chosen_*`/`rejected_*` (scores, fine scores, indices), negates `margin`, and clears `rationale`
(it explains why the other response won). Columns written: `system` (a row's own system text
follows the condition after a blank line), or the prompt column with `mode: prefix`;
`target_score`, `relabel_swapped`. Rows whose two targets tie would teach
opposite things under one condition and are dropped (`tied_targets`; pairs from `pairs` never tie
on their own score, PAR targets can after rounding).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jinja2
from pydantic import Field, model_validator

from ...templating import render, template_variables
from ..base import Batch, CheckEnv, MapStage, Row, StageParams
from ..common import add_provenance, check_template, template_sha

TEMPLATE_VARIABLES = {"score", "low", "high"}


class RelabelParams(StageParams):
    score_chosen: str = Field("score_chosen", description="column with the chosen response's score (row a's target)")
    score_rejected: str = Field(
        "score_rejected", description="column with the rejected response's score (row b's target)"
    )
    fine_chosen: str | None = Field(
        "avg_fine_score_chosen",
        description="keep pairs whose chosen fine-grained average is at least the rejected one's (null: no filter)",
    )
    fine_rejected: str | None = Field("avg_fine_score_rejected", description="the rejected response's fine average")
    target: Literal["score", "par"] = Field(
        "score",
        description="score: the scores are on the scale already (UltraFeedback's 1-10 overall score); par: PAR "
        "scores in [0, 1], targeted as round(low + (high - low) * par)",
    )
    scale: list[int] = Field(
        default_factory=lambda: [1, 10], min_length=2, max_length=2, description="[lowest, highest] target score"
    )
    mode: Literal["system", "prefix"] = Field(
        "system", description="system: the condition is a system message; prefix: it starts the user turn"
    )
    input: str = Field(
        "instruction", description="mode prefix: the prompt column to rewrite (the preference export reads instruction)"
    )
    template: str = Field("relabel/target.jinja", description="the condition's text (variables: score, low, high)")
    tied_targets: Literal["drop", "keep"] = Field(
        "drop", description="a pair whose two targets are equal: drop it (opposite lessons under one condition)"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale is [lowest, highest]: {self.scale[0]} is not below {self.scale[1]}")
        if (self.fine_chosen is None) != (self.fine_rejected is None):
            raise ValueError("set both fine_chosen and fine_rejected, or both to null (no fine-score filter)")
        if self.score_chosen == self.score_rejected:
            raise ValueError(f"score_chosen and score_rejected both name '{self.score_chosen}'")
        return self


def score_text(score: float) -> str:
    """A score as the authors print it: 8.0 -> "8", 7.5 -> "7.5"."""
    return str(int(score)) if float(score).is_integer() else str(float(score))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def partner(column: str) -> str | None:
    """The column a swap exchanges this one with (chosen <-> rejected), or None."""
    for a, b in (("chosen", "rejected"), ("rejected", "chosen")):
        if column == a:
            return b
        if column.endswith(f"_{a}"):
            return column[: -len(a)] + b
        if column.startswith(f"{a}_"):
            return b + column[len(a) :]
    return None


def swap(row: Row) -> Row:
    """The pair the other way round: every chosen/rejected column pair exchanged, margin negated,
    the rationale (which argued for the other response) cleared."""
    out = dict(row)
    for column in row:
        other = partner(column)
        if other is not None and other in row:
            out[column] = row[other]
    if _number(row.get("margin")) is not None:
        out["margin"] = -row["margin"]
    if "rationale" in row:
        out["rationale"] = None
    return out


class NoRelabel(Exception):
    """Why a pair is not relabeled: the drop reason and a detail."""


class Relabel(MapStage):
    """Reward-augmented relabeling: each pair twice, conditioned on each response's score (Zhang et al.)."""

    Params = RelabelParams
    params: RelabelParams

    @classmethod
    def reads(cls, params: RelabelParams) -> list[str]:
        prompt = [params.input] if params.mode == "prefix" else []
        return ["chosen", "rejected", params.score_chosen, params.score_rejected, *prompt]

    @classmethod
    def writes(cls, params: RelabelParams) -> list[str]:
        return [params.input if params.mode == "prefix" else "system", "target_score", "relabel_swapped"]

    @classmethod
    def check(cls, params: RelabelParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        problems = check_template(params.template, "template", CheckEnv(env.base_dir, env.backends, None))
        if not problems:
            unknown = template_variables(params.template, env.base_dir) - TEMPLATE_VARIABLES
            if unknown:
                problems.append(
                    (
                        ("template",),
                        f"template '{params.template}' uses {', '.join(sorted(unknown))}: a relabel "
                        "template gets only score, low and high",
                    )
                )
        if env.columns is None:
            return problems
        for field, column in (("score_chosen", params.score_chosen), ("score_rejected", params.score_rejected)):
            if column not in env.columns:
                problems.append(
                    (
                        (field,),
                        f"no earlier stage writes '{column}': relabel reads pairs from the `pairs` stage, "
                        f"or set {field}: to the column with that response's score",
                    )
                )
        for column in ("chosen", "rejected"):
            if column not in env.columns:
                problems.append(((), f"no earlier stage writes '{column}': put a `pairs` stage before relabel"))
        if params.mode == "prefix" and params.input not in env.columns:
            problems.append((("input",), f"no earlier stage writes '{params.input}', the prompt to prefix"))
        return problems

    async def open(self) -> None:
        p = self.params
        self.check_again()
        self.inference_text = self._text(p.scale[1])
        self.record = {
            "stage": "relabel",
            "mode": p.mode,
            "target": p.target,
            "scale": list(p.scale),
            "template": p.template,
            "template_sha": template_sha(p.template, self.ctx.base_dir),
            "inference_text": self.inference_text,
        }

    def _text(self, score: float) -> str:
        low, high = self.params.scale
        return render(self.params.template, self.ctx.base_dir, score=score_text(score), low=low, high=high)

    def _target(self, row: Row, column: str) -> float:
        p, value = self.params, row.get(column)
        number = _number(value)
        if number is None:
            raise NoRelabel("missing_score", f"'{column}' holds {value!r}, not a number")
        low, high = p.scale
        if p.target == "par":
            if not 0 <= number <= 1:
                raise NoRelabel("par_out_of_range", f"'{column}' holds {number}, not a PAR score in [0, 1]")
            return float(math.floor(low + (high - low) * number + 0.5))
        if not low <= number <= high:
            raise NoRelabel(
                "score_out_of_scale", f"'{column}' holds {number}, outside the scale {low}-{high} (set scale:)"
            )
        return number

    def _fine_ok(self, row: Row, batch: Batch) -> bool:
        p = self.params
        if p.fine_chosen is None or p.fine_rejected is None:
            return True
        chosen, rejected = _number(row.get(p.fine_chosen)), _number(row.get(p.fine_rejected))
        if chosen is None or rejected is None:
            batch.count("fine_filter_skipped")
            return True
        return chosen >= rejected

    def _conditioned(self, row: Row, target: float, swapped: bool) -> Row:
        p = self.params
        text = self._text(target)
        out = swap(row) if swapped else dict(row)
        if p.mode == "prefix":
            out[p.input] = f"{text}\n\n{out[p.input]}"
        else:
            system = out.get("system")
            out["system"] = f"{text}\n\n{system}" if isinstance(system, str) and system else text
        out["target_score"] = target
        out["relabel_swapped"] = swapped
        return add_provenance(out, self.ctx.label, {**self.record, "swapped": swapped})

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        out = []
        for row in batch.rows:
            if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
                batch.drop(row, "missing_pair", "chosen and rejected must both be texts (put `pairs` first)")
                continue
            if p.mode == "prefix" and not isinstance(row.get(p.input), str):
                batch.drop(row, "missing_prompt", f"'{p.input}' holds {row.get(p.input)!r}, not a prompt to prefix")
                continue
            try:
                high, low = self._target(row, p.score_chosen), self._target(row, p.score_rejected)
            except NoRelabel as why:
                batch.drop(row, why.args[0], why.args[1])
                continue
            if not self._fine_ok(row, batch):
                detail = f"{p.fine_chosen} {row[p.fine_chosen]} < {p.fine_rejected} {row[p.fine_rejected]}"
                batch.drop(row, "fine_score_below_rejected", detail)
                continue
            if high == low and p.tied_targets == "drop":
                batch.drop(row, "tied_targets", f"both responses target {score_text(high)}")
                continue
            try:
                out += [self._conditioned(row, high, False), self._conditioned(row, low, True)]
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
        return out
