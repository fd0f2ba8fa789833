"""The node's SQLite store: decisions with their reasons, sessions, path telemetry, model state.

Writes are queued in memory and handed by a timer (every ~200 ms) to a writer thread with its
own connection, which commits them: a commit, and above all a WAL checkpoint's fsync, can take
tens of milliseconds on a busy disk, and the thread that runs the node's packet loop must not
wait for the disk. Reads (`explain`, `sessions`, `get`) use the loop's connection and see what is
committed (WAL: readers do not wait for the writer); `sync()` waits until everything queued is.
A failed write is counted and logged (`write_errors`, `last_write_error`), never raised into the
loop. A corrupt file stops the node with a message that says how to recover; `recover()` moves
the file aside (kept for inspection) and starts a new one.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_ENCODE = json.JSONEncoder(default=str).encode  # one encoder, not one per row
log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,            -- wall clock, seconds
    subject TEXT NOT NULL,       -- "flow:<key>" or "session:<id>"
    kind TEXT NOT NULL,          -- new_flow, mirror, no_mirror, session_state, adapt, ...
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS decisions_subject ON decisions(subject, id);
CREATE TABLE IF NOT EXISTS sessions (
    session_id INTEGER PRIMARY KEY,
    flow TEXT NOT NULL,
    peer TEXT NOT NULL,
    state TEXT NOT NULL,
    updated REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS telemetry (
    at REAL NOT NULL,
    peer TEXT NOT NULL,
    path_id INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_at ON telemetry(at);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoreCorrupt(RuntimeError):
    """The database cannot be read; the message names the file and the way out."""


class Store:
    def __init__(self, path: Path, *, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.path = path
        self._clock = clock
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"{path}: the node database is unreadable ({exc}). Start the node with --recover-db to move "
                f"it aside (kept as {path.name}.corrupt-<time>) and begin a new one, or delete it."
            ) from None
        self.write_errors = 0
        self.last_write_error: str | None = None
        # Batches to commit; None stops the writer. `_written` counts the batches it finished.
        self._batches: queue.SimpleQueue[list[tuple[str, tuple[Any, ...]]] | None] = queue.SimpleQueue()
        self._queued = 0
        self._written = 0
        self._done = threading.Condition()
        self._stopped = False  # set by the writer as it ends, before it wakes the waiters
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    @classmethod
    def recover(cls, path: Path) -> Path | None:
        """Move a (corrupt) database and its WAL files aside; return where it went."""
        if not path.exists():
            return None
        target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        path.rename(target)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        return target

    # -- queued writes --------------------------------------------------------------------
    def decision(self, subject: str, kind: str, reason: str, **detail: Any) -> None:
        self._pending.append(("INSERT INTO decisions(at, subject, kind, reason, detail) VALUES (?,?,?,?,?)",
                              (self._clock(), subject, kind, reason, _ENCODE(detail))))

    def session(self, session_id: int, flow: str, peer: str, state: str, **detail: Any) -> None:
        self._pending.append((
            "INSERT INTO sessions(session_id, flow, peer, state, updated, detail) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(session_id) DO UPDATE SET state=excluded.state, updated=excluded.updated, "
            "detail=excluded.detail",
            (session_id, flow, peer, state, self._clock(), _ENCODE(detail))))

    def telemetry(self, peer: str, path_id: int, report: dict[str, Any]) -> None:
        self._pending.append(("INSERT INTO telemetry(at, peer, path_id, report) VALUES (?,?,?,?)",
                              (self._clock(), peer, path_id, json.dumps(report))))

    def put(self, key: str, value: Any) -> None:
        self._pending.append(("INSERT INTO kv(key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET "
                              "value=excluded.value", (key, _ENCODE(value))))

    def flush(self) -> int:
        """Hand what is queued to the writer thread (it commits in the background); how many rows."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, []
        self._queued += 1
        self._batches.put(pending)
        return len(pending)

    @property
    def writer_alive(self) -> bool:
        return not self._stopped and self._writer.is_alive()

    def sync(self, timeout: float = 10.0) -> bool:
        """Flush and wait until the writer committed everything handed to it (reads then see it).
        False if that did not happen within `timeout` or the writer is gone (see last_write_error)."""
        self.flush()
        target = self._queued
        with self._done:
            self._done.wait_for(lambda: self._written >= target or self._stopped, timeout)
            return self._written >= target

    def _write_loop(self) -> None:
        db = None
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None)
            db.execute("PRAGMA synchronous=NORMAL")
            while (batch := self._batches.get()) is not None:
                try:
                    self._commit(db, batch)
                except Exception as exc:  # the batch as a whole failed: keep what can be kept
                    self._rollback(db)
                    kept = 0
                    for row in batch:
                        try:
                            self._commit(db, [row])
                            kept += 1
                        except Exception:  # noqa: BLE001 - counted and logged below, never raised
                            self._rollback(db)
                    self.write_errors += 1
                    self.last_write_error = f"{len(batch) - kept} of {len(batch)} rows not stored: {exc}"
                    log.error("node database %s: %s", self.path, self.last_write_error)
                with self._done:
                    self._written += 1
                    self._done.notify_all()
        except Exception as exc:  # noqa: BLE001 - the writer is gone: say so, and wake whoever waits
            self.write_errors += 1
            self.last_write_error = f"the database writer stopped: {exc}"
            log.error("node database %s: %s (decisions are no longer stored)", self.path, exc)
        finally:
            if db is not None:
                db.close()
            with self._done:
                self._stopped = True
                self._done.notify_all()

    @staticmethod
    def _commit(db: sqlite3.Connection, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        db.execute("BEGIN")
        for sql, args in batch:
            db.execute(sql, args)
        db.execute("COMMIT")

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- reads ----------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def explain(self, subject: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT at, subject, kind, reason, detail FROM decisions WHERE subject=? OR subject LIKE ? "
            "ORDER BY id DESC LIMIT ?", (subject, f"%{subject}%", limit)).fetchall()
        return [{"at": at, "subject": s, "kind": k, "reason": r, "detail": json.loads(d)}
                for at, s, k, r, d in reversed(rows)]

    def sessions(self, live_only: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT session_id, flow, peer, state, updated, detail FROM sessions"
        if live_only:
            sql += " WHERE state NOT IN ('withdrawn', 'failed')"
        return [{"session_id": i, "flow": f, "peer": p, "state": s, "updated": u, "detail": json.loads(d)}
                for i, f, p, s, u, d in self.db.execute(sql + " ORDER BY session_id")]

    def close(self) -> None:
        """Commit everything queued, stop the writer, close."""
        self.flush()
        self._batches.put(None)
        self._writer.join(timeout=30)
        if self._written < self._queued:
            log.error("node database %s: %d batches of rows were not stored before closing", self.path,
                      self._queued - self._written)
        self.db.close()
