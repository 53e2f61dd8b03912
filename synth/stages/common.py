"""Pieces shared by LLM stages: sampling parameters in a stage's YAML, template checks,
and the provenance every generated row carries."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

from pydantic import Field, field_validator

from ..errors import BackendError, SynthError
from ..llm.base import CompleteResult, RequestFailed, Sampling
from ..templating import environment, template_problem, template_variables
from .base import Batch, CheckEnv, Row, StageParams


class LLMParams(StageParams):
    backend: str = Field("default", description="name of a backend under backends: in the pipeline file")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    repetition_penalty: float = Field(1.0, gt=0)
    n: int = Field(1, ge=1, le=10_000, description="samples per row; n > 1 writes a list")

    # Stages redefine some of these with their own defaults (which drops the bounds above):
    # the validators below apply to every stage's version, so `synth validate` catches them all.
    @field_validator("max_tokens", "response_max_tokens", check_fields=False)
    @classmethod
    def _tokens(cls, value: int) -> int:
        if not 1 <= value <= 10_000_000:
            raise ValueError("must be between 1 and 10,000,000")
        return value

    @field_validator("temperature", "response_temperature", "retry_temperature", check_fields=False)
    @classmethod
    def _temperature(cls, value: float) -> float:
        if not 0 <= value <= 100:
            raise ValueError("must be between 0 and 100")
        return value

    @field_validator("top_p", "response_top_p", check_fields=False)
    @classmethod
    def _top_p(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be above 0 and at most 1")
        return value

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop),
            repetition_penalty=self.repetition_penalty,
            n=self.n,
        )


def check_template(name: str, field: str, env: CheckEnv, extra_vars: set[str] = frozenset()) -> list[tuple[tuple, str]]:
    problem = template_problem(name, env.base_dir)
    if problem:
        return [((field,), problem)]
    if env.columns is not None:
        unknown = template_variables(name, env.base_dir) - env.columns - set(extra_vars)
        if unknown:
            have = ", ".join(sorted(env.columns)) or "none"
            return [
                (
                    (field,),
                    f"template '{name}' uses {', '.join(sorted(unknown))}, which no earlier stage "
                    f"provides (available columns: {have})",
                )
            ]
    return []


@cache
def template_sha(name: str, base_dir: Path) -> str:
    env = environment(base_dir)
    source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def add_provenance(row: Row, label: str, record: dict) -> Row:
    """Record which stage, model, template and sampling made a row's new columns."""
    provenance = dict(row.get("provenance") or {})
    provenance[label] = record
    return {**row, "provenance": provenance}


def answer_value(
    batch: Batch,
    row: Row,
    result: CompleteResult,
    n: int,
    *,
    strip: bool = True,
    drop_empty: bool = True,
    empty_reason: str = "empty_answer",
) -> str | list[str] | None:
    """The column value from one request's answers (a string, or a list when n > 1); None when
    the row failed, which is then recorded in the batch with its reason and the raw answers.
    Of n > 1 samples the empty ones are left out of the list and counted (`empty_samples`): a
    best-of-n row keeps its other answers, and an empty text never becomes a pair's rejected side.
    Only a row whose samples are all empty fails."""
    if isinstance(result, RequestFailed):
        batch.fail(row, f"request_failed:{result.reason}", result.detail)
        return None
    texts = [g.text.strip() if strip else g.text for g in result]
    if len(texts) != n:
        batch.fail(row, "missing_samples", f"asked for {n} samples, got {len(texts)}: {texts!r}"[:2000])
        return None
    truncated = sum(g.finish_reason == "length" for g in result)
    if truncated:
        batch.count("truncated", truncated)
    if drop_empty and not all(texts):
        if not any(texts):
            batch.fail(row, empty_reason, repr(texts))
            return None
        batch.count("empty_samples", texts.count(""))
        texts = [t for t in texts if t]
    return texts[0] if n == 1 else texts


def model_chat_template(backend, label: str, required: bool = False):
    """The backend's chat template, or None where the model has none (a base model: the caller
    falls back to few-shot prompts). Missing is an error when `required`, and for a server's
    model, which is an instruct model as a rule: a few-shot fallback would hide a missing
    `chat_template:` on the backend."""
    getter = getattr(backend, "chat_template", None)
    if getter is None:
        return None
    try:
        return getter()
    except BackendError as exc:
        if required or getattr(getattr(backend, "spec", None), "type", "") == "openai":
            raise SynthError(f"stage '{label}': {exc}") from None
        return None


def list_problem(column: str, env: CheckEnv) -> list[tuple[tuple, str]]:
    """A stage that needs several responses per row, reading a column written with n: 1."""
    if column not in env.singles:
        return []
    return [
        (
            ("responses",),
            f"'{column}' holds one response per row (written with n: 1): sample several per prompt "
            f"(e.g. n: 4 on that stage) first",
        )
    ]


def auto_mode(backend, label: str) -> str:
    """`mode: auto` of a stage that prompts: "chat" when the model applies a chat template (a server
    always does, with its model's own), else "complete" (a few-shot prompt a base model continues)."""
    if getattr(getattr(backend, "spec", None), "type", "") == "openai":
        return "chat"
    return "chat" if model_chat_template(backend, label) is not None else "complete"


def retry_sampling(sampling: Sampling, attempt: int, retry_temperature: float) -> Sampling:
    """A retry round (attempt > 0) samples at retry_temperature at least: a greedy answer that did
    not parse would only come back the same."""
    if not attempt:
        return sampling
    return sampling.model_copy(update={"temperature": max(sampling.temperature, retry_temperature)})


# Magpie's difficulty levels (unitag.py); PiKa's prompts are tagged on the same scale.
LEVELS = ["very easy", "easy", "medium", "hard", "very hard"]


def find_json(text: str) -> dict | None:
    """The first JSON object in a model's answer (models wrap it in prose or code fences). Raw
    newlines and tabs inside its strings are taken as they are: models write them, and some
    servers' grammars allow them, though strict JSON wants them escaped."""
    decoder = json.JSONDecoder(strict=False)
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text[start:])
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None
