"""`benchbuilder`: Arena-Hard BenchBuilder's prompt-quality filter (lmarena/arena-hard-auto).

An LLM judge marks which of 7 criteria a prompt meets (specificity, domain knowledge, complexity,
problem-solving, creativity, technical accuracy, real-world application) and answers with a list
such as `[1, 3, 7]`; the score is how many (0-7). Prompts are grouped into topic clusters over their
embeddings (synth.stages.select.topics). A prompt is kept iff its score >= `prompt_threshold` and its
cluster's mean score >= `cluster_threshold` (the published defaults 5 and 3; the second, stricter
stage used 6 and 6).

Columns: `criteria` (the list), `criteria_score`, `cluster` (topic id, largest first) and
`cluster_mean_score`. The judge is greedy with max_tokens 32, as in the authors' config. In `chat`
mode the criteria are the system prompt and the user turn is the prompt; `complete` mode (base
models) uses a few-shot prompt, prefilled with "[" and stopped at "]". Answers that do not parse are
asked again (`parse_retries`) and then fail the row (`unparsed_criteria`, with the raw answer).
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from ...llm.base import Request, RequestFailed
from ...records import text_of
from ...shards import Rows
from ...templating import render
from ..base import Batch, GlobalStage
from ..common import LLMParams

ANSWER = re.compile(r"\[\s*((?:[1-7]\s*,\s*)*[1-7])?\s*\]")


def parse_criteria(text: str) -> list[int] | None:
    """[1, 3, 7] -> [1, 3, 7]; the first list of criteria numbers in an answer, or None."""
    match = ANSWER.search(text)
    if match is None:
        return None
    return sorted({int(x) for x in re.findall(r"[1-7]", match.group(1) or "")})


class BenchBuilderParams(LLMParams):
    column: str = Field("instruction", description="column holding the prompt to judge")
    mode: Literal["chat", "complete"] = Field("chat", description="complete: few-shot prompt for base models")
    template_dir: str = Field("benchbuilder", description="folder of system.jinja and few_shot.jinja")
    prompt_threshold: int = Field(5, ge=0, le=7, description="keep prompts with at least this many criteria")
    cluster_threshold: float = Field(3.0, ge=0, le=7, description="... in clusters whose mean score is at least this")
    min_topic_size: int = Field(32, ge=2, description="smallest topic cluster (BenchBuilder: 32)")
    model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers model for the topic clusters")
    keep: Literal["filter", "all"] = Field("filter", description="all: only write the columns")
    parse_retries: int = Field(1, ge=0, description="extra rounds for answers that do not parse")
    temperature: float = 0.0
    max_tokens: int = 32


class BenchBuilder(GlobalStage):
    """Score prompts on BenchBuilder's 7 criteria with an LLM judge; keep hard prompts in good topics."""

    Params = BenchBuilderParams
    params: BenchBuilderParams

    @classmethod
    def reads(cls, params: BenchBuilderParams) -> list[str]:
        return [params.column]

    @classmethod
    def writes(cls, params: BenchBuilderParams) -> list[str]:
        return ["criteria", "criteria_score", "cluster", "cluster_mean_score"]

    def _request(self, text: str, attempt: int) -> Request:
        p = self.params
        temperature = p.temperature if attempt == 0 else max(p.temperature, 0.7)
        if p.mode == "complete":
            prompt = render(f"{p.template_dir}/few_shot.jinja", self.ctx.base_dir, prompt=text).rstrip() + " ["
            sampling = p.sampling().model_copy(update={"temperature": temperature, "stop": (*p.stop, "]", "\n")})
            return Request(sampling, self.ctx.seed_for(prompt, attempt), prompt=prompt)
        system = render(f"{p.template_dir}/system.jinja", self.ctx.base_dir, allow_empty=True).strip()
        sampling = p.sampling().model_copy(update={"temperature": temperature})
        return Request(sampling, self.ctx.seed_for(text, attempt), messages=(("system", system), ("user", text)))

    async def _judge(self, texts: list[str], batch: Batch) -> tuple[list[list[int] | None], list[str]]:
        p = self.params
        llm = self.ctx.llm(p.backend)
        found: list[list[int] | None] = [None] * len(texts)
        raw = [""] * len(texts)
        pending = list(range(len(texts)))
        for attempt in range(p.parse_retries + 1):
            if not pending:
                break
            call = llm.complete if p.mode == "complete" else llm.chat
            results = await call([self._request(texts[i], attempt) for i in pending])
            still = []
            for i, result in zip(pending, results, strict=True):
                if isinstance(result, RequestFailed):
                    raw[i] = f"{result.reason}: {result.detail}"
                else:
                    raw[i] = ("[" if p.mode == "complete" else "") + result[0].text
                    found[i] = parse_criteria(raw[i] + ("]" if p.mode == "complete" else ""))
                if found[i] is None:
                    still.append(i)
            if attempt:
                batch.count("parse_retried", len(pending))
            pending = still
        return found, raw

    async def process_all(self, rows: Rows, batch: Batch) -> pa.Table:
        from ...similarity import embed
        from .topics import topic_clusters

        table = rows.table()  # the whole input in memory: a few thousand instructions at most
        p = self.params
        texts = [text_of(v) for v in table.column(p.column).to_pylist()]
        found, raw = await self._judge(texts, batch)
        parsed = np.asarray([f is not None for f in found], dtype=bool)
        for i in np.flatnonzero(~parsed).tolist():
            batch.fail(table.slice(i, 1).to_pylist()[0], "unparsed_criteria", raw[i][:500])
        table = table.filter(pa.array(parsed))
        texts = [t for t, ok in zip(texts, parsed.tolist(), strict=True) if ok]
        criteria = [f for f in found if f is not None]
        scores = np.asarray([len(c) for c in criteria], dtype=np.int64)
        vectors = await asyncio.to_thread(embed.sentence_encoder(p.model), texts)
        clusters = await asyncio.to_thread(topic_clusters, vectors, p.min_topic_size)
        means = {int(c): float(scores[clusters == c].mean()) for c in np.unique(clusters)}
        mean_per_row = np.asarray([means[int(c)] for c in clusters], dtype=np.float64)
        table = table.append_column("criteria", pa.array(criteria, pa.list_(pa.int64())))
        table = table.append_column("criteria_score", pa.array(scores, pa.int64()))
        table = table.append_column("cluster", pa.array(clusters, pa.int64()))
        table = table.append_column("cluster_mean_score", pa.array(np.round(mean_per_row, 4), pa.float64()))
        if p.keep == "all":
            return table
        low_score = scores < p.prompt_threshold
        low_cluster = mean_per_row < p.cluster_threshold
        rows = table.to_pylist() if (low_score | low_cluster).any() else []
        for i in np.flatnonzero(low_score | low_cluster).tolist():
            if low_score[i]:
                batch.drop(rows[i], f"criteria_score_below_{p.prompt_threshold}", f"criteria {criteria[i]}")
            else:
                detail = f"cluster {clusters[i]} mean {mean_per_row[i]:.2f}"
                batch.drop(rows[i], f"cluster_mean_below_{p.cluster_threshold:g}", detail)
        return table.filter(pa.array(~(low_score | low_cluster)))
