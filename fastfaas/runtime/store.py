"""Persistent state in SQLite (WAL): the function registry and the async event queue.

Both sit behind small interfaces (`Registry`, `EventQueue`) so that a later
move to another engine changes this module only. The connection is used from
the trio thread: with WAL and `synchronous=NORMAL` a commit is an append to
the log, durable against the server being killed (not against the machine
losing power), and takes tens of microseconds.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec

from fastfaas.config import FunctionConfig

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    config TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS usage (
    function TEXT NOT NULL,
    version TEXT NOT NULL,
    time REAL NOT NULL,
    sample BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_function ON usage (function, version, time);
CREATE TABLE IF NOT EXISTS size_changes (
    function TEXT NOT NULL,
    time REAL NOT NULL,
    change TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS size_changes_by_function ON size_changes (function, time);
CREATE TABLE IF NOT EXISTS aliases (
    function TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    weights TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (function, name)
);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    version TEXT NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL,
    result BLOB,
    error TEXT,
    start TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS invocations_by_status ON invocations (status, created_at);
"""

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


class StoredFunction(msgspec.Struct, frozen=True):
    name: str
    version: str
    config: FunctionConfig
    code_sha256: str


class QueuedEvent(msgspec.Struct, frozen=True):
    id: str
    function: str
    version: str
    payload: bytes
    attempts: int


class StoredAlias(msgspec.Struct, frozen=True):
    """A Lambda alias: a name for a version, and other versions' shares of its calls."""

    function: str
    name: str
    version: str
    weights: dict[str, float]  # version -> share of calls (0..1), besides `version`
    description: str = ""


class Registry(Protocol):
    def put_function(self, fn: StoredFunction) -> None: ...
    def delete_function(self, name: str, version: str) -> None: ...
    def functions(self) -> list[StoredFunction]: ...
    def put_alias(self, alias: StoredAlias) -> None: ...
    def add_usage(self, rows: list[tuple[str, str, Any]], keep: int = 2000) -> None: ...
    def usage(self, function: str, version: str, type_: Any) -> list[Any]: ...
    def delete_usage(self, function: str, version: str | None = None) -> None: ...
    def add_size_change(self, function: str, change: Any, keep: int = 20) -> None: ...
    def size_changes(self, function: str, type_: Any) -> list[Any]: ...
    def delete_alias(self, function: str, name: str) -> None: ...
    def aliases(self, function: str | None = None) -> list[StoredAlias]: ...


class EventQueue(Protocol):
    """Accepted asynchronous invocations: committed before the 202, run at least once."""

    def put(self, request_id: str, function: str, version: str, payload: bytes) -> None: ...
    def take(self, limit: int) -> list[QueuedEvent]: ...
    def finish(self, request_id: str, ok: bool, result: bytes, error: str | None,
               start: str) -> None: ...
    def get(self, request_id: str) -> dict[str, Any] | None: ...
    def requeue(self, request_id: str) -> None: ...
    def requeue_running(self) -> int: ...


