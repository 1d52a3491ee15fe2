"""The recovery ladder as pure decisions: a quiet online agent is nudged, then woken in a
fresh session, then offline with the cause; each rung keeps the lifecycle's guarantees."""

from __future__ import annotations

import dataclasses

from hub.lifecycle.decisions import (
    AgentLifecycle,
    ApplyRequested,
    CheckIn,
    CheckInSource,
    DeadlineDue,
    LogEvent,
    Phase,
    Policy,
    PresenceTick,
    QueueApply,
    Recovery,
    RunFailed,
    SendWake,
    SidecarDisconnected,
    SidecarReconnected,
    Status,
    WakeDelivered,
    is_stuck,
    offline_reason,
)
from tests.unit.test_lifecycle import LINK_UP, NOW, POLICY, fresh, logs, run

INTERVAL = 300
QUIET_AT = NOW + 2 * INTERVAL + 1  # just past presence: two intervals of silence
DEADLINE = POLICY.checkin_deadline_s


def quiet() -> AgentLifecycle:
    return fresh(status=Status.ONLINE, last_seen_at=NOW, heartbeat_interval_s=INTERVAL)


def wakes(actions: list) -> list[SendWake]:
    return [a for a in actions if isinstance(a, SendWake)]


def nudged() -> tuple[AgentLifecycle, float]:
    """The nudge sent and delivered; returns the snapshot and when it was delivered."""
    s, actions = run(quiet(), [(QUIET_AT, PresenceTick())])
    assert wakes(actions) == [SendWake(0, 1, Recovery.NUDGED)]
    assert LogEvent.RECOVERY_NUDGE in logs(actions)
    assert (s.status, s.recovery, s.phase) == (Status.ONLINE, Recovery.NUDGED, Phase.WAKING)
    delivered = QUIET_AT + 1
    s, _ = run(s, [(delivered, WakeDelivered(0, delivered))])
    assert s.phase is Phase.AWAITING_CHECKIN and s.checkin_deadline_at == delivered + DEADLINE
    return s, delivered


def test_a_quiet_agent_is_nudged_then_woken_afresh_then_offline_with_the_cause() -> None:
    s, delivered = nudged()
    s = dataclasses.replace(s, cause="the model provider's auth expired (openai)")
    due = delivered + DEADLINE
    s, actions = run(s, [(due, DeadlineDue(due, 0))])
    assert wakes(actions) == [SendWake(0, 2, Recovery.FRESH_SESSION)]
    assert LogEvent.RECOVERY_FRESH_SESSION in logs(actions)
    assert (s.status, s.recovery) == (Status.ONLINE, Recovery.FRESH_SESSION)
    s, _ = run(s, [(due + 1, WakeDelivered(0, due + 1))])
    last = due + 1 + DEADLINE
    s, actions = run(s, [(last, DeadlineDue(last, 0))])
    assert (s.status, s.phase, s.recovery) == (Status.OFFLINE, Phase.IDLE, None)
    assert s.checkin_deadline_at is None and not wakes(actions)
    error = s.last_provision_error or ""
    assert "a nudge and a wake in a fresh session went unanswered" in error
    assert error.endswith("cause: the model provider's auth expired (openai)")
    [verdict] = [a for a in actions if getattr(a, "event", None) is LogEvent.WENT_OFFLINE]
    assert offline_reason(verdict.event.value, verdict.as_dict()) == "heartbeat_silence"
    assert not is_stuck(s)


def test_without_a_reported_cause_the_ladders_own_failed_run_is_named() -> None:
    s, delivered = nudged()
    # An error is an answer: the next rung is due at once, not at the deadline.
    s, _ = run(s, [(delivered + 2, RunFailed(0, "No API key found for provider openai"))])
    assert s.checkin_deadline_at == delivered + 2
    s, actions = run(s, [(delivered + 2, DeadlineDue(delivered + 2, 0))])
    assert wakes(actions) == [SendWake(0, 2, Recovery.FRESH_SESSION)]
    s, _ = run(s, [(delivered + 3, WakeDelivered(0, delivered + 3))])
    s, _ = run(s, [(delivered + 4, RunFailed(0, "No API key found for provider openai"))])
    s, _ = run(s, [(delivered + 4, DeadlineDue(delivered + 4, 0))])
    assert s.status is Status.OFFLINE
    assert "wake run failed: No API key found for provider openai" in (s.last_provision_error or "")


