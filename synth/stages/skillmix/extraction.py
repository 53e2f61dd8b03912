"""Pieces the skill-extraction stages share (`skills`, `skills_from_data`): reading skill names
and query types out of a model's answer, merging near-duplicate names, the few-shot/chat switch.

Merging: names are counted, ordered by count (most named first), and near duplicates found by
sentence-embedding similarity with the embedding dedup of synth/similarity/neighbors.py (the shipped
all-MiniLM-L6-v2 by default, FAISS). Each group keeps its most named member; the others become its
`aliases` and their counts add to its `count`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from ...skillfiles import MAX_SKILL_WORDS, QueryType, parse_queries, snake_case
from ..common import LLMParams

_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+\s*[.)]|#+)\s*")
_NUMBERS = re.compile(r"\d{3,}")  # ids and dates, not skills
_DESCRIBED = re.compile(r"\s+(?:-|\u2013|\u2014)\s+|:\s")


class ExtractParams(LLMParams):
    """Fields of both extraction stages."""

    mode: Literal["auto", "chat", "complete"] = Field(
        "auto",
        description="chat: ask through the chat template; complete: a few-shot list for base models; auto: chat "
        "when the model has a chat template (servers always)",
    )
    template_dir: str = Field("skills", description="folder of the extraction templates")
    merge_threshold: float | None = Field(
        0.9, gt=0, le=1, description="cosine similarity at which two names are merged as one skill (null: exact only)"
    )
    embed_model: str = Field(
        "all-MiniLM-L6-v2", description="sentence-transformers model (folder) for merging; default: the shipped MiniLM"
    )
    min_count: int = Field(1, ge=1, description="keep only skills (and query types) named at least this many times")
    parse_retries: int = Field(2, ge=0, description="extra rounds, with new seeds, for answers that list nothing")
    retry_temperature: float = Field(0.7, ge=0, description="lowest temperature of retry rounds")
    temperature: float = 1.0
    max_tokens: int = 1024


def open_tail(prompt: str, marker: str = "\n") -> str:
    """The part of a few-shot prompt the model's completion continues (after the last `marker`)."""
    return prompt[prompt.rfind(marker) + len(marker) :] if marker in prompt else prompt


def parse_skill_list(text: str, limit: int | None = None) -> list[str]:
    """Skill names from an answer: one a line, bullets and numbers stripped, a description after
    ': ' or ' - ' dropped, snake_case; lines too long to be a name, or holding a number of three
    digits or more (ids, dates), are skipped."""
    names: list[str] = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip().strip("*`\"'").strip()
        line = _DESCRIBED.split(line, maxsplit=1)[0].strip().strip("*`\"'").rstrip(":").strip()
        name = snake_case(line)
        if not name or len(name) < 3 or name.count("_") >= MAX_SKILL_WORDS or len(name) > 80 or _NUMBERS.search(name):
            continue
        if name not in names:
            names.append(name)
        if limit and len(names) >= limit:
            break
    return names


def parse_query_list(text: str) -> list[QueryType]:
    return [q for q in parse_queries(text) if 2 < len(q.name) <= 60 and q.definition]


def merge(counts: dict[str, int], threshold: float | None, model: str) -> list[tuple[str, int, list[str]]]:
    """(name, count, aliases) per merged name, most named first (ties: first named first)."""
    first = {name: i for i, name in enumerate(counts)}
    order = sorted(counts, key=lambda n: (-counts[n], first[n]))
    groups: dict[int, list[int]] = {i: [i] for i in range(len(order))}
    if threshold is not None and len(order) > 1:
        from ...similarity.embed import sentence_encoder
        from ...similarity.neighbors import dedup_embedding

        texts = [n.replace("_", " ").replace("-", " ") for n in order]
        found = dedup_embedding(texts, sentence_encoder(model), threshold=threshold, k=min(100, len(order) - 1))
        groups = {}
        for cluster in found.clusters():
            groups[cluster[0]] = cluster
        grouped = {i for g in groups.values() for i in g}
        groups.update({i: [i] for i in range(len(order)) if i not in grouped})
    out = [(order[r], sum(counts[order[j]] for j in g), [order[j] for j in g if j != r]) for r, g in groups.items()]
    return sorted(out, key=lambda t: (-t[1], first[t[0]]))
