"""Backend settings as pure data: what a pipeline file's `backends:` section may say.

Nothing here imports an engine or a client, so `synth validate` works without the extras.
Fields marked `fingerprint=False` change speed or location, never rows; they are left out of
the run fingerprint so that, say, raising `max_concurrency` does not invalidate a run.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..pricing import Pricing


def _speed_only(**kw):
    """A field that changes how fast rows come, never which rows: excluded from fingerprints."""
    return Field(json_schema_extra={"fingerprint": False}, **kw)


# Query parameters that carry a credential (`?key=`, `?api_key=`, `?access_token=`, `?sig=`).
SECRET_PARAMETER = re.compile(r"(?i)(key|token|secret|passw|pwd|auth|credential|signature|^sig$)")


class BackendSpecBase(BaseModel):
    """A backend type's settings: the base of every `type:` registered (synth/registry.py), the
    built-in three below and a plugin's. `backend` names the class that runs it ("module:Class",
    imported only when a run starts, so validating a file needs no engine); that class is built
    as `cls(spec)` and follows synth.llm.base.Backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: ClassVar[str]
    type: str
    # What the backend costs and how fast it is expected to go: for the run's cost, its budget and
    # `synth estimate`; never part of a fingerprint (prices change, rows do not).
    pricing: Pricing | None = _speed_only(
        default=None,
        description="your prices: input_per_million and output_per_million (with batch_discount), or "
        "per_server_hour with servers; without it a run shows tokens and server-hours only",
    )
    tokens_per_second: float | None = _speed_only(
        default=None, gt=0, description="generated tokens per second you expect, for synth estimate's time"
    )

    def concurrency(self) -> int:
        """How many requests the backend takes at once (the runner keeps that many in flight)."""
        return 1

    def model_name(self) -> str:
        """The model it serves, by file or repo id, for the manifest and the dataset card."""
        model = getattr(self, "model", None)
        return f"{model} ({self.type})" if model else self.type

    def identity(self) -> dict:
        """The fields that decide the rows this backend produces (the fingerprint's view)."""
        out = {}
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra or {}
            if isinstance(extra, dict) and extra.get("fingerprint") is False:
                continue
            out[name] = getattr(self, name)
        return out


class LocalSpec(BackendSpecBase):
    """llama.cpp in-process (llama-cpp-python). With no model_path: the shipped Gemma 3 270M GGUF."""

    backend: ClassVar[str] = "synth.llm.local:LocalBackend"
    type: Literal["local"] = "local"
    model_path: str | None = None
    n_ctx: int = Field(2048, ge=128)
    n_threads: int | None = _speed_only(default=None, ge=1)
    chat_template: str | None = None

    def concurrency(self) -> int:
        return 1  # one model instance answers one request at a time

    def model_name(self) -> str:
        return self.model_path or "gemma-3-270m-q4_k_m.gguf (embedded default, llama.cpp)"


class OpenAISpec(BackendSpecBase):
    """Any OpenAI-compatible server: `vllm serve`, `python -m llama_cpp.server`, OpenAI itself.
    The API key is read from the environment variable named by `api_key_env`, never from the file."""

    backend: ClassVar[str] = "synth.llm.openai:OpenAIBackend"
    type: Literal["openai"] = "openai"
    model: str
    base_url: str | None = _speed_only(default=None)
    base_urls: list[str] = _speed_only(default_factory=list)
    api_key_env: str | None = _speed_only(
        default="OPENAI_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="environment variable holding the API key (null: send none); sent to a host other than "
        "loopback (or OPENAI_API_KEY to api.openai.com) only with --allow-key VARIABLE",
    )
    max_concurrency: int = _speed_only(
        default=256,
        ge=1,
        le=100_000,
        description="requests in flight at once over all base_urls (vLLM runs 256 sequences at once by default)",
    )
    timeout: float = _speed_only(default=600.0, gt=0)
    retry_seconds: float = _speed_only(
        default=300.0,
        ge=0,
        le=86400,
        description="keep retrying a request that meets a dead server, 5xx or 429 for this long (backoff capped "
        "at 30 s), so a server restart does not stop a long run",
    )
    max_retries: int | None = _speed_only(default=None, ge=0, description="also stop after this many retries")
    chat_template: str | None = Field(
        None,
        description="the served model's chat template, for what synth renders itself (Magpie's pre-query "
        "template, follow-up turns): a tokenizer_config.json, the model folder, a Jinja file or a built-in name",
    )
    # Batch API and rate limits (docs/batches.md). Speed and price, never rows: left out of fingerprints.
    batch: bool = _speed_only(
        default=False,
        description="send generations through the provider's Batch API (files + batches: half price, answers "
        "within completion_window) instead of one HTTP request each",
    )
    completion_window: str = _speed_only(default="24h", description="the Batch API's completion window")
    batch_max_requests: int = _speed_only(
        default=50_000, ge=1, le=1_000_000, description="most requests in one batch job (OpenAI's limit: 50,000)"
    )
    batch_max_mb: float = _speed_only(
        default=190.0, gt=0, le=10_000, description="largest batch input file in MB (OpenAI's limit: 200)"
    )
    batch_collect_seconds: float = _speed_only(
        default=5.0,
        ge=0,
        le=3600,
        description="a batch job is submitted when it is full, or when no new request joined it for this long",
    )
    batch_poll_seconds: float = _speed_only(
        default=60.0, gt=0, le=3600, description="longest wait between two looks at a running batch job"
    )
    requests_per_minute: int | None = _speed_only(
        default=None, ge=1, description="the provider's request limit: synth never sends faster (no 429s)"
    )
    tokens_per_minute: int | None = _speed_only(
        default=None,
        ge=1,
        description="the provider's token limit, counting prompt + max_tokens ahead and settling on the usage",
    )

    @model_validator(mode="after")
    def _one_url(self):
        if not self.base_url and not self.base_urls:
            raise ValueError("give base_url (or base_urls), e.g. base_url: http://127.0.0.1:8000/v1")
        for url in self.urls():
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
            if "@" in parts.netloc:
                raise ValueError(
                    "a base_url must not carry credentials (user:password@ or token@): put the key in an "
                    "environment variable and name it with api_key_env"
                )
            secret = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if SECRET_PARAMETER.search(k)]
            if secret:  # it would be written to the manifest and pipeline.yaml of every run
                raise ValueError(
                    f"a base_url must not carry credentials (the query parameter '{secret[0]}'): put the key in an "
                    "environment variable and name it with api_key_env (synth sends it as a Bearer token)"
                )
        return self

    def urls(self) -> list[str]:
        return list(self.base_urls) or [self.base_url]  # type: ignore[list-item]

    def concurrency(self) -> int:
        # In batch mode a job wants many requests: enough batches of rows stay in flight to fill one.
        return max(self.max_concurrency, self.batch_max_requests) if self.batch else self.max_concurrency


class VLLMSpec(BackendSpecBase):
    """The in-process `vllm.LLM` engine (extra: synth[vllm])."""

    backend: ClassVar[str] = "synth.llm.vllm:VLLMBackend"
    type: Literal["vllm"] = "vllm"
    model: str
    chat_template: str | None = None
    max_model_len: int | None = None
    dtype: str = "auto"
    engine_args: dict = Field(default_factory=dict)

    def concurrency(self) -> int:
        return int(self.engine_args.get("max_num_seqs") or 256)  # the engine batches this many sequences
