from __future__ import annotations

from pathlib import Path

import pytest

from topomirror.store.db import Store, StoreCorrupt


def test_round_trip_and_explain(tmp_path: Path) -> None:
    ticks = iter(range(100))
    store = Store(tmp_path / "node.db", clock=lambda: float(next(ticks)))
    store.decision("flow:udp a:1 -> b:2", "mirror", "latency-sensitive; path congests p=0.9", p=0.9)
    store.session(7, "udp a:1 -> b:2", "h2", "active", relays=["x1"])
    store.put("model", {"weights": [1, 2]})
    assert store.explain("udp a:1") == []  # nothing is visible before a flush
    assert store.flush() == 3  # handed to the writer thread
    assert store.sync()  # and committed
    assert store.explain("udp a:1")[0]["kind"] == "mirror"
    store.close()
    again = Store(tmp_path / "node.db")
    [entry] = again.explain("udp a:1")
    assert entry["kind"] == "mirror" and entry["detail"] == {"p": 0.9}
    assert again.sessions(live_only=True)[0]["state"] == "active"
    assert again.get("model") == {"weights": [1, 2]}
    again.session(7, "udp a:1 -> b:2", "h2", "withdrawn")
    assert again.sync()
    assert again.sessions(live_only=True) == []
    again.close()


def test_flush_never_waits_for_the_disk_and_failed_writes_are_counted(tmp_path: Path) -> None:
    import sqlite3
    import time

    store = Store(tmp_path / "node.db")
    # Another connection holds the write lock (as a slow checkpoint or a busy disk would): the
    # timer's flush returns at once and the rows are committed when the lock is released.
    blocker = sqlite3.connect(str(tmp_path / "node.db"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    store.put("a", 1)
    started = time.perf_counter()
    assert store.flush() == 1
    assert time.perf_counter() - started < 0.5  # not the 5 s the writer waits for the lock
    assert not store.sync(timeout=0.3) and store.get("a") is None
    blocker.execute("COMMIT")
    assert store.sync() and store.get("a") == 1
    # A batch the writer cannot store is counted and logged; the next one is stored.
    store._pending.append(("INSERT INTO no_such_table VALUES (?)", (1,)))
    assert store.sync()
    assert store.write_errors == 1 and "no_such_table" in (store.last_write_error or "")
    store.put("b", 2)
    assert store.sync() and store.get("b") == 2
    store.close()
    blocker.close()
    assert not store._writer.is_alive()


def test_corrupt_database_gives_a_recovery_path(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(StoreCorrupt, match="--recover-db"):
        Store(path)
    moved = Store.recover(path)
    assert moved is not None and moved.exists() and not path.exists()
    Store(path).close()  # a fresh one works


def test_a_writer_that_cannot_start_is_reported_and_nobody_waits_for_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3
    import time

    from topomirror.store import db

    real_connect, calls = sqlite3.connect, []

    def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) > 1:  # the writer thread's own connection
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(db.sqlite3, "connect", connect)
    store = Store(tmp_path / "node.db")
    store.put("a", 1)
    started = time.perf_counter()
    assert store.sync(timeout=5) is False
    assert time.perf_counter() - started < 2, "a dead writer wakes whoever waits"
    assert not store.writer_alive and store.write_errors == 1
    assert "writer stopped" in (store.last_write_error or "")
    store.close()
