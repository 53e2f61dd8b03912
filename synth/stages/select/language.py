"""`language`: detect each row's language with lingua (as Magpie does) and keep the wanted ones.

Writes the ISO 639-1 code (`en`, `de`, ...; `unknown` when lingua cannot tell) to `output`
(Magpie's `language` column). With `keep:` set, other rows are dropped as `language_<code>`.
"""

from __future__ import annotations

from functools import cache

from pydantic import Field

from ...errors import MissingDependency
from ...records import text_of
from ..base import Batch, MapStage, Row, StageParams


class LanguageParams(StageParams):
    column: str = Field("instruction", description="text column to detect the language of")
    keep: list[str] | None = Field(None, description="ISO 639-1 codes to keep, e.g. [en]; unset: only annotate")
    languages: list[str] | None = Field(
        None, description="ISO 639-1 codes lingua chooses among (default: all it knows; fewer is faster)"
    )
    min_confidence: float = Field(0.0, ge=0, le=1, description="below this confidence the language is 'unknown'")
    output: str = Field("language", description="column for the detected code")


@cache
def detector(languages: tuple[str, ...] | None):
    try:
        from lingua import IsoCode639_1, LanguageDetectorBuilder
    except ImportError:
        raise MissingDependency("lingua-language-detector", "filters", "Language detection") from None
    if languages:
        codes = []
        for code in languages:
            try:
                codes.append(getattr(IsoCode639_1, code.upper()))
            except AttributeError:
                raise ValueError(f"unknown ISO 639-1 language code {code!r}") from None
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
    else:
        builder = LanguageDetectorBuilder.from_all_languages()
    return builder.build()


def detect(texts: list[str], languages: tuple[str, ...] | None = None, min_confidence: float = 0.0) -> list[str]:
    """ISO 639-1 code per text ('unknown' when undecided or below min_confidence)."""
    found = detector(languages).compute_language_confidence_values_in_parallel(texts)
    codes = []
    for values in found:
        top = values[0] if values else None
        ok = top is not None and top.value > 0 and top.value >= min_confidence
        codes.append(top.language.iso_code_639_1.name.lower() if ok else "unknown")
    return codes


class Language(MapStage):
    """Detect each row's language (lingua) into a column; optionally keep only some languages."""

    Params = LanguageParams
    params: LanguageParams

    @classmethod
    def reads(cls, params: LanguageParams) -> list[str]:
        return [params.column]

    @classmethod
    def writes(cls, params: LanguageParams) -> list[str]:
        return [params.output]

    async def open(self) -> None:
        detector(tuple(self.params.languages) if self.params.languages else None)

    async def process(self, batch: Batch) -> list[Row]:
        p = self.params
        texts = [text_of(r.get(p.column)) for r in batch.rows]
        codes = detect(texts, tuple(p.languages) if p.languages else None, p.min_confidence)
        keep = {c.lower() for c in p.keep} if p.keep else None
        out = []
        for row, code in zip(batch.rows, codes, strict=True):
            if keep is not None and code not in keep:
                batch.drop(row, f"language_{code}")
            else:
                out.append({**row, p.output: code})
        return out
