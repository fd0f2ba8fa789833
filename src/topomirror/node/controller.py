"""The node's brain: flows in, mirror sessions out. Pure: events and `now` in, actions out.

Policies are configurations of this one controller (no separate code paths that could drift):

- `static`: the numbered `Filter` rules of the config decide per flow (the data plane's default);
- `off`: never mirror (what a plain overlay gives);
- `always`: mirror every flow for as long as it lives (what engarde does);
- `reactive`: mirror the protected flows once feedback shows their standard path degraded, with no
  prediction and no metadata (what SD-WAN SLA-triggered duplication does);
- `predictive`: mirror latency-sensitive flows (known from metadata and class rules) when the
  predictor says their standard path congests within the horizon, using announced bulk transfers
  from this and other nodes; degraded paths are mirrored too (prediction can miss).

Sessions come from `topomirror.topology`: the planner picks relays whose paths avoid the standard
path's links, the session installs virtual connections, duplicates, adapts and withdraws.
"""

from __future__ import annotations

import enum
import itertools
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from topomirror.analysis.classify import Classifier, format_bytes
from topomirror.analysis.decide import DecisionConfig, FlowSummary, decide
from topomirror.analysis.features import PathTelemetry
from topomirror.analysis.metadata import Metadata
from topomirror.analysis.predict import CongestionPredictor, PathForecast, PredictorConfig
from topomirror.dataplane.packet import FlowKey
from topomirror.topology.budget import SessionBudget
from topomirror.topology.graph import NetworkGraph, Segment
from topomirror.topology.paths import MirrorPlan, NoPlan, plan_mirror, plan_reroute
from topomirror.topology.request import MirrorRequest
from topomirror.topology.session import (
    Action,
    ChannelAllocator,
    MirrorSession,
    SessionFeedback,
    SessionPolicy,
    SessionState,
    Verdict,
)
from topomirror.wire.messages import PathReport


class Policy(enum.StrEnum):
    STATIC = "static"
    OFF = "off"
    ALWAYS = "always"
    REACTIVE = "reactive"
    PREDICTIVE = "predictive"


@dataclass(frozen=True)
class ControllerSettings:
    policy: Policy = Policy.PREDICTIVE
    probability_threshold: float = 0.5
    degraded_delay_us: float = 2000.0  # the congestion threshold: 2 ms of queueing
    degraded_loss: float = 0.01
    announce_min_bytes: int = 500_000  # a transfer this big is worth telling the neighbours about ...
    # ... and, where the path's narrowest link has a known capacity, one that would hold it for this
    # long (a queue the latency-sensitive flows would feel: 75 kB on 30 Mbit/s).
    announce_min_ms: float = 20.0
    announce_rate_bps: float = 100e6  # to turn announced bytes into an expected duration
    flow_idle_s: float = 2.0  # withdraw a flow's session after this long without packets
    session_rate_bps: float = 50e6  # token bucket on each session's mirror copy
    session_burst_bytes: int = 256 * 1024
    horizon_ms: float = 100.0
    warmup_reports: int = 30  # the predictor's forecasts count once it has seen this many reports
    # No FEEDBACK about the standard path for this long while sending on it: it is down. Reports
    # come about every 100 ms, so this is two missed reports and a half.
    silence_s: float = 0.2
    # Faster, where the peer talks back: when packets from the peer on its standard path (to us:
    # in a lab and in most networks the same links) arrived every few ms and then none for about
    # four of those gaps, at least this long, while we kept sending, the path is down.
    quick_silence_s: float = 0.06
    # A session asks the peer to mirror the other direction of its connection (CONTROL protect).
    both_directions: bool = True


@dataclass(slots=True)
class FlowInfo:
    flow_id: int
    key: FlowKey
    peer: str
    traffic_class: str = "unknown"
    class_reason: str = "no metadata yet"
    metadata: Metadata | None = None
    last_seen: float = 0.0
    session_id: int | None = None
    rearm_after: float = 0.0  # no new session before this (no flapping across sessions) ...
    torn_down_at: float = 0.0  # ... unless evidence newer than the last teardown says so
    restored_reason: str | None = None  # protected before a restart: protect again at once


