"""The `aggregate` stage's parameters and their static checks (`synth validate`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...templating import template_problem, template_variables
from ..base import CheckEnv
from ..common import LLMParams, check_template
from .refs import candidate_columns

# What the aggregator's templates may use besides the row's columns.
TEMPLATE_VARIABLES = {"instruction", "references", "system", "row"}


class AggregateParams(LLMParams):
    backend: str = Field("default", description="backend of the aggregator model (under backends: in the file)")
    candidates: str | list[str] = Field(
        "response",
        description="column holding a list of candidate responses (Self-MoA: respond with n), or several columns "
        "(MoA: one respond stage per backend); strings and lists are joined in order",
    )
    input: str = Field("instruction", description="column holding the instruction")
    output: str = Field("response", description="column for the aggregated answer")
    candidates_output: str | None = Field("candidates", description="column that keeps the candidates (null: none)")
    system: str | None = Field(
        None, description="system prompt the references are appended to (a row's own `system` column comes first)"
    )
    mode: Literal["auto", "chat", "complete"] = Field(
        "auto",
        description="chat: references in the system message; complete: few-shot prompt for base models; auto: "
        "chat when the model has a chat template (servers always), else complete",
    )
    system_template: str = Field("aggregate/system.jinja", description="chat: the system text with the references")
    completion_template: str = Field("aggregate/few_shot.jinja", description="complete: the few-shot prompt")
    layers: int = Field(2, ge=2, le=10, description="MoA layers: 2 = the candidates, then the aggregator")
    proposers: list[str] = Field(
        default_factory=list,
        description="layers > 2: backends that answer again with the previous layer's answers as references, one "
        "answer each (a name may repeat: several samples of one model)",
    )
    proposer_temperature: float = Field(0.7, ge=0, le=100, description="proposers' temperature in layers > 2")
    proposer_max_tokens: int = Field(2048, ge=1, le=10_000_000, description="proposers' max_tokens in layers > 2")
    window: int | None = Field(
        None, ge=2, description="Self-MoA-Seq: references per call when there are more (null: all in one call)"
    )
    stride: int | None = Field(
        None, ge=1, description="new candidates per later window (default window - 1: no overlap)"
    )
    retries: int = Field(2, ge=0, description="extra rounds, with new seeds, for empty or copied answers")
    retry_temperature: float = Field(0.7, ge=0, description="lowest temperature of retry rounds")
    temperature: float = 0.7
    max_tokens: int = 2048


def _template_problems(name: str, field: str, env: CheckEnv) -> list[tuple[tuple, str]]:
    problems = check_template(name, field, env, TEMPLATE_VARIABLES)
    shown = not problems and not template_problem(name, env.base_dir)
    if shown and "references" not in template_variables(name, env.base_dir):
        problems.append(((field,), f"template '{name}' never shows the candidates: add {{{{ references }}}}"))
    return problems


def check_params(p: AggregateParams, env: CheckEnv) -> list[tuple[tuple, str]]:
    """The `aggregate` stage's static checks (`synth validate`): (field path, message)."""
    problems: list[tuple[tuple, str]] = []
    if p.n != 1:
        problems.append(
            (("n",), "the aggregator writes one answer per row: leave n at 1 (sample candidates with respond's n)")
        )
    columns = candidate_columns(p.candidates)
    if not columns:
        problems.append((("candidates",), "name the column(s) holding the candidate responses"))
    for i, column in enumerate(columns):
        if column in columns[:i]:
            problems.append((("candidates", i), f"column '{column}' is named twice"))
        if column == p.input:
            problems.append((("candidates", i), f"'{column}' is the instruction column (input:), not a candidate"))
    if p.candidates_output is not None and p.candidates_output == p.output:
        problems.append((("candidates_output",), f"output and candidates_output both name '{p.output}'"))
    if p.layers > 2 and not p.proposers:
        problems.append(
            (
                ("proposers",),
                f"layers: {p.layers} has the proposers answer again with the previous layer's answers as references: "
                "list their backends (e.g. proposers: [model_a, model_b]), or set layers: 2",
            )
        )
    if p.proposers and p.layers == 2:
        problems.append(
            (
                ("proposers",),
                "proposers answer again only in layers between the first and the last: set layers: 3 or more",
            )
        )
    for i, name in enumerate(p.proposers):
        if name not in env.backends:
            problems.append(
                (("proposers", i), f"no backend named '{name}' (defined: {', '.join(sorted(env.backends))})")
            )
    if p.stride is not None and p.window is None:
        problems.append((("stride",), "stride slides a window over the candidates: set window too"))
    if p.window is not None and p.stride is not None and p.stride > p.window - 1:
        problems.append(
            (
                ("stride",),
                f"after the first window a call holds the running answer and window - 1 = {p.window - 1} candidates: "
                f"set stride between 1 and {p.window - 1}",
            )
        )
    if p.mode in ("auto", "chat"):
        problems += _template_problems(p.system_template, "system_template", env)
    if p.mode in ("auto", "complete"):
        problems += _template_problems(p.completion_template, "completion_template", env)
    return problems
