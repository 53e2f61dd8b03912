"""Safe YAML loading that remembers where every key and item came from.

Pipeline files may come from strangers, so only `yaml.SafeLoader` is used. Alongside the data we
keep a map from each path (("stages", 2, "temperature")) to its 1-based line, so that validation
errors can say `pipeline.yaml:14: stages[2].temperature: ...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, Problem

Path_ = tuple[str | int, ...]


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


def load_yaml(text: str, file: str = "<string>") -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([Problem(file, line, "", f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, None, "", f"invalid YAML: {exc}")]) from None
    doc = YamlDoc(data=data, file=file)
    if node is not None:
        _walk(node, (), doc)
    return doc


def load_yaml_file(path: str | Path) -> YamlDoc:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc}")]) from None
    return load_yaml(text, str(path))
