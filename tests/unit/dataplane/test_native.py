"""The native per-packet loop against the Python reference it replaces.

Each C piece is run side by side with its Python twin on the same inputs (hypothesis draws them):
the de-dup window, the path meter, the sealer. The receive loop runs on real loopback UDP sockets,
with a pipe standing in for the TUN device, and must leave the same counters, windows and meter
reports as `Engine.receive` given the same datagrams.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topomirror.dataplane import native
from topomirror.dataplane.engine import DELIVER, Engine, PathRoute
from topomirror.feedback.measure import PathMeter, PyPathMeter
from topomirror.wire.crypto import derive, derive_key, pack_nonce
from topomirror.wire.dedup import DedupWindow, PyDedupWindow
from topomirror.wire.header import HEADER, HEADER_SIZE, MessageType
from topomirror.wire.messages import Control, Probe

fast = native.fast


def test_the_native_data_plane_is_built() -> None:
    # CI runs the native loop; a machine without gcc or libssl-dev must say so, not fall back quietly.
    assert fast is not None, native.why_not
    assert DedupWindow is fast.DedupWindow and issubclass(PathMeter, fast.PathMeter)


operations = st.lists(st.tuples(st.integers(0, 600), st.integers(0, 9), st.integers(0, 2**32 - 1),
                                st.booleans()), max_size=300)


@settings(max_examples=300)
@given(operations, st.sampled_from([16, 64, 256]), st.sampled_from([1_000, 250_000, 10**9]))
def test_the_c_window_decides_as_the_python_window(ops: list[tuple[int, int, int, bool]], size: int,
                                                    skew: int) -> None:
    c, py = DedupWindow(size, skew), PyDedupWindow(size, skew)
    for seq, path, send_time, commit in ops:
        assert c.check(seq, path, send_time) is py.check(seq, path, send_time)
        if commit:
            c.commit(seq, path, send_time)
            py.commit(seq, path, send_time)
        assert c.highest == py.highest


arrivals = st.lists(st.tuples(
    st.integers(0, 90_000_000),  # gap to the previous arrival, us (over a minute now and then)
    st.integers(-50_000, 400_000),  # transit = arrival - send (clock offset plus queueing), us
    st.integers(-3, 5),  # path sequence step (reordering, repeats, gaps)
    st.integers(0, 1500), st.booleans(), st.booleans()), max_size=200)


@settings(max_examples=300)
@given(arrivals, st.integers(0, 2**32 - 1), st.integers(0, 2**40))
def test_the_c_meter_measures_as_the_python_meter(steps, first_seq: int, start: int) -> None:  # type: ignore[no-untyped-def]
    c, py = PathMeter(3), PyPathMeter(3)
    arrival, path_seq = start, first_seq
    for gap, transit, step, size, won, report in steps:
        arrival += gap
        path_seq = (path_seq + step) % 2**32
        send_time = (arrival - transit) % 2**32
        c.record(arrival, send_time, path_seq, size, won)
        py.record(arrival, send_time, path_seq, size, won)
        assert (c.owd_now_us, int(c.jitter_us), c.total_packets, c.total_wins) == \
            (py.owd_now_us, int(py.jitter_us), py.total_packets, py.total_wins)
        if report:
            assert c.report(100) == py.report(100)
    assert c.report(100) == py.report(100)


@settings(max_examples=100)
@given(st.binary(max_size=1500), st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**64 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.sampled_from(list(MessageType)))
def test_the_sealer_writes_what_the_python_seal_writes(payload: bytes, path_id: int, channel: int, seq: int,
                                                       path_seq: int, send_time: int, kind: MessageType) -> None:
    assert fast is not None
    pair_key = b"k" * 32
    sealer = fast.Sealer(derive_key(pair_key, 7, 3), 7, 3)
    datagram = sealer.seal(int(kind), path_id, channel, seq, path_seq, send_time, payload)
    head = HEADER.pack((1 << 4) | int(kind), path_id, channel, 7, 3, seq, path_seq, send_time)
    expected = head + derive(pair_key, 7, 3).encrypt(pack_nonce(7, 3, path_id, seq), payload, head)
    assert datagram == expected


# -- the receive loop on real sockets ---------------------------------------------------------

KEY_AB, KEY_AR, KEY_BR = os.urandom(32), os.urandom(32), os.urandom(32)


Udp = Callable[[], socket.socket]


@pytest.fixture
def udp() -> Iterator[Udp]:
    """Opens non-blocking UDP sockets on loopback; closes them after the test."""
    opened: list[socket.socket] = []

    def open_one() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append(sock)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def _waiting(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on `sock`, after a moment for loopback delivery."""
    time.sleep(0.05)
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def _engines(b_addr, r_addr):  # type: ignore[no-untyped-def]
    a, b = Engine(1, 1), Engine(2, 7)
    a.add_peer(2, "b", KEY_AB, b_addr, relay=False)
    a.add_peer(3, "r", KEY_AR, r_addr, relay=True)
    b.add_peer(1, "a", KEY_AB, ("127.0.0.1", 9), relay=False)
    a.peers[2].mirrors["via-r"] = PathRoute(1, 5, r_addr, ("r",), active=True)
    return a, b


