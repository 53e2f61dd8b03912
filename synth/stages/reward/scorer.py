"""How `reward` computes a raw reward: a local reward model, one served by vLLM, or CDR.

One object per stage, opened once: it loads the local model, or makes the pooling client for the
served one (and reads the backend's chat template, when it has one, to render and batch
conversations here), or reads the strong and weak backends' chat templates for CDR. `score` takes
(system, instruction, response) triples (the system prompt is CDR's domain prompt, else None) and
returns one Score or RequestFailed per triple, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import SynthError
from ...llm.base import RequestFailed
from ..base import Batch
from ..common import model_chat_template
from .cdr import AuthorsFormat, cdr_scores
from .formatting import Tokenizer
from .local_model import count_tokens, load_reward_model, render_conversation, score_texts
from .params import RewardParams

if TYPE_CHECKING:
    from ...llm.client import LLM

Item = tuple[str | None, str, str]  # (system prompt, instruction, response)


@dataclass
class Score:
    value: float
    tokens: int | None = None  # response tokens, when a length penalty needs them
    strong: float | None = None  # CDR: the two log-probability sums
    weak: float | None = None
    outputs: list[float] | None = None  # every output of a multi-objective reward model


class Scorer:
    def __init__(self, params: RewardParams, llm: Callable[[str], LLM], label: str):
        self.params, self._llm, self.label = params, llm, label
        self._pool = self._template = None
        self._cdr: list = []
        self._authors: AuthorsFormat | None = None

    async def open(self) -> None:
        p = self.params
        if p.method == "cdr":
            for field in ("strong", "weak"):
                llm = self._llm(field)
                self._cdr.append((llm, await asyncio.to_thread(model_chat_template, llm.backend, self.label, True)))
            if p.format == "strong":
                self._authors = await self._authors_format()
        elif p.model:
            outputs = (await asyncio.to_thread(load_reward_model, p.model))[1].config.num_labels
            wanted = max([p.head, *p.heads.values()])
            if wanted >= outputs:
                raise SynthError(
                    f"stage '{self.label}': the reward model {p.model} gives {outputs} output(s), so it has no "
                    f"output {wanted}: set head:/heads: to indexes below {outputs}"
                )
        else:
            from ...llm.pooling import PoolingClient

            spec = getattr(self._llm("backend").backend, "spec", None)
            if getattr(spec, "type", None) != "openai":
                raise SynthError(
                    f"stage '{self.label}': backend '{p.backend}' is not an openai backend; a reward model is scored "
                    "through an openai backend whose vLLM server runs it (or give model: a local folder)"
                )
            self._pool = PoolingClient(spec)
            if spec.chat_template:
                self._template = await asyncio.to_thread(model_chat_template, self._pool, self.label, True)

    async def _authors_format(self) -> AuthorsFormat:
        """The strong model's template, eos text and tokenizer (format: strong)."""
        p = self.params
        strong, template = self._cdr[0]
        tokenizer = Tokenizer(strong.backend, self.label)
        eos = template.eos_token
        if not eos and hasattr(strong.backend, "eos_text"):
            eos = await strong.backend.eos_text()
        if not eos or not tokenizer.available():
            why = "the eos token its text ends with" if not eos else "a tokenizer to cut texts to the limits"
            raise SynthError(
                f"stage '{self.label}': format: strong needs {why} from backend '{p.strong}' ({strong.model_id}): "
                "set its chat_template to the model's folder or tokenizer_config.json (which names the eos token), "
                "or use format: own"
            )
        return AuthorsFormat(template, eos, tokenizer, p.max_prompt_tokens, p.max_response_tokens)

    @property
    def eos(self) -> str | None:
        return self._authors.eos if self._authors else None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def model_name(self) -> str:
        if self._cdr:
            return f"cdr:{self._cdr[0][0].model_id} - {self._cdr[1][0].model_id}"
        return self.params.model or self._pool.model_id

    async def score(self, batch: Batch, items: list[Item]) -> list[Score | RequestFailed]:
        p = self.params
        if self._cdr:
            (strong, strong_template), (weak, weak_template) = self._cdr
            results, counters = await cdr_scores(strong, weak, items, (strong_template, weak_template), self._authors)
            for name, n in counters.items():
                batch.count(name, n)
            return [r if isinstance(r, RequestFailed) else Score(r.reward, r.tokens, r.strong, r.weak) for r in results]
        responses = [response for _, _, response in items]
        tokens: list = [None] * len(items)
        if p.model:
            tokenizer = load_reward_model(p.model)[0]
            texts = [render_conversation(tokenizer, instruction, response) for _, instruction, response in items]
            vectors, truncated = await asyncio.to_thread(score_texts, p.model, texts, p.batch_size, p.max_length, True)
            if truncated:
                batch.count("reward_truncated", truncated)
            if p.length_penalty:
                tokens = await asyncio.to_thread(count_tokens, p.model, responses)
            return [self._score(v, t) for v, t in zip(vectors, tokens, strict=True)]
        conversations = [
            [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
            for _, instruction, response in items
        ]
        if self._template is not None:  # rendered here as the local path does, many per request
            texts = [self._template.render(c, add_generation_prompt=False) for c in conversations]
            pooled = await self._pool.classify_texts(
                texts, batch_size=p.batch_size, add_special_tokens=False, max_length=p.max_length
            )
        else:  # one conversation per request, rendered by the server with the model's own template
            pooled = await self._pool.classify_messages(conversations, max_length=p.max_length)
        if p.length_penalty:
            tokens = await self._pool.count_tokens(responses)
        return [r if isinstance(r, RequestFailed) else self._score(r, t) for r, t in zip(pooled, tokens, strict=True)]

    def _score(self, outputs: list[float], tokens: int | None) -> Score | RequestFailed:
        """The reward (output `head`) and, for `heads`, every output; a model with fewer outputs fails."""
        p = self.params
        wanted = max([p.head, *p.heads.values()])
        if wanted >= len(outputs):
            return RequestFailed(
                "missing_head", f"the reward model gives {len(outputs)} output(s); head {wanted} asked for"
            )
        return Score(outputs[p.head], tokens, outputs=outputs if p.heads else None)
