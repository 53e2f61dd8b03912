"""What a pipeline reads from disk, what it contacts and what it sends: listed, fingerprinted and
checked before a request goes out.

Three uses share one listing:
- fingerprints: a stage's cumulative fingerprint holds the content digest of every template and
  data file it reads, so editing a template or the input file recomputes that stage (answers
  already cached are reused) instead of keeping rows the new file would not make;
- `synth validate` prints the files, the hosts and the environment variables sent to each host,
  so a pipeline from a stranger can be read before it is run;
- the read policy: data files (whose text goes into prompts, to a server) are read only inside
  the pipeline's folder, the working directory, synth's own data, or a folder the user allowed
  with `--allow-read` (SYNTH_ALLOW_READ).

Model weights (a GGUF, a reward model folder) are named by path in the parameters, which are in
the fingerprint already; their contents are not hashed (gigabytes, and never sent anywhere).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .resources import resource_dir

ALLOW_READ_ENV = "SYNTH_ALLOW_READ"
ALLOW_KEYS_ENV = "SYNTH_ALLOW_KEYS"
# Where a key variable may go without the user's say-so: the provider it belongs to.
KNOWN_KEY_HOSTS = {"OPENAI_API_KEY": {"api.openai.com"}}


@dataclass(frozen=True)
class FileUse:
    """One file a stage reads: `field` is the parameter naming it (for file:line messages)."""

    field: str
    kind: str  # "template" or "data"
    name: str  # as written in the pipeline
    path: Path | None  # resolved, None when it cannot be found (validation reports that)


def _is_template(field: str, value: str) -> bool:
    return value.endswith((".jinja", ".j2"))


def template_path(name: str, base_dir: Path) -> Path | None:
    """The file a template name resolves to: beside the pipeline first, then synth's own."""
    for root in (base_dir, resource_dir("templates")):
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _template_dir_files(name: str, base_dir: Path) -> list[tuple[str, Path]]:
    """Every template under a `template_dir`, each resolved as the stage will resolve it."""
    names: set[str] = set()
    for root in (base_dir, resource_dir("templates")):
        folder = root / name
        if folder.is_dir() and folder.resolve() != root.resolve():
            names |= {str(p.relative_to(root)) for p in folder.glob("*.jinja") if p.is_file()}
    return [(n, p) for n in sorted(names) if (p := template_path(n, base_dir)) is not None]


def data_path(name: str, base_dir: Path) -> Path:
    """A data file as stages resolve it: relative to the pipeline file, else synth's data/."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    candidate = base_dir / path
    if candidate.exists():
        return candidate
    shipped = resource_dir("data") / path
    return shipped if shipped.exists() else candidate


def stage_files(params, base_dir: Path) -> list[FileUse]:
    """The templates and data files a stage's parameters name. Data files are the fields marked
    `json_schema_extra={"reads": "file"}`; templates are values ending in .jinja and the
    templates under a `template_dir`."""
    out: list[FileUse] = []
    for field, info in type(params).model_fields.items():
        value = getattr(params, field)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("reads") == "file" and isinstance(value, list):  # several files (`name=path` items too)
            for item in value:
                if isinstance(item, str) and item:
                    name, sep, path = item.partition("=")
                    item = path if sep and "/" not in name else item
                    out.append(FileUse(field, "data", item, data_path(item, base_dir)))
            continue
        if not isinstance(value, str) or not value:
            continue
        if extra.get("reads") == "file":
            out.append(FileUse(field, "data", value, data_path(value, base_dir)))
        elif _is_template(field, value):
            out.append(FileUse(field, "template", value, template_path(value, base_dir)))
        elif field == "template_dir":
            out += [FileUse(field, "template", n, p) for n, p in _template_dir_files(value, base_dir)]
    return out


def chat_template_path(backend) -> Path | None:
    """The file or model folder a backend's `chat_template:` names, or None when the setting is a
    built-in name or Jinja text. Its text goes into every prompt."""
    setting = getattr(backend, "chat_template", None)
    if not setting or "{" in setting or "\n" in setting:
        return None
    return Path(setting).expanduser()


# ---- content digests ----

_CHUNK = 1 << 20


def _file_digest(path: Path, known: dict) -> str:
    """sha256 of a file's bytes; reused from `known` while size, mtime and inode are unchanged
    (an input of several GB is hashed once, not on every resume)."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    key = str(path.resolve())
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    known[key] = {"stat": stamp, "sha256": h.hexdigest()}
    return h.hexdigest()


