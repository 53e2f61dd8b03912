"""Stage and backend registries: the YAML `stage:` name is the key.

Built-in stages are named here by import path, one line each, and imported only when used (so
`synth --help` stays fast and a stage's heavy dependencies load only if a pipeline uses it).
Third-party packages add stages through the `synth.stages` entry-point group the same way.
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from importlib.metadata import entry_points

from .errors import SynthError
from .stages.base import Stage

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


@cache
def stage_paths() -> dict[str, str]:
    paths = dict(BUILTIN_STAGES)
    for ep in entry_points(group="synth.stages"):
        paths.setdefault(ep.name, ep.value)
    return paths


def stage_names() -> list[str]:
    return sorted(stage_paths())


def closest(name: str, options: list[str]) -> str | None:
    found = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return found[0] if found else None


@cache
def get_stage(name: str) -> type[Stage]:
    path = stage_paths().get(name)
    if path is None:
        hint = closest(name, stage_names())
        suggestion = f"; did you mean '{hint}'?" if hint else ""
        raise SynthError(f"unknown stage '{name}'{suggestion} (run 'synth stages' to list them)")
    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    cls.key = name
    return cls