def _relay(a_address) -> Engine:  # type: ignore[no-untyped-def]
    """Relay r (node 3) that knows a (node 1)."""
    relay = Engine(3, 9)
    relay.add_peer(1, "a", KEY_AR, a_address, relay=False)
    return relay


def _drain_all(engine: Engine, sock: socket.socket, tun: int, expect: int) -> list[tuple[bytes, int]]:
    """Drain until `expect` datagrams were counted (or handed back), at most 2 s."""
    slow: list[tuple[bytes, int]] = []
    stats = {"recv_calls": 0, "datagrams_received": 0}
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        got = engine.drain(sock.fileno(), tun, 1.0, time.monotonic_ns() - time.time_ns(), 64, stats, {})
        slow.extend(got)
        if engine.counters["rx_datagrams"] + len(slow) >= expect:
            break
        time.sleep(0.01)
    return slow


def test_the_native_loop_delivers_first_copies_and_counts_as_the_python_engine(udp: Udp) -> None:
    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    tun_read, tun_write = os.pipe()
    os.set_blocking(tun_read, False)
    try:
        a, b = _engines(b_sock.getsockname(), r_sock.getsockname())
        reference = Engine(2, 7)
        reference.add_peer(1, "a", KEY_AB, ("127.0.0.1", 9), relay=False)
        peer = a.peers[2]
        sent: list[bytes] = []
        for i in range(40):
            for datagram, _address in a.encapsulate(peer, a.routes_to(peer), f"inner-{i}".encode(), 1.0,
                                                    1_000_000 + i * 100):
                sent.append(datagram)
        [(unsent, _)] = a.encapsulate(peer, [peer.standard], b"never", 1.0, 1_010_000)  # type: ignore[list-item]
        forged = bytearray(unsent)
        forged[-1] ^= 1  # a new sequence number, a broken tag
        # standard copies first, then every mirror copy (the duplicates), a replay and a forgery
        wire = sent[0::2] + sent[1::2] + [sent[4], bytes(forged)]
        # The first datagram of the sender's epoch goes through Python (it registers the epoch)
        first = wire[0]
        kind, payload, _ = b.receive(first, 1.0, 1_000_050)
        assert kind == DELIVER and payload == b"inner-0"
        for datagram in wire[1:]:
            a_sock.sendto(datagram, b_sock.getsockname())
        slow = _drain_all(b, b_sock, tun_write, len(wire) - 1)
        assert slow == []  # every DATA of a known epoch stayed in C
        delivered = os.read(tun_read, 65536 * 4)
        for i in range(1, 40):
            assert f"inner-{i}".encode() in delivered
        for i, datagram in enumerate(wire):
            reference.receive(datagram, 1.0, 1_000_050 + i)
        assert b.counters["delivered"] == reference.counters["delivered"] == 40
        assert b.counters["rx_datagrams"] == reference.counters["rx_datagrams"] == len(wire)
        for reason in ("duplicate", "replay", "auth_failed"):
            assert b.drops[reason] == reference.drops[reason], reason
        assert (b.drops["duplicate"], b.drops["replay"], b.drops["auth_failed"]) == (40, 1, 1)
        mine, theirs = b.peers[1].meters, reference.peers[1].meters
        assert mine is not None and theirs is not None
        assert {p: (m.total_packets, m.total_wins) for p, m in mine.meters.items()} == \
            {p: (m.total_packets, m.total_wins) for p, m in theirs.meters.items()} == {0: (40, 40), 1: (40, 0)}
    finally:
        os.close(tun_read)
        os.close(tun_write)


