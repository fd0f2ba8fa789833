"""The node's views of a large flow table, without sockets: a Node built from a lab's config."""

from __future__ import annotations

import struct

from topomirror.dataplane.packet import flow_bytes
from topomirror.node.daemon import Node


def _udp(sport: int, dport: int) -> bytes:
    head = bytes([0x45, 0, 0, 60, 0, 0, 0, 0, 64, 17, 0, 0, 172, 16, 1, 1, 172, 16, 2, 1])
    return head + struct.pack("!HHHH", sport, dport, 40, 0) + bytes(32)


def test_flows_view_is_the_most_recent_flows_and_explain_falls_back_to_the_live_table(node: Node) -> None:
    for i in range(300):
        packet = _udp(10_000 + i, 9)
        node._new_flow(flow_bytes(packet), packet, float(i))  # type: ignore[arg-type]
    view = node.flows_view(limit=5)
    assert [f["flow"] for f in view] == [f"udp 172.16.1.1:{10_000 + i} -> 172.16.2.1:9"
                                         for i in range(299, 294, -1)]
    assert all(f["peer"] == "h2" and f["class"] == "unknown" for f in view)
    # Flows no policy would mirror leave no stored decision; explain still says what is known.
    [entry] = node.explain("udp 172.16.1.1:10007 ")
    assert entry["kind"] == "live" and "class unknown" in str(entry["reason"])
    assert node.explain("session:99") == []


def test_the_flow_table_expires_in_slices_short_flows_first_and_the_controller_forgets_them(node: Node) -> None:
    assert node.controller is not None
    timers = node.config.timers
    for i in range(3000):  # one-packet flows
        packet = _udp(10_000 + i, 9)
        node._new_flow(flow_bytes(packet), packet, 0.0).packets = 1  # type: ignore[arg-type]
    busy = _udp(9000, 9)
    node._new_flow(flow_bytes(busy), busy, 0.0).packets = 50  # type: ignore[arg-type]
    assert len(node.controller.flows) == 3001
    later = timers.short_flow_idle_s + 1  # short flows are idle, the busy one is not yet
    node.expire_flows(later)
    assert 1 <= 3001 - len(node.flows) <= 1000, "one run looks at a slice of the table, not all of it"
    for _ in range(10):
        node.expire_flows(later)
    assert [str(f.key) for f in node.flows.values()] == ["udp 172.16.1.1:9000 -> 172.16.2.1:9"]
    assert set(node.controller.flows) == {f.flow_id for f in node.flows.values()}, "the controller forgot them too"
    for _ in range(5):
        node.expire_flows(timers.flow_idle_s + 1)
    assert node.flows == {} and node.flows_by_id == {} and node.controller.flows == {}


def test_packets_the_native_loop_sent_for_new_flows_enter_the_table_analysis_and_accounts(node: Node) -> None:
    # Under an adaptive policy the native loop sends a new flow's first packets on the standard
    # path and hands them up already sent: the daemon does everything but the send.
    assert node.controller is not None
    dns, other = _udp(5000, 53), _udp(5001, 9)
    node._sent_packets([(flow_bytes(dns), dns), (flow_bytes(other), other), (flow_bytes(dns), dns)], 1.0)  # type: ignore[list-item]
    first, second = node.flows[flow_bytes(dns)], node.flows[flow_bytes(other)]  # type: ignore[index]
    assert (first.packets, first.bytes, second.packets) == (2, 2 * len(dns), 1)
    assert {first.flow_id, second.flow_id} <= set(node.controller.flows)
    # Only what an extractor reads is queued for analysis (a DNS port; not UDP port 9).
    assert [flow_id for flow_id, _ in node.analysis_queue] == [first.flow_id, first.flow_id]
    assert first.peer is not None and first.peer.standard is not None
    assert (first.peer.standard.packets, first.peer.standard.bytes) == (3, 2 * len(dns) + len(other))
    assert node.bytes_original == 2 * len(dns) + len(other) and node.bytes_extra == 0
    assert node.budget.original_bytes == node.bytes_original


def test_status_counts_the_timer_runs_that_held_the_packet_loop_and_their_cpu_time(node: Node) -> None:
    import asyncio

    from topomirror.node import daemon

    def slow_tick() -> None:  # holds the loop working (long enough that a preemption is a small part)
        deadline = daemon.time.perf_counter() + 10 * daemon.TIMER_SLOW_MS / 1000
        while daemon.time.perf_counter() < deadline:
            pass

    def waiting_tick() -> None:  # holds the loop without working (as when the thread waits for a CPU)
        node._stop.set()  # the last run: then both loops end
        daemon.time.sleep(4 * daemon.TIMER_SLOW_MS / 1000)

    async def both() -> None:
        await asyncio.gather(node._every(0.05, slow_tick), node._every(0.001, waiting_tick))

    asyncio.run(both())
    status = node.status()
    assert status["timer_slow_runs"] == {"slow_tick": 1, "waiting_tick": 1}
    slow_ms, cpu_ms = status["timer_slow_ms"], status["timer_slow_cpu_ms"]
    assert slow_ms["slow_tick"] >= 10 * daemon.TIMER_SLOW_MS  # type: ignore[index]
    assert cpu_ms["slow_tick"] >= 0.3 * slow_ms["slow_tick"]  # type: ignore[index]
    assert slow_ms["waiting_tick"] >= 4 * daemon.TIMER_SLOW_MS  # type: ignore[index]
    assert cpu_ms["waiting_tick"] < 0.3 * slow_ms["waiting_tick"]  # type: ignore[index]
    # Every run is counted with the time it held the loop, slow or not.
    assert status["timer_runs"] == {"slow_tick": 1, "waiting_tick": 1}
    total = status["timer_total_ms"]
    assert total["slow_tick"] >= slow_ms["slow_tick"] - 0.1  # type: ignore[index]


