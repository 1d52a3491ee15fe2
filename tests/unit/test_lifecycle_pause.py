"""The pause decision: a paused agent is never woken and never marked offline; its
applies (the pause itself turns the heartbeat off) still go out and are retried."""

from __future__ import annotations

import dataclasses

import pytest

from hub.lifecycle import decisions as lc

POLICY = lc.Policy(checkin_deadline_s=30.0, hub_started_at=0.0)
NOW = 10_000.0


def paused(**fields: object) -> lc.AgentLifecycle:
    base = lc.AgentLifecycle(
        status=lc.Status.ONLINE,
        lifecycle_generation=3,
        applied_generation=3,
        last_seen_at=NOW - 5,
        heartbeat_interval_s=60,
        link_up_since=0.0,
        paused=True,
    )
    return dataclasses.replace(base, **fields)


def wakes(actions: tuple[lc.Action, ...]) -> list[lc.Action]:
    return [
        a
        for a in actions
        if isinstance(a, lc.SendWake) or (isinstance(a, lc.QueueApply | lc.ResendApply) and a.wake)
    ]


def test_the_pause_apply_goes_out_without_a_wake_even_for_an_agent_never_seen() -> None:
    for snapshot in (paused(), paused(last_seen_at=None, status=lc.Status.PROVISIONING)):
        after, actions = lc.step(snapshot, lc.ApplyRequested(4, wake=True), POLICY, NOW)
        assert lc.QueueApply(4, wake=False) in actions and not wakes(actions)
        assert after.phase is lc.Phase.APPLYING and after.status is snapshot.status
        confirmed, _ = lc.step(after, lc.ApplyConfirmed(4), POLICY, NOW + 1)
        assert confirmed.phase is lc.Phase.IDLE and confirmed.checkin_deadline_at is None
        assert confirmed.status is snapshot.status and confirmed.applied_generation == 4


def test_silence_never_makes_a_paused_agent_offline() -> None:
    silent = paused(last_seen_at=NOW - 10 * 60)  # ten intervals of silence
    after, actions = lc.step(silent, lc.PresenceTick(), POLICY, NOW)
    assert after.status is lc.Status.ONLINE and actions == ()
    assert not lc.is_missing(silent, POLICY, NOW)


@pytest.mark.parametrize("phase", [lc.Phase.AWAITING_CHECKIN, lc.Phase.RETRY_WAKE, lc.Phase.WAKING])
def test_a_wake_outstanding_from_before_the_pause_is_dropped_not_repeated(phase: lc.Phase) -> None:
    waiting = paused(phase=phase, checkin_deadline_at=NOW - 1, wake_attempts=3)
    after, actions = lc.step(waiting, lc.DeadlineDue(NOW - 1, 3), POLICY, NOW)
    assert not wakes(actions)
    assert after.status is lc.Status.ONLINE  # not offline after the third wake
    assert after.phase is lc.Phase.IDLE or phase is lc.Phase.WAKING


def test_a_failed_apply_is_retried_without_a_wake() -> None:
    applying = paused(phase=lc.Phase.APPLYING, lifecycle_generation=4, checkin_deadline_at=NOW)
    failed, _ = lc.step(
        applying, lc.ApplyFailed(4, lc.WaitReason.GATEWAY_UNREACHABLE, "down"), POLICY, NOW
    )
    assert failed.phase is lc.Phase.RETRY_APPLY and failed.checkin_deadline_at is not None
    assert failed.checkin_deadline_at is not None
    resent, actions = lc.step(
        failed, lc.DeadlineDue(failed.checkin_deadline_at, 4), POLICY, failed.checkin_deadline_at
    )
    assert lc.ResendApply(4, wake=False) in actions and resent.phase is lc.Phase.APPLYING
    gone, _ = lc.step(resent, lc.SidecarDisconnected(), POLICY, NOW + 100)
    back, actions = lc.step(gone, lc.SidecarReconnected(), POLICY, NOW + 200)
    assert back.phase is lc.Phase.APPLYING and not wakes(actions)


def test_a_check_in_still_counts_and_resuming_starts_a_check_in_cycle() -> None:
    after, _ = lc.step(paused(last_seen_at=NOW - 100), lc.CheckIn(NOW - 1), POLICY, NOW)
    assert after.last_seen_at == NOW - 1
    resumed = dataclasses.replace(after, paused=False)
    woken, actions = lc.step(resumed, lc.ApplyRequested(4, wake=True), POLICY, NOW)
    assert lc.QueueApply(4, wake=True) in actions and woken.phase is lc.Phase.WAKING


def test_every_event_leaves_a_paused_agent_paused_and_never_wakes_it() -> None:
    events: list[lc.Event] = [
        lc.ApplyRequested(4, wake=True),
        lc.ApplyConfirmed(3),
        lc.ApplyFailed(3, lc.WaitReason.WAKE_FAILED, "x"),
        lc.WakeDelivered(3, NOW),
        lc.WakeUndeliverable(3, lc.WaitReason.WAKE_FAILED),
        lc.RunFailed(3, "x"),
        lc.CheckIn(NOW),
        lc.DeadlineDue(NOW, 3),
        lc.SidecarDisconnected(),
        lc.SidecarReconnected(),
        lc.GatewayUnreachable(),
        lc.GatewayReachable(),
        lc.RunWithoutTurn(3),
        lc.RemovalConfirmed(3),
        lc.PresenceTick(gateway_suspect=True),
    ]
    for phase in lc.Phase:
        for event in events:
            snapshot = paused(phase=phase, checkin_deadline_at=NOW - 1)
            after, actions = lc.step(snapshot, event, POLICY, NOW)
            assert after.paused and not wakes(actions), (phase, event)
            assert after.status is not lc.Status.OFFLINE, (phase, event)
            assert not lc.is_stuck(after) or after.phase is lc.Phase.IDLE, (phase, event)
    deleting, _ = lc.step(paused(), lc.DeleteRequested(), POLICY, NOW)
    assert deleting.status is lc.Status.DELETING


def test_a_paused_agents_apply_waits_for_its_gateway_and_goes_out_when_it_is_back() -> None:
    failed = paused(phase=lc.Phase.RETRY_APPLY, lifecycle_generation=4, checkin_deadline_at=NOW)
    down, actions = lc.step(failed, lc.GatewayUnreachable(), POLICY, NOW)
    assert down.reason is lc.WaitReason.GATEWAY_UNREACHABLE and down.checkin_deadline_at is None
    assert not lc.is_stuck(down)
    back, actions = lc.step(down, lc.GatewayReachable(), POLICY, NOW + 10)
    assert lc.ResendApply(4, wake=False) in actions and not wakes(actions)
    assert back.phase is lc.Phase.APPLYING and back.reason is None and back.paused