def test_the_native_loop_forwards_on_a_live_virtual_connection_only(udp: Udp) -> None:
    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    a, _b = _engines(b_sock.getsockname(), r_sock.getsockname())
    relay = _relay(a_sock.getsockname())
    relay.install_vc(1, 5, b_sock.getsockname(), expiry=100.0)
    peer = a.peers[2]
    mirror = [copies[1][0] for copies in
              (a.encapsulate(peer, a.routes_to(peer), bytes([i]) * 100, 1.0, 1_000_000 + i) for i in range(20))]
    for datagram in mirror:
        a_sock.sendto(datagram, r_sock.getsockname())
    assert _drain_all(relay, r_sock, -1, 20) == []
    assert relay.counters["forwarded"] == 20 and relay.vcs[(1, 5)][2] == 20
    assert _waiting(b_sock) == mirror  # unchanged, in order
    # An expired connection forwards nothing: the datagram is not for the relay either.
    relay.install_vc(1, 5, b_sock.getsockname(), expiry=0.5)
    a_sock.sendto(mirror[0], r_sock.getsockname())
    slow = _drain_all(relay, r_sock, -1, 21)
    assert relay.counters["forwarded"] == 20 and [d for d, _ in slow] == [mirror[0]]


def test_a_malformed_datagram_is_counted_in_c(udp: Udp) -> None:
    assert fast is not None
    b_sock, a_sock = udp(), udp()
    b = Engine(2, 7)
    b.add_peer(1, "a", KEY_AB, ("127.0.0.1", 9), relay=False)
    a_sock.sendto(b"\x00" * 10, b_sock.getsockname())
    a_sock.sendto(bytes([0x21]) + b"\x00" * (HEADER_SIZE + 20), b_sock.getsockname())  # version 2
    assert _drain_all(b, b_sock, -1, 2) == []
    assert b.drops["malformed"] == 2 and b.counters["rx_datagrams"] == 2


@pytest.mark.parametrize("size", [0, 1, 1432])
def test_sealed_by_c_opens_in_python(size: int) -> None:
    a = Engine(1, 4)
    b = Engine(2, 6)
    a.add_peer(2, "b", KEY_AB, ("127.0.0.1", 9), relay=False)
    b.add_peer(1, "a", KEY_AB, ("127.0.0.1", 9), relay=False)
    assert a.peers[2].sealer is not None
    [(datagram, _)] = a.encapsulate(a.peers[2], [a.peers[2].standard], b"x" * size, 1.0, 5)  # type: ignore[list-item]
    assert b.receive(datagram, 1.0, 10)[:2] == (DELIVER, b"x" * size)


