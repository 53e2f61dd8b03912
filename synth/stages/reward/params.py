"""The `reward` stage's parameters and their static checks (`synth validate`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from ...errors import InputError
from ...resources import resource_dir
from ...templating import template_problem, template_variables
from ..base import CheckEnv, StageParams
from .shaping import NEEDS_REFERENCES, Shaping

BACKEND_FIELDS = ("backend", "strong", "weak", "router", "reference_backend")


def scoring_problem(name: str, spec: Any, pooling: bool) -> str | None:
    """Why backend `name` cannot give the scores this stage asks of it, known from its spec alone."""
    kind = getattr(spec, "type", None)
    if pooling and kind in ("local", "vllm"):
        return (
            f"backend '{name}' is a {kind} backend, and backend: reads a reward model served over HTTP (vLLM's "
            f"/pooling API): name an openai backend on that server, or give model: a reward-model folder"
        )
    if kind == "openai" and any(urlsplit(u).hostname == "api.openai.com" for u in spec.urls()):
        what = "serves no reward models" if pooling else "returns no prompt log-probabilities, so it cannot score"
        return f"backend '{name}' is OpenAI's API, which {what}: serve the model with vLLM and point the backend there"
    return None


class RewardParams(StageParams):
    method: Literal["rm", "cdr"] = Field(
        "rm",
        description="rm: a reward model's score (model: a local folder, or backend: a vLLM server); cdr: the "
        "strong backend's log-probability of the response minus the weak one's (CDR)",
    )
    model: str | None = Field(None, description="method rm: folder of a transformers sequence-classification model")
    backend: str | None = Field(
        None,
        description="method rm: an openai backend whose vLLM server runs a reward (sequence-classification) model, "
        "scored through vLLM's /pooling API",
    )
    input: str = Field("instruction", description="column holding the user turn")
    response: str = Field("response", description="column holding the response (or a list of them)")
    output: str | None = Field(
        None,
        description="column for the (shaped) score, a list for a list of responses (default: instruct_reward for rm, "
        "cdr_reward for cdr, <shaping>_score when shaped, e.g. par_score)",
    )
    head: int = Field(
        0, ge=0, le=4096, description="method rm: which output of the reward model is the reward (its first by default)"
    )
    heads: dict[str, int] = Field(
        {},
        description="method rm, a multi-objective reward model: named outputs written as score_<name> columns (as "
        "the judge writes its criteria), e.g. {helpfulness: 9, verbosity: 4} for DPA's reward model; "
        "direction_select reads them",
    )
    batch_size: int = Field(8, ge=1, description="conversations per forward pass (local) or per /pooling request")
    max_length: int = Field(4096, ge=16, description="tokens per conversation; longer ones are cut from the left")
    strong: str | None = Field(None, description="method cdr: backend of the strong (preferred) model")
    weak: str | None = Field(None, description="method cdr: backend of the weak model")
    format: Literal["strong", "own"] = Field(
        "strong",
        description="method cdr: strong: the authors' text, rendered once with the strong model's chat template, eos "
        "appended, cut to max_prompt_tokens/max_response_tokens, scored under both models; own: each model scores "
        "the conversation in its own chat template",
    )
    max_prompt_tokens: int = Field(1024, ge=1, le=1_000_000, description="format strong: the prompt's last N tokens")
    max_response_tokens: int = Field(
        1024, ge=1, le=1_000_000, description="format strong: the response's first N tokens (the eos comes after)"
    )
    few_shot: bool = Field(
        False,
        description="method cdr: a seeded exemplar of good and bad answers for the prompt's domain (CHAT without a "
        "router) goes before the user's turn in the scored text (the authors' fs_domain_icl)",
    )
    exemplars: str | None = Field(
        None, description="few_shot: a YAML file of exemplar texts per domain (default: the shipped pool)"
    )
    router: str | None = Field(
        None,
        description="method cdr: backend that sorts prompts into SAFETY/REASONING/CHAT, whose system prompt goes "
        "into the scored context (none: plain CDR, no system prompt)",
    )
    router_template: str = Field("reward/router.jinja", description="the router's system prompt")
    router_max_tokens: int = Field(64, ge=1, le=4096, description="tokens the router may answer with")
    safety_prompt: str = Field("reward/safety_system.jinja", description="system prompt for SAFETY and REASONING")
    chat_prompt: str = Field("reward/chat_system.jinja", description="system prompt for CHAT")
    vanilla_domain: bool = Field(False, description="CHAT prompts get no system prompt (the plain density ratio)")
    shaping: Shaping = Field(
        "raw",
        description="raw; par: mean sigmoid(par_k (r - r_ref)) over the references (PAR); centered: r - mean r_ref; "
        "tanh_rel: mean tanh(r - r_ref); lsc: log sigmoid(r - 85th percentile of the references' Normal); "
        "minmax, clip: over the rewards of the row's batch (shard), not the whole run (deterministic on resume)",
    )
    par_k: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False, description="par: the sigmoid's slope k")
    refs_per_prompt: int = Field(1, ge=1, le=100, description="M: reference responses per prompt")
    reference_backend: str | None = Field(
        None, description="backend that samples the reference responses (chat, the backend's template)"
    )
    references: str | None = Field(
        None, description="column of reference responses sampled earlier (a list), instead of reference_backend"
    )
    reference_temperature: float = Field(0.9, ge=0, le=100, description="references' sampling temperature (PAR: 0.9)")
    reference_top_p: float = Field(0.9, gt=0, le=1, description="references' top_p (PAR: 0.9)")
    reference_top_k: int = Field(
        50, ge=0, le=1_000_000, description="references' top_k (PAR: 50, transformers' default; 0: off)"
    )
    reference_max_tokens: int = Field(512, ge=1, le=10_000_000, description="references' token limit (PAR: 512)")
    length_penalty: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="subtract this per token past length_limit (PAR's code: 0.01; 0: off)",
    )
    length_limit: int = Field(300, ge=0, description="response tokens free of the length penalty (PAR's code: 300)")


def exemplar_path(p: RewardParams, base_dir: Path) -> Path:
    """The few-shot pool: the `exemplars` file (relative to the pipeline) or the shipped one."""
    if p.exemplars is None:
        return resource_dir("data") / "reward" / "cdr_exemplars.yaml"
    path = Path(p.exemplars).expanduser()
    return path if path.is_absolute() else base_dir / path


def output_column(p: RewardParams) -> str:
    if p.output:
        return p.output
    if p.shaping != "raw":
        return f"{p.shaping}_score"
    return "cdr_reward" if p.method == "cdr" else "instruct_reward"


def written_columns(p: RewardParams) -> list[str]:
    columns = [output_column(p), "reward_model", "provenance", *(f"score_{name}" for name in p.heads)]
    if p.method == "cdr":
        columns += ["strong_logprob", "weak_logprob"] + (["reward_domain"] if p.router else [])
    if p.shaping != "raw":
        columns += ["raw_reward", "reward_shaping"]
    if p.shaping in NEEDS_REFERENCES:
        columns += ["ref_rewards"] + ([] if p.references else ["ref_responses"])
    if p.length_penalty:
        columns += ["response_tokens"] + (["ref_tokens"] if p.shaping in NEEDS_REFERENCES else [])
    return columns


def check_params(p: RewardParams, env: CheckEnv) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    if p.method == "rm":
        if not p.model and not p.backend:
            problems.append(
                (("model",), "give model: (a local reward-model folder) or backend: (an openai backend serving one)")
            )
        elif p.model and p.backend:
            problems.append((("backend",), "give model: or backend:, not both"))
        for field in ("strong", "weak", "router", "few_shot", "exemplars"):
            if getattr(p, field):
                problems.append(((field,), f"{field} is used by method: cdr only (this stage has method: rm)"))
        for field in ("format", "max_prompt_tokens", "max_response_tokens"):
            if field in p.model_fields_set:
                problems.append(((field,), f"{field} is used by method: cdr only (this stage has method: rm)"))
        for name, index in p.heads.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name) or not 0 <= index <= 4096:
                problems.append(
                    (
                        ("heads", name),
                        "a head is a name (letters, digits, _) and an output index from 0, e.g. helpfulness: 9",
                    )
                )
    else:
        for field in ("strong", "weak"):
            if not getattr(p, field):
                problems.append(((field,), f"method cdr needs {field}: the name of a backend that can score"))
        for field in ("model", "backend", "heads"):
            if getattr(p, field):
                problems.append(
                    ((field,), f"{field} is used by method: rm only; method cdr scores with strong: and weak:")
                )
    needs_refs = p.shaping in NEEDS_REFERENCES
    if needs_refs and not p.reference_backend and not p.references:
        problems.append(
            (
                ("reference_backend",),
                f"shaping {p.shaping} needs reference responses: name a reference_backend to sample them "
                "(or give references: a column holding them)",
            )
        )
    if p.reference_backend and p.references:
        problems.append((("references",), "give reference_backend: or references:, not both"))
    if not needs_refs:
        for field in ("reference_backend", "references"):
            if getattr(p, field):
                problems.append(((field,), f"shaping {p.shaping} uses no references (centered, par, tanh_rel, lsc do)"))
    unused = {
        "par_k": (p.shaping != "par", "shaping: par"),
        "refs_per_prompt": (not needs_refs, "a shaping with references (centered, par, tanh_rel, lsc)"),
        "reference_temperature": (not p.reference_backend, "reference_backend"),
        "reference_top_p": (not p.reference_backend, "reference_backend"),
        "reference_top_k": (not p.reference_backend, "reference_backend"),
        "reference_max_tokens": (not p.reference_backend, "reference_backend"),
        "length_limit": (not p.length_penalty, "length_penalty"),
        "vanilla_domain": (not p.router, "router"),
        "max_prompt_tokens": (p.format != "strong", "format: strong"),
        "max_response_tokens": (p.format != "strong", "format: strong"),
        "exemplars": (not p.few_shot, "few_shot: true"),
        "router_template": (not p.router, "router"),
        "router_max_tokens": (not p.router, "router"),
    }
    for field, (idle, needs) in unused.items():
        if idle and field in p.model_fields_set:
            problems.append(((field,), f"{field} only matters with {needs}"))
    for field in ("backend", "strong", "weak"):
        name = getattr(p, field)
        problem = scoring_problem(name, env.specs.get(name), pooling=field == "backend") if name else None
        if problem:
            problems.append(((field,), problem))
    if p.method == "cdr" and p.few_shot:
        from .cdr import load_exemplars

        try:
            load_exemplars(exemplar_path(p, env.base_dir))
        except InputError as exc:
            problems.append((("exemplars",), str(exc)))
    if p.method == "cdr" and p.router:
        for field in ("router_template", "safety_prompt", "chat_prompt"):
            name = getattr(p, field)
            problem = template_problem(name, env.base_dir)
            if not problem and template_variables(name, env.base_dir):
                problem = f"template '{name}' is rendered without variables, but it uses some"
            if problem:
                problems.append(((field,), problem))
    return problems
