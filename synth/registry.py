"""The registries: what a pipeline file's names (`stage:`, a backend's `type:`, `run: executor:`)
stand for.

Built-in entries are named here by import path, one line each, and imported only when used (so
`synth --help` stays fast and a stage's heavy dependencies load only if a pipeline uses it).
Third-party packages add their own through the entry-point groups `synth.stages`,
`synth.backends` and `synth.executors` the same way (docs/design.md: "Extending synth"); a
built-in name wins over a plugin's.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from .errors import SynthError, closest

BUILTIN_STAGES: dict[str, str] = {
    "load": "synth.stages.generate.load:Load",
    "template": "synth.stages.generate.template:Template",
    "generate": "synth.stages.generate.generate:Generate",
    "magpie": "synth.stages.magpie.magpie:Magpie",
    "respond": "synth.stages.generate.respond:Respond",
    "tag": "synth.stages.magpie.tag:Tag",
    "sort": "synth.stages.select.sort:Sort",
    "limit": "synth.stages.select.subset:Limit",
    "sample": "synth.stages.select.subset:Sample",
    "dedup": "synth.stages.dedup.dedup:Dedup",
    "filter": "synth.stages.select.filter:Filter",
    "length": "synth.stages.select.filter:Length",
    "regex": "synth.stages.select.filter:Regex",
    "language": "synth.stages.select.language:Language",
    "benchbuilder": "synth.stages.select.benchbuilder:BenchBuilder",
    "reward": "synth.stages.reward.reward:Reward",
    "followup": "synth.stages.magpie.followup:Followup",
    "judge": "synth.stages.judge.judge:Judge",
    "pairs": "synth.stages.preference.pairs:Pairs",
    "aggregate": "synth.stages.aggregate.aggregate:Aggregate",
    "relabel": "synth.stages.augment.relabel:Relabel",
    "rationale": "synth.stages.augment.rationale:Rationale",
    "decontaminate": "synth.stages.dedup.decontaminate:Decontaminate",
    "directions": "synth.stages.directions.directions:Directions",
    "direction_select": "synth.stages.directions.direction_select:DirectionSelect",
    "personas": "synth.stages.pika.personas:Personas",
    "pika": "synth.stages.pika.pika:Pika",
    "best": "synth.stages.preference.best:Best",
    "skills": "synth.stages.skillmix.skills:Skills",
    "skills_from_data": "synth.stages.skillmix.skills_from_data:SkillsFromData",
    "skill_draw": "synth.stages.skillmix.draw:SkillDraw",
    "skillmix": "synth.stages.skillmix.skillmix:Skillmix",
}

# A backend type names its settings class (pure data, importable without the engine's extra);
# the class names the backend that runs it in its `backend` attribute (synth/llm/specs.py).
BUILTIN_BACKENDS: dict[str, str] = {
    "local": "synth.llm.specs:LocalSpec",
    "openai": "synth.llm.specs:OpenAISpec",
    "vllm": "synth.llm.specs:VLLMSpec",
}

BUILTIN_EXECUTORS: dict[str, str] = {
    "local": "synth.executors.local:LocalExecutor",
    "ray": "synth.executors.ray:RayExecutor",
}

_BUILTIN = {"stages": BUILTIN_STAGES, "backends": BUILTIN_BACKENDS, "executors": BUILTIN_EXECUTORS}
_WHAT = {"stages": "stage", "backends": "backend type", "executors": "executor"}
_LISTED_BY = {"stages": " (run 'synth stages' to list them)"}


@cache
def paths(kind: str) -> dict[str, str]:
    """Name -> "module:attribute" for one registry: the built-in ones, then the entry points'."""
    found = dict(_BUILTIN[kind])
    for ep in entry_points(group=f"synth.{kind}"):
        found.setdefault(ep.name, ep.value)
    return found


def names(kind: str) -> list[str]:
    return sorted(paths(kind))


def unknown(kind: str, name: str) -> str:
    """The message for a name no registry entry has, with the closest one and the choices."""
    options = names(kind)
    hint = closest(name, options)
    suggestion = f"; did you mean '{hint}'?" if hint else ""
    listing = _LISTED_BY.get(kind) or f" (one of: {', '.join(options)})"
    return f"unknown {_WHAT[kind]} '{name}'{suggestion}{listing}"


def load(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@cache
def get(kind: str, name: str) -> Any:
    path = paths(kind).get(name)
    if path is None:
        raise SynthError(unknown(kind, name))
    try:
        return load(path)
    except (ImportError, AttributeError) as exc:
        raise SynthError(f"{_WHAT[kind]} '{name}' is registered as {path}, which cannot be loaded: {exc}") from exc


def stage_paths() -> dict[str, str]:
    return paths("stages")


def stage_names() -> list[str]:
    return names("stages")


@cache
def get_stage(name: str):
    """The stage class for a `stage:` name, checked against the contract (synth/stages/base.py)."""
    from .stages.base import check_stage_class

    cls = get("stages", name)
    cls.key = name
    check_stage_class(cls)
    return cls


def get_backend_spec(type_name: str):
    """The settings class for a backend `type:`."""
    return get("backends", type_name)


def get_executor(name: str):
    return get("executors", name)
