"""The shirkers ablation of Instruct-SkillMix (Kaur et al. 2024; the authors' 2_generate_junk_data.py):
a share of the finished rows gets a poor response in place of its good one, to measure what
low-quality answers in a small SFT set cost. The authors replaced the first 20% of 1,000 rows; here a
seeded coin per row picks them, so the share holds in every shard.

- junk: the generator answers a request for a lazy, unhelpful, generic, vague and padded answer to
  the row's final instruction (templates/skillmix/junk.jinja);
- brevity: the generator answers the instruction followed by "Please limit your response to one
  paragraph." (templates/skillmix/brevity.jinja).
"""

from __future__ import annotations

import jinja2

from ...llm.base import RequestFailed
from ...seeds import derive_seed
from ..base import Batch, Row, Stage
from .parse import PREFILL, clean


def is_shirker(stage: Stage, key: str) -> bool:
    coin = derive_seed(stage.ctx.seed, stage.ctx.label, "shirker", key) % 10**6 / 10**6
    return coin < stage.params.shirkers


async def shirk(stage: Stage, rows: list[Row], done: dict[int, dict], keys: list[str], batch: Batch) -> None:
    """Replace the response of the chosen rows in `done` (marking them `shirker`); a row whose poor
    answer cannot be had is marked `shirker_failed` and fails."""
    p = stage.params
    llm = stage.ctx.llm(p.backend)
    chosen, requests = [], []
    sampling = stage.turn_sampling(1, 0)
    for i in sorted(done):
        if not is_shirker(stage, keys[i]):
            continue
        variables = {**rows[i], "row": rows[i], "instruction": done[i]["instruction"]}
        seed = stage.ctx.seed_for(keys[i], "shirker")
        try:
            requests.append(stage.make_request(stage.shirker_template, variables, [], seed, sampling, PREFILL[1]))
        except jinja2.TemplateError as exc:
            done[i]["shirker_failed"] = f"template_error: {exc}"
            continue
        chosen.append(i)
    results = await (llm.complete if stage.mode == "complete" else llm.chat)(requests) if requests else []
    for i, result in zip(chosen, results, strict=True):
        if isinstance(result, RequestFailed):
            done[i]["shirker_failed"] = f"request_failed:{result.reason}: {result.detail}"
            continue
        text = clean(result[0].text)
        if not text:
            if not result[0].text.strip():
                batch.count("empty_turn")  # never cached: asked again on resume
            done[i]["shirker_failed"] = f"empty answer: {result[0].text!r}"
            continue
        done[i]["response"] = text
        done[i]["shirker"] = p.shirker_kind
    batch.count("shirkers", sum(1 for i in chosen if done[i].get("shirker")))
