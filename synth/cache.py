"""The request cache: SQLite in WAL mode, keyed by the hash of the canonical request.

The key covers the model, the prompt or messages, the sampling parameters, the seed and the
kind of call (never Python source). What is stored is the raw answer, so changing a parser
re-parses without a new request. A committed row survives kill -9 (WAL), so a resumed run asks
the server only for what it never answered.

Schema changes go through the named migrations below (`PRAGMA user_version` counts them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import threading
from pathlib import Path

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_requests",
        """
        CREATE TABLE requests (
            key TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT NOT NULL
        ) WITHOUT ROWID
    """,
    ),
    (
        # What each session spent, journaled in the same transaction as the answers it paid for,
        # so a session killed with -9 still has its usage counted by the next (synth/usage.py).
        "002_usage",
        """
        CREATE TABLE usage (
            session TEXT NOT NULL,
            stage TEXT NOT NULL,
            backend TEXT NOT NULL,
            counters TEXT NOT NULL
        )
    """,
    ),
]


try:  # msgspec writes the same JSON several times faster (it runs in the writer thread, holding the GIL)
    import msgspec

    def _dumps(value) -> str:
        return msgspec.json.encode(value).decode()

except ImportError:  # pragma: no cover

    def _dumps(value) -> str:
        return json.dumps(value, ensure_ascii=False)


class RequestCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Two connections: answers are written in a worker thread while the event loop looks up
        # the next batch's requests. In WAL mode a reader never waits for the writer, so the
        # loop never blocks behind a commit (one shared connection made it wait on its lock).
        self._lock = threading.Lock()
        with self._disk():
            self._db = self._connect()
            self._migrate()
            self._reader = self._connect()
        self._read_lock = threading.Lock()
        # The session whose usage is journaled: its start time in the manifest (the runner sets it),
        # so a cache copied into another run never lends it the usage of this one's sessions.
        self.session: str | None = None

    @contextlib.contextmanager
    def _disk(self):
        """SQLite's failures to write (a full disk, an I/O error, a read-only folder) as the OSError
        they are, naming the file, so the run ends with one line saying what to free or fix."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            code = errno.ENOSPC if "full" in text else errno.EROFS if "readonly" in text else errno.EIO
            raise OSError(code, f"cannot write the request cache: {text}", str(self.path)) from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, (_name, sql) in enumerate(MIGRATIONS, start=1):
            if number > version:
                with self._lock:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute(sql)
                    self._db.execute(f"PRAGMA user_version={number}")
                    self._db.execute("COMMIT")

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        with self._read_lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, response in self._reader.execute(
                    f"SELECT key, response FROM requests WHERE key IN ({marks})", chunk
                ):
                    try:
                        found[key] = json.loads(response)
                    except ValueError:
                        continue  # a damaged entry is a miss: the request is sent again and replaces it
        return found

    def put(self, key: str, kind: str, model: str, request: dict, response: dict) -> None:
        self.put_many([(key, kind, model, request, response)])

    def put_many(
        self, entries: list[tuple[str, str, str, dict, dict]], usage: list[tuple[str, str, dict]] = ()
    ) -> None:
        """Store answers in one transaction (one commit for many answers, not one per answer), with
        the usage (stage, backend, counters) that paid for them, journaled under `session`."""
        rows = [
            (key, kind, model, _dumps(request), _dumps(response)) for key, kind, model, request, response in entries
        ]
        spent = [(self.session, stage, backend, _dumps(c)) for stage, backend, c in usage if self.session is not None]
        if not rows and not spent:
            return
        with self._lock, self._disk():
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?)", rows)
                self._db.executemany("INSERT INTO usage VALUES (?, ?, ?, ?)", spent)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def absorb(self, other: str | Path) -> int:
        """Copy the answers another run's cache holds and this one lacks (`synth estimate` hands
        its sample's answers to the real run this way); returns how many were added. Its usage
        journal stays where it was: those answers were bought by the other run."""
        with self._lock, self._disk():
            before = self._db.total_changes
            self._db.execute("ATTACH DATABASE ? AS other", (str(other),))
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO requests SELECT key, kind, model, request, response FROM other.requests"
                )
            finally:
                self._db.execute("DETACH DATABASE other")
            return self._db.total_changes - before

    def usage(self, session: str) -> dict[str, dict[str, dict[str, int]]]:
        """What one session spent, from the journal: {stage: {backend: counters}}."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        with self._read_lock:
            found = self._reader.execute("SELECT stage, backend, counters FROM usage WHERE session = ?", (session,))
            for stage, backend, counters in found.fetchall():
                mine = out.setdefault(stage, {}).setdefault(backend, {})
                for k, v in json.loads(counters).items():
                    mine[k] = mine.get(k, 0) + v
        return out

    def __bool__(self) -> bool:
        return True  # a cache is there even when empty (and len() counts every row: never for truth)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()
