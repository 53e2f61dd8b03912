"""Magpie's pre-query templates: the text that opens a user turn, sent alone so that an aligned
model writes the user's query itself (METHODS.md section 1).

Two sources, which tests hold against each other:
- `FAMILIES`, the authors' table (configs/model_configs.json and their scripts): the exact string,
  the stop strings and ids, the words that start an assistant turn, and their sampling defaults;
- `extract()`, which derives the same from any chat template by rendering a conversation around a
  sentinel user message and cutting at it, so models outside the table work too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import SynthError
from .templates import ChatTemplate

SENTINEL = "\x00SYNTH-SENTINEL-7f3a\x00"
_TOKEN = re.compile(r"<[^<>\s]+>|\[/?INST\]|</s>")


@dataclass(frozen=True)
class Family:
    name: str
    pre_query_template: str
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...] = ()
    assistant_words: tuple[str, ...] = ("assistant",)
    instruction_temperature: float = 1.0
    instruction_top_p: float = 1.0
    response_temperature: float = 0.0
    response_top_p: float = 1.0
    n_per_prompt: int = 200
    early_stop: bool = True  # stop at the first newline: single-line queries
    sanitize: bool = False
    system_turn: str | None = None  # how this family writes a system turn ({system}), for control tasks
    note: str = ""


_LLAMA3 = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
_LLAMA3_STOP = ("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
_LLAMA3_IDS = (128009, 128001, 128006, 128007)
_LLAMA3_SYS = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
)
_QWEN_STOP = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
_QWEN_IDS = (151643, 151644, 151645)
_QWEN_SYS = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
_QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama-3", _LLAMA3, _LLAMA3_STOP, _LLAMA3_IDS, system_turn=_LLAMA3_SYS),
        Family(
            "llama-3.1",
            _LLAMA3,
            _LLAMA3_STOP,
            _LLAMA3_IDS,
            instruction_temperature=0.8,
            response_temperature=0.6,
            response_top_p=0.9,
            early_stop=False,
            sanitize=True,
            system_turn=_LLAMA3_SYS,
            note="8B settings (70B: instruction temperature 0.9); the authors also ban '#' headers as first token",
        ),
        Family(
            "llama-3.3", _LLAMA3, _LLAMA3_STOP, _LLAMA3_IDS, early_stop=False, sanitize=True, system_turn=_LLAMA3_SYS
        ),
        Family("qwen2", "<|im_start|>user\n", _QWEN_STOP, _QWEN_IDS, system_turn=_QWEN_SYS),
        Family(
            "qwen2.5",
            f"<|im_start|>system\n{_QWEN25_SYSTEM}<|im_end|>\n<|im_start|>user\n",
            _QWEN_STOP,
            _QWEN_IDS,
            instruction_temperature=0.7,
            system_turn=_QWEN_SYS,
            note="3B-14B; 32B and 72B use temperature 0.6",
        ),
        Family(
            "gemma-2",
            "<bos><start_of_turn>user\n\n",
            ("<eos>", "<bos>", "<end_of_turn>"),
            n_per_prompt=10,
            early_stop=False,
            sanitize=True,
            note="the authors' string has a second newline that the model's own template does not write",
        ),
        Family("gemma-1.1", "<bos><start_of_turn>user\n", ("<eos>", "<bos>", "<end_of_turn>")),
        Family(
            "gemma-3",
            "<bos><start_of_turn>user\n",
            ("<eos>", "<bos>", "<end_of_turn>"),
            n_per_prompt=10,
            note="not in the authors' table: derived from Gemma 3's chat template",
        ),
        Family("phi-3", "<s> <|user|>\n", ("<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>")),
        Family("phi-3-small", "<|endoftext|><|user|>\n", ("<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>")),
        Family("mistral", "<s> [INST] ", ("</s>", "[/INST]", "[INST]")),
        Family("llama-2", "<s> [INST] ", ("</s>", "[/INST]", "[INST]")),
        Family(
            "yi-1.5",
            "<|startoftext|><|im_start|>user\n",
            _QWEN_STOP + ("<|startoftext|>",),
            system_turn="<|startoftext|><|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n",
        ),
        Family(
            "deepseek-coder-v2-lite",
            "<｜begin▁of▁sentence｜>User: ",
            ("<｜end▁of▁sentence｜>", "Assistant:"),
            assistant_words=("Assistant",),
        ),
    ]
}


def family_names() -> list[str]:
    return sorted(FAMILIES)


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise SynthError(f"unknown Magpie family '{name}' (known: {', '.join(family_names())})") from None


def guess_family(model: str) -> Family | None:
    """The table entry for a model name such as 'meta-llama/Meta-Llama-3.1-8B-Instruct'."""
    name = model.lower().replace("_", "-")
    for key in sorted(FAMILIES, key=len, reverse=True):
        if key.replace("-", "") in name.replace("-", ""):
            return FAMILIES[key]
    return None


@dataclass(frozen=True)
class Extracted:
    pre_query_template: str
    pre_query_with_system: str | None  # with `system_placeholder` where the system text goes
    stop: tuple[str, ...] = field(default=())
    system_placeholder: str = "{system}"


def _render(template: ChatTemplate, messages: list[dict], add_generation_prompt: bool) -> str | None:
    try:
        return template.render(messages, add_generation_prompt=add_generation_prompt)
    except SynthError:
        return None


def _first_token(text: str) -> str | None:
    found = _TOKEN.search(text)
    return found.group(0) if found else (text.strip() or None)


def extract(source: str, bos_token: str = "", eos_token: str = "") -> Extracted:
    """Derive the pre-query template and the end-of-user-turn stops from a chat template."""
    template = ChatTemplate(source, "extraction", bos_token, eos_token)
    user = [{"role": "user", "content": SENTINEL}]
    text = _render(template, user, add_generation_prompt=False)
    if text is None or SENTINEL not in text:
        raise SynthError("the chat template did not render a user message: cannot extract a pre-query template")
    pre_query = text[: text.index(SENTINEL)]

    system_text = _render(template, [{"role": "system", "content": "{system}"}, *user], add_generation_prompt=False)
    with_system = system_text[: system_text.index(SENTINEL)] if system_text and "{system}" in system_text else None

    s2, s3 = SENTINEL + "2", SENTINEL + "3"
    turns = _render(template, [*user, {"role": "assistant", "content": s2}, {"role": "user", "content": s3}], False)
    stops: list[str] = []
    if turns and s2 in turns and s3 in turns:
        after_user = turns[turns.index(SENTINEL) + len(SENTINEL) : turns.index(s2)]
        after_assistant = turns[turns.index(s2) + len(s2) : turns.index(s3)]
        common = ""
        for a, b in zip(after_user, after_assistant, strict=False):
            if a != b:
                break
            common += a
        for candidate in (_first_token(common), _first_token(after_user)):
            if candidate and candidate not in stops:
                stops.append(candidate)
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    return Extracted(pre_query, with_system, tuple(stops))


def with_system_prompt(pre_query: str, system: str, family: str = "", extracted: Extracted | None = None) -> str:
    """The pre-query template with a system turn first (the paper's control tasks)."""
    if extracted is not None and extracted.pre_query_with_system:
        return extracted.pre_query_with_system.replace(extracted.system_placeholder, system)
    entry = FAMILIES.get(family)
    if entry is None or entry.system_turn is None:
        raise SynthError(
            f"control tasks need a template with a system turn; '{family or 'this model'}' has none "
            f"(families with one: {', '.join(n for n, f in FAMILIES.items() if f.system_turn)})"
        )
    return entry.system_turn.replace("{system}", system)
