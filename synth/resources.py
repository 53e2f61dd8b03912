"""Where the shipped templates/, filters/, pipelines/ and data/ live.

In a wheel they sit inside the package (hatch force-include); in a source checkout or an
editable install they sit beside it at the repository root. One lookup serves both.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

KINDS = ("templates", "filters", "pipelines", "data")
# Inside the wheel, filters/ presets sit at synth/filters_presets: synth/filters is code.
_IN_PACKAGE = {"filters": "filters_presets"}


@cache
def resource_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}")
    package = Path(__file__).resolve().parent
    for candidate in (package / _IN_PACKAGE.get(kind, kind), package.parent / kind):
        if candidate.is_dir():
            return candidate
    return package / _IN_PACKAGE.get(kind, kind)


def list_resources(kind: str, pattern: str = "*") -> list[str]:
    root = resource_dir(kind)
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob(pattern) if p.is_file() and not p.name.startswith("."))
