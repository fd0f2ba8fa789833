"""Mirror sessions: an intent with an explicit lifecycle, compiled into actions the node performs.

    requested -> planned -> installing -> active -> withdrawing -> withdrawn
         \\           \\           \\          \\______ (re-plan: installing again, make-before-break)
          `-----------`-----------`-----------> failed

A `MirrorSession` is an immutable value. Every method takes `now` (seconds, the caller's monotonic
clock) and returns a `Transition`: the new session plus the actions to perform (`InstallVC`,
`RenewVC`, `RemoveVC`, `StartDuplication`, `StopDuplication`). Nothing here sends anything.

Two kinds of input, two rules:

* **commands** (`plan`, `install`, `replan`, `renew`, `withdraw`) in the wrong state raise
  `IllegalTransition`: that is a bug in the caller.
* **network events** (`ack_install`, `nack_install`, `ack_remove`, `observe`) and `tick` never raise:
  late, duplicated and stale messages are normal on a network and are ignored.

Virtual connections are idempotent: every install of one plan generation uses the same channel id, so
a retried `InstallVC` that reaches a relay twice installs one VC, and re-sending it is also a renewal.
Relays hold VCs for `vc_lease_ms` unless renewed, so anything a lost `RemoveVC` leaves behind expires.

Adaptation (`observe`) applies hysteresis to per-path feedback: tear down only when the standard path
has recovered (a stricter threshold than the one that triggered mirroring) *and* the mirror is not
winning, continuously for a hold time; re-route when the mirror path itself degrades for a hold time;
and never change anything within `min_dwell_s` of the previous change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Protocol

from topomirror.topology.paths import MirrorPlan, NoPlan
from topomirror.topology.request import MirrorRequest

MAX_CHANNEL = 0xFFFF  # the wire header's channel field is 16 bits; 0 means "direct, no relay"
HISTORY_LENGTH = 16


class SessionState(enum.StrEnum):
    REQUESTED = "requested"
    PLANNED = "planned"
    INSTALLING = "installing"
    ACTIVE = "active"
    WITHDRAWING = "withdrawing"
    WITHDRAWN = "withdrawn"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (SessionState.WITHDRAWN, SessionState.FAILED)


class SessionError(Exception):
    """Base of the session errors."""


class IllegalTransition(SessionError):
    def __init__(self, session_id: int, state: SessionState, operation: str, allowed: tuple[SessionState, ...]) -> None:
        self.session_id, self.state, self.operation, self.allowed = session_id, state, operation, allowed
        super().__init__(f"mirror session {session_id}: cannot {operation} in state {state.value} "
                         f"(allowed in: {', '.join(s.value for s in allowed)})")


class ChannelsExhausted(SessionError):
    pass


class ChannelAllocator:
    """Hands out the node's 16-bit channel ids (relays key VCs by sender and channel). Round robin, so
    a released id is reused as late as possible and a stale VC somewhere has long expired by then."""

    def __init__(self, first: int = 1) -> None:
        if not 1 <= first <= MAX_CHANNEL:
            raise ValueError(f"first channel must be in 1..{MAX_CHANNEL}")
        self._next = first
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        if len(self._in_use) >= MAX_CHANNEL:
            raise ChannelsExhausted(f"all {MAX_CHANNEL} channel ids are in use: too many live mirror sessions")
        while self._next in self._in_use:
            self._next = self._next % MAX_CHANNEL + 1
        channel = self._next
        self._in_use.add(channel)
        self._next = channel % MAX_CHANNEL + 1
        return channel

    def release(self, channel: int) -> None:
        self._in_use.discard(channel)  # idempotent: releasing twice is harmless

    @property
    def in_use(self) -> int:
        return len(self._in_use)


@dataclass(frozen=True)
class Lease:
    """Expires unless renewed."""

    duration_s: float
    expires_at: float

    @classmethod
    def start(cls, duration_s: float, now: float) -> Lease:
        if duration_s <= 0:
            raise ValueError(f"lease duration must be positive, got {duration_s}")
        return cls(duration_s, now + duration_s)

    def renew(self, now: float) -> Lease:
        return Lease(self.duration_s, max(self.expires_at, now + self.duration_s))

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


# -- actions the node performs ----------------------------------------------------------------------

@dataclass(frozen=True)
class InstallVC:
    """Ask `relay` to forward packets arriving on `channel_id` to `next_hop` for `lease_ms`."""

    session_id: int
    relay: str
    channel_id: int
    next_hop: str
    lease_ms: int
    attempt: int = 1


@dataclass(frozen=True)
class RenewVC:
    session_id: int
    relay: str
    channel_id: int
    lease_ms: int


@dataclass(frozen=True)
class RemoveVC:
    session_id: int
    relay: str
    channel_id: int


@dataclass(frozen=True)
class StartDuplication:
    """Copy the flow's packets to `first_hop` on `channel_id`, within the budget. Sent again after a
    re-route with the new first hop and channel: the data plane replaces the session's mirror target."""

    session_id: int
    flow_key: str
    first_hop: str
    channel_id: int
    rate_bytes_per_s: float
    burst_bytes: int


