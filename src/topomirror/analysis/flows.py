"""Flow table for the packet path: per-flow counters and the first payload bytes of each new flow.

The node calls `FlowTable.observe(packet, now)` for every IP packet it reads from the TUN device.
Packets of flows that are no longer being sampled cost one key slice and one dict lookup; only
packets of new flows (and of flows still inside their sampling window) are parsed in full.
Completed samples go to analysis through a bounded queue: when it is full the oldest sample is
dropped and counted, so the packet path never waits for analysis.

Nothing here reads a clock or touches a socket: time is passed in (`now`, seconds, monotonic).

Flow keys are directional (a->b and b->a are two flows), so the first bytes of a server's
response (an HTTP status line with Content-Length, a TLS ServerHello) are sampled too.

Key bytes layout, shared with the rest of the packet path for cheap lookups:
    src address | dst address | sport (2) | dport (2) | proto (1)
13 bytes for IPv4, 37 bytes for IPv6. Ports are zero for protocols without ports and for
fragments other than the first (they carry no transport header).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from topomirror.dataplane.packet import FlowKey

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PROTO_UDPLITE = 136
# Transport protocols whose header starts with 16-bit source and destination ports.
PORTED_PROTOCOLS = frozenset({PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_UDPLITE})
# IPv6 extension headers we walk to reach the transport header (RFC 8200 section 4).
_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_FRAGMENT, _IPV6_DEST_OPTS = 0, 43, 44, 60
_IPV6_AUTH = 51
_IPV6_SIMPLE_EXTENSIONS = frozenset({_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTS})
# A legitimate packet has a handful of extension headers; the bound stops a crafted chain.
_IPV6_MAX_EXTENSION_HEADERS = 8

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH = 0x01, 0x02, 0x04, 0x08

_PROTO_BYTE = tuple(bytes((value,)) for value in range(256))
_NO_PORTS = b"\x00\x00\x00\x00"
_TCP_SEQ = struct.Struct("!I")


_Frozen = TypeVar("_Frozen")


def new_frozen(cls: type[_Frozen], values: dict[str, Any]) -> _Frozen:
    """Build a frozen (non-slotted) dataclass instance from a complete field dict, skipping __init__.

    A frozen dataclass's generated __init__ sets each field through object.__setattr__, about
    0.2 us a field: 4 us for Metadata's 20 fields, more than parsing a packet. Objects built on the
    per-flow path use this instead. Fields left out fall back to the class-level default, which
    is how dataclasses store defaults; equality, hashing and repr are unchanged (see the tests).
    """
    instance = object.__new__(cls)
    instance.__dict__.update(values)
    return instance


class ParsedPacket(NamedTuple):
    """What the packet path and analysis need from the IP and transport headers.

    A NamedTuple rather than a frozen dataclass, as `urllib.parse` does for its parse results:
    it is built for every parsed packet, and a frozen dataclass's __init__ (one object.__setattr__
    per field) costs several times more than a tuple.
    """

    version: int
    proto: int
    sport: int
    dport: int
    dscp: int
    ecn: int
    l4_offset: int
    # Start of the application payload; equals `end` when there is none.
    payload_offset: int
    # End of the IP datagram inside the buffer (the IP length field, clipped to the buffer).
    end: int
    key_bytes: bytes
    tcp_flags: int = 0
    tcp_seq: int = 0
    is_fragment: bool = False

    @property
    def payload_length(self) -> int:
        return self.end - self.payload_offset

    @property
    def src(self) -> str:
        return FlowKey.from_key_bytes(self.key_bytes).src

    @property
    def dst(self) -> str:
        return FlowKey.from_key_bytes(self.key_bytes).dst

    @property
    def flow_key(self) -> FlowKey:
        return FlowKey.from_key_bytes(self.key_bytes)


def _ipv6_transport(packet: bytes, end: int) -> tuple[int, int, bool, bool] | None:
    """Walk IPv6 extension headers: (next header, transport offset, is fragment, transport header present)."""
    next_header = packet[6]
    offset = 40
    is_fragment = False
    has_transport_header = True
    for _ in range(_IPV6_MAX_EXTENSION_HEADERS):
        if next_header in _IPV6_SIMPLE_EXTENSIONS:
            if offset + 2 > end:
                return None
            next_header, offset = packet[offset], offset + 8 + packet[offset + 1] * 8
        elif next_header == _IPV6_FRAGMENT:
            if offset + 8 > end:
                return None
            is_fragment = True
            # Only the first fragment (offset 0) carries the transport header.
            has_transport_header = (int.from_bytes(packet[offset + 2 : offset + 4], "big") >> 3) == 0
            next_header, offset = packet[offset], offset + 8
        elif next_header == _IPV6_AUTH:
            if offset + 2 > end:
                return None
            next_header, offset = packet[offset], offset + (packet[offset + 1] + 2) * 4
        else:
            return (next_header, offset, is_fragment, has_transport_header) if offset <= end else None
    return None


_TCP_BYTE, _UDP_BYTE = _PROTO_BYTE[PROTO_TCP], _PROTO_BYTE[PROTO_UDP]


def parse_ip_packet(packet: bytes) -> ParsedPacket | None:
    """Parse an IPv4 or IPv6 packet as read from a TUN device. Returns None for malformed input, never raises.

    Trailing bytes beyond the IP length field are ignored; a buffer shorter than the length field
    (a truncated capture) is parsed as far as it goes.
    """
    size = len(packet)
    # Fast path, same result as the general one (a property test checks): IPv4 without options,
    # not a fragment, TCP or UDP. That is nearly every packet a VM sends.
    if size >= 28 and packet[0] == 0x45 and not (packet[6] & 0x3F or packet[7]):
        proto = packet[9]
        total_length = (packet[2] << 8) | packet[3]
        end = total_length if total_length < size else size
        tos = packet[1]
        if proto == PROTO_TCP:
            if end < 40:
                return None
            payload_offset = 20 + ((packet[32] >> 4) << 2)
            if payload_offset < 40 or payload_offset > end:
                return None
            return ParsedPacket(
                4, PROTO_TCP, (packet[20] << 8) | packet[21], (packet[22] << 8) | packet[23], tos >> 2, tos & 0x03,
                20, payload_offset, end, packet[12:24] + _TCP_BYTE, packet[33], _TCP_SEQ.unpack_from(packet, 24)[0],
            )
        if proto == PROTO_UDP:
            if end < 28:
                return None
            return ParsedPacket(
                4, PROTO_UDP, (packet[20] << 8) | packet[21], (packet[22] << 8) | packet[23], tos >> 2, tos & 0x03,
                20, 28, end, packet[12:24] + _UDP_BYTE,
            )
    return parse_ip_packet_general(packet)


def parse_ip_packet_general(packet: bytes) -> ParsedPacket | None:
    """`parse_ip_packet` without its fast path: every IP version, option, fragment and protocol."""
    size = len(packet)
    if size < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        header_length = (packet[0] & 0x0F) * 4
        total_length = (packet[2] << 8) | packet[3]
        if header_length < 20 or total_length < header_length or size < header_length:
            return None
        end = total_length if total_length < size else size
        traffic_class = packet[1]
        proto = packet[9]
        fragment_field = (packet[6] << 8) | packet[7]
        is_fragment = bool(fragment_field & 0x3FFF)  # MF flag or a non-zero offset
        has_transport_header = (fragment_field & 0x1FFF) == 0
        addresses = packet[12:20]
        l4_offset = header_length
    elif version == 6:
        if size < 40:
            return None
        end = 40 + ((packet[4] << 8) | packet[5])
        if end > size:
            end = size
        traffic_class = ((packet[0] & 0x0F) << 4) | (packet[1] >> 4)
        transport = _ipv6_transport(packet, end)
        if transport is None:
            return None
        proto, l4_offset, is_fragment, has_transport_header = transport
        addresses = packet[8:40]
    else:
        return None

    sport = dport = tcp_flags = tcp_seq = 0
    payload_offset = l4_offset
    ports = _NO_PORTS
    if has_transport_header and proto in PORTED_PROTOCOLS:
        if proto == PROTO_TCP:
            if l4_offset + 20 > end:
                return None
            tcp_header_length = (packet[l4_offset + 12] >> 4) * 4
            if tcp_header_length < 20 or l4_offset + tcp_header_length > end:
                return None
            payload_offset = l4_offset + tcp_header_length
            tcp_flags = packet[l4_offset + 13]
            tcp_seq = _TCP_SEQ.unpack_from(packet, l4_offset + 4)[0]
        elif proto in (PROTO_UDP, PROTO_UDPLITE):
            if l4_offset + 8 > end:
                return None
            payload_offset = l4_offset + 8
        else:  # SCTP: common header is 12 bytes; chunks are not application payload we parse.
            if l4_offset + 12 > end:
                return None
            payload_offset = end
        ports = packet[l4_offset : l4_offset + 4]
        sport = (ports[0] << 8) | ports[1]
        dport = (ports[2] << 8) | ports[3]
    elif not has_transport_header:
        payload_offset = end  # a middle fragment: its bytes are not the start of any payload
    return ParsedPacket(
        version, proto, sport, dport, traffic_class >> 2, traffic_class & 0x03, l4_offset, payload_offset, end,
        addresses + ports + _PROTO_BYTE[proto], tcp_flags, tcp_seq, is_fragment,
    )


def flow_key_bytes(packet: bytes) -> bytes | None:
    """The packed flow key of a packet, or None if malformed. Same result as `parse_ip_packet(p).key_bytes`.

    This is the per-packet fast path: for the common IPv4 TCP/UDP packet it is a few index
    operations and one slice-and-concatenate, with no objects built.
    """
    size = len(packet)
    if size < 20:
        return None
    first = packet[0]
    if first == 0x45 and size >= 24:
        # IPv4 without options, the overwhelmingly common case.
        proto = packet[9]
        if proto in (PROTO_TCP, PROTO_UDP):
            total_length = (packet[2] << 8) | packet[3]
            if packet[6] & 0x3F or packet[7] or total_length < 20:
                return _full_key(packet)  # fragments and odd lengths take the careful path
            end = total_length if total_length < size else size
            if end < (40 if proto == PROTO_TCP else 28):
                return None
            if proto == PROTO_TCP:
                tcp_header_length = (packet[32] >> 4) * 4
                if tcp_header_length < 20 or 20 + tcp_header_length > end:
                    return None
            return packet[12:24] + _PROTO_BYTE[proto]
    return _full_key(packet)


def _full_key(packet: bytes) -> bytes | None:
    parsed = parse_ip_packet(packet)
    return None if parsed is None else parsed.key_bytes


@dataclass(frozen=True, slots=True)
class FlowTableConfig:
    """Bounds of the first-bytes sample and of the table itself."""

    # A sample holds at most this many payload-carrying packets ...
    sample_packets: int = 4
    # ... and this many payload bytes (the last chunk is cut to fit) ...
    sample_bytes: int = 4096
    # ... and ends this long after the flow's first packet, even if little was seen.
    sample_window_s: float = 0.5
    # A TCP segment with PSH ends an application write (a whole HTTP request, a ClientHello), and a
    # UDP datagram is a whole message (a DNS query): complete the sample there rather than wait for
    # more packets or the time bound, which would delay the mirror decision for request/response flows.
    complete_on_push: bool = True
    idle_timeout_s: float = 30.0
    # New flows beyond this are counted but not tracked, so a flood of 5-tuples cannot exhaust memory.
    max_flows: int = 262_144
    sample_queue_capacity: int = 4096

    def __post_init__(self) -> None:
        if self.sample_packets < 1 or self.sample_bytes < 1 or self.sample_queue_capacity < 1 or self.max_flows < 1:
            raise ValueError("flow table bounds (sample_packets, sample_bytes, queue capacity, max_flows) must be >= 1")
        if self.sample_window_s < 0 or self.idle_timeout_s <= 0:
            raise ValueError("sample_window_s must be >= 0 and idle_timeout_s > 0")


@dataclass(frozen=True)
class FlowSample:
    """The first payload bytes of a new flow, handed to analysis."""

    # Packed flow key (module docstring); `key` decodes it on demand, since turning addresses into
    # text costs more than extracting most metadata and many consumers only need the ports.
    key_bytes: bytes
    first_seen: float
    completed_at: float
    # One entry per payload-carrying packet, TCP chunks put in sequence order without overlaps.
    payloads: tuple[bytes, ...]
    # All packets seen while sampling, including those without payload (SYN, pure ACKs).
    packets: int
    ip_version: int
    dscp: int
    ecn: int
    # Why sampling stopped: "packets", "bytes", "time", "push", "fin" or "expired".
    completion: str

    @property
    def key(self) -> FlowKey:
        return FlowKey.from_key_bytes(self.key_bytes)

    @property
    def proto(self) -> int:
        return self.key_bytes[-1]

    @property
    def sport(self) -> int:
        return (self.key_bytes[-5] << 8) | self.key_bytes[-4]

    @property
    def dport(self) -> int:
        return (self.key_bytes[-3] << 8) | self.key_bytes[-2]

    @property
    def payload(self) -> bytes:
        """TCP: the byte stream start. UDP: only the first datagram (each datagram is one message)."""
        if not self.payloads:
            return b""
        if self.key_bytes[-1] == PROTO_TCP:
            return b"".join(self.payloads)
        return self.payloads[0]


@dataclass(frozen=True, slots=True)
class FlowTableCounters:
    packets: int
    bytes: int
    malformed_packets: int
    flows_created: int
    flows_expired: int
    active_flows: int
    untracked_packets: int
    samples_completed: int
    dropped_samples: int
    queued_samples: int


class _FlowState:
    """Mutable per-flow state; a plain slotted class because the packet path touches it for every packet."""

    __slots__ = (
        "first_seen", "last_seen", "packets", "bytes", "sampling",
        "chunks", "sample_bytes", "sample_payload_packets", "sample_packets", "parsed_first",
    )

    def __init__(self, parsed_first: ParsedPacket, now: float) -> None:
        self.first_seen = now
        self.last_seen = now
        self.packets = 0
        self.bytes = 0
        self.sampling = True
        # (tcp sequence number, payload) per payload-carrying packet.
        self.chunks: list[tuple[int, bytes]] = []
        self.sample_bytes = 0
        self.sample_payload_packets = 0
        self.sample_packets = 0
        self.parsed_first = parsed_first


@dataclass(frozen=True, slots=True)
class FlowStats:
    key: FlowKey
    first_seen: float
    last_seen: float
    packets: int
    bytes: int
    sampling: bool


class FlowTable:
    """Per-flow state and first-bytes sampling. Single writer (the packet path); samples may be
    consumed from another thread with `take_sample` (deque append/popleft are atomic in CPython)."""

    def __init__(self, config: FlowTableConfig | None = None) -> None:
        self.config = config or FlowTableConfig()
        self._flows: dict[bytes, _FlowState] = {}
        # Flows still sampling, in first-seen order, so the time bound is found without a full scan.
        self._sampling: dict[bytes, _FlowState] = {}
        # deque(maxlen) evicts the oldest sample when full: a stale sample is the least useful one,
        # since its flow's decision deadline has most likely passed already.
        self._samples: deque[FlowSample] = deque(maxlen=self.config.sample_queue_capacity)
        self._packets = 0
        self._bytes = 0
        self._malformed_packets = 0
        self._flows_created = 0
        self._flows_expired = 0
        self._untracked_packets = 0
        self._samples_completed = 0
        self.dropped_samples = 0

    def __len__(self) -> int:
        return len(self._flows)

    def observe(self, packet: bytes, now: float) -> bytes | None:
        """Account one packet; returns its flow key bytes (for the caller's own lookups), None if malformed."""
        key = flow_key_bytes(packet)
        if key is None:
            self._malformed_packets += 1
            return None
        self._packets += 1
        self._bytes += len(packet)
        state = self._flows.get(key)
        if state is not None and not state.sampling:
            state.packets += 1
            state.bytes += len(packet)
            state.last_seen = now
            return key
        self._observe_slow(key, state, packet, now)
        return key

    def _observe_slow(self, key: bytes, state: _FlowState | None, packet: bytes, now: float) -> None:
        parsed = parse_ip_packet(packet)
        if parsed is None:  # cannot happen after flow_key_bytes succeeded, but stay safe
            return
        config = self.config
        if state is None:
            if len(self._flows) >= config.max_flows:
                self._untracked_packets += 1
                return
            state = _FlowState(parsed, now)
            self._flows[key] = state
            self._sampling[key] = state
            self._flows_created += 1
        elif now - state.first_seen >= config.sample_window_s:
            # This packet arrived after the window: the sample ends without it.
            self._complete(key, state, now, "time")
            state.packets += 1
            state.bytes += len(packet)
            state.last_seen = now
            return
        state.packets += 1
        state.bytes += len(packet)
        state.last_seen = now
        state.sample_packets += 1

        payload_length = parsed.end - parsed.payload_offset
        if payload_length > 0:
            room = config.sample_bytes - state.sample_bytes
            take = payload_length if payload_length < room else room
            state.chunks.append((parsed.tcp_seq, packet[parsed.payload_offset : parsed.payload_offset + take]))
            state.sample_bytes += take
            state.sample_payload_packets += 1
            if state.sample_bytes >= config.sample_bytes:
                self._complete(key, state, now, "bytes")
                return
            if state.sample_payload_packets >= config.sample_packets:
                self._complete(key, state, now, "packets")
                return
            if config.complete_on_push and _ends_application_message(parsed, state.chunks):
                self._complete(key, state, now, "push")
                return
        if parsed.tcp_flags & (TCP_FIN | TCP_RST):
            self._complete(key, state, now, "fin")

    def _complete(self, key: bytes, state: _FlowState, now: float, completion: str) -> None:
        state.sampling = False
        self._sampling.pop(key, None)
        first = state.parsed_first
        sample = new_frozen(FlowSample, {
            "key_bytes": key,
            "first_seen": state.first_seen,
            "completed_at": now,
            "payloads": (
                _ordered_payloads(state.chunks) if first.proto == PROTO_TCP else tuple(c for _, c in state.chunks)
            ),
            "packets": state.sample_packets,
            "ip_version": first.version,
            "dscp": first.dscp,
            "ecn": first.ecn,
            "completion": completion,
        })
        state.chunks = []
        self._samples_completed += 1
        if len(self._samples) == self._samples.maxlen:
            self.dropped_samples += 1
        self._samples.append(sample)

    def flush_due(self, now: float) -> int:
        """Complete samples whose time window has ended without a packet to notice it. Returns how many."""
        window = self.config.sample_window_s
        due: list[tuple[bytes, _FlowState]] = []
        for key, state in self._sampling.items():  # first-seen order: stop at the first one still in time
            if now - state.first_seen < window:
                break
            due.append((key, state))
        for key, state in due:
            self._complete(key, state, now, "time")
        return len(due)

    def expire(self, now: float) -> int:
        """Complete due samples, then remove flows idle for `idle_timeout_s`. Returns flows removed.

        A full scan: call it at a low rate (about once a second), not per packet.
        """
        self.flush_due(now)
        timeout = self.config.idle_timeout_s
        idle = [key for key, state in self._flows.items() if now - state.last_seen >= timeout]
        for key in idle:
            state = self._flows.pop(key)
            if state.sampling:
                self._complete(key, state, now, "expired")
        self._flows_expired += len(idle)
        return len(idle)

    def take_sample(self) -> FlowSample | None:
        """Oldest queued sample, or None when the queue is empty."""
        try:
            return self._samples.popleft()
        except IndexError:
            return None

    def take_samples(self, limit: int | None = None) -> list[FlowSample]:
        taken: list[FlowSample] = []
        while limit is None or len(taken) < limit:
            sample = self.take_sample()
            if sample is None:
                break
            taken.append(sample)
        return taken

    def stats(self, key: bytes) -> FlowStats | None:
        state = self._flows.get(key)
        if state is None:
            return None
        return FlowStats(
            key=FlowKey.from_key_bytes(key),
            first_seen=state.first_seen,
            last_seen=state.last_seen,
            packets=state.packets,
            bytes=state.bytes,
            sampling=state.sampling,
        )

    def counters(self) -> FlowTableCounters:
        return FlowTableCounters(
            packets=self._packets,
            bytes=self._bytes,
            malformed_packets=self._malformed_packets,
            flows_created=self._flows_created,
            flows_expired=self._flows_expired,
            active_flows=len(self._flows),
            untracked_packets=self._untracked_packets,
            samples_completed=self._samples_completed,
            dropped_samples=self.dropped_samples,
            queued_samples=len(self._samples),
        )


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_HEADERS_FRAME = 0x1


def _ends_application_message(parsed: ParsedPacket, chunks: list[tuple[int, bytes]]) -> bool:
    if parsed.proto == PROTO_UDP:
        return True
    if parsed.proto != PROTO_TCP or not parsed.tcp_flags & TCP_PSH:
        return False
    first = chunks[0][1]
    if first.startswith(_H2_PREFACE[: len(first)]):
        # A cleartext HTTP/2 client pushes its preface and SETTINGS before the first request's
        # HEADERS: keep sampling until a HEADERS frame has been seen (or another bound hits).
        return _h2_has_headers_frame(b"".join(chunk for _, chunk in chunks))
    return True


def _h2_has_headers_frame(stream: bytes) -> bool:
    offset = len(_H2_PREFACE)
    while offset + 9 <= len(stream):
        if stream[offset + 3] == _H2_HEADERS_FRAME:
            return True
        offset += 9 + int.from_bytes(stream[offset : offset + 3], "big")
    return False


def _ordered_payloads(chunks: list[tuple[int, bytes]]) -> tuple[bytes, ...]:
    """TCP chunks in sequence order with retransmitted or overlapping bytes removed."""
    if not chunks:
        return ()
    base = chunks[0][0]
    # Signed distance from the first chunk seen, modulo 2**32: a segment that arrived later may
    # still come earlier in the stream, and the sequence space wraps.
    relative = sorted(((((seq - base) + 0x80000000) & 0xFFFFFFFF) - 0x80000000, chunk) for seq, chunk in chunks)
    ordered: list[bytes] = []
    next_offset = relative[0][0]
    for offset, chunk in relative:
        if offset > next_offset:
            break  # a gap (a segment we have not seen): what follows is not the stream's start
        skip = next_offset - offset
        if skip < len(chunk):
            ordered.append(chunk[skip:])
            next_offset = offset + len(chunk)
    return tuple(ordered)


def sample_from_packet(packet: bytes, now: float = 0.0) -> FlowSample | None:
    """A one-packet sample (offline analysis, benchmarks, tests). None if the packet is malformed."""
    parsed = parse_ip_packet(packet)
    if parsed is None:
        return None
    payload = packet[parsed.payload_offset : parsed.end]
    return new_frozen(FlowSample, {
        "key_bytes": parsed.key_bytes,
        "first_seen": now,
        "completed_at": now,
        "payloads": (payload,) if payload else (),
        "packets": 1,
        "ip_version": parsed.version,
        "dscp": parsed.dscp,
        "ecn": parsed.ecn,
        "completion": "packets",
    })


__all__ = [
    "FlowKey",
    "FlowSample",
    "FlowStats",
    "FlowTable",
    "FlowTableConfig",
    "FlowTableCounters",
    "ParsedPacket",
    "flow_key_bytes",
    "new_frozen",
    "parse_ip_packet",
    "sample_from_packet",
]
