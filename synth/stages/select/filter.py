"""Row filters: `filter` (column conditions), `length`, `regex` (patterns and blocklists).

Each drops rows with a reason that names the rule (`instruct_reward > -10`, `too_long_chars`,
`ends_with_colon`), so a run's summary says how many rows each rule removed. Magpie's filter recipe
(data_filter.ipynb) in these stages:

    - stage: filter
      where: ["input_quality in [good, excellent]", "instruct_reward > -10"]
    - stage: regex
      column: instruction
      patterns: [':\\s*$']
      reason: ends_with_colon
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import regex
from pydantic import Field, field_validator, model_validator

from ...errors import InputError, MissingDependency
from ...records import text_of
from ..base import Batch, MapStage, StageParams
from .conditions import Condition


class FilterParams(StageParams):
    where: list[Condition] = Field(
        min_length=1,
        description="conditions that must ALL hold (a row failing one is dropped, the condition its reason). "
        "Text: 'column OP value', OP one of == != > >= < <= in, 'not in' ('reward > -10', "
        "'input_quality in [good, excellent]', 'label not in [spam]'), or 'column is null' / 'column is not "
        "null'. The value is read as YAML, never evaluated: -10 and 0.5 are numbers, [a, b] a list (in / not in "
        "need one), yes/no/true/null are YAML's; quote text that would read otherwise ('yes', '007', 'a: b'). "
        "> >= < <= compare numbers only. Structured: {column: reward, gt: -10}, one of eq ne gt ge lt le in "
        "not_in null ('null': true|false, the key quoted). A missing column, a null value or a value that cannot "
        "be compared fails the condition (is null passes). For an OR on one column use in [...]; quote each "
        "condition in the YAML list",
    )


class Filter(MapStage):
    """Keep rows where every condition on their columns holds (no code is evaluated).

    `where:` is a list; a row is kept only when all its conditions hold (AND). The first condition a
    row fails is its drop reason, written as the condition (`instruct_reward > -10`), with the
    column's value as the detail. There is no OR across columns; on one column, `in [a, b]` is one.

    A condition is text or a mapping (synth/stages/select/conditions.py):

    - `"column OP value"`, OP one of `==`, `!=`, `>`, `>=`, `<`, `<=`, `in`, `not in`;
    - `"column is null"` or `"column is not null"` (`is`, `not`, `null` in any case);
    - `{column: C, OP: value}` with OP one of eq, ne, gt, ge, lt, le, in, not_in, null (`"null": true`
      or `"null": false`: quote that key, YAML reads a bare `null` key as no key); exactly one
      operator per mapping.

    A column name is letters, digits, `_`, `.` and `-`, starting with a letter or `_`; a dot is part
    of the name, not a path into a nested value. The value is parsed as one YAML scalar or flow list,
    never evaluated: `-10` and `0.5` are numbers, `good` is text, `[good, excellent]` is a list (`in`
    and `not in` need one), and YAML's own words stay YAML's: `yes`, `no`, `true` read as booleans,
    `null` as null, `007` as 7. Quote a value to keep it text: `"answer == 'yes'"`, `"x == 'a: b'"`.
    `>`, `>=`, `<`, `<=` take numbers only; `==`, `!=`, `in` compare values as they are (the number 4
    is not the text "4"). A missing column or a null value fails every condition except `is null`,
    and a comparison that cannot be made (text against a number) fails too, so such rows are dropped
    with the condition as their reason. In the pipeline file, quote each condition: inside `[...]`
    an unquoted `[`, `,` or `: ` is read as YAML structure.

        - stage: filter
          where: ["input_quality in [good, excellent]", "instruct_reward > -10", "language == en"]
        - stage: filter
          where: [{column: representative_id, "null": false}, {column: repeat_count, le: 2}]
    """

    columnar = True
    Params = FilterParams
    params: FilterParams

    @classmethod
    def reads(cls, params: FilterParams) -> list[str]:
        return list(dict.fromkeys(c.column for c in params.where))

    async def process(self, batch: Batch) -> pa.Table:
        # The conditions on the column values alone: no dict per row, on millions of rows.
        table = batch.table
        n = table.num_rows
        first = np.full(n, -1, dtype=np.int64)  # the first condition each row fails
        values: dict[str, list] = {}
        for k, condition in enumerate(self.params.where):
            column = condition.column
            if column not in values:
                values[column] = table.column(column).to_pylist() if column in table.column_names else [None] * n
            holds = np.fromiter((condition.holds({column: v}) for v in values[column]), dtype=bool, count=n)
            first[(first < 0) & ~holds] = k
        reasons, details = [], []
        for position in np.flatnonzero(first >= 0).tolist():
            failed = self.params.where[int(first[position])]
            reasons.append(str(failed))
            details.append(f"{failed.column} = {values[failed.column][position]!r}")
        return _finish(table, batch, first >= 0, reasons, details)


class LengthParams(StageParams):
    column: str = Field(description="text column to measure (a messages list counts its user turns)")
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=0)
    tokenizer: str = Field(
        "whitespace",
        description="'whitespace' (words), 'minilm' (the shipped MiniLM tokenizer), or a tokenizer.json / folder",
    )
    output: str | None = Field(None, description="write the length in characters here (Magpie: instruction_length)")

    @model_validator(mode="after")
    def _some_bound(self):
        bounds = (self.min_chars, self.max_chars, self.min_tokens, self.max_tokens)
        if all(b is None for b in bounds) and self.output is None:
            raise ValueError("give at least one of min_chars, max_chars, min_tokens, max_tokens (or output)")
        return self


@cache
def load_tokenizer(name: str):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingDependency("tokenizers", "embed", "Counting tokens") from None
    if name.lower() in ("minilm", "all-minilm-l6-v2"):
        from ...similarity.embed import model_path

        name = model_path(name)
    path = Path(name).expanduser()
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.exists():
        raise InputError(f"tokenizer file {path} does not exist; give a tokenizer.json or a folder holding one")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # a model's tokenizer.json may pad or truncate to its input size
    tokenizer.no_truncation()
    return tokenizer


class Length(MapStage):
    """Drop rows whose text is too short or too long, in characters and/or tokens."""

    columnar = True
    Params = LengthParams
    params: LengthParams

    @classmethod
    def reads(cls, params: LengthParams) -> list[str]:
        return [params.column]

    @classmethod
    def writes(cls, params: LengthParams) -> list[str]:
        return [params.output] if params.output else []

    def _tokens(self, texts: list[str]) -> list[int]:
        p = self.params
        if p.min_tokens is None and p.max_tokens is None:
            return [0] * len(texts)
        if p.tokenizer == "whitespace":
            return [len(t.split()) for t in texts]
        tokenizer = load_tokenizer(p.tokenizer)
        return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    async def process(self, batch: Batch) -> pa.Table:
        p, table = self.params, batch.table
        texts = _texts(table, p.column)
        chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        tokens = np.asarray(self._tokens(texts), dtype=np.int64)
        checks = (
            ("too_short_chars", p.min_chars is not None and chars < p.min_chars, chars, "chars"),
            ("too_long_chars", p.max_chars is not None and chars > p.max_chars, chars, "chars"),
            ("too_short_tokens", p.min_tokens is not None and tokens < p.min_tokens, tokens, "tokens"),
            ("too_long_tokens", p.max_tokens is not None and tokens > p.max_tokens, tokens, "tokens"),
        )
        reason = np.full(len(texts), -1, dtype=np.int64)
        for k, (_, bad, _, _) in enumerate(checks):
            if bad is not False:
                reason[(reason < 0) & bad] = k
        dropped = reason >= 0
        picked = [checks[int(k)] for k in reason[dropped].tolist()]
        positions = np.flatnonzero(dropped).tolist()
        details = [f"{int(c[2][i])} {c[3]}" for c, i in zip(picked, positions, strict=True)]
        out = _finish(table, batch, dropped, [c[0] for c in picked], details)
        if p.output:
            column = pa.array(chars[~dropped], pa.int64())
            names = out.column_names
            out = (
                out.set_column(names.index(p.output), p.output, column)
                if p.output in names
                else out.append_column(p.output, column)
            )
        return out


class RegexParams(StageParams):
    column: str = Field(description="text column to search")
    patterns: list[str] = Field(default_factory=list, description="regular expressions (Python syntax)")
    blocklist: list[str] = Field(default_factory=list, description="words or phrases, matched as whole words")
    blocklist_file: str | None = Field(
        None, description="a text file of blocklisted words, one per line", json_schema_extra={"reads": "file"}
    )
    ignore_case: bool = True
    keep_matching: bool = Field(False, description="keep only the rows that match (instead of dropping them)")
    reason: str | None = Field(None, description="reason recorded for dropped rows (default: matches_pattern)")
    timeout: float = Field(
        1.0,
        gt=0,
        le=600,
        description="seconds one row's search may take; a pattern that backtracks catastrophically on a row fails "
        "that row (regex_timeout) instead of hanging the run",
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if len(pattern) > 10_000:
                raise ValueError("a pattern is limited to 10,000 characters (use blocklist_file for word lists)")
            try:
                regex.compile(pattern)
            except (regex.error, RecursionError, OverflowError) as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _something(self):
        if not (self.patterns or self.blocklist or self.blocklist_file):
            raise ValueError("give patterns, blocklist or blocklist_file")
        return self


class Regex(MapStage):
    """Drop rows matching regular expressions or blocklisted words (or keep only those)."""

    columnar = True
    Params = RegexParams
    params: RegexParams

    @classmethod
    def reads(cls, params: RegexParams) -> list[str]:
        return [params.column]

    async def open(self) -> None:
        p = self.params
        words = list(p.blocklist)
        if p.blocklist_file:
            path = self.ctx.resolve(p.blocklist_file)
            if not path.exists():
                raise InputError(f"blocklist_file {path} does not exist (paths are relative to the pipeline file)")
            words += [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
        flags = regex.IGNORECASE if p.ignore_case else 0
        self._rules = [(regex.compile(x, flags), p.reason or "matches_pattern") for x in p.patterns]
        if words:
            alternatives = "|".join(regex.escape(w) for w in sorted(set(words), key=len, reverse=True))
            self._rules.append((regex.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", flags), p.reason or "blocklisted"))

    async def process(self, batch: Batch) -> pa.Table:
        # The `regex` module, not `re`: its searches take a timeout, so a pattern from a stranger's
        # pipeline that backtracks for hours on one row costs that row, not the run.
        p, table = self.params, batch.table
        texts = _texts(table, p.column)
        status = np.zeros(len(texts), dtype=np.int8)  # 0 kept, 1 dropped, 2 failed
        reasons, details = [], []
        for i, text in enumerate(texts):
            try:
                hit = next(((m, r) for rx, r in self._rules if (m := rx.search(text, timeout=p.timeout))), None)
            except TimeoutError:
                status[i] = 2
                reasons.append("regex_timeout")
                details.append(f"a pattern took over {p.timeout:g} s on this row")
                continue
            if p.keep_matching and not hit:
                status[i] = 1
                reasons.append(p.reason or "no_pattern_matched")
                details.append("")
            elif hit and not p.keep_matching:
                status[i] = 1
                reasons.append(hit[1])
                details.append(f"matched {hit[0].group(0)!r}")
        return _finish(table, batch, status > 0, reasons, details, status == 2)


def _texts(table: pa.Table, column: str) -> list[str]:
    if column not in table.column_names:
        return [""] * table.num_rows
    return [text_of(v) for v in table.column(column).to_pylist()]


def _finish(
    table: pa.Table, batch: Batch, dropped: np.ndarray, reasons: list[str], details: list[str], failed=None
) -> pa.Table:
    """The rows of `table` not dropped; the dropped ones (reasons and details in row order) go to batch."""
    positions = np.flatnonzero(dropped)
    batch.dropped.add(positions, reasons, details, failed[positions] if failed is not None else False)
    return table.filter(pa.array(~dropped)) if dropped.any() else table
