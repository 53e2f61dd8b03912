"""A pipeline file, validated. Every problem is collected (not just the first), each with
file:line and the field, and each message says what would be valid.

The file format:

    name: my-run                # run directory name under runs/ (default: the file's stem)
    seed: 42                    # every sampling seed derives from this
    backends:                   # optional; with none, the embedded llama.cpp model is used
      default: {type: local}
    stages:                     # in order; `stage:` picks the stage, the other keys are its params
      - stage: load
        path: data/topics.jsonl
      - stage: generate
        template: quickstart/question.jinja
        output: question
    output: {format: sft}
    run: {batch_size: 64}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import registry
from .budget import Budget
from .errors import ConfigError, Problem, SynthError
from .llm.specs import BackendSpecBase, LocalSpec
from .registry import closest, get_backend_spec, get_stage, stage_names, unknown
from .seeds import digest
from .stages.base import CheckEnv, Stage, StageParams
from .yamlfile import YamlDoc, format_path, load_yaml_file

FINGERPRINT_VERSION = 2  # 2: template and data file contents joined the fingerprint


class StageResources(BaseModel):
    """`run: resources: <label>:` what each Ray actor of a map stage asks for, and how many there are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actors: int = Field(1, ge=1, le=10_000, description="actors in the stage's pool (each opens the stage once)")
    num_cpus: float | None = Field(
        None,
        ge=0,
        description="CPUs each actor holds (default 0.01: it mostly waits on a server; give CPU-bound stages, "
        "llama.cpp or a reward model on CPU, their threads' worth)",
    )
    num_gpus: float = Field(0, ge=0, description="GPUs each actor holds (a vllm backend: its tensor_parallel_size)")
    custom: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each actor holds, e.g. {node2: 1} or {A100: 1}"
    )
    max_restarts: int = Field(
        3, ge=0, le=1000, description="times a dead actor is restarted (its batch sent again) before the run fails"
    )


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # 256: each shard costs a Parquet file, a marker and their fsyncs; at 64 rows that fixed cost
    # held synth to 0.55 of a bare client's requests/s, at 256 to 0.66-0.74 (benchmarks/README.md),
    # and 4M rows make 16k shards per stage instead of 62k. Answers are cached one by one, so a
    # killed batch loses no request whatever its size.
    batch_size: int = Field(256, ge=1, le=1_000_000, description="rows per shard: the unit of checkpointing")
    # Excluded from the fingerprint: changes speed and memory, never rows.
    max_batches_in_flight: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="batches processed concurrently (default: enough to keep three times the backends' "
        "max_concurrency of rows in flight, at least 4, so a server never waits on a batch's slowest request)",
    )
    max_failure_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="the run fails (exit 1) when a stage loses a larger share of its rows to failures (requests "
        "that ran out of retries, empty or unparseable answers); filters do not count",
    )
    # Where map stages run (docs/ray.md); like the two above, never part of the fingerprint.
    executor: str = Field(
        "local",
        description="a registered executor: 'local' (this process) or 'ray' (map stages' batches run in Ray actors, a "
        "pool per stage), or one a plugin adds",
    )
    address: str | None = Field(
        None,
        description="the Ray cluster to join ('auto': the one `ray start` made on this machine, 'local': start a "
        "private one, HOST:PORT); default: RAY_ADDRESS, else a cluster started on this machine, else a private one",
    )
    resources: dict[str, StageResources] = Field(
        default_factory=dict,
        description="per map stage label: the size of its actor pool and what each actor asks Ray for (executor: ray)",
    )
    # Not in the fingerprint either: it decides where a run stops, never what a row holds.
    budget: Budget | None = Field(
        None,
        description="stop before the next request could exceed this (cost at the backends' pricing, tokens or "
        "requests, for the whole run across resumes); resume with a higher --budget",
    )


