"""`magpie`: instructions extracted from an aligned model by sending only the pre-query part of
its chat template (Magpie, Xu et al. 2024; magpie-align/magpie, exp/gen_ins.py).

The model sees `<header of a user turn>` and nothing else, so what it writes is a user query drawn
from its own alignment data. Each row is one sample with its own seed (the paper draws n=200 per
prompt from one request; independent seeded requests give the same distribution, cache and resume
per row, and vLLM's prefix caching shares the prompt's prefill all the same).

Three ways to get the pre-query template, in order:
- `pre_query_template:` given verbatim (with `stop:` for the end-of-turn markers);
- `family:` a built-in entry of the paper's table (llama-3, qwen2.5, gemma-2, phi-3, ...);
- extracted from the backend's chat template (`mode: auto`, the default).
A base model with no chat template (the embedded default) cannot be Magpie-prompted: `auto` then
switches to `few_shot`, a documented stand-in that shows the model a few user requests and lets it
write one more. It demonstrates the flow; it is not the paper's method.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from ...errors import SynthError
from ...llm.base import Request, RequestFailed
from ...resources import resource_dir
from ...templating import render
from ..base import Batch, CheckEnv, Row, SourceStage
from ..common import LLMParams, check_template, model_chat_template
from .text import sanitize_instruction

CONTROL_TASKS = ("math", "code", "translation")


class MagpieParams(LLMParams):
    num_rows: int = Field(ge=1, description="instructions to generate (rows attempted)")
    mode: Literal["auto", "pre_query", "few_shot"] = Field(
        "auto", description="auto: pre-query template when the model has a chat template, else few_shot"
    )
    family: str | None = Field(None, description="built-in template family, e.g. llama-3, qwen2.5, gemma-2")
    pre_query_template: str | None = Field(None, description="the exact pre-query text (overrides family)")
    early_stop: bool | None = Field(
        None, description="stop at the first newline (single-line queries); default: the family's setting, else on"
    )
    sanitize: bool | None = Field(None, description="clean leaked answers from instructions (default: per family)")
    control_task: Literal["math", "code", "translation"] | None = Field(
        None, description="system prompt steering the topic (the paper's --control_tasks)"
    )
    few_shot_template: str = "magpie/few_shot.jinja"
    few_shot_examples: str = Field(
        "magpie/seed_requests.txt",
        description="file of example requests, one a line",
        json_schema_extra={"reads": "file"},
    )
    few_shot_k: int = Field(4, ge=1)
    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0


class Magpie(SourceStage):
    """Generate user instructions from an aligned model's pre-query template (Magpie)."""

    Params = MagpieParams
    params: MagpieParams

    @classmethod
    def writes(cls, params: MagpieParams) -> list[str]:
        return [
            "id",
            "instruction",
            "raw_instruction",
            "instruction_sanitize_class_num",
            "pre_query_template",
            "gen_input_configs",
        ]

    @classmethod
    def output_columns(cls, params: MagpieParams, env: CheckEnv) -> set[str] | None:
        return set(cls.writes(params))

    @classmethod
    def check(cls, params: MagpieParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        problems = check_template(params.few_shot_template, "few_shot_template", env, {"examples"})
        if params.family:
            from ...llm import prequery

            if params.family not in prequery.family_names():
                from ...errors import closest

                hint = closest(params.family, prequery.family_names())
                problems.append(
                    (
                        ("family",),
                        f"unknown family '{params.family}'"
                        + (f"; did you mean '{hint}'?" if hint else f" (known: {', '.join(prequery.family_names())})"),
                    )
                )
        if params.mode == "few_shot" and (params.family or params.pre_query_template):
            problems.append((("mode",), "few_shot mode uses no pre-query template: remove family/pre_query_template"))
        return problems

    # ---- rows ----
    def total_rows(self, limit: int | None) -> int | None:
        return self.params.num_rows if limit is None else min(limit, self.params.num_rows)

    def iter_rows(self, limit: int | None) -> Iterator[Row]:
        total = self.params.num_rows if limit is None else min(limit, self.params.num_rows)
        for index in range(total):
            yield {"id": index}

    async def open(self) -> None:
        p = self.params
        self.family = ""
        self.stops: list[str] = list(p.stop)
        self.early_stop = True if p.early_stop is None else p.early_stop
        self.sanitize = bool(p.sanitize)
        self.pre_query: str | None = None
        self.extracted = None
        self.temperature, self.top_p = p.temperature, p.top_p
        if p.mode == "few_shot":
            return self._open_few_shot()
        if p.pre_query_template is not None:
            self.pre_query = p.pre_query_template
        elif p.family:
            from ...llm import prequery

            entry = prequery.get_family(p.family)
            self.family = p.family
            self.pre_query = entry.pre_query_template
            self.stops += list(entry.stop) + list(entry.assistant_words)
            self.early_stop = entry.early_stop if p.early_stop is None else p.early_stop
            self.sanitize = entry.sanitize if p.sanitize is None else p.sanitize
            # The authors' per-model sampling (e.g. Llama-3.1-8B at 0.8), unless the file sets it.
            if "temperature" not in p.model_fields_set:
                self.temperature = entry.instruction_temperature
            if "top_p" not in p.model_fields_set:
                self.top_p = entry.instruction_top_p
        else:
            template = model_chat_template(self.ctx.llm(p.backend).backend, self.ctx.label)
            if template is None:
                if p.mode == "pre_query":
                    raise SynthError(
                        f"stage '{self.ctx.label}': the model has no chat template to extract a pre-query "
                        "template from: set family: or pre_query_template:, or use mode: few_shot"
                    )
                return self._open_few_shot()
            from ...llm import prequery

            extracted = prequery.extract(template.source, bos_token=template.bos_token, eos_token=template.eos_token)
            self.extracted = extracted
            self.pre_query = extracted.pre_query_template
            self.stops += list(extracted.stop)
        if p.control_task:
            from ...llm import prequery

            self.pre_query = prequery.with_system_prompt(
                self.pre_query, self._control_prompt(), family=self.family, extracted=self.extracted
            )

    def _open_few_shot(self) -> None:
        path = self.ctx.resolve(self.params.few_shot_examples)
        if not path.exists():
            path = resource_dir("data") / self.params.few_shot_examples
        self.examples = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.stops += ["\n"]
        self.early_stop = True

    def _control_prompt(self) -> str:
        return render(f"magpie/control_{self.params.control_task}.jinja", self.ctx.base_dir)

    def _prompt(self, row: Row, seed: int) -> str:
        if self.pre_query is not None:
            return self.pre_query
        rng = random.Random(seed)
        examples = rng.sample(self.examples, min(self.params.few_shot_k, len(self.examples)))
        return render(self.params.few_shot_template, self.ctx.base_dir, examples=examples)

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        stops = list(dict.fromkeys(self.stops + (["\n"] if self.early_stop else [])))
        sampling = p.sampling().model_copy(
            update={"stop": tuple(stops), "temperature": self.temperature, "top_p": self.top_p}
        )
        requests = []
        for row in batch.rows:
            seed = self.ctx.seed_for("instruction", row["id"])
            requests.append(Request(sampling, seed, prompt=self._prompt(row, seed)))
        results = await llm.complete(requests)
        out = []
        for row, request, result in zip(batch.rows, requests, results, strict=True):
            if isinstance(result, RequestFailed):
                batch.fail(row, f"request_failed:{result.reason}", result.detail)
                continue
            raw = result[0].text.strip()
            instruction, fix = sanitize_instruction(raw, self.family) if self.sanitize else (raw, 0)
            if not instruction:
                batch.drop(row, "empty_instruction", repr(raw))
                continue
            out.append(
                {
                    "id": row["id"],
                    "instruction": instruction,
                    "raw_instruction": raw,
                    "instruction_sanitize_class_num": fix,
                    "pre_query_template": self.pre_query
                    if self.pre_query is not None
                    else f"few_shot:{p.few_shot_template}",
                    "gen_input_configs": {
                        "temperature": self.temperature,
                        "top_p": self.top_p,
                        "input_generator": llm.model_id,
                        "seed": request.seed,
                        "pre_query_template": self.pre_query,
                        "extract_input": "few_shot" if self.pre_query is None else "pre_query",
                        "control_task": p.control_task,
                    },
                }
            )
        return out
