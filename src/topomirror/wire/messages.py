"""Payloads of the non-DATA messages (inside the AEAD, so authenticated and private).

They are small and infrequent (FEEDBACK every ~100 ms per path, CONTROL on session changes,
PROBE a few per second), so they are compact JSON: easy to evolve and to debug with a capture
and the key. DATA payloads are the raw inner IP packet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


class MalformedMessage(ValueError):
    pass


@dataclass(frozen=True)
class PathReport:
    """What the destination saw on one path from one sender during one interval."""

    path_id: int
    packets: int
    bytes: int
    lost: int  # from path-sequence gaps
    reordered: int
    wins: int  # copies that arrived first (and were delivered)
    duplicates: int  # copies that arrived second
    owd_min_us: int  # relative one-way delay: above this path's minimum ever seen
    owd_avg_us: int
    owd_max_us: int
    jitter_us: int  # RFC 3550 interarrival jitter
    interval_ms: int


@dataclass(frozen=True)
class Feedback:
    reporter: int  # node id of the destination
    sequence: int  # report counter
    paths: list[PathReport] = field(default_factory=list)


@dataclass(frozen=True)
class Control:
    """`op` is vc_install | vc_remove | ack | nack (relay virtual connections: idempotent, same
    request, same result), announce (a bulk transfer on links), silent (the standard path
    between sender and receiver fell silent) or protect (mirror the other direction of a
    connection the sender mirrors, named in `detail`, for `lease_ms`)."""

    op: str
    request_id: int
    channel: int = 0
    next_hop: str = ""  # "address:port" the relay forwards to
    lease_ms: int = 0
    detail: str = ""


@dataclass(frozen=True)
class Probe:
    probe_id: int


def encode(message: Feedback | Control | Probe) -> bytes:
    return json.dumps(asdict(message), separators=(",", ":")).encode()


def _load(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("payload is not an object")
    return data


def decode_feedback(payload: bytes) -> Feedback:
    data = _load(payload)
    try:
        return Feedback(int(data["reporter"]), int(data["sequence"]),
                        [PathReport(**p) for p in data.get("paths", [])])
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"bad feedback: {exc}") from None


def decode_control(payload: bytes) -> Control:
    data = _load(payload)
    try:
        return Control(**data)
    except TypeError as exc:
        raise MalformedMessage(f"bad control: {exc}") from None


def decode_probe(payload: bytes) -> Probe:
    data = _load(payload)
    try:
        return Probe(int(data["probe_id"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"bad probe: {exc}") from None
