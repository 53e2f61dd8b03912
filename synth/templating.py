"""Jinja for prompts, always sandboxed: pipeline files and their templates may come from strangers.

Templates are looked up beside the pipeline file first, then in the shipped templates/ folder.
Undefined variables are errors (a typo in a column name must not render as an empty string).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .resources import resource_dir


def _raise(message: str):
    raise jinja2.TemplateError(message)


@cache
def environment(base_dir: Path | None = None) -> ImmutableSandboxedEnvironment:
    search = [str(base_dir)] if base_dir else []
    search.append(str(resource_dir("templates")))
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["raise_exception"] = _raise
    return env


def template_problem(name: str, base_dir: Path) -> str | None:
    """Why `name` cannot be used as a template, or None when it can."""
    env = environment(base_dir)
    try:
        env.get_template(name)
    except jinja2.TemplateNotFound:
        shipped = sorted(env.loader.list_templates()) if env.loader else []  # type: ignore[union-attr]
        from .registry import closest

        hint = closest(name, shipped)
        tail = f"; did you mean '{hint}'?" if hint else " (run 'synth templates' to list the shipped ones)"
        return f"template '{name}' not found beside the pipeline file or in synth's templates{tail}"
    except jinja2.TemplateSyntaxError as exc:
        return f"template '{name}' line {exc.lineno}: {exc.message}"
    return None


def template_variables(name: str, base_dir: Path) -> set[str]:
    env = environment(base_dir)
    source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    return meta.find_undeclared_variables(env.parse(source)) - set(env.globals)


def render(name: str, base_dir: Path, **variables) -> str:
    return environment(base_dir).get_template(name).render(**variables)
