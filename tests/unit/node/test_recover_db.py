"""A corrupt node database: a clear error and a way out, never a crash loop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "topomirror.cli.main", "node", "run"]


def test_corrupt_database_is_refused_then_recovered(tmp_path: Path) -> None:
    (tmp_path / "node.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 2000)
    config = tmp_path / "node.yaml"
    config.write_text(f"node_id: 9\nname: solo\nlisten: {{address: 127.0.0.1, port: 47912}}\n"
                      f"api: {{port: 47911}}\nstate_dir: {tmp_path}\n")
    refused = subprocess.run([*CLI, "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "unreadable" in refused.stderr and "--recover-db" in refused.stderr
    ready = tmp_path / "ready"
    proc = subprocess.Popen([*CLI, "-c", str(config), "--recover-db", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stdout.read() if proc.poll() is not None else "not ready in 30 s"  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert list(tmp_path.glob("node.db.corrupt-*")), "the unreadable file is kept for inspection"
