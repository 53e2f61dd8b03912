"""The skill and query-type lists of Instruct-SkillMix (Kaur et al. 2024), in the files the authors
released (princeton-pli/Instruct-SkillMix, datasets/<generator>/skills.txt and queries.txt), so a
user can drop their lists in and a run's extracted lists can be written out the same way.

- skills: one snake_case name a line (`psychological_understanding`).
- query types: blocks separated by `###`, each `### <n>. **<Name>**` then its definition (which
  may run over several lines and hold examples). The authors' reader splits a block on `*` and
  takes the first two non-empty parts after the number as name and definition; `read_queries`
  does the same and also accepts a block without the bold markers (`### Name` then the text).

The drawing stage uses `query_line(name, definition)`, the authors' `"{name}: {definition}"`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

_NOT_WORD = re.compile(r"[^0-9a-z]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
MAX_SKILL_WORDS = 8


def snake_case(name: str) -> str:
    """A skill name as the authors write them: lower case words joined by underscores.
    `"Data Handling & Analysis"` and `"dataHandlingAndAnalysis"` both give `data_handling_and_analysis`
    (an ampersand reads as "and"); an empty result means the text held no word."""
    text = _CAMEL.sub(" ", name.strip()).replace("&", " and ")
    return _NOT_WORD.sub("_", text.lower()).strip("_")


@dataclass(frozen=True)
class QueryType:
    name: str
    definition: str

    @property
    def line(self) -> str:
        return query_line(self.name, self.definition)


def query_line(name: str, definition: str) -> str:
    """The text the generation prompt shows for a query type (the authors' `query_type`)."""
    return f"{name}: {definition}" if definition else name


# ---- skills.txt ----


def parse_skills(text: str) -> list[str]:
    """Names from a skills file's text: one a line, blank lines skipped, each normalized to
    snake_case, first occurrence kept. (The authors' reader keeps a trailing empty line as a
    skill named ""; we do not.)"""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        name = snake_case(line)
        if name:
            seen.setdefault(name, None)
    return list(seen)


def format_skills(names: Iterable[str]) -> str:
    out = [snake_case(n) for n in names]
    return "".join(f"{n}\n" for n in out if n)


def read_skills(path: str | Path) -> list[str]:
    names = parse_skills(_read(path, "skills"))
    if not names:
        raise InputError(f"{path}: no skill names in it; write one snake_case skill name a line")
    return names


def write_skills(path: str | Path, names: Iterable[str]) -> Path:
    path = Path(path)
    path.write_text(format_skills(names), encoding="utf-8")
    return path


# ---- queries.txt ----

_NUMBER = re.compile(r"^\s*\d+\s*[.)]\s*")


def _block(block: str) -> QueryType | None:
    if "*" in block:  # the authors' form: `1. **Name**\nDefinition`
        parts = [p.strip() for p in block.split("*") if p.strip()]
        if parts and re.fullmatch(r"\d+\s*[.)]?", parts[0]):
            parts = parts[1:]
        if not parts:
            return None
        name, definition = parts[0], " ".join(parts[1:2]).strip()
    else:  # `Name` on the first line (or `Name: definition`), the definition after it
        head, _, rest = block.strip().partition("\n")
        head = _NUMBER.sub("", head).strip()
        if ":" in head and not rest.strip():
            head, _, rest = head.partition(":")
        name, definition = head.strip(), rest.strip()
    name = name.strip(" :#")
    return QueryType(name, definition) if name else None


def parse_queries(text: str) -> list[QueryType]:
    """Query types from a queries file's text (see the module docstring), first occurrence of a
    name kept."""
    found: dict[str, QueryType] = {}
    for block in text.split("###"):
        if not block.strip():
            continue
        query = _block(block)
        if query is not None:
            found.setdefault(query.name.lower(), query)
    return list(found.values())


def format_queries(queries: Iterable[QueryType | tuple[str, str]]) -> str:
    blocks = []
    for i, q in enumerate(queries, start=1):
        name, definition = (q.name, q.definition) if isinstance(q, QueryType) else q
        name = " ".join(str(name).replace("*", "").replace("#", "").split())
        definition = str(definition or "").replace("###", "#").replace("*", "").strip()
        blocks.append(f"### {i}. **{name}**\n{definition}\n")
    return "\n".join(blocks)


def read_queries(path: str | Path) -> list[QueryType]:
    queries = parse_queries(_read(path, "query types"))
    if not queries:
        raise InputError(f"{path}: no query types in it; write each as '### 1. **Name**' followed by its definition")
    return queries


def write_queries(path: str | Path, queries: Iterable[QueryType | tuple[str, str]]) -> Path:
    path = Path(path)
    path.write_text(format_queries(queries), encoding="utf-8")
    return path


def _read(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (the {what} list)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the {what} list ({exc.__class__.__name__}: {exc})") from None


def write_run_lists(rows: Iterable[dict], folder: str | Path) -> tuple[Path | None, Path | None]:
    """skills.txt and queries.txt from the rows of a `skills` or `skills_from_data` stage
    (columns kind, name, definition), in the authors' formats; a kind with no rows gets no file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    skills, queries = [], []
    for row in rows:
        if row.get("kind") == "skill":
            skills.append(str(row["name"]))
        elif row.get("kind") == "query_type":
            queries.append(QueryType(str(row["name"]), str(row.get("definition") or "")))
    return (
        write_skills(folder / "skills.txt", skills) if skills else None,
        write_queries(folder / "queries.txt", queries) if queries else None,
    )


EXTRACTION_STAGES = ("skills", "skills_from_data")


def export_run_lists(run_dir: str | Path, out_dir: str | Path) -> tuple[Path | None, Path | None]:
    """skills.txt and queries.txt from a finished run: the rows of its last `skills` or
    `skills_from_data` stage, in the authors' formats."""
    from .errors import RunError
    from .runs import RowFiles, Run

    run = Run(run_dir)
    stages = run.manifest.get("stages") or []
    found = [(i, s["label"]) for i, s in enumerate(stages) if s.get("stage") in EXTRACTION_STAGES]
    if not found:
        raise RunError(f"{run_dir} has no skills or skills_from_data stage to export a skill list from")
    index, label = found[-1]
    rows = RowFiles.of_files(run.store.stage(index, label).files())
    columns = [c for c in ("kind", "name", "definition") if c in rows.schema.names]
    return write_run_lists((row for chunk in rows.chunks(columns=columns) for row in chunk.to_pylist()), out_dir)