def content_digest(path: Path | None, known: dict) -> str | None:
    """A digest of a file, or of every regular file under a folder (names included); None when
    the path does not exist or is not a regular file or folder (validation says why)."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return _file_digest(path, known)
    if path.is_dir():
        h = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(str(child.relative_to(path)).encode() + b"\0")
            h.update(_file_digest(child, known).encode())
        return h.hexdigest()
    return None


def files_digest(uses: Iterable[FileUse], known: dict) -> list:
    return [[u.field, u.name, content_digest(u.path, known)] for u in uses]


# ---- the read policy ----


def allowed_read_roots(base_dir: Path) -> list[Path]:
    """Folders whose files a pipeline may read: its own folder, the working directory, synth's
    shipped data and templates, and the folders in SYNTH_ALLOW_READ (set by --allow-read)."""
    extra = [Path(p).expanduser() for p in os.environ.get(ALLOW_READ_ENV, "").split(os.pathsep) if p]
    roots = [base_dir, Path.cwd(), resource_dir("data"), resource_dir("templates"), *extra]
    return [r.resolve() for r in roots]


def read_problem(path: Path, base_dir: Path) -> str | None:
    """Why a pipeline may not read `path` without the user's say-so, or None when it may.

    Inside the pipeline's folder or the working directory, hidden files and folders (`.env`,
    `.ssh/`, `.aws/`) are still refused: run from a home directory, the working directory holds
    every credential the user has."""
    real = path.expanduser().resolve()
    folder = real if real.is_dir() else real.parent
    fix = f"if you trust this pipeline, allow it with --allow-read {folder}"
    roots = allowed_read_roots(base_dir)
    explicit = roots[4:]
    if any(real == r or real.is_relative_to(r) for r in explicit):
        return None
    for root in roots[:4]:
        if real == root or real.is_relative_to(root):
            hidden = [part for part in real.relative_to(root).parts if part.startswith(".")]
            return f"reads {real}, a hidden file or folder ({hidden[0]}); {fix}" if hidden else None
    return f"reads {real}, outside the pipeline's folder and the working directory; {fix}"


# ---- hosts and keys ----


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def key_allowed(variable: str, host: str) -> bool:
    """Whether the key in `variable` may be sent to `host` without the user saying so: to
    loopback, to the provider the variable belongs to, or when --allow-key named it."""
    if is_loopback(host) or host in KNOWN_KEY_HOSTS.get(variable, ()):
        return True
    allowed = {v.strip() for v in os.environ.get(ALLOW_KEYS_ENV, "").split(",") if v.strip()}
    return variable in allowed or "*" in allowed


def key_refusal(spec) -> str | None:
    """Why an openai backend may not send its API key where it points, or None. A pipeline file
    from a stranger could name any variable (HF_TOKEN, cloud keys) and any host: a key leaves the
    machine only for loopback, its own provider, or a variable the user allowed with --allow-key."""
    variable = spec.api_key_env
    if not variable or not os.environ.get(variable):
        return None
    hosts = [h for h in dict.fromkeys(host_of(u) for u in spec.urls()) if not key_allowed(variable, h)]
    if not hosts:
        return None
    return (
        f"would send ${variable} to {', '.join(hosts)}; if you trust this pipeline and that host, run with "
        f"--allow-key {variable} (or set {ALLOW_KEYS_ENV}={variable})"
    )


# ---- what `synth validate` shows ----


def _shown(path: Path | None, name: str, base_dir: Path) -> str:
    if path is None:
        return f"{name} (missing)"
    real = path.resolve()
    for root, tag in ((resource_dir("templates"), "synth"), (resource_dir("data"), "synth")):
        if real.is_relative_to(root.resolve()):
            return f"{name} ({tag})"
    return str(real)


def access_summary(pipeline) -> list[str]:
    """Lines saying what a pipeline reads, which hosts it contacts, which environment variables
    it sends to which host, and where it pushes: what to look at before running a stranger's file."""
    reads: dict[str, None] = {}
    for spec in pipeline.stages:
        for use in stage_files(spec.params, pipeline.base_dir):
            reads[_shown(use.path, use.name, pipeline.base_dir)] = None
    contacts, sends, local = [], [], []
    for name, backend in pipeline.backends.items():
        used = any(name in s.cls.backend_names(s.params) for s in pipeline.stages)
        if not used:
            continue
        if getattr(backend, "type", "") == "openai":
            hosts = sorted({urlsplit(u).netloc.rsplit("@", 1)[-1] for u in backend.urls()})
            contacts.append(f"{', '.join(hosts)} (backend {name})")
            variable = backend.api_key_env
            if variable:
                state = "set" if os.environ.get(variable) else "not set"
                sends.append(f"${variable} ({state}) to {', '.join(hosts)} (backend {name})")
        else:
            model = getattr(backend, "model_path", None) or getattr(backend, "model", None) or "the embedded model"
            local.append(f"{model} in-process (backend {name})")
    lines = [f"  reads:    {', '.join(reads) or 'nothing'}"]
    if local:
        lines.append(f"  runs:     {'; '.join(local)}")
    lines.append(f"  contacts: {'; '.join(contacts) or 'no server'}")
    lines.append(f"  sends:    {'; '.join(sends) or 'no environment variable'}")
    push = pipeline.output.push_to_hub
    if push is not None:
        visibility = "private" if push.private else "PUBLIC"
        lines.append(f"  pushes:   {push.repo_id} on the Hugging Face Hub ({visibility}) with your Hub token")
    return lines
