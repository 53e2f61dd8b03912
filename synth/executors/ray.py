"""`executor: ray`: map stages' batches run in Ray actors, one pool per stage (docs/ray.md).

The driver (the `synth run` process) keeps everything else: it reads the source, runs global
stages, writes every shard and marker, the manifest and the output, exactly as on the local
executor, so a run started on Ray is inspected, exported and resumed like any other (on either
executor). A map stage's pool is started at its first batch: `run: resources: <label>:` sets its
size and what each actor holds (CPUs, GPUs, custom resources); each actor opens the stage once.
An actor that dies (its process killed, its node lost) is restarted by Ray and the batch it held
is sent again; answers it had received are in the cache already, so they are not asked again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependency, RunError
from ..llm.client import current_counters, current_ticker

if TYPE_CHECKING:
    from ..config import Pipeline
    from ..stages.base import Batch, Row, Stage
    from . import Plan

NAMESPACE = "synth"
CLOSE_SECONDS = 60.0  # how long stop() waits for actors to close their stages before killing them
DEFAULT_CPUS = 0.01  # what an actor holds unless run.resources says: it mostly waits on a server
WAIT_NOTE_SECONDS = 60.0  # how often to say that a stage's actors still wait to be placed or opened


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "ray", "executor: ray") from None
    return ray


@dataclass
class Pool:
    """A map stage's actors, each taking batches concurrently; a batch goes to the least busy."""

    label: str
    actors: list[Any]
    max_restarts: int
    busy: list[int] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)  # node id -> batches done there (this session)
    retried: int = 0
    start_seconds: float = 0.0  # from asking for the actors to all of them having opened the stage
    placed: list[str] = field(default_factory=list)  # each actor's node id

    turn: int = 0

    def take(self) -> int:
        """The least busy actor, ties taken in turn (so idle actors all get work)."""
        count = len(self.actors)
        n = min(((self.turn + k) % count for k in range(count)), key=self.busy.__getitem__)
        self.turn = (n + 1) % count
        self.busy[n] += 1
        return n

    def give(self, n: int) -> None:
        self.busy[n] -= 1


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        self.plan: Plan | None = None
        self.pools: dict[int, Pool] = {}
        self._starting: dict[int, asyncio.Lock] = {}
        self.cache_server = None
        self.initialized_here = False
        self.started_seconds = 0.0
        self.gcs_address: str | None = None
        self.cache_name = ""

    # ---- life cycle ----
    @property
    def pipeline(self):
        assert self.plan is not None, "start() first"
        return self.plan.pipeline

    async def start(self, plan: Plan) -> None:
        ray = _ray()
        self.plan = plan
        started = time.perf_counter()
        if not ray.is_initialized():
            where = self.address or os.environ.get("RAY_ADDRESS") or "a cluster on this machine, else a new one"
            plan.note(f"connecting to Ray ({where})")
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if self.address == "local":
                kwargs["include_dashboard"] = False
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise RunError(
                    f"cannot join the Ray cluster at {self.address or 'the default address'}: {exc}; start one with "
                    "'ray start --head', or set run.address / --address (or 'local' for a private one)"
                ) from None
            self.initialized_here = True
        self.gcs_address = ray.get_runtime_context().gcs_address
        self._check_resources(ray)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .ray_actors import CacheServer

        here = ray.get_runtime_context().get_node_id()
        # Named, so actors find it by name: a handle among an actor's constructor arguments would put
        # them in the object store, from where a restarted actor could lose them.
        self.cache_name = f"synth-cache-{uuid.uuid4().hex}"
        server = ray.remote(CacheServer).options(
            name=self.cache_name,
            namespace=NAMESPACE,
            num_cpus=0,
            max_concurrency=8,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        )
        self.cache_server = server.remote(str(plan.cache_path), plan.session)
        self.started_seconds = time.perf_counter() - started

    def runs_here(self, index: int) -> bool:
        return self.pipeline.stages[index].cls.driver_only()

    def _check_resources(self, ray) -> None:
        """A stage asking for what no node has would wait forever: refuse it, named."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        for label, res in self.pipeline.run.resources.items():
            need = {"CPU": res.num_cpus or 0, "GPU": res.num_gpus, **res.custom}
            need = {k: v for k, v in need.items() if v}
            if need and not any(all(n["Resources"].get(k, 0) >= v for k, v in need.items()) for n in nodes):
                have = "; ".join(
                    ", ".join(f"{k}: {v:g}" for k, v in sorted(n["Resources"].items()) if "node:" not in k)
                    for n in nodes
                )
                raise RunError(
                    f"stage '{label}' asks each Ray actor for {need}, and no node of the cluster has that (nodes: "
                    f"{have}); add a node that has it (ray start --address ... --resources ...) or change "
                    f"run.resources.{label}"
                )
        # Actors hold what they ask for as long as they live: every pool at once must fit the cluster.
        wanted: dict[str, float] = {}
        for res in self.pipeline.run.resources.values():
            for k, v in {"GPU": res.num_gpus, **res.custom}.items():
                wanted[k] = wanted.get(k, 0) + v * res.actors
        total = ray.cluster_resources()
        for k, v in sorted(wanted.items()):
            if v > total.get(k, 0) + 1e-9:
                raise RunError(
                    f"the stages' actor pools together hold {v:g} of resource '{k}' and the cluster has "
                    f"{total.get(k, 0):g}, so some would wait forever; give each a share (e.g. {{{k}: 0.5}}), fewer "
                    "actors, or add nodes (run.resources in the pipeline file)"
                )
        for spec in self.pipeline.stages:
            res = self.pipeline.run.resources.get(spec.label)
            for name in spec.cls.backend_names(spec.params):
                backend = self.pipeline.backends.get(name)
                tp = int(getattr(backend, "engine_args", {}).get("tensor_parallel_size") or 1)
                if res is not None and 0 < res.num_gpus < tp:
                    raise RunError(
                        f"stage '{spec.label}': backend '{name}' runs tensor_parallel_size={tp} but each actor holds "
                        f"{res.num_gpus:g} GPU(s); set run.resources.{spec.label}.num_gpus: {tp}"
                    )

    async def _pool(self, index: int) -> Pool:
        if index in self.pools:
            return self.pools[index]
        async with self._starting.setdefault(index, asyncio.Lock()):
            if index not in self.pools:
                self.pools[index] = await self._start_pool(index)
        return self.pools[index]

    async def _start_pool(self, index: int) -> Pool:
        from .ray_actors import StageActor

        ray = _ray()
        plan = self.plan
        assert plan is not None
        spec = self.pipeline.stages[index]
        res = self.pipeline.run.resources.get(spec.label)
        actors_wanted = res.actors if res else 1
        per_actor = -(-plan.batches_in_flight[plan.segment_of(index)] // actors_wanted) + 1
        # A class of its own per stage: the actor's process is then named ray::SynthStage_<label>.
        cls = type(f"SynthStage_{re.sub(r'[^A-Za-z0-9_]', '_', spec.label)}", (StageActor,), {})
        options: dict[str, Any] = {
            "max_concurrency": per_actor,
            "max_restarts": res.max_restarts if res else 3,
            "max_task_retries": 0,  # a lost batch is sent again by process(), which counts it
        }
        # Explicit CPUs: with any resource named, Ray's default would hold one CPU per actor for its
        # life. A hundredth by default, not 0: Ray ignores a soft node affinity (spread()) for an
        # actor that asks for nothing and puts the whole pool on the driver's node.
        options["num_cpus"] = res.num_cpus if res is not None and res.num_cpus is not None else DEFAULT_CPUS
        if res is not None:
            options.update(num_gpus=res.num_gpus, resources=dict(res.custom))
        names = spec.cls.backend_names(spec.params)
        setup = {
            "cls": spec.cls,
            "params": spec.params,
            "label": spec.label,
            "index": spec.index,
            "seed": self.pipeline.seed,
            "base_dir": str(self.pipeline.base_dir),
            "stage_dir": str(plan.stage_dirs[index]),
            "limit": plan.limit,
            "backends": {n: self.pipeline.backends[n] for n in names if n in self.pipeline.backends},
            "env": _forwarded_env(self.pipeline, names),
            "cache": (self.cache_name, NAMESPACE),
        }
        plan.note(f"starting {actors_wanted} Ray actor(s) for stage '{spec.label}'")
        started = time.perf_counter()
        actor_cls = ray.remote(cls)
        actors = [
            actor_cls.options(**options, scheduling_strategy=spread(ray, options, index + n)).remote(setup)
            for n in range(actors_wanted)
        ]
        pool = Pool(spec.label, actors, options["max_restarts"], busy=[0] * len(actors))
        waiting = asyncio.ensure_future(asyncio.gather(*(a.ready.remote() for a in actors)))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=WAIT_NOTE_SECONDS)
                if done:
                    pool.placed = list(waiting.result())
                    break
                wants = {**(options.get("resources") or {}), **({"GPU": res.num_gpus} if res and res.num_gpus else {})}
                plan.note(
                    f"stage '{spec.label}': its Ray actors are not running yet (waiting for a node with "
                    f"{wants or 'a free slot'}, or still opening the stage)"
                )
        except ray.exceptions.RayTaskError as exc:
            _raise_cause(exc)
        finally:
            waiting.cancel()
        pool.start_seconds = time.perf_counter() - started
        return pool

    async def stop(self) -> None:
        try:
            ray = _ray()
        except MissingDependency:
            return
        if not ray.is_initialized():
            return
        actors = [a for pool in self.pools.values() for a in pool.actors]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(a.close.remote() for a in actors), return_exceptions=True), CLOSE_SECONDS
            )
        except (asyncio.TimeoutError, Exception):
            pass
        for actor in [*actors, self.cache_server]:
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:
                    pass
        if self.initialized_here:
            ray.shutdown()

    # ---- batches ----
    async def process(self, index: int, stage: Stage, batch: Batch) -> list[Row]:
        if self.runs_here(index):
            return await stage.process(batch)
        ray = _ray()
        pool = await self._pool(index)
        attempts = 0
        while True:
            n = pool.take()
            try:
                result = await pool.actors[n].process.remote(batch.index, batch.rows)
                break
            except ray.exceptions.RayTaskError as exc:
                _raise_cause(exc)
            except ray.exceptions.RayActorError as exc:  # its process or node died: Ray restarts it
                attempts += 1
                pool.retried += 1
                if attempts > pool.max_restarts:
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    raise RunError(
                        f"stage '{pool.label}': batch {batch.index} lost its Ray actor {attempts} times ({first}); "
                        f"see the actor's log (ray logs, or /tmp/ray/session_latest/logs on its node), or raise "
                        f"run.resources.{pool.label}.max_restarts"
                    ) from None
                await asyncio.sleep(min(0.5 * 2**attempts, 10.0))
            finally:
                pool.give(n)
        for row, reason, detail, failed, position in result["dropped"]:
            batch.dropped.add(row if row is not None else position, reason, detail, failed)
        for k, v in result["counters"].items():
            batch.counters[k] = batch.counters.get(k, 0) + v
        counters = current_counters.get()
        if counters is not None:
            for k, v in result["traffic"].items():
                counters[k] = counters.get(k, 0) + v
        ticker = current_ticker.get()
        if ticker is not None and result["traffic"].get("completion_tokens"):
            ticker.progress.advance(ticker.label, 0, result["traffic"]["completion_tokens"])
        pool.nodes[result["node"]] = pool.nodes.get(result["node"], 0) + 1
        return result["rows"]

    def record(self, session: dict) -> None:
        session["executor"] = {
            "type": "ray",
            "address": self.gcs_address,
            "start_seconds": round(self.started_seconds, 3),
            "stages": {
                pool.label: {
                    "actors": len(pool.actors),
                    "start_seconds": round(pool.start_seconds, 3),
                    "placed": list(pool.placed),
                    "nodes": dict(pool.nodes),
                    "batches_retried": pool.retried,
                }
                for pool in self.pools.values()
            },
        }


def spread(ray, options: dict[str, Any], n: int):
    """The n-th node (round robin; n counts stages and actors) that has what an actor asks for:
    Ray's SPREAD left a pool of actors that hold no resources on one node. Soft: a node that dies
    or fills up leaves Ray free to place (or restart) the actor elsewhere."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    need = {"CPU": options.get("num_cpus") or 0, "GPU": options.get("num_gpus") or 0, **options.get("resources", {})}
    nodes = sorted(
        n["NodeID"]
        for n in ray.nodes()
        if n.get("Alive") and all(n["Resources"].get(k, 0) >= v for k, v in need.items() if v)
    )
    if not nodes:
        return "DEFAULT"
    return NodeAffinitySchedulingStrategy(node_id=nodes[n % len(nodes)], soft=True)


def _raise_cause(exc) -> None:
    """The stage's own exception (a SynthError names its fix), not Ray's wrapper around it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        raise cause from None
    raise exc


def _forwarded_env(pipeline: Pipeline, backends: list[str]) -> dict[str, str]:
    """What a stage reads from the environment, which Ray workers do not inherit from the driver:
    --allow-read/--allow-key, and the API keys its backends name."""
    from ..inputs import ALLOW_KEYS_ENV, ALLOW_READ_ENV

    names = {ALLOW_KEYS_ENV, ALLOW_READ_ENV}
    for name in backends:
        key = getattr(pipeline.backends.get(name), "api_key_env", None)
        if key:
            names.add(key)
    return {k: os.environ[k] for k in names if k in os.environ}
