"""Warm restart: `topomirror node run --config FILE --replace PID`.

A node daemon spends most of its start loading code (about 2 s of imports on a 2-core VM: the
predictor's river model pulls in SciPy), and a plain restart (stop, then start) is an outage for
every flow through the host for all of it. With `--replace PID` the new daemon loads first, while
the old one still carries the traffic, then stops it (SIGTERM: it snapshots its sessions and model
and closes the store) and takes over the TUN, the socket and the store. The outage is the old
daemon's shutdown plus the new one's set-up, not the imports.

Only a topomirror node daemon running the same config file is ever signalled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from topomirror.lab.registry import process_start_time, terminate


class ReplaceError(RuntimeError):
    pass


def preload() -> None:
    """Import what building and running a node imports lazily, so a replacing daemon pays for it
    before it stops the one it replaces."""
    import river.linear_model  # noqa: F401 - the predictor's model (and SciPy under it)
    import river.optim  # noqa: F401
    import uvloop  # noqa: F401

    import topomirror.api.server  # noqa: F401
    import topomirror.store.db  # noqa: F401


def daemon_config(cmdline: bytes) -> Path | None:
    """The `--config` of a `topomirror ... node run` command line (/proc/PID/cmdline), else None."""
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    for i in range(len(args) - 1):
        if args[i] == "node" and args[i + 1] == "run":
            rest = args[i + 2:]
            for j, arg in enumerate(rest):
                if arg in ("--config", "-c") and j + 1 < len(rest):
                    return Path(rest[j + 1])
                if arg.startswith("--config="):
                    return Path(arg.split("=", 1)[1])
            return None
    return None


def check(pid: int, config: Path) -> int | None:
    """The start time of `pid` if it is a node daemon running `config`, None if it is not running;
    ReplaceError if it is some other process (which is never signalled)."""
    if pid == os.getpid():
        raise ReplaceError(f"process {pid} is this daemon itself: give --replace the PID of the one it replaces")
    started = process_start_time(pid)
    if started is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    theirs = daemon_config(cmdline)
    if theirs is not None and not theirs.is_absolute():
        try:  # relative to where that daemon was started, not to here
            theirs = Path(os.readlink(f"/proc/{pid}/cwd")) / theirs
        except OSError:
            theirs = None
    if theirs is None or theirs.resolve() != config.resolve():
        raise ReplaceError(f"process {pid} is not a topomirror node daemon running {config}; "
                           "not stopping it (give --replace the PID of the daemon this one replaces)")
    return started


def replace(pid: int, config: Path, *, timeout: float = 10.0) -> float:
    """Stop the node daemon `pid` (which must run `config`) and wait until it is gone.

    Returns the seconds it took to go (0.0 if it was not running). SIGTERM first; SIGKILL after
    `timeout` (a daemon that hangs in shutdown loses its last snapshot, as in a crash)."""
    started = check(pid, config)
    began = time.monotonic()
    # (not reaped here: the daemon replaced is never our child; its parent reaps it)
    return time.monotonic() - began if terminate(pid, started, timeout, reap=False) else 0.0
