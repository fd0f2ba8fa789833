"""The node daemon: wires config, TUN, UDP socket, the data-plane engine, timers and the API.

I/O is done here and only here. Reads are drained in batches per wake-up (`_on_tun`,
`_on_udp`); what a batch produces leaves in one burst through `dataplane.batch.UdpIO` (UDP GSO:
one send call per run of equal-sized datagrams to one address; UDP GRO: one receive call per
coalesced burst). The engine sees single datagrams either way.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import functools
import gc
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from topomirror.analysis.metadata import may_carry_metadata
from topomirror.dataplane import native
from topomirror.dataplane.batch import UdpIO
from topomirror.dataplane.engine import (
    CONTROL,
    DELIVER,
    FEEDBACK,
    FORWARD,
    LATER,
    Engine,
    PathRoute,
    PeerLink,
)
from topomirror.dataplane.packet import FlowKey, flow_bytes, key_of
from topomirror.dataplane.rules import DecisionHook, FlowDecision, static_hook
from topomirror.node.config import NodeConfig, peer_key
from topomirror.topology.budget import (
    DuplicationBudget,
    DuplicationBudgetConfig,
    SessionBudget,
    TokenBucket,
    admit_copy,
)
from topomirror.wire.header import MessageType, tun_mtu
from topomirror.wire.messages import Control, Feedback, Probe

if TYPE_CHECKING:
    from topomirror.dataplane._fastpath import PacketThread

log = logging.getLogger("topomirror.node")
BATCH = 64
# `listen.packet_thread: auto`: above this many datagrams in plus packets out per second the packet
# thread's prompt wake-ups cost more than they save (small batches, and a receiving application
# woken per batch: docs/BENCHMARKS.md, the packet thread), and the event loop carries the packets.
BUSY_PPS = 25_000
TIMER_SLOW_MS = 2.0  # a timer run longer than this holds every packet that arrives meanwhile
NATIVE_PREFIXES = 256  # MAX_PREFIXES in _fastpath.c
# A node mirroring one direction of a connection asks the peer to mirror the other (CONTROL
# `protect`), renewed this often with this lease while its session lives.
PROTECT_EVERY_S, PROTECT_LEASE_MS = 0.5, 1500
RECENT_PACKETS = 256  # per flow a policy might mirror, at most: sent again when its path falls silent
_NO_PEER = FlowDecision(None, "no peer owns the destination")


@dataclass(slots=True)
class FlowEntry:
    flow_id: int
    key: FlowKey  # str(key) names the flow in views; formatted only when asked
    peer: PeerLink | None
    decision: FlowDecision
    mirror: PathRoute | None
    first_seen: float
    last_seen: float
    packets: int = 0
    bytes: int = 0
    session_id: int | None = None
    bucket: TokenBucket | None = None  # the session's budget on the mirror copy
    # (sent at, session sequence, packet) of the last packets of a flow a policy might mirror: sent
    # again on the mirror path when one opens because the standard path fell silent.
    recent: deque[tuple[float, int, builtins.bytes]] | None = None  # (the field `bytes` shadows the type here)
    copies_denied: int = 0


@dataclass
class VcInstall:
    """A virtual connection this node (as source) keeps installed on one relay."""

    target: str
    relay: PeerLink
    channel: int
    next_hop: tuple[str, int]
    request_id: int = 0
    acked_until: float = 0.0  # lease end as acknowledged by the relay
    next_send: float = 0.0
    attempts: int = 0
    last_error: str = ""


@dataclass
class MirrorTarget:
    name: str
    peer: PeerLink
    route: PathRoute
    installs: list[VcInstall] = field(default_factory=list)
    state: str = "installing"


def next_epoch(state_dir: Path | None) -> int:
    """A new u16 epoch per start: a persistent counter if we have a state folder."""
    if state_dir is None:
        return random.SystemRandom().randrange(1, 65536)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "epoch"
    try:
        current = int(path.read_text())
    except (OSError, ValueError):
        current = random.SystemRandom().randrange(0, 65536)
    epoch = (current + 1) % 65536
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(epoch))
    os.replace(tmp, path)
    return epoch


class Node:
    def __init__(self, config: NodeConfig, *, hook: DecisionHook | None = None) -> None:
        self.config = config
        self.started = time.time()
        self.epoch = next_epoch(config.state_dir)
        underlay_mtu = config.overlay.underlay_mtu if config.overlay else 1500
        self.tun_mtu = tun_mtu(underlay_mtu)
        timers = config.timers
        self.engine = Engine(config.node_id, self.epoch, window_size=timers.dedup_window,
                             skew_us=timers.dedup_skew_ms * 1000, max_inner=self.tun_mtu)
        self.hook = hook or static_hook(config.filters)
        self._controller_decides = FlowDecision(None, f"policy {config.adaptive.policy}: the controller decides")
        # The flow table. The native send loop holds this very dict (`_native_new_flows`): a flow
        # it does not hold is new and goes out on the standard path. Mutate it; never rebind it.
        self.flows: dict[bytes, FlowEntry] = {}
        self.prefixes: list[tuple[ipaddress.IPv4Network, PeerLink]] = []
        for peer in config.peers:
            link = self.engine.add_peer(peer.id, peer.name, peer_key(peer),
                                        (str(peer.underlay[0]), peer.port), peer.relay)
            for prefix in peer.prefixes:
                self.prefixes.append((prefix, link))
        self.prefixes.sort(key=lambda item: -item[0].prefixlen)
        self._prefix_ints = [(int(p.network_address), int(p.netmask), peer) for p, peer in self.prefixes]
        self._peer_of: dict[bytes, PeerLink | None] = {}  # destination address -> _lookup_peer's answer
        # Mirrored flows under a budget that the native loop carries (checked after every wake-up).
        self._native_budgeted: dict[bytes, FlowEntry] = {}
        self.targets: dict[str, MirrorTarget] = {}
        for index, (name, target) in enumerate(config.targets.items(), start=1):
            destination = self.engine.peers_by_name[target.peer]
            relays = [self.engine.peers_by_name[r] for r in target.relays]
            route = PathRoute(index, index, relays[0].address, tuple(target.relays), active=False)
            destination.mirrors[name] = route
            hops = [*relays[1:]]
            installs = [
                VcInstall(name, relay, index, (hops[i].address if i < len(hops) else destination.address))
                for i, relay in enumerate(relays)
            ]
            self.targets[name] = MirrorTarget(name, destination, route, installs)
        self._request_ids = 0
        self._flow_ids = 0
        self.flows_by_id: dict[int, FlowEntry] = {}
        self._expiry_keys: list[bytes] = []  # the pass of `_expire_flows` under way, and where it is
        self._expiry_at = 0
        self._protect_due = 0.0  # next `protect` round (`_controller_tick`)
        self._sent_counts: dict[str, int] = {}  # peer -> data packets we sent it on the standard path, at the last tick
        self._heard_counts: dict[str, int] = {}  # peer -> packets from it on its standard path, at the last tick
        self.analysis_queue: deque[tuple[int, bytes]] = deque()
        self.analysis_dropped = 0
        self.controller = None
        self.store = None
        self.budget = DuplicationBudget(DuplicationBudgetConfig(share=config.adaptive.duplication_share))
        self.bytes_original = 0
        self.bytes_extra = 0
        self.relay_waiting: dict[str, float] = {}  # relay -> first unacknowledged request
        self.relays_down: set[str] = set()
        if config.adaptive.policy != "static":
            self.controller = build_controller(config)
        if config.state_dir is not None:
            from topomirror.store.db import Store

            self.store = Store(config.state_dir / "node.db")
            if self.controller is not None:
                snapshot = self.store.get("controller")
                if snapshot:
                    resumed = self.controller.restore(snapshot)
                    log.info("restored the model and %d protected flows from %s", resumed, self.store.path)
        self._native_new_flows()
        self.tun_fd: int | None = None
        self.sock: socket.socket | None = None
        self.udp: UdpIO | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._monotonic = time.monotonic
        self.packet_thread: PacketThread | None = None  # while the native packet loops run on their own thread
        self.packet_thread_handoffs = 0  # times the thread, busy, left the packets to the event loop
        self._loop_has_packets = False  # the event loop reads the socket and the TUN (no thread, or handed off)
        self._quiet_since = 0.0  # handed off: the rate is looked at over [_quiet_since, now]
        self._busy_mark = 0
        self._thread_notify: int | None = None  # its eventfd: something came up for Python
        self.probes_sent = 0
        self.timer_errors = 0
        self.timer_slowest_ms: dict[str, float] = {}  # longest run of each timer (it blocks the loop)
        self.timer_slow_runs: dict[str, int] = {}  # runs over TIMER_SLOW_MS, and their time in all
        self.timer_slow_ms: dict[str, float] = {}
        self.timer_slow_cpu_ms: dict[str, float] = {}  # the loop thread's CPU time in those runs
        self.timer_runs: dict[str, int] = {}  # every run of each timer, and the time they held the loop
        self.timer_total_ms: dict[str, float] = {}
        # _send_paced's queue: each item seals its message when its turn comes
        self._paced: deque[Callable[[float, int], list[tuple[bytes, tuple[str, int]]]]] = deque()
        self._paced_scheduled = False

    # -- clocks --------------------------------------------------------------------------
    def _now(self) -> tuple[float, int]:
        ns = time.monotonic_ns()
        return ns / 1e9, ns // 1000

    # -- packet path: TUN -> peers -----------------------------------------------------------
    def _lookup_peer(self, packet: bytes) -> PeerLink | None:
        """Longest prefix first (the list is sorted): integer compares, no address objects; the
        answer per destination address is remembered (new flows mostly go to known hosts)."""
        dst = packet[16:20]
        cache = self._peer_of
        if dst in cache:
            return cache[dst]
        if len(cache) >= 65536:
            cache.clear()
        address = int.from_bytes(dst, "big")
        found = next((peer for network, mask, peer in self._prefix_ints if address & mask == network), None)
        cache[dst] = found
        return found

    def _new_flow(self, raw: bytes, packet: bytes, now: float) -> FlowEntry:
        # Thousands of new flows/s: no formatting, no parsing beyond the 5-tuple, no log line
        # (a rate: topomirror_flows_created on /metrics).
        key = key_of(raw, packet[1] >> 2)
        peer = self._lookup_peer(packet)
        self._flow_ids += 1
        if peer is None:
            decision, mirror = _NO_PEER, None
        elif self.controller is not None:
            # Static rules do not apply under an adaptive policy: the controller decides.
            decision, mirror = self._controller_decides, None
            self.controller.new_flow(self._flow_ids, key, peer.name, now)
        else:
            decision, mirror = self._static_decision(key, packet, peer)
        entry = FlowEntry(self._flow_ids, key, peer, decision, mirror, now, now)
        self.flows[raw] = entry
        self.flows_by_id[entry.flow_id] = entry
        return entry

    def _static_decision(self, key: FlowKey, packet: bytes, peer: PeerLink) -> tuple[FlowDecision, PathRoute | None]:
        decision = self.hook(key, packet)
        mirror = None
        if decision.target is not None:
            target = self.targets.get(decision.target)
            if target is not None and target.peer is peer:
                mirror = target.route
            else:
                decision = FlowDecision(None, f"{decision.reason}, but target {decision.target!r} does not lead "
                                        f"to {peer.name}", decision.rule)
        log.debug("new flow %s: %s", key, decision.reason)
        return decision, mirror

    def _native_new_flows(self) -> None:
        """Under an adaptive policy a new flow's first packet goes on the standard path only (the
        controller decides on its tick): the native loop sends it so, before Python sees it, and
        hands it up already sent (`_sent_packets`). Under static rules the hook decides on the
        first packet, which may be mirrored: every new flow comes up unsent."""
        tx = self.engine.tx
        if tx is None:
            return
        table = tuple((network, mask, peer.sealer, (peer.standard.address[0], peer.standard.address[1],
                                                     peer.standard.path_id, peer.standard.channel))
                      for network, mask, peer in self._prefix_ints
                      if peer.sealer is not None and peer.standard is not None)
        if self.controller is None or len(table) != len(self._prefix_ints) or len(table) > NATIVE_PREFIXES:
            tx.new_flows(None, ())  # (more peer prefixes than the C table holds: Python sends them)
        else:
            tx.new_flows(self.flows, table)

    def _on_tun(self) -> None:
        assert self.tun_fd is not None and self.udp is not None
        now, now_us = self._now()
        engine = self.engine
        if engine.tx is not None:
            # The native loop seals and sends the packets of the flows handed down to it, and the
            # first packets of new flows under an adaptive policy (`fresh`, already sent); the
            # rest (flows a policy watches or budgets, packets 2-4 for analysis) come up here.
            slow, fresh, touched, counts = engine.tx.pump(self.tun_fd, self.udp.sock.fileno(), BATCH,
                                                          self.tun_mtu, now_us)
            engine.pumped(counts, self.udp.stats, self.udp.errors)
            self._pumped(slow, fresh, touched, now, now_us)
            return
        out: list[tuple[bytes, tuple[str, int]]] = []
        read, tun_fd = os.read, self.tun_fd
        for _ in range(BATCH):
            try:
                packet = read(tun_fd, 65535)
            except BlockingIOError:
                break
            self._tun_packet(packet, now, now_us, out)
        if out:
            self._send_all(out)

    def _pumped(self, slow: list[bytes], fresh: list[tuple[bytes, bytes]], touched: list,  # type: ignore[type-arg]
                now: float, now_us: int) -> None:
        """What one or more native pumps left for Python: the flows sent on (accounting), new flows
        sent on the standard path (`fresh`), and the packets still to decide and send (`slow`)."""
        out: list[tuple[bytes, tuple[str, int]]] = []
        try:
            if touched:
                self._account(touched, now)
            if fresh:
                self._sent_packets(fresh, now)
            for packet in slow:
                self._tun_packet(packet, now, now_us, out)
        finally:
            if self._native_budgeted:
                self._check_native_budgets(now)
        if out:
            self._send_all(out)

    def _tun_packet(self, packet: bytes, now: float, now_us: int, out: list[tuple[bytes, tuple[str, int]]]) -> None:
        engine = self.engine
        if len(packet) > self.tun_mtu:
            engine.drops["oversize"] += 1
            return
        raw = flow_bytes(packet)
        if raw is None:
            engine.drops["not_ipv4"] += 1
            return
        flow = self.flows.get(raw)
        if flow is None:
            flow = self._new_flow(raw, packet, now)
        flow.packets += 1
        flow.bytes += len(packet)
        flow.last_seen = now
        peer = flow.peer
        if peer is None:
            engine.drops["no_route"] += 1
            return
        controller = self.controller
        if flow.packets <= 4 and controller is not None:
            self._analyse(flow.flow_id, packet)
        assert peer.standard is not None
        routes = [peer.standard]
        self.bytes_original += len(packet)
        mirror = flow.mirror
        if mirror is not None and mirror.active:
            if flow.bucket is None or admit_copy(flow.bucket, self.budget, len(packet), now):
                routes.append(mirror)
                self.bytes_extra += len(packet)
            else:
                flow.copies_denied += 1
        if controller is not None:
            self.budget.record_original(len(packet))
        out.extend(engine.encapsulate(peer, routes, packet, now, now_us))
        if flow.recent is not None:
            flow.recent.append((now, engine.last_seq(peer), packet))
        elif (engine.tx is not None and peer.sealer is not None and (controller is None or flow.packets > 4)
              and (flow.bucket is None or (len(routes) > 1 and self._copy_headroom(flow.bucket, now)))):
            # Nothing per packet left for Python to decide: the native loop carries it from now
            # on, until a policy change hands every flow back (`_flows_to_python`). A mirrored flow
            # under a budget goes too while its session's bucket and the node's budget both hold
            # more than one wake-up can copy: `_account` debits what it copied after each wake-up
            # and takes the flow back before either could run short.
            engine.tx.flows[raw] = native.fast.FastFlow(  # type: ignore[union-attr]
                flow, tuple(routes), peer.sealer,
                tuple((r.address[0], r.address[1], r.path_id, r.channel) for r in routes))
            if flow.bucket is not None:
                self._native_budgeted[raw] = flow

    def _sent_packets(self, fresh: list[tuple[bytes, bytes]], now: float) -> None:
        """Packets of flows new to the table that the native loop sent on their peer's standard
        path: the flow table, analysis and accounting of `_tun_packet`, without the send."""
        flows = self.flows
        total = 0
        for raw, packet in fresh:
            flow = flows.get(raw)
            if flow is None:
                flow = self._new_flow(raw, packet, now)
            size = len(packet)
            total += size
            flow.packets += 1
            flow.bytes += size
            flow.last_seen = now
            if flow.packets <= 4:
                self._analyse(flow.flow_id, packet)
            flow.peer.standard.sent(now, 1, size)  # type: ignore[union-attr]  # the native loop found its peer
        self.bytes_original += total
        self.budget.record_original(total)

    def _analyse(self, flow_id: int, packet: bytes) -> None:
        """First packets go to analysis off the packet path: bounded, drop-and-count; it runs
        as soon as this batch is sent (an announcement is worth milliseconds). Packets no
        extractor reads (no payload yet, UDP on a port without a parser) are not queued."""
        if not may_carry_metadata(packet):
            return
        if len(self.analysis_queue) < 1024:
            if not self.analysis_queue and self.loop is not None:
                self.loop.call_soon(self._analysis_tick)
            self.analysis_queue.append((flow_id, packet))
        else:
            self.analysis_dropped += 1

    def _account(self, touched: list, now: float) -> None:  # type: ignore[type-arg]
        """What the native loop sent for each flow since the last wake-up, into the flow table,
        the routes and the duplication budget (as `_tun_packet` counts it packet by packet)."""
        controller = self.controller
        for fast_flow in touched:
            packets, size = fast_flow.take()
            entry = fast_flow.entry
            entry.packets += packets
            entry.bytes += size
            entry.last_seen = now
            routes = fast_flow.routes
            for route in routes:
                route.sent(now, packets, size)
            copies = size * (len(routes) - 1)
            self.bytes_original += size
            self.bytes_extra += copies
            if controller is not None:
                self.budget.record_original(size)
            if entry.bucket is not None and copies:
                # Copied already: debit both budgets (the headroom kept when the flow went native
                # covers one wake-up, so neither runs short; if it ever did, they go below zero
                # and the next copies wait).
                entry.bucket.charge(copies, now)
                self.budget.charge(copies)

    def _copy_headroom(self, bucket: TokenBucket, now: float) -> bool:
        """Both budgets hold more than one wake-up of the native loop can copy (BATCH packets)."""
        need = BATCH * self.tun_mtu
        return bucket.available(now) >= need and self.budget.tokens >= need

    def _check_native_budgets(self, now: float) -> None:
        """Take back to per-packet admission the budgeted flows whose session bucket, or the
        node's budget, no longer covers the next wake-up."""
        tx = self.engine.tx
        for raw, entry in list(self._native_budgeted.items()):
            if tx is None or raw not in tx.flows or entry.bucket is None:
                del self._native_budgeted[raw]
            elif not self._copy_headroom(entry.bucket, now):
                tx.flows.pop(raw, None)
                del self._native_budgeted[raw]

    def _flows_to_python(self) -> None:
        """Hand every flow back to the Python packet path: its mirror, budget or watch changed.
        Each re-registers after its next packet if nothing per packet is left to decide."""
        if self.engine.tx is not None:
            self.engine.tx.flows.clear()
        self._native_budgeted.clear()

    def _send_all(self, items: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Send a burst (one GSO call per run of equal-sized datagrams to one address)."""
        assert self.udp is not None
        for code in self.udp.send(items):
            if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                self.engine.drops["no_route"] += 1

    def _send(self, datagram: bytes, address: tuple[str, int]) -> None:
        self._send_all([(datagram, address)])

    def _send_paced(self, make: Callable[[float, int], list[tuple[bytes, tuple[str, int]]]]) -> None:
        """A measurement message a timer made (FEEDBACK, PROBE): sealed and sent at its own turn
        of the loop, one message per turn, so the packets that arrive meanwhile are not held
        behind the lot. `make(now, now_us)` seals its copies then: the send time they carry is
        when they leave, so the wait in this queue is not measured as path delay. A send can take
        a while: on a veth network the kernel carries the datagram through every hop in the
        sender's system call (0.1-0.2 ms here), and a feedback tick tells every active peer."""
        if self.loop is None:  # no loop running (tests driving a tick by hand): at once
            self._send_all(make(*self._now()))
            return
        self._paced.append(make)
        if not self._paced_scheduled:
            self._paced_scheduled = True
            self.loop.call_soon(self._send_one_paced)

    def _send_one_paced(self) -> None:
        started = time.perf_counter()
        try:
            if self._paced:
                make = self._paced.popleft()
                if self.udp is not None:  # (closed: the message is dropped, the queue still drains)
                    items = make(*self._now())
                    if items:
                        self._send_all(items)
        finally:
            self._held_loop("_send_paced", (time.perf_counter() - started) * 1000)
            if self._paced and self.loop is not None and not self._stop.is_set():
                self.loop.call_soon(self._send_one_paced)
            else:
                self._paced_scheduled = False

    @property
    def tx_errors(self) -> dict[str, int]:
        return self.udp.errors if self.udp is not None else {}

    # -- packet path: peers -> TUN / relay -------------------------------------------------
    def _on_udp(self) -> None:
        assert self.udp is not None
        now, now_us = self._now()
        # Kernel arrival stamps are CLOCK_REALTIME; metering uses the monotonic clock.
        offset_ns = time.monotonic_ns() - time.time_ns()
        engine = self.engine
        if engine.rx is not None:
            # The native loop: DATA and relayed datagrams never come up to Python.
            slow = engine.drain(self.udp.sock.fileno(), self.tun_fd, now, offset_ns, BATCH, self.udp.stats,
                                self.udp.errors)
            if slow:
                self._receive(slow, now, now_us)
            return
        recv = self.udp.recv
        items: list[tuple[bytes, int]] = []
        for _ in range(BATCH):
            try:
                datagrams, stamp = recv()
            except BlockingIOError:
                break
            # The kernel's stamp as is: a loop that started long ago must not date later
            # arrivals back to its start (that would read as a shorter path, for good).
            arrival_us = (stamp + offset_ns) // 1000 if stamp is not None else time.monotonic_ns() // 1000
            items.extend((datagram, arrival_us) for datagram in datagrams)
        self._receive(items, now, now_us)

    def _start_packet_thread(self) -> bool:
        """The native packet loops on a thread of their own (`listen.packet_thread`): a datagram or
        a TUN packet is handled the moment it arrives, without a wake-up of this loop; what needs
        Python comes up through an eventfd (`_on_packet_thread`), and what the send loop sent for
        each flow is accounted on a timer (`_packet_thread_tick`)."""
        rx = self.engine.rx
        if native.PACKET_THREAD_SETTING and native.PACKET_THREAD is None:
            log.warning("TOPOMIRROR_PACKET_THREAD=%s is not on, off or auto: the config's %s applies",
                        native.PACKET_THREAD_SETTING, self.config.listen.packet_thread)
        mode = native.PACKET_THREAD or self.config.listen.packet_thread
        if rx is None or native.fast is None or mode == "off":
            return False
        assert self.sock is not None and self.loop is not None
        self._thread_notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        tx = self.engine.tx if self.tun_fd is not None else None
        self.packet_thread = native.fast.PacketThread(rx, tx, self.sock.fileno(),
                                                      -1 if self.tun_fd is None else self.tun_fd,
                                                      self._thread_notify, BATCH, self.tun_mtu)
        if mode == "auto":
            self.packet_thread.busy_pps = BUSY_PPS
        # A packet that finds this loop running Python waits for the GIL at most this long.
        sys.setswitchinterval(0.0005)
        self.loop.add_reader(self._thread_notify, self._on_packet_thread)
        self.packet_thread.start()
        return True

    def _stop_packet_thread(self) -> None:
        """Stop the thread; whatever it handed up and Python has not seen yet is handled here."""
        thread = self.packet_thread
        if thread is None:
            return
        thread.stop()
        self.fold_counts()
        with contextlib.suppress(Exception):
            self._from_packet_thread(thread)
        if self._thread_notify is not None and self.loop is not None:
            self.loop.remove_reader(self._thread_notify)
            os.close(self._thread_notify)
        self.packet_thread = self._thread_notify = None

    def fold_counts(self) -> None:
        """What the packet thread counted since the last call, into the counters (read by
        `status`, the metrics and the accounting timer)."""
        thread = self.packet_thread
        if thread is not None and self.udp is not None:
            self.engine.drained(thread.counts(), self.udp.stats, self.udp.errors)
            self.engine.pumped(thread.tx_counts(), self.udp.stats, self.udp.errors)

    def _on_packet_thread(self) -> None:
        assert self._thread_notify is not None and self.packet_thread is not None
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._thread_notify)
        self._packet_thread_tick()

    def _packet_thread_tick(self) -> None:
        """What the thread handed up (or sent, for the accounting) since the last look."""
        thread = self.packet_thread
        if thread is None:
            return
        try:
            self._from_packet_thread(thread)
        except native.PacketThreadFailed:
            log.exception("the packet thread stopped; the event loop runs the packet loops from now on")
            self._stop_packet_thread()
            if not self._loop_has_packets:
                self._loop_takes_packets(True)
            return
        if thread.handed_off and not self._loop_has_packets:
            # Busy (`BUSY_PPS`): the event loop carries the packets, in its bigger batches, until
            # the rate has stayed under half of it for a second.
            self.packet_thread_handoffs += 1
            self._loop_takes_packets(True)
            self._quiet_since, self._busy_mark = self._now()[0], self._packets_carried()
        elif self._loop_has_packets and thread.alive:
            now = self._now()[0]
            if now - self._quiet_since >= 1.0:
                carried = self._packets_carried()
                rate = (carried - self._busy_mark) / (now - self._quiet_since)
                self._quiet_since, self._busy_mark = now, carried
                if rate < BUSY_PPS / 2:
                    self._loop_takes_packets(False)
                    thread.resume()

    def _packets_carried(self) -> int:
        self.fold_counts()
        return self.engine.counters["rx_datagrams"] + self.engine.counters["tx_packets"]

    def _loop_takes_packets(self, take: bool) -> None:
        """The event loop reads the socket and the TUN (take), or leaves them to the thread."""
        assert self.sock is not None and self.loop is not None
        self._loop_has_packets = take
        readers = [(self.sock.fileno(), self._on_udp)]
        if self.tun_fd is not None:
            readers.append((self.tun_fd, self._on_tun))
        for fd, reader in readers:
            if take:
                self.loop.add_reader(fd, reader)
            else:
                self.loop.remove_reader(fd)

    def _from_packet_thread(self, thread: PacketThread) -> None:
        now, now_us = self._now()
        try:
            slow = thread.take()
            tx_slow, fresh, touched = thread.take_tx()
        except Exception as exc:
            raise native.PacketThreadFailed(str(exc)) from exc
        try:
            self._pumped(tx_slow, fresh, touched, now, now_us)
        finally:
            thread.gate = bool(self._native_budgeted)  # budgeted flows: every wake-up is charged before the next
            thread.release_tx()
        try:
            if slow:
                self._receive(slow, now, now_us)
        finally:
            thread.release()

    def _receive(self, items: list[tuple[bytes, int]], now: float, now_us: int) -> None:
        """Datagrams through `Engine.receive`, in order; second copies once the first are out."""
        receive = self.engine.receive
        tun_fd = self.tun_fd
        write = os.write
        out: list[tuple[bytes, tuple[str, int]]] = []
        later: list[tuple[bytes, int]] = []  # second copies: measured once the burst is delivered
        for datagram, arrival_us in items:
            kind, value, extra = receive(datagram, now, arrival_us, later=True)
            if kind == LATER:
                later.append((datagram, arrival_us))
            elif kind == DELIVER:
                if tun_fd is not None:
                    try:
                        write(tun_fd, value)  # type: ignore[arg-type]
                    except OSError:
                        self.engine.drops["malformed"] += 1
            elif kind == FORWARD:
                out.append((value, extra))  # type: ignore[arg-type]
            elif kind == FEEDBACK:
                assert isinstance(extra, PeerLink) and isinstance(value, Feedback)
                extra.history.add(now, value)
                if self.controller is not None:
                    self.controller.feedback(extra.name, value.paths, now)
                if self.store is not None:
                    for report in value.paths:
                        self.store.telemetry(extra.name, report.path_id, asdict(report))
            elif kind == CONTROL:
                assert isinstance(extra, PeerLink) and isinstance(value, Control)
                self._on_control(extra, value, now, now_us)
        for datagram, arrival_us in later:
            receive(datagram, now, arrival_us)  # a duplicate: authenticated, measured, dropped
        if out:
            self._send_all(out)

    def _on_control(self, peer: PeerLink, message: Control, now: float, now_us: int) -> None:
        if message.op == "vc_install":
            host, _, port = message.next_hop.rpartition(":")
            lease = min(max(message.lease_ms, 100), 60_000) / 1000
            self.engine.install_vc(peer.id, message.channel, (host, int(port)), now + lease)
            reply = Control("ack", message.request_id, message.channel, lease_ms=message.lease_ms)
        elif message.op == "vc_remove":
            self.engine.remove_vc(peer.id, message.channel)
            reply = Control("ack", message.request_id, message.channel)
        elif message.op == "silent":
            if self.controller is not None:
                self.controller.peer_says_silent(peer.name, now)
                if self.loop is not None:
                    self.loop.call_soon(self._controller_tick)  # mirror around it now
            return
        elif message.op == "protect":
            if self.controller is not None:
                flow = json.loads(message.detail).get("flow") if message.detail else None
                if isinstance(flow, str):
                    lease = min(max(message.lease_ms, 100), 10_000) / 1000
                    self.controller.peer_protects(peer.name, flow, now + lease, now)
            return
        elif message.op == "announce":
            if self.controller is not None:
                data = json.loads(message.detail)
                hops = tuple(tuple(h) for h in data["hops"])
                self.controller.announcement(peer.name, hops, int(data["bytes"]), message.lease_ms, now)  # type: ignore[arg-type]
                if self.loop is not None:
                    self.loop.call_soon(self._controller_tick)  # act on it now, not at the next tick
            return
        elif message.op == "ack":
            self._relay_alive(peer, now)
            if self.controller is not None and message.channel >= 100:
                self.controller.ack(peer.name, message.channel, now)
                return
            for target in self.targets.values():
                for install in target.installs:
                    if install.relay is peer and install.request_id == message.request_id:
                        # The relay's lease started when it got the request, a little before now:
                        # count it from now minus a margin so we never believe in a lapsed lease.
                        install.acked_until = now + message.lease_ms / 1000 * 0.9
                        install.attempts = 0
                        install.next_send = now + message.lease_ms / 3000
            self._refresh_targets(now)
            return
        else:
            return
        for datagram, address in self.engine.message(peer, MessageType.CONTROL, reply,
                                                      self.engine.routes_to(peer)[:1], now, now_us):
            self._send(datagram, address)

    # -- timers ----------------------------------------------------------------------------
    def _refresh_targets(self, now: float) -> None:
        for target in self.targets.values():
            active = all(i.acked_until > now for i in target.installs)
            if active != target.route.active:
                log.info("mirror target %s %s", target.name, "active" if active else "inactive")
                self._flows_to_python()
            target.route.active = active
            target.state = "active" if active else "installing"

    def _install_tick(self) -> None:
        assert self.sock is not None
        now, now_us = self._now()
        lease_ms = self.config.timers.lease_ms
        for target in self.targets.values():
            for install in target.installs:
                standard = install.relay.standard
                if now < install.next_send or standard is None:
                    continue
                self._request_ids += 1
                install.request_id = self._request_ids
                install.attempts += 1
                # Retry quickly while unacknowledged (backoff to 1 s), renew at a third of the lease.
                install.next_send = now + min(0.05 * 2 ** min(install.attempts - 1, 5), 1.0)
                request = Control("vc_install", install.request_id, install.channel,
                                  f"{install.next_hop[0]}:{install.next_hop[1]}", lease_ms)
                for datagram, address in self.engine.message(install.relay, MessageType.CONTROL, request,
                                                              [standard], now, now_us):
                    self._send(datagram, address)
        self._refresh_targets(now)
        self.engine.expire_vcs(now)

    def _feedback_tick(self) -> None:
        assert self.sock is not None
        engine = self.engine
        for peer, feedback in engine.feedback_reports(self.config.timers.feedback_ms):
            self._send_paced(functools.partial(engine.feedback_message, peer, feedback))

    def _probe_tick(self) -> None:
        assert self.sock is not None
        now, now_us = self._now()
        idle = self.config.timers.probe_ms / 1000
        for peer in self.engine.peers.values():
            if peer.relay and not peer.mirrors:
                continue  # relays are measured through the paths they carry
            for route in self.engine.routes_to(peer):
                if now - route.last_sent >= idle:
                    self.probes_sent += 1
                    self._send_paced(functools.partial(self.engine.message, peer, MessageType.PROBE,
                                                       Probe(self.probes_sent), [route]))

    def _analysis_tick(self) -> None:
        """Metadata of first packets, off the packet path."""
        from topomirror.analysis.metadata import extract_packet

        assert self.controller is not None
        now, now_us = self._now()
        for _ in range(len(self.analysis_queue)):
            flow_id, packet = self.analysis_queue.popleft()
            metadata = extract_packet(packet)
            if metadata is None or (metadata.app_protocol is None and metadata.announced_bytes is None):
                continue
            for announce in self.controller.flow_metadata(flow_id, metadata, now):
                self._send_announce(announce, now, now_us)

    def _send_announce(self, announce, now: float, now_us: int) -> None:  # type: ignore[no-untyped-def]
        message = Control("announce", 0, 0, lease_ms=announce.duration_ms,
                          detail=json.dumps({"hops": announce.hops, "bytes": announce.bytes}))
        for name in announce.peers:
            self._tell(name, message, now, now_us)

    def _tell(self, name: str, message: Control, now: float, now_us: int) -> None:
        """A CONTROL message for peer `name` on every path we have to it (unknown peers: none)."""
        peer = self.engine.peers_by_name.get(name)
        if peer is None or peer.standard is None:
            return
        for datagram, address in self.engine.message(peer, MessageType.CONTROL, message,
                                                      self.engine.routes_to(peer), now, now_us):
            self._send(datagram, address)

    def _controller_tick(self) -> None:
        from topomirror.topology.session import InstallVC, RemoveVC, RenewVC, StartDuplication, StopDuplication

        controller = self.controller
        assert controller is not None and self.sock is not None
        if self.udp is not None:
            # After a stall of the loop (or of the process), timers run before the reads: take
            # what arrived first, or the quiet would read as a silent path.
            self._on_udp()
        now, now_us = self._now()
        # Only the flows this tick looks at (the watched ones).
        flows_by_id = self.flows_by_id
        horizon = now - self.config.timers.dedup_skew_ms / 1000
        for info in controller.flows_read_at():
            entry = flows_by_id.get(info.flow_id)
            if entry is not None:
                info.last_seen = entry.last_seen
                recent = entry.recent
                if entry.mirror is not None and entry.mirror.active and not entry.copies_denied:
                    # Mirrored: every packet already leaves on two paths, nothing to send again
                    # if one falls silent; without its recent packets the native loop carries it.
                    # (A flow whose budget refused copies sent some on one path: it keeps them.)
                    entry.recent = None
                elif recent is None:
                    entry.recent = deque(maxlen=RECENT_PACKETS)
                    self._flows_to_python()  # a watched flow keeps its recent packets: per packet
                else:
                    # Only what the destination could still take (its de-dup skew): memory stays
                    # the protected flows' last 250 ms, however many of them there are.
                    while recent and recent[0][0] < horizon:
                        recent.popleft()
        self._check_relays(now)
        heard_counts, sent_counts = self._heard_counts, self._sent_counts
        for peer in self.engine.peers.values():
            if not peer.relay and peer.standard is not None and peer.standard.last_sent:
                # Data sent since the last look (probes and feedback do not make a path "in use").
                if sent_counts.get(peer.name) != peer.standard.packets:
                    sent_counts[peer.name] = peer.standard.packets
                    controller.sending(peer.name, now)
                meter = peer.meters.meters.get(0) if peer.meters is not None else None
                if meter is not None and heard_counts.get(peer.name) != meter.total_packets:
                    arrived = meter.total_packets - heard_counts.get(peer.name, 0)
                    heard_counts[peer.name] = meter.total_packets
                    controller.heard(peer.name, now, max(1, arrived))
        if now >= self._protect_due:
            self._protect_due = now + PROTECT_EVERY_S
            for name, flow in controller.protected_directions(now):
                self._tell(name, Control("protect", 0, 0, lease_ms=PROTECT_LEASE_MS,
                                         detail=json.dumps({"flow": flow})), now, now_us)
        for action in controller.tick(now):
            if isinstance(action, InstallVC | RenewVC):
                relay = self.engine.peers_by_name.get(action.relay)
                next_name = getattr(action, "next_hop", None)
                if relay is None:
                    continue
                if next_name is None:
                    plan = controller.plan_of(action.session_id)
                    next_name = plan.next_hop(action.relay) if plan is not None else None
                hop = self.engine.peers_by_name.get(next_name) if next_name else None
                if hop is None:
                    continue
                self._request_ids += 1
                request = Control("vc_install", self._request_ids, action.channel_id,
                                  f"{hop.address[0]}:{hop.address[1]}", action.lease_ms)
                self._send_control(relay, request, now, now_us)
            elif isinstance(action, RemoveVC):
                relay = self.engine.peers_by_name.get(action.relay)
                if relay is not None:
                    self._request_ids += 1
                    self._send_control(relay, Control("vc_remove", self._request_ids, action.channel_id),
                                       now, now_us)
            elif isinstance(action, StartDuplication):
                self._start_duplication(action, now, now_us)
            elif isinstance(action, StopDuplication):
                flow_id = controller.flow_of_session(action.session_id)
                for entry in self.flows_by_id.values():
                    if entry.session_id == action.session_id or entry.flow_id == flow_id:
                        entry.mirror, entry.bucket, entry.session_id = None, None, None
                        self._flows_to_python()
        for decision in controller.take_decisions():
            # One new_flow decision per flow: stored for `explain`, logged only at debug level.
            level = logging.DEBUG if decision.kind == "new_flow" else logging.INFO
            log.log(level, "%s %s: %s", decision.subject, decision.kind, decision.reason)
            if self.store is not None:
                self.store.decision(decision.subject, decision.kind, decision.reason, **decision.detail)
            if decision.kind == "session_state" and self.store is not None:
                sid = int(decision.subject.split(":", 1)[1])
                self.store.session(sid, str(decision.detail.get("flow")), str(decision.detail.get("peer")),
                                   decision.reason.split("-> ")[-1].split(":")[0].strip(),
                                   relays=decision.detail.get("relays"))

    def _relay_alive(self, relay: PeerLink, now: float) -> None:
        self.relay_waiting.pop(relay.name, None)
        if relay.name in self.relays_down and self.controller is not None and self.controller.graph is not None:
            self.relays_down.discard(relay.name)
            log.info("relay %s answers again", relay.name)
            self.controller.graph.set_node_up(relay.name, True)
            self.controller.graph_changed(now)

    def _check_relays(self, now: float) -> None:
        """A relay that acknowledged nothing for a second while we waited is taken as dead."""
        controller = self.controller
        if controller is None or controller.graph is None:
            return
        for name, since in list(self.relay_waiting.items()):
            if now - since > 1.0 and name not in self.relays_down:
                self.relays_down.add(name)
                log.warning("relay %s does not answer: re-planning the sessions through it", name)
                controller.graph.set_node_up(name, False)
                controller.graph_changed(now)
                if self.store is not None:
                    self.store.decision(f"relay:{name}", "relay_down", "no acknowledgement for 1 s")

    def _send_control(self, relay: PeerLink, request: Control, now: float, now_us: int) -> None:
        assert relay.standard is not None
        if request.op in ("vc_install", "vc_remove"):
            self.relay_waiting.setdefault(relay.name, now)
        for datagram, address in self.engine.message(relay, MessageType.CONTROL, request, [relay.standard],
                                                      now, now_us):
            self._send(datagram, address)

    def _start_duplication(self, action, now: float, now_us: int) -> None:  # type: ignore[no-untyped-def]
        from topomirror.node.controller import Controller

        controller = self.controller
        assert controller is not None
        flow_id = controller.flow_of_session(action.session_id)
        entry = self.flows_by_id.get(flow_id) if flow_id is not None else None
        first = self.engine.peers_by_name.get(action.first_hop)
        plan = controller.plan_of(action.session_id)
        if entry is None or first is None or plan is None:
            return
        relays = tuple(plan.overlay_nodes)
        entry.mirror = PathRoute(Controller.path_id_for(relays), action.channel_id, first.address, relays, True)
        self._flows_to_python()
        entry.session_id = action.session_id
        if self.config.adaptive.policy == "always":
            entry.bucket = None  # engarde-style: every packet, no budget
        else:
            entry.bucket = TokenBucket(SessionBudget(action.rate_bytes_per_s, action.burst_bytes), now)
        since = (controller.lost_since(entry.peer.name, now, self.config.timers.dedup_skew_ms / 1000)
                 if entry.peer is not None else None)
        if since is not None and entry.recent and entry.peer is not None:
            # The standard path went silent: what was sent since is likely lost. Send it again on
            # the mirror path under its own sequence numbers (the destination drops what did
            # arrive as duplicates), rather than leave it to TCP's retransmission timer (>= 200 ms).
            again = [self.engine.resend(entry.peer, entry.mirror, packet, seq, now, now_us)
                     for sent, seq, packet in entry.recent if sent >= since]
            if again:
                self._send_all(again)
                controller.resent(entry.flow_id, len(again), since, now)
        if since is not None and entry.peer is not None and controller.take_tell(entry.peer.name):
            # Tell the peer, on the path that works: it may not be sending enough to notice soon.
            message = Control("silent", 0, 0)
            for datagram, address in self.engine.message(entry.peer, MessageType.CONTROL, message, [entry.mirror],
                                                          now, now_us):
                self._send(datagram, address)

    def _store_tick(self) -> None:
        if self.store is not None:
            self.store.flush()

    def _snapshot_tick(self) -> None:
        if self.store is not None and self.controller is not None:
            self.store.put("controller", self.controller.snapshot())

    def _expire_flows(self) -> None:
        """Forget idle flows: a tenth of the table per run, every 100 ms (one pass over 100,000s
        of entries would stop the packet loop for tens of ms). Flows of one or two packets (a
        probe, a DNS query, a scan) go after `short_flow_idle_s`, the others after `flow_idle_s`."""
        self.expire_flows(self._now()[0])

    def expire_flows(self, now: float) -> None:
        timers = self.config.timers
        idle, short_idle = timers.flow_idle_s, timers.short_flow_idle_s
        if self._expiry_at >= len(self._expiry_keys):
            self._expiry_keys, self._expiry_at = list(self.flows), 0
        start = self._expiry_at
        self._expiry_at = stop = start + max(1000, len(self._expiry_keys) // 10)
        flows, by_id = self.flows, self.flows_by_id
        gone: list[int] = []
        for raw in self._expiry_keys[start:stop]:
            entry = flows.get(raw)
            if entry is not None and now - entry.last_seen > (short_idle if entry.packets <= 2 else idle):
                del flows[raw]
                by_id.pop(entry.flow_id, None)
                if self.engine.tx is not None:
                    self.engine.tx.flows.pop(raw, None)
                self._native_budgeted.pop(raw, None)
                gone.append(entry.flow_id)
        if gone and self.controller is not None:
            self.controller.forget(gone, now)

    def _held_loop(self, name: str, took_ms: float) -> None:
        """Count one run of `name` on the packet loop and the time it held it (/status)."""
        self.timer_runs[name] = self.timer_runs.get(name, 0) + 1
        self.timer_total_ms[name] = self.timer_total_ms.get(name, 0.0) + took_ms

    async def _every(self, seconds: float, func) -> None:  # type: ignore[no-untyped-def]
        reported: set[str] = set()
        name = getattr(func, "__name__", str(func))
        while not self._stop.is_set():
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                func()
            except Exception as exc:  # a timer must never take the node down; log each new error once
                self.timer_errors += 1
                signature = f"{type(exc).__name__}: {exc}"
                if signature not in reported and len(reported) < 20:
                    reported.add(signature)
                    log.exception("timer %s failed (further identical errors are only counted)", name)
            # A timer runs on the packet loop: every millisecond here is a millisecond no packet moves.
            took_ms = (time.perf_counter() - started) * 1000
            self._held_loop(name, took_ms)
            if took_ms > self.timer_slowest_ms.get(name, 0.0):
                self.timer_slowest_ms[name] = round(took_ms, 2)
            if took_ms > TIMER_SLOW_MS:
                # Wall time against the loop thread's CPU time: work, or the thread waiting for a
                # CPU (another process, the hypervisor) or for the disk in the middle of a run.
                cpu_ms = (time.thread_time() - cpu_started) * 1000
                self.timer_slow_runs[name] = self.timer_slow_runs.get(name, 0) + 1
                self.timer_slow_ms[name] = round(self.timer_slow_ms.get(name, 0.0) + took_ms, 2)
                self.timer_slow_cpu_ms[name] = round(self.timer_slow_cpu_ms.get(name, 0.0) + cpu_ms, 2)
            await asyncio.sleep(seconds)

    # -- lifecycle -------------------------------------------------------------------------
    def open_io(self) -> None:
        """Socket and TUN; called before the event loop starts (pyroute2's sync API runs its own loop)."""
        config = self.config
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind((str(config.listen.address), config.listen.port))
        self.sock.setblocking(False)
        self.udp = UdpIO(self.sock, gso=config.listen.gso, gro=config.listen.gro)
        if config.overlay is not None:
            from topomirror.dataplane.tun import configure_tun, open_tun

            self.tun_fd = open_tun(config.overlay.tun)
            # The overlay is IPv4; keep the kernel's IPv6 chatter (RS, MLD) out of the TUN.
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/net/ipv6/conf/{config.overlay.tun}/disable_ipv6").write_text("1")
            routes = [(str(p.network_address), p.prefixlen) for p, _ in self.prefixes]
            configure_tun(config.overlay.tun, str(config.overlay.address.ip),
                          config.overlay.address.network.prefixlen, self.tun_mtu, routes)

    async def run(self, ready_file: Path | None = None) -> None:
        from topomirror.api.server import start_api

        self.loop = asyncio.get_running_loop()
        if self.sock is None:
            self.open_io()
        assert self.sock is not None
        if not self._start_packet_thread():
            self._loop_takes_packets(True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        runner = await start_api(self)
        timers = self.config.timers
        tasks = [
            asyncio.create_task(self._every(0.02, self._install_tick)),
            asyncio.create_task(self._every(timers.feedback_ms / 1000, self._feedback_tick)),
            asyncio.create_task(self._every(timers.probe_ms / 2000, self._probe_tick)),
            asyncio.create_task(self._every(0.1, self._expire_flows)),
            asyncio.create_task(self._every(0.2, self._store_tick)),
        ]
        if self.packet_thread is not None:
            # the flows the thread sent on, into the flow table, routes and budgets
            tasks.append(asyncio.create_task(self._every(0.01, self._packet_thread_tick)))
        if self.controller is not None:
            tasks.append(asyncio.create_task(self._every(0.01, self._analysis_tick)))
            tasks.append(asyncio.create_task(self._every(0.02, self._controller_tick)))
            tasks.append(asyncio.create_task(self._every(1.0, self._snapshot_tick)))
        log.info("node %s (id %d, epoch %d) running: udp %s:%d, tun %s mtu %d, %d peers, %d targets",
                 self.config.name, self.config.node_id, self.epoch, self.config.listen.address,
                 self.config.listen.port, self.config.overlay.tun if self.config.overlay else "-",
                 self.tun_mtu, len(self.engine.peers), len(self.targets))
        if ready_file is not None:
            ready_file.write_text(str(os.getpid()))
        await self._stop.wait()
        log.info("node %s stopping", self.config.name)
        for task in tasks:
            task.cancel()
        if self.packet_thread is not None:
            self._stop_packet_thread()  # (what it handed up is handled while the store is open)
        await runner.cleanup()
        if self.store is not None:
            self._snapshot_tick()
            self.store.close()
        self.loop.remove_reader(self.sock.fileno())
        if self.tun_fd is not None:
            self.loop.remove_reader(self.tun_fd)
            with contextlib.suppress(OSError):
                os.close(self.tun_fd)
        self.sock.close()

    # -- views for the API -----------------------------------------------------------------
    def status(self) -> dict[str, object]:
        self.fold_counts()
        return {
            "node": self.config.name, "node_id": self.config.node_id, "epoch": self.epoch,
            "uptime_s": round(time.time() - self.started, 1), "tun_mtu": self.tun_mtu,
            "counters": dict(self.engine.counters), "drops": dict(self.engine.drops),
            "tx_errors": dict(self.tx_errors), "flows": len(self.flows),
            "relay_vcs": len(self.engine.vcs), "probes_sent": self.probes_sent,
            "policy": self.config.adaptive.policy, "analysis_dropped": self.analysis_dropped,
            "timer_errors": self.timer_errors, "timer_slowest_ms": dict(self.timer_slowest_ms),
            "timer_slow_runs": dict(self.timer_slow_runs), "timer_slow_ms": dict(self.timer_slow_ms),
            "timer_slow_cpu_ms": dict(self.timer_slow_cpu_ms), "timer_runs": dict(self.timer_runs),
            "timer_total_ms": {name: round(ms, 1) for name, ms in self.timer_total_ms.items()},
            # Collections per generation (pause times would need gc.callbacks, which cost the
            # packet loop several times what they measure).
            "gc": [stats["collections"] for stats in gc.get_stats()],
            "io": {**(self.udp.stats if self.udp else {}), "gso": bool(self.udp and self.udp.gso),
                   "gro": bool(self.udp and self.udp.gro)},
            "sessions_opened": self.controller.sessions_opened if self.controller else 0,
            "lead_times_ms": [round(x, 1) for x in self.controller.lead_times_ms] if self.controller else [],
            "bytes_original": self.bytes_original, "bytes_extra": self.bytes_extra,
            "store_write_errors": self.store.write_errors if self.store is not None else 0,
            "store_writer_alive": self.store.writer_alive if self.store is not None else None,
            "packet_thread": ({"alive": self.packet_thread.alive, "rx_wakeups": self.packet_thread.wakeups,
                               "tx_wakeups": self.packet_thread.tx_wakeups,
                               "gil_wait_us": self.packet_thread.gil_wait_us,
                               "gil_wait_max_us": self.packet_thread.gil_wait_max_us,
                               "gil_held_us": self.packet_thread.gil_held_us,
                               "auto": self.packet_thread.busy_pps > 0, "handoffs": self.packet_thread_handoffs,
                               "event_loop_has_packets": self._loop_has_packets}
                              if self.packet_thread is not None else None),
        }

    def explain(self, subject: str) -> list[dict[str, object]]:
        """Stored decisions about `subject`; for a live flow nothing was stored about (one no
        policy would mirror: see Controller.new_flow), what the flow table knows of it now."""
        stored: list[dict[str, object]] = []
        if self.store is not None:
            # What the timer handed the writer may not be committed yet: wait a little for it (this
            # runs on the packet loop; a busy disk leaves the last 200 ms out rather than stall it).
            self.store.sync(timeout=0.2)
            stored = self.store.explain(subject)
        if stored or subject.startswith("session"):
            return stored
        infos = self.controller.flows if self.controller is not None else {}
        live: list[dict[str, object]] = []
        for entry in self.flows.values():
            if subject in str(entry.key):
                info = infos.get(entry.flow_id)
                reason = f"class {info.traffic_class}: {info.class_reason}" if info else entry.decision.reason
                live.append({"at": None, "subject": f"flow:{entry.key}", "kind": "live", "reason": reason,
                             "detail": {"packets": entry.packets, "peer": entry.peer.name if entry.peer else None}})
                if len(live) >= 100:
                    break
        return live

    def flows_view(self, limit: int = 1000) -> list[dict[str, object]]:
        """The `limit` most recently active flows, most recent first (a busy node has 100,000s)."""
        import heapq

        now = self._monotonic()
        classes = {}
        if self.controller is not None:
            flows = self.controller.flows
            classes = {fid: (flows[fid].traffic_class, flows[fid].class_reason)
                       for fid in (f.flow_id for f in self.flows.values()) if fid in flows}
        recent = heapq.nlargest(limit, self.flows.values(), key=lambda f: f.last_seen)
        # Flows the native send loop carries now (nothing per packet left for Python to decide).
        tx = self.engine.tx
        native = {id(fast_flow.entry) for fast_flow in tx.flows.values()} if tx is not None else set()
        return [
            {"flow": str(f.key), "peer": f.peer.name if f.peer else None, "mirror": f.decision.target,
             "mirror_active": bool(f.mirror and f.mirror.active), "reason": f.decision.reason,
             "rule": f.decision.rule, "packets": f.packets, "bytes": f.bytes,
             "age_s": round(now - f.first_seen, 3), "idle_s": round(now - f.last_seen, 3),
             "session": f.session_id, "class": classes.get(f.flow_id, (None, None))[0],
             "class_reason": classes.get(f.flow_id, (None, None))[1], "copies_denied": f.copies_denied,
             "native": id(f) in native}
            for f in recent
        ]

    def paths_view(self, last: int = 50) -> dict[str, object]:
        out: dict[str, object] = {}
        for peer in self.engine.peers.values():
            routes = self.engine.routes_to(peer) if peer.standard else []
            inactive = [r for r in peer.mirrors.values() if not r.active]
            out[peer.name] = {
                "address": f"{peer.address[0]}:{peer.address[1]}",
                "relay": peer.relay,
                "rx_epoch": peer.rx_epoch,
                "routes": [
                    {"path_id": r.path_id, "channel": r.channel, "via": list(r.relays), "active": r.active,
                     "packets": r.packets, "bytes": r.bytes}
                    for r in [*routes, *inactive]
                ],
                "measured_here": {
                    str(m.path_id): {"packets": m.total_packets, "wins": m.total_wins, "owd_now_us": m.owd_now_us,
                                     "jitter_us": int(m.jitter_us)}
                    for m in (peer.meters.meters.values() if peer.meters else [])
                },
                "feedback": peer.history.as_dict(last),
            }
        return out

    def sessions_view(self) -> dict[str, object]:
        now = self._monotonic()
        sessions = []
        if self.controller is not None:
            for sid, session in self.controller.sessions.items():
                plan = session.plan
                sessions.append({
                    "session_id": sid, "flow": session.request.flow_key, "peer": session.request.dst,
                    "class": session.request.traffic_class, "state": str(session.state),
                    "since_s": round(now - session.state_since, 3), "reason": session.request.reason,
                    "relays": list(plan.overlay_nodes) if plan else [],
                    "lease_left_s": round(session.lease.remaining_s(now), 2),
                })
        return {
            "policy": self.config.adaptive.policy,
            "mirror_sessions": sessions,
            "duplication": {"bytes_original": self.bytes_original, "bytes_extra": self.bytes_extra,
                            "extra_share": round(self.bytes_extra / self.bytes_original, 4)
                            if self.bytes_original else 0.0,
                            "budget_share": self.config.adaptive.duplication_share},
            "mirror_targets": [
                {"target": t.name, "peer": t.peer.name, "state": t.state, "path_id": t.route.path_id,
                 "channel": t.route.channel, "relays": list(t.route.relays),
                 "installs": [{"relay": i.relay.name, "next_hop": f"{i.next_hop[0]}:{i.next_hop[1]}",
                               "lease_left_s": round(max(0.0, i.acked_until - now), 2), "attempts": i.attempts}
                              for i in t.installs]}
                for t in self.targets.values()
            ],
            "relay_vcs": [
                {"sender": self.engine.peers[s].name if s in self.engine.peers else s, "channel": c,
                 "next_hop": f"{v[0][0]}:{v[0][1]}", "lease_left_s": round(v[1] - now, 2), "packets": v[2]}
                for (s, c), v in self.engine.vcs.items()
            ],
        }


def build_controller(config: NodeConfig):  # type: ignore[no-untyped-def]
    """The controller for the configured policy, with the underlay graph from the inventory."""
    from topomirror.analysis.classify import Classifier, ClassifierConfig
    from topomirror.lab.spec import load_lab
    from topomirror.node.controller import Controller, ControllerSettings, Policy
    from topomirror.topology.graph import NetworkGraph
    from topomirror.topology.session import AdaptationPolicy, SessionPolicy

    adaptive = config.adaptive
    graph = None
    if adaptive.inventory is not None:
        graph = NetworkGraph.from_lab_spec(load_lab(adaptive.inventory))
    settings = ControllerSettings(
        policy=Policy(adaptive.policy), probability_threshold=adaptive.probability_threshold,
        degraded_delay_us=adaptive.degraded_delay_us, horizon_ms=adaptive.horizon_ms,
        session_rate_bps=adaptive.session_rate_mbit * 1e6, both_directions=adaptive.both_directions)
    classifier = Classifier(ClassifierConfig.model_validate({"rules": adaptive.classes}))
    hosts = tuple(p.name for p in config.peers if not p.relay)
    sessions = SessionPolicy(adaptation=AdaptationPolicy(teardown_hold_s=adaptive.protect_hold_s))
    return Controller(config.name, settings, graph, classifier, session_policy=sessions, host_peers=hosts)


def run_node(config: NodeConfig, ready_file: Path | None = None) -> None:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but asyncio works too
        runner = asyncio.run  # type: ignore[assignment]
    node = Node(config)
    node.open_io()
    # Everything alive now (modules, the restored model, the config) lives as long as the node: out
    # of the collector's full passes, which otherwise walk it all and stop packets for ~100 ms.
    gc.collect()
    gc.freeze()
    runner(node.run(ready_file))
