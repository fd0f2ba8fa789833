"""Wire protocol v1: the 24-byte header that precedes every encrypted payload.

Layout (network byte order), see docs/protocol.md:

    0      u8   version (high 4 bits, = 1) | message type (low 4 bits)
    1      u8   path id (0 = standard path, 1..255 = mirror paths)
    2-3    u16  channel: the virtual connection a relay forwards by (0 = none, direct)
    4-5    u16  sender node id (selects the peer key)
    6-7    u16  sender epoch (bumped at each start; selects the derived key)
    8-15   u64  session sequence (per sender -> receiver; de-duplication, replay, AEAD nonce)
    16-19  u32  path sequence (per sender -> receiver and path: loss per path)
    20-23  u32  send time, microseconds, modulo 2^32 (the sender's clock)

The header is authenticated as AEAD associated data; the payload after it is ciphertext plus a
16-byte tag. Relays read only bytes 0-5 and forward the datagram unchanged.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
HEADER = struct.Struct("!BBHHHQII")
HEADER_SIZE = HEADER.size  # 24
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE  # bytes added to an inner packet
UDP_IP_OVERHEAD = 28  # outer IPv4 (20) + UDP (8)
MAX_SEQ = 2**64 - 1
U32 = 2**32


class MessageType(enum.IntEnum):
    DATA = 1  # an inner IP packet for the destination's TUN
    FEEDBACK = 2  # per-path measurements, destination -> source
    PROBE = 3  # measures a path that carries no traffic
    CONTROL = 4  # virtual-connection install/remove and acknowledgements


class MalformedHeader(ValueError):
    """The datagram is not a v1 topomirror header (too short, bad version or type)."""


@dataclass(frozen=True, slots=True)
class Header:
    type: MessageType
    path_id: int
    channel: int
    sender: int
    epoch: int
    seq: int
    path_seq: int
    send_time_us: int

    def pack(self) -> bytes:
        return HEADER.pack((VERSION << 4) | int(self.type), self.path_id, self.channel,
                           self.sender, self.epoch, self.seq, self.path_seq,
                           self.send_time_us % U32)


def unpack_header(datagram: bytes | bytearray | memoryview) -> Header:
    if len(datagram) < HEADER_SIZE:
        raise MalformedHeader(f"datagram of {len(datagram)} bytes is shorter than the header")
    first, path_id, channel, sender, epoch, seq, path_seq, send_time = HEADER.unpack_from(datagram)
    if first >> 4 != VERSION:
        raise MalformedHeader(f"unsupported version {first >> 4}")
    try:
        kind = MessageType(first & 0x0F)
    except ValueError:
        raise MalformedHeader(f"unknown message type {first & 0x0F}") from None
    return Header(kind, path_id, channel, sender, epoch, seq, path_seq, send_time)


def peek_routing(datagram: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """(first byte, channel, sender) without building a Header: what a relay needs."""
    if len(datagram) < HEADER_SIZE:
        return None
    return datagram[0], (datagram[2] << 8) | datagram[3], (datagram[4] << 8) | datagram[5]


def time_diff_us(later: int, earlier: int) -> int:
    """Signed difference of two u32 microsecond stamps (valid for |diff| < 35 minutes)."""
    diff = (later - earlier) % U32
    return diff - U32 if diff >= U32 // 2 else diff


def tun_mtu(underlay_mtu: int) -> int:
    """Largest inner packet whose encapsulation fits one underlay packet."""
    return underlay_mtu - UDP_IP_OVERHEAD - OVERHEAD
