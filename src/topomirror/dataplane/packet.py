"""The packet path's view of an inner IPv4 packet: just enough to find its flow, fast."""

from __future__ import annotations

from socket import inet_ntoa
from struct import Struct
from typing import NamedTuple

TCP, UDP, ICMP = 6, 17, 1


class FlowKey(NamedTuple):
    """A flow in one direction: the 5-tuple (ports are 0 for protocols without them). A named
    tuple: immutable and hashable like a frozen dataclass, and a third of its cost to build (one
    per new flow, thousands a second)."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    dscp: int = 0

    def reversed(self) -> FlowKey:
        """The key of the opposite direction of the connection (its DSCP is not known: kept)."""
        return FlowKey(self.dst, self.src, self.proto, self.dport, self.sport, self.dscp)

    def __str__(self) -> str:
        name = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}.get(self.proto, str(self.proto))
        if self.proto in (TCP, UDP):
            return f"{name} {self.src}:{self.sport} -> {self.dst}:{self.dport}"
        return f"{name} {self.src} -> {self.dst}"


def flow_bytes(packet: bytes) -> bytes | None:
    """A cheap, hashable flow identity: addresses + protocol + ports, straight from the bytes.

    Returns None for what is not a well-formed IPv4 packet (it is dropped as malformed).
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    if proto in (TCP, UDP) and len(packet) >= ihl + 4:
        return packet[9:10] + packet[12:20] + packet[ihl:ihl + 4]
    return packet[9:10] + packet[12:20]


def flow_key(packet: bytes) -> FlowKey | None:
    raw = flow_bytes(packet)
    return None if raw is None else key_of(raw, packet[1] >> 2)


_PORTS = Struct("!HH")
_NAMES: dict[bytes, str] = {}  # address bytes -> text: a node's flows go to and come from few hosts


def key_of(raw: bytes, dscp: int) -> FlowKey:
    """The FlowKey of `flow_bytes` (a new flow on the packet path: thousands a second)."""
    names = _NAMES
    src, dst = raw[1:5], raw[5:9]
    src_name, dst_name = names.get(src), names.get(dst)
    if src_name is None or dst_name is None:
        if len(names) >= 4096:
            names.clear()
        src_name = names[src] = inet_ntoa(src)
        dst_name = names[dst] = inet_ntoa(dst)
    sport, dport = _PORTS.unpack_from(raw, 9) if len(raw) >= 13 else (0, 0)
    return FlowKey(src_name, dst_name, raw[0], sport, dport, dscp)


def destination(packet: bytes) -> int:
    """Inner IPv4 destination as an integer (for the prefix lookup)."""
    return int.from_bytes(packet[16:20], "big")
