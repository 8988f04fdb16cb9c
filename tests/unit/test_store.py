"""The SQLite store (fastfaas/runtime/store.py): registry and event queue, on a real file."""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastfaas.config import FunctionConfig
from fastfaas.runtime.store import (
    FAILED,
    QUEUED,
    RUNNING,
    SCHEMA_VERSION,
    SUCCEEDED,
    QueuedEvent,
    Store,
    StoredFunction,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "fastfaas.db"  # the data directory does not exist yet


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def fn(name: str, version: str = "1", sha: str = "0" * 64, **config: object) -> StoredFunction:
    return StoredFunction(name, version, FunctionConfig.create(handler="app.handler", **config),
                          sha)


def field(store: Store, request_id: str, name: str) -> object:
    got = store.get(request_id)
    assert got is not None, f"no invocation {request_id}"
    return got[name]


# --- registry ----------------------------------------------------------------


def test_functions_round_trip_their_config(store: Store) -> None:
    rich = fn("rich", memory_mb=512, timeout_s=2.5, env={"A": "1", "B": "two"},
              description="d\u00e9j\u00e0", reserved_concurrency=3, prewarm=2,
              isolation="strict", network=True, max_memory_mb=1024)
    plain = fn("plain", version="7")
    store.put_function(rich)
    store.put_function(plain)
    assert store.functions() == [plain, rich]  # by name, then version
    assert store.functions()[1].config.env == {"A": "1", "B": "two"}


def test_put_function_replaces_the_same_name_and_version(store: Store) -> None:
    store.put_function(fn("f", "1", sha="a" * 64, memory_mb=128))
    store.put_function(fn("f", "2", sha="b" * 64))
    replaced = fn("f", "1", sha="c" * 64, memory_mb=256)
    store.put_function(replaced)
    assert store.functions() == [replaced, fn("f", "2", sha="b" * 64)]


def test_delete_function(store: Store) -> None:
    store.put_function(fn("f", "1"))
    store.put_function(fn("f", "2"))
    store.put_function(fn("g", "1"))
    store.delete_function("f", "1")
    assert [(f.name, f.version) for f in store.functions()] == [("f", "2"), ("g", "1")]
    store.delete_function("nope", "1")  # deleting what is not there is not an error
    assert len(store.functions()) == 2


# --- event queue -------------------------------------------------------------


def test_put_then_get_is_queued(store: Store) -> None:
    store.put("r1", "f", "1", b"{}")
    got = store.get("r1")
    assert got is not None
    assert (got["request_id"], got["function"], got["version"], got["status"],
            got["attempts"], got["result"], got["started_at"]) == (
        "r1", "f", "1", QUEUED, 0, None, None)
    assert store.get("nope") is None
    assert store.queued_count() == 1


def test_take_marks_running_oldest_first_with_a_limit(store: Store) -> None:
    # Ids sort the other way round from arrival: the order must come from the arrival.
    for request_id in ("r9", "r5", "r1"):
        store.put(request_id, "f", "1", request_id.encode())
    first = store.take(2)
    assert first == [QueuedEvent("r9", "f", "1", b"r9", 1), QueuedEvent("r5", "f", "1", b"r5", 1)]
    for event in first:
        got = store.get(event.id)
        assert got is not None
        assert (got["status"], got["attempts"]) == (RUNNING, 1)
        assert got["started_at"] is not None
    assert store.queued_count() == 1
    assert store.take(10) == [QueuedEvent("r1", "f", "1", b"r1", 1)]
    assert store.take(10) == []
    assert store.queued_count() == 0


def test_finish_is_visible_in_get(store: Store) -> None:
    store.put("ok", "f", "1", b"in")
    store.put("bad", "f", "1", b"in")
    store.take(2)
    store.finish("ok", True, b'{"result": 1}', None, "warm")
    store.finish("bad", False, b"", "Unhandled: boom", "cold")
    ok, bad = store.get("ok"), store.get("bad")
    assert ok is not None and bad is not None
    assert (ok["status"], ok["result"], ok["error"], ok["start"]) == (
        SUCCEEDED, b'{"result": 1}', None, "warm")
    assert (bad["status"], bad["result"], bad["error"], bad["start"]) == (
        FAILED, b"", "Unhandled: boom", "cold")
    assert ok["finished_at"] >= ok["started_at"] >= ok["created_at"]
    assert store.take(10) == []  # finished events are not taken again


def test_requeue_puts_a_running_event_back_and_counts_attempts(store: Store) -> None:
    store.put("r", "f", "1", b"p")
    store.take(1)
    store.requeue("r")
    assert field(store, "r", "status") == QUEUED
    assert store.take(1) == [QueuedEvent("r", "f", "1", b"p", 2)]


def test_requeue_leaves_finished_and_queued_events_alone(store: Store) -> None:
    store.put("done", "f", "1", b"")
    store.take(1)
    store.finish("done", True, b"r", None, "warm")
    store.put("waiting", "f", "1", b"")
    store.requeue("done")
    store.requeue("waiting")
    store.requeue("missing")
    assert field(store, "done", "status") == SUCCEEDED
    assert (field(store, "waiting", "status"), field(store, "waiting", "attempts")) == (QUEUED, 0)


def test_requeue_running_returns_how_many(store: Store) -> None:
    for request_id in ("a", "b", "c", "d"):
        store.put(request_id, "f", "1", b"")
    store.take(3)
    store.finish("a", True, b"", None, "warm")
    assert store.requeue_running() == 2  # b and c
    assert [e.id for e in store.take(10)] == ["b", "c", "d"]
    assert store.requeue_running() == 3
    assert store.requeue_running() == 0


def test_a_failed_write_rolls_back_and_the_store_goes_on(store: Store) -> None:
    store.put("r", "f", "1", b"first")
    with pytest.raises(sqlite3.IntegrityError):
        store.put("r", "f", "1", b"second")
    store.put("s", "f", "1", b"")  # no transaction left open by the failure
    assert [e.payload for e in store.take(10)] == [b"first", b""]


# --- the file ----------------------------------------------------------------


def test_everything_persists_across_a_reopen(db_path: Path) -> None:
    first = Store(db_path)
    kept = fn("kept", memory_mb=1024)
    first.put_function(kept)
    first.put_function(fn("gone"))
    first.delete_function("gone", "1")
    for request_id in ("done", "running", "queued"):
        first.put(request_id, "kept", "1", request_id.encode())
    first.take(2)
    first.finish("done", False, b"", "Timeout", "cold")
    first.close()

    second = Store(db_path)
    try:
        assert second.functions() == [kept]
        done = second.get("done")
        assert done is not None
        assert (done["status"], done["error"], done["attempts"]) == (FAILED, "Timeout", 1)
        assert second.requeue_running() == 1
        assert second.take(10) == [QueuedEvent("running", "kept", "1", b"running", 2),
                                   QueuedEvent("queued", "kept", "1", b"queued", 1)]
    finally:
        second.close()


def test_the_file_records_the_schema_version(store: Store, db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(RuntimeError) as info:
        Store(db_path)
    message = str(info.value)
    assert str(db_path) in message
    assert "99" in message and str(SCHEMA_VERSION) in message
    assert "upgrade fastfaas" in message
    # The refusal did not touch the file.
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 99
    db.close()


def test_usage_is_kept_bounded_per_function_version(tmp_path) -> None:
    from fastfaas.runtime.sizing import UsageSample

    store = Store(tmp_path / "u.db")
    try:
        samples = [UsageSample(float(t), t, t, t, "success", "warm") for t in range(30)]
        store.add_usage({("f", "$LATEST"): samples[:20]}, keep=10)
        # A deque, as the Runtime hands them over, and a second version in one batch.
        store.add_usage({("f", "$LATEST"): collections.deque(samples[20:]),
                         ("g", "1"): [samples[0]]}, keep=10)
        kept = store.usage("f", "$LATEST", UsageSample)
        assert [s.time for s in kept] == [float(t) for t in range(20, 30)]
        assert store.usage("g", "1", UsageSample) == [samples[0]]
        store.delete_usage("f")
        assert store.usage("f", "$LATEST", UsageSample) == []
    finally:
        store.close()
