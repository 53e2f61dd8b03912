"""JSON answers from the embedded model at the price of plain ones: the grammar checks the sampled
token instead of every token of the vocabulary.

llama-cpp-python puts the grammar first in its sampler chain, so at every step llama.cpp matches
all of the vocabulary (262,144 tokens for Gemma 3) against the grammar's stacks before top-k even
looks at them: that doubles the time per token of a judge's JSON answer. llama.cpp's own server
samples the other way round: draw a token from the chain without the grammar; keep it if the
grammar accepts it (almost always, once the answer is under way); otherwise apply the grammar to
the whole vocabulary and draw again from what is left. At temperature 0 both orders pick the
same token (the most likely one the grammar accepts). With sampling they agree as well as far as
the chain keeps the full distribution (p(t) + P(rejected)·p(t)/P(accepted) = p(t)/P(accepted));
top-k/top-p truncation applied before the check is where they may differ, as in llama.cpp's
server. Either way every answer follows the grammar.
"""

from __future__ import annotations

import ctypes
import functools
import math

import numpy as np

# llama-cpp-python's converter lets a JSON string hold any character but a quote or a backslash,
# raw newlines and other control characters included: text a strict JSON parser refuses (llama.cpp's
# own converter does not allow them). Here they must be escaped, as JSON says.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


@functools.lru_cache(maxsize=64)
def json_grammar(schema_json: str):
    """llama.cpp's GBNF grammar for a JSON schema (sampling then only picks tokens that keep the
    answer valid JSON of that shape). Built once per schema: a stage sends the same one often."""
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    text = json_schema_to_gbnf(schema_json)
    return LlamaGrammar.from_string(text.replace(_LOOSE_CHAR, _STRICT_CHAR), verbose=False)


class CheckedGrammarSampler:
    """Stands in for llama-cpp-python's LlamaSampler (`sample`, `accept`, `reset`, `close`): the
    chain without the grammar, and the grammar as a separate sampler that checks its pick."""

    def __init__(self, chain, grammar, llm):
        import llama_cpp

        self._c = llama_cpp
        self.chain = chain  # llama_cpp._internals.LlamaSampler, built without the grammar
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self.grammar:
            chain.close()
            raise ValueError("llama.cpp could not parse the grammar")
        self.n_vocab = llm.n_vocab()
        self._data = (llama_cpp.llama_token_data * self.n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)  # id, logit, p: the candidates, in place
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._one = (llama_cpp.llama_token_data * 1)()
        self.drawn = self.redrawn = 0  # draws, and draws the grammar refused (drawn again under it)

    def _candidates(self, ctx, idx: int):
        logits = self._c.llama_get_logits_ith(ctx.ctx, idx)
        self._view["id"] = self._ids
        self._view["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self._view["p"] = 0.0
        data = ctypes.cast(self._data, self._c.llama_token_data_p)
        return self._c.llama_token_data_array(data=data, size=self.n_vocab, selected=-1, sorted=False)

    def _pick(self, cur) -> int:
        return int(cur.data[cur.selected].id)

    def _allowed(self, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        data = ctypes.cast(self._one, self._c.llama_token_data_p)
        one = self._c.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
        self._c.llama_sampler_apply(self.grammar, ctypes.byref(one))
        return not math.isinf(one.data[0].logit)

    def sample(self, ctx, idx: int = -1) -> int:
        cur = self._candidates(ctx, idx)
        self._c.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        token = self._pick(cur)
        self.drawn += 1
        if not self._allowed(token):
            self.redrawn += 1
            cur = self._candidates(ctx, idx)
            self._c.llama_sampler_apply(self.grammar, ctypes.byref(cur))
            self._c.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
            token = self._pick(cur)
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        self._c.llama_sampler_accept(self.grammar, token)
        self.chain.accept(token)

    def reset(self) -> None:
        self._c.llama_sampler_reset(self.grammar)
        self.chain.reset()

    def close(self) -> None:
        if self.grammar:
            self._c.llama_sampler_free(self.grammar)
            self.grammar = None
        self.chain.close()

    def __del__(self):
        self.close()


@functools.cache
def checked_grammar_llama():
    """llama_cpp.Llama whose sampler checks the grammar after the draw (see the module's text)."""
    import llama_cpp

    class Llama(llama_cpp.Llama):
        def _init_sampler(self, *args, grammar=None, **kwargs):
            chain = super()._init_sampler(*args, grammar=None, **kwargs)
            return chain if grammar is None else CheckedGrammarSampler(chain, grammar, self)

    return Llama