class PushSettings(BaseModel):
    """`output: push_to_hub:` in a pipeline file: pushed when `synth run` completes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="user-or-org/name")
    private: bool = True
    format: Literal["sft", "preference", "kto", "raw"] = "sft"
    test_size: float = Field(0.0, ge=0, lt=1)
    seed: int = 42
    license: str | None = None


class OutputSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["raw", "sft"] = "raw"
    instruction_column: str = "instruction"
    response_column: str = "response"
    columns: list[str] | None = Field(None, description="keep only these columns (raw format)")
    push_to_hub: PushSettings | None = Field(None, description="push the dataset when `synth run` completes")


class PipelineFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        max_length=100,
        description="the run directory's name under runs/: letters, digits, '_', '.', '-', not starting with '.' "
        "or '-'",
    )
    description: str = ""
    seed: int = 0
    backends: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> settings, each with a registered `type:` (local, openai, vllm...)"
    )
    stages: list[dict[str, Any]] = Field(min_length=1)
    output: OutputSettings = Field(default_factory=OutputSettings)
    run: RunSettings = Field(default_factory=RunSettings)


@dataclass
class StageSpec:
    index: int
    key: str
    label: str
    params: StageParams
    cls: type[Stage]
    line: int | None = None
    doc: YamlDoc | None = field(default=None, repr=False)  # the file that defined it (a preset or the pipeline)
    where: tuple = ()


@dataclass
class Pipeline:
    path: Path
    name: str
    description: str
    seed: int
    backends: dict[str, Any]
    stages: list[StageSpec]
    output: OutputSettings
    run: RunSettings
    text: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def stage_fingerprints(self, known: dict | None = None) -> list[str]:
        """Cumulative fingerprint per stage: stage k's shards stay valid while stages 0..k, the
        seed, the batch size, the models they use and the contents of the templates and data
        files they read are unchanged. Excluded on purpose: description, run.max_batches_in_flight,
        run.max_failure_rate, run.budget, and every backend field marked speed-only (URLs, keys,
        concurrency, timeouts, retries, threads, pricing). `known` carries file digests between
        runs (see inputs.py)."""
        from .inputs import chat_template_path, content_digest, files_digest, stage_files

        known = {} if known is None else known
        previous = digest({"v": FINGERPRINT_VERSION, "seed": self.seed, "batch_size": self.run.batch_size})
        out = []
        for spec in self.stages:
            model = []
            for backend in spec.cls.backend_names(spec.params):
                if backend not in self.backends:
                    continue
                spec_b = self.backends[backend]
                path = chat_template_path(spec_b)
                if path is not None and path.is_dir():  # a model folder: as the backend reads it
                    path = path / "tokenizer_config.json"
                model.append([spec_b.identity(), content_digest(path, known) if path else None])
            # One backend keeps the shape fingerprints had (a run made before stays valid).
            model = model[0] if len(model) == 1 else (model or None)
            files = files_digest(stage_files(spec.params, self.base_dir), known)
            previous = digest([previous, spec.key, spec.params.model_dump(mode="json"), model, files])
            out.append(previous)
        return out

    def fingerprint(self, known: dict | None = None) -> str:
        # Where the data is pushed changes no row: push_to_hub is left out.
        return digest(
            [self.stage_fingerprints(known), self.output.model_dump(mode="json", exclude={"push_to_hub"})], 16
        )


def run_name(stem: str) -> str:
    """A file's stem made safe as a directory name under runs/: a file named `..yaml` must not
    make the run directory `runs/.`, nor `../x.yaml` anything outside runs/."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).lstrip(".-")[:100]
    return name or "pipeline"


def _field(loc: tuple, doc: YamlDoc) -> str:
    """The field as the user wrote it: drop pydantic's union tags (a backend's `type:` value),
    which are not keys in the file."""
    kept: tuple = ()
    node = doc.data
    for element in loc:
        if isinstance(node, dict) and element not in node and node.get("type") == element:
            continue
        kept += (element,)
        node = (
            node.get(element)
            if isinstance(node, dict)
            else (
                node[element] if isinstance(node, list) and isinstance(element, int) and element < len(node) else None
            )
        )
    return format_path(kept)


