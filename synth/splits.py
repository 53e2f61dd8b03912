"""The train/test split of an export: seeded, and whole prompts to one side.

A run's rows of one prompt (a pair's two relabeled rows, the pairs `all_pairs` makes of one
prompt, several samples of it) must all land in the same split, or the test split holds prompts the
model trained on. Each row's prompt key is hashed to 16 bytes in numpy, so a split of millions of
rows holds no Python object per row.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from pathlib import Path

import numpy as np
import pyarrow as pa

from .parquet import iter_chunks


def _prompt_key(row: dict, index: int) -> str:
    """What makes two rows the same prompt: the instruction (or the first user turn)."""
    if isinstance(row.get("instruction"), str):
        return row["instruction"]
    messages = row.get("messages")
    if isinstance(messages, list):
        first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        if first is not None:
            return str(first.get("content"))
    return f"\0row {index}"  # no prompt to group by: a group of its own


def _digests(keys) -> np.ndarray:
    """Each prompt key as 16 bytes of blake2b, as two uint64 columns (a collision is a 2^-128 event)."""
    data = b"".join(hashlib.blake2b(k.encode("utf-8", "surrogatepass"), digest_size=16).digest() for k in keys)
    return np.frombuffer(data, dtype=np.uint64).reshape(-1, 2)


def prompt_digests(files: list[Path], schema: pa.Schema, total: int, chunk_rows: int) -> np.ndarray:
    """The hashed prompt key of every row of the files, read a chunk of rows at a time."""
    out = np.empty((total, 2), dtype=np.uint64)
    columns = [c for c in ("instruction", "messages") if c in schema.names]
    if not columns:  # every row a group of its own
        for start in range(0, total, chunk_rows):
            stop = min(start + chunk_rows, total)
            out[start:stop] = _digests(f"\0row {i}" for i in range(start, stop))
        return out
    start = 0
    for chunk in iter_chunks(files, schema, chunk_rows, columns=columns):
        n = chunk.num_rows
        instructions = chunk.column("instruction").to_pylist() if "instruction" in columns else [None] * n
        messages = None
        if not all(isinstance(v, str) for v in instructions):
            messages = chunk.column("messages").to_pylist() if "messages" in columns else [None] * n
        keys = (
            v if isinstance(v, str) else _prompt_key({"messages": messages[j]}, start + j)
            for j, v in enumerate(instructions)
        )
        out[start : start + n] = _digests(keys)
        start += n
    return out


def held_out(keys: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    """Which rows go to the test split: the rows' prompts (groups of equal keys, numbered in order
    of first appearance) in a seeded order, whole prompts taken until the test split holds at
    least test_size of the rows. The order is `random.Random(seed).shuffle` of the list of group
    numbers: shuffle swaps positions by draws that depend only on the list's length, so this is
    the permutation it gives a list of the groups themselves."""
    n = len(keys)
    mask = np.zeros(n, dtype=bool)
    if not n:
        return mask
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    hi, lo = keys[order, 0], keys[order, 1]
    new = np.ones(n, dtype=bool)
    new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    starts = np.flatnonzero(new)
    groups = len(starts)
    rank = np.empty(groups, dtype=np.int64)  # sorted-key group -> number by first appearance
    rank[np.argsort(np.minimum.reduceat(order, starts))] = np.arange(groups)
    group = np.empty(n, dtype=np.int64)
    group[order] = rank[np.cumsum(new) - 1]
    del order, hi, lo, new, starts, rank
    shuffled = array("q", range(groups))
    random.Random(seed).shuffle(shuffled)
    perm = np.frombuffer(shuffled, dtype=np.int64)
    n_test = max(1, round(n * test_size))
    taken = np.cumsum(np.bincount(group, minlength=groups)[perm])
    k = min(int(np.searchsorted(taken, n_test, side="left")) + 1, groups)
    chosen = np.zeros(groups, dtype=bool)
    chosen[perm[:k]] = True
    return chosen[group]


def held_out_mask(files: list[Path], schema: pa.Schema, total: int, test_size: float, seed: int, chunk_rows: int):
    """`held_out` of the rows in the files."""
    return held_out(prompt_digests(files, schema, total, chunk_rows), test_size, seed)


def split(rows: list[dict], test_size: float, seed: int) -> dict[str, list[dict]]:
    """A seeded train/test split of a list of rows that keeps every row of one prompt in the same
    split (a pair's two relabeled rows, the pairs `all_pairs` makes of one prompt, several
    samples of it), so the test split holds no prompt the model trained on; export_run splits a
    run's files the same way without holding its rows."""
    if not test_size:
        return {"train": rows}
    mask = held_out(_digests(_prompt_key(row, i) for i, row in enumerate(rows)), test_size, seed)
    return {
        "train": [r for r, t in zip(rows, mask, strict=True) if not t],
        "test": [r for r, t in zip(rows, mask, strict=True) if t],
    }
