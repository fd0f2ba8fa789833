"""The packet path's view of an inner IPv4 packet: just enough to find its flow, fast."""

from __future__ import annotations

from socket import AF_INET, AF_INET6, inet_ntoa, inet_ntop, inet_pton
from struct import Struct
from typing import NamedTuple

TCP, UDP, ICMP = 6, 17, 1
IPV4_KEY_LENGTH, IPV6_KEY_LENGTH = 13, 37  # analysis's packed keys (FlowKey.from_key_bytes)


class FlowKey(NamedTuple):
    """A flow in one direction: the 5-tuple (ports are 0 for protocols without them), addresses as
    text as operators read them, and the DSCP the flow was first seen with. The one flow identity
    of the node, the controller, the rules and analysis. A named tuple: immutable and hashable
    like a frozen dataclass, and a third of its cost to build (one per new flow, thousands a
    second)."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    dscp: int = 0

    @classmethod
    def from_key_bytes(cls, key: bytes) -> FlowKey:
        """Decode the analysis flow table's packed key: src | dst | sport (2) | dport (2) | proto (1),
        13 bytes for IPv4 and 37 for IPv6 (`topomirror.analysis.flows`)."""
        if len(key) == IPV4_KEY_LENGTH:
            family, address_length = AF_INET, 4
        elif len(key) == IPV6_KEY_LENGTH:
            family, address_length = AF_INET6, 16
        else:
            raise ValueError(f"flow key must be {IPV4_KEY_LENGTH} or {IPV6_KEY_LENGTH} bytes, got {len(key)}")
        ports = 2 * address_length
        return cls(inet_ntop(family, key[:address_length]), inet_ntop(family, key[address_length:ports]),
                   key[ports + 4], (key[ports] << 8) | key[ports + 1], (key[ports + 2] << 8) | key[ports + 3])

    def to_key_bytes(self) -> bytes:
        """The packed key (inverse of `from_key_bytes`; the DSCP is not part of it)."""
        family = AF_INET6 if ":" in self.src else AF_INET
        return (inet_pton(family, self.src) + inet_pton(family, self.dst)
                + self.sport.to_bytes(2, "big") + self.dport.to_bytes(2, "big") + bytes((self.proto,)))

    def reversed(self) -> FlowKey:
        """The key of the opposite direction of the connection (its DSCP is not known: kept)."""
        return FlowKey(self.dst, self.src, self.proto, self.dport, self.sport, self.dscp)

    def __str__(self) -> str:
        name = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}.get(self.proto, str(self.proto))
        src, dst = (f"[{self.src}]", f"[{self.dst}]") if ":" in self.src else (self.src, self.dst)
        if self.proto in (TCP, UDP):
            return f"{name} {src}:{self.sport} -> {dst}:{self.dport}"
        return f"{name} {src} -> {dst}"


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