def _pydantic_problems(exc: ValidationError, doc: YamlDoc, prefix: tuple, model=None) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        field = _field(loc, doc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            fields = list((model or PipelineFile).model_fields) if len(err["loc"]) == 1 else []
            hint = closest(str(err["loc"][-1]), fields) if fields else None
            allowed = ", ".join(f for f in fields if f != "name") if fields else ""
            msg = "unknown field" + (f"; did you mean '{hint}'?" if hint else "")
            if allowed and not hint:
                msg += f" (valid: {allowed})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(Problem(doc.file, doc.line_of(loc), field, msg))
    return problems


def _find_preset(name: str, base_dir: Path) -> Path | None:
    from .resources import resource_dir

    for folder in (base_dir, resource_dir("filters")):
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    return None


def _preset_label(stage: dict) -> str | None:
    """A preset stage's label, or None when its `name:` or `stage:` is not text (the stage's own
    validation then reports that at the preset's file and line)."""
    label = stage.get("name") or stage.get("stage")
    return label if isinstance(label, str) else None


def _expand_includes(raw: list, doc: YamlDoc, base_dir: Path, problems: list[Problem]) -> list[tuple]:
    """Replace `{include: preset, with: {label: {param: value}}}` entries by the preset's stages;
    `with: {label: false}` leaves that stage out.

    A preset is a YAML file with a `stages:` list (filters/ ships the papers' recipes). Each stage
    keeps a pointer to the file it came from, so a mistake inside a preset is reported at the
    preset's own file:line."""
    entries: list[tuple] = []
    for index, entry in enumerate(raw):
        where = ("stages", index)
        if not (isinstance(entry, dict) and "include" in entry):
            entries.append((entry, doc, where))
            continue
        unknown = set(entry) - {"include", "with"}
        if unknown:
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(where),
                    format_path(where),
                    f"an include takes only 'include' and 'with' (got {', '.join(sorted(unknown))})",
                )
            )
        preset = _find_preset(str(entry["include"]), base_dir)
        if preset is None:
            from .resources import list_resources

            shipped = ", ".join(p.removesuffix(".yaml") for p in list_resources("filters", "*.yaml"))
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of((*where, "include")),
                    format_path((*where, "include")),
                    f"no preset '{entry['include']}' beside the pipeline or in synth's filters/ "
                    f"(shipped: {shipped or 'none'})",
                )
            )
            continue
        sub = load_yaml_file(preset)
        problems += sub.problems
        stages = sub.data.get("stages") if isinstance(sub.data, dict) else None
        if not isinstance(stages, list):
            problems.append(Problem(sub.file, 1, "stages", "a preset is a YAML mapping with a 'stages:' list"))
            continue
        overrides = entry.get("with") or {}
        if not isinstance(overrides, dict):
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of((*where, "with")),
                    format_path((*where, "with")),
                    "'with' maps a preset stage's label to the parameters to change",
                )
            )
            overrides = {}
        labels = [_preset_label(s) for s in stages if isinstance(s, dict)]
        for label in overrides:
            if label not in labels:
                problems.append(
                    Problem(
                        doc.file,
                        doc.line_of((*where, "with", label)),
                        format_path((*where, "with", label)),
                        f"preset '{entry['include']}' has no stage labelled '{label}' "
                        f"(it has: {', '.join(x for x in labels if x) or 'no stage with a valid name'})",
                    )
                )
        for j, stage in enumerate(stages):
            if isinstance(stage, dict):
                label = _preset_label(stage)
                change = overrides.get(label) if label is not None else None
                if change is False:  # `with: {label: false}` leaves that stage out
                    continue
                if change is not None and not isinstance(change, dict):
                    problems.append(
                        Problem(
                            doc.file,
                            doc.line_of((*where, "with", label)),
                            format_path((*where, "with", label)),
                            "give the parameters to change as a mapping, or false to leave the stage out",
                        )
                    )
                    change = None
                stage = {**stage, **(change or {})}
            entries.append((stage, sub, ("stages", j)))
    return entries