def test_any_check_in_ends_the_ladder() -> None:
    for source in CheckInSource:
        s, delivered = nudged()
        s, _ = run(s, [(delivered + 5, CheckIn(delivered + 5, source))])
        assert (s.status, s.phase, s.recovery) == (Status.ONLINE, Phase.IDLE, None)
        assert s.wake_attempts == 0 and s.checkin_deadline_at is None
        # Quiet again later: the ladder starts from its first rung.
        later = delivered + 5 + 2 * INTERVAL + 1
        _, actions = run(s, [(later, PresenceTick())])
        assert wakes(actions) == [SendWake(0, 1, Recovery.NUDGED)]


def test_an_apply_starts_a_new_cycle_and_leaves_the_ladder() -> None:
    s, delivered = nudged()
    s, actions = run(s, [(delivered + 5, ApplyRequested(1, wake=False))])
    assert s.recovery is None and QueueApply(1, True) in actions  # a wake was outstanding


def test_the_last_rung_never_blames_the_agent_for_a_path_that_is_down() -> None:
    s, delivered = nudged()
    due = delivered + DEADLINE
    s, _ = run(s, [(due, DeadlineDue(due, 0)), (due + 1, WakeDelivered(0, due + 1))])
    s, _ = run(s, [(due + 2, SidecarDisconnected())])
    last = due + 1 + DEADLINE
    s, _ = run(s, [(last, DeadlineDue(last, 0))])
    assert s.status is Status.ONLINE and s.recovery is Recovery.FRESH_SESSION  # held
    back = last + 5
    s, _ = run(s, [(back, SidecarReconnected())])
    assert s.checkin_deadline_at is not None and s.checkin_deadline_at >= back
    # Buffered check-ins may still be arriving: nothing is judged within the grace.
    at = s.checkin_deadline_at
    s, _ = run(s, [(at, DeadlineDue(at, 0))])
    assert s.status is Status.OFFLINE and s.recovery is None


def test_the_last_rung_blames_the_gateway_when_most_of_its_agents_fall_silent() -> None:
    s, delivered = nudged()
    due = delivered + DEADLINE
    s, _ = run(s, [(due, DeadlineDue(due, 0)), (due + 1, WakeDelivered(0, due + 1))])
    last = due + 1 + DEADLINE
    s, actions = run(s, [(last, DeadlineDue(last, 0, gateway_suspect=True))])
    assert s.status is Status.ONLINE and not wakes(actions)
    assert "most agents on this gateway" in (s.last_provision_error or "")


def test_the_ladder_never_starts_for_what_it_cannot_see() -> None:
    for changes in (
        {"link_up_since": None},
        {"link_up_since": QUIET_AT - 1},  # the sidecar just reconnected
        {"heartbeat_interval_s": 0},
        {"paused": True},
    ):
        s = dataclasses.replace(quiet(), **changes)  # type: ignore[arg-type]
        after, actions = run(s, [(QUIET_AT, PresenceTick())])
        assert after.recovery is None and not wakes(actions), changes
    _, actions = run(quiet(), [(QUIET_AT, PresenceTick(gateway_suspect=True))])
    assert not wakes(actions)
    assert LINK_UP < QUIET_AT


def test_a_policy_without_the_ladder_goes_offline_at_once() -> None:
    s, actions = run(quiet(), [(QUIET_AT, PresenceTick())], Policy(recovery_ladder=False))
    assert s.status is Status.OFFLINE and not wakes(actions)
