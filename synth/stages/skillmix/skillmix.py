"""`skillmix`: Instruct-SkillMix's data generation (Kaur et al. 2024; princeton-pli/Instruct-SkillMix,
src/data_generation/1_generate_data.py): for each drawn set of skills and query type, one
five-turn conversation with the generator.

0. write a query a person might plausibly ask that needs all the skills, of the given query type,
   and a good-length, concrete, non-generic answer (three worked examples in the prompt);
1. rewrite the whole answer in case it was cut off (asked every time, as the authors do);
2. play the person who asked: list the answer's strengths and weaknesses;
3. refine the query and the answer;
4. rewrite the refined answer in case it was cut off.

Every turn is a request of its own carrying the whole conversation so far, so every turn is cached
and a resumed run repeats none (but an empty answer, which the cache never keeps: `empty_turn`).
The final pair is read from turns 3 and 4, the draft pair (kept in `draft_instruction` and
`draft_response`) from turns 0 and 1 (synth/stages/skillmix/parse.py). A row whose pair does not
parse runs the whole conversation again with new seeds, `parse_retries` more times, then fails with
its reason and the raw turns. The refine turn asks for `### Instruction:` and `### Response:`
headers, which the authors' parser expected but their prompt did not ask for.

Base models without a chat template (the embedded default) get a stand-in (`mode: complete`):
each turn is a short few-shot completion prompt (templates/skillmix/*_few_shot.jinja) that sees
the earlier turns' parsed results, and the stage appends the header the model continues after. It
shows the flow; it is not the method.

`shirkers` (the paper's ablation, off by default): that share of rows, chosen by a seeded coin per
row, has its final response replaced by a poor one, lazy and generic (`shirker_kind: junk`) or one
paragraph long (`brevity`), marked in the `shirker` column and in provenance
(synth/stages/skillmix/shirkers.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import jinja2
from pydantic import Field

from ...llm.base import Request, RequestFailed, Sampling
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import LLMParams, add_provenance, auto_mode, check_template, retry_sampling, template_sha
from .parse import PREFILL, draft_pair, final_pair, instruction_of, skill_names, turn_variables
from .shirkers import shirk

TURNS = ("generate", "rewrite", "critique", "refine", "rewrite_refined")
# complete mode: where generation stops (what the stage appends to each prompt: skillmix_parse.PREFILL)
PAIR_STOPS = ("\n### Task Type", "\n### Skills", "\n### Review", "\nExample", "\n\n\n")
TEXT_STOPS = ("\n###", "\nExample", "\n\n\n")
VARIABLES = {"skills", "skills_str", "num_skills", "query_type", "query_definition", "query", "row"}
VARIABLES |= {"draft_instruction", "draft_response", "critique", "refined_instruction", "refined_response"}
VARIABLES |= {"instruction", "outputs"}


class SkillmixParams(LLMParams):
    skills: str = Field("skills", description="column with the example's skills (a list, or names joined by ', ')")
    query_type: str = Field("query_type", description="column with the query type's name")
    query_definition: str = Field("query_definition", description="column with the query type's definition")
    mode: Literal["auto", "chat", "complete"] = Field(
        "auto",
        description="chat: the five-turn conversation; complete: few-shot stand-in for base models; auto: "
        "chat when the model has a chat template (servers always)",
    )
    template_dir: str = Field("skillmix", description="folder of the turn templates (generate.jinja, ...)")
    parse_retries: int = Field(2, ge=0, description="extra conversations, with new seeds, for rows that do not parse")
    retry_temperature: float = Field(0.7, ge=0, description="lowest temperature of retry conversations")
    shirkers: float = Field(0.0, ge=0, le=1, description="share of rows given a poor response (the paper's ablation)")
    shirker_kind: Literal["junk", "brevity"] = Field("junk", description="junk: lazy, generic; brevity: one paragraph")
    temperature: float = 1.0  # the authors send none to OpenAI: its default, 1.0
    max_tokens: int = 4096


class Skillmix(MapStage):
    """Generate an instruction and response exhibiting the row's skills (Instruct-SkillMix)."""

    Params = SkillmixParams
    params: SkillmixParams

    @classmethod
    def reads(cls, params: SkillmixParams) -> list[str]:
        return [params.skills, params.query_type]

    @classmethod
    def writes(cls, params: SkillmixParams) -> list[str]:
        return ["instruction", "response", "generator", "draft_instruction", "draft_response", "shirker"]

    @classmethod
    def check(cls, params: SkillmixParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        problems = []
        if params.n != 1:
            problems.append((("n",), "one conversation per row: leave n at 1 (draw more rows with skill_draw's count)"))
        modes = ("chat", "complete") if params.mode == "auto" else (params.mode,)
        names = [f"{t}{'_few_shot' if m == 'complete' else ''}" for m in modes for t in TURNS]
        if params.shirkers:
            names += [f"{params.shirker_kind}{'_few_shot' if m == 'complete' else ''}" for m in modes]
        for name in names:
            found = check_template(f"{params.template_dir}/{name}.jinja", "template_dir", env, VARIABLES)
            if found:
                problems += found
                break
        return problems

    async def open(self) -> None:
        p = self.params
        llm = self.ctx.llm(p.backend)
        self.mode = p.mode if p.mode != "auto" else await asyncio.to_thread(auto_mode, llm.backend, self.ctx.label)
        suffix = "_few_shot" if self.mode == "complete" else ""
        self.templates = [f"{p.template_dir}/{t}{suffix}.jinja" for t in TURNS]
        self.shirker_template = f"{p.template_dir}/{p.shirker_kind}{suffix}.jinja"

    # ---- one request ----
    def turn_sampling(self, turn: int, attempt: int) -> Sampling:
        p = self.params
        sampling = retry_sampling(p.sampling(), attempt, p.retry_temperature)
        if self.mode == "complete":
            sampling = sampling.model_copy(update={"stop": (*p.stop, *(PAIR_STOPS if turn in (0, 3) else TEXT_STOPS))})
        return sampling

    def _variables(self, row: Row, outputs: list[str]) -> dict:
        p = self.params
        columns = (p.skills, p.query_type, p.query_definition)
        return turn_variables(row, outputs, columns, complete=self.mode == "complete")

    def make_request(
        self, template: str, variables: dict, messages: list, seed: int, sampling: Sampling, prefill: str
    ) -> Request:
        text = render(template, self.ctx.base_dir, **variables)
        if self.mode == "complete":
            return Request(sampling, seed, prompt=text.rstrip("\n") + "\n" + prefill)
        return Request(sampling, seed, messages=(*messages, ("user", text)))

    # ---- a batch ----
    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        call = llm.complete if self.mode == "complete" else llm.chat
        rows = list(batch.rows)
        keys = [json.dumps([r.get("id"), skill_names(r.get(p.skills)), r.get(p.query_type)], default=str) for r in rows]
        done: dict[int, dict] = {}
        failed: dict[int, tuple[str, str]] = {}
        pending = list(range(len(rows)))
        for attempt in range(p.parse_retries + 1):
            if not pending:
                break
            if attempt == 1:
                batch.count("parse_retried", len(pending))
            outputs: dict[int, list[str]] = {i: [] for i in pending}
            messages: dict[int, list] = {i: [] for i in pending}
            seeds: dict[int, list[int]] = {i: [] for i in pending}
            alive = list(pending)
            for turn in range(len(TURNS)):
                requests, sent = [], []
                sampling = self.turn_sampling(turn, attempt)
                for i in alive:
                    seed = self.ctx.seed_for(keys[i], attempt, turn)
                    try:
                        variables = self._variables(rows[i], outputs[i])
                        template = self.templates[turn]
                        requests.append(
                            self.make_request(template, variables, messages[i], seed, sampling, PREFILL[turn])
                        )
                    except jinja2.TemplateError as exc:
                        failed[i] = ("template_error", str(exc))
                        continue
                    sent.append(i)
                    seeds[i].append(seed)
                results = await call(requests) if requests else []
                alive = []
                for i, request, result in zip(sent, requests, results, strict=True):
                    if isinstance(result, RequestFailed):
                        failed[i] = (f"request_failed:{result.reason}", result.detail)
                        continue
                    text = result[0].text
                    if result[0].finish_reason == "length":
                        batch.count("truncated")
                    if not text.strip():  # kept in the conversation, but never cached (asked again on resume)
                        batch.count("empty_turn")
                    full = PREFILL[turn] + " " + text.lstrip() if self.mode == "complete" else text
                    outputs[i].append(full)
                    messages[i] = [*(request.messages or ()), ("assistant", text)]
                    if self.mode == "complete" and turn == 0 and instruction_of(full) is None:
                        failed[i] = ("parse_failed:draft", repr(outputs[i])[:4000])
                        continue
                    alive.append(i)
            for i in alive:
                instruction, response = final_pair(outputs[i])
                if instruction and response:
                    draft = draft_pair(outputs[i])
                    done[i] = {"instruction": instruction, "response": response, "draft": draft, "seeds": seeds[i]}
                    done[i]["attempt"] = attempt
                    failed.pop(i, None)
                else:
                    what = "instruction" if not instruction else "response"
                    failed[i] = (f"parse_failed:{what}", repr(outputs[i])[:4000])
            # a request that failed (a prompt too long) fails again: only unparsed rows go round again
            pending = [i for i in pending if i not in done and failed.get(i, ("",))[0].startswith("parse_failed")]
        if p.shirkers:
            await shirk(self, rows, done, keys, batch)
        return self._rows(rows, done, failed, batch, llm.model_id)

    def _rows(self, rows: list[Row], done: dict[int, dict], failed: dict, batch: Batch, model: str) -> list[Row]:
        p = self.params
        record = {
            "stage": "skillmix",
            "model": model,
            "mode": self.mode,
            "templates": {t: template_sha(t, self.ctx.base_dir) for t in self.templates},
            **p.sampling().model_dump(mode="json"),
        }
        if p.shirkers:
            record["shirkers"] = {"fraction": p.shirkers, "kind": p.shirker_kind, "template": self.shirker_template}
        out = []
        for i, row in enumerate(rows):
            if i not in done:
                reason, detail = failed.get(i, ("parse_failed", ""))
                batch.fail(row, reason, detail)
                continue
            d = done[i]
            if d.get("shirker_failed"):
                batch.fail(row, "shirker_failed", d["shirker_failed"])
                continue
            columns = {
                "instruction": d["instruction"],
                "response": d["response"],
                "generator": model,
                "draft_instruction": d["draft"][0],
                "draft_response": d["draft"][1],
                "shirker": d.get("shirker"),
            }
            out.append(
                add_provenance(
                    {**row, **columns}, self.ctx.label, {**record, "seeds": d["seeds"], "attempt": d["attempt"]}
                )
            )
        return out
