"""`decontaminate`: drop rows that copy a benchmark's prompts, naming the benchmark, row and method.

Synthetic SFT and preference data is judged on AlpacaEval, Arena-Hard, MT-Bench and WildBench; a
dataset carrying their prompts, even lightly edited, inflates those scores. The GPT-3 and Llama 2
reports screened training data by long shared n-grams (13 words); Yang et al. ("Rethinking
Benchmark and Contamination for Language Models with Rephrased Samples", 2023) showed that
rephrased copies slip past n-gram and exact checks, and caught them by embedding similarity to the
benchmark (with an LLM to confirm the top candidates). This stage combines normalized exact match,
13-gram overlap (with a containment rule for prompts shorter than 13 words), near copies (typos,
moved words, an added "Please answer:") and embedding similarity at a threshold of its own; the
algorithms live in `synth.similarity.decontam`. Off by default, method `llm` asks a judge backend, for
each row nothing else matched, whether it rewords one of its `judge_k` closest benchmark prompts
(by embedding), as the "LLM decontaminator" does (templates/decontaminate/rephrase.jinja, greedy,
yes/no); an answer that is neither is counted (`llm_unparsed`) and the row kept.

Each reference set is a file or dataset folder given as `path` or `name=path` (the name defaults
to the file's stem), and its prompt column is found by name (prompt, instruction, question, turns,
conversation_input, messages, text, input) unless `reference_column` names it. A removed row is
dropped as `contaminated:<method>` with a JSON detail: {"set", "row", "text", "method", "score"}.
The stage reads the reference sets and builds their index once, then streams batch by batch.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from ...errors import InputError
from ..base import Batch, CheckEnv, MapStage, Row, StageParams

Method = Literal["exact", "ngram", "near_copy", "embedding", "llm"]
REPORT_NAME = "decontamination.json"


def parse_reference(spec: str) -> tuple[str, str]:
    """`name=path` or `path` (named after the file's stem, or the folder's name)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, path
    return Path(spec.rstrip("/")).stem, spec


class DecontaminateParams(StageParams):
    references: list[str] = Field(
        default_factory=list,
        description="benchmark prompt files or dataset folders, each `path` or `name=path` (paths are relative to "
        "the pipeline file); synth ships none",
        json_schema_extra={"reads": "file"},
    )
    column: str = Field("instruction", description="text column to check (a messages list: each user turn)")
    reference_column: str | None = Field(
        None, description="prompt column of the reference sets (default: the first of prompt, instruction, "
        "question, turns, conversation_input, messages, text, input)"
    )  # fmt: skip
    methods: list[Method] = Field(
        ["exact", "ngram", "near_copy", "embedding"], min_length=1, description="matching methods, tried in this order"
    )
    ngram: int = Field(13, ge=3, description="ngram: words in a shared run (13, as the GPT-3 and Llama 2 reports)")
    min_words: int = Field(
        4, ge=1, description="ngram: a reference prompt shorter than `ngram` words but this long matches a row "
        "containing all its words in a row; shorter ones only match by the other methods"
    )  # fmt: skip
    threshold: float = Field(0.85, gt=0, le=1, description="embedding: cosine with a reference prompt (MiniLM)")
    candidate_threshold: float = Field(0.7, gt=0, le=1, description="embedding: static-model cosine of candidates")
    k: int = Field(5, ge=1, description="embedding: reference candidates looked at per row")
    model: str = Field("all-MiniLM-L6-v2", description="embedding: a sentence-transformers model folder")
    cascade: bool = Field(True, description="embedding: a static model proposes candidates, `model` confirms them")
    judge_backend: str | None = Field(
        None, description="llm: the backend that judges rephrasings (add `llm` to methods)"
    )
    judge_k: int = Field(2, ge=1, le=20, description="llm: closest benchmark prompts (by embedding) judged per row")
    judge_template: str = Field("decontaminate/rephrase.jinja", description="llm: the few-shot yes/no prompt")
    judge_floor: float = Field(
        0.5, ge=0, le=1, description="llm: least (candidate-model) cosine of a benchmark prompt worth asking about"
    )


def reference_specs(params: DecontaminateParams) -> list[tuple[str, str]]:
    return [parse_reference(s) for s in params.references]


