"""The packet path's view of an inner IPv4 packet: just enough to find its flow, fast."""

from __future__ import annotations

from dataclasses import dataclass
from socket import inet_ntoa

TCP, UDP, ICMP = 6, 17, 1


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A flow in one direction: the 5-tuple (ports are 0 for protocols without them)."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    dscp: int = 0

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
    if raw is None:
        return None
    src = inet_ntoa(raw[1:5])
    dst = inet_ntoa(raw[5:9])
    sport = int.from_bytes(raw[9:11], "big") if len(raw) >= 13 else 0
    dport = int.from_bytes(raw[11:13], "big") if len(raw) >= 13 else 0
    return FlowKey(src, dst, raw[0], sport, dport, packet[1] >> 2)


def destination(packet: bytes) -> int:
    """Inner IPv4 destination as an integer (for the prefix lookup)."""
    return int.from_bytes(packet[16:20], "big")
