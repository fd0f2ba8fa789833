"""The data-plane engine without sockets: two nodes and a relay exchanging bytes in memory."""

from __future__ import annotations

import os

from topomirror.dataplane.engine import (
    CONSUMED,
    CONTROL,
    DELIVER,
    DROP,
    FEEDBACK,
    FORWARD,
    LATER,
    Engine,
    PathRoute,
)
from topomirror.wire.header import MessageType
from topomirror.wire.messages import Control, Probe

KEY_AB, KEY_AR, KEY_BR = os.urandom(32), os.urandom(32), os.urandom(32)
A, B, R = ("10.0.0.1", 4789), ("10.0.0.2", 4789), ("10.0.0.3", 4789)


def build(epoch_a: int = 1) -> tuple[Engine, Engine, Engine]:
    a, b, r = Engine(1, epoch_a), Engine(2, 7), Engine(3, 9)
    a.add_peer(2, "b", KEY_AB, B, relay=False)
    a.add_peer(3, "r", KEY_AR, R, relay=True)
    b.add_peer(1, "a", KEY_AB, A, relay=False)
    b.add_peer(3, "r", KEY_BR, R, relay=True)
    r.add_peer(1, "a", KEY_AR, A, relay=False)
    r.add_peer(2, "b", KEY_BR, B, relay=False)
    a.peers[2].mirrors["via-r"] = PathRoute(1, 5, R, ("r",), active=True)
    r.install_vc(1, 5, B, expiry=100.0)
    return a, b, r


def test_first_copy_wins_and_mirror_copy_is_a_duplicate() -> None:
    a, b, r = build()
    peer = a.peers[2]
    copies = a.encapsulate(peer, a.routes_to(peer), b"inner-1", now=1.0, now_us=1_000_000)
    assert [addr for _, addr in copies] == [B, R]
    direct, via_relay = copies[0][0], copies[1][0]
    kind, forwarded, next_hop = r.receive(via_relay, 1.0, 1_000_050)
    assert kind == FORWARD and next_hop == B and forwarded == via_relay
    assert b.receive(direct, 1.0, 1_000_100)[:2] == (DELIVER, b"inner-1")
    assert b.receive(via_relay, 1.0, 1_000_200)[:2] == (DROP, "duplicate")
    # per-path measurement saw both copies; path 0 won
    meters = b.peers[1].meters.meters  # type: ignore[union-attr]
    assert (meters[0].total_wins, meters[1].total_wins, meters[1].total_packets) == (1, 0, 1)


def test_second_copy_can_wait_until_the_burst_is_delivered() -> None:
    a, b, _r = build()
    peer = a.peers[2]
    copies = [a.encapsulate(peer, a.routes_to(peer), f"p{i}".encode(), 1.0, 1_000_000 + i) for i in range(3)]
    burst = [d for pair in copies for d, _ in pair]  # std, mirror, std, mirror, ...
    results = [b.receive(d, 1.0, 1_000_100, later=True) for d in burst]
    assert [k for k, *_ in results] == [DELIVER, LATER] * 3
    assert b.counters["rx_datagrams"] == 3 and b.drops["duplicate"] == 0  # untouched so far
    assert [b.receive(d, 1.0, 1_000_100)[:2] for d in burst[1::2]] == [(DROP, "duplicate")] * 3
    meters = b.peers[1].meters.meters  # type: ignore[union-attr]
    assert (meters[1].total_packets, meters[1].total_wins, b.counters["rx_datagrams"]) == (3, 0, 6)
    # Handed in again, a copy that was measured is a replay on its path, deferred or not.
    assert b.receive(burst[1], 1.0, 1_000_200, later=True)[:2] == (DROP, "replay")


def test_mirror_copy_delivers_when_the_standard_copy_is_lost() -> None:
    a, b, _ = build()
    peer = a.peers[2]
    for n in range(10):
        direct, mirror = a.encapsulate(peer, a.routes_to(peer), f"p{n}".encode(), 1.0, 1_000_000 + n)
        delivered = b.receive(mirror[0], 1.0, 1_000_100 + n) if n % 2 else b.receive(direct[0], 1.0, 1_000_100 + n)
        assert delivered[0] == DELIVER
    assert b.counters["delivered"] == 10


def test_replay_forgery_and_garbage_are_dropped_by_reason() -> None:
    a, b, _ = build()
    peer = a.peers[2]
    (datagram, _), = a.encapsulate(peer, [peer.standard], b"x", 1.0, 1_000_000)  # type: ignore[list-item]
    assert b.receive(datagram, 1.0, 1_000_100)[0] == DELIVER
    assert b.receive(datagram, 1.0, 1_000_200)[:2] == (DROP, "replay")
    forged = bytearray(a.encapsulate(peer, [peer.standard], b"y", 1.0, 1_000_300)[0][0])
    forged[-1] ^= 1
    assert b.receive(bytes(forged), 1.0, 1_000_400)[:2] == (DROP, "auth_failed")
    assert b.receive(b"\x10" + os.urandom(60), 1.0, 0)[:2] == (DROP, "malformed")
    assert b.receive(b"short", 1.0, 0)[:2] == (DROP, "malformed")
    assert b.drops["replay"] == b.drops["auth_failed"] == 1 and b.drops["malformed"] == 2


