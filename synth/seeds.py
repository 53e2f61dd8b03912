"""Deterministic seeds. Every random choice in a run derives from the pipeline seed and stable
names (stage label, row key), never from time or process state, so a resumed run equals an
uninterrupted one."""

from __future__ import annotations

import hashlib
import json


def canonical_json(value) -> str:
    """The one serialization used for hashing: sorted keys, no whitespace, unicode kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(value, length: int = 64) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


def derive_seed(*parts) -> int:
    """A 31-bit seed from any JSON-able parts (fits every engine's seed argument)."""
    return int(digest(list(parts), 8), 16) & 0x7FFFFFFF