class Store:
    """fastfaas.db in the data directory: Registry and EventQueue in one database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # One transaction at a time on the connection: usage is flushed from a worker
        # thread while the trio thread writes (a second BEGIN would fail).
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(
                f"{path} has schema version {version}; this fastfaas knows {SCHEMA_VERSION}:"
                " upgrade fastfaas or use another --data-dir")
        self._db.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> Any:
        return _Transaction(self._db, self._lock)

    # --- Registry --------------------------------------------------------------

    def put_function(self, fn: StoredFunction) -> None:
        now = time.time()
        config = msgspec.json.encode(fn.config).decode()
        with self._transaction():
            self._db.execute(
                "INSERT INTO functions (name, version, config, code_sha256, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, version) DO UPDATE"
                " SET config = excluded.config, code_sha256 = excluded.code_sha256,"
                " updated_at = excluded.updated_at",
                (fn.name, fn.version, config, fn.code_sha256, now, now))

    def delete_function(self, name: str, version: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM functions WHERE name = ? AND version = ?",
                             (name, version))

    def functions(self) -> list[StoredFunction]:
        rows = self._db.execute(
            "SELECT name, version, config, code_sha256 FROM functions ORDER BY name, version")
        return [StoredFunction(name, version, msgspec.json.decode(config, type=FunctionConfig),
                               sha) for name, version, config, sha in rows]

    def add_usage(self, batches: Mapping[tuple[str, str], Iterable[Any]],
                  keep: int = 2000) -> None:
        """Usage samples (msgspec structs with a `time`) per (function, version); each
        function version keeps its last `keep`. Rows are made one at a time as SQLite
        takes them (a list of them all would be a burst of tracked allocations)."""
        if not batches:
            return
        rows = ((f, v, sample.time, msgspec.msgpack.encode(sample))
                for (f, v), samples in batches.items() for sample in samples)
        with self._transaction():
            self._db.executemany(
                "INSERT INTO usage (function, version, time, sample) VALUES (?, ?, ?, ?)", rows)
            for f, v in batches:
                self._db.execute(
                    "DELETE FROM usage WHERE function = ? AND version = ? AND time <"
                    " (SELECT time FROM usage WHERE function = ? AND version = ?"
                    " ORDER BY time DESC LIMIT 1 OFFSET ?)", (f, v, f, v, keep - 1))

    def usage(self, function: str, version: str, type_: Any) -> list[Any]:
        rows = self._db.execute(
            "SELECT sample FROM usage WHERE function = ? AND version = ? ORDER BY time",
            (function, version))
        return [msgspec.msgpack.decode(blob, type=type_) for (blob,) in rows]

    def delete_usage(self, function: str, version: str | None = None) -> None:
        """The usage samples of a function version; of the whole function (its size
        changes too) without `version`."""
        with self._transaction():
            if version is None:
                self._db.execute("DELETE FROM usage WHERE function = ?", (function,))
                self._db.execute("DELETE FROM size_changes WHERE function = ?", (function,))
            else:
                self._db.execute("DELETE FROM usage WHERE function = ? AND version = ?",
                                 (function, version))

    def add_size_change(self, function: str, change: Any, keep: int = 20) -> None:
        """A size auto_size applied (a msgspec struct with `time`); the last `keep` stay."""
        with self._transaction():
            self._db.execute("INSERT INTO size_changes (function, time, change) VALUES (?, ?, ?)",
                             (function, change.time, msgspec.json.encode(change).decode()))
            self._db.execute(
                "DELETE FROM size_changes WHERE function = ? AND time <"
                " (SELECT time FROM size_changes WHERE function = ? ORDER BY time DESC"
                " LIMIT 1 OFFSET ?)", (function, function, keep - 1))

    def size_changes(self, function: str, type_: Any) -> list[Any]:
        rows = self._db.execute(
            "SELECT change FROM size_changes WHERE function = ? ORDER BY time", (function,))
        return [msgspec.json.decode(text, type=type_) for (text,) in rows]

    def put_alias(self, alias: StoredAlias) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO aliases (function, name, version, weights, description)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (function, name) DO UPDATE SET"
                " version = excluded.version, weights = excluded.weights,"
                " description = excluded.description",
                (alias.function, alias.name, alias.version,
                 msgspec.json.encode(alias.weights).decode(), alias.description))

    def delete_alias(self, function: str, name: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM aliases WHERE function = ? AND name = ?",
                             (function, name))

    def aliases(self, function: str | None = None) -> list[StoredAlias]:
        query = "SELECT function, name, version, weights, description FROM aliases"
        args: tuple[str, ...] = ()
        if function is not None:
            query += " WHERE function = ?"
            args = (function,)
        rows = self._db.execute(query + " ORDER BY function, name", args)
        return [StoredAlias(f, n, v, msgspec.json.decode(w, type=dict[str, float]), d)
                for f, n, v, w, d in rows]

    # --- EventQueue ------------------------------------------------------------

    def put(self, request_id: str, function: str, version: str, payload: bytes) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO invocations (id, function, version, payload, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, function, version, payload, QUEUED, time.time()))

    def take(self, limit: int) -> list[QueuedEvent]:
        """Mark up to `limit` queued events running, oldest first, and return them."""
        now = time.time()
        with self._transaction():
            rows = self._db.execute(
                "SELECT id, function, version, payload, attempts FROM invocations"
                " WHERE status = ? ORDER BY created_at LIMIT ?", (QUEUED, limit)).fetchall()
            self._db.executemany(
                "UPDATE invocations SET status = ?, started_at = ?, attempts = attempts + 1"
                " WHERE id = ?", [(RUNNING, now, row[0]) for row in rows])
        return [QueuedEvent(i, f, v, p, a + 1) for i, f, v, p, a in rows]

    def finish(self, request_id: str, ok: bool, result: bytes, error: str | None,
               start: str) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE invocations SET status = ?, result = ?, error = ?, start = ?,"
                " finished_at = ? WHERE id = ?",
                (SUCCEEDED if ok else FAILED, result, error, start, time.time(), request_id))

    def get(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id, function, version, status, result, error, start, attempts, created_at,"
            " started_at, finished_at FROM invocations WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        keys = ("request_id", "function", "version", "status", "result", "error", "start",
                "attempts", "created_at", "started_at", "finished_at")
        return dict(zip(keys, row, strict=True))

    def requeue(self, request_id: str) -> None:
        """An event taken but not finished (the server is stopping) waits again."""
        with self._transaction():
            self._db.execute("UPDATE invocations SET status = ? WHERE id = ? AND status = ?",
                             (QUEUED, request_id, RUNNING))

    def requeue_running(self) -> int:
        """At start: events a dead server was running go back to the queue (at least once)."""
        with self._transaction():
            cur = self._db.execute("UPDATE invocations SET status = ? WHERE status = ?",
                                   (QUEUED, RUNNING))
        return cur.rowcount

    def queued_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM invocations WHERE status = ?",
                                    (QUEUED,)).fetchone()[0])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()
