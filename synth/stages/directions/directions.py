"""`directions`: responses to each instruction at a neighbourhood of preference directions, the
generation step of Robust Preference Selection (RPS; Mao, Shi, Gu, Wei, ICLR 2026) over a
Directional Preference Alignment model (DPA; Wang et al., ACL 2024).

A DPA model is told which trade-off between two attributes to make (helpfulness and verbosity by
default) by a direction v = (cos θ, sin θ), written into its prompt as integer weights: "maximize
weighted rating = helpfulness*98 + verbosity*17". Directions outside the range it was trained on
(DPA trained on non-positive verbosity weights) give weaker answers, so RPS samples one response at
each of the k grid directions closest to the target within θmax (directions_geometry.py: a grid
centred on the target, or with `absolute_grid: true` the authors' code's fixed -40°..40° grid), and
a later stage keeps the candidate whose attribute scores r maximize v_target·r (`direction_select`).
`baseline: true` samples `baseline_samples` responses at the target itself instead, the paper's
comparison.

The conditioning goes in the system message (`mode: system`, as DPA's model card says), before the
user's prompt (`user_prefix`, as the RPS code does for models without a system role), or, for base
models without a chat template (the embedded default), into a few-shot completion prompt
(`complete`); `auto` picks system or complete by whether the model has a chat template.

Each row gets one target: `target` is an angle, or a list from which each row draws one with a
seed (`expand: true` makes a row per target instead). Columns: `response` (the candidates, a list),
`gen_angles` and `gen_weights` (the direction each candidate was sampled at), `neighbourhood`,
`target_angle`, `target_weights`, `direction` (the target's unit vector), `attributes`, the
target's conditioning text in `system` (so an export trains a direction-conditioned model; set
`condition_output: null` to leave it out), and `gen_response_configs`. Empty candidates are left
out and counted (`empty_candidates`); a row with none left fails.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Literal

import jinja2
from pydantic import Field

from ...llm.base import Request, RequestFailed
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LLMParams, add_provenance, auto_mode, check_template, template_sha
from . import geometry as geo

RPS_TARGETS = [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0]
TEMPLATE_VARIABLES = {"instruction", "row", "attributes", "weights", "angle", "condition"}


class DirectionsParams(LLMParams):
    input: str = Field("instruction", description="column holding the instruction")
    output: str = Field("response", description="column for the candidate responses (a list)")
    attributes: list[str] = Field(
        ["helpfulness", "verbosity"], description="the two attributes a direction (cos θ, sin θ) weighs"
    )
    target: float | list[float] = Field(
        RPS_TARGETS,
        description="target angle in degrees, or a list: each row draws one with a seed (default: RPS's 10°..45°)",
    )
    expand: bool = Field(False, description="with a list of targets: one output row per target instead of a draw")
    k: int = Field(5, ge=1, le=100, description="neighbour directions per target (RPS: 5)")
    theta_max: float = Field(
        30.0, ge=0, le=180, description="largest angle between a neighbour and the target (RPS: 30)"
    )
    step: float = Field(5.0, gt=0, le=90, description="grid spacing in degrees")
    absolute_grid: bool = Field(
        False, description="use the RPS code's fixed grid (grid_range) instead of one centred on the target"
    )
    grid_range: tuple[float, float] = Field((-40.0, 40.0), description="absolute_grid: lowest and highest angle")
    max_angle: float = Field(90.0, gt=0, le=180, description="no neighbour beyond ±this (90: helpfulness weight ≥ 0)")
    samples_per_direction: int = Field(1, ge=1, le=100, description="responses per neighbour direction (RPS: 1)")
    baseline: bool = Field(False, description="sample baseline_samples responses at the target only (RPS's baseline)")
    baseline_samples: int = Field(3, ge=1, le=100, description="baseline: responses at the target (RPS: 3)")
    mode: Literal["auto", "system", "user_prefix", "complete"] = Field(
        "auto",
        description="system: conditioning as the system message (DPA); user_prefix: before the prompt in the user "
        "turn (RPS code); complete: few-shot prompt for base models; auto: system with a chat template, else complete",
    )
    condition: str = Field(
        "directions/dpa.jinja", description="template of the conditioning text (directions/rps.jinja: RPS code's)"
    )
    template: str = Field("directions/few_shot.jinja", description="mode complete: the few-shot prompt")
    condition_output: str | None = Field(
        "system", description="column for the target's conditioning text (exports put `system` before the prompt)"
    )
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_tokens: int = 512

    def targets(self) -> list[float]:
        return [float(t) for t in (self.target if isinstance(self.target, list) else [self.target])]

    def angles(self, target: float) -> list[float]:
        if self.baseline:
            return [target]
        return geo.neighbourhood(
            target,
            self.k,
            self.theta_max,
            self.step,
            absolute_grid=self.absolute_grid,
            grid_range=self.grid_range,
            limit=self.max_angle,
        )


class Directions(MapStage):
    """Responses at the directions around a target preference direction (RPS over a DPA model)."""

    Params = DirectionsParams
    params: DirectionsParams

    @classmethod
    def reads(cls, params: DirectionsParams) -> list[str]:
        return [params.input]

    @classmethod
    def writes(cls, params: DirectionsParams) -> list[str]:
        extra = [params.condition_output] if params.condition_output else []
        fixed = ["gen_angles", "gen_weights", "neighbourhood", "target_angle", "target_weights", "direction"]
        return [params.output, *fixed, "attributes", *extra, "gen_response_configs", "provenance"]

    @classmethod
    def check(cls, params: DirectionsParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        p, problems = params, []
        if p.n != 1:
            problems.append((("n",), "set samples_per_direction (or baseline_samples with baseline: true), not n"))
        if len(p.attributes) != 2 or len(set(p.attributes)) != 2:
            problems.append((("attributes",), f"give two different attribute names (got {p.attributes})"))
        targets = p.targets()
        if not targets:
            problems.append((("target",), "give a target angle in degrees, or a list of them"))
        for i, t in enumerate(targets):
            where = ("target", i) if isinstance(p.target, list) else ("target",)
            if not math.isfinite(t):
                problems.append((where, f"give the target as a finite angle in degrees (got {t})"))
            elif abs(t) > p.max_angle:
                problems.append((where, f"target {t:g}° lies beyond max_angle {p.max_angle:g}°"))
            elif not p.angles(t):
                grid = f"the grid {p.grid_range[0]:g}..{p.grid_range[1]:g}°" if p.absolute_grid else "the grid"
                problems.append((where, f"no angle of {grid} lies within theta_max {p.theta_max:g}° of target {t:g}°"))
        if p.absolute_grid and p.grid_range[0] > p.grid_range[1]:
            problems.append((("grid_range",), "give [lowest, highest] angle"))
        if p.expand and not isinstance(p.target, list):
            problems.append((("expand",), "expand makes a row per target: give target a list of angles"))
        problems += check_template(p.condition, "condition", env, TEMPLATE_VARIABLES)
        if p.mode in ("auto", "complete"):
            problems += check_template(p.template, "template", env, TEMPLATE_VARIABLES)
        return problems

    async def open(self) -> None:
        p = self.params
        self.mode = p.mode
        if p.mode == "auto":
            mode = await asyncio.to_thread(auto_mode, self.ctx.llm(p.backend).backend, self.ctx.label)
            self.mode = "system" if mode == "chat" else mode  # DPA's conditioning: a system message

    def _row_targets(self, row: Row, instruction: str) -> list[float]:
        p = self.params
        targets = p.targets()
        if len(targets) == 1 or p.expand:
            return targets
        return [random.Random(self.ctx.seed_for("target", instruction)).choice(targets)]

    def _condition(self, row: Row, angle: float) -> str:
        p = self.params
        variables = {"attributes": p.attributes, "weights": geo.weights(angle), "angle": angle}
        return render(p.condition, self.ctx.base_dir, allow_empty=True, **{**row, "row": row, **variables})

    def _request(self, row: Row, instruction: str, target: float, angle: float, n: int) -> Request:
        p = self.params
        condition = self._condition(row, angle)
        sampling = p.sampling().model_copy(update={"n": n})
        seed = self.ctx.seed_for(instruction, target, angle)
        if self.mode == "complete":
            variables = {"attributes": p.attributes, "weights": geo.weights(angle), "angle": angle}
            variables |= {"condition": condition, "instruction": instruction}
            prompt = render(p.template, self.ctx.base_dir, **{**row, "row": row, **variables})
            return Request(sampling, seed, prompt=prompt)
        if self.mode == "user_prefix":
            return Request(sampling, seed, messages=(("user", f"{condition}\n\n{instruction}"),))
        return Request(sampling, seed, messages=(("system", condition), ("user", instruction)))

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        n = p.baseline_samples if p.baseline else p.samples_per_direction
        jobs: list[tuple[Row, float, list[float], list[Request], str]] = []
        for row in batch.rows:
            if row.get(p.input) is None:
                batch.fail(row, "missing_input", f"column '{p.input}' is empty")
                continue
            instruction = str(row[p.input])
            try:
                mine = []
                for target in self._row_targets(row, instruction):
                    angles = p.angles(target)
                    requests = [self._request(row, instruction, target, a, n) for a in angles]
                    mine.append((row, target, angles, requests, self._condition(row, target)))
            except jinja2.TemplateError as exc:
                batch.fail(row, "template_error", str(exc))
                continue
            jobs += mine
        call = llm.complete if self.mode == "complete" else llm.chat
        results = iter(await call([r for job in jobs for r in job[3]]))
        configs = {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "repetition_penalty": p.repetition_penalty,
            "max_tokens": p.max_tokens,
            "stop_tokens": list(p.stop),
            "output_generator": llm.model_id,
            "mode": self.mode,
            "condition": p.condition,
            "condition_sha": template_sha(p.condition, self.ctx.base_dir),
            "template": p.template if self.mode == "complete" else None,
            "template_sha": template_sha(p.template, self.ctx.base_dir) if self.mode == "complete" else None,
        }
        geometry = ("baseline", "k", "theta_max", "step", "absolute_grid", "grid_range", "max_angle")
        record = {"stage": "directions", "mode": self.mode, **{name: getattr(p, name) for name in geometry}}
        out = []
        for row, target, angles, requests, condition in jobs:
            answers = [next(results) for _ in requests]
            failed = next((a for a in answers if isinstance(a, RequestFailed)), None)
            if failed is not None:
                batch.fail(row, f"request_failed:{failed.reason}", failed.detail)
                continue
            texts, gen_angles = self._candidates(angles, answers, batch)
            if not texts:
                batch.fail(row, "empty_response", f"every candidate at {angles} was empty")
                continue
            columns = {
                p.output: texts,
                "gen_angles": gen_angles,
                "gen_weights": [geo.weights(a) for a in gen_angles],
                "neighbourhood": angles,
                "target_angle": target,
                "target_weights": geo.weights(target),
                "direction": geo.unit(target),
                "attributes": list(p.attributes),
                "gen_response_configs": {**configs, "seeds": [r.seed for r in requests]},
            }
            if p.condition_output:
                columns[p.condition_output] = condition
            out.append(add_provenance({**row, **columns}, self.ctx.label, record))
        return out

    @staticmethod
    def _candidates(angles: list[float], answers: list, batch: Batch) -> tuple[list[str], list[float]]:
        """The non-empty responses and the angle each was sampled at (empty ones are counted)."""
        texts, gen_angles = [], []
        for angle, generations in zip(angles, answers, strict=True):
            if truncated := sum(g.finish_reason == "length" for g in generations):
                batch.count("truncated", truncated)
            for g in generations:
                if g.text.strip():
                    texts.append(g.text.strip())
                    gen_angles.append(angle)
                else:
                    batch.count("empty_candidates")
        return texts, gen_angles
