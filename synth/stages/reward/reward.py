"""`reward`: score each (instruction, response), as Magpie's unitag.py does, or with a density ratio
(CDR), optionally shaped against reference responses (PAR).

Magpie scores with sfairXC/FsfairX-LLaMA3-RM-v0.1 through a transformers text-classification
pipeline: the conversation rendered with the reward model's own chat template, the raw first logit
kept unnormalized as `instruct_reward` (the 300K recipe keeps rows with > -10). Method `rm` does the
same with any sequence-classification reward model (FsfairX, Skywork-Reward, ...), either in this
process (`model:` a local folder, nothing downloaded; a tokenizer without a chat template gets
"User: ...\\n\\nAssistant: ...") or served by vLLM (`backend:` an openai backend: vLLM's pooling API,
see synth/llm/pooling.py; with `chat_template` set on the backend the conversations are rendered
here and sent many per request, otherwise one conversation per request, rendered by the server).
Method `cdr` scores with two language models instead (reward_cdr.py): `strong` and `weak` may be
any backend that returns token log-probabilities (local llama.cpp, openai: vLLM's prompt_logprobs
or a server's echo logprobs, the in-process vllm engine), each with a chat template (a server's
backend needs `chat_template:`). A reward model behind `backend:` must be an openai backend whose
vLLM server runs it: local and in-process vllm backends load generation models only.

A list of responses (`respond` with n > 1) gets a list of scores, the input of preference pairs.
`shaping:` turns the raw rewards into bounded or centered ones (reward_shaping.py); shapers that
compare with reference responses sample `refs_per_prompt` of them per prompt from
`reference_backend` and score them with the same reward. Local scoring cuts conversations longer
than `max_length` tokens from the left and counts them (`reward_truncated`); vLLM cuts them too.

Scores from vLLM's pooling API and the local model are not in the request cache (they are
deterministic; a resumed run recomputes the shards it had not finished); router answers, reference
samples and CDR log-probabilities go through the cache like every LLM request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...llm.base import Request, RequestFailed, Sampling
from ...templating import render
from ..base import Batch, CheckEnv, MapStage, Row
from ..common import add_provenance, answer_value, template_sha
from .cdr import domain_system, few_shot_turn, load_exemplars, route
from .local_model import load_reward_model, render_conversation, score_texts
from .params import BACKEND_FIELDS, RewardParams, check_params, exemplar_path, output_column, written_columns
from .scorer import Score, Scorer
from .shaping import NEEDS_REFERENCES, PER_BATCH, BatchStats, length_penalty, shape

if TYPE_CHECKING:
    from ...llm.client import LLM

__all__ = ["Reward", "RewardParams", "load_reward_model", "render_conversation", "score_texts"]


@dataclass
class Pending:
    row: Row
    instruction: str
    responses: list[str]
    many: bool
    refs: list[str]
    system: str | None = None
    domain: str | None = None
    route_answer: str = ""
    user: str | None = None  # the scored user turn when it is not the instruction (few_shot)


class Reward(MapStage):
    """Score (instruction, response) pairs: a reward model (local or vLLM) or CDR, optionally PAR-shaped."""

    Params = RewardParams
    params: RewardParams

    @classmethod
    def reads(cls, params: RewardParams) -> list[str]:
        return [params.input, params.response] + ([params.references] if params.references else [])

    @classmethod
    def writes(cls, params: RewardParams) -> list[str]:
        return written_columns(params)

    @classmethod
    def check(cls, params: RewardParams, env: CheckEnv) -> list[tuple[tuple, str]]:
        return check_params(params, env)

    @classmethod
    def backend_names(cls, params: RewardParams) -> list[str]:
        """Every backend this stage uses, for the runner to hand it (and the fingerprint to cover)."""
        return list(dict.fromkeys(n for n in (getattr(params, f) for f in BACKEND_FIELDS) if n))

    def _llm(self, field: str) -> LLM:
        return self.ctx.llm(getattr(self.params, field))

    async def open(self) -> None:
        p = self.params
        self.scorer = Scorer(p, self._llm, self.ctx.label)
        await self.scorer.open()
        self._router_system = (
            render(p.router_template, self.ctx.base_dir, allow_empty=True).strip() if p.router else None
        )
        self._exemplars = load_exemplars(exemplar_path(p, self.ctx.base_dir)) if p.few_shot else None
        for field in ("router", "reference_backend"):
            if getattr(p, field):
                self._llm(field)

    async def close(self) -> None:
        await self.scorer.close()

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        pending = self._collect(batch)
        if p.router and pending:  # first: a row the router fails costs no reference samples
            pending = await self._route(batch, pending)
        if p.reference_backend and pending:
            pending = await self._sample_references(batch, pending)
        if self._exemplars is not None:
            for x in pending:
                if not (p.vanilla_domain and x.domain == "CHAT"):
                    seed = self.ctx.seed_for("exemplar", x.instruction)
                    x.user = few_shot_turn(self._exemplars, x.domain or "CHAT", x.instruction, seed)
        items = [(x.system, x.user or x.instruction, text) for x in pending for text in (*x.responses, *x.refs)]
        scores = await self.scorer.score(batch, items) if items else []
        out, position, kept = [], 0, []
        for x in pending:
            mine = scores[position : position + len(x.responses) + len(x.refs)]
            position += len(mine)
            failed = next((s for s in mine if isinstance(s, RequestFailed)), None)
            if failed is not None:
                batch.fail(x.row, f"score_failed:{failed.reason}", failed.detail)
            else:
                kept.append((x, mine))
        penalized = {id(x): [self._penalized(s) for s in mine] for x, mine in kept}
        stats = None
        if p.shaping in PER_BATCH and kept:
            stats = BatchStats.of([v for x, _ in kept for v in penalized[id(x)][: len(x.responses)]])
        for x, mine in kept:
            out.append(self._row(x, mine, penalized[id(x)], stats))
        return out

    def _collect(self, batch: Batch) -> list[Pending]:
        p = self.params
        pending = []
        for row in batch.rows:
            value: Any = row.get(p.response)
            many = isinstance(value, list)
            responses = [str(v) for v in value] if many else [] if value is None else [str(value)]
            if not responses:
                batch.fail(row, "no_response", f"{p.response} is empty")
                continue
            refs: list[str] = []
            if p.references:
                given = row.get(p.references)
                refs = [str(v) for v in given] if isinstance(given, list) else [] if given is None else [str(given)]
                if len(refs) < (p.refs_per_prompt if p.shaping != "lsc" else 1):
                    batch.fail(row, "too_few_references", f"{p.references} holds {len(refs)}: {refs!r}"[:2000])
                    continue
            pending.append(Pending(row, str(row.get(p.input) or ""), responses, many, refs))
        return pending

    def _reference_request(self, instruction: str) -> Request:
        p = self.params
        sampling = Sampling(
            temperature=p.reference_temperature,
            top_p=p.reference_top_p,
            top_k=p.reference_top_k,
            max_tokens=p.reference_max_tokens,
            n=p.refs_per_prompt,
        )
        return Request(sampling, self.ctx.seed_for("reference", instruction), messages=(("user", instruction),))

    async def _sample_references(self, batch: Batch, pending: list[Pending]) -> list[Pending]:
        n = self.params.refs_per_prompt
        results = await self._llm("reference_backend").chat([self._reference_request(x.instruction) for x in pending])
        kept = []
        for x, result in zip(pending, results, strict=True):
            value = answer_value(batch, x.row, result, n, empty_reason="empty_reference")
            if value is not None:
                x.refs = [value] if isinstance(value, str) else list(value)
                kept.append(x)
        return kept

    async def _route(self, batch: Batch, pending: list[Pending]) -> list[Pending]:
        p = self.params
        routed = await route(
            self._llm("router"), [x.instruction for x in pending], self._router_system, self.ctx.seed_for,
            p.router_max_tokens,
        )  # fmt: skip
        kept = []
        for x, r in zip(pending, routed, strict=True):
            if isinstance(r, RequestFailed):
                batch.fail(x.row, f"router_failed:{r.reason}", r.detail)
                continue
            if r.fallback:
                batch.count("router_fallback_chat")
            x.domain, x.route_answer = r.domain, r.answer
            x.system = domain_system(r.domain, p.vanilla_domain, p.safety_prompt, p.chat_prompt, self.ctx.base_dir)
            kept.append(x)
        return kept

    def _penalized(self, score: Score) -> float:
        value = round(score.value, 6)
        if self.params.length_penalty and score.tokens is not None:
            value -= length_penalty(score.tokens, self.params.length_penalty, self.params.length_limit)
        return value

    def _row(self, x: Pending, scores: list[Score], penalized: list[float], stats: BatchStats | None) -> Row:
        p = self.params
        n = len(x.responses)
        m = min(p.refs_per_prompt, len(x.refs))
        refs = penalized[n:]

        def col(values: list):
            return values if x.many else values[0]

        shaped = [round(shape(r, refs, p.shaping, k=p.par_k, m=m, stats=stats), 6) for r in penalized[:n]]
        columns: dict[str, Any] = {output_column(p): col(shaped), "reward_model": self.scorer.model_name}
        for name, index in p.heads.items():
            columns[f"score_{name}"] = col([round(s.outputs[index], 6) for s in scores[:n]])
        if p.method == "cdr":
            columns["strong_logprob"] = col([round(s.strong, 6) for s in scores[:n]])
            columns["weak_logprob"] = col([round(s.weak, 6) for s in scores[:n]])
            if p.router:
                columns["reward_domain"] = x.domain
        if p.shaping != "raw":
            columns["raw_reward"] = col([round(s.value, 6) for s in scores[:n]])
            columns["reward_shaping"] = {
                "shaping": p.shaping,
                "output": output_column(p),
                "k": p.par_k if p.shaping == "par" else None,
                "M": (len(x.refs) if p.shaping == "lsc" else m) if p.shaping in NEEDS_REFERENCES else None,
                "length_penalty": p.length_penalty,
                "length_limit": p.length_limit,
                "batch_stats": vars(stats) if stats is not None else None,
            }
        if p.shaping in NEEDS_REFERENCES:
            columns["ref_rewards"] = [round(s.value, 6) for s in scores[n:]]
            if not p.references:
                columns["ref_responses"] = x.refs
        if p.length_penalty:
            columns["response_tokens"] = col([s.tokens for s in scores[:n]])
            if p.shaping in NEEDS_REFERENCES:
                columns["ref_tokens"] = [s.tokens for s in scores[n:]]
        return add_provenance({**x.row, **columns}, self.ctx.label, self._provenance(x))

    def _provenance(self, x: Pending) -> dict:
        p, base = self.params, self.ctx.base_dir
        record: dict[str, Any] = {"method": p.method, "reward_model": self.scorer.model_name, "shaping": p.shaping}
        if p.method == "rm" and (p.head or p.heads):
            record |= {"head": p.head, "heads": dict(p.heads)}
        if p.method == "cdr":
            record["format"] = p.format
            if p.format == "strong":
                record |= {"eos": self.scorer.eos, "max_prompt_tokens": p.max_prompt_tokens}
                record["max_response_tokens"] = p.max_response_tokens
            if x.user is not None:
                record["few_shot_seed"] = self.ctx.seed_for("exemplar", x.instruction)
        if p.reference_backend:
            request = self._reference_request(x.instruction)
            record["reference"] = {
                "model": self._llm("reference_backend").model_id,
                "sampling": request.sampling.model_dump(mode="json"),
                "seed": request.seed,
            }
        if p.router:
            prompt = None if x.system is None else p.chat_prompt if x.domain == "CHAT" else p.safety_prompt
            record["router"] = {
                "model": self._llm("router").model_id,
                "template": p.router_template,
                "template_sha": template_sha(p.router_template, base),
                "seed": self.ctx.seed_for("router", x.instruction),
                "answer": x.route_answer,
                "domain_prompt": prompt,
                "domain_prompt_sha": template_sha(prompt, base) if prompt else None,
            }
        return record
