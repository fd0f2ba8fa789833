"""The node's controller, driven with events and a clock: policies, announcements, sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from topomirror.analysis.classify import Classifier, ClassifierConfig
from topomirror.analysis.metadata import Metadata
from topomirror.dataplane.packet import FlowKey
from topomirror.lab.spec import load_lab
from topomirror.node.controller import Controller, ControllerSettings, Policy
from topomirror.topology.graph import NetworkGraph
from topomirror.topology.session import InstallVC, RemoveVC, SessionState, StartDuplication, StopDuplication
from topomirror.wire.messages import PathReport

DIAMOND = Path(__file__).parents[3] / "examples" / "labs" / "diamond-mirror.yaml"
RPC = FlowKey("172.16.3.1", "172.16.1.1", 6, 7000, 40000)
CLASSES = Classifier(ClassifierConfig.model_validate(
    {"rules": [{"name": "rpc", "flow_class": "latency_sensitive", "port": 7000}]}))


def controller(policy: Policy, me: str = "h3") -> Controller:
    graph = NetworkGraph.from_lab_spec(load_lab(DIAMOND))
    return Controller(me, ControllerSettings(policy=policy), graph, CLASSES)


def report(path_id: int, owd_us: int, packets: int = 20, wins: int = 20, lost: int = 0) -> PathReport:
    return PathReport(path_id, packets, packets * 100, lost, 0, wins, packets - wins, owd_us, owd_us, owd_us, 0, 100)


def _run_until_active(ctl: Controller, now: float) -> tuple[list[object], float]:
    actions = ctl.tick(now)
    installs = [a for a in actions if isinstance(a, InstallVC)]
    for install in installs:
        ctl.ack(install.relay, install.channel_id, now + 0.005)
    now += 0.02
    return actions + ctl.tick(now), now


def test_off_never_mirrors_and_always_mirrors_everything() -> None:
    off = controller(Policy.OFF)
    off.new_flow(1, RPC, "h1", 0.0)
    assert off.tick(0.1) == [] and not off.sessions
    always = controller(Policy.ALWAYS)
    always.new_flow(1, FlowKey("172.16.3.1", "172.16.1.1", 17, 5000, 5001), "h1", 0.0)
    actions, _ = _run_until_active(always, 0.1)
    starts = [a for a in actions if isinstance(a, StartDuplication)]
    assert len(starts) == 1 and starts[0].first_hop == "x1"


def test_announced_bulk_transfer_triggers_a_mirror_before_congestion() -> None:
    ctl = controller(Policy.PREDICTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.feedback("h1", [report(0, 100)], 0.1)
    assert ctl.tick(0.1) == [], "healthy path, nothing announced: no mirror"
    # h4 tells us 15 MB are about to go h4 -> h2 over e2 -> core -> e1 (our direction to h1).
    ctl.announcement("h4", (("h4-e2", "h4", "e2"), ("core", "e2", "e1"), ("h2-e1", "e1", "h2")),
                     15_000_000, 4000, 0.2)
    actions, now = _run_until_active(ctl, 0.2)
    starts = [a for a in actions if isinstance(a, StartDuplication)]
    assert starts and starts[0].first_hop == "x1"
    [session] = ctl.sessions.values()
    assert "announced" in session.request.reason and "core" not in session.plan.exclusive_links  # type: ignore[union-attr]
    # The queue builds 60 ms later: the lead time is recorded.
    ctl.feedback("h1", [report(0, 30_000, wins=0), report(ctl._session_path_id(session), 300)], now + 0.06)
    assert ctl.lead_times_ms and ctl.lead_times_ms[0] > 0


def test_the_path_is_judged_once_per_peer_and_tick_however_many_flows_go_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = controller(Policy.PREDICTIVE)
    for flow_id in range(1, 6):  # five RPC connections to h1
        ctl.new_flow(flow_id, RPC._replace(dport=40000 + flow_id), "h1", 0.0)
    ctl.feedback("h1", [report(0, 100)], 0.1)
    looked: list[str] = []
    announced_on_path = ctl.announced_on_path
    monkeypatch.setattr(ctl, "announced_on_path", lambda peer, now: looked.append(peer) or announced_on_path(peer, now))
    assert ctl.tick(0.1) == [] and looked == ["h1"]
    ctl.announcement("h4", (("h4-e2", "h4", "e2"), ("core", "e2", "e1"), ("h2-e1", "e1", "h2")), 15_000_000, 4000, 0.2)
    looked.clear()
    ctl.tick(0.2)
    assert looked == ["h1"]
    # The one answer is every flow's: all five are mirrored.
    assert len([s for s in ctl.sessions.values() if not s.state.terminal]) == 5


def test_reactive_waits_for_degradation_and_ignores_announcements() -> None:
    ctl = controller(Policy.REACTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.announcement("h4", (("core", "e2", "e1"),), 15_000_000, 4000, 0.1)
    assert not [a for a in ctl.tick(0.1) if isinstance(a, InstallVC)]
    ctl.feedback("h1", [report(0, 25_000)], 0.3)
    actions, _ = _run_until_active(ctl, 0.3)
    assert [a for a in actions if isinstance(a, StartDuplication)]


def test_bulk_flows_are_never_mirrored_and_metadata_announces() -> None:
    ctl = controller(Policy.PREDICTIVE, me="h4")
    bulk = FlowKey("172.16.4.1", "172.16.2.1", 6, 8080, 50000)
    ctl.new_flow(7, bulk, "h2", 0.0)
    announces = ctl.flow_metadata(7, Metadata(app_protocol="http", http_status=200, announced_bytes=15_000_000,
                                              announced_by="HTTP response Content-Length"), 0.01)
    assert announces and ("core", "e2", "e1") in announces[0].hops
    assert ctl.flows[7].traffic_class == "bulk"
    assert not [a for a in ctl.tick(0.02) if isinstance(a, InstallVC)]


def test_a_transfer_is_worth_announcing_when_it_would_hold_the_narrowest_link_for_20_ms() -> None:
    def announces(nbytes: int, graph_capacity: bool = True) -> bool:
        ctl = controller(Policy.PREDICTIVE, me="h4")
        if not graph_capacity:
            ctl.graph = NetworkGraph.from_lab_spec(load_lab(DIAMOND).model_copy(update={"links": [
                link.model_copy(update={"bw": None}) for link in load_lab(DIAMOND).links]}))
        ctl.new_flow(7, FlowKey("172.16.4.1", "172.16.2.1", 6, 8080, 50000), "h2", 0.0)
        return bool(ctl.flow_metadata(7, Metadata(app_protocol="http", http_status=200, announced_bytes=nbytes,
                                                  announced_by="HTTP response Content-Length"), 0.01))
    # The core is 30 Mbit/s: 20 ms of it is 75 kB.
    assert announces(100_000) and not announces(50_000)
    assert not announces(100_000, graph_capacity=False), "capacity unknown: only from announce_min_bytes"
    assert announces(600_000, graph_capacity=False)
    ctl = controller(Policy.PREDICTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.announcement("h4", (("core", "e2", "e1"),), 100_000, 230, 0.0)
    actions, _ = _run_until_active(ctl, 0.0)
    assert [a for a in actions if isinstance(a, StartDuplication)]
    assert "100 kB announced on the standard path to h1" in ctl.sessions[1].request.reason


def test_idle_flow_withdraws_its_session() -> None:
    ctl = controller(Policy.ALWAYS)
    ctl.new_flow(1, RPC, "h1", 0.0)
    _, now = _run_until_active(ctl, 0.0)
    assert ctl.sessions
    actions = ctl.tick(now + 5.0)
    assert [a for a in actions if isinstance(a, StopDuplication)]
    # An idle flow keeps its class (a connection pauses and resumes) until the flow table forgets it.
    assert ctl.flows[1].traffic_class == "latency_sensitive" and 1 in ctl.watched
    ctl.forget([1], now + 6.0)
    assert 1 not in ctl.flows and 1 not in ctl.watched


def test_a_relay_acknowledging_the_removal_ends_the_withdrawal_at_once() -> None:
    # (It used to wait out the remove timeout: the ack went to the install handler only, and a
    # flow could not be mirrored again for those 250 ms.)
    ctl = controller(Policy.ALWAYS)
    ctl.new_flow(1, RPC, "h1", 0.0)
    _, now = _run_until_active(ctl, 0.0)
    session_id = ctl.flows[1].session_id
    removals = [a for a in ctl.tick(now + 5.0) if isinstance(a, RemoveVC)]
    assert removals and ctl.sessions[session_id].state is SessionState.WITHDRAWING  # type: ignore[index]
    for removal in removals:
        ctl.ack(removal.relay, removal.channel_id, now + 5.003)
    ended = ctl.sessions.get(session_id)  # type: ignore[arg-type]
    assert ended is None or ended.state is SessionState.WITHDRAWN  # a terminal session is dropped


def test_a_paused_flow_that_resumes_is_protected_again() -> None:
    ctl = controller(Policy.ALWAYS)
    ctl.new_flow(1, RPC, "h1", 0.0)
    _, now = _run_until_active(ctl, 0.0)
    first = ctl.flows[1].session_id
    ctl.tick(now + 5.0)  # idle: its session is withdrawn
    ctl.flow_seen(1, now + 30.0)  # the connection resumes
    ctl.tick(now + 30.0)  # the withdrawal ends (nobody acknowledged it: its timeout passed)
    actions, _ = _run_until_active(ctl, now + 30.02)
    assert [a for a in actions if isinstance(a, StartDuplication)]
    assert ctl.flows[1].session_id not in (None, first)


def test_forgetting_a_flow_with_a_live_session_withdraws_it() -> None:
    ctl = controller(Policy.ALWAYS)
    ctl.new_flow(1, RPC, "h1", 0.0)
    _, now = _run_until_active(ctl, 0.0)
    ctl.forget([1, 99], now)  # 99: never known, ignored
    assert [a for a in ctl.tick(now + 0.02) if isinstance(a, StopDuplication)]
    assert ctl.flows == {}


def test_snapshot_and_restore_resume_protection_and_the_model() -> None:
    ctl = controller(Policy.PREDICTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.feedback("h1", [report(0, 25_000)], 0.1)
    _run_until_active(ctl, 0.1)
    snapshot = ctl.snapshot()
    assert snapshot["sessions"][0]["flow"] == str(RPC)
    fresh = controller(Policy.PREDICTIVE)
    assert fresh.restore(snapshot) == 1
    assert fresh.predictor.labels_learned == ctl.predictor.labels_learned
    fresh.new_flow(1, RPC, "h1", 10.0)
    actions, _ = _run_until_active(fresh, 10.0)
    starts = [a for a in actions if isinstance(a, StartDuplication)]
    assert starts, "the flow is protected again right after the restart"
    [session] = fresh.sessions.values()
    assert "resumed after a node restart" in session.request.reason


class _ConfidentPredictor:
    """A stand-in predictor: always forecasts congestion with p=0.9 (the decision logic is under test)."""

    labels_learned = 0

    def observe(self, sample):  # type: ignore[no-untyped-def]
        from topomirror.analysis.predict import PathForecast

        return PathForecast(sample.path_id, sample.time_ms, 100.0, 0.9, "model")


def test_a_warm_forecast_above_threshold_opens_a_session_with_the_reason() -> None:
    graph = NetworkGraph.from_lab_spec(load_lab(DIAMOND))
    ctl = Controller("h3", ControllerSettings(policy=Policy.PREDICTIVE), graph, CLASSES,
                     predictor=_ConfidentPredictor())  # type: ignore[arg-type]
    ctl.new_flow(1, RPC, "h1", 0.0)
    for step in range(ctl.settings.warmup_reports - 1):
        ctl.feedback("h1", [report(0, 100)], step * 0.1)
        ctl.flow_seen(1, step * 0.1)
    assert not [a for a in ctl.tick(3.0) if isinstance(a, InstallVC)], "not before the predictor is warm"
    ctl.feedback("h1", [report(0, 100)], 3.0)
    ctl.flow_seen(1, 3.0)
    actions, _ = _run_until_active(ctl, 3.0)
    assert [a for a in actions if isinstance(a, StartDuplication)]
    [session] = ctl.sessions.values()
    assert "congests within 100 ms with p=0.90 (model)" in session.request.reason


def test_tick_watches_only_flows_the_policy_might_mirror_and_the_flow_table_forgets_the_rest() -> None:
    ctl = controller(Policy.PREDICTIVE)
    for flow_id in range(1, 1001):  # unknown class: no policy check can say yes
        ctl.new_flow(flow_id, FlowKey("172.16.3.1", "172.16.1.1", 17, 1024 + flow_id, 20000), "h1", 0.0)
    ctl.new_flow(5000, RPC, "h1", 0.0)
    assert set(ctl.watched) == {5000}
    assert [i.flow_id for i in ctl.flows_read_at()] == [5000], "a tick reads only the watched flow"
    ctl.tick(0.0)
    # Metadata that makes a flow latency-sensitive puts it under watch.
    ctl.flow_metadata(7, Metadata(app_protocol="dns", dns_qname="example.org"), 0.5)
    assert set(ctl.watched) == {5000, 7}
    ctl.tick(10.0)
    assert len(ctl.flows) == 1001, "idle flows stay until the owner of the flow table forgets them"
    ctl.forget(range(1, 1001), 10.0)
    assert set(ctl.flows) == {5000} and set(ctl.watched) == {5000}


def test_might_mirror_follows_the_policy() -> None:
    udp = FlowKey("172.16.3.1", "172.16.1.1", 17, 5000, 5001)
    for policy, expected in ((Policy.OFF, set()), (Policy.ALWAYS, {1, 2}), (Policy.REACTIVE, {2}),
                             (Policy.PREDICTIVE, {2})):
        ctl = controller(policy)
        ctl.new_flow(1, udp, "h1", 0.0)
        ctl.new_flow(2, RPC, "h1", 0.0)
        assert set(ctl.watched) == expected, policy


def test_only_flows_a_policy_might_mirror_become_stored_new_flow_decisions() -> None:
    ctl = controller(Policy.PREDICTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)  # latency-sensitive by rule: watched, its decision is stored
    for port in range(2000, 2100):  # one-packet flows nobody would mirror: counted, not stored
        ctl.new_flow(port, FlowKey("172.16.3.1", "172.16.1.1", 17, port, 9), "h1", 0.0)
    decisions = [d for d in ctl.take_decisions() if d.kind == "new_flow"]
    assert [d.subject for d in decisions] == [f"flow:{RPC}"]
    assert ctl.unwatched_new_flows == 100
    always = controller(Policy.ALWAYS)  # under `always` every flow might be mirrored
    always.new_flow(7, FlowKey("172.16.3.1", "172.16.1.1", 17, 5, 9), "h1", 0.0)
    assert [d.kind for d in always.take_decisions()] == ["new_flow"]


def test_a_standard_path_that_stops_reporting_while_we_send_is_degraded() -> None:
    ctl = controller(Policy.REACTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.flow_seen(1, 1.0)
    ctl.feedback("h1", [report(0, 100)], 1.0)  # healthy
    ctl.sending("h1", 1.0)
    assert not [a for a in ctl.tick(1.0) if isinstance(a, InstallVC)]
    ctl.sending("h1", 1.2)  # still sending, 200 ms without a report: not yet
    ctl.flow_seen(1, 1.2)
    assert not [a for a in ctl.tick(1.2) if isinstance(a, InstallVC)]
    ctl.sending("h1", 1.3)  # 300 ms: the path delivers nothing
    ctl.flow_seen(1, 1.3)
    actions, now = _run_until_active(ctl, 1.3)
    assert [a for a in actions if isinstance(a, StartDuplication)]
    [session] = ctl.sessions.values()
    assert "silent" in session.request.reason
    assert any(d.kind == "path_silent" for d in ctl.take_decisions())
    # Reports again (the link is back, healthy): no longer silent or degraded.
    ctl.feedback("h1", [report(0, 100)], now)
    assert ctl.paths["h1"].silent_since is None and ctl.paths["h1"].degraded_since is None


def test_a_peer_that_talked_every_20_ms_and_stops_makes_the_path_silent_within_100_ms() -> None:
    ctl = controller(Policy.REACTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.feedback("h1", [report(0, 100)], 0.9)  # the last report, 80 ms before the link goes down
    for step in range(50):  # its responses: 8 in each 20 ms tick (400/s)
        t = 0.02 * step
        ctl.heard("h1", t, 8)
        ctl.sending("h1", t)
    assert abs(ctl.paths["h1"].heard_gap - 0.0025) < 0.0005
    t = 0.98  # the link goes down: we keep sending, nothing comes back
    while not (actions := ctl.tick(t)) or not [a for a in actions if isinstance(a, InstallVC)]:
        t = round(t + 0.02, 2)
        ctl.sending("h1", t)
        ctl.flow_seen(1, t)
        assert t <= 1.06, "not silent 80 ms after the peer fell quiet"
    assert t - 0.98 >= 0.06, "a gap shorter than quick_silence_s is not yet silence"
    # The path is down: duplication starts in the same tick, behind the installs, not after the acks.
    assert isinstance(actions[-1], StartDuplication) and ctl.sessions[1].request.urgent
    [decision] = [d for d in ctl.take_decisions() if d.kind == "path_silent"]
    assert "nothing from h1 on its standard path" in decision.reason
    # What went out since a little before we last heard from h1 is what to send again.
    assert ctl.lost_since("h1", t) == 0.98 - 0.05
    assert ctl.lost_since("h2", t) is None
    # A peer heard only now and then (probes, feedback) falls back to the report rule (200 ms).
    quiet = controller(Policy.REACTIVE)
    quiet.new_flow(1, RPC, "h1", 0.0)
    quiet.feedback("h1", [report(0, 100)], 1.0)
    for step in range(10):
        quiet.heard("h1", 0.1 * step)
    quiet.sending("h1", 1.15)
    quiet.flow_seen(1, 1.15)
    assert not [a for a in quiet.tick(1.15) if isinstance(a, InstallVC)]
    assert not quiet.paths["h1"].silent_since


def test_a_peer_that_says_the_path_fell_silent_is_believed_and_not_told_back() -> None:
    ctl = controller(Policy.REACTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.feedback("h1", [report(0, 100)], 1.0)
    ctl.flow_seen(1, 1.0)
    ctl.peer_says_silent("h1", 1.01)
    actions, _ = _run_until_active(ctl, 1.01)
    assert [a for a in actions if isinstance(a, StartDuplication)]
    assert "h1 says the standard path between us fell silent" in ctl.sessions[1].request.reason
    assert ctl.take_tell("h1") is False
    # Found silent here: the daemon is to tell the peer (once).
    other = controller(Policy.REACTIVE)
    other.feedback("h1", [report(0, 100)], 0.0)
    other.sending("h1", 0.01)
    other.sending("h1", 0.3)
    other.tick(0.3)
    assert other.take_tell("h1") is True and other.take_tell("h1") is False


def test_a_path_is_not_silent_the_moment_it_starts_sending_but_is_if_it_never_reports() -> None:
    ctl = controller(Policy.REACTIVE)
    ctl.new_flow(1, RPC, "h1", 100.0)
    ctl.sending("h1", 100.0)
    ctl.tick(100.0)
    assert ctl.paths["h1"].silent_since is None
    ctl.sending("h1", 100.3)
    ctl.flow_seen(1, 100.3)
    ctl.tick(100.3)
    assert ctl.paths["h1"].silent_since == 100.3, "300 ms of sending without a first report"


def test_an_idle_sender_is_not_silent_and_always_never_tears_down() -> None:
    ctl = controller(Policy.REACTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    ctl.feedback("h1", [report(0, 100)], 0.0)
    ctl.sending("h1", 0.0)  # sent nothing since the last report
    ctl.flow_seen(1, 5.0)
    assert not [a for a in ctl.tick(5.0) if isinstance(a, InstallVC)]
    always = controller(Policy.ALWAYS)
    always.new_flow(1, RPC, "h1", 0.0)
    _, now = _run_until_active(always, 0.0)
    [session] = always.sessions.values()
    mirror = always._session_path_id(session)
    for step in range(40):  # standard healthy, mirror never first: `reactive` would tear down
        t = now + 0.1 * step
        always.flow_seen(1, t)
        always.feedback("h1", [report(0, 100), report(mirror, 400, wins=0)], t)
        assert not [a for a in always.tick(t) if isinstance(a, StopDuplication)]


def test_a_new_announcement_after_a_teardown_protects_again_at_once() -> None:
    ctl = controller(Policy.PREDICTIVE)
    ctl.new_flow(1, RPC, "h1", 0.0)
    hops = (("h4-e2", "h4", "e2"), ("core", "e2", "e1"), ("h2-e1", "e1", "h2"))
    ctl.announcement("h4", hops, 15_000_000, 1000, 0.0)  # over in a second
    _, now = _run_until_active(ctl, 0.0)
    [session] = ctl.sessions.values()
    mirror = ctl._session_path_id(session)
    t = now
    while ctl.sessions and t < now + 10:  # healthy standard path, mirror never first: torn down
        t += 0.1
        ctl.flow_seen(1, t)
        ctl.feedback("h1", [report(0, 100), report(mirror, 400, wins=0)], t)
        ctl.tick(t)
    assert not [s for s in ctl.sessions.values() if not s.state.terminal]
    assert ctl.flows[1].rearm_after > t + 1, "inside the no-flap pause"
    ctl.flow_seen(1, t + 0.1)
    assert not [a for a in ctl.tick(t + 0.1) if isinstance(a, InstallVC)], "nothing new: wait"
    ctl.announcement("h4", hops, 12_000_000, 1000, t + 0.2)  # a new transfer: not a flicker
    ctl.flow_seen(1, t + 0.2)
    assert [a for a in ctl.tick(t + 0.2) if isinstance(a, InstallVC)]


def test_a_session_covers_both_directions_of_a_connection_and_ends_with_the_one_that_needed_it() -> None:
    # h3 mirrors its answers (an announced transfer crosses its direction); it asks h1 to mirror
    # the requests of the same connection, which h1 keeps while h3 asks, and not a moment longer.
    h3 = controller(Policy.PREDICTIVE, me="h3")
    h3.new_flow(1, RPC, "h1", 0.0)
    h3.announcement("h4", (("h4-e2", "h4", "e2"), ("core", "e2", "e1"), ("h2-e1", "e1", "h2")), 15_000_000, 4000, 0.2)
    _, now = _run_until_active(h3, 0.2)
    request_direction = "tcp 172.16.1.1:40000 -> 172.16.3.1:7000"
    assert h3.protected_directions(now) == [("h1", request_direction)]
    # Configured off (adaptive.both_directions: false), the same session asks nothing.
    one_way = Controller("h3", ControllerSettings(policy=Policy.PREDICTIVE, both_directions=False), h3.graph, CLASSES)
    one_way.new_flow(1, RPC, "h1", 0.0)
    one_way.announcement("h4", (("h4-e2", "h4", "e2"), ("core", "e2", "e1"), ("h2-e1", "e1", "h2")), 15_000_000,
                         4000, 0.2)
    _, later = _run_until_active(one_way, 0.2)
    assert [s.state for s in one_way.sessions.values()] == [SessionState.ACTIVE]
    assert one_way.protected_directions(later) == []

    h1 = controller(Policy.PREDICTIVE, me="h1")
    h1.new_flow(1, FlowKey("172.16.1.1", "172.16.3.1", 6, 40000, 7000), "h3", 0.0)
    h1.feedback("h3", [report(0, 100)], 0.1)
    assert not [a for a in h1.tick(0.1) if isinstance(a, InstallVC)], "its own direction is healthy"
    h1.peer_protects("h3", request_direction, now + 1.5, now)
    actions, t = _run_until_active(h1, now)
    [start] = [a for a in actions if isinstance(a, StartDuplication)]
    # The session's bucket: 50 Mbit/s is 6.25 MB/s of copies (bits are not bytes).
    assert start.rate_bytes_per_s == h1.settings.session_rate_bps / 8 == 6.25e6
    [session] = h1.sessions.values()
    assert "h3 mirrors the other direction" in session.request.reason
    assert h1.protected_directions(t) == [], "a session kept for the peer asks nothing back"
    # h1's own direction stays healthy and its mirror never wins: no teardown while h3 asks ...
    path_id = h1._session_path_id(session)
    while t < now + 10:
        h1.peer_protects("h3", request_direction, t + 1.5, t)  # h3 renews every 0.5 s
        h1.flow_seen(1, t)  # the requests keep coming
        h1.feedback("h3", [report(0, 100), report(path_id, 300, wins=0)], t)
        h1.tick(t)
        t += 0.5
    assert [s.state for s in h1.sessions.values()] == [SessionState.ACTIVE]
    # ... and once h3 stops asking, h1's session ends by itself.
    for _ in range(20):
        h1.flow_seen(1, t)
        h1.feedback("h3", [report(0, 100), report(path_id, 300, wins=0)], t)
        h1.tick(t)
        t += 0.5
    assert not h1.sessions or all(s.state in (SessionState.WITHDRAWING, SessionState.WITHDRAWN)
                                  for s in h1.sessions.values())
    # Other policies neither ask nor listen.
    reactive = controller(Policy.REACTIVE, me="h1")
    reactive.new_flow(1, FlowKey("172.16.1.1", "172.16.3.1", 6, 40000, 7000), "h3", 0.0)
    reactive.peer_protects("h3", request_direction, 5.0, 0.0)
    assert not [a for a in reactive.tick(0.1) if isinstance(a, InstallVC)]
