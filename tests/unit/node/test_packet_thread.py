"""The daemon's side of the packet thread: what it does when the thread stops on an error."""

from __future__ import annotations

import asyncio
import socket

from topomirror.dataplane.batch import UdpIO
from topomirror.node.daemon import Node


class _FailedThread:
    """Stands in for a `_fastpath.PacketThread` that stopped on an error (take raises it once)."""

    def __init__(self) -> None:
        self.stopped = False
        self.failure: Exception | None = RuntimeError("no meter for path 0")

    def take(self) -> list[tuple[bytes, int]]:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        return []

    def take_tx(self) -> tuple[list[bytes], list[tuple[bytes, bytes]], list[object]]:
        return [], [], []

    def counts(self) -> tuple[int, ...]:
        return (0,) * 12

    def tx_counts(self) -> tuple[int, ...]:
        return (0,) * 8

    def stop(self) -> None:
        self.stopped = True

    def release(self) -> None: ...

    def release_tx(self) -> None: ...


def test_a_failed_packet_thread_hands_the_socket_back_to_the_event_loop(node: Node) -> None:
    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        node.loop, node.sock, node.udp = loop, sock, UdpIO(sock, gso=False, gro=False)
        failed = _FailedThread()
        node.packet_thread = failed  # type: ignore[assignment]
        node._packet_thread_tick()
        assert failed.stopped and node.packet_thread is None
        assert loop.remove_reader(sock.fileno()), "the event loop receives again"
        node._packet_thread_tick()  # nothing left to do, nothing raised
    finally:
        sock.close()
        loop.close()
