"""What a deployed lab created, on disk, so `destroy` removes exactly that.

One JSON file per lab under the run directory (default `/run/topomirror/labs/<lab>/`,
override with `TOPOMIRROR_RUN_DIR`). Each object is recorded *before* it is created, so a
crash half-way through deploy still leaves a registry that names everything that may exist.
Processes are recorded with their kernel start time so a recycled PID is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def run_root() -> Path:
    return Path(os.environ.get("TOPOMIRROR_RUN_DIR", "/run/topomirror")) / "labs"


@dataclass
class ProcessRecord:
    pid: int
    start_time: int
    namespace: str
    argv: list[str]
    role: str = ""


@dataclass
class LinkState:
    bw: int | None
    loss: float
    queue: str | None
    up: bool = True
    # Per-direction overrides set with `lab set --direction`, keyed by "node:iface".
    ends: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class LabRegistry:
    lab: str
    file: str
    namespaces: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    links: dict[str, LinkState] = field(default_factory=dict)
    complete: bool = False
    deployed_at: float = 0.0

    @property
    def folder(self) -> Path:
        return run_root() / self.lab

    @property
    def path(self) -> Path:
        return self.folder / "registry.json"

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, lab: str) -> LabRegistry | None:
        path = run_root() / lab / "registry.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["processes"] = [ProcessRecord(**p) for p in raw.get("processes", [])]
        raw["links"] = {k: LinkState(**v) for k, v in raw.get("links", {}).items()}
        return cls(**raw)

    def remove_files(self) -> None:
        if self.path.exists():
            self.path.unlink()


def process_start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of a live PID; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces, so split after its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped: nothing left to stop
        return None
    return int(fields[19])


def terminate(pid: int, start_time: int | None, timeout: float = 3.0, *, reap: bool = True) -> bool:
    """End the process `pid` if it is still the one that started at `start_time`: SIGTERM, then
    SIGKILL after `timeout`; return once it is gone (a zombie counts as gone; with `reap`, one of
    our children is reaped). False if it was not running. The start time guards against a PID
    the kernel has given to another process."""
    if start_time is None or process_start_time(pid) != start_time:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = False
    while process_start_time(pid) == start_time:
        if not killed and time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed = True
        if reap:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    if reap:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return True
