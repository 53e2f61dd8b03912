"""`tag`: Magpie's LLM-judge tags (unitag.py): difficulty, input quality, task category.

Each task renders a prompt from templates/tag/, asks the judge (greedy, as in the paper), and
parses a JSON object out of the answer. In `complete` mode the prompt is prefilled with "{" and
generation stops at "}", as the authors do; in `chat` mode the JSON is found in the reply. An
answer that does not parse or holds a value outside the allowed labels is asked again with a new
seed, up to `parse_retries` rounds; rows still unparsed keep None in that task's columns and are
counted (`parse_failed:<task>`), so a downstream filter drops them with a reason.

Columns, as in the released Magpie datasets:
- difficulty: intent, knowledge, difficulty, difficulty_generator
- quality: input_quality, quality_explanation, quality_generator
- classification: task_category, other_task_category, task_category_generator
(The authors' concatenation step whitelists "Other", so their released "Others" rows became null;
we keep "Others".)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...llm.base import Request, RequestFailed
from ...templating import render
from ..base import Batch, MapStage, Row
from ..common import LEVELS, LLMParams, find_json

QUALITY = ["very poor", "poor", "average", "good", "excellent"]
CATEGORIES = {
    "Information seeking": "users ask for facts or explanations on a topic",
    "Reasoning": "logical thinking, problem solving, or working through complex ideas",
    "Planning": "help making plans or strategies for activities and projects",
    "Editing": "editing, rephrasing, proofreading or other changes to a text",
    "Coding & Debugging": "writing, reviewing or fixing code",
    "Math": "math problems, concepts or calculations",
    "Role playing": "the assistant plays a character or persona",
    "Data analysis": "interpreting data, statistics or analytical tasks",
    "Creative writing": "stories, poems or other creative texts",
    "Advice seeking": "personal or professional advice on a situation",
    "Brainstorming": "generating ideas or exploring possibilities",
    "Others": "anything that fits none of the categories above",
}
TASKS = ("difficulty", "quality", "classification")


def _parse(task: str, data: dict) -> dict | None:
    """The row's new columns from a parsed answer, or None when a value is not an allowed label."""
    if task == "difficulty":
        level = str(data.get("difficulty", "")).strip().lower()
        if level not in LEVELS:
            return None
        return {"intent": data.get("intent"), "knowledge": data.get("knowledge"), "difficulty": level}
    if task == "quality":
        quality = str(data.get("input_quality", "")).strip().lower()
        if quality not in QUALITY:
            return None
        return {"input_quality": quality, "quality_explanation": data.get("explanation")}
    primary = str(data.get("primary_tag", "")).strip()
    by_lower = {name.lower(): name for name in CATEGORIES}
    if primary.lower() not in by_lower:
        return None
    others = data.get("other_tags") or []
    others = [by_lower[o.strip().lower()] for o in others if isinstance(o, str) and o.strip().lower() in by_lower]
    primary = by_lower[primary.lower()]
    return {"task_category": primary, "other_task_category": [o for o in others if o != primary]}


EMPTY = {
    "difficulty": {"intent": None, "knowledge": None, "difficulty": None},
    "quality": {"input_quality": None, "quality_explanation": None},
    "classification": {"task_category": None, "other_task_category": None},
}
GENERATOR_COLUMN = {
    "difficulty": "difficulty_generator",
    "quality": "quality_generator",
    "classification": "task_category_generator",
}


class TagParams(LLMParams):
    tasks: list[Literal["difficulty", "quality", "classification"]] = Field(default_factory=lambda: list(TASKS))
    input: str = Field("instruction", description="column holding the user query")
    mode: Literal["chat", "complete"] = Field("chat", description="complete: prefill '{' and stop at '}' (raw prompt)")
    template_dir: str = Field("tag", description="folder of the task templates (difficulty.jinja, ...)")
    parse_retries: int = Field(2, ge=0, description="extra rounds for answers that do not parse")
    retry_temperature: float = Field(0.7, ge=0, description="temperature of retry rounds (the first is greedy)")
    temperature: float = 0.0
    max_tokens: int = 1024


class Tag(MapStage):
    """Tag instructions with an LLM judge: difficulty, input quality, task category (Magpie)."""

    Params = TagParams
    params: TagParams

    @classmethod
    def reads(cls, params: TagParams) -> list[str]:
        return [params.input]

    @classmethod
    def writes(cls, params: TagParams) -> list[str]:
        return [c for t in params.tasks for c in (*EMPTY[t], GENERATOR_COLUMN[t])]

    def _prompt(self, task: str, text: str) -> str:
        return render(f"{self.params.template_dir}/{task}.jinja", self.ctx.base_dir, input=text, categories=CATEGORIES)

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        rows = [dict(r) for r in batch.rows]
        for task in p.tasks:
            pending = list(range(len(rows)))
            tags: dict[int, dict] = {}
            for attempt in range(p.parse_retries + 1):
                if not pending:
                    break
                sampling = p.sampling().model_copy(
                    update={
                        "temperature": p.temperature if attempt == 0 else max(p.temperature, p.retry_temperature),
                        "stop": tuple(p.stop) + (("}",) if p.mode == "complete" else ()),
                    }
                )
                requests = []
                for i in pending:
                    prompt = self._prompt(task, str(rows[i][p.input]))
                    seed = self.ctx.seed_for(task, prompt, attempt)
                    if p.mode == "complete":
                        requests.append(Request(sampling, seed, prompt=prompt + "\n{"))
                    else:
                        requests.append(Request(sampling, seed, messages=(("user", prompt),)))
                results = await (llm.complete if p.mode == "complete" else llm.chat)(requests)
                still = []
                for i, result in zip(pending, results, strict=True):
                    parsed = None
                    if not isinstance(result, RequestFailed):
                        text = result[0].text
                        data = find_json("{" + text + "}" if p.mode == "complete" else text)
                        parsed = _parse(task, data) if data is not None else None
                    if parsed is None:
                        still.append(i)
                    else:
                        tags[i] = parsed
                if attempt > 0:
                    batch.count(f"parse_retried:{task}", len(pending))
                pending = still
            if pending:
                batch.count(f"parse_failed:{task}", len(pending))
            for i, row in enumerate(rows):
                row.update(tags.get(i, EMPTY[task]))
                row[GENERATOR_COLUMN[task]] = llm.model_id
        return rows
