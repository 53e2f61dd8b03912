"""A stand-in for the Hugging Face Hub, for tests only.

The Hub cannot exist on this machine (no network), so this in-test HTTP server speaks the part
of its API that `huggingface_hub` and `datasets` call to create a dataset repo, upload files
(preupload, Git LFS batch + upload, commit), list them and download them (tree, paths-info,
resolve with ranges). Point HF_ENDPOINT at it and set HF_HUB_DISABLE_XET=1. It keeps repos in
memory, checks the bearer token, and records every request so tests can assert on what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors")


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class FakeHub:
    def __init__(self, token: str = "hf_test_token"):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.seen_headers: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_HEAD(self):
                hub._dispatch(self, "HEAD")

            def do_POST(self):
                hub._dispatch(self, "POST")

            def do_PUT(self):
                hub._dispatch(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- plumbing ----
    def _reply(self, h, status: int, body: bytes | dict | list = b"", headers: dict | None = None, head=False):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, str(value))
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _body(self, h) -> bytes:
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _authorized(self, h) -> bool:
        return h.headers.get("Authorization") == f"Bearer {self.token}"

    def _dispatch(self, h, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        self.log.append((method, path))
        self.seen_headers.append(dict(h.headers))
        body = self._body(h) if method in ("POST", "PUT") else b""
        for pattern, verbs, handler in self._routes():
            m = re.fullmatch(pattern, path)
            if m and method in verbs:
                return handler(h, method, m, query, body)
        self.unknown.append((method, path))
        return self._reply(h, 404, {"error": f"fake hub has no route {method} {path}"})

    def _routes(self):
        repo = r"(?P<repo>[^/]+/[^/]+)"
        rev = r"(?P<rev>[^/]+)"
        return [
            (r"/api/whoami-v2", {"GET"}, self.whoami),
            (r"/api/agent-harnesses", {"GET"}, self.agent_harnesses),
            (r"/api/repos/create", {"POST"}, self.create_repo),
            (r"/api/validate-yaml", {"POST"}, self.validate_yaml),
            (rf"/api/datasets/{repo}/preupload/{rev}", {"POST"}, self.preupload),
            (rf"/datasets/{repo}\.git/info/lfs/objects/batch", {"POST"}, self.lfs_batch),
            (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", {"PUT"}, self.lfs_upload),
            (rf"/api/datasets/{repo}/commit/{rev}", {"POST"}, self.commit),
            (rf"/api/datasets/{repo}(?:/revision/{rev})?", {"GET"}, self.info),
            (rf"/api/datasets/{repo}/tree/{rev}(?P<path>/.*)?", {"GET"}, self.tree),
            (rf"/api/datasets/{repo}/paths-info/{rev}", {"POST"}, self.paths_info),
            (rf"/datasets/{repo}/resolve/{rev}/(?P<path>.+)", {"GET", "HEAD"}, self.resolve),
        ]

    def _repo(self, h, m) -> Repo | None:
        repo = self.repos.get(m.group("repo"))
        if repo is None:
            self._reply(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        if repo.private and not self._authorized(h):
            self._reply(h, 401, {"error": "Invalid credentials"}, {"X-Error-Code": "RepoNotFound"})
            return None
        return repo

    def _entry(self, repo: Repo, path: str) -> dict:
        data = repo.files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if path in repo.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    # ---- routes ----
    def whoami(self, h, method, m, query, body):
        if not self._authorized(h):
            return self._reply(h, 401, {"error": "Invalid credentials"})
        return self._reply(h, 200, {"type": "user", "name": "tester", "orgs": []})

    def agent_harnesses(self, h, method, m, query, body):
        """huggingface_hub fetches this registry (to tag its user agent); an empty one detects nothing."""
        return self._reply(h, 200, {"standardEnvVars": [], "harnesses": {}})

    def create_repo(self, h, method, m, query, body):
        if not self._authorized(h):
            return self._reply(h, 401, {"error": "Invalid credentials"})
        data = json.loads(body)
        repo_id = f"{data.get('organization') or 'tester'}/{data['name']}"
        if data.get("type") != "dataset":
            return self._reply(h, 400, {"error": "this fake hub keeps dataset repos only"})
        if repo_id in self.repos:
            return self._reply(
                h, 409, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo_id}"}
            )
        private = data.get("visibility", "private" if data.get("private") else "public") == "private"
        self.repos[repo_id] = Repo(repo_id, private)  # newer clients send visibility, older ones private
        return self._reply(h, 200, {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id})

    def validate_yaml(self, h, method, m, query, body):
        """The Hub checks a README's metadata block; this one checks that it is YAML at all."""
        import yaml

        content = json.loads(body).get("content", "")
        front = content.split("---", 2)[1] if content.startswith("---") and content.count("---") >= 2 else ""
        try:
            meta = yaml.safe_load(front) if front else {}
            assert meta is None or isinstance(meta, dict), "the metadata block is not a mapping"
        except (yaml.YAMLError, AssertionError) as exc:
            return self._reply(h, 400, {"errors": [{"message": f"invalid metadata: {exc}"}]})
        return self._reply(h, 200, {"errors": [], "warnings": []})

    def preupload(self, h, method, m, query, body):
        if not self._authorized(h):
            return self._reply(h, 401, {"error": "Invalid credentials"})
        if self._repo(h, m) is None:
            return None
        files = json.loads(body)["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                "shouldIgnore": False,
            }
            for f in files
        ]
        return self._reply(h, 200, {"files": modes})

    def lfs_batch(self, h, method, m, query, body):
        if not self._authorized(h):
            return self._reply(h, 401, {"message": "Invalid credentials"})
        data = json.loads(body)
        objects = []
        for obj in data["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        return self._reply(
            h, 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        )

    def lfs_upload(self, h, method, m, query, body):
        if hashlib.sha256(body).hexdigest() != m.group("oid"):
            return self._reply(h, 400, {"error": "sha256 does not match"})
        self.lfs_objects[m.group("oid")] = body
        return self._reply(h, 200, b"")

    def commit(self, h, method, m, query, body):
        if not self._authorized(h):
            return self._reply(h, 401, {"error": "Invalid credentials"})
        repo = self._repo(h, m)
        if repo is None:
            return None
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
                repo.lfs.discard(value["path"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return self._reply(h, 400, {"error": f"LFS object {value['oid']} was never uploaded"})
                repo.files[value["path"]] = self.lfs_objects[value["oid"]]
                repo.lfs.add(value["path"])
            elif item["key"] == "deletedFile":
                repo.files.pop(value["path"], None)
        sha = hashlib.sha1(f"{repo.repo_id}{len(repo.commits)}{sorted(repo.files)}".encode()).hexdigest()
        repo.commits.append(sha)
        url = f"{self.url}/datasets/{repo.repo_id}/commit/{sha}"
        return self._reply(h, 200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

    def info(self, h, method, m, query, body):
        repo = self._repo(h, m)
        if repo is None:
            return None
        return self._reply(
            h,
            200,
            {
                "_id": repo.repo_id,
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": repo.sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": "2026-11-25T00:00:00.000Z",
                "createdAt": "2026-11-25T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            },
        )

    def tree(self, h, method, m, query, body):
        repo = self._repo(h, m)
        if repo is None:
            return None
        prefix = (m.group("path") or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path in sorted(repo.files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/", 1)[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(len(parts)):
                    folders.add((prefix + "/" if prefix else "") + "/".join(parts[: i + 1]))
            entries.append(self._entry(repo, path))
        listing = [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)] + entries
        return self._reply(h, 200, listing)

    def paths_info(self, h, method, m, query, body):
        repo = self._repo(h, m)
        if repo is None:
            return None
        try:
            paths = json.loads(body).get("paths", [])
        except ValueError:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in repo.files:
                out.append(self._entry(repo, path))
            elif any(p.startswith(path + "/") for p in repo.files) or path == "":
                out.append({"type": "directory", "path": path, "oid": "0" * 40, "size": 0})
        return self._reply(h, 200, out)

    def resolve(self, h, method, m, query, body):
        repo = self._repo(h, m)
        if repo is None:
            return None
        path = m.group("path")
        if path not in repo.files:
            return self._reply(
                h, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head=method == "HEAD"
            )
        data = repo.files[path]
        etag = hashlib.sha256(data).hexdigest() if path in repo.lfs else hashlib.sha1(data).hexdigest()
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if path in repo.lfs:
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": len(data)}
        status = 200
        byte_range = h.headers.get("Range")
        if byte_range and method == "GET":
            start_s, _, end_s = byte_range.removeprefix("bytes=").partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = min(int(end_s), len(data) - 1) if start_s and end_s else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        return self._reply(h, status, data, headers, head=method == "HEAD")