class Decontaminate(MapStage):
    """Drop rows copying benchmark prompts (exact, 13-gram, near copy, embedding); report per set."""

    Params = DecontaminateParams
    params: DecontaminateParams

    @classmethod
    def reads(cls, params: DecontaminateParams) -> list[str]:
        return [params.column]

    @classmethod
    def backend_names(cls, params: DecontaminateParams) -> list[str]:
        return [params.judge_backend] if params.judge_backend and "llm" in params.methods else []

    @classmethod
    def check(cls, params: DecontaminateParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        from ...inputs import read_problem

        if not params.references:
            return [
                (
                    ("references",),
                    "no reference sets: give the benchmark prompt files, e.g. `with: {decontaminate: "
                    "{references: [alpacaeval=alpaca_eval.json, mt_bench=question.jsonl]}}`",
                )
            ]
        problems: list[tuple[tuple, str]] = []
        if "llm" in params.methods and not params.judge_backend:
            problems.append(
                (("judge_backend",), "method llm needs a judge_backend: the name of a backend under backends:")
            )
        if params.judge_backend and "llm" not in params.methods:
            problems.append((("methods",), "judge_backend is set but methods lack llm: add it to use the judge"))
        if "llm" in params.methods:
            from ..common import check_template

            problems += check_template(params.judge_template, "judge_template", env, {"prompt", "reference"})
        seen: set[str] = set()
        for i, (name, value) in enumerate(reference_specs(params)):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else env.base_dir / path
            if not path.exists():
                problems.append((("references", i), f"{path} does not exist (paths are relative to the pipeline file)"))
            elif message := read_problem(path, env.base_dir):
                problems.append((("references", i), message))
            if name in seen:
                problems.append((("references", i), f"two reference sets are named '{name}': name one `other={value}`"))
            seen.add(name)
        return problems

    def _load(self):
        from ...readers import read_checked
        from ...similarity import decontam

        p, refs = self.params, []
        for name, value in reference_specs(p):
            path = self.ctx.resolve(value)
            if not path.exists():
                raise InputError(f"reference set '{name}': {path} does not exist; fix the path in `references:`")
            rows = read_checked(path, self.ctx.base_dir, who=f"reference set '{name}'")
            try:
                refs.append(decontam.ReferenceSet.from_rows(name, rows, p.reference_column, str(path)))
            except ValueError as exc:
                raise InputError(f"{path}: {exc} with reference_column") from None
        return refs

    def _build(self):
        from ...similarity import decontam, embed

        p = self.params
        refs = self._load()
        encode = fast = None
        if {"embedding", "near_copy"} & set(p.methods):
            encode = embed.sentence_encoder(p.model)
            fast = embed.static_encoder(p.model) if p.cascade else None
        if "near_copy" in p.methods:
            from ...similarity.duplicates import require_datasketch

            require_datasketch()
        return decontam.Index(
            refs, p.methods, p.ngram, p.min_words, p.threshold, p.candidate_threshold, p.k, encode, fast
        )

    async def open(self) -> None:
        self.index = await asyncio.to_thread(self._build)

    def _check(self, rows: list[Row]):
        from ...similarity.decontam import segments

        owner: list[int] = []
        texts: list[str] = []
        for r, row in enumerate(rows):
            for text in segments(row.get(self.params.column)):
                owner.append(r)
                texts.append(text)
        found: dict[int, object] = {}
        for r, match in zip(owner, self.index.match(texts), strict=True):
            if match is not None and r not in found:
                found[r] = match
        return found

    async def _judge(self, batch: Batch, found: dict) -> None:
        """Method llm: for rows nothing else matched, ask the judge about their closest benchmark prompts."""
        from ...llm.base import Request, RequestFailed, Sampling
        from ...similarity.decontam import segments
        from ...templating import render

        p = self.params
        asks: list[tuple[int, str, int, float]] = []  # (row, text, reference item, cosine)
        rows = [r for r in range(len(batch.rows)) if r not in found]
        texts = [(r, t) for r in rows for t in segments(batch.rows[r].get(p.column))]
        cands = await asyncio.to_thread(self.index.llm_candidates, [t for _, t in texts], p.judge_k, p.judge_floor)
        for (r, text), items in zip(texts, cands, strict=True):
            asks += [(r, text, i, s) for i, s in items]
        if not asks:
            return
        sampling = Sampling(temperature=0.0, max_tokens=3, stop=("\n",))
        requests = [
            Request(
                sampling,
                self.ctx.seed_for(text, self.index.text(i)),
                prompt=render(p.judge_template, self.ctx.base_dir, prompt=text, reference=self.index.text(i)),
            )
            for _, text, i, _ in asks
        ]
        results = await self.ctx.llm(p.judge_backend).complete(requests)  # type: ignore[arg-type]
        batch.count("llm_judged", len(requests))
        for (r, _, i, score), result in zip(asks, results, strict=True):
            if r in found or isinstance(result, RequestFailed):
                continue
            answer = result[0].text.strip().lower()
            if answer.startswith("yes"):
                found[r] = self.index._match(i, "llm", score)
            elif not answer.startswith("no"):
                batch.count("llm_unparsed")

    async def process(self, batch: Batch) -> list[Row]:
        found = await asyncio.to_thread(self._check, batch.rows)
        if "llm" in self.params.methods:
            await self._judge(batch, found)
        kept = []
        for r, row in enumerate(batch.rows):
            match = found.get(r)
            if match is None:
                kept.append(row)
            else:
                batch.drop(row, f"contaminated:{match.method}", match.detail())
        return kept

    def references_info(self) -> dict:
        index = getattr(self, "index", None)
        return {r.name: r.info() for r in index.refs} if index is not None else {}

    async def close(self) -> None:
        """Write the report into the stage's folder when the runner says where it is."""
        folder = getattr(self.ctx, "stage_dir", None)
        if folder is None or getattr(self, "index", None) is None:
            return
        from ...similarity import decontam

        report = decontam.stage_report(Path(folder), self.references_info())
        report["params"] = json.loads(self.params.model_dump_json(exclude={"name"}))
        decontam.write_report(report, Path(folder) / ".synth" / REPORT_NAME)
