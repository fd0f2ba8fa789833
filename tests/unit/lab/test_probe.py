"""The numbered UDP probe on loopback: what it counts and the two one-way delays it reports."""

from __future__ import annotations

import socket
import threading

from topomirror.lab import probe


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probe_counts_duplicates_and_stamps_arrival_at_the_socket_before_the_application() -> None:
    port = _free_udp_port()
    report: dict[str, object] = {}
    receiver = threading.Thread(target=lambda: report.update(probe.recv(port, idle=1.0, max_seconds=20)))
    receiver.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(50):  # until the receiver's socket is bound
            try:
                sock.sendto(probe._HEADER.pack(0, probe.time.time_ns()), ("127.0.0.1", port))
            except OSError:
                pass
            if receiver.is_alive():
                probe.time.sleep(0.01)
        probe.send("127.0.0.1", port, count=200, rate=2000, size=64)
    receiver.join(timeout=25)
    assert report["unique"] == 200
    assert report["duplicates"] >= 1  # sequence 0 was sent more than once
    kernel, app = report["owd_kernel_p50_us"], report["owd_p50_us"]
    assert isinstance(kernel, float) and isinstance(app, float)
    # The kernel stamps a datagram when it reaches the socket; the application reads it later.
    assert 0 <= kernel <= app
