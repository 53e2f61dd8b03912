"""Jinja for prompts, always sandboxed and bounded (see sandbox.py): pipeline files and their
templates may come from strangers.

Templates are looked up beside the pipeline file first, then in the shipped templates/ folder, and are
never followed out of the folder they were found in (a link to ~/.ssh/id_rsa would be sent to the
server as a prompt). Undefined variables are errors (a typo in a column name must not render as an
empty string), and so is a None shown by `{{ }}` (a missing value must not reach a prompt as "None").
"""

from __future__ import annotations

import os
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.loaders import split_template_path

from .resources import list_resources, resource_dir
from .sandbox import MAX_TEMPLATE_BYTES, BoundedSandbox, MissingValue, TemplateRefused, _raise, static_problem

# ---- what a template may read ----


class RootedLoader(jinja2.BaseLoader):
    """Templates from a list of folders, each read only if its real path (links resolved) is a
    regular file inside the folder it was found in: `x.jinja -> ~/.ssh/id_rsa` is refused."""

    def __init__(self, roots: list[tuple[Path, str]]):
        self.roots = roots  # (folder, how a message names it)

    def get_source(self, environment: jinja2.Environment, template: str):
        pieces = split_template_path(template)
        for root, label in self.roots:
            candidate = root.joinpath(*pieces)
            if not os.path.lexists(candidate):
                continue
            real = candidate.resolve()
            if not real.is_relative_to(root.resolve()):
                raise TemplateRefused(template, f"is a link to outside {label}: {real}")
            if real.is_dir() or not real.exists():
                continue
            return self._read(template, real)
        raise jinja2.TemplateNotFound(template)

    @staticmethod
    def _read(template: str, real: Path):
        try:
            regular, size = real.is_file(), real.stat().st_size
            data = real.read_bytes() if regular and size <= MAX_TEMPLATE_BYTES else b""
            mtime = real.stat().st_mtime
        except OSError as exc:
            raise TemplateRefused(template, f"cannot be read ({exc.strerror or exc}): {real}") from None
        if not regular:
            raise TemplateRefused(template, f"is not a regular file (a device, FIFO or socket): {real}")
        if size > MAX_TEMPLATE_BYTES:
            raise TemplateRefused(template, f"is larger than {MAX_TEMPLATE_BYTES // 2**20} MB: {real}")
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            raise TemplateRefused(template, f"is not UTF-8 text; save it as UTF-8: {real}") from None

        def uptodate() -> bool:
            try:
                return real.stat().st_mtime == mtime
            except OSError:
                return False

        return source, str(real), uptodate


class PromptSandbox(BoundedSandbox):
    """The environment of synth's prompts: a None in `{{ }}` fails the row instead of reading "None"."""

    def _show(self, value: Any, where: str, expression: str) -> Any:
        if value is None:
            shown = f"{{{{ {expression} }}}}" if expression else "a {{ }} expression"
            fix = f"write {{{{ {expression} or '' }}}}" if expression else "add `or ''` to it"
            raise MissingValue(f"{where}: {shown} is None (the value is missing); give it a value, or {fix}")
        return value


@cache
def environment(base_dir: Path | None = None) -> PromptSandbox:
    roots = [(base_dir, "the pipeline folder")] if base_dir else []
    roots.append((resource_dir("templates"), "synth's templates folder"))
    env = PromptSandbox(
        loader=RootedLoader(roots),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["raise_exception"] = _raise
    return env


def _known_templates(base_dir: Path) -> list[str]:
    """Template names to suggest: the shipped ones and those near the pipeline (not all of its
    folder, which may be a home directory)."""
    names = list_resources("templates", "*.jinja")
    for pattern in ("*.jinja", "*/*.jinja"):
        names += [str(p.relative_to(base_dir)) for p in islice(base_dir.glob(pattern), 1000)]
    return names


def template_problem(name: str, base_dir: Path) -> str | None:
    """Why `name` cannot be used as a template, or None when it can."""
    env = environment(base_dir)
    try:
        env.get_template(name)
        source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    except TemplateRefused as exc:
        return f"template '{name}' {exc.message}"
    except jinja2.TemplateNotFound:
        from .errors import closest

        hint = closest(name, _known_templates(base_dir))
        tail = f"; did you mean '{hint}'?" if hint else " (run 'synth templates' to list the shipped ones)"
        return f"template '{name}' not found beside the pipeline file or in synth's templates{tail}"
    except jinja2.TemplateSyntaxError as exc:
        where = f" line {exc.lineno}" if exc.lineno else ""
        return f"template '{name}'{where}: {exc.message}"
    problem = static_problem(env, source)
    return f"template '{name}' {problem}" if problem else None


def template_variables(name: str, base_dir: Path) -> set[str]:
    env = environment(base_dir)
    source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    return meta.find_undeclared_variables(env.parse(source)) - set(env.globals)


def render(name: str, base_dir: Path, *, allow_empty: bool = False, **variables) -> str:
    """Template `name` rendered with `variables`. A prompt that renders to nothing (or only
    whitespace) is a TemplateError naming the template, which fails the row: an empty prompt would
    otherwise be sent, and every row would get the answer to nothing. `allow_empty` is for texts
    that may be empty (an optional system text, a condition)."""
    text = environment(base_dir).get_template(name).render(**variables)
    if not allow_empty and not text.strip():
        names = ", ".join(sorted(k for k in variables if k != "row")[:5]) or "none"
        raise jinja2.TemplateError(
            f"template '{name}' rendered an empty prompt for this row (variables: {names}); nothing was sent to "
            "a model: check the columns it uses and the conditions around its text"
        )
    return text
