"""Mirror session lifecycle: transitions and their actions, illegal ones, leases, retries, re-plans,
and adaptation with hysteresis that never flaps."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topomirror.topology.graph import NetworkGraph
from topomirror.topology.paths import MirrorPlan, NoPlan, plan_mirror, plan_reroute
from topomirror.topology.session import (
    AdaptationPolicy,
    ChannelAllocator,
    ChannelsExhausted,
    IllegalTransition,
    InstallVC,
    Lease,
    MirrorSession,
    PathSample,
    RemoveVC,
    RenewVC,
    SessionFeedback,
    SessionPolicy,
    SessionState,
    StartDuplication,
    StopDuplication,
    Transition,
    Verdict,
)

from .graphs import build, request


def two_hop_graph() -> NetworkGraph:
    """h1 - e1 - core - e2 - h3, relays x1 - x2 chained beside core, and a single relay x3 as well."""
    return build(
        {"h1": "host", "h3": "host", "e1": "router", "e2": "router", "core": "router",
         "x1": "relay", "x2": "relay", "x3": "relay"},
        ("h1", "e1"), ("e1", "core"), ("core", "e2"), ("e2", "h3"),
        ("e1", "x1", 2), ("x1", "x2", 2), ("x2", "e2", 2), ("e1", "x3", 5), ("x3", "e2", 5),
    )


def first_plan(graph: NetworkGraph | None = None) -> MirrorPlan:
    result = plan_mirror(request(), graph or two_hop_graph(), {"e1-core": 0.9}, now=0.0)
    assert isinstance(result, MirrorPlan)
    return result


def opened(channels: ChannelAllocator | None = None, policy: SessionPolicy | None = None) -> MirrorSession:
    return MirrorSession.open(7, request(), now=0.0, channels=channels or ChannelAllocator(),
                              policy=policy or SessionPolicy())


def installing(channels: ChannelAllocator | None = None, policy: SessionPolicy | None = None) -> Transition:
    session = opened(channels, policy).plan_result(first_plan(), now=0.01).session
    return session.install(now=0.02)


def active(channels: ChannelAllocator | None = None, policy: SessionPolicy | None = None) -> MirrorSession:
    transition = installing(channels, policy)
    session = transition.session
    for action in transition.actions:
        assert isinstance(action, InstallVC)
        session = session.ack_install(action.relay, action.channel_id, now=0.03).session
    assert session.state is SessionState.ACTIVE
    return session


# -- the happy path -------------------------------------------------------------------------------------

def test_lifecycle_from_request_to_withdrawn_with_its_actions() -> None:
    session = opened()
    assert session.state is SessionState.REQUESTED
    planned = session.plan_result(first_plan(), now=0.01)
    assert planned.state is SessionState.PLANNED and planned.actions == ()
    assert planned.session.plan is not None and planned.session.plan.relays == ("x1", "x2")

    install = planned.session.install(now=0.02)
    assert install.state is SessionState.INSTALLING
    channel = install.session.channel_id
    assert install.actions == (
        InstallVC(7, "x1", channel, "x2", 2000, 1),
        InstallVC(7, "x2", channel, "h3", 2000, 1),
    )
    half = install.session.ack_install("x2", channel, now=0.03)
    assert half.state is SessionState.INSTALLING and half.actions == ()
    up = half.session.ack_install("x1", channel, now=0.04)
    assert up.state is SessionState.ACTIVE
    assert up.actions == (StartDuplication(7, request().flow_key, "x1", channel, 125_000, 32_000),)

    down = up.session.withdraw("flow ended", now=1.0)
    assert down.state is SessionState.WITHDRAWING
    assert down.actions == (StopDuplication(7, request().flow_key), RemoveVC(7, "x1", channel),
                            RemoveVC(7, "x2", channel))
    gone = down.session.ack_remove("x1", channel, now=1.01).session.ack_remove("x2", channel, now=1.02)
    assert gone.state is SessionState.WITHDRAWN
    assert [change.state for change in gone.session.history] == [
        SessionState.REQUESTED, SessionState.PLANNED, SessionState.INSTALLING, SessionState.ACTIVE,
        SessionState.WITHDRAWING, SessionState.WITHDRAWN]
    assert gone.session.reason == "flow ended"


def test_an_urgent_session_duplicates_behind_its_installs_and_activates_without_starting_twice() -> None:
    # The standard path is down: every millisecond waiting for acknowledgements is lost traffic.
    urgent = MirrorSession.open(7, replace(request(), urgent=True), now=0.0, channels=ChannelAllocator())
    transition = urgent.plan_result(first_plan(), now=0.01).session.install(now=0.02)
    installs = [a for a in transition.actions if isinstance(a, InstallVC)]
    starts = [a for a in transition.actions if isinstance(a, StartDuplication)]
    assert installs and len(starts) == 1 and transition.actions[-1] is starts[0]  # installs go first
    session = transition.session
    assert session.state is SessionState.INSTALLING and session.duplicating
    assert starts[0].channel_id == installs[0].channel_id
    for install in installs:
        transition = session.ack_install(install.relay, install.channel_id, now=0.03)
        session = transition.session
    assert session.state is SessionState.ACTIVE
    assert not any(isinstance(a, StartDuplication) for a in transition.actions)
    # Failing while installing stops the duplication it started.
    other = MirrorSession.open(8, replace(request(), urgent=True), now=0.0, channels=ChannelAllocator())
    installing_one = other.plan_result(first_plan(), now=0.01).session.install(now=0.02).session
    refused = installing_one.nack_install(installs[0].relay, installing_one.channel_id, "full", now=0.03)
    assert refused.session.state is SessionState.FAILED
    assert any(isinstance(a, StopDuplication) for a in refused.actions)


def test_a_normal_session_starts_duplicating_only_when_every_relay_acknowledged() -> None:
    transition = installing()
    assert not any(isinstance(a, StartDuplication) for a in transition.actions)
    assert not transition.session.duplicating


def test_no_plan_fails_the_session_with_the_reason() -> None:
    result = opened().plan_result(NoPlan("no-relay", "no usable relay for h1 -> h3"), now=0.0)
    assert result.state is SessionState.FAILED
    assert "no usable relay" in result.session.reason and result.actions == ()


def test_withdraw_before_install_needs_no_actions() -> None:
    planned = opened().plan_result(first_plan(), now=0.0).session
    result = planned.withdraw("not needed any more", now=0.1)
    assert result.state is SessionState.WITHDRAWN and result.actions == ()


def test_withdraw_times_out_on_lost_remove_acks() -> None:
    down = active().withdraw("done", now=1.0).session
    assert down.tick(now=1.1).state is SessionState.WITHDRAWING
    assert down.tick(now=1.3).state is SessionState.WITHDRAWN  # the relays' VC leases do the rest


# -- illegal transitions and tolerated events --------------------------------------------------------------

def test_commands_in_the_wrong_state_raise() -> None:
    session = opened()
    with pytest.raises(IllegalTransition, match="cannot install in state requested"):
        session.install(now=0.0)
    live = active()
    with pytest.raises(IllegalTransition, match="cannot accept a plan in state active"):
        live.plan_result(first_plan(), now=1.0)
    gone = live.withdraw("bye", now=1.0).session.tick(now=5.0).session
    assert gone.state is SessionState.WITHDRAWN
    for command in (lambda: gone.renew(now=5.0), lambda: gone.withdraw("again", now=5.0),
                    lambda: gone.replan(first_plan(), now=5.0), lambda: gone.install(now=5.0)):
        with pytest.raises(IllegalTransition) as raised:
            command()
        assert raised.value.session_id == 7 and raised.value.state is SessionState.WITHDRAWN


def test_withdrawing_twice_is_a_no_op() -> None:
    down = active().withdraw("bye", now=1.0)
    again = down.session.withdraw("bye again", now=1.01)
    assert again.session == down.session and again.actions == ()


def test_late_duplicate_and_foreign_acks_are_ignored() -> None:
    transition = installing()
    session, channel = transition.session, transition.session.channel_id
    assert session.ack_install("x1", channel + 1, now=0.03).session == session  # another generation
    assert session.ack_install("zz", channel, now=0.03).session == session
    once = session.ack_install("x1", channel, now=0.03).session
    assert once.ack_install("x1", channel, now=0.04).session == once  # duplicate ack
    live = active()
    assert live.ack_install("x1", live.channel_id, now=1.0).session == live
    assert live.ack_remove("x1", live.channel_id, now=1.0).session == live


# -- leases ----------------------------------------------------------------------------------------------------

def test_lease_expires_unless_renewed() -> None:
    lease = Lease.start(2.0, now=10.0)
    assert not lease.expired(11.9) and lease.expired(12.0)
    renewed = lease.renew(11.5)
    assert not renewed.expired(13.0) and renewed.expired(13.5)
    assert renewed.remaining_s(13.0) == pytest.approx(0.5)
    assert lease.renew(5.0) == lease  # renewing with an old clock never shortens a lease
    with pytest.raises(ValueError):
        Lease.start(0, now=0.0)


def test_session_lease_expiry_withdraws_and_renewal_keeps_it() -> None:
    session = active(policy=SessionPolicy(lease_s=3.0))
    assert session.tick(now=2.9).state is SessionState.ACTIVE
    expired = session.tick(now=3.0)
    assert expired.state is SessionState.WITHDRAWING and expired.session.reason == "lease expired"
    assert StopDuplication(7, request().flow_key) in expired.actions
    kept = session.renew(now=2.5).session
    assert kept.tick(now=5.0).state is SessionState.ACTIVE


def test_renewal_leaves_the_session_alone_until_renew_every_s_has_passed() -> None:
    session = active(policy=SessionPolicy(lease_s=3.0, renew_every_s=0.25))  # its lease started at 0
    assert session.renew(now=0.2).session is session  # renewed 0.2 s ago (at its start): nothing to write
    renewed = session.renew(now=0.3).session
    assert renewed.lease.expires_at == pytest.approx(3.3)
    assert renewed.renew(now=0.5).session is renewed
    # Renewed on every tick (20 ms), it never expires; its lease ends at most 0.25 s sooner.
    for step in range(1, 500):
        session = session.renew(now=step * 0.02).session
        assert session.tick(now=step * 0.02).state is SessionState.ACTIVE
        assert session.lease.expires_at >= step * 0.02 + 3.0 - 0.25


def test_relay_vcs_are_renewed_while_active() -> None:
    session = active()  # activated at 0.03
    assert session.tick(now=0.3).actions == ()
    renewals = session.tick(now=0.6)
    assert renewals.actions == (RenewVC(7, "x1", session.channel_id, 2000), RenewVC(7, "x2", session.channel_id, 2000))
    assert renewals.session.tick(now=0.7).actions == ()


# -- install retries with idempotent channel ids ---------------------------------------------------------------

def test_unacknowledged_installs_are_resent_with_the_same_channel_then_fail() -> None:
    transition = installing(policy=SessionPolicy(install_timeout_s=0.05, install_attempts=3))
    session, channel = transition.session, transition.session.channel_id
    session = session.ack_install("x2", channel, now=0.03).session
    retry = session.tick(now=0.08)
    assert retry.actions == (InstallVC(7, "x1", channel, "x2", 2000, 2),)
    assert retry.session.counters.install_retries == 1
    assert retry.session.tick(now=0.10).actions == ()  # not yet timed out again
    third = retry.session.tick(now=0.13)
    assert third.actions == (InstallVC(7, "x1", channel, "x2", 2000, 3),)
    failed = third.session.tick(now=0.19)
    assert failed.state is SessionState.FAILED
    assert "x1 did not acknowledge" in failed.session.reason
    # Clean up what was installed (x2) and what may have arrived late (x1).
    assert set(failed.actions) == {RemoveVC(7, "x2", channel), RemoveVC(7, "x1", channel)}


def test_a_late_ack_after_a_retry_still_activates() -> None:
    transition = installing()
    channel = transition.session.channel_id
    session = transition.session.tick(now=0.08).session  # both resent
    session = session.ack_install("x1", channel, now=0.09).session.ack_install("x2", channel, now=0.09).session
    assert session.state is SessionState.ACTIVE


def test_refused_install_fails_with_the_relays_words() -> None:
    transition = installing()
    failed = transition.session.nack_install("x1", transition.session.channel_id, "table full", now=0.03)
    assert failed.state is SessionState.FAILED and "x1 refused" in failed.session.reason
    assert "table full" in failed.session.reason


def test_channels_are_unique_reused_late_and_released_at_the_end() -> None:
    channels = ChannelAllocator()
    first, second = active(channels), active(channels)
    assert first.channel_id != second.channel_id and channels.in_use == 2
    first.withdraw("done", now=1.0)
    assert channels.in_use == 1
    small = ChannelAllocator(first=0xFFFF)
    assert small.allocate() == 0xFFFF and small.allocate() == 1  # wraps, skipping 0 ("direct")


def test_channel_exhaustion_is_a_clear_error() -> None:
    channels = ChannelAllocator()
    for _ in range(0xFFFF):
        channels.allocate()
    with pytest.raises(ChannelsExhausted, match="too many live mirror sessions"):
        channels.allocate()


# -- re-planning -------------------------------------------------------------------------------------------------

def test_replan_to_the_same_route_changes_nothing() -> None:
    session = active()
    same = session.replan(first_plan(), now=1.0)
    assert same.actions == () and same.state is SessionState.ACTIVE and same.note == "same route"


def test_replan_is_make_before_break() -> None:
    graph = two_hop_graph()
    session = active()
    old_channel = session.channel_id
    graph.set_node_up("x2", False)  # a relay died: the builder re-plans around it
    result = plan_mirror(session.request, graph, {"e1-core": 0.9}, now=1.0)
    assert isinstance(result, MirrorPlan) and result.relays == ("x3",)
    moving = session.replan(result, now=1.0)
    assert moving.state is SessionState.INSTALLING
    new_channel = moving.session.channel_id
    assert new_channel != old_channel
    assert moving.actions == (InstallVC(7, "x3", new_channel, "h3", 2000, 1),)  # nothing removed yet
    assert moving.session.draining  # the old route keeps carrying copies meanwhile
    assert moving.session.counters.replans == 1
    up = moving.session.ack_install("x3", new_channel, now=1.01)
    assert up.state is SessionState.ACTIVE
    assert up.actions == (StartDuplication(7, request().flow_key, "x3", new_channel, 125_000, 32_000),
                          RemoveVC(7, "x1", old_channel), RemoveVC(7, "x2", old_channel))
    assert up.session.draining == ()


def test_replan_with_no_plan_fails_and_cleans_up() -> None:
    session = active()
    failed = session.replan(NoPlan("no-relay", "no usable relay (x1, x2, x3 down)"), now=1.0)
    assert failed.state is SessionState.FAILED
    assert failed.actions[0] == StopDuplication(7, request().flow_key)
    assert {a.relay for a in failed.actions if isinstance(a, RemoveVC)} == {"x1", "x2"}
    assert "x3 down" in failed.session.reason


def test_withdraw_during_a_reroute_removes_both_generations() -> None:
    graph = two_hop_graph()
    session = active()
    graph.set_node_up("x2", False)
    result = plan_mirror(session.request, graph, {}, now=1.0)
    assert isinstance(result, MirrorPlan)
    moving = session.replan(result, now=1.0).session
    down = moving.withdraw("flow ended", now=1.1)
    assert StopDuplication(7, request().flow_key) in down.actions
    assert {(a.relay, a.channel_id) for a in down.actions if isinstance(a, RemoveVC)} == {
        ("x3", moving.channel_id), ("x1", session.channel_id), ("x2", session.channel_id)}


# -- adaptation with hysteresis --------------------------------------------------------------------------------------

HEALTHY = PathSample(relative_delay_us=100, loss=0.0)
CONGESTED = PathSample(relative_delay_us=8000, loss=0.02)
DEGRADED = PathSample(relative_delay_us=9000, loss=0.1)


def feed(session: MirrorSession, feedback: SessionFeedback, start: float, stop: float,
         step: float = 0.1) -> tuple[MirrorSession, list[Transition]]:
    transitions = []
    now = start
    while now <= stop + 1e-9 and session.state is SessionState.ACTIVE:
        transition = session.observe(feedback, now)
        transitions.append(transition)
        session = transition.session
        now = round(now + step, 6)
    return session, transitions


def test_mirror_is_kept_while_it_wins() -> None:
    session, transitions = feed(active(), SessionFeedback(CONGESTED, HEALTHY, 0.8), 0.1, 10.0)
    assert session.state is SessionState.ACTIVE
    assert all(t.verdict is Verdict.KEEP for t in transitions)


def test_teardown_when_the_standard_path_recovered_and_the_mirror_loses_for_the_hold_time() -> None:
    policy = SessionPolicy(adaptation=AdaptationPolicy(min_dwell_s=2.0, teardown_hold_s=1.0))
    session, transitions = feed(active(policy=policy), SessionFeedback(HEALTHY, HEALTHY, 0.01), 0.1, 10.0)
    assert session.state is SessionState.WITHDRAWING
    teardown = transitions[-1]
    assert teardown.verdict is Verdict.TEARDOWN and "standard path recovered" in teardown.note
    assert StopDuplication(7, request().flow_key) in teardown.actions
    # Not before the dwell time since activation (0.03 s), and after a full hold.
    last_time = 0.1 + 0.1 * (len(transitions) - 1)
    assert last_time >= 2.03
    assert session.cooldown_until == pytest.approx(last_time + 5.0)


def test_a_standard_path_that_wobbles_around_recovery_never_tears_down() -> None:
    # Recovered samples never last the hold time: hysteresis keeps the mirror.
    session = active()
    now = 0.1
    for index in range(200):
        standard = HEALTHY if index % 5 else PathSample(relative_delay_us=800, loss=0.0)  # above 500 us
        transition = session.observe(SessionFeedback(standard, HEALTHY, 0.0), now)
        session = transition.session
        assert transition.verdict is Verdict.KEEP
        now += 0.1
    assert session.state is SessionState.ACTIVE


def test_degraded_mirror_asks_for_a_reroute_then_keeps_after_the_limit() -> None:
    policy = SessionPolicy(adaptation=AdaptationPolicy(min_dwell_s=1.0, reroute_hold_s=0.3, max_reroutes=2))
    graph = two_hop_graph()
    session = active(policy=policy)
    verdicts = []
    now = 0.1
    while now < 10:
        transition = session.observe(SessionFeedback(CONGESTED, DEGRADED, 0.3), now)
        session = transition.session
        verdicts.append((round(now, 1), transition.verdict))
        if transition.verdict is Verdict.REROUTE:
            assert session.plan is not None
            rerouted = plan_reroute(session.request, graph, {}, session.plan, now=now)
            assert isinstance(rerouted, MirrorPlan)
            moving = session.replan(rerouted, now)
            session = moving.session
            for action in moving.actions:
                if isinstance(action, InstallVC):
                    session = session.ack_install(action.relay, action.channel_id, now).session
            assert session.state is SessionState.ACTIVE
        now += 0.1
    reroutes = [t for t, verdict in verdicts if verdict is Verdict.REROUTE]
    assert len(reroutes) == 2 and reroutes[1] - reroutes[0] >= 1.0
    assert session.counters.reroutes == 2


# -- no-flap property ------------------------------------------------------------------------------------------------

samples = st.builds(PathSample, relative_delay_us=st.sampled_from([0.0, 300.0, 600.0, 3000.0, 6000.0, 20000.0]),
                    loss=st.sampled_from([0.0, 0.0005, 0.01, 0.06, 0.3]))
feedbacks = st.builds(SessionFeedback, standard=samples, mirror=samples, mirror_win_share=st.floats(0.0, 1.0))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.01, 0.5), feedbacks), min_size=1, max_size=150),
       dwell=st.floats(0.2, 3.0))
def test_random_feedback_never_changes_a_session_more_than_once_per_dwell_time(
        steps: list[tuple[float, SessionFeedback]], dwell: float) -> None:
    adaptation = AdaptationPolicy(min_dwell_s=dwell, teardown_hold_s=0.2, reroute_hold_s=0.1, max_reroutes=1000)
    session = active(policy=SessionPolicy(lease_s=1e6, adaptation=adaptation))
    changes = [0.03]  # activation
    now = 0.03
    for gap, feedback in steps:
        now += gap
        transition = session.observe(feedback, now)
        if transition.verdict is not Verdict.KEEP:
            changes.append(now)
        if transition.verdict is Verdict.TEARDOWN:
            assert transition.state is SessionState.WITHDRAWING
            break
        session = transition.session  # REROUTE: keep the route (re-planning found nothing new)
    gaps = [later - earlier for earlier, later in zip(changes, changes[1:], strict=False)]
    assert all(gap >= dwell - 1e-9 for gap in gaps), (gaps, dwell)
    # Counting version of the same property: at most one change in any window of one dwell time.
    assert len(changes) <= 1 + (now - 0.03) / dwell + 1


def test_feedback_outside_active_is_ignored() -> None:
    session = installing().session
    transition = session.observe(SessionFeedback(HEALTHY, HEALTHY, 0.0), now=5.0)
    assert transition.session == session and transition.verdict is Verdict.KEEP


def test_feedback_from_wire_reports() -> None:
    class Report:
        def __init__(self, packets: int, lost: int, wins: int, owd_avg_us: int) -> None:
            self.packets, self.lost, self.wins, self.owd_avg_us = packets, lost, wins, owd_avg_us

    feedback = SessionFeedback.from_reports(Report(90, 10, 30, 4000), Report(100, 0, 70, 200))
    assert feedback.standard.loss == pytest.approx(0.1) and feedback.mirror.loss == 0.0
    assert feedback.mirror_win_share == pytest.approx(0.7)
    assert feedback.standard.relative_delay_us == 4000


def test_sessions_are_immutable_values() -> None:
    session = active()
    with pytest.raises(AttributeError):
        session.state = SessionState.FAILED  # type: ignore[misc]
    assert replace(session, reason="x") != session
