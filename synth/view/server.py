"""`synth view RUN`: a local web app over a run directory, on the standard library's HTTP server.

The page (static/: one HTML file, its script and style, no CDN: synth works offline) asks a
small JSON API for what it shows. The API names stages and row positions, never paths, so no file
outside the run directory (nor any file of it but its rows) can be asked for; the one write is a
label (synth/labels.py). Every value reaches the page as JSON and is put into it as text, never
as markup, and the page's Content-Security-Policy runs only the app's own script, so an LLM answer
holding `<script>` shows as text. The server binds 127.0.0.1 unless told otherwise, answers only
requests addressed to the host it serves (a page elsewhere cannot reach it through DNS
rebinding), and takes a label only as a same-origin JSON POST.
"""

from __future__ import annotations

import json
import math
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import RunError, SynthError
from ..labels import Labels
from .data import OUTPUT, Query, RunView
from .requests import records, row_requests

STATIC = Path(__file__).parent / "static"
FILES = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/app.css": ("app.css", "text/css"),
}
APP_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The report carries its own style and its plots inline, and no script at all.
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
MAX_BODY = 64 * 1024


def _plain(value):
    """JSON for the browser: NaN and infinities (which JSON.parse refuses) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _query(params: dict[str, list[str]]) -> Query:
    def one(name: str, default: str = "") -> str:
        return params.get(name, [default])[0]

    filters = [(str(c), str(op), str(v)) for c, op, v in json.loads(one("filters") or "[]")]
    return Query(
        offset=int(one("offset", "0") or 0),
        limit=int(one("limit", "20") or 20),
        filters=filters,
        search=one("q"),
        sort=one("sort") or None,
        descending=one("desc") == "1",
        count=one("count", "1") != "0",
    )


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0):
        self.view = RunView(root)
        self.label_lock = threading.Lock()
        super().__init__((host, port), Handler)
        # On loopback, only requests addressed to loopback (a page elsewhere that rebinds its own
        # name to 127.0.0.1 sends its own name); bound elsewhere on purpose, any name of this machine.
        local = host in ("127.0.0.1", "localhost", "::1")
        names = (host, "127.0.0.1", "localhost", "[::1]")
        self.hosts = {f"{name}:{self.server_port}" for name in names} if local else None

    def addressed(self, netloc: str) -> bool:
        return self.hosts is None or netloc in self.hosts

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server_port}/"


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass  # the terminal shows the URL, not every request

    def _send(self, status: int, body: bytes, kind: str, policy: str = APP_POLICY) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", policy)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value, status: int = 200) -> None:
        body = json.dumps(_plain(value), ensure_ascii=False, default=str, allow_nan=False).encode()
        self._send(status, body, "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _allowed(self) -> bool:
        if not self.server.addressed(self.headers.get("Host", "")):
            self._error(HTTPStatus.FORBIDDEN, "this server answers only requests to its own address")
            return False
        return True

    def do_GET(self) -> None:
        if not self._allowed():
            return
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=True)
        try:
            if url.path in FILES:
                name, kind = FILES[url.path]
                self._send(200, (STATIC / name).read_bytes(), kind)
            elif url.path == "/api/run":
                self._json(self._run())
            elif url.path == "/api/labels":
                self._json({"labels": Labels(self.server.view.root).summary()})
            elif url.path == "/api/rows":
                self._json(self.server.view.page(params.get("stage", [OUTPUT])[0], _query(params)))
            elif url.path == "/api/row":
                self._json(self._row(params["stage"][0], int(params["position"][0])))
            elif url.path == "/api/dropped":
                offset, limit = int(params.get("offset", ["0"])[0]), int(params.get("limit", ["20"])[0])
                self._json(self.server.view.dropped(params["stage"][0], offset, limit))
            elif url.path == "/report":
                self._report()
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except (SynthError, KeyError, ValueError, IndexError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc) if isinstance(exc, SynthError) else f"bad request: {exc!r}")
        except Exception as exc:  # a file a running synth replaced mid-read, a Parquet error: say so, keep serving
            self._error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"could not read the run ({type(exc).__name__}: {exc}); if synth is still writing it, reload the page",
            )

    def do_POST(self) -> None:
        if not self._allowed():
            return
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            self._error(HTTPStatus.FORBIDDEN, "labels are taken only from this viewer's own page")
            return
        if urlsplit(self.path).path != "/api/label":
            self._error(HTTPStatus.NOT_FOUND, "the one thing to post is a label, to /api/label")
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "post a label as application/json")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "a label's note is at most 64 KB")
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            label = body.get("label") or None
            with self.server.label_lock:
                record = self.server.view.label(
                    str(body["stage"]), int(body["position"]), label, str(body.get("note") or "")
                )
            self._json({"label": record and {k: record[k] for k in ("label", "note")}})
        except (SynthError, KeyError, ValueError, TypeError, AttributeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc) if isinstance(exc, SynthError) else f"bad label: {exc!r}")

    def _run(self) -> dict:
        view = self.server.view
        view.refresh()
        manifest = view.run.manifest
        counts = {s["label"]: s for s in manifest.get("stages") or []}
        stages = []
        for name in view.names():
            rows = view.stage(name)
            meta = counts.get(name, {})
            stages.append(
                {
                    "name": name,
                    "rows": rows.rows.num_rows,
                    "columns": rows.kinds,
                    "stage": meta.get("stage", ""),
                    "filtered": meta.get("filtered", {}),
                    "failed": meta.get("failed", {}),
                }
            )
        return {
            "name": manifest.get("name", ""),
            "status": view.run.status,
            "stages": stages,
            "sources": view.sources,
            "labels": Labels(view.root).summary(),
        }

    def _row(self, stage: str, position: int) -> dict:
        view = self.server.view
        row = view.row(stage, position)
        order = {name: i for i, name in enumerate(view.names())}
        made = dict(sorted(records(row, view.writer_of).items(), key=lambda kv: order.get(kv[0], len(order))))
        return {
            "stage": stage,
            "position": position,
            "row": row,
            "lineage": view.lineage(stage, position),
            "requests": row_requests(view.root, made),
        }

    def _report(self) -> None:
        from ..report import report_page

        try:
            page = report_page(self.server.view.root, view_url="/")
        except RunError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._send(200, page.encode("utf-8"), "text/html", REPORT_POLICY)


def serve(root: Path, host: str = "127.0.0.1", port: int = 8765) -> ViewServer:
    """A server over the run at root (not yet serving: call `serve_forever`)."""
    RunView(root).names()  # a run directory that does not read fails here, with its RunError
    try:
        return ViewServer(root, host, port)
    except OSError as exc:
        raise RunError(f"cannot serve on {host}:{port} ({exc.strerror or exc}): choose another --port") from None
