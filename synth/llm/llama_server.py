"""`python -m synth.llm.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server, made safe
on AMX CPUs the way synth's embedded backend is.

`python -m llama_cpp.server` loads its model in its own process, so the mitigation in `cpu`
(taking "AMX" out of ggml's extra buffer types before the load) never runs there, and on a CPU and
build that both have AMX the first completion kills the server. This entry point applies it first,
then hands the same arguments to `llama_cpp.server` unchanged.
"""

from __future__ import annotations

import contextlib
import runpy
import sys

from . import cpu


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    guard: contextlib.AbstractContextManager = contextlib.nullcontext()
    if cpu.plan().mitigate and cpu.drop_extra_buffer_types([cpu.AMX_BUFT]) is None:
        guard = cpu.without_extra_buffer_types()  # the registry is out of reach: the last resort
    with guard:
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