def test_restarted_sender_new_epoch_is_accepted_old_epoch_refused() -> None:
    a, b, _ = build(epoch_a=1)
    peer = a.peers[2]
    old = [a.encapsulate(peer, [peer.standard], b"old", 1.0, 1_000_000 + i)[0][0] for i in range(3)]
    assert b.receive(old[0], 1.0, 1_000_100)[0] == DELIVER
    a2, _, _ = build(epoch_a=2)  # the same node restarted: sequence numbers start again
    new = a2.encapsulate(a2.peers[2], [a2.peers[2].standard], b"new", 2.0, 2_000_000)[0][0]
    assert b.receive(new, 2.0, 2_000_100)[:2] == (DELIVER, b"new")
    assert b.receive(old[1], 2.0, 2_000_200)[:2] == (DROP, "old_epoch")


def test_control_feedback_and_probe_messages() -> None:
    a, b, r = build()
    (msg, addr), = r.message(r.peers[1], MessageType.CONTROL, Control("ack", 42, 5, lease_ms=3000),  # type: ignore[misc]
                             [r.peers[1].standard], 1.0, 10)
    kind, control, peer = a.receive(msg, 1.0, 20)
    assert kind == CONTROL and control == Control("ack", 42, 5, lease_ms=3000) and peer.name == "r"  # type: ignore[union-attr]
    peer_b = a.peers[2]
    for datagram, _ in a.message(peer_b, MessageType.PROBE, Probe(1), a.routes_to(peer_b), 1.0, 30):
        b_result = b.receive(datagram, 1.0, 40) if _ == B else r.receive(datagram, 1.0, 35)
        if b_result[0] == FORWARD:
            b_result = b.receive(datagram, 1.0, 45)
        assert b_result[0] in (CONSUMED, DROP)
    feedback = [item for peer, report in b.feedback_reports(100)
                for item in b.feedback_message(peer, report, 1.1, 100_000)]
    assert feedback, "probes on both paths produce a report"
    results = [a.receive(d, 1.1, 100_100) for d, addr in feedback if addr == A]
    reports = [r[1] for r in results if r[0] == FEEDBACK]
    assert len(reports) == 1, "one FEEDBACK (sent on the standard path)"
    assert {p.path_id for p in reports[0].paths} == {0, 1}  # type: ignore[attr-defined]


def test_vc_lease_expires() -> None:
    _, _, r = build()
    assert r.expire_vcs(50.0) == 0
    assert r.expire_vcs(100.0) == 1
    assert not r.vcs


def test_control_messages_between_data_do_not_look_like_loss() -> None:
    a, b, _ = build()
    peer = a.peers[2]
    for n in range(20):
        (datagram, _), = a.encapsulate(peer, [peer.standard], b"d", 1.0, 1000 + n)  # type: ignore[list-item]
        b.receive(datagram, 1.0, 1100 + n)
        if n % 3 == 0:
            (probe, _), = a.message(peer, MessageType.PROBE, Probe(n), [peer.standard], 1.0, 1000 + n)  # type: ignore[misc]
            b.receive(probe, 1.0, 1100 + n)
    [report] = b.peers[1].meters.build(100).paths  # type: ignore[union-attr]
    assert report.lost == 0 and report.packets == 27


def test_a_resent_packet_keeps_its_sequence_delivered_if_lost_dropped_if_it_arrived() -> None:
    a, b, r = build()
    peer = a.peers[2]
    standard = peer.standard
    assert standard is not None
    [(arrived, _)] = a.encapsulate(peer, [standard], b"arrived", now=1.0, now_us=1_000_000)
    seq_arrived = a.last_seq(peer)
    a.encapsulate(peer, [standard], b"lost", now=1.01, now_us=1_010_000)  # the link is down: never arrives
    seq_lost = a.last_seq(peer)
    [(later, _)] = a.encapsulate(peer, [standard], b"later", now=1.02, now_us=1_020_000)
    assert b.receive(arrived, 1.0, 1_000_100)[:2] == (DELIVER, b"arrived")
    assert b.receive(later, 1.02, 1_020_100)[:2] == (DELIVER, b"later")
    mirror = peer.mirrors["via-r"]
    cases = ((b"arrived", seq_arrived, (DROP, "duplicate")), (b"lost", seq_lost, (DELIVER, b"lost")))
    for packet, seq, expected in cases:
        datagram, address = a.resend(peer, mirror, packet, seq, 1.1, 1_100_000)
        assert address == R
        kind, forwarded, _ = r.receive(datagram, 1.1, 1_100_050)
        assert kind == FORWARD
        assert b.receive(forwarded, 1.1, 1_100_100)[:2] == expected  # type: ignore[arg-type]
    # Once is enough: the same resend again is a replay on that path.
    datagram, _ = a.resend(peer, mirror, b"lost", seq_lost, 1.2, 1_200_000)
    assert b.receive(r.receive(datagram, 1.2, 1_200_050)[1], 1.2, 1_200_100)[:2] == (DROP, "replay")  # type: ignore[arg-type]
    assert a.counters["tx_resent"] == 3
