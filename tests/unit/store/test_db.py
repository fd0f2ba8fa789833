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
    assert store.flush() == 3
    store.close()
    again = Store(tmp_path / "node.db")
    [entry] = again.explain("udp a:1")
    assert entry["kind"] == "mirror" and entry["detail"] == {"p": 0.9}
    assert again.sessions(live_only=True)[0]["state"] == "active"
    assert again.get("model") == {"weights": [1, 2]}
    again.session(7, "udp a:1 -> b:2", "h2", "withdrawn")
    again.flush()
    assert again.sessions(live_only=True) == []


def test_corrupt_database_gives_a_recovery_path(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(StoreCorrupt, match="--recover-db"):
        Store(path)
    moved = Store.recover(path)
    assert moved is not None and moved.exists() and not path.exists()
    Store(path).close()  # a fresh one works
