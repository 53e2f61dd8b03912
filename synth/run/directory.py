"""A run's directory as a run opens it: the manifest, a folder per stage, and what a resume redoes.

Opening a run directory decides which shards stand. A stage whose fingerprint changed (its
parameters, templates or input files) starts over; shards whose files went missing or were cut
short are forgotten with the rest of their batch's segment; on a resume of a run that did not
complete, rows that failed are forgotten too, so they run again. Everything forgotten is computed
again with its LLM requests answered from the cache.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
from importlib import metadata
from typing import TYPE_CHECKING

from ..errors import RunError
from ..seeds import digest
from ..store import RunStore, StageDir

if TYPE_CHECKING:
    from ..config import Pipeline
    from ..progress import Progress

RECORDED_PACKAGES = (
    "synth",
    "pyarrow",
    "pydantic",
    "jinja2",
    "llama_cpp_python",
    "openai",
    "vllm",
    "datasets",
    "faiss-cpu",
    "sentence-transformers",
    "torch",
)


def package_versions() -> dict[str, str]:
    found = {}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def segments(pipeline: Pipeline) -> list[list[int]]:
    """Stage positions cut at every source and global stage: a batch travels through one segment
    on its own; a global stage waits for every row of the stage before it."""
    found: list[list[int]] = []
    for i, spec in enumerate(pipeline.stages):
        if spec.cls.kind in ("source", "global") or not found:
            found.append([i])
        else:
            found[-1].append(i)
    return found


class RunDirectory:
    """The run directory of one session: opened (locked, manifest written, stage folders ready)
    by `open`, its stage folders in `dirs`."""

    def __init__(self, pipeline: Pipeline, store: RunStore, limit: int | None, progress: Progress):
        self.pipeline = pipeline
        self.store = store
        self.limit = limit
        self.progress = progress
        self.segments = segments(pipeline)
        self.dirs: list[StageDir] = []
        self.earlier_wall: dict[str, float] = {}  # stage label -> wall seconds of earlier sessions

    def open(self, overwrite: bool, retry_failed: bool | None) -> dict:
        """Lock the directory, write this session's manifest, prepare every stage's folder and
        forget what must be redone; returns the manifest."""
        store = self.store
        store.lock()
        if store.exists() and overwrite:
            store.wipe()
        previous = store.read_manifest() if store.exists() else None
        if previous is not None:
            self._check_owner(previous)
        known = dict((previous or {}).get("input_digests") or {})
        # The row limit decides shard boundaries, so it belongs to every stage's fingerprint.
        # (Computed first: it records the digests of input files in `known`, which the manifest keeps.)
        fingerprints = [digest([fp, self.limit]) for fp in self.pipeline.stage_fingerprints(known)]
        manifest = {
            "synth_manifest": 1,
            "name": self.pipeline.name,
            "pipeline_file": str(self.pipeline.path),
            "fingerprint": self.pipeline.fingerprint(known),
            "seed": self.pipeline.seed,
            "limit": self.limit,
            "config": self.pipeline.text,
            "backends": {k: v.identity() for k, v in self.pipeline.backends.items()},
            "models": self._stage_models(),
            "templates": self._template_hashes(),
            "input_digests": known,
            "python": platform.python_version(),
            "packages": package_versions(),
            "sessions": (previous or {}).get("sessions", []),
            "status": "running",
        }
        if previous is not None and previous.get("output") and (store.root / "output").is_dir():
            manifest["output"] = previous["output"]  # still there until a successful run replaces it
        manifest["sessions"].append({"started": dt.datetime.now(dt.timezone.utc).isoformat(), "status": "running"})
        (store.root / "pipeline.yaml").write_text(self.pipeline.text, encoding="utf-8")
        store.write_manifest(manifest)
        self._prepare_stages(fingerprints, previous)
        removed = self._remove_stale_stages()
        if removed:
            manifest["sessions"][-1]["removed_stages"] = removed
        self._forget_broken()
        retry = retry_failed
        if retry is None:  # by default a resume retries what failed, unless the run had completed
            retry = previous is not None and previous.get("status") != "complete"
        if retry:
            self._forget_failures()
        return manifest

    def _check_owner(self, previous: dict) -> None:
        """A run directory is resumed only by the pipeline that made it: the same name, and the
        same file or at least one stage still valid. Anything else would replace its output and
        leave its stage folders beside the new ones, so it is refused, saying what is there."""
        name, path = previous.get("name"), previous.get("pipeline_file")
        if name in (None, self.pipeline.name):  # (a manifest without a name: judged by its stages)
            if path == str(self.pipeline.path) or self._shares_a_stage(previous):
                return
            why = f"made by {path}, which shares no stage with {self.pipeline.path}"
        else:
            why = f"a run of another pipeline, '{name}' ({path}), not '{self.pipeline.name}'"
        status = previous.get("status", "unknown")
        status = "interrupted" if status == "running" else status  # this process holds the lock now
        rows = (previous.get("output") or {}).get("rows")
        held = f", {rows:,} rows in output/" if isinstance(rows, int) else ""
        raise RunError(
            f"{self.store.root} holds {why} ({status}{held}); choose another run directory with -o, or add "
            "--overwrite to delete that run and start this one there"
        )

    def _shares_a_stage(self, previous: dict) -> bool:
        """Whether a stage folder of the run holds a stage of this pipeline, unchanged."""
        known = dict(previous.get("input_digests") or {})
        mine = {digest([fp, self.limit]) for fp in self.pipeline.stage_fingerprints(known)}
        for meta in (self.store.root / "stages").glob("*/.synth/stage.json"):
            try:
                if json.loads(meta.read_text()).get("fingerprint") in mine:
                    return True
            except (OSError, ValueError, AttributeError):
                continue
        return False

    def _remove_stale_stages(self) -> list[str]:
        """Stage folders of stages this pipeline no longer has (removed, renamed or moved): deleted,
        so the run directory holds only this pipeline's stages; returns their names."""
        keep = {d.path.name for d in self.dirs}
        stale = sorted(p.name for p in (self.store.root / "stages").iterdir() if p.is_dir() and p.name not in keep)
        for name in stale:
            shutil.rmtree(self.store.root / "stages" / name)
        if stale:
            self.progress.note(f"removed the folders of stages this pipeline no longer has: {', '.join(stale)}")
        return stale

    def _prepare_stages(self, fingerprints: list[str], previous: dict | None) -> None:
        earlier = {e.get("label"): e.get("wall_seconds", 0.0) for e in (previous or {}).get("stages", [])}
        for spec, fp in zip(self.pipeline.stages, fingerprints, strict=True):
            stage_dir, discarded = self.store.prepare_stage(spec.index, spec.label, fp)
            if not discarded and isinstance(earlier.get(spec.label), (int, float)):
                self.earlier_wall[spec.label] = float(earlier[spec.label])
            if discarded:
                self.progress.note(
                    f"stage '{spec.label}' changed since the last run (its parameters, templates or input files): "
                    f"recomputing it (LLM answers already cached are reused)"
                )
            self.dirs.append(stage_dir)

    def _forget_broken(self) -> None:
        """Shards whose files went missing or were cut short (a copy of the run stopped halfway, a
        power cut before the disk caught up) are forgotten with the rest of their batch's segment,
        and so are batches a later stage finished but an earlier one has no marker for: computed
        again, their requests from the cache."""
        from ..integrity import forget_broken

        redone: list[str] = []
        for segment in self.segments:
            before: set[int] | None = None  # batches the previous stage of the segment has done
            for p, i in enumerate(segment):
                broken = set(forget_broken(self.dirs[i]))
                done = set(self.dirs[i].done_indices())
                if before is not None:  # done here but not in the stage before: redo it from there
                    broken |= done - before
                    done &= before
                for index in sorted(broken):
                    redone.append(f"{self.dirs[i].path.name}/shard-{index:05d}")
                    for j in segment[p:]:
                        self.dirs[j].forget(index)
                before = done
        if redone:
            shown = ", ".join(redone[:3]) + (f" and {len(redone) - 3} more" if len(redone) > 3 else "")
            self.progress.note(f"recomputing {len(redone)} shard(s) whose files are missing or damaged: {shown}")

    def _forget_failures(self) -> None:
        """Make rows that failed (a request that ran out of retries, an empty or unparseable
        answer) run again: each shard with failures is redone from the first stage that failed in
        it, and every stage after that segment is redone whole, since its input changes. Rows a
        filter dropped stay dropped; answers already cached are reused, failures never cached."""
        retried, changed = 0, False
        for segment in self.segments:
            if changed:
                for i in segment:
                    self.dirs[i].clear()
                continue
            head = segment[0]
            if self.pipeline.stages[head].cls.kind == "global" and self.dirs[head].failed_rows(0):
                retried += self.dirs[head].failed_rows(0)
                for i in segment:
                    self.dirs[i].clear()
                changed = True
                continue
            for index in sorted({n for i in segment for n in self.dirs[i].done_indices()}):
                first = next((p for p, i in enumerate(segment) if self.dirs[i].failed_rows(index)), None)
                if first is None:
                    continue
                retried += self.dirs[segment[first]].failed_rows(index)
                for i in segment[first:]:
                    self.dirs[i].forget(index)
                changed = True
        if retried:
            self.progress.note(f"retrying {retried:,} row(s) that failed in the last run (--keep-failed keeps them)")

    def _stage_models(self) -> dict[str, list[str]]:
        """Which model made each stage's columns, by name (a file or a repo id), for the card."""
        found: dict[str, list[str]] = {}
        for spec in self.pipeline.stages:
            names = [
                self.pipeline.backends[b].model_name()
                for b in spec.cls.backend_names(spec.params)
                if b in self.pipeline.backends
            ]
            model = getattr(spec.params, "model", None)  # a local model folder (reward, embeddings)
            if isinstance(model, str) and model:
                names.append(model)
            if names:
                found[spec.label] = list(dict.fromkeys(names))
        return found

    def _template_hashes(self) -> dict[str, str]:
        """sha256 of every prompt template a stage names, for the manifest and the dataset card."""
        from ..stages.common import template_sha
        from ..templating import template_problem

        found = {}
        for spec in self.pipeline.stages:
            for value in spec.params.model_dump().values():
                if (
                    isinstance(value, str)
                    and value.endswith(".jinja")
                    and not template_problem(value, self.pipeline.base_dir)
                ):
                    found[value] = template_sha(value, self.pipeline.base_dir)
        return found