def test_the_adaptive_settings_of_the_config_reach_the_controller(node: Node) -> None:
    from topomirror.node.daemon import build_controller

    assert node.controller is not None
    assert node.controller.session_policy.adaptation.teardown_hold_s == node.config.adaptive.protect_hold_s == 3.0
    assert node.controller.settings.both_directions is True
    adaptive = node.config.adaptive.model_copy(update={"protect_hold_s": 7.5, "both_directions": False,
                                                       "session_rate_mbit": 8.0})
    changed = build_controller(node.config.model_copy(update={"adaptive": adaptive}))
    assert changed.session_policy.adaptation.teardown_hold_s == 7.5
    assert changed.settings.both_directions is False
    assert changed.settings.session_rate_bps == 8e6


def test_a_mirrored_flow_the_native_loop_carries_is_charged_to_both_budgets_and_taken_back_in_time(node: Node) -> None:
    from types import SimpleNamespace

    from topomirror.dataplane.engine import PathRoute
    from topomirror.node.daemon import BATCH
    from topomirror.topology.budget import SessionBudget, TokenBucket

    packet = _udp(7000, 40000)
    raw = flow_bytes(packet)
    entry = node._new_flow(raw, packet, 0.0)  # type: ignore[arg-type]
    assert entry.peer is not None and entry.peer.standard is not None
    entry.mirror = PathRoute(203, 5, ("10.255.0.9", 4789), ("x1",), True)
    entry.bucket = TokenBucket(SessionBudget(1e6, 256 * 1024), 0.0)  # 1 MB/s, 256 kB burst
    need = BATCH * node.tun_mtu
    assert node._copy_headroom(entry.bucket, 0.0)

    class Sent:  # what FastTx hands back for a flow it carried: packets and bytes since the last look
        routes = (entry.peer.standard, entry.mirror)

        def __init__(self, size: int) -> None:
            self.entry, self.size = entry, size

        def take(self) -> tuple[int, int]:
            return 50, self.size

    node.engine.tx = SimpleNamespace(flows={raw: object()})  # type: ignore[assignment]
    node._native_budgeted[raw] = entry  # type: ignore[index]
    budget_before = node.budget.tokens
    node._account([Sent(70_000)], 0.0)
    assert entry.bucket.available(0.0) == 256 * 1024 - 70_000, "the copies were charged to the session"
    assert node.budget.extra_bytes == 70_000 and node.budget.tokens < budget_before
    assert node.bytes_extra == 70_000 and entry.mirror.packets == 50
    node._check_native_budgets(0.0)
    assert raw in node.engine.tx.flows, "both budgets still cover a wake-up"  # type: ignore[union-attr]
    while entry.bucket.available(0.0) >= need:
        node._account([Sent(40_000)], 0.0)
        node._check_native_budgets(0.0)
    # The session's bucket no longer covers a wake-up: the flow is back to per-packet admission,
    # before its bucket could have gone short.
    assert raw not in node.engine.tx.flows and not node._native_budgeted  # type: ignore[union-attr]
    assert entry.bucket.refused_bytes == 0


def test_measurement_messages_are_sealed_and_sent_one_per_turn_of_the_loop(node: Node) -> None:
    import asyncio

    events: list[str] = []

    class Udp:
        def send(self, items: list[tuple[bytes, tuple[str, int]]]) -> list[int]:
            events.extend(f"send {datagram.decode()}" for datagram, _ in items)
            return []

    node.udp = Udp()  # type: ignore[assignment]
    address = ("10.0.0.2", 4789)

    def message(name: str):  # type: ignore[no-untyped-def]
        def make(now: float, now_us: int) -> list[tuple[bytes, tuple[str, int]]]:
            events.append(f"seal {name}")  # sealed when its turn comes: its send time is then
            return [(name.encode(), address), (name.encode(), address)]  # a copy per path
        return make

    async def scenario() -> None:
        node.loop = asyncio.get_running_loop()
        for name in ("feedback-1", "feedback-2", "probe-1"):
            node._send_paced(message(name))
        node.loop.call_soon(lambda: events.append("packet"))  # a packet's reader callback, meanwhile
        for _ in range(10):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert events == ["seal feedback-1", "send feedback-1", "send feedback-1", "packet",
                      "seal feedback-2", "send feedback-2", "send feedback-2",
                      "seal probe-1", "send probe-1", "send probe-1"]
    assert node.timer_runs["_send_paced"] == 3
    assert not node._paced_scheduled


def test_the_flows_view_says_which_flows_the_native_loop_carries(node: Node) -> None:
    # After its first packets (analysis) a flow with nothing per packet left to decide goes to
    # the native send loop; a policy change hands every flow back to Python.
    assert node.engine.tx is not None, "the C extension is built by `make setup`"
    packet = _udp(7100, 9)
    out: list[tuple[bytes, tuple[str, int]]] = []
    for _ in range(3):
        node._tun_packet(packet, 1.0, 1_000_000, out)
    [view] = node.flows_view()
    assert view["native"] is False, "the first packets go through Python for analysis"
    for _ in range(3):
        node._tun_packet(packet, 1.0, 1_000_000, out)
    [view] = node.flows_view()
    assert view["native"] is True and view["packets"] == 6
    node._flows_to_python()
    assert node.flows_view()[0]["native"] is False
