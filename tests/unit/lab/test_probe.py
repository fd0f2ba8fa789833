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
        sender = probe.send("127.0.0.1", port, count=200, rate=2000, size=64)
    receiver.join(timeout=25)
    assert sender["sent"] == 200
    p50, p90 = sender["sendto_p50_us"], sender["sendto_p90_us"]
    assert isinstance(p50, float) and isinstance(p90, float) and 0 < p50 <= p90
    assert report["unique"] == 200
    assert report["duplicates"] >= 1  # sequence 0 was sent more than once
    kernel, app = report["owd_kernel_p50_us"], report["owd_p50_us"]
    assert isinstance(kernel, float) and isinstance(app, float)
    # The kernel stamps a datagram when it reaches the socket; the application reads it later.
    assert 0 <= kernel <= app


def _send_stamps(*, even: bool, rate: int, count: int) -> list[int]:
    """The send times (ns) the probe wrote into each datagram, as a plain socket received them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        probe.send("127.0.0.1", sink.getsockname()[1], count=count, rate=rate, size=64, even=even)
        sink.settimeout(1.0)
        stamps = []
        for _ in range(count):
            data = sink.recv(2048)
            stamps.append(probe._HEADER.unpack_from(data)[1])
    return stamps


def test_even_pacing_sends_one_datagram_per_gap_instead_of_bursts() -> None:
    rate, count = 5000, 1000  # 200 us apart
    stamps = _send_stamps(even=True, rate=rate, count=count)
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    # Bursts (the default) put most datagrams microseconds after the previous one; evenly paced,
    # the typical gap is the interval (a late wake-up sends two at once now and then).
    assert gaps[len(gaps) // 2] >= 100_000
    assert (stamps[-1] - stamps[0]) / 1e9 >= (count - 1) / rate * 0.9  # paced, not sent at once
