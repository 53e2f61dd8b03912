"""Safe YAML loading that remembers where every key and item came from.

Pipeline files may come from strangers, so only `yaml.SafeLoader` is used, bounded: a 1 KB file of
nested aliases ("billion laughs") expands to gigabytes, `&a [*a]` refers to itself, and deep
nesting exhausts the stack; each is refused with its file:line before anything is built. Alongside
the data we keep a map from each path (("stages", 2, "temperature")) to its 1-based line, so that
validation errors can say `pipeline.yaml:14: stages[2].temperature: ...`.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from .errors import ConfigError, Problem

Path_ = tuple[str | int, ...]

MAX_BYTES = 2 * 2**20  # a pipeline file; large inline rows belong in a data file
MAX_VALUES = 100_000  # values in a file once its aliases are expanded
MAX_DEPTH = 100  # nesting of lists and mappings

# PyYAML's wording of the usual indentation mistakes, and what to do about each.
_HINTS = {
    "mapping values are not allowed here": "check the indentation on this line (a key needs a space after ':' "
    "and nested keys need more indentation than their parent)",
    "expected <block end>": "check the indentation on this line: it must line up with the keys or items above it",
    "could not find expected ':'": "check this line: a key needs ':' after it, and a continued value more "
    "indentation than its key",
    "'\\t'": "YAML indents with spaces: replace the tabs on this line with spaces",
    "tab character": "YAML indents with spaces: replace the tabs on this line with spaces",
}


@dataclass
class YamlDoc:
    data: Any
    file: str
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line_of(self, path: Path_) -> int | None:
        """The line of the deepest known prefix of `path` (pydantic locations include union tags
        and other elements that are not in the file, so unknown elements are skipped)."""
        best = self.lines.get(())
        known: tuple = ()
        for element in path:
            candidate = known + (element,)
            if candidate in self.lines:
                known = candidate
                best = self.lines[candidate]
        return best


def _walk(node: yaml.Node, path: Path_, doc: YamlDoc) -> None:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                doc.problems.append(
                    Problem(
                        doc.file, line, format_path(path + (key,)), f"duplicate key (first given on line {seen[key]})"
                    )
                )
            seen[key] = line
            doc.lines[path + (key,)] = line
            _walk(value_node, path + (key,), doc)
            doc.lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), doc)


def format_path(path: Path_) -> str:
    out = ""
    for element in path:
        out += f"[{element}]" if isinstance(element, int) else (f".{element}" if out else str(element))
    return out


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts as it composes: every value, each alias as the values it stands for
    (so a file is refused while it is read, not once built), the anchors of the collections still
    open (an alias to one of them is recursive), and the depth."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._values: dict[int, int] = {}  # id(node) -> values under it, aliases expanded
        self._total = 0
        self._aliases = False
        self._open: set[str] = set()
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases = True
            if event.anchor in self._open:
                problem = f"the alias *{event.anchor} is inside the &{event.anchor} it refers to (a recursive alias)"
                raise ComposerError(None, None, problem, event.start_mark)
            node = super().compose_node(parent, index)
            self._add(self._values[id(node)], event.start_mark)
            return node
        self._add(1, event.start_mark)
        collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            if event.anchor:
                self._open.add(event.anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            if collection:
                self._depth -= 1
                self._open.discard(event.anchor)
        if isinstance(node, yaml.SequenceNode):
            self._values[id(node)] = 1 + sum(self._values[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            self._values[id(node)] = 1 + sum(self._values[id(k)] + self._values[id(v)] for k, v in node.value)
        else:
            self._values[id(node)] = 1
        return node

    def _add(self, values: int, mark) -> None:
        self._total += values
        if self._total > MAX_VALUES:
            problem = (
                f"YAML aliases expand too far (to more than {MAX_VALUES:,} values); write the values out "
                "instead of nesting aliases"
                if self._aliases
                else f"more than {MAX_VALUES:,} values; put large inline rows in a .jsonl file and load it with path:"
            )
            raise ComposerError(None, None, problem, mark)

    def construct_object(self, node, deep=False):
        # PyYAML lets ValueError escape for a date like 2024-13-45 or an integer of 5,000 digits.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise ConstructorError(None, None, f"cannot read this value: {exc}", node.start_mark) from None


def _message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or " ".join(str(exc).split())
    if exc.context and problem.startswith("but "):  # "expected a single document in the stream, but found..."
        problem = f"{exc.context}, {problem}"
    hint = next((h for key, h in _HINTS.items() if key in problem), None)
    return f"invalid YAML: {problem}" + (f"; {hint}" if hint else "")


def _parse(text: str, file: str) -> YamlDoc:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        doc = YamlDoc(data=None, file=file)
        if node is not None:
            _walk(node, (), doc)  # before constructing: merge keys (<<) rewrite the nodes
            doc.data = loader.construct_document(node)
        return doc
    finally:
        loader.dispose()


def load_yaml(text: str, file: str = "<string>") -> YamlDoc:
    try:
        return _parse(text, file)
    except yaml.reader.ReaderError as exc:  # a control character: the reader refuses the whole text
        line = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: character #x{exc.character:04x} is not allowed in YAML; remove it"
        raise ConfigError([Problem(file, line, "", message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([Problem(file, line, "", _message(exc))]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, None, "", f"invalid YAML: {' '.join(str(exc).split())}")]) from None
    except RecursionError:  # merge keys (<<) chained through hundreds of anchors
        raise ConfigError([Problem(file, None, "", "invalid YAML: nested too deeply to read")]) from None


def load_yaml_file(path: str | Path) -> YamlDoc:
    path = Path(path)
    try:
        data = _read_bounded(path)
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), None, "", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        raise ConfigError([Problem(str(path), line, "", message)]) from None
    return load_yaml(text, str(path))


def _read_bounded(path: Path) -> bytes:
    """The file's bytes; a device, FIFO or a file of gigabytes is refused before it is read."""
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise ConfigError([Problem(str(path), None, "", "is a folder; give the pipeline's .yaml file")])
    if not stat.S_ISREG(mode):
        raise ConfigError([Problem(str(path), None, "", "is not a regular file (a device, FIFO or socket)")])
    with path.open("rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        message = f"is larger than {MAX_BYTES // 2**20} MB; put large inline rows in a .jsonl file, loaded with path:"
        raise ConfigError([Problem(str(path), None, "", message)])
    return data
