"""The native per-packet loop (`_fastpath`, C) or None, and why not.

Built by `pip install` from `_fastpath.c` against OpenSSL's libcrypto (`make` installs
Debian's libssl-dev when it is missing). The Python modules it mirrors stay the reference:
`wire.dedup.PyDedupWindow`, `feedback.measure.PyPathMeter` and `Engine.receive`. Setting
`TOPOMIRROR_DATAPLANE=python` in a node's environment runs the pure-Python data plane instead
(the benchmark compares both in one run).
"""

from __future__ import annotations

import os
from types import ModuleType

WANTED = os.environ.get("TOPOMIRROR_DATAPLANE", "native").strip().lower() != "python"
# `TOPOMIRROR_PACKET_THREAD=on|off|auto` (or 1|0) sets the native packet thread whatever the
# config's `listen.packet_thread` says: every node of a lab at once (the benchmark compares them
# in one run). Unset: the config decides.
PACKET_THREAD_SETTING = os.environ.get("TOPOMIRROR_PACKET_THREAD", "").strip().lower()
PACKET_THREAD = {"1": "on", "on": "on", "0": "off", "off": "off", "auto": "auto"}.get(PACKET_THREAD_SETTING)


class PacketThreadFailed(RuntimeError):
    """The native packet thread stopped on an error; the daemon's event loop takes over."""


def _load() -> tuple[ModuleType | None, str]:
    if not WANTED:
        return None, "TOPOMIRROR_DATAPLANE=python"
    try:
        import topomirror.dataplane._fastpath as _fastpath
    except ImportError as exc:  # not built: the package was installed without a C compiler or libssl-dev
        return None, f"native data plane not built ({exc}); run 'make setup' (needs gcc and libssl-dev)"
    return _fastpath, ""


fast, why_not = _load()
