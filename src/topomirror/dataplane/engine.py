"""The data plane's core: encapsulate, duplicate, relay, authenticate, de-duplicate, measure.

No sockets and no clock reads here: the I/O loop (`topomirror.node.daemon`) hands in bytes and
the current time and sends what comes back. That keeps the packet logic testable on its own and
lets the loop batch reads and writes (GSO/GRO super-packets, sendmmsg) without touching it.

Everything on the per-packet path avoids allocation beyond the datagrams themselves.

With the native loop built (`dataplane.native`), `drain` receives, opens, de-duplicates,
measures, delivers and forwards DATA in C and hands back only what needs Python (FEEDBACK,
PROBE, CONTROL, a sender's first packet of an epoch), which goes through `receive` as before;
DATA is sealed in C (`Sealer`). The two share each peer's window and meters, so the counters,
views and feedback are the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from topomirror.dataplane.native import fast

if TYPE_CHECKING:
    from topomirror.dataplane._fastpath import Sealer
from topomirror.feedback.measure import FeedbackBuilder, PathHistory
from topomirror.wire.crypto import NONCE, SEQ_MASK, AuthenticationFailed, derive, derive_key
from topomirror.wire.dedup import DedupWindow, Verdict
from topomirror.wire.header import (
    HEADER,
    HEADER_SIZE,
    TAG_SIZE,
    U32,
    VERSION,
    MessageType,
)
from topomirror.wire.messages import (
    Control,
    Feedback,
    MalformedMessage,
    Probe,
    decode_control,
    decode_feedback,
    encode,
)

Address = tuple[str, int]

DROP_REASONS = ("auth_failed", "replay", "duplicate", "too_old", "malformed", "no_route",
                "unknown_peer", "oversize", "old_epoch", "not_ipv4")

_DATA, _FEEDBACK, _PROBE = int(MessageType.DATA), int(MessageType.FEEDBACK), int(MessageType.PROBE)
_DATA_FIRST = (VERSION << 4) | _DATA
_U32_MASK = U32 - 1
_NEW, _DUPLICATE, _REPLAY, _TOO_OLD = Verdict.NEW, Verdict.DUPLICATE, Verdict.REPLAY, Verdict.TOO_OLD

# receive() results: (kind, value, extra)
DELIVER, FORWARD, FEEDBACK, CONTROL, CONSUMED, DROP, LATER = range(7)


@dataclass(slots=True)
class PathRoute:
    """How this node sends to a peer on one path: path 0 is the standard path."""

    path_id: int
    channel: int  # relay virtual connection (0 = direct)
    address: Address  # first hop
    relays: tuple[str, ...] = ()
    active: bool = True  # a mirror path is active once every relay acknowledged its VC
    last_sent: float = 0.0
    packets: int = 0
    bytes: int = 0

    def sent(self, now: float, packets: int, size: int) -> None:
        """Account what was sent on this route: `packets` DATA copies of `size` bytes in all (the
        native loop's flows, the new flows it sent, the Python packet path and resends all count
        here, so the route's figures mean the same whoever sent)."""
        self.last_sent = now
        self.packets += packets
        self.bytes += size


@dataclass
class PeerLink:
    """Everything this node keeps about one remote node."""

    id: int
    name: str
    key: bytes
    address: Address
    relay: bool
    tx_aead: AESGCM
    tx_seq: int = 0  # without the native sealer (which then keeps both counters): see Engine.last_seq
    path_seq: dict[int, int] = field(default_factory=dict)
    standard: PathRoute | None = None
    mirrors: dict[str, PathRoute] = field(default_factory=dict)
    rx_epoch: int | None = None
    rx_aeads: dict[int, AESGCM] = field(default_factory=dict)
    window: DedupWindow | None = None
    meters: FeedbackBuilder | None = None  # what we measure of this sender's paths
    history: PathHistory = field(default_factory=PathHistory)  # what it reports of ours
    sealer: Sealer | None = None  # the native Sealer of tx_aead's key, when built


def _newer_epoch(candidate: int, current: int) -> bool:
    """Serial-number comparison on u16 epochs (RFC 1982)."""
    return 0 < (candidate - current) % 65536 < 32768


class Engine:
    def __init__(self, node_id: int, epoch: int, *, window_size: int = 16384,
                 skew_us: int = 250_000, max_inner: int = 1432) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.window_size = window_size
        self.skew_us = skew_us
        self.max_inner = max_inner
        self.peers: dict[int, PeerLink] = {}
        self.peers_by_name: dict[str, PeerLink] = {}
        self.vcs: dict[tuple[int, int], list] = {}  # (sender, channel) -> [address, expiry, packets]
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.counters = {"tx_packets": 0, "tx_copies": 0, "tx_bytes": 0, "rx_datagrams": 0,
                         "delivered": 0, "forwarded": 0, "probes_rx": 0, "feedback_rx": 0,
                         "control_rx": 0, "tx_resent": 0}
        self.rx = fast.FastRx(self.vcs) if fast is not None else None
        self.tx = fast.FastTx() if fast is not None else None  # .flows: what the send loop carries in C

    # -- peers -------------------------------------------------------------------------
    def add_peer(self, peer_id: int, name: str, key: bytes, address: Address, relay: bool) -> PeerLink:
        link = PeerLink(peer_id, name, key, address, relay, derive(key, self.node_id, self.epoch))
        if fast is not None:
            link.sealer = fast.Sealer(derive_key(key, self.node_id, self.epoch), self.node_id, self.epoch)
        link.standard = PathRoute(0, 0, address)
        link.meters = FeedbackBuilder(self.node_id)
        self.peers[peer_id] = link
        self.peers_by_name[name] = link
        return link

    # -- sending -------------------------------------------------------------------------
    def last_seq(self, peer: PeerLink) -> int:
        """The session sequence of the last packet sent to `peer` (the native sealer keeps the
        counters when it is built: its send loop and this engine share them)."""
        return peer.sealer.seq if peer.sealer is not None else peer.tx_seq

    def _next_seq(self, peer: PeerLink) -> int:
        if peer.sealer is not None:
            return peer.sealer.next_seq()
        peer.tx_seq += 1
        return peer.tx_seq

    def _seal(self, peer: PeerLink, kind: int, route: PathRoute, seq: int, payload: bytes,
              now_us: int) -> bytes:
        path_id = route.path_id
        sealer = peer.sealer
        if sealer is not None:
            return sealer.seal(kind, path_id, route.channel, seq, sealer.next_path_seq(path_id),
                               now_us & _U32_MASK, payload)
        path_seq = (peer.path_seq.get(path_id, 0) + 1) & _U32_MASK
        peer.path_seq[path_id] = path_seq
        head = HEADER.pack((VERSION << 4) | kind, path_id, route.channel, self.node_id,
                           self.epoch, seq, path_seq, now_us & _U32_MASK)
        return head + peer.tx_aead.encrypt(NONCE.pack(self.node_id, self.epoch, (path_id << 56) | (seq & SEQ_MASK)),
                                           payload, head)

    def encapsulate(self, peer: PeerLink, routes: list[PathRoute], packet: bytes,
                    now: float, now_us: int) -> list[tuple[bytes, Address]]:
        """One DATA copy of `packet` per route, all with the same session sequence.

        The per-packet path: `_seal` inlined, locals instead of attribute lookups.
        """
        send_time = now_us & _U32_MASK
        size = len(packet)
        out = []
        sealer = peer.sealer
        if sealer is not None:
            seq = sealer.next_seq()
            seal, next_path_seq = sealer.seal, sealer.next_path_seq
            for route in routes:
                out.append((seal(_DATA, route.path_id, route.channel, seq, next_path_seq(route.path_id), send_time,
                                 packet), route.address))
                route.sent(now, 1, size)
        else:
            peer.tx_seq = seq = peer.tx_seq + 1
            node, epoch = self.node_id, self.epoch
            low_seq = seq & SEQ_MASK
            path_seqs = peer.path_seq
            encrypt = peer.tx_aead.encrypt
            pack = HEADER.pack
            for route in routes:
                path_id = route.path_id
                path_seq = (path_seqs.get(path_id, 0) + 1) & _U32_MASK
                path_seqs[path_id] = path_seq
                head = pack(_DATA_FIRST, path_id, route.channel, node, epoch, seq, path_seq, send_time)
                out.append((head + encrypt(NONCE.pack(node, epoch, (path_id << 56) | low_seq), packet, head),
                            route.address))
                route.sent(now, 1, size)
        counters = self.counters
        counters["tx_packets"] += 1
        counters["tx_copies"] += len(routes)
        counters["tx_bytes"] += size * len(routes)
        return out

    def resend(self, peer: PeerLink, route: PathRoute, packet: bytes, seq: int, now: float,
               now_us: int) -> tuple[bytes, Address]:
        """`packet` again, under the session sequence `seq` it was first sent with, on `route`: the
        destination delivers it if no copy of `seq` arrived and drops it as a duplicate otherwise."""
        route.sent(now, 1, len(packet))
        self.counters["tx_resent"] += 1
        return self._seal(peer, MessageType.DATA, route, seq, packet, now_us), route.address

    def message(self, peer: PeerLink, kind: MessageType, payload_obj: Feedback | Control | Probe,
                routes: list[PathRoute], now: float, now_us: int) -> list[tuple[bytes, Address]]:
        """A control-plane message, one copy per route (the receiver keeps the first)."""
        seq = self._next_seq(peer)
        payload = encode(payload_obj)
        out = []
        for route in routes:
            route.last_sent = now
            out.append((self._seal(peer, kind, route, seq, payload, now_us), route.address))
        return out

    def routes_to(self, peer: PeerLink) -> list[PathRoute]:
        """The standard path and every active mirror path to `peer`."""
        assert peer.standard is not None
        return [peer.standard, *(r for r in peer.mirrors.values() if r.active)]

    # -- relay table ---------------------------------------------------------------------
    def install_vc(self, sender: int, channel: int, address: Address, expiry: float) -> None:
        entry = self.vcs.get((sender, channel))
        if entry is None:
            self.vcs[(sender, channel)] = [address, expiry, 0]
        else:
            entry[0], entry[1] = address, expiry

    def remove_vc(self, sender: int, channel: int) -> bool:
        return self.vcs.pop((sender, channel), None) is not None

    def expire_vcs(self, now: float) -> int:
        dead = [k for k, v in self.vcs.items() if v[1] <= now]
        for key in dead:
            del self.vcs[key]
        return len(dead)

    # -- receiving -----------------------------------------------------------------------
    def _aead_for(self, peer: PeerLink, epoch: int) -> AESGCM:
        aead = peer.rx_aeads.get(epoch)
        if aead is None:
            if len(peer.rx_aeads) > 4:
                peer.rx_aeads.clear()
            aead = peer.rx_aeads[epoch] = derive(peer.key, peer.id, epoch)
        return aead

    def receive(self, datagram: bytes, now: float, now_us: int, *,
                later: bool = False) -> tuple[int, object, object]:
        """One datagram in; what to do with it out. The hot path: no objects beyond the payload.

        With `later`, the expected second copy of a packet already delivered comes back as
        (LATER, None, None), untouched and uncounted: the caller delivers the rest of its burst
        first and hands the copy in again afterwards (it is still authenticated and measured, at
        its own arrival time, but no first copy waits behind its decryption).
        """
        counters = self.counters
        counters["rx_datagrams"] += 1
        if len(datagram) < HEADER_SIZE + TAG_SIZE or datagram[0] >> 4 != VERSION:
            self.drops["malformed"] += 1
            return DROP, "malformed", None
        first, path_id, channel, sender, epoch, seq, path_seq, send_time = HEADER.unpack_from(datagram)
        if channel:
            vc = self.vcs.get((sender, channel))
            if vc is not None and vc[1] > now:
                vc[2] += 1
                counters["forwarded"] += 1
                return FORWARD, datagram, vc[0]
        kind = first & 0x0F
        if not 1 <= kind <= 4:
            self.drops["malformed"] += 1
            return DROP, "malformed", None
        peer = self.peers.get(sender)
        if peer is None:
            self.drops["unknown_peer"] += 1
            return DROP, "unknown_peer", None

        switching = False
        if epoch != peer.rx_epoch:
            if peer.rx_epoch is not None and not _newer_epoch(epoch, peer.rx_epoch):
                self.drops["old_epoch"] += 1
                return DROP, "old_epoch", None
            switching = True
            verdict = _NEW
        else:
            verdict = peer.window.check(seq, path_id, send_time)  # type: ignore[union-attr]
            if verdict is _REPLAY:
                self.drops["replay"] += 1
                return DROP, "replay", None
            if verdict is _TOO_OLD:
                self.drops["too_old"] += 1
                return DROP, "too_old", None
            if later and verdict is _DUPLICATE:
                counters["rx_datagrams"] -= 1  # counted when it comes back
                return LATER, None, None
        aead = peer.rx_aeads.get(epoch) or self._aead_for(peer, epoch)
        view = memoryview(datagram)
        try:
            payload = aead.decrypt(NONCE.pack(sender, epoch, (path_id << 56) | (seq & SEQ_MASK)),
                                   view[HEADER_SIZE:], view[:HEADER_SIZE])
        except Exception:  # InvalidTag
            self.drops["auth_failed"] += 1
            return DROP, "auth_failed", AuthenticationFailed
        if switching:
            # An authenticated packet from a newer epoch: the sender restarted.
            peer.rx_epoch = epoch
            peer.window = DedupWindow(self.window_size, self.skew_us)
            peer.meters = FeedbackBuilder(self.node_id)
            if self.rx is not None:  # from now on this sender's DATA stays in C
                self.rx.set_peer(peer.id, epoch, derive_key(peer.key, peer.id, epoch), peer.window, peer.meters)
        peer.window.commit(seq, path_id, send_time)  # type: ignore[union-attr]

        # Every authenticated message is measured: each one took a path sequence number, so
        # skipping FEEDBACK or CONTROL would show up as loss on that path.
        peer.meters.meter(path_id).record(now_us, send_time, path_seq, len(payload),  # type: ignore[union-attr]
                                          verdict is _NEW)
        if verdict is _DUPLICATE:
            self.drops["duplicate"] += 1
            return DROP, "duplicate", None
        if kind == _DATA:
            counters["delivered"] += 1
            return DELIVER, payload, peer
        if kind == _PROBE:
            self.counters["probes_rx"] += 1
            return CONSUMED, None, peer
        try:
            if kind == _FEEDBACK:
                self.counters["feedback_rx"] += 1
                return FEEDBACK, decode_feedback(payload), peer
            self.counters["control_rx"] += 1
            return CONTROL, decode_control(payload), peer
        except MalformedMessage:
            self.drops["malformed"] += 1
            return DROP, "malformed", None

    def drain(self, sock_fd: int, tun_fd: int | None, now: float, offset_ns: int, max_calls: int,
              io_stats: dict[str, int], io_errors: dict[str, int]) -> list[tuple[bytes, int]]:
        """The native receive loop (needs `self.rx`): everything waiting on the socket, up to
        `max_calls` receive calls. Returns the datagrams for `receive` as (datagram, arrival_us)."""
        assert self.rx is not None
        slow, counts = self.rx.drain(sock_fd, -1 if tun_fd is None else tun_fd, now, offset_ns, max_calls)
        self.drained(counts, io_stats, io_errors)
        return slow

    def drained(self, counts: tuple[int, ...], io_stats: dict[str, int], io_errors: dict[str, int]) -> None:
        """Add what the native receive loop counted (`drain`, or the receive thread) to the counters."""
        (rx, delivered, forwarded, duplicate, replay, too_old, auth_failed, malformed,
         recv_calls, datagrams, forward_errors, no_route) = counts
        counters, drops = self.counters, self.drops
        counters["rx_datagrams"] += rx
        counters["delivered"] += delivered
        counters["forwarded"] += forwarded
        drops["duplicate"] += duplicate
        drops["replay"] += replay
        drops["too_old"] += too_old
        drops["auth_failed"] += auth_failed
        drops["malformed"] += malformed
        drops["no_route"] += no_route
        io_stats["recv_calls"] += recv_calls
        io_stats["datagrams_received"] += datagrams
        if forward_errors:
            io_errors["forward"] = io_errors.get("forward", 0) + forward_errors

    def pumped(self, counts: tuple[int, ...], io_stats: dict[str, int], io_errors: dict[str, int]) -> None:
        """Add what one `tx.pump` sent to the counters."""
        calls, datagrams, no_route, errors, packets, copies, size, messages = counts
        counters = self.counters
        counters["tx_packets"] += packets
        counters["tx_copies"] += copies
        counters["tx_bytes"] += size
        self.drops["no_route"] += no_route
        io_stats["send_calls"] += calls
        io_stats["datagrams_sent"] += datagrams
        io_stats["send_messages"] += messages
        if errors:
            io_errors["send"] = io_errors.get("send", 0) + errors

    def feedback_reports(self, interval_ms: int) -> list[tuple[PeerLink, Feedback]]:
        """What each peer that sent us something since the last call gets told (its meters are
        read and reset here); `feedback_message` seals one."""
        out = []
        for peer in self.peers.values():
            if peer.meters is None:
                continue
            feedback = peer.meters.build(interval_ms)
            if feedback is not None:
                out.append((peer, feedback))
        return out

    def feedback_message(self, peer: PeerLink, feedback: Feedback, now: float,
                         now_us: int) -> list[tuple[bytes, Address]]:
        # Sent on every path we have to the source: feedback must survive the failure it
        # reports. The source de-duplicates the copies like any other message.
        return self.message(peer, MessageType.FEEDBACK, feedback, self.routes_to(peer), now, now_us)
