"""The exception tree. The CLI turns every `SynthError` into a one-line message, no traceback.

SynthError
 ├── ConfigError        a pipeline file is wrong (carries every problem, each with file:line)
 ├── InputError         an input file or dataset cannot be read
 ├── RunError           a run directory cannot be used as asked (locked, changed, missing)
 │    └── BudgetReached  the run's budget would be exceeded by the next request: it stops there
 ├── MissingDependency  an optional extra is not installed (names the pip command)
 └── BackendError       an LLM server or engine failed after its retries
"""

from __future__ import annotations

from dataclasses import dataclass


class SynthError(Exception):
    """Root of every error synth raises on purpose; its message names the fix."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file, located as precisely as we can."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class ConfigError(SynthError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class InputError(SynthError):
    pass


class RunError(SynthError):
    pass


class BudgetReached(RunError):
    """Raised by the LLM client when the next request could exceed `run.budget`: requests already
    sent finish and are cached, the batches that completed are written, and the run ends with
    status `budget` (resumable with a higher `--budget`)."""


class MissingDependency(SynthError):
    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs the '{package}' package: install it with pip install 'synth[{extra}]'")
        self.package = package
        self.extra = extra


class BackendError(SynthError):
    pass


def closest(name: str, options: list[str]) -> str | None:
    """The option a typo most likely meant, for "did you mean" in a message; None if none is near."""
    import difflib

    found = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return found[0] if found else None
