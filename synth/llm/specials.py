"""Special tokens that must never end up in a generated text.

llama.cpp renders every token it samples, special ones included: the embedded Gemma sometimes
writes `<start_of_image>` or `<end_of_turn>` in the middle of a question, and what follows is
another turn or garbage. vLLM drops special tokens from its text (skip_special_tokens); the local
backend instead ends the text where the first one appears, as a stop string would, since what the
model writes after a turn or image marker is no longer the answer.

Which texts count: the vocabulary's control tokens (BOS, EOS, turn markers, unused slots), and the
user-defined tokens shaped like a marker (`<start_of_image>`, `[multimodal]`) but not HTML tags
or whitespace runs, which Gemma's vocabulary also holds as user-defined tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_MARKER = re.compile(r"^(<[^<>\s]*_[^<>\s]*>|<\|[^<>\s]+\|>|\[[a-z_]+\])$")


def is_marker(text: str, control: bool) -> bool:
    """Whether a special token's text is one to cut generated text at."""
    if not text.strip():
        return False
    return control or bool(_MARKER.match(text))


def special_texts(llm) -> tuple[str, ...]:
    """The marker texts of a llama_cpp.Llama's vocabulary, longest first (one pass over it)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    control, user = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL, llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    found: set[str] = set()
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & (control | user):
            text = llm.detokenize([token], special=True).decode("utf-8", errors="ignore")
            if is_marker(text, bool(attr & control)):
                found.add(text)
    return tuple(sorted(found, key=len, reverse=True))


class Specials:
    """Finds the first special token text in a string: at each '<' or '[', a set lookup per
    distinct length (a vocabulary has thousands of them, in about twenty lengths)."""

    def __init__(self, texts: Iterable[str]):
        self.texts = frozenset(texts)
        self.lengths = sorted({len(t) for t in self.texts})
        self.starts = {t[0] for t in self.texts}

    def cut(self, text: str) -> str | None:
        """`text` up to the first special token's text, or None when it holds none."""
        for i, ch in enumerate(text):
            if ch in self.starts:
                for length in self.lengths:
                    if text[i : i + length] in self.texts:
                        return text[:i]
        return None


def cut_at_special(text: str, specials: Iterable[str]) -> str | None:
    return Specials(specials).cut(text)
