"""`aggregate`: one answer synthesized from several candidate responses (Mixture-of-Agents).

MoA (Wang et al. 2024, togethercomputer/MoA) has several proposer models answer a prompt, then
an aggregator model answer it again with those answers shown as numbered references in its
system message (after the conversation's own system text, when there is one), told to weigh
them critically and write one refined answer rather than copy them. With more than two layers
the proposers first answer again, each seeing the previous layer's answers as references, and
the aggregator reads the last layer. Self-MoA (Li et al. 2025) keeps the aggregator but draws
the candidates as n samples of the one best model, which the paper finds better than mixing
models; its Self-MoA-Seq variant, for more candidates than the aggregator's context holds,
aggregates a window of them, then slides on, carrying the running answer as a reference.

Here the first layer is the input: `candidates:` names one column holding a list (Self-MoA:
`respond` with n) or several columns (MoA: one `respond` per backend). `layers: 3` or more
re-runs the backends listed in `proposers:` with references; `window:` (and `stride:`) turn on
the sliding window, which every call with more references than `window` uses. Proposers and the
aggregator sample at temperature 0.7 with up to 2048 tokens, the MoA defaults. Chat models get
the references in their system message (templates/aggregate/system.jinja); a base model without
a chat template (the embedded default) gets a few-shot prompt (aggregate/few_shot.jinja), which
stops where the model would go on numbering the references instead of answering.

An answer that is empty, or copies the references block instead of synthesizing (two or more
references whole, or a line of the prompt's own wording), is asked again with a new seed
(`retries` rounds, counted as `aggregate_retried`), then fails the row with its reason and the
raw answers. Columns: the answer (`output`), the candidates (`candidates_output`),
`aggregator_model`, and provenance with the template, sampling, seeds, layers and windows."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import jinja2

from ...llm.base import Request, RequestFailed, Sampling
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import add_provenance, auto_mode, retry_sampling, template_sha
from .params import AggregateParams, check_params
from .refs import candidate_columns, candidates_of, degenerate, prompt_lines, windows, with_references


@dataclass
class Chain:
    """One agent's way through one row's references in one layer: a call per window."""

    pos: int
    slot: int
    backend: str
    references: list[str]
    plan: list[tuple[int, int]]
    step: int = 0
    attempt: int = 0
    running: str | None = None
    seeds: list[int] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    failure: tuple[str, str] | None = None

    def current(self) -> list[str]:
        start, end = self.plan[self.step]
        carried = [self.running] if self.step and self.running is not None else []
        return carried + self.references[start:end]


class Aggregate(MapStage):
    """Synthesize one answer from several candidates with an aggregator model (MoA, Self-MoA)."""

    Params = AggregateParams
    params: AggregateParams

    @classmethod
    def reads(cls, params: AggregateParams) -> list[str]:
        return [params.input, *candidate_columns(params.candidates)]

    @classmethod
    def writes(cls, params: AggregateParams) -> list[str]:
        kept = [params.candidates_output] if params.candidates_output else []
        return [params.output, *kept, "aggregator_model"]

    @classmethod
    def backend_names(cls, params: AggregateParams) -> list[str]:
        return list(dict.fromkeys([params.backend, *params.proposers]))

    @classmethod
    def check(cls, params: AggregateParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        return check_params(params, env)

    # ---- running ----
    async def open(self) -> None:
        p = self.params
        self.check_again()
        self.modes = {}
        for name in self.backend_names(p):
            backend = self.ctx.llm(name).backend
            self.modes[name] = (
                p.mode if p.mode != "auto" else await asyncio.to_thread(auto_mode, backend, self.ctx.label)
            )
        self.sampling = p.sampling()
        self.proposer_sampling = self.sampling.model_copy(
            update={"temperature": p.proposer_temperature, "max_tokens": p.proposer_max_tokens}
        )

    def _template(self, backend: str) -> str:
        p = self.params
        return p.system_template if self.modes[backend] == "chat" else p.completion_template

    def _request(self, row: Row, chain: Chain, layer: int, references: list[str]) -> tuple[Request, list[str]]:
        """The request of a chain's current call, and the lines of its prompt an answer must not copy."""
        p = self.params
        final = layer == p.layers
        sampling: Sampling = self.sampling if final else self.proposer_sampling
        sampling = retry_sampling(sampling, chain.attempt, p.retry_temperature)
        instruction = str(row[p.input])
        system = row.get("system") or p.system
        seed = self.ctx.seed_for(instruction, layer, chain.slot, chain.step, chain.attempt)
        variables = {**row, "row": row, "instruction": instruction, "references": references, "system": system}
        text = render(self._template(chain.backend), self.ctx.base_dir, **variables)
        fixed = prompt_lines(text, *references, instruction, system)
        if self.modes[chain.backend] == "complete":  # a base model may go on numbering the references
            sampling = sampling.model_copy(update={"stop": (*sampling.stop, f"\n{len(references) + 1}.")})
            return Request(sampling, seed, prompt=text), fixed
        messages = (("system", with_references(system, text.strip())), ("user", instruction))
        return Request(sampling, seed, messages=messages), fixed

    async def _run(self, rows: dict[int, Row], chains: list[Chain], layer: int, batch: Batch) -> None:
        """Every chain through its windows, a round of requests at a time (all rows and agents of
        the round together), retrying empty or copied answers with new seeds."""
        active = list(chains)
        while active:
            sent: dict[str, list[tuple[Chain, Request, list[str], list[str]]]] = {}
            for chain in active:
                refs = chain.current()
                try:
                    request, fixed = self._request(rows[chain.pos], chain, layer, refs)
                except jinja2.TemplateError as exc:
                    chain.failure = ("template_error", str(exc))
                    continue
                sent.setdefault(chain.backend, []).append((chain, request, refs, fixed))
            results = await asyncio.gather(*(self._call(name, jobs) for name, jobs in sent.items()))
            active = []
            for jobs, answers in zip(sent.values(), results, strict=True):
                for (chain, request, refs, fixed), result in zip(jobs, answers, strict=True):
                    if self._advance(chain, request, refs, fixed, result, layer, batch):
                        active.append(chain)

    async def _call(self, backend: str, jobs: list) -> list:
        llm = self.ctx.llm(backend)
        call = llm.complete if self.modes[backend] == "complete" else llm.chat
        return await call([job[1] for job in jobs])

    def _advance(
        self, chain: Chain, request: Request, refs: list[str], fixed: list[str], result, layer: int, batch: Batch
    ) -> bool:
        """Takes one answer into its chain; whether the chain has another call to make."""
        where = f"layer {layer}, window {chain.step + 1}/{len(chain.plan)}"
        if isinstance(result, RequestFailed):
            hint = (
                " (set window: to aggregate fewer candidates at a time)" if result.reason == "prompt_too_long" else ""
            )
            chain.failure = (f"request_failed:{result.reason}", f"{where}: {result.detail}{hint}")
            return False
        answer = result[0].text.strip()
        if result[0].finish_reason == "length":
            batch.count("truncated")
        problem = degenerate(answer, refs, fixed)
        if problem:
            chain.raw.append(answer)
            if chain.attempt >= self.params.retries:
                chain.failure = (problem, f"{where}: raw answers: {chain.raw!r}"[:4000])
                return False
            chain.attempt += 1
            batch.count("aggregate_retried")
            return True
        chain.running, chain.attempt, chain.raw = answer, 0, []
        chain.seeds.append(request.seed)
        chain.step += 1
        return chain.step < len(chain.plan)

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        columns = candidate_columns(p.candidates)
        rows: dict[int, Row] = {}
        refs: dict[int, list[str]] = {}
        given: dict[int, list[str]] = {}
        for pos, row in enumerate(batch.rows):
            found, skipped = candidates_of(row, columns)
            if skipped:
                batch.count("empty_candidates", skipped)
            if row.get(p.input) is None:
                batch.fail(row, "no_instruction", f"column '{p.input}' is empty")
            elif not found:
                batch.fail(
                    row,
                    "no_candidates",
                    f"columns {columns} hold no candidate: {[row.get(c) for c in columns]!r}"[:2000],
                )
            else:
                rows[pos], refs[pos], given[pos] = row, found, found
        final: dict[int, Chain] = {}
        windows_used: dict[int, list[tuple[int, int]]] = {}
        for layer in range(2, p.layers + 1):
            agents = [p.backend] if layer == p.layers else p.proposers
            chains = [
                Chain(pos, slot, name, refs[pos], windows(len(refs[pos]), p.window, p.stride))
                for pos in rows
                for slot, name in enumerate(agents)
            ]
            await self._run(rows, chains, layer, batch)
            for chain in chains:
                if chain.failure and chain.pos in rows:
                    batch.fail(rows.pop(chain.pos), *chain.failure)
            for pos in rows:
                mine = [c for c in chains if c.pos == pos]
                refs[pos] = [c.running for c in mine]  # type: ignore[misc]
                windows_used[pos] = mine[0].plan
                final[pos] = mine[0]
        model = self.ctx.llm(p.backend).model_id
        template = self._template(p.backend)
        record = {
            "stage": "aggregate",
            "model": model,
            "mode": self.modes[p.backend],
            "template": template,
            "template_sha": template_sha(template, self.ctx.base_dir),
            **self.sampling.model_dump(mode="json"),
            "layers": p.layers,
            "proposers": [self.ctx.llm(name).model_id for name in p.proposers],
            "proposer_temperature": p.proposer_temperature if p.proposers else None,
            "proposer_max_tokens": p.proposer_max_tokens if p.proposers else None,
            "window": p.window,
            "stride": (p.stride or p.window - 1) if p.window else None,
        }
        out = []
        for pos, row in rows.items():
            chain = final[pos]
            columns_out = {p.output: chain.running, "aggregator_model": model}
            if p.candidates_output:
                columns_out[p.candidates_output] = given[pos]
            extra = {
                "candidates": len(given[pos]),
                "windows": [list(w) for w in windows_used[pos]],
                "seeds": chain.seeds,
            }
            out.append(add_provenance({**row, **columns_out}, self.ctx.label, {**record, **extra}))
        return out