@dataclass(frozen=True)
class Announce:
    """Tell `peers` that `bytes` will cross `hops` (directed (link, from, to)) until `until`."""

    peers: tuple[str, ...]
    hops: tuple[tuple[str, str, str], ...]
    bytes: int
    duration_ms: int
    reason: str


@dataclass(frozen=True)
class Decision:
    subject: str
    kind: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PeerPath:
    """What the controller knows about the standard path to one peer."""

    peer: str
    last_report: PathReport | None = None
    last_report_at: float = 0.0
    forecast: PathForecast | None = None
    degraded_since: float | None = None
    history: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=600))
    last_sent: float = 0.0  # when this node last sent on the standard path (the daemon says)
    silent_since: float | None = None  # sending, yet no report about the path: it delivers nothing
    silent_why: str = ""
    tell_peer: bool = False  # found silent here: the peer is to be told (once, see take_tell)
    first_sent: float = 0.0  # when this node first sent on the path (silence counts from here)
    heard_at: float = 0.0  # when a packet from the peer on its standard path last arrived (the daemon says)
    heard_gap: float = 0.1  # smoothed time between such arrivals


class Controller:
    def __init__(self, me: str, settings: ControllerSettings, graph: NetworkGraph | None,
                 classifier: Classifier | None = None, predictor: CongestionPredictor | None = None,
                 session_policy: SessionPolicy | None = None, host_peers: tuple[str, ...] = ()) -> None:
        self.me = me
        self.host_peers = host_peers  # who hears our announcements (default: peers we know paths to)
        self.settings = settings
        self.graph = graph
        self.classifier = classifier or Classifier()
        self.predictor = predictor or CongestionPredictor(PredictorConfig(
            horizon_ms=settings.horizon_ms, threshold_ms=settings.degraded_delay_us / 1000))
        self.session_policy = session_policy or SessionPolicy()
        if settings.policy is Policy.ALWAYS:
            # `always` duplicates every packet for the flow's whole life: never "not winning".
            self.session_policy = replace(self.session_policy, adaptation=replace(
                self.session_policy.adaptation, losing_win_share=-1.0))
        self.channels = ChannelAllocator(first=100)  # 1..99 are left to static targets
        self.flows: dict[int, FlowInfo] = {}
        # The flows `tick` looks at: those the policy might mirror and those with a session. The
        # others wait for metadata or for the owner of the flow table to `forget` them: at
        # thousands of new flows/s, looking at each of them every tick is most of a node's CPU.
        self.watched: dict[int, FlowInfo] = {}
        self.sessions: dict[int, MirrorSession] = {}
        self.session_flow: dict[int, int] = {}
        self.paths: dict[str, PeerPath] = {}
        # (link, from, to) -> [(until, bytes, source node, announced at)]
        self.announced: dict[tuple[str, str, str], list[tuple[float, int, str, float]]] = {}
        self.decisions: list[Decision] = []
        self._session_ids = itertools.count(1)
        self.lead_times_ms: list[float] = []
        # Connections whose other direction a peer mirrors: our flow's name -> (peer, until). A
        # session covers both directions: a failure then finds the requests on two paths too.
        self.peer_protected: dict[str, tuple[str, float]] = {}
        self._pending_onset: dict[str, float] = {}  # peer -> time a session opened on a healthy path
        self._queued: list[Action] = []
        self.sessions_opened = 0
        self.restored: dict[str, dict[str, Any]] = {}
        self.unwatched_new_flows = 0

    # -- events ---------------------------------------------------------------------------
    def _decide(self, subject: str, kind: str, reason: str, **detail: Any) -> None:
        self.decisions.append(Decision(subject, kind, reason, detail))

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What must survive a restart: the protected flows and the learned model."""
        import base64
        import pickle

        live = []
        for session in self.sessions.values():
            if not session.state.terminal:
                live.append({"flow": session.request.flow_key, "peer": session.request.dst,
                             "class": session.request.traffic_class, "reason": session.request.reason})
        return {"sessions": live, "sessions_opened": self.sessions_opened,
                "predictor": base64.b64encode(pickle.dumps(self.predictor)).decode()}

    def restore(self, snapshot: dict[str, Any]) -> int:
        """Load a snapshot taken before a restart; returns how many sessions will be resumed."""
        import base64
        import pickle

        if snapshot.get("predictor"):
            # Our own file, written by this node (the state folder is root's): trusted input.
            self.predictor = pickle.loads(base64.b64decode(snapshot["predictor"]))  # noqa: S301
        self.restored = {entry["flow"]: entry for entry in snapshot.get("sessions", [])}
        self.sessions_opened = int(snapshot.get("sessions_opened", 0))
        return len(self.restored)

    def new_flow(self, flow_id: int, key: FlowKey, peer: str, now: float) -> None:
        # The per-new-flow path of the node: thousands a second, so no formatting and no parsing here.
        classification = self.classifier.classify_key(key)
        info = FlowInfo(flow_id, key, peer, classification.flow_class, classification.reason, last_seen=now)
        if self.restored:
            previous = self.restored.pop(str(key), None)
            if previous is not None:
                info.restored_reason = f"resumed after a node restart (was: {previous['reason']})"
        self.flows[flow_id] = info
        self._rewatch(info)
        if peer not in self.paths:
            self.paths[peer] = PeerPath(peer)
        if flow_id in self.watched:
            self._decide(f"flow:{key}", "new_flow", f"class {info.traffic_class}: {info.class_reason}",
                         peer=peer, policy=str(self.settings.policy))
        else:
            # A flow no policy would mirror is a counted rate, not a stored decision: at thousands
            # of new flows/s one row each would be most of the database. `flows` shows it live.
            self.unwatched_new_flows += 1

    def forget(self, flow_ids: Iterable[int], now: float) -> None:
        """The owner of the flow table expired these flows: drop them (and end a session one has)."""
        for flow_id in flow_ids:
            info = self.flows.pop(flow_id, None)
            if info is None:
                continue
            self.watched.pop(flow_id, None)
            if info.session_id is not None and info.session_id in self.sessions:
                self._withdraw(info.session_id, "flow expired", now)

    def flow_seen(self, flow_id: int, now: float) -> None:
        info = self.flows.get(flow_id)
        if info is not None:
            info.last_seen = now

    def flow_metadata(self, flow_id: int, metadata: Metadata, now: float) -> list[Announce]:
        """Metadata of a flow's first payload: refine its class; announce bulk transfers."""
        info = self.flows.get(flow_id)
        if info is None:
            return []
        info.metadata = metadata
        if self.settings.policy is Policy.PREDICTIVE:
            classification = self.classifier.classify(metadata, info.key)
            info.traffic_class, info.class_reason = str(classification.flow_class), classification.reason
            self._rewatch(info)
            self._decide(f"flow:{info.key}", "classified", f"class {info.traffic_class}: {info.class_reason}")
        announced = metadata.announced_bytes or 0
        if not announced or self.graph is None:
            return []
        segment = self.graph.segment(self.me, info.peer)
        if segment is None or announced < self.worth_announcing(segment):
            return []
        hops = tuple((link, a, b) for link, a, b in zip(segment.links, segment.nodes, segment.nodes[1:], strict=False))
        rate = min(self.settings.announce_rate_bps, segment.capacity_bps or self.settings.announce_rate_bps)
        duration_ms = int(1000 * announced * 8 / rate) + 200
        reason = (f"{metadata.announced_by or 'metadata'} announces {format_bytes(announced)} from {self.me} to "
                  f"{info.peer} over {', '.join(segment.links)}")
        # Recorded under every policy (it is telemetry); acted on and shared only by `predictive`.
        self._decide(f"flow:{info.key}", "announce", reason, bytes=announced, links=list(segment.links))
        if self.settings.policy is not Policy.PREDICTIVE:
            return []
        self.announcement(self.me, hops, announced, duration_ms, now)
        peers = tuple(sorted(p for p in self._host_peers() if p != info.peer)) + (info.peer,)
        return [Announce(peers, hops, announced, duration_ms, reason)]

    def protected_directions(self, now: float) -> list[tuple[str, str]]:
        """(peer, name of the other direction of the flow) for every active session: what this
        node asks its peers to mirror too while the session lives (`peer_protects` there)."""
        out: list[tuple[str, str]] = []
        if self.settings.policy is not Policy.PREDICTIVE or not self.settings.both_directions:
            return out
        for session_id, session in self.sessions.items():
            info = self.flows.get(self.session_flow.get(session_id, -1))
            # A session kept only because the peer protects the other direction asks nothing back
            # (or the two would keep each other up for ever).
            if info is not None and session.state is SessionState.ACTIVE and not self._peer_protection(info, now):
                out.append((info.peer, str(info.key.reversed())))
        return out

    def _peer_protection(self, info: FlowInfo, now: float) -> bool:
        protected = self.peer_protected.get(str(info.key))
        return protected is not None and protected[0] == info.peer and protected[1] > now

    def _kept_for_peer(self, session_id: int, now: float) -> bool:
        info = self.flows.get(self.session_flow.get(session_id, -1))
        return info is not None and self.settings.policy is Policy.PREDICTIVE and self._peer_protection(info, now)

    def peer_protects(self, peer: str, flow: str, until: float, now: float) -> None:
        """`peer` mirrors the other direction of our flow named `flow` until `until` (renewed
        while its session lives): under the predictive policy, mirror this direction too."""
        self.peer_protected[flow] = (peer, until)
        if len(self.peer_protected) > 4096:  # expired entries go when the table grows
            for name in [n for n, (_, u) in self.peer_protected.items() if u <= now]:
                del self.peer_protected[name]

    def announcement(self, source: str, hops: tuple[tuple[str, str, str], ...], nbytes: int, duration_ms: int,
                     now: float) -> None:
        until = now + duration_ms / 1000
        for hop in hops:
            entries = [e for e in self.announced.get(tuple(hop), []) if e[0] > now]  # type: ignore[arg-type]
            entries.append((until, nbytes, source, now))
            self.announced[tuple(hop)] = entries  # type: ignore[index]

    def _host_peers(self) -> list[str]:
        return list(self.host_peers) if self.host_peers else list(self.paths)

    def worth_announcing(self, segment: Segment | None) -> int:
        """The bytes from which a transfer over `segment` is worth telling about: as many as hold
        its narrowest link for `announce_min_ms`, at most `announce_min_bytes`."""
        capacity = segment.capacity_bps if segment is not None else None
        if not capacity:
            return self.settings.announce_min_bytes
        return min(self.settings.announce_min_bytes, int(capacity / 8 * self.settings.announce_min_ms / 1000))

    def announced_on_path(self, peer: str, now: float) -> int:
        if self.graph is None:
            return 0
        segment = self.graph.segment(self.me, peer)
        if segment is None:
            return 0
        total = 0
        for link, a, b in zip(segment.links, segment.nodes, segment.nodes[1:], strict=False):
            total = max(total, sum(n for until, n, *_ in self.announced.get((link, a, b), []) if until > now))
        return total

    def newest_announcement_on_path(self, peer: str, now: float) -> float | None:
        """When the most recent still-running announcement on the standard path to `peer` came."""
        segment = self.graph.segment(self.me, peer) if self.graph is not None else None
        if segment is None:
            return None
        times = [at for link, a, b in zip(segment.links, segment.nodes, segment.nodes[1:], strict=False)
                 for until, _, _, at in self.announced.get((link, a, b), []) if until > now]
        return max(times, default=None)

    def _new_evidence(self, info: FlowInfo, now: float) -> bool:
        """Something happened since the flow's last teardown that the teardown did not know: the
        path went silent, or a transfer was announced on it. The cross-session no-flap pause is
        for the same evidence flickering, not for a new event."""
        path = self.paths.get(info.peer)
        if path is not None and path.silent_since is not None and path.silent_since > info.torn_down_at:
            return True
        if self.settings.policy is Policy.PREDICTIVE:
            newest = self.newest_announcement_on_path(info.peer, now)
            return newest is not None and newest > info.torn_down_at
        return False

    def feedback(self, peer: str, reports: list[PathReport], now: float) -> None:
        """FEEDBACK about our paths to `peer`: predictor step on the standard path; sessions observe."""
        path = self.paths.setdefault(peer, PeerPath(peer))
        standard = next((r for r in reports if r.path_id == 0), None)
        if standard is not None:
            path.last_report, path.last_report_at = standard, now
            path.silent_since = None
            sent = standard.packets + standard.lost
            loss = standard.lost / sent if sent else 0.0
            degraded = standard.owd_avg_us >= self.settings.degraded_delay_us or loss >= self.settings.degraded_loss
            if degraded and path.degraded_since is None:
                path.degraded_since = now
                onset = self._pending_onset.pop(peer, None)
                if onset is not None:
                    self.lead_times_ms.append((now - onset) * 1000)
            elif not degraded:
                path.degraded_since = None
            capacity = None
            if self.graph is not None:
                segment = self.graph.segment(self.me, peer)
                capacity = segment.capacity_bps if segment else None
            announced = self.announced_on_path(peer, now)
            sample = PathTelemetry(
                path_id=peer, time_ms=now * 1000, queue_delay_ms=standard.owd_avg_us / 1000, loss_rate=loss,
                utilisation=None, capacity_bps=capacity, announced_pending_bytes=announced)
            path.forecast = self.predictor.observe(sample)
            path.history.append((now, standard.owd_avg_us, path.forecast.probability))
        for session_id, session in list(self.sessions.items()):
            if session.state is not SessionState.ACTIVE or session.request.dst != peer:
                continue
            mirror = next((r for r in reports if r.path_id == self._session_path_id(session)), None)
            if standard is None or mirror is None:
                continue
            transition = session.observe(SessionFeedback.from_reports(standard, mirror), now)
            if transition.verdict is Verdict.TEARDOWN and self._kept_for_peer(session_id, now):
                continue  # this direction is fine, but the peer mirrors the other: keep the connection whole
            self._apply(session_id, transition, now)

    def _session_path_id(self, session: MirrorSession) -> int:
        plan = session.plan
        return self.path_id_for(plan.overlay_nodes if plan is not None else ())

    @staticmethod
    def path_id_for(relays: tuple[str, ...]) -> int:
        """Mirror paths are measured per relay sequence (not per session): a small id, stable across
        restarts (crc32, not Python's per-process salted hash). 1-99 are left to static targets."""
        return 100 + zlib.crc32(">".join(relays).encode()) % 150 if relays else 0

    def ack(self, relay: str, channel: int, now: float) -> None:
        """A relay acknowledged an install or a removal of `channel` (the ack does not say which:
        a session withdrawing waits for removals, one installing for installs)."""
        for session_id, session in list(self.sessions.items()):
            if session.state is SessionState.WITHDRAWING:
                self._apply(session_id, session.ack_remove(relay, channel, now), now)
            else:
                self._apply(session_id, session.ack_install(relay, channel, now), now)

    def nack(self, relay: str, channel: int, detail: str, now: float) -> None:
        for session_id, session in list(self.sessions.items()):
            self._apply(session_id, session.nack_install(relay, channel, detail, now), now)

    def graph_changed(self, now: float) -> None:
        """A relay or link went down or up: re-plan what no longer works."""
        for session_id, session in list(self.sessions.items()):
            if session.state in (SessionState.ACTIVE, SessionState.INSTALLING) and session.plan is not None:
                from topomirror.topology.paths import plan_problem

                assert self.graph is not None
                problem = plan_problem(session.plan, self.graph, self._forecast_links(now), now=now)
                if problem:
                    result = plan_mirror(session.request, self.graph, self._forecast_links(now), now=now,
                                         avoid_relays=tuple(r for r in session.plan.overlay_nodes
                                                            if not self._relay_alive(r)))
                    self._apply(session_id, session.replan(result, now), now)
                    self._decide(f"session:{session_id}", "replan", problem)

    def _relay_alive(self, relay: str) -> bool:
        assert self.graph is not None
        return relay in self.graph.relays()

    # -- the periodic decision ------------------------------------------------------------
    def _forecast_links(self, now: float) -> dict[str, float]:
        forecast: dict[str, float] = {}
        if self.graph is None:
            return forecast
        for peer, path in self.paths.items():
            probability = path.forecast.probability if path.forecast else 0.0
            if path.degraded_since is not None:
                probability = 1.0
            segment = self.graph.segment(self.me, peer)
            if segment is None:
                continue
            # A path-level forecast cannot say which link will congest. The two access links are
            # crossed by every path, so they are left out: the mirror avoids the shared middle.
            for link in segment.links[1:-1]:
                forecast[link] = max(forecast.get(link, 0.0), probability)
        for (link, a, b), entries in self.announced.items():
            if a == self.me or b == self.me:
                continue  # our own access link: no path avoids it
            if any(until > now for until, *_ in entries):
                forecast[link] = max(forecast.get(link, 0.0), 0.9)
        return forecast

    def _wants_mirror(self, info: FlowInfo, now: float,
                      per_peer: dict[str, tuple[bool, str]] | None = None) -> tuple[bool, str]:
        """Whether `info` should be mirrored now, and why. `per_peer`: the answers of this tick
        for what depends on the peer's path alone (announcements, the forecast), worked out once
        per peer and tick rather than once per flow."""
        policy = self.settings.policy
        path = self.paths.get(info.peer)
        if policy in (Policy.OFF, Policy.STATIC):
            return False, f"policy {policy}"
        if policy is Policy.ALWAYS:
            return True, "policy always: every flow is mirrored"
        if info.restored_reason is not None:
            reason, info.restored_reason = info.restored_reason, None
            return True, reason
        if info.traffic_class == "bulk":
            return False, "bulk flows are never mirrored"
        if info.traffic_class != "latency_sensitive":
            return False, f"class {info.traffic_class}: only latency-sensitive flows are protected"
        degraded = path is not None and path.degraded_since is not None
        if degraded and path is not None and path.silent_since is not None:
            return True, f"standard path to {info.peer} silent: {path.silent_why}"
        if degraded and path is not None and path.last_report is not None:
            return True, (f"standard path to {info.peer} degraded: relative delay "
                          f"{path.last_report.owd_avg_us / 1000:.1f} ms")
        if policy is Policy.REACTIVE:
            return False, "standard path healthy"
        if self.peer_protected and self._peer_protection(info, now):
            return True, f"{info.peer} mirrors the other direction of this connection"
        if per_peer is None:
            return self._path_wants_mirror(info.peer, path, now)
        verdict = per_peer.get(info.peer)
        if verdict is None:
            verdict = per_peer[info.peer] = self._path_wants_mirror(info.peer, path, now)
        return verdict

    def _path_wants_mirror(self, peer: str, path: PeerPath | None, now: float) -> tuple[bool, str]:
        """The predictive policy for a latency-sensitive flow to `peer` whose path is healthy now:
        an announced transfer on the path, or the forecast."""
        announced = self.announced_on_path(peer, now)
        forecast = path.forecast if path else None
        segment = self.graph.segment(self.me, peer) if self.graph is not None else None
        if announced and announced >= self.worth_announcing(segment):
            return True, f"{format_bytes(announced)} announced on the standard path to {peer} (application metadata)"
        if forecast is None or path is None or len(path.history) < self.settings.warmup_reports:
            return False, "the predictor is still warming up on this path"
        decision = decide(FlowSummary("latency_sensitive", peer), {peer: forecast}, now * 1000,
                          DecisionConfig(mirror_threshold=self.settings.probability_threshold))
        return decision.mirror, decision.reason

    def might_mirror(self, info: FlowInfo) -> bool:
        """False when `_wants_mirror` says no whatever the paths do (it depends on the class only)."""
        policy = self.settings.policy
        if policy in (Policy.OFF, Policy.STATIC):
            return False
        if policy is Policy.ALWAYS or info.restored_reason is not None:
            return True
        return info.traffic_class == "latency_sensitive"

    def _rewatch(self, info: FlowInfo) -> None:
        if info.session_id is not None or self.might_mirror(info):
            self.watched[info.flow_id] = info
        else:
            self.watched.pop(info.flow_id, None)

    def flows_read_at(self) -> list[FlowInfo]:
        """The flows whose `last_seen` a tick reads (the caller refreshes them first)."""
        return list(self.watched.values())

    def sending(self, peer: str, last_sent: float) -> None:
        """The daemon's account of when it last sent on the standard path to `peer`."""
        path = self.paths.setdefault(peer, PeerPath(peer))
        path.last_sent = last_sent
        if not path.first_sent:
            path.first_sent = last_sent

    def heard(self, peer: str, at: float, packets: int = 1) -> None:
        """The daemon's account: `packets` from `peer` on its standard path arrived since its last
        account, the last of them by `at` (it looks every tick, so `at` is a tick's time)."""
        path = self.paths.setdefault(peer, PeerPath(peer))
        if at > path.heard_at and packets > 0:
            if path.heard_at:
                gap = min(at - path.heard_at, 1.0) / packets
                path.heard_gap += (gap - path.heard_gap) / 4
            path.heard_at = at

    def lost_since(self, peer: str, now: float, horizon_s: float = 0.25) -> float | None:
        """While the standard path to `peer` is silent: from when on what we sent may be lost (a
        little before we last heard from the peer; at most `horizon_s`, the receiver's de-dup
        skew, ago). None while it is not silent."""
        path = self.paths.get(peer)
        if path is None or path.silent_since is None:
            return None
        heard = path.heard_at or path.last_report_at
        return max(now - horizon_s, heard - 0.05)

    def resent(self, flow_id: int, packets: int, since: float, now: float) -> None:
        """The daemon sent a flow's last `packets` (sent since `since`) again on its new mirror path."""
        info = self.flows.get(flow_id)
        if info is not None:
            self._decide(f"flow:{info.key}", "resent", f"{packets} packets sent in the last "
                         f"{(now - since) * 1000:.0f} ms again on the mirror path: the standard path fell silent",
                         packets=packets)

    def _check_silence(self, now: float) -> None:
        """A destination reports every path it hears from about every 100 ms (FEEDBACK on all
        paths). A standard path we keep sending on without a report for `silence_s` delivers
        nothing, whatever delay it last showed: degraded (a link or router is down). Where the
        peer talks back steadily, a stop of its packets says the same sooner (`quick_silence_s`)."""
        limit = self.settings.silence_s
        for path in self.paths.values():
            if now - path.last_sent >= limit:
                continue  # not sending: nothing to miss
            reported = max(path.last_report_at, path.first_sent)  # a path that never reported: since it started
            sending = path.last_sent > reported + limit / 2
            why = None
            if sending and now - reported > limit:
                why = (f"no report about the standard path to {path.peer} for "
                       f"{(now - reported) * 1000:.0f} ms")
            else:
                # A tick's sampling (20 ms) is in the gap estimate's noise; at least `quick_silence_s`.
                quick = min(limit, max(self.settings.quick_silence_s, 4 * path.heard_gap))
                news = max(path.last_report_at, path.heard_at)
                if path.heard_at and path.last_sent > news + quick / 2 and now - news > quick:
                    why = (f"nothing from {path.peer} on its standard path for {(now - news) * 1000:.0f} ms "
                           f"(it came every {path.heard_gap * 1000:.0f} ms) and no report")
            if why is not None:
                self._silent(path, f"{why} while sending on it", now)

    def _silent(self, path: PeerPath, why: str, now: float, *, tell: bool = True) -> None:
        if path.silent_since is None:
            path.silent_since, path.silent_why, path.tell_peer = now, why, tell
            self._decide(f"peer:{path.peer}", "path_silent", why)
        if path.degraded_since is None:
            path.degraded_since = now

    def peer_says_silent(self, peer: str, now: float) -> None:
        """`peer` found the standard path between us silent: a failed link or router is usually
        down both ways, and this side may not be sending enough to notice soon by itself."""
        path = self.paths.setdefault(peer, PeerPath(peer))
        if path.silent_since is None:  # it knows: nothing to tell it back
            self._silent(path, f"{peer} says the standard path between us fell silent", now, tell=False)

    def take_tell(self, peer: str) -> bool:
        """True once after this node found the standard path to `peer` silent: tell the peer."""
        path = self.paths.get(peer)
        if path is None or not path.tell_peer:
            return False
        path.tell_peer = False
        return True

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        self._check_silence(now)
        per_peer: dict[str, tuple[bool, str]] = {}  # _wants_mirror's answers by peer, this tick
        for info in list(self.watched.values()):
            idle = now - info.last_seen > self.settings.flow_idle_s
            live = info.session_id is not None and info.session_id in self.sessions
            if idle:
                # An idle flow keeps its class (an RPC connection pauses and resumes); it leaves
                # when the flow table forgets it.
                if live:
                    self._withdraw(info.session_id, "flow idle", now)  # type: ignore[arg-type]
                continue
            if not live and not self.might_mirror(info):
                del self.watched[info.flow_id]  # its session ended: back to the idle sweep
                continue
            want, reason = self._wants_mirror(info, now, per_peer)
            if want and not live and (now >= info.rearm_after or self._new_evidence(info, now)):
                self._open(info, reason, now)
            elif want and live:
                session = self.sessions[info.session_id]  # type: ignore[index]
                # A session withdrawing (the flow paused) ends first; the next tick opens a new one.
                if not session.state.terminal and session.state is not SessionState.WITHDRAWING:
                    self._apply(info.session_id, session.renew(now), now)  # type: ignore[arg-type]
        for session_id, session in list(self.sessions.items()):
            self._apply(session_id, session.tick(now), now)
        actions.extend(self._drain())
        return actions

    # -- sessions -------------------------------------------------------------------------
    def _open(self, info: FlowInfo, reason: str, now: float) -> None:
        if self.graph is None:
            self._decide(f"flow:{info.key}", "no_mirror", "no topology known (no inventory)")
            info.rearm_after = now + 5
            return
        session_id = next(self._session_ids)
        self.sessions_opened += 1
        path = self.paths.get(info.peer)
        request = MirrorRequest(str(info.key), self.me, info.peer, info.traffic_class, reason,
                                SessionBudget(self.settings.session_rate_bps / 8, self.settings.session_burst_bytes),
                                urgent=path is not None and path.silent_since is not None)
        opened = MirrorSession.open(session_id, request, now, self.channels, self.session_policy)
        self.sessions[session_id] = opened
        self.session_flow[session_id] = info.flow_id
        info.session_id = session_id
        self.watched[info.flow_id] = info
        self._decide(f"flow:{info.key}", "mirror", reason, session=session_id)
        result = plan_mirror(request, self.graph, self._forecast_links(now), now=now)
        if isinstance(result, NoPlan):
            self._decide(f"session:{session_id}", "no_plan", result.reason, flow=str(info.key))
        self._apply(session_id, opened.plan_result(result, now), now)
        session = self.sessions.get(session_id)
        if session is not None and session.state is SessionState.PLANNED:
            self._apply(session_id, session.install(now), now)
        if path is not None and path.degraded_since is None:
            # Opened before the path degraded: when it does, the lead time is measured.
            self._pending_onset.setdefault(info.peer, now)

    def _withdraw(self, session_id: int, reason: str, now: float) -> None:
        session = self.sessions.get(session_id)
        if session is not None and not session.state.terminal and session.state is not SessionState.WITHDRAWING:
            self._apply(session_id, session.withdraw(reason, now), now)

    def _apply(self, session_id: int, transition: Any, now: float) -> None:
        before = self.sessions.get(session_id)
        session: MirrorSession = transition.session
        self.sessions[session_id] = session
        self._queued.extend(transition.actions)
        if before is None or before.state is not session.state:
            self._decide(f"session:{session_id}", "session_state",
                         f"{before.state if before else 'new'} -> {session.state}"
                         + (f": {transition.note}" if transition.note else ""),
                         flow=session.request.flow_key, peer=session.request.dst,
                         relays=list(session.plan.overlay_nodes) if session.plan else [])
        if transition.verdict is Verdict.REROUTE and self.graph is not None and session.plan is not None:
            result = plan_reroute(session.request, self.graph, self._forecast_links(now), session.plan, now=now)
            self._apply(session_id, session.replan(result, now), now)
        elif transition.verdict is Verdict.TEARDOWN:
            flow = self.flows.get(self.session_flow.get(session_id, -1))
            if flow is not None:
                flow.torn_down_at = session.state_since
                flow.rearm_after = session.state_since + self.session_policy.adaptation.rearm_after_teardown_s
            self._decide(f"session:{session_id}", "adapt", f"teardown: {transition.note}")
        if session.state.terminal:
            flow_id = self.session_flow.pop(session_id, None)
            flow = self.flows.get(flow_id) if flow_id is not None else None
            if flow is not None and flow.session_id == session_id:
                flow.session_id = None
            del self.sessions[session_id]

    def _drain(self) -> list[Action]:
        queued, self._queued = self._queued, []
        return queued

    def take_decisions(self) -> list[Decision]:
        out, self.decisions = self.decisions, []
        return out

    def flow_of_session(self, session_id: int) -> int | None:
        return self.session_flow.get(session_id)

    def plan_of(self, session_id: int) -> MirrorPlan | None:
        session = self.sessions.get(session_id)
        return session.plan if session else None