def load_pipeline(path: str | Path) -> Pipeline:
    """Parse and validate a pipeline file; raise ConfigError listing every problem found."""
    path = Path(path)
    doc = load_yaml_file(path)
    problems = list(doc.problems)
    if not isinstance(doc.data, dict):
        raise ConfigError([Problem(doc.file, 1, "", "a pipeline file is a YAML mapping with a 'stages:' list")])
    try:
        top = PipelineFile.model_validate(doc.data)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, doc, ())
        top = None
    backends: dict[str, Any] = _parse_backends(top.backends, doc, problems) if top else {}
    if top is not None and "default" not in top.backends:
        backends["default"] = LocalSpec()
    raw_stages = doc.data.get("stages") if isinstance(doc.data.get("stages"), list) else []
    entries = _expand_includes(raw_stages, doc, path.parent, problems)

    specs: list[StageSpec] = []
    parsed: list[StageSpec | None] = []  # None where a stage entry itself is invalid
    labels: dict[str, int] = {}
    for index, (entry, edoc, where) in enumerate(entries):

        def problem(field: tuple, message: str, edoc=edoc, where=where) -> Problem:
            loc = where + field
            return Problem(edoc.file, edoc.line_of(loc), format_path(loc), message)

        if not isinstance(entry, dict):
            problems.append(problem((), "each stage is a mapping with a 'stage:' key"))
            parsed.append(None)
            continue
        key = entry.get("stage")
        if not isinstance(key, str):
            problems.append(problem(("stage",), f"missing 'stage:' (one of: {', '.join(stage_names())})"))
            parsed.append(None)
            continue
        try:
            cls = get_stage(key)
        except SynthError as exc:
            problems.append(problem(("stage",), str(exc)))
            parsed.append(None)
            continue
        body = {k: v for k, v in entry.items() if k != "stage"}
        try:
            params = cls.Params.model_validate(body)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, edoc, where, model=cls.Params)
            parsed.append(None)
            continue
        label = params.name or key
        if label in labels:
            problems.append(
                problem(
                    ("name",),
                    f"two stages are labelled '{label}' (stage {labels[label]} too): give one a different 'name:'",
                )
            )
        labels[label] = index
        specs.append(StageSpec(index, key, label, params, cls, edoc.line_of(where), edoc, where))
        parsed.append(specs[-1])

    raw_backends = doc.data.get("backends")
    names = set(raw_backends) | {"default"} if isinstance(raw_backends, dict) else {"default"}
    problems += _check_flow(parsed, path.parent, names, backends)
    problems += _check_access(specs, backends if top else {}, doc, path.parent)
    problems += _check_resources(top.run if top else None, specs, doc)
    if top is not None and top.run.executor not in registry.names("executors"):
        loc = ("run", "executor")
        problems.append(Problem(doc.file, doc.line_of(loc), format_path(loc), unknown("executors", top.run.executor)))
    problems.sort(key=lambda p: p.line or 0)

    if problems:
        raise ConfigError(problems)
    assert top is not None
    return Pipeline(
        path=path.resolve(),
        name=top.name or run_name(path.stem),
        description=top.description,
        seed=top.seed,
        backends=backends,
        stages=specs,
        output=top.output,
        run=top.run,
        text=path.read_text(encoding="utf-8"),
    )


def _parse_backends(raw: dict[str, dict], doc: YamlDoc, problems: list[Problem]) -> dict[str, BackendSpecBase]:
    """Each backend through the settings class its `type:` registers (a plugin's too); the ones
    that do not parse are left out, their problems named by file, line and field."""
    parsed = {}
    for name, body in raw.items():
        where = ("backends", name)
        kind = body.get("type")
        if not isinstance(kind, str):
            types = ", ".join(registry.names("backends"))
            problems.append(Problem(doc.file, doc.line_of(where), format_path(where), f"give a 'type:' ({types})"))
            continue
        try:
            cls = get_backend_spec(kind)
        except SynthError:
            hint = closest(kind, registry.names("backends"))
            message = f"unknown type '{kind}'" + (f"; did you mean '{hint}'?" if hint else "")
            loc = (*where, "type")
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(loc),
                    format_path(loc),
                    f"{message} (types: {', '.join(registry.names('backends'))})",
                )
            )
            continue
        try:
            parsed[name] = cls.model_validate(body)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, doc, where, model=cls)
    return parsed