def _udp_packet(sport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet 172.16.1.1:sport -> 172.16.2.1:9400 (checksums do not matter here)."""
    import struct

    udp = struct.pack("!HHHH", sport, 9400, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([172, 16, 1, 1]),
                       bytes([172, 16, 2, 1])) + udp


def test_the_native_send_loop_carries_registered_flows_and_hands_back_the_rest(udp: Udp) -> None:
    from topomirror.dataplane.packet import flow_bytes

    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    tun_app, tun_node = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # one read, one packet, as a TUN
    tun_node.setblocking(False)
    with tun_app, tun_node:
        a, b = _engines(b_sock.getsockname(), r_sock.getsockname())
        assert a.tx is not None
        peer = a.peers[2]
        routes = a.routes_to(peer)  # standard, and the mirror via r
        fast_packets = [_udp_packet(5000, f"fast-{i}".encode()) for i in range(3)]
        other = _udp_packet(5001, b"slow")
        flow = object()  # what the daemon keeps per flow; the loop only hands it back
        a.tx.flows[flow_bytes(fast_packets[0])] = fast.FastFlow(
            flow, tuple(routes), peer.sealer, tuple((r.address[0], r.address[1], r.path_id, r.channel) for r in routes))
        # Python sends one packet first: the loop continues its sequence numbers.
        [(first, _), (_mirror_first, _)] = a.encapsulate(peer, routes, _udp_packet(5000, b"first"), 1.0, 1_000_000)
        for packet in (fast_packets[0], other, *fast_packets[1:]):
            tun_app.send(packet)
        slow, fresh, touched, counts = a.tx.pump(tun_node.fileno(), a_sock.fileno(), 64, 1400, 1_000_100)
        assert slow == [other] and fresh == []  # new flows come up unsent unless new_flows is on
        assert touched == [a.tx.flows[flow_bytes(fast_packets[0])]] and touched[0].entry is flow
        assert touched[0].take() == (3, sum(len(p) for p in fast_packets)) and touched[0].take() == (0, 0)
        # packets, copies, bytes, and messages: the three copies per next hop left as one GSO run each
        assert counts[4:] == (3, 6, 2 * sum(len(p) for p in fast_packets), 2)
        assert a.last_seq(peer) == 4
        standard = _waiting(b_sock)
        assert len(standard) == 3  # GSO runs arrive as the datagrams they were cut from
        results = [b.receive(d, 1.0, 1_000_200 + i)[:2] for i, d in enumerate([first, *standard])]
        assert results == [(DELIVER, p) for p in [_udp_packet(5000, b"first"), *fast_packets]]
        [report] = b.peers[1].meters.build(100).paths  # type: ignore[union-attr]
        assert (report.packets, report.lost, report.reordered) == (4, 0, 0)
        assert len(_waiting(r_sock)) == 3  # every packet the loop sent also went the mirror way


def test_the_send_loop_sends_new_flows_on_the_standard_path_and_hands_them_up_sent(udp: Udp) -> None:
    # Under an adaptive policy: a flow the daemon's table does not hold goes out on its peer's
    # standard path at once; one the table holds (Python decides per packet) and a destination no
    # peer owns come up unsent.
    from topomirror.dataplane.packet import flow_bytes

    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    tun_app, tun_node = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_node.setblocking(False)
    with tun_app, tun_node:
        a, b = _engines(b_sock.getsockname(), r_sock.getsockname())
        assert a.tx is not None
        peer = a.peers[2]
        std = peer.standard
        assert std is not None and peer.sealer is not None
        known: dict[bytes, object] = {}
        a.tx.new_flows(known, ((0xAC100200, 0xFFFFFF00, peer.sealer,
                                (std.address[0], std.address[1], std.path_id, std.channel)),))
        held = _udp_packet(5001, b"python decides")
        known[flow_bytes(held)] = object()  # the daemon's table holds this flow
        new = [_udp_packet(6000, b"new-1"), _udp_packet(6001, b"new-2"), _udp_packet(6000, b"new-1 again")]
        nowhere = bytearray(_udp_packet(6002, b"no peer"))
        nowhere[16:20] = bytes([10, 9, 9, 9])
        for packet in (new[0], held, new[1], bytes(nowhere), new[2]):
            tun_app.send(packet)
        slow, fresh, touched, counts = a.tx.pump(tun_node.fileno(), a_sock.fileno(), 64, 1400, 2_000_000)
        assert slow == [held, bytes(nowhere)] and touched == []
        assert fresh == [(flow_bytes(p), p) for p in new]
        # one copy each, the standard path only; sizes 5, 5 and 11 bytes of payload: one GSO run ends at
        # the longer one, so two messages
        assert counts[4:] == (3, 3, sum(len(p) for p in new), 2)
        assert a.last_seq(peer) == 3
        arrived = _waiting(b_sock)
        assert [b.receive(d, 2.0, 2_000_100 + i)[:2] for i, d in enumerate(arrived)] == [(DELIVER, p) for p in new]
        assert _waiting(r_sock) == []  # nothing went the mirror way
        a.tx.new_flows(None, ())  # off: new flows come up unsent again
        tun_app.send(new[0])
        slow, fresh, _, _ = a.tx.pump(tun_node.fileno(), a_sock.fileno(), 64, 1400, 2_000_200)
        assert slow == [new[0]] and fresh == []
    with pytest.raises(ValueError, match="32-bit network"):
        a.tx.new_flows({}, ((0xAC100201, 0xFFFFFF00, peer.sealer, ("127.0.0.1", 9, 0, 0)),))


def test_a_datagram_behind_a_control_message_waits_for_it_in_order(udp: Udp) -> None:
    # A relay that receives a vc_install and, in the same burst, data on that channel: the data must
    # not be judged before Python installed the virtual connection.
    from topomirror.dataplane.engine import CONSUMED, CONTROL, FORWARD

    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    a, _b = _engines(b_sock.getsockname(), r_sock.getsockname())
    relay = _relay(a_sock.getsockname())
    to_relay = a.peers[3]
    [(hello, _)] = a.message(to_relay, MessageType.PROBE, Probe(1), [to_relay.standard], 1.0,  # type: ignore[list-item]
                             1_000_000)
    # The relay learns a's epoch from a first message (through Python, as always).
    assert relay.receive(hello, 1.0, 1_000_000)[0] == CONSUMED
    install = a.message(to_relay, MessageType.CONTROL, Control("vc_install", 1, 5, next_hop="127.0.0.1:9",
                                                                 lease_ms=1000), [to_relay.standard], 1.0,
                        1_000_001)[0][0]  # type: ignore[list-item]
    peer = a.peers[2]
    data = a.encapsulate(peer, a.routes_to(peer), b"behind", 1.0, 1_000_002)[1][0]
    a_sock.sendto(install, r_sock.getsockname())
    a_sock.sendto(data, r_sock.getsockname())
    time.sleep(0.05)
    slow = _drain_all(relay, r_sock, -1, 2)
    assert [d for d, _ in slow] == [install, data]
    kind, message, _ = relay.receive(install, 1.0, 1_000_010)
    assert kind == CONTROL and isinstance(message, Control) and message.op == "vc_install"
    relay.install_vc(1, message.channel, b_sock.getsockname(), expiry=100.0)  # what the daemon does
    assert relay.receive(data, 1.0, 1_000_011)[:2] == (FORWARD, data)


def _eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def _until(check: Callable[[], bool], seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return check()


@dataclasses.dataclass
class Receiving:
    """Node b's packet thread (receive side, a pipe for its TUN); a's DATA for it, the epoch known."""
    a: Engine
    b: Engine
    b_sock: socket.socket
    a_sock: socket.socket
    tun_read: int
    notify: int
    wire: list[bytes]
    thread: object


@contextlib.contextmanager
def _receiving_thread(udp: Udp, count: int, busy_pps: int = 0) -> Iterator[Receiving]:
    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    tun_read, tun_write = os.pipe()
    os.set_blocking(tun_read, False)
    notify = os.eventfd(0, os.EFD_NONBLOCK)
    a, b = _engines(b_sock.getsockname(), r_sock.getsockname())
    peer = a.peers[2]
    wire = [a.encapsulate(peer, [peer.standard], f"inner-{i}".encode(), 1.0, 1_000_000 + i)[0][0]  # type: ignore[list-item]
            for i in range(count)]
    assert b.receive(wire[0], 1.0, 1_000_000)[0] == DELIVER  # the epoch, through Python as always
    assert b.rx is not None
    thread = fast.PacketThread(b.rx, None, b_sock.fileno(), tun_write, notify, 64)
    thread.busy_pps = busy_pps
    thread.start()
    try:
        yield Receiving(a, b, b_sock, a_sock, tun_read, notify, wire, thread)
    finally:
        thread.stop()
        os.close(tun_read)
        os.close(tun_write)
        os.close(notify)


def test_the_receive_thread_delivers_without_being_called_and_wakes_python_only_for_the_rest(udp: Udp) -> None:
    assert fast is not None
    with _receiving_thread(udp, 30) as run:
        thread, notify, b = run.thread, run.notify, run.b
        assert isinstance(thread, fast.PacketThread) and thread.alive
        for datagram in run.wire[1:]:
            run.a_sock.sendto(datagram, run.b_sock.getsockname())
        delivered = b""

        def all_there() -> bool:
            nonlocal delivered
            with contextlib.suppress(BlockingIOError):
                delivered += os.read(run.tun_read, 65536)
            return all(f"inner-{i}".encode() in delivered for i in range(1, 30))

        assert _until(all_there)  # nobody called drain: the thread did
        assert thread.take() == [] and _eventfd_count(notify) == 0  # nothing for Python, no wake-up
        b.drained(thread.counts(), {"recv_calls": 0, "datagrams_received": 0}, {})
        assert b.counters["delivered"] == 30 and b.drops["duplicate"] == 0
        assert thread.counts()[1] == 0  # counts() resets
        # A message for Python (a PROBE) wakes the loop and comes up with its arrival time.
        peer = run.a.peers[2]
        [(probe, _)] = run.a.message(peer, MessageType.PROBE, Probe(7), [peer.standard], 1.0,  # type: ignore[list-item]
                                     1_000_100)
        run.a_sock.sendto(probe, run.b_sock.getsockname())
        assert _until(lambda: _eventfd_count(notify) > 0)
        [(datagram, arrival_us)] = thread.take()
        assert datagram == probe and abs(arrival_us - time.monotonic_ns() // 1000) < 2_000_000
        assert thread.wakeups >= 2
        # It accounts its time with the GIL (held for every drain: a drain that opened and wrote
        # 30 datagrams takes some microseconds), and is named for ps -T and top -H.
        assert thread.gil_held_us > 0 and thread.gil_wait_max_us <= thread.gil_wait_us
        names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
        assert "tm-packets" in names
    assert not thread.alive


def test_the_receive_thread_holds_a_channel_behind_a_control_until_python_handled_it(udp: Udp) -> None:
    from topomirror.dataplane.engine import CONSUMED, CONTROL

    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    notify = os.eventfd(0, os.EFD_NONBLOCK)
    a, _b = _engines(b_sock.getsockname(), r_sock.getsockname())
    relay = _relay(a_sock.getsockname())
    to_relay, peer = a.peers[3], a.peers[2]
    [(hello, _)] = a.message(to_relay, MessageType.PROBE, Probe(1), [to_relay.standard], 1.0, 1_000_000)  # type: ignore[list-item]
    assert relay.receive(hello, 1.0, 1_000_000)[0] == CONSUMED
    install = a.message(to_relay, MessageType.CONTROL, Control("vc_install", 1, 5, next_hop="127.0.0.1:9",
                                                                 lease_ms=1000), [to_relay.standard], 1.0,
                        1_000_001)[0][0]  # type: ignore[list-item]
    data = [a.encapsulate(peer, a.routes_to(peer), bytes([i]) * 50, 1.0, 1_000_002 + i)[1][0] for i in range(3)]
    assert relay.rx is not None
    thread = fast.PacketThread(relay.rx, None, r_sock.fileno(), -1, notify, 64)
    thread.start()
    try:
        a_sock.sendto(install, r_sock.getsockname())
        assert _until(lambda: _eventfd_count(notify) > 0)
        # Python has not taken the CONTROL yet: data on a channel the relay cannot forward follows it up.
        a_sock.sendto(data[0], r_sock.getsockname())
        time.sleep(0.05)
        taken = [d for d, _ in thread.take()]
        assert taken == [install, data[0]]
        _eventfd_count(notify)  # (both wake-ups read)
        kind, message, _ = relay.receive(install, 1.0, 1_000_010)
        assert kind == CONTROL and isinstance(message, Control)
        # Still held while Python works: the next datagram on the channel comes up too.
        a_sock.sendto(data[1], r_sock.getsockname())
        assert _until(lambda: _eventfd_count(notify) > 0)
        assert [d for d, _ in thread.take()] == [data[1]]
        relay.install_vc(1, message.channel, b_sock.getsockname(), expiry=time.monotonic() + 100)
        thread.release()  # handled: from now on the thread forwards on the channel itself
        a_sock.sendto(data[2], r_sock.getsockname())
        assert _waiting(b_sock) == [data[2]]
        assert thread.take() == [] and relay.vcs[(1, 5)][2] == 1
    finally:
        thread.stop()
        os.close(notify)


def test_a_packet_thread_that_was_never_started_stops_and_frees_cleanly(udp: Udp) -> None:
    assert fast is not None
    b = Engine(2, 7)
    assert b.rx is not None
    thread = fast.PacketThread(b.rx, None, udp().fileno(), -1, os.eventfd(0), 8)
    thread.stop()
    assert not thread.alive and thread.take() == [] and len(thread.counts()) == 12
    assert thread.take_tx() == ([], [], []) and len(thread.tx_counts()) == 8
    with pytest.raises(TypeError):
        fast.PacketThread(object(), None, 0, -1, 0, 8)
    with pytest.raises(TypeError):
        fast.PacketThread(b.rx, object(), 0, 3, 0, 8)
    with pytest.raises(ValueError, match="TUN"):
        fast.PacketThread(b.rx, b.tx, 0, -1, 0, 8)


@dataclasses.dataclass
class Sending:
    """Node a's packet thread on a socketpair TUN (one read, one packet), its peer b's socket."""
    a: Engine
    b_sock: socket.socket
    tun_app: socket.socket
    notify: int
    thread: object


@contextlib.contextmanager
def _sending_thread(udp: Udp, prepare: Callable[[Engine], None]) -> Iterator[Sending]:
    """`prepare` registers flows on a's send loop before the thread starts; all closed after."""
    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    tun_app, tun_node = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_node.setblocking(False)
    notify = os.eventfd(0, os.EFD_NONBLOCK)
    a, _b = _engines(b_sock.getsockname(), r_sock.getsockname())
    assert a.tx is not None and a.rx is not None
    prepare(a)
    thread = fast.PacketThread(a.rx, a.tx, a_sock.fileno(), tun_node.fileno(), notify, 64, 1400)
    thread.start()
    try:
        yield Sending(a, b_sock, tun_app, notify, thread)
    finally:
        thread.stop()
        tun_app.close()
        tun_node.close()
        os.close(notify)


def _standard(a: Engine):  # type: ignore[no-untyped-def]
    peer = a.peers[2]
    assert peer.standard is not None and peer.sealer is not None
    return peer, peer.standard


def test_the_packet_thread_sends_registered_flows_and_holds_the_tun_while_python_has_a_packet(udp: Udp) -> None:
    from topomirror.dataplane.packet import flow_bytes

    assert fast is not None
    fast_packets = [_udp_packet(5000, f"fast-{i}".encode()) for i in range(5)]

    def register(a: Engine) -> None:
        peer, std = _standard(a)
        assert a.tx is not None and fast is not None
        a.tx.flows[flow_bytes(fast_packets[0])] = fast.FastFlow(
            object(), (std,), peer.sealer, ((std.address[0], std.address[1], std.path_id, 0),))

    with _sending_thread(udp, register) as run:
        b_sock, tun_app, notify, thread = run.b_sock, run.tun_app, run.notify, run.thread
        assert isinstance(thread, fast.PacketThread)
        tun_app.send(fast_packets[0])
        assert len(_waiting(b_sock)) == 1  # sealed and sent by the thread, nobody called pump
        assert _eventfd_count(notify) == 0  # a flow sent on alone does not wake Python ...
        slow, fresh, [flow] = thread.take_tx()  # ... it is taken on the daemon's timer
        assert (slow, fresh, flow.take()) == ([], [], (1, len(fast_packets[0])))
        # A packet for Python: the thread hands it up and reads no further, so nothing overtakes it.
        other = _udp_packet(5001, b"slow")
        tun_app.send(other)
        assert _until(lambda: _eventfd_count(notify) > 0) and thread.tx_paused
        tun_app.send(fast_packets[1])
        assert _waiting(b_sock) == []
        assert thread.take_tx() == ([other], [], [])
        thread.release_tx()  # Python sent it: the thread goes on
        assert len(_waiting(b_sock)) == 1 and not thread.tx_paused
        # Gated (budgeted flows): every wake-up that sent on a flow is handed over before the next.
        thread.gate = 1
        tun_app.send(fast_packets[2])
        assert _until(lambda: _eventfd_count(notify) > 0) and thread.tx_paused
        tun_app.send(fast_packets[3])
        assert len(_waiting(b_sock)) == 1  # the first was sent; the second waits for the charge
        slow, fresh, [flow] = thread.take_tx()
        assert (slow, fresh, flow.take()) == ([], [], (2, len(fast_packets[1]) + len(fast_packets[2])))
        thread.gate = 0
        thread.release_tx()
        assert len(_waiting(b_sock)) == 1
    assert thread.tx_wakeups >= 4
    counts = thread.tx_counts()
    assert counts[4:7] == (4, 4, sum(len(p) for p in fast_packets[:4]))  # packets, copies, bytes
    assert 1 <= counts[7] <= 4  # messages: a GSO run per next hop and wake-up


def test_the_packet_thread_wakes_python_for_new_flows_it_sent_without_holding_the_tun(udp: Udp) -> None:
    from topomirror.dataplane.packet import flow_bytes

    assert fast is not None
    new = [_udp_packet(6000 + i, b"new") for i in range(2)]

    def table(a: Engine) -> None:
        peer, std = _standard(a)
        assert a.tx is not None
        a.tx.new_flows({}, ((0xAC100200, 0xFFFFFF00, peer.sealer, (std.address[0], std.address[1], std.path_id, 0)),))

    with _sending_thread(udp, table) as run:
        thread = run.thread
        assert isinstance(thread, fast.PacketThread)
        run.tun_app.send(new[0])
        assert _until(lambda: _eventfd_count(run.notify) > 0)
        assert not thread.tx_paused  # sent already: nothing waits for Python
        run.tun_app.send(new[1])
        assert len(_waiting(run.b_sock)) == 2  # both out on the standard path before Python looked
        slow, fresh, touched = thread.take_tx()
        assert slow == [] and touched == [] and fresh == [(flow_bytes(p), p) for p in new]


def test_a_packet_thread_that_fails_stops_and_take_raises_what_stopped_it(udp: Udp) -> None:
    from topomirror.wire.crypto import derive_key

    assert fast is not None
    b_sock, r_sock, a_sock = udp(), udp(), udp()
    notify = os.eventfd(0, os.EFD_NONBLOCK)
    a, b = _engines(b_sock.getsockname(), r_sock.getsockname())
    peer = a.peers[2]
    datagram = a.encapsulate(peer, [peer.standard], b"inner", 1.0, 1_000_000)[0][0]  # type: ignore[list-item]

    class Broken:
        def meter(self, path_id: int) -> None:
            raise RuntimeError(f"no meter for path {path_id}")

    assert b.rx is not None
    epoch = int.from_bytes(datagram[6:8], "big")  # the header's sender epoch
    b.rx.set_peer(1, epoch, derive_key(KEY_AB, 1, epoch), fast.DedupWindow(1024, 250_000), Broken())
    thread = fast.PacketThread(b.rx, None, b_sock.fileno(), -1, notify, 8)
    thread.start()
    try:
        a_sock.sendto(datagram, b_sock.getsockname())
        assert _until(lambda: _eventfd_count(notify) > 0)  # the loop is woken to learn of it
        assert _until(lambda: not thread.alive)
        with pytest.raises(RuntimeError, match="no meter for path 0"):
            thread.take()
        assert thread.take() == []  # raised once
    finally:
        thread.stop()
        os.close(notify)


def test_a_busy_packet_thread_hands_the_packets_to_the_event_loop_until_resumed(udp: Udp) -> None:
    assert fast is not None
    # a rate a test reaches: 20 datagrams within a 20-30 ms window is >= 600/s
    with _receiving_thread(udp, 40, busy_pps=200) as run:
        thread, b, wire, a_sock, to_b = run.thread, run.b, run.wire, run.a_sock, run.b_sock.getsockname()
        assert isinstance(thread, fast.PacketThread)
        for datagram in wire[1:21]:
            a_sock.sendto(datagram, to_b)
        time.sleep(0.025)
        a_sock.sendto(wire[21], to_b)  # the first wake-up after 20 ms closes the window: busy
        assert _until(lambda: thread.handed_off == 1) and _eventfd_count(run.notify) > 0
        for datagram in wire[22:]:
            a_sock.sendto(datagram, to_b)
        time.sleep(0.05)
        # Handed off: the socket is the event loop's now (here: the test's own drain).
        assert b.drain(run.b_sock.fileno(), -1, 1.0, 0, 64, {"recv_calls": 0, "datagrams_received": 0}, {}) == []
        b.drained(thread.counts(), {"recv_calls": 0, "datagrams_received": 0}, {})
        assert b.counters["delivered"] == 40
        thread.busy_pps = 0
        thread.resume()
        a_sock.sendto(wire[1], to_b)  # the thread takes it again (seen before: dropped)
        assert _waiting(run.b_sock) == [] and not thread.handed_off
        assert thread.counts()[0] == 1  # received by the thread
