"""The judge stage's parameters and their static checks (`synth validate`)."""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field

from ...templating import template_problem, template_variables
from ..base import CheckEnv
from ..common import LLMParams, check_template
from . import rubric

Task = Literal["absolute", "pairwise", "score", "ultrafeedback"]
TEMPLATE_VARIABLES = {
    "instruction", "row", "criteria", "overall", "response", "response_a", "response_b", "checklist",
    "length_rule", "responses", "criterion", "size",
}  # fmt: skip
# What each task's template must show of the responses it judges.
SHOWN = {"pairwise": ["response_a", "response_b"], "ultrafeedback": ["responses"]}
CHECKLIST_TASKS = ("pairwise", "score")  # WildBench's prompts carry a checklist

with warnings.catch_warnings():  # `schema` shadows pydantic's deprecated BaseModel.schema(): harmless here
    warnings.filterwarnings("ignore", message='Field name "schema"')

    class JudgeParams(LLMParams):
        task: Task = Field(
            "absolute",
            description="absolute: each response on every aspect at once; pairwise: compare two (WildBench); score: "
            "WB-Score, each response 1-10 against the checklist (WildBench); ultrafeedback: one prompt per aspect "
            "over all of a row's responses together (UltraFeedback)",
        )
        input: str = Field("instruction", description="column holding the instruction")
        response: str = Field(
            "response", description="column with a response or a list of them (pairwise: the first two are compared)"
        )
        response_a: str | None = Field(None, description="pairwise: column of response A (give response_b too)")
        response_b: str | None = Field(None, description="pairwise: column of response B")
        criteria: list[rubric.Criterion] = Field(
            default_factory=lambda: list(rubric.ULTRAFEEDBACK),
            description="absolute, ultrafeedback: the rubric, each {name, description, scale: [low, high]} (default: "
            "UltraFeedback's helpfulness, honesty, instruction_following, truthfulness, 1-5)",
        )
        overall_scale: list[int] | None = Field([1, 10], description="absolute: overall score's scale (null: none)")
        checklist: Literal["auto", "generate", "column", "off"] = Field(
            "auto",
            description="the per-instruction checklist WildBench's prompts carry: generate (once per instruction, by "
            "checklist_backend, cached), column (read checklist_column), off; auto: generate for pairwise and score",
        )
        checklist_backend: str | None = Field(
            None, description="backend that writes the checklists (default: the judge's backend)"
        )
        checklist_column: str = Field(
            "checklist", description="checklist: column: the column holding a list of questions (or one a line)"
        )
        checklist_template: str | None = Field(
            None, description="the checklist prompt (default: judge/checklist.jinja, checklist_few_shot in complete)"
        )
        checklist_size: int = Field(
            10, ge=1, le=50, description="most questions in a generated checklist (WildBench: 5-10)"
        )
        checklist_max_tokens: int = Field(1024, ge=1, le=100_000, description="tokens a checklist answer may take")
        mode: Literal["auto", "chat", "complete"] = Field(
            "auto",
            description="chat: chat template; complete: few-shot prompt for base models; auto: chat when "
            "the model has a chat template (servers always), else complete",
        )
        template: str | None = Field(
            None, description="prompt template (default: judge/<task>.jinja, judge/<task>_few_shot.jinja in complete)"
        )
        schema: Literal["auto", "on", "off"] = Field(
            "auto", description="send the answer's JSON schema to the backend (on: fail if it cannot take one)"
        )
        rationale_chars: int | None = Field(
            None, ge=1, description="longest rationale (or analysis) the JSON schema allows (null: any length)"
        )
        length_tie_chars: int | None = Field(
            500, ge=0, description="pairwise: A>B/B>A becomes a tie if the winner is this much longer (null: off)"
        )
        max_words: int | None = Field(
            1000, ge=1, description="pairwise, score: texts shown to the judge are cut to this many words (WildBench)"
        )
        both_orders: bool = Field(False, description="pairwise: judge both orders; a disagreement is a tie")
        parse_retries: int = Field(2, ge=0, description="extra rounds, with new seeds, for answers that do not parse")
        retry_temperature: float = Field(0.7, ge=0, description="temperature of retry rounds (the first is greedy)")
        temperature: float = 0.0
        max_tokens: int = 1024

        def checklist_on(self) -> bool:
            if self.checklist == "auto":
                return self.task in CHECKLIST_TASKS
            return self.checklist != "off"


def check_params(p: JudgeParams, env: CheckEnv) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    if p.n != 1:
        problems.append((("n",), "a judge answers once per judgment: leave n at 1 (use parse_retries for retries)"))
    if p.task == "pairwise":
        if (p.response_a is None) != (p.response_b is None):
            missing = "response_b" if p.response_b is None else "response_a"
            why = "pairwise needs two responses: set both response_a and response_b, or neither (the first two"
            problems.append(((missing,), f"{why} of the list in `{p.response}` are compared)"))
        elif p.response_a is not None and p.response_a == p.response_b:
            problems.append((("response_b",), f"response_a and response_b both name '{p.response_a}'"))
    else:
        for name in ("response_a", "response_b", "both_orders"):
            if getattr(p, name):
                problems.append(((name,), f"{name} is for task: pairwise (this stage has task: {p.task})"))
    if p.task in ("pairwise", "score"):
        for name in ("criteria", "overall_scale"):
            if name in p.model_fields_set:
                problems.append(
                    ((name,), f"{name} is for task: absolute or ultrafeedback (this stage has task: {p.task})")
                )
    elif p.task == "ultrafeedback":
        if "overall_scale" in p.model_fields_set and p.overall_scale is not None:
            problems.append(
                (("overall_scale",), "ultrafeedback rates each aspect in its own prompt and has no overall score")
            )
        problems += rubric.rubric_problems(p.criteria, None)
    else:
        problems += rubric.rubric_problems(p.criteria, p.overall_scale)
    if p.checklist == "column" and env.columns is not None and p.checklist_column not in env.columns:
        problems.append(((("checklist_column",)), f"no earlier stage writes '{p.checklist_column}'"))
    if p.checklist_backend and p.checklist_backend not in env.backends:
        problems.append((("checklist_backend",), f"no backend named '{p.checklist_backend}' in backends:"))
    if not p.checklist_on():
        for name in ("checklist_backend", "checklist_template"):
            if getattr(p, name):
                problems.append(((name,), f"{name} only matters with a generated checklist (checklist: generate)"))
    if p.checklist_template:
        problems += check_template(p.checklist_template, "checklist_template", env, TEMPLATE_VARIABLES)
    template = p.template
    if template:
        problems += check_template(template, "template", env, TEMPLATE_VARIABLES)
        if not template_problem(template, env.base_dir):
            shown = template_variables(template, env.base_dir)
            needed = SHOWN.get(p.task, ["response"])
            lacking = " and ".join("{{ " + v + " }}" for v in needed if v not in shown)
            if lacking:
                problems.append((("template",), f"template '{template}' never shows what it judges: add {lacking}"))
    return problems
