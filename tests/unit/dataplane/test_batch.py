"""GSO grouping and GRO splitting (pure), and UdpIO on loopback sockets."""

from __future__ import annotations

import socket
import time

from hypothesis import given
from hypothesis import strategies as st

from topomirror.dataplane.batch import UdpIO, gso_runs, split_gro

addresses = st.sampled_from([("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 2)])
datagrams = st.lists(st.tuples(st.integers(1, 1500).map(lambda n: bytes([n % 251]) * n), addresses),
                     max_size=200)


@given(datagrams, st.integers(1, 64), st.integers(1500, 65_000))
def test_gso_runs_are_legal_and_keep_order_per_address(items, max_segments, max_bytes) -> None:
    runs = gso_runs(items, max_segments=max_segments, max_bytes=max_bytes)
    for _address, segment, group in runs:
        assert group and len(group) <= max_segments
        assert len(group) == 1 or sum(map(len, group)) <= max_bytes
        assert len(group[0]) == segment
        assert all(len(d) == segment for d in group[:-1])  # the kernel's rule: all equal but the last
        assert len(group[-1]) <= segment
    for address in {a for _, a in items}:
        sent = [d for a, _s, group in runs if a == address for d in group]
        assert sent == [d for d, a in items if a == address]


def test_equal_bursts_become_one_call_per_address() -> None:
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    items = [(bytes(1240), a), (bytes(1240), b)] * 40
    runs = gso_runs(items)
    assert [(addr, seg, len(group)) for addr, seg, group in runs] == [(a, 1240, 40), (b, 1240, 40)]
    # A shorter datagram closes its run; a longer one starts a new run.
    runs = gso_runs([(bytes(100), a), (bytes(100), a), (bytes(60), a), (bytes(100), a), (bytes(200), a)])
    assert [(seg, len(group)) for _a, seg, group in runs] == [(100, 3), (100, 1), (200, 1)]


@given(st.binary(max_size=5000), st.one_of(st.none(), st.integers(1, 2000)))
def test_split_gro_inverts_concatenation(data: bytes, segment: int | None) -> None:
    parts = split_gro(data, segment)
    assert b"".join(parts) == data
    if segment and len(data) > segment:
        assert all(len(p) == segment for p in parts[:-1]) and 0 < len(parts[-1]) <= segment


def test_udpio_bursts_over_loopback_arrive_whole_and_in_order() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    try:
        sender, receiver = UdpIO(tx), UdpIO(rx)
        payloads = [i.to_bytes(2, "big") * 600 for i in range(50)] + [b"tail"]
        assert sender.send([(p, rx.getsockname()) for p in payloads]) == []
        got: list[bytes] = []
        stamps = []
        while len(got) < len(payloads):
            datagrams, stamp = receiver.recv()
            got.extend(datagrams)
            stamps.append(stamp)
        assert got == payloads
        # Linux (what the node runs on) stamps each arrival, in the past, on the wall clock.
        assert receiver.timestamps and receiver.gro
        assert all(s is not None and 0 < time.time_ns() - s < 5e9 for s in stamps)
        assert sender.stats["datagrams_sent"] == len(payloads)
        assert sender.gso, "UDP segmentation offload refused: the fallback sent one datagram per call"
        assert sender.stats["send_calls"] == 1  # one call for the 50 equal datagrams and the tail
        assert receiver.stats["datagrams_received"] == len(payloads)
    finally:
        rx.close()
        tx.close()


def test_udpio_counts_send_errors_by_reason() -> None:
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        io = UdpIO(tx)
        failed = io.send([(bytes(10), ("127.0.0.1", 0))] * 3)  # port 0: the kernel refuses
        assert failed and io.errors
    finally:
        tx.close()