@dataclass(frozen=True)
class StopDuplication:
    session_id: int
    flow_key: str


Action = InstallVC | RenewVC | RemoveVC | StartDuplication | StopDuplication


# -- feedback and adaptation ------------------------------------------------------------------------

class PathReportLike(Protocol):
    """What the destination reports per path (`topomirror.wire.messages.PathReport` fits)."""

    @property
    def packets(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def wins(self) -> int: ...
    @property
    def owd_avg_us(self) -> int: ...


@dataclass(frozen=True)
class PathSample:
    relative_delay_us: float
    loss: float  # fraction 0..1

    @classmethod
    def from_report(cls, report: PathReportLike) -> PathSample:
        sent = report.packets + report.lost
        return cls(float(report.owd_avg_us), report.lost / sent if sent else 0.0)


@dataclass(frozen=True)
class SessionFeedback:
    standard: PathSample
    mirror: PathSample
    mirror_win_share: float  # fraction of delivered packets whose first copy came over the mirror

    @classmethod
    def from_reports(cls, standard: PathReportLike, mirror: PathReportLike) -> SessionFeedback:
        wins = standard.wins + mirror.wins
        return cls(PathSample.from_report(standard), PathSample.from_report(mirror),
                   mirror.wins / wins if wins else 0.0)


class Verdict(enum.StrEnum):
    KEEP = "keep"
    REROUTE = "reroute"
    TEARDOWN = "teardown"


@dataclass(frozen=True)
class AdaptationPolicy:
    min_dwell_s: float = 2.0  # no two adaptation changes (activation, re-route, teardown) closer than this
    # Standard recovered and mirror not winning, continuously, this long. What a mirror of the
    # latency-sensitive flows a policy protects costs is their own (small) byte rate; ending it the
    # moment one queue drained leaves them bare for the next transfer or a failure seconds later
    # (docs/BENCHMARKS.md, the demo at 1 s and at 3 s). As long as the intent's lease.
    teardown_hold_s: float = 3.0
    reroute_hold_s: float = 0.3  # mirror degraded, continuously, this long
    # Hysteresis: "recovered" is well below the ~2 ms queueing delay that makes the predictor mirror.
    recovered_delay_us: float = 500.0
    recovered_loss: float = 0.001
    losing_win_share: float = 0.05  # the mirror "is not winning" at or below this share of first copies
    degraded_delay_us: float = 5000.0
    degraded_loss: float = 0.05
    max_reroutes: int = 3  # then keep the mirror as it is: more re-routing has not helped
    rearm_after_teardown_s: float = 5.0  # do not mirror the same flow again sooner (cross-session no-flap)


@dataclass(frozen=True)
class Adaptation:
    """Hysteresis state of one active session."""

    last_change_at: float
    recovered_since: float | None = None
    degraded_since: float | None = None
    reroutes: int = 0

    def step(self, feedback: SessionFeedback, now: float, policy: AdaptationPolicy) -> tuple[Adaptation, Verdict, str]:
        standard, mirror = feedback.standard, feedback.mirror
        recovered = (standard.relative_delay_us <= policy.recovered_delay_us and standard.loss <= policy.recovered_loss
                     and feedback.mirror_win_share <= policy.losing_win_share)
        degraded = mirror.relative_delay_us >= policy.degraded_delay_us or mirror.loss >= policy.degraded_loss
        state = replace(
            self,
            recovered_since=(self.recovered_since if self.recovered_since is not None else now) if recovered else None,
            degraded_since=(self.degraded_since if self.degraded_since is not None else now) if degraded else None,
        )
        if now - self.last_change_at < policy.min_dwell_s:
            return state, Verdict.KEEP, "within the minimum dwell time"
        if state.recovered_since is not None and now - state.recovered_since >= policy.teardown_hold_s:
            reason = (f"standard path recovered (delay {standard.relative_delay_us:.0f} us, loss {standard.loss:.2%}) "
                      f"and the mirror won {feedback.mirror_win_share:.0%} of packets for "
                      f"{now - state.recovered_since:.1f} s")
            return replace(state, last_change_at=now), Verdict.TEARDOWN, reason
        if state.degraded_since is not None and now - state.degraded_since >= policy.reroute_hold_s:
            if state.reroutes >= policy.max_reroutes:
                return state, Verdict.KEEP, f"mirror degraded but already re-routed {state.reroutes} times"
            reason = (f"mirror path degraded (delay {mirror.relative_delay_us:.0f} us, loss {mirror.loss:.2%}) for "
                      f"{now - state.degraded_since:.1f} s")
            return (replace(state, last_change_at=now, degraded_since=None, reroutes=state.reroutes + 1),
                    Verdict.REROUTE, reason)
        return state, Verdict.KEEP, ""


# -- the session --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionPolicy:
    lease_s: float = 3.0  # the intent's lease: the decision engine renews it while the flow is at risk
    renew_every_s: float = 0.25  # a renewal sooner than this after the last one changes nothing
    vc_lease_ms: int = 2000  # how long a relay keeps a VC without renewal
    vc_refresh_s: float = 0.5  # renew VCs every quarter of their lease: up to three renewals in a row may be lost
    install_timeout_s: float = 0.05  # resend an unacknowledged install after this
    install_attempts: int = 4  # then fail: the mirror would come too late for a ~100-200 ms horizon
    remove_timeout_s: float = 0.25  # stop waiting for remove acks; leases clean up the rest
    adaptation: AdaptationPolicy = field(default_factory=AdaptationPolicy)


DEFAULT_SESSION_POLICY = SessionPolicy()


@dataclass(frozen=True)
class VirtualConnection:
    relay: str
    channel_id: int
    next_hop: str


@dataclass(frozen=True)
class PendingInstall:
    vc: VirtualConnection
    attempt: int
    sent_at: float


@dataclass(frozen=True)
class StateChange:
    state: SessionState
    at: float
    reason: str


@dataclass(frozen=True)
class SessionCounters:
    install_retries: int = 0
    replans: int = 0  # re-plans that changed the route
    reroutes: int = 0  # adaptation verdicts asking for a new route
    state_changes: int = 0


@dataclass(frozen=True)
class Transition:
    session: MirrorSession
    actions: tuple[Action, ...] = ()
    verdict: Verdict = Verdict.KEEP  # only `observe` sets it; REROUTE asks the caller to plan_reroute + replan
    note: str = ""  # why nothing happened, or the verdict's reason

    @property
    def state(self) -> SessionState:
        return self.session.state


_ANY_LIVE = (SessionState.REQUESTED, SessionState.PLANNED, SessionState.INSTALLING, SessionState.ACTIVE)


@dataclass(frozen=True)
class MirrorSession:
    session_id: int
    request: MirrorRequest
    state: SessionState
    state_since: float
    lease: Lease
    channels: ChannelAllocator = field(compare=False, repr=False)
    policy: SessionPolicy = DEFAULT_SESSION_POLICY
    reason: str = ""
    plan: MirrorPlan | None = None
    generation: int = 0
    channel_id: int = 0  # the current generation's channel (0: none yet)
    pending: tuple[PendingInstall, ...] = ()  # installs of the current generation awaiting an ack
    installed: tuple[VirtualConnection, ...] = ()  # acknowledged VCs of the current generation
    draining: tuple[VirtualConnection, ...] = ()  # previous route, still carrying during a re-route
    draining_channel: int = 0
    removing: tuple[VirtualConnection, ...] = ()  # while withdrawing: removals awaiting an ack
    duplicating: bool = False
    duplicating_channel: int = 0  # the channel the last StartDuplication named
    last_refresh_at: float = 0.0
    adaptation: Adaptation | None = None
    cooldown_until: float | None = None  # set by an adaptive teardown: do not re-mirror the flow before
    counters: SessionCounters = SessionCounters()
    history: tuple[StateChange, ...] = ()

    # -- creation --------------------------------------------------------------------------------------
    @classmethod
    def open(cls, session_id: int, request: MirrorRequest, now: float, channels: ChannelAllocator,
             policy: SessionPolicy = DEFAULT_SESSION_POLICY) -> MirrorSession:
        return cls(session_id=session_id, request=request, state=SessionState.REQUESTED, state_since=now,
                   lease=Lease.start(policy.lease_s, now), channels=channels, policy=policy,
                   reason=request.reason, history=(StateChange(SessionState.REQUESTED, now, request.reason),))

    # -- commands ----------------------------------------------------------------------------------------
    def plan_result(self, result: MirrorPlan | NoPlan, now: float) -> Transition:
        """requested -> planned, or failed when no mirror path exists."""
        self._require("accept a plan", SessionState.REQUESTED)
        if isinstance(result, NoPlan):
            return self._fail(f"no mirror path ({result.cause}): {result.reason}", now)
        return Transition(self._to(SessionState.PLANNED, now, result.reason, plan=result))

    def install(self, now: float) -> Transition:
        """planned -> installing: one InstallVC per relay, all with the new generation's channel.
        An urgent request (the standard path is down) also starts duplicating at once, behind its
        installs; the acknowledgements then only make it active."""
        self._require("install", SessionState.PLANNED)
        assert self.plan is not None
        session, actions = self._start_generation(self.plan, now)
        reason = f"installing on {', '.join(self.plan.relays)}"
        if self.request.urgent:
            actions.append(session._start_duplication())
            session = replace(session, duplicating=True, duplicating_channel=session.channel_id)
            reason += ", duplicating already (the standard path is down)"
        return Transition(session._to(SessionState.INSTALLING, now, reason), tuple(actions))

    def replan(self, result: MirrorPlan | NoPlan, now: float) -> Transition:
        """Apply a new plan after a graph/forecast change, a dead relay or a re-route verdict.
        Same route: nothing to do. New route while active: make-before-break (the old route keeps
        carrying until every new VC is acknowledged). No plan: failed, with clean-up actions."""
        self._require("re-plan", SessionState.PLANNED, SessionState.INSTALLING, SessionState.ACTIVE)
        if isinstance(result, NoPlan):
            return self._fail(f"re-plan found no mirror path ({result.cause}): {result.reason}", now)
        if self.plan is not None and self.plan.same_route(result):
            return Transition(replace(self, plan=result), note="same route")
        counters = replace(self.counters, replans=self.counters.replans + 1)
        if self.state is SessionState.PLANNED:
            return Transition(replace(self, plan=result, counters=counters, reason=result.reason))
        actions: list[Action] = []
        session = replace(self, counters=counters)
        if self.state is SessionState.ACTIVE:
            # The active route drains: it keeps carrying copies until the new one is acknowledged.
            session = replace(session, draining=self.installed, draining_channel=self.channel_id,
                              installed=(), pending=())
        else:
            # Still installing: abandon the half-installed generation (the draining one, if any, stays).
            actions += self._removals(self.installed + tuple(p.vc for p in self.pending))
            self.channels.release(self.channel_id)
            session = replace(session, installed=(), pending=())
        session, installs = session._start_generation(result, now)
        actions += installs
        return Transition(session._to(SessionState.INSTALLING, now, f"re-route: {result.reason}"), tuple(actions))

    def renew(self, now: float) -> Transition:
        """Extend the intent's lease (the decision engine still wants the mirror). Within
        `renew_every_s` of the last renewal the session stays as it is: the engine asks on every
        tick (every 20 ms), and a copy of the session each time was most of the tick's work, for
        a lease that then ends at most `renew_every_s` sooner."""
        self._require("renew", *_ANY_LIVE)
        if now - (self.lease.expires_at - self.lease.duration_s) < self.policy.renew_every_s:
            return Transition(self)
        return Transition(replace(self, lease=self.lease.renew(now)))

    def withdraw(self, reason: str, now: float) -> Transition:
        if self.state is SessionState.WITHDRAWING:
            return Transition(self, note="already withdrawing")
        self._require("withdraw", *_ANY_LIVE)
        to_remove = self.installed + tuple(p.vc for p in self.pending) + self.draining
        actions: list[Action] = []
        if self.duplicating:
            actions.append(StopDuplication(self.session_id, self.request.flow_key))
        actions += self._removals(to_remove)
        self._release_all()
        cleared = dict(installed=(), pending=(), draining=(), duplicating=False)
        if not to_remove:
            return Transition(self._to(SessionState.WITHDRAWN, now, reason, **cleared), tuple(actions))
        return Transition(self._to(SessionState.WITHDRAWING, now, reason, removing=to_remove, **cleared),
                          tuple(actions))

    # -- network events ------------------------------------------------------------------------------------
    def ack_install(self, relay: str, channel_id: int, now: float) -> Transition:
        if self.state is not SessionState.INSTALLING:
            return Transition(self, note=f"install ack from {relay} in state {self.state.value}: ignored")
        match = next((p for p in self.pending if p.vc.relay == relay and p.vc.channel_id == channel_id), None)
        if match is None:
            return Transition(self, note=f"stale or duplicate install ack from {relay} channel {channel_id}")
        pending = tuple(p for p in self.pending if p is not match)
        assert self.plan is not None
        order = self.plan.relays  # keep VCs in path order, so actions read in path order whatever the ack order
        installed = tuple(sorted((*self.installed, match.vc), key=lambda vc: order.index(vc.relay)))
        session = replace(self, pending=pending, installed=installed)
        if pending:
            return Transition(session)
        return session._activate(now)

    def nack_install(self, relay: str, channel_id: int, detail: str, now: float) -> Transition:
        """A relay refused the VC (full, unknown peer): fail; the caller may plan again without it."""
        if self.state is not SessionState.INSTALLING or not any(
                p.vc.relay == relay and p.vc.channel_id == channel_id for p in self.pending):
            return Transition(self, note=f"stale install refusal from {relay}: ignored")
        return self._fail(f"relay {relay} refused the virtual connection: {detail}", now)

    def ack_remove(self, relay: str, channel_id: int, now: float) -> Transition:
        if self.state is not SessionState.WITHDRAWING:
            return Transition(self, note="remove ack outside withdrawing: ignored")
        removing = tuple(vc for vc in self.removing if not (vc.relay == relay and vc.channel_id == channel_id))
        if removing:
            return Transition(replace(self, removing=removing))
        return Transition(self._to(SessionState.WITHDRAWN, now, self.reason, removing=()))

    def tick(self, now: float) -> Transition:
        """Timers: lease expiry, install retries and timeouts, VC renewals, withdraw timeout."""
        if self.state.terminal:
            return Transition(self)
        if self.state is SessionState.WITHDRAWING:
            if now - self.state_since >= self.policy.remove_timeout_s:
                # Unacknowledged removals are left to the relays' VC leases.
                return Transition(self._to(SessionState.WITHDRAWN, now, self.reason, removing=()))
            return Transition(self)
        if self.lease.expired(now):
            return self.withdraw("lease expired", now)
        actions: list[Action] = []
        session = self
        if self.state is SessionState.INSTALLING:
            pending: list[PendingInstall] = []
            retries = 0
            for item in self.pending:
                if now - item.sent_at < self.policy.install_timeout_s:
                    pending.append(item)
                    continue
                if item.attempt >= self.policy.install_attempts:
                    return self._fail(f"relay {item.vc.relay} did not acknowledge the virtual connection "
                                      f"after {item.attempt} attempts", now)
                retry = PendingInstall(item.vc, item.attempt + 1, now)
                pending.append(retry)
                actions.append(self._install_action(item.vc, retry.attempt))
                retries += 1
            session = replace(session, pending=tuple(pending),
                              counters=replace(self.counters, install_retries=self.counters.install_retries + retries))
        if now - self.last_refresh_at >= self.policy.vc_refresh_s and (self.installed or self.draining):
            actions += [RenewVC(self.session_id, vc.relay, vc.channel_id, self.policy.vc_lease_ms)
                        for vc in self.installed + self.draining]
            session = replace(session, last_refresh_at=now)
        return Transition(session, tuple(actions))

    def observe(self, feedback: SessionFeedback, now: float) -> Transition:
        """Adapt to per-path feedback (active sessions only). TEARDOWN withdraws here; REROUTE leaves the
        session as is and asks the caller for `plan_reroute` + `replan` (graph and forecast live there)."""
        if self.state is not SessionState.ACTIVE or self.adaptation is None:
            return Transition(self, note=f"feedback in state {self.state.value}: ignored")
        policy = self.policy.adaptation
        adaptation, verdict, reason = self.adaptation.step(feedback, now, policy)
        session = replace(self, adaptation=adaptation)
        if verdict is Verdict.TEARDOWN:
            teardown = replace(session, cooldown_until=now + policy.rearm_after_teardown_s).withdraw(reason, now)
            return replace(teardown, verdict=verdict, note=reason)
        if verdict is Verdict.REROUTE:
            session = replace(session, counters=replace(session.counters, reroutes=session.counters.reroutes + 1))
        return Transition(session, verdict=verdict, note=reason)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _require(self, operation: str, *allowed: SessionState) -> None:
        if self.state not in allowed:
            raise IllegalTransition(self.session_id, self.state, operation, allowed)

    def _to(self, state: SessionState, now: float, reason: str, **changes: object) -> MirrorSession:
        history = (*self.history, StateChange(state, now, reason))[-HISTORY_LENGTH:]
        counters = replace(self.counters, state_changes=self.counters.state_changes + 1)
        return replace(self, state=state, state_since=now, reason=reason, history=history, counters=counters,
                       **changes)  # type: ignore[arg-type]

    def _install_action(self, vc: VirtualConnection, attempt: int) -> InstallVC:
        return InstallVC(self.session_id, vc.relay, vc.channel_id, vc.next_hop, self.policy.vc_lease_ms, attempt)

    def _start_generation(self, plan: MirrorPlan, now: float) -> tuple[MirrorSession, list[Action]]:
        channel = self.channels.allocate()
        vcs = [VirtualConnection(relay, channel, plan.next_hop(relay)) for relay in plan.relays]
        session = replace(self, plan=plan, generation=self.generation + 1, channel_id=channel,
                          pending=tuple(PendingInstall(vc, 1, now) for vc in vcs), installed=())
        return session, [session._install_action(vc, 1) for vc in vcs]

    def _start_duplication(self) -> StartDuplication:
        assert self.plan is not None
        budget = self.request.budget
        return StartDuplication(self.session_id, self.request.flow_key, self.plan.first_hop, self.channel_id,
                                budget.rate_bytes_per_s, budget.burst_bytes)

    def _activate(self, now: float) -> Transition:
        assert self.plan is not None
        actions: list[Action] = []
        if not (self.duplicating and self.duplicating_channel == self.channel_id):
            actions.append(self._start_duplication())  # (an urgent session started on this channel already)
        actions += self._removals(self.draining)
        if self.draining:
            self.channels.release(self.draining_channel)
        rerouted = bool(self.draining)
        adaptation = self.adaptation if rerouted and self.adaptation else Adaptation(last_change_at=now)
        reason = f"duplicating via {' > '.join(self.plan.relays)}"
        session = self._to(SessionState.ACTIVE, now, reason, draining=(), draining_channel=0, duplicating=True,
                           duplicating_channel=self.channel_id, adaptation=adaptation, last_refresh_at=now)
        return Transition(session, tuple(actions))

    def _removals(self, vcs: tuple[VirtualConnection, ...]) -> list[Action]:
        return [RemoveVC(self.session_id, vc.relay, vc.channel_id) for vc in vcs]

    def _release_all(self) -> None:
        for channel in (self.channel_id, self.draining_channel):
            if channel:
                self.channels.release(channel)

    def _fail(self, reason: str, now: float) -> Transition:
        actions: list[Action] = []
        if self.duplicating:
            actions.append(StopDuplication(self.session_id, self.request.flow_key))
        actions += self._removals(self.installed + tuple(p.vc for p in self.pending) + self.draining)
        self._release_all()
        return Transition(self._to(SessionState.FAILED, now, reason, installed=(), pending=(), draining=(),
                                   duplicating=False), tuple(actions))
