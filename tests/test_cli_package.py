"""The CLI is a package whose imports point down: `synth/cli/__init__.py` (the `main` group) imports
the command modules, each command module imports `common` and the rest of synth but never the
package or another command module, no private name crosses modules, and nothing below imports the
CLI. Read from the source with `ast`, so a new import that closes a circle fails here."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

SYNTH = REPO / "synth"
CLI = "synth.cli"
# Modules of synth/cli/ that are not command modules: the group, `python -m`, the shared helpers,
# and the docs generator (which renders the whole group, so it alone may import the package).
NOT_COMMANDS = {CLI, f"{CLI}.__main__", f"{CLI}.common", f"{CLI}.docs"}

# `synth --help` as it listed its commands before the CLI became a package, and those added since.
COMMANDS = [
    "batches",
    "decontaminate",
    "dedup",
    "estimate",
    "export",
    "inspect",
    "models",
    "pipelines",
    "push",
    "report",
    "run",
    "stages",
    "templates",
    "validate",
    "view",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SYNTH.rglob("*.py")}


def imports(module: str) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import in MODULE's source, relative
    imports made absolute; `from package import submodule` counts as importing the submodule."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (base, alias.name))
    return found


def cli_modules() -> list[str]:
    return sorted(m for m in MODULES if m == CLI or m.startswith(CLI + "."))


def cli_imports(module: str) -> set[str]:
    return {m for m, _ in imports(module) if m in MODULES and (m == CLI or m.startswith(CLI + "."))} - {module}


def test_the_cli_package_has_its_modules():
    assert set(cli_modules()) >= NOT_COMMANDS
    assert not (SYNTH / "cli.py").exists()
    assert not [m for m in ("dedup_cli", "decontam_cli", "models_cli", "cli_docs") if f"synth.{m}" in MODULES]


def test_command_modules_import_only_common_from_the_cli():
    commands = [m for m in cli_modules() if m not in NOT_COMMANDS]
    assert len(commands) >= 5
    for module in commands:
        assert cli_imports(module) <= {f"{CLI}.common"}, f"{module} imports {cli_imports(module)}"
    assert cli_imports(f"{CLI}.common") == set()


def test_cli_modules_form_no_import_cycle():
    graph = {m: cli_imports(m) for m in cli_modules()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join([*path[path.index(module) :], module])
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_private_name_crosses_cli_modules():
    for module in cli_modules():
        private = [
            f"{m}.{name}"
            for m, name in imports(module)
            if m in MODULES and name and name.startswith("_") and not name.endswith("__")
        ]
        assert not private, f"{module} imports private names {private}"


def test_nothing_below_the_cli_imports_it():
    for module in MODULES:
        if module == CLI or module.startswith(CLI + "."):
            continue
        upward = {m for m, _ in imports(module) if m == CLI or m.startswith(CLI + ".")}
        assert not upward, f"{module} imports the CLI ({upward})"


def test_help_lists_the_same_commands_and_python_m_runs_it():
    done = subprocess.run([sys.executable, "-m", "synth.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: python -m synth.cli [OPTIONS] COMMAND [ARGS]...")
    listed = re.findall(r"^  (\S+)", done.stdout.split("Commands:\n", 1)[1], re.M)
    assert listed == COMMANDS


def test_docs_generator_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "synth.cli.docs"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (REPO / "docs" / "cli.md").read_text()


def test_the_cli_starts_without_heavy_imports():
    code = "import sys, synth.cli; print(*[m for m in HEAVY if m in sys.modules])"
    heavy = ("pyarrow", "pydantic", "numpy", "synth.stages", "synth.run", "synth.config")
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {heavy!r}; {code}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], "synth --help should not import these; import them inside the command"
