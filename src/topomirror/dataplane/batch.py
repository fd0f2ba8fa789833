"""Syscall batching for the underlay socket: UDP GSO on send, UDP GRO on receive.

A node sends most datagrams in bursts of equal size to a few addresses (a TUN batch of one flow,
two copies each; a relay forwarding a burst). Linux can take such a burst in one `sendmsg` with
a `UDP_SEGMENT` control message (the kernel cuts it into datagrams of that size) and hand a
burst back in one `recvmsg` when the socket has `UDP_GRO` (a control message gives the segment
size). Both save a system call per datagram, the largest cost per packet after the AEAD.

The grouping and splitting are pure functions (`gso_runs`, `split_gro`), property-tested; the
`UdpIO` wrapper is the thin I/O around them and falls back to one `sendto` per datagram when the
kernel refuses segmentation.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable

Address = tuple[str, int]

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the cmsg carries a struct timespec
_TIMESPEC = struct.Struct("=qq")
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS is 64 on older kernels, 128 on newer
MAX_SUPER = 65_000  # payload bytes of one super-datagram (below 65,535 minus IP and UDP headers)
_U16 = struct.Struct("=H")


def gso_runs(items: Iterable[tuple[bytes, Address]], *, max_segments: int = MAX_SEGMENTS,
             max_bytes: int = MAX_SUPER) -> list[tuple[Address, int, list[bytes]]]:
    """Group datagrams into GSO sends: (address, segment size, datagrams).

    Within a run every datagram has the segment size except the last, which may be shorter (the
    kernel's rule). Order per address is kept; datagrams to different addresses may interleave
    differently, which is harmless (they travel different paths anyway).
    """
    open_runs: dict[Address, tuple[int, list[bytes], int]] = {}  # address -> (size, datagrams, bytes)
    out: list[tuple[Address, int, list[bytes]]] = []
    for datagram, address in items:
        size = len(datagram)
        run = open_runs.get(address)
        if run is not None:
            seg, group, total = run
            # Join the run if it stays legal: equal size, or shorter as its final datagram.
            if size <= seg and len(group) < max_segments and total + size <= max_bytes:
                group.append(datagram)
                if size < seg:
                    out.append((address, seg, group))
                    del open_runs[address]
                else:
                    open_runs[address] = (seg, group, total + size)
                continue
            out.append((address, seg, group))
        open_runs[address] = (size, [datagram], size)
    out.extend((address, seg, group) for address, (seg, group, _total) in open_runs.items())
    return out


def split_gro(data: bytes, segment: int | None) -> list[bytes]:
    """Cut a GRO super-datagram back into its datagrams (all `segment` long but the last)."""
    if not segment or segment >= len(data):
        return [data]
    return [data[i:i + segment] for i in range(0, len(data), segment)]


class UdpIO:
    """The node's underlay socket with batched send and receive; counts send errors by reason."""

    def __init__(self, sock: socket.socket, *, gso: bool = True, gro: bool = True,
                 timestamps: bool = True) -> None:
        self.sock = sock
        self.gso = gso
        self.gro = False
        self.timestamps = False
        self.errors: dict[str, int] = {}
        # send_messages: trips through the kernel's stack (a GSO run is one; the C loop makes several
        # in one sendmmsg call, so its send_calls are fewer)
        self.stats = {"send_calls": 0, "send_messages": 0, "datagrams_sent": 0, "recv_calls": 0,
                      "datagrams_received": 0}
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                self.gro = False
        if timestamps:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.timestamps = True
            except OSError:
                self.timestamps = False
        self._cmsg_space = ((socket.CMSG_SPACE(_U16.size) if self.gro else 0)
                            + (socket.CMSG_SPACE(_TIMESPEC.size) if self.timestamps else 0))

    def _error(self, exc: OSError) -> int:
        reason = errno.errorcode.get(exc.errno or 0, "error").lower()
        self.errors[reason] = self.errors.get(reason, 0) + 1
        return exc.errno or 0

    def send(self, items: list[tuple[bytes, Address]]) -> list[int]:
        """Send every datagram; returns the errno of each failed send call (for drop counting)."""
        failed: list[int] = []
        stats = self.stats
        stats["datagrams_sent"] += len(items)
        if not self.gso or len(items) == 1:
            sendto = self.sock.sendto
            for datagram, address in items:
                stats["send_calls"] += 1
                stats["send_messages"] += 1
                try:
                    sendto(datagram, address)
                except OSError as exc:
                    failed.append(self._error(exc))
            return failed
        sendmsg, sendto = self.sock.sendmsg, self.sock.sendto
        for address, seg, group in gso_runs(items):
            stats["send_calls"] += 1
            stats["send_messages"] += 1
            try:
                if len(group) == 1:
                    sendto(group[0], address)
                else:
                    sendmsg(group, [(SOL_UDP, UDP_SEGMENT, _U16.pack(seg))], 0, address)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT) and len(group) > 1:
                    # No segmentation offload here: from now on one datagram per call.
                    self.gso = False
                    failed.extend(self.send([(d, address) for d in group]))
                    stats["datagrams_sent"] -= len(group)
                else:
                    failed.append(self._error(exc))
        return failed

    def recv(self) -> tuple[list[bytes], int | None]:
        """One receive call: its datagrams (several when the kernel coalesced them) and the
        kernel's arrival time in CLOCK_REALTIME nanoseconds (None without timestamps).

        Raises BlockingIOError when nothing is waiting.
        """
        self.stats["recv_calls"] += 1
        if not self._cmsg_space:
            datagrams, stamp = [self.sock.recv(65535)], None
        else:
            data, ancillary, _flags, _addr = self.sock.recvmsg(65535, self._cmsg_space)
            segment = stamp = None
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = _U16.unpack_from(value)[0]
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    stamp = seconds * 1_000_000_000 + nanoseconds
            datagrams = split_gro(data, segment)
        self.stats["datagrams_received"] += len(datagrams)
        return datagrams, stamp