def _check_resources(run: RunSettings | None, specs: list[StageSpec], doc: YamlDoc) -> list[Problem]:
    """`run: resources:` names map stages by label: a typo would leave a stage on Ray's defaults."""
    if run is None:
        return []
    maps = [s.label for s in specs if not s.cls.driver_only()]
    problems = []
    for label in run.resources:
        if label not in maps:
            loc = ("run", "resources", label)
            hint = f"did you mean '{closest(label, maps)}'? " if closest(label, maps) else ""
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(loc),
                    format_path(loc),
                    f"no map stage that runs on Ray is labelled '{label}' ({hint}they are: {', '.join(maps) or 'none'}"
                    "; source, global and vectorized filter stages run in the driver)",
                )
            )
    return problems


def _check_access(specs: list[StageSpec], backends: dict, doc: YamlDoc, base_dir: Path) -> list[Problem]:
    """A pipeline may come from a stranger: data files it reads must lie where the user expects
    (see inputs.read_problem) and API keys go only where the user allowed (inputs.key_refusal)."""
    from .inputs import chat_template_path, key_refusal, read_problem, stage_files

    problems = []
    for spec in specs:
        assert spec.doc is not None
        for use in stage_files(spec.params, base_dir):
            if use.kind == "data" and use.path is not None and use.path.exists():
                message = read_problem(use.path, base_dir)
                if message:
                    loc = spec.where + (use.field,)
                    problems.append(Problem(spec.doc.file, spec.doc.line_of(loc), format_path(loc), message))
    for name, backend in backends.items():
        refused = key_refusal(backend) if getattr(backend, "type", "") == "openai" else None
        if refused:
            loc = ("backends", name, "api_key_env")
            problems.append(Problem(doc.file, doc.line_of(loc), format_path(loc), refused))
        # A chat template's text goes into every prompt: a file named there is a data file too.
        path = chat_template_path(backend)
        if path is not None and path.exists():
            message = read_problem(path, base_dir)
            if message:
                loc = ("backends", name, "chat_template")
                problems.append(Problem(doc.file, doc.line_of(loc), format_path(loc), message))
    return problems


def _check_flow(
    specs: list[StageSpec | None], base_dir: Path, backends: set[str], backend_specs: dict[str, Any]
) -> list[Problem]:
    """Stage order, backends named, columns read before they exist, and each stage's own checks.
    Entries that failed to parse are None: the stages after them are still checked, with the
    columns arriving at them unknown."""
    problems: list[Problem] = []
    columns: set[str] | None = set()
    singles: set[str] = set()  # columns last written as one text per row (respond with n: 1)
    for position, spec in enumerate(specs):
        if spec is None:
            columns, singles = None, set()
            continue
        doc, where = spec.doc, spec.where
        assert doc is not None
        if (spec.cls.kind == "source") != (position == 0):
            msg = (
                "the first stage must produce rows (a source such as 'load')"
                if position == 0
                else f"'{spec.key}' produces rows and can only be the first stage"
            )
            problems.append(Problem(doc.file, doc.line_of(where), format_path(where + ("stage",)), msg))
        for key, value in spec.params.model_dump().items():
            if value in spec.cls.backend_names(spec.params) and value not in backends:
                problems.append(
                    Problem(
                        doc.file,
                        doc.line_of(where + (key,)),
                        format_path(where + (key,)),
                        f"no backend named '{value}' (defined: {', '.join(sorted(backends))})",
                    )
                )
        env = CheckEnv(base_dir=base_dir, backends=backends, columns=columns, specs=backend_specs, singles=singles)
        for field_path, message in spec.cls.check(spec.params, env):
            loc = where + tuple(field_path)
            problems.append(Problem(doc.file, doc.line_of(loc), format_path(loc), message))
        if columns is not None:
            missing = [c for c in spec.cls.reads(spec.params) if c not in columns]
            if missing:
                have = ", ".join(sorted(columns)) or "none"
                problems.append(
                    Problem(
                        doc.file,
                        doc.line_of(where),
                        format_path(where),
                        f"reads column(s) {', '.join(missing)} that no earlier stage provides (available: {have})",
                    )
                )
        columns = spec.cls.output_columns(spec.params, env)
        singles = (singles - set(spec.cls.writes(spec.params))) | spec.cls.single_columns(spec.params)
    return problems
