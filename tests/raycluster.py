"""Real Ray for tests: a loopback-only network namespace, real `ray start` nodes, and a server
that records what it is asked.

Ray binds to the machine's outside address even when told to use 127.0.0.1, and tests may only
talk to loopback, so every Ray process of a test runs in a network namespace whose only interface
is `lo`. `loopback_namespace()` moves the calling thread (pytest's main thread) into a new one and
back: the processes and threads it starts meanwhile (Ray nodes, drivers, the server's thread) are
born there. That takes root (CAP_SYS_ADMIN); `namespace_problem()` says why it cannot be done.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from synth.testing import GpuLikeServer, free_port

CLONE_NEWNET = 0x40000000
RAY = str(Path(sys.executable).parent / "ray")
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def namespace_problem() -> str | None:
    """Why Ray tests cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "a loopback-only network namespace (unshare -n) needs root"
    if not Path(RAY).exists():
        return "ray is not installed (pip install 'synth[ray]')"
    try:
        subprocess.run(["ip", "-V"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "the 'ip' command (iproute2) is missing"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    return None


@contextmanager
def loopback_namespace() -> Iterator[None]:
    """Run the calling thread in a new network namespace with only `lo` (up), then go back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
    finally:
        os.close(home)


NODES_SCRIPT = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.time() + 120
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= int(sys.argv[2]) or time.time() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes]))
"""


class RayCluster:
    """A head node and a second node with custom resource `node2`, each a `ray start --block`
    in its own process group, stopped by signalling those groups."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self.address = ""
        self.nodes: dict[str, str] = {}  # "head" / "node2" -> node id

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the node writes it until stopped
        env = {**os.environ, **RAY_ENV}
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.procs.append(proc)

    def nodes_alive(self, count: int) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-c", NODES_SCRIPT, self.address, str(count)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **RAY_ENV},
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot list the cluster's nodes: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._start(["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard=false"], "head")
        head = self.nodes_alive(1)
        self._start(["--address", self.address, "--num-cpus", "1", "--resources", '{"node2": 1}'], "node2")
        nodes = self.nodes_alive(2)
        if len(nodes) < 2:
            raise RuntimeError(f"the second node did not join: see {self.logs / 'node2.log'}")
        self.nodes["head"] = head[0]["id"]
        self.nodes["node2"] = next(n["id"] for n in nodes if "node2" in n["resources"])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)  # a node drains for up to 30 s: nothing here needs that
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the node left in its group
            except ProcessLookupError:
                pass


def actor_pids(stage: str) -> list[int]:
    """Processes of the Ray actors serving `stage` (their title is ray::SynthStage_<label>)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(f"ray::SynthStage_{stage}"):
            found.append(int(entry.name))
    return found


class EchoServer(GpuLikeServer):
    """An OpenAI-compatible server whose answer depends on the prompt and the seed (so rows made
    from the wrong request differ), taking `latency` seconds per request; it records the
    (prompt, seed) of every request it answers, in order."""

    def __init__(self, latency: float = 0.2):
        super().__init__(capacity=64, latency=latency, per_token=0.0)
        self.seen: list[tuple[str, int]] = []

    def _reply(self, path: str, request: dict, tokens: int = 1) -> tuple[int, bytes]:
        if not path.endswith("/completions"):
            return super()._reply(path, request, tokens)
        prompt = request.get("prompt") if isinstance(request.get("prompt"), str) else json.dumps(request)
        seed = int(request.get("seed") or 0)
        self.seen.append((prompt, seed))
        tail = " ".join(prompt.split()[-2:])
        text = f"{tail} {hashlib.blake2b(f'{prompt}|{seed}'.encode(), digest_size=4).hexdigest()}"
        choices = [{"index": 0, "finish_reason": "stop", "text": text}]
        usage = {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}
        return 200, json.dumps({"object": "text_completion", "choices": choices, "usage": usage}).encode()

    def wait_idle(self, quiet: float = 1.0, timeout: float = 60.0) -> None:
        """Until nothing is in flight and no request came for `quiet` seconds."""
        deadline = time.time() + timeout
        count, since = len(self.seen), time.time()
        while time.time() < deadline:
            time.sleep(0.1)
            if len(self.seen) != count or self.in_flight:
                count, since = len(self.seen), time.time()
            elif time.time() - since >= quiet:
                return
        raise TimeoutError("the server kept getting requests")
