"""Chat templates: render a conversation the way the model was trained to see it.

A template comes from, in order: the backend's `chat_template` setting (a built-in name such as
`chatml` or `gemma`, a path to a Jinja file, or Jinja text), or the model's own metadata
(`tokenizer.chat_template` in a GGUF or a tokenizer_config.json). Templates run sandboxed, with
the variables Hugging Face templates expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2

from ..errors import BackendError
from ..resources import resource_dir
from ..sandbox import BoundedSandbox


def _raise(message: str):
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment(undefined: type[jinja2.Undefined]) -> BoundedSandbox:
    """A chat template comes with a model, which may come from a stranger: it is bounded like a prompt
    template (memory, work, output; every failure a TemplateError), but a None renders as "None"."""
    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, undefined=undefined, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now  # Llama-3.2 and later templates date their system turn with it
    return env


_env = _environment(jinja2.StrictUndefined)
# Models' own templates are written for Hugging Face's lenient environment: Qwen2.5's reads
# `message.tool_calls` and `tools` without checking they exist, which StrictUndefined refuses.
_hf_env = _environment(jinja2.Undefined)


def builtin_names() -> list[str]:
    root = resource_dir("templates") / "chat"
    return sorted(p.stem for p in root.glob("*.jinja"))


@dataclass
class ChatTemplate:
    source: str
    name: str
    bos_token: str = ""
    eos_token: str = ""
    strict: bool = True  # False: undefined names are empty, as in Hugging Face's apply_chat_template

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        try:
            template = (_env if self.strict else _hf_env).from_string(self.source)
            return template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise BackendError(f"chat template '{self.name}' failed: {exc}") from None

    @classmethod
    def from_tokenizer_config(cls, path: Path, bos: str = "", eos: str = "") -> ChatTemplate:
        """The `chat_template` of a Hugging Face tokenizer_config.json, with its BOS and EOS texts."""
        import json

        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read {path}: {exc}") from None
        source = config.get("chat_template") if isinstance(config, dict) else None
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default") or next(iter(named.values()), None)
        if not isinstance(source, str) or not source:
            jinja = path.parent / "chat_template.jinja"  # where newer transformers versions write it
            if not jinja.is_file():
                raise BackendError(f"{path} has no chat_template (and no chat_template.jinja beside it)")
            source = jinja.read_text(encoding="utf-8")

        def text(key: str, default: str) -> str:
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            return value if isinstance(value, str) else default

        return cls(source, str(path), text("bos_token", bos), text("eos_token", eos), strict=False)

    @classmethod
    def resolve(cls, setting: str | None, metadata: dict | None, model_id: str, bos: str = "", eos: str = ""):
        metadata = metadata or {}
        if setting:
            builtin = resource_dir("templates") / "chat" / f"{setting}.jinja"
            if builtin.is_file():
                return cls(builtin.read_text(encoding="utf-8"), setting, bos, eos)
            path = Path(setting).expanduser()
            if path.is_dir() and (path / "tokenizer_config.json").is_file():
                path = path / "tokenizer_config.json"
            if path.suffix == ".json" and path.is_file():
                return cls.from_tokenizer_config(path, bos, eos)
            if path.suffix in (".jinja", ".j2", ".txt") and path.is_file():
                return cls(path.read_text(encoding="utf-8"), str(path), bos, eos)
            if "{%" in setting or "{{" in setting:
                return cls(setting, "inline", bos, eos)
            raise BackendError(
                f"chat_template '{setting}' is neither a built-in ({', '.join(builtin_names())}), "
                f"a Jinja file, a tokenizer_config.json (or the model folder holding one), nor Jinja text"
            )
        source = metadata.get("tokenizer.chat_template")
        if source:
            return cls(source, f"{model_id} (model metadata)", bos, eos)
        raise BackendError(
            f"{model_id} has no chat template (it is a base model): set chat_template on its backend to "
            f"one of {', '.join(builtin_names())} or to a Jinja file"
        )
