"""A client for vLLM's pooling API: scores from a reward (sequence-classification) model.

vLLM serves a sequence-classification model (an `*ForSequenceClassification` architecture, which
it runs as a pooling model with the `classify` task) and answers `POST /pooling` with the head's
outputs for the last token of each input. The request shape follows vLLM 0.32's documentation of
the Pooling API (docs/models/pooling_models/README.md, reward.md and classify.md there):

- completion form: `{"model", "input": [text, ...], "task": "classify", "use_activation": false,
  "add_special_tokens": ...}`, many texts per request, one `data[i].data` list per text;
- chat form: `{"model", "messages": [...], "task": "classify", "use_activation": false}`, one
  conversation per request, rendered by the server with the model's own chat template.

`use_activation: false` keeps the raw logits (a reward model's score is its unnormalized logit, as
transformers returns it); `truncate_prompt_tokens` with `truncation_side: left` cuts long inputs
from the left, as the local reward path does, within the server's `max_model_len`.

The client is an openai backend under another name: the same spec (URLs, api_key_env refused for
hosts the user did not allow, timeouts, retries with backoff, concurrency limit), the same HTTP
machinery (see openai.py); only the routes and bodies differ.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from .base import RequestFailed
from .openai import OpenAIBackend
from .specs import OpenAISpec

PoolResult = list[float] | RequestFailed


def _pooled(data: Any, count: int) -> list[PoolResult]:
    """The `data` list of a /pooling answer, one float list per input in input order."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) != count:
        failed = RequestFailed("bad_answer", f"expected {count} pooled outputs: {json.dumps(data)[:300]}")
        return [failed] * count
    out: list[PoolResult] = [RequestFailed("bad_answer", "no output for this input")] * count
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, dict) else position
        values = item.get("data") if isinstance(item, dict) else None
        if isinstance(values, list) and values and isinstance(values[0], list):
            values = values[-1]  # a token-wise pooler: the last token's output
        if isinstance(index, int) and 0 <= index < count and isinstance(values, list):
            try:
                out[index] = [float(v) for v in values]
            except (TypeError, ValueError):
                out[index] = RequestFailed("bad_answer", f"not numbers: {str(values)[:200]}")
    return out


class PoolingClient(OpenAIBackend):
    """Scores from a vLLM server running a reward / sequence-classification model."""

    def __init__(self, spec: OpenAISpec, **kw):
        super().__init__(spec, **kw)
        self.model_id = f"openai-pooling:{spec.model}"
        self._max_model_len: int | None = None
        self._limits = asyncio.Lock()

    async def max_model_len(self) -> int | None:
        """The served model's context length (vLLM lists it in GET /v1/models); probed once."""
        async with self._limits:
            if self._max_model_len is None:
                answer = await self._send("/models", None, fatal=())
                models = answer.get("data") if isinstance(answer, dict) else None
                found = [m.get("max_model_len") for m in models or [] if isinstance(m, dict)]
                self._max_model_len = next((v for v in found if isinstance(v, int)), 0)
        return self._max_model_len or None

    async def _options(self, max_length: int | None) -> dict:
        body: dict[str, Any] = {"model": self.spec.model, "task": "classify", "use_activation": False}
        if max_length is not None:
            served = await self.max_model_len()
            body["truncate_prompt_tokens"] = min(max_length, served) if served else max_length
            body["truncation_side"] = "left"
        return body

    async def classify_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        add_special_tokens: bool = True,
        max_length: int | None = None,
    ) -> list[PoolResult]:
        """The head's outputs for each rendered text, `batch_size` texts per request (requests
        run concurrently, up to the backend's max_concurrency)."""
        options = await self._options(max_length)

        async def one(start: int) -> list[PoolResult]:
            chunk = list(texts[start : start + batch_size])
            body = {**options, "input": chunk, "add_special_tokens": add_special_tokens}
            data = await self._send("/pooling", body, root=True)
            return [data] * len(chunk) if isinstance(data, RequestFailed) else _pooled(data, len(chunk))

        parts = await asyncio.gather(*(one(s) for s in range(0, len(texts), batch_size)))
        return [r for part in parts for r in part]

    async def classify_messages(
        self, conversations: Sequence[list[dict]], *, max_length: int | None = None
    ) -> list[PoolResult]:
        """The head's outputs for each conversation, rendered by the server with the model's own
        chat template (one request per conversation, run concurrently)."""
        options = await self._options(max_length)

        async def one(messages: list[dict]) -> PoolResult:
            data = await self._send("/pooling", {**options, "messages": messages}, root=True)
            return data if isinstance(data, RequestFailed) else _pooled(data, 1)[0]

        return list(await asyncio.gather(*(one(m) for m in conversations)))

    async def count_tokens(self, texts: Sequence[str]) -> list[int | None]:
        """Tokens of each text under the served model's tokenizer (vLLM's /tokenize), no BOS."""

        async def one(text: str) -> int | None:
            body = {"model": self.spec.model, "prompt": text, "add_special_tokens": False}
            data = await self._send("/tokenize", body, root=True)
            count = data.get("count") if isinstance(data, dict) else None
            return count if isinstance(count, int) else None

        return list(await asyncio.gather(*(one(t) for t in texts)))
