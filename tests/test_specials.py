"""Special tokens of the model's vocabulary never reach a generated text (the quickstart once wrote
`...english?<start_of_image>A: ...` into an instruction)."""

from __future__ import annotations

import pytest

from synth.llm.specials import Specials, is_marker, special_texts


def test_markers_are_told_from_html_tags_and_whitespace():
    assert is_marker("<start_of_image>", control=False) and is_marker("[multimodal]", control=False)
    assert is_marker("<|im_end|>", control=False) and is_marker("<eos>", control=True)
    assert not is_marker("<table>", control=False) and not is_marker("</span>", control=False)
    assert not is_marker("\n\n\n", control=False) and not is_marker("    ", control=True)


def test_text_is_cut_at_the_first_special_token():
    specials = Specials(["<start_of_image>", "<end_of_turn>", "<eos>"])
    assert specials.cut("how do I learn english?<start_of_image>A: yes") == "how do I learn english?"
    assert specials.cut("a <b>bold</b> <end_of_turn> <eos>") == "a <b>bold</b> "
    assert specials.cut("nothing special < here [ either") is None


def test_the_embedded_models_vocabulary_gives_its_markers():
    llama_cpp = pytest.importorskip("llama_cpp")
    from synth.llm.local import default_model_path

    llm = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=128, verbose=False)
    try:
        texts = set(special_texts(llm))
    finally:
        llm.close()
    assert {"<start_of_image>", "<end_of_turn>", "<start_of_turn>", "<eos>", "<bos>"} <= texts
    assert "<table>" not in texts and not any(not t.strip() for t in texts)
