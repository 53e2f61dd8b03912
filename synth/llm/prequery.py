"""Magpie's pre-query templates: the text that opens a user turn, sent alone so that an aligned
model writes the user's query itself (Magpie, Xu et al. 2024; docs/methods.md).

Two sources, which tests hold against each other:
- `FAMILIES`, the authors' table (configs/model_configs.json and their scripts): the exact string,
  the stop strings and ids, the words that start an assistant turn, and their sampling defaults;
- `extract()`, which derives the same from any chat template by rendering conversations around
  sentinel messages and cutting at them, so models outside the table work too.

Where the authors' string is not what the model's own template writes (Gemma-2's second newline,
the space after `<s>` in Phi-3/Mistral/Llama-2, the default system turns of Qwen2 and Llama-3.1),
the table keeps the authors' string, as they ran it, and says what the template writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import SynthError
from .templates import ChatTemplate

# Letters and digits only, so `| trim`, `.strip()` and HTML-escaping leave them whole.
SENTINEL = "SynthSentinelUser7f3a"
_SYSTEM = "SynthSentinelSystem7f3a"
_REPLY = "SynthSentinelReply7f3a"
_NEXT = "SynthSentinelNext7f3a"
SYSTEM_PLACEHOLDER = "{system}"
# Control tokens as chat templates write them: <|eot_id|>, <｜end▁of▁sentence｜>, <end_of_turn>, </s>, [/INST].
_TOKEN = re.compile(r"<\|[^<>|\s]+\|>|<｜[^<>｜\s]+｜>|</?[a-z_]+>|\[/?[A-Z_]+\]")


@dataclass(frozen=True)
class Family:
    name: str
    pre_query_template: str  # exactly the authors' string
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...] = ()
    assistant_words: tuple[str, ...] = ("assistant",)  # appended to the stops, as the authors do
    instruction_temperature: float = 1.0
    instruction_top_p: float = 1.0
    response_temperature: float = 0.0  # greedy
    response_top_p: float = 1.0
    n_per_prompt: int = 200  # samples per request (vLLM's n)
    early_stop: bool = True  # stop at the first newline: single-line queries
    sanitize: bool = False  # clean leaked answers (str_utils.instruction_post_process)
    system_turn: str | None = None  # how this family writes a system turn ({system}), for control tasks
    template_renders: str | None = None  # what the model's chat template writes instead, when it differs
    note: str = ""


_LLAMA3 = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
_LLAMA3_STOP = ("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
_LLAMA3_IDS = (128009, 128001, 128006, 128007)
_LLAMA3_SYS = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
)
_LLAMA31_NOTE = "the model's template always writes a dated system turn, the authors' string none"
_QWEN_STOP = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
_QWEN_IDS = (151643, 151644, 151645)
_QWEN_SYS = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
_QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_GEMMA_STOP = ("<eos>", "<bos>", "<end_of_turn>")
_MARKERS = "stops are the template's own markers, not taken from the authors' config"
_INST_STOP = ("</s>", "[/INST]", "[INST]")  # _MARKERS
_PHI3_STOP = ("<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>")  # _MARKERS
_SPACE = "the authors' string has a space after <s> that the template does not write (a tokenizer decode)"
# The authors' Vicuna entry opens with a generic system sentence; this is FastChat's vicuna_v1.1 wording of it.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

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
            note="8B settings (70B: instruction temperature 0.9); the authors also ban '#'..'####' as first "
            f"response token (ids 2, 567, 14711, 827); {_LLAMA31_NOTE}",
        ),
        Family(
            "llama-3.3",
            _LLAMA3,
            _LLAMA3_STOP,
            _LLAMA3_IDS,
            early_stop=False,
            sanitize=True,
            system_turn=_LLAMA3_SYS,
            note=_LLAMA31_NOTE,
        ),
        Family(
            "qwen2",
            "<|im_start|>user\n",
            _QWEN_STOP,
            _QWEN_IDS,
            system_turn=_QWEN_SYS,
            note="the model's template writes a default system turn, the authors' string none",
        ),
        Family(
            "qwen2.5",
            f"<|im_start|>system\n{_QWEN25_SYSTEM}<|im_end|>\n<|im_start|>user\n",
            _QWEN_STOP,
            _QWEN_IDS,
            instruction_temperature=0.7,
            system_turn=_QWEN_SYS,
            note="3B-14B; 32B and 72B use temperature 0.6; the template's default system turn is kept",
        ),
        Family(
            "gemma-2",
            "<bos><start_of_turn>user\n\n",
            _GEMMA_STOP,
            n_per_prompt=10,
            early_stop=False,
            sanitize=True,
            template_renders="<bos><start_of_turn>user\n",
            note="the authors' string has a second newline that the model's own template does not write",
        ),
        Family("gemma-1.1", "<bos><start_of_turn>user\n", _GEMMA_STOP),
        Family(
            "gemma-3",
            "<bos><start_of_turn>user\n",
            _GEMMA_STOP,
            note="not in the authors' table: string from Gemma 3's chat template, sampling defaults the generic ones",
        ),
        Family("phi-3", "<s> <|user|>\n", _PHI3_STOP, template_renders="<s><|user|>\n", note=_SPACE),
        Family("phi-3-small", "<|endoftext|><|user|>\n", _PHI3_STOP),
        Family("mistral", "<s> [INST] ", _INST_STOP, template_renders="<s>[INST] ", note=_SPACE),
        Family("llama-2", "<s> [INST] ", _INST_STOP, template_renders="<s>[INST] ", note=_SPACE),
        Family(
            "yi-1.5",
            "<|startoftext|><|im_start|>user\n",
            _QWEN_STOP + ("<|startoftext|>",),
            system_turn="<|startoftext|><|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n",
            note="stops are ChatML's markers, not the authors' list; no template fixture checks this entry",
        ),
        Family(
            "deepseek-coder-v2-lite",
            "<｜begin▁of▁sentence｜>User: ",
            ("<｜end▁of▁sentence｜>", "Assistant:", "User:"),
            assistant_words=("Assistant",),
            note=_MARKERS,
        ),
        Family(
            "vicuna",
            VICUNA_SYSTEM + "\n\nUSER: ",
            ("</s>", "ASSISTANT:", "USER:"),
            assistant_words=("ASSISTANT",),
            system_turn="{system}\n\nUSER: ",
            note=_MARKERS,
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
    name = model.lower().replace("_", "-").replace("-", "")
    for key in sorted(FAMILIES, key=len, reverse=True):  # 'qwen2.5' before 'qwen2'
        if key.replace("-", "") in name:
            return FAMILIES[key]
    return None


@dataclass(frozen=True)
class Extracted:
    """What a chat template writes around a user message."""

    pre_query_template: str  # everything before the first user message, default system turn included
    pre_query_with_system: str | None  # with SYSTEM_PLACEHOLDER for the system text; None: refused or dropped
    bare_pre_query: str  # BOS (if written) + the header of a later user turn: no default system turn
    default_system: str | None  # the system text written when none is given ("" = an empty one); None: none
    stop: tuple[str, ...] = field(default=())  # what ends a user turn: its markers, the next header's, EOS
    assistant_words: tuple[str, ...] = ()  # plain words of the assistant header ('assistant', 'model')
    requires_system: bool = False  # the template refused a conversation without a system message
    system_placeholder: str = SYSTEM_PLACEHOLDER


def _try(template: ChatTemplate, messages: list[dict], add_generation_prompt: bool = False) -> str | None:
    """Render one probe; a template refusing a shape (roles, system) just means that probe tells nothing."""
    try:
        return template.render(messages, add_generation_prompt=add_generation_prompt)
    except Exception:  # templates are arbitrary code: any failure is a refusal
        return None


def _between(text: str | None, start: str, end: str) -> str | None:
    if text is None or start not in text or end not in text:
        return None
    begin = text.index(start) + len(start)
    return text[begin : text.index(end)] if text.index(end) >= begin else None


def _common_prefix(a: str, b: str) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:n]


def _common_suffix(a: str, b: str) -> str:
    return _common_prefix(a[::-1], b[::-1])[::-1]


def _token_boundary(text: str, cut: int) -> int:
    """Move `cut` back to the start of a control token it falls inside (`<|end|>\n<|` + `user|>`)."""
    for token in _TOKEN.finditer(text):
        if token.start() < cut < token.end():
            return token.start()
    return cut


def _markers(text: str) -> list[str]:
    """Control tokens in `text`, or else its first non-blank line ('Assistant:', 'USER:')."""
    found = _TOKEN.findall(text)
    if found:
        return found
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return [line] if line else []


def extract(source: str, bos_token: str = "", eos_token: str = "") -> Extracted:
    """Derive the pre-query template and the end-of-user-turn stops from a chat template.

    Renders a user message holding a sentinel and cuts at it; with a system message too; and a
    user/assistant/user exchange, whose pieces between the sentinels give the end-of-turn markers
    and the bare header of a user turn (without the default system turn some templates add).
    """
    template = ChatTemplate(source, "chat template", bos_token or "", eos_token or "", strict=False)
    user = {"role": "user", "content": SENTINEL}
    lead: list[dict] = []
    text = _try(template, [user])
    if text is None or SENTINEL not in text:  # some templates insist on a system message
        lead = [{"role": "system", "content": ""}]
        text = _try(template, [*lead, user])
    if text is None or SENTINEL not in text:
        raise SynthError(
            "the chat template did not render a lone user message, so no pre-query template can be "
            "extracted from it: set family: or pre_query_template: on the magpie stage"
        )
    pre_query = text[: text.index(SENTINEL)]

    probe = _try(template, [{"role": "system", "content": _SYSTEM}, user])
    with_system = None  # stays None when refused (Gemma-2) or silently dropped (early Phi-3)
    if probe and _SYSTEM in probe and SENTINEL in probe and probe.index(_SYSTEM) < probe.index(SENTINEL):
        with_system = probe[: probe.index(SENTINEL)].replace(_SYSTEM, SYSTEM_PLACEHOLDER)
    default_system = None
    if with_system is not None:
        head, tail = with_system.split(SYSTEM_PLACEHOLDER, 1)
        if pre_query.startswith(head) and pre_query.endswith(tail) and len(pre_query) >= len(head) + len(tail):
            default_system = pre_query[len(head) : len(pre_query) - len(tail)]

    exchange = [*lead, user, {"role": "assistant", "content": _REPLY}]
    turns = _try(template, [*exchange, {"role": "user", "content": _NEXT}])
    after_user = _between(turns, SENTINEL, _REPLY)
    between_turns = _between(turns, _REPLY, _NEXT)
    if after_user is None or between_turns is None:  # no multi-turn conversation: the first header is all
        after_user, header = "", pre_query
    else:
        closed = _try(template, exchange)
        closing = closed[closed.index(_REPLY) + len(_REPLY) :] if closed and _REPLY in closed else ""
        # What follows the reply in a closed conversation ends the assistant turn; the rest opens the next.
        if closing:
            header = between_turns[_token_boundary(between_turns, len(_common_prefix(between_turns, closing))) :]
        else:
            header = _common_suffix(between_turns, pre_query)
    bos = bos_token or ""
    bare = bos + header if bos and pre_query.startswith(bos) and not header.startswith(bos) else header

    stops = [*_markers(after_user), *_markers(header), *([eos_token] if eos_token else [])]
    stops = [s for s in dict.fromkeys(stops) if s and s != bos]
    words = tuple(dict.fromkeys(re.findall(r"[A-Za-z]+", _TOKEN.sub(" ", after_user))))
    return Extracted(pre_query, with_system, bare, default_system, tuple(stops), words, bool(lead))


def match_family(extracted: Extracted) -> list[Family]:
    """Table entries whose string this template writes: exact matches first, then bare-header ones.

    Several can match (Llama-3/3.1/3.3 share a template, so do Mistral and Llama-2): their sampling
    defaults differ, so the caller picks, by model name (`guess_family`) when it has one.
    """
    found: list[Family] = []
    for text in (extracted.pre_query_template, extracted.bare_pre_query):
        for entry in FAMILIES.values():
            if text in (entry.pre_query_template, entry.template_renders) and entry not in found:
                found.append(entry)
    return found


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
