"""The lifecycle's decisions, rule by rule, then over random event sequences."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hub.lifecycle.decisions import (
    Action,
    AgentLifecycle,
    ApplyConfirmed,
    ApplyFailed,
    ApplyRequested,
    CancelDeadline,
    CheckIn,
    CheckInSource,
    CommandFacts,
    CommandKind,
    DeadlineDue,
    DeleteRequested,
    Event,
    ForgetAgent,
    GatewayReachable,
    GatewayUnreachable,
    Log,
    LogEvent,
    Phase,
    Policy,
    PresenceTick,
    QueueApply,
    Recovery,
    RemovalConfirmed,
    RemovalRefused,
    ResendApply,
    ResultFacts,
    ResultOutcome,
    RunFailed,
    RunWithoutTurn,
    ScheduleDeadline,
    SendWake,
    SidecarDisconnected,
    SidecarReconnected,
    Status,
    WaitReason,
    WakeDelivered,
    WakeUndeliverable,
    confirmation_events,
    gateway_suspect,
    is_missing,
    is_stuck,
    path_down,
    result_events,
    run_event,
    step,
    wait_reason,
)
from protos.contract import GatewayErrorKind

POLICY = Policy()
T0 = 1_000_000.0  # hub start; agents below are created well after the restart grace
NOW = T0 + 3600.0
LINK_UP = NOW - 3600.0  # link up long enough that reconnect grace does not interfere
UNREACHABLE = WaitReason.GATEWAY_UNREACHABLE
BUSY = WaitReason.GATEWAY_BUSY


def fresh(**changes: object) -> AgentLifecycle:
    return dataclasses.replace(AgentLifecycle(link_up_since=LINK_UP), **changes)  # type: ignore[arg-type]


def run(
    snapshot: AgentLifecycle,
    events: Sequence[tuple[float, Event]],
    policy: Policy = POLICY,
) -> tuple[AgentLifecycle, list[Action]]:
    actions: list[Action] = []
    for at, event in events:
        snapshot, produced = step(snapshot, event, policy, at)
        actions.extend(produced)
    return snapshot, actions


def logs(actions: Sequence[Action]) -> list[LogEvent]:
    return [a.event for a in actions if isinstance(a, Log)]


def commands(actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, QueueApply | ResendApply | SendWake)]


def provisioned_and_woken(at: float = NOW) -> AgentLifecycle:
    """A new agent whose first wake was delivered at `at`."""
    snapshot, _ = run(
        fresh(),
        [
            (at, ApplyRequested(1, wake=True)),
            (at, ApplyConfirmed(1)),
            (at, WakeDelivered(1, at)),
        ],
    )
    return snapshot


def deadline_passes(snapshot: AgentLifecycle, **due: object) -> tuple[AgentLifecycle, list[Action]]:
    assert snapshot.checkin_deadline_at is not None
    at = snapshot.checkin_deadline_at
    event = DeadlineDue(at, snapshot.lifecycle_generation, **due)  # type: ignore[arg-type]
    return run(snapshot, [(at, event)])


def deliver_pending_wake(snapshot: AgentLifecycle, at: float) -> AgentLifecycle:
    snapshot, _ = run(snapshot, [(at, WakeDelivered(snapshot.lifecycle_generation, at))])
    return snapshot


# ------------------------------------------------------------------- policy


def test_policy_constants() -> None:
    assert POLICY.checkin_deadline_s == 30 and POLICY.max_wakes == 3
    assert POLICY.offline_after_s(600) == 1200  # 2 x the agent's interval, not a fixed 10 min
    assert POLICY.offline_after_s(3600) == 7200
    assert POLICY.offline_after_s(0) is None  # heartbeats off: presence cannot be judged
    assert POLICY.restart_grace_s == 60  # two check-in windows
    assert [POLICY.retry_delay_s(n) for n in range(1, 7)] == [30, 60, 120, 240, 300, 300]


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Policy(max_wakes=0)
    with pytest.raises(ValueError):
        Policy(checkin_deadline_s=0)


@pytest.mark.parametrize(
    ("missed", "total", "suspect"),
    [(0, 0, False), (1, 1, False), (2, 2, False), (3, 3, True), (3, 5, True), (3, 6, False),
     (51, 100, True), (50, 100, False), (5, 0, False)],
)  # fmt: skip
def test_gateway_suspect_needs_more_than_half_and_a_minimum(
    missed: int, total: int, suspect: bool
) -> None:
    assert gateway_suspect(missed, total, POLICY) is suspect


# -------------------------------------------------------------- provisioning


def test_new_agent_is_always_woken_even_if_not_asked() -> None:
    snapshot, actions = run(fresh(), [(NOW, ApplyRequested(1, wake=False))])
    assert commands(actions) == [QueueApply(1, wake=True)]
    assert snapshot.status is Status.PROVISIONING and snapshot.phase is Phase.WAKING
    assert LogEvent.ENQUEUED in logs(actions)


def test_queued_wake_waits_for_the_sidecar_not_for_a_checkin() -> None:
    snapshot, actions = run(fresh(), [(NOW, ApplyRequested(1, wake=True))])
    assert ScheduleDeadline(NOW + 30, 1) in actions  # how long to wait for the result
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == []  # no wake was delivered, so none is repeated
    assert LogEvent.DEFERRED in logs(actions)
    assert snapshot.wake_attempts == 0 and snapshot.checkin_deadline_at == NOW + 60


def test_status_is_not_online_merely_because_provisioning_succeeded() -> None:
    snapshot = provisioned_and_woken()
    assert snapshot.status is Status.PROVISIONING
    assert snapshot.applied_generation == 1


def test_checkin_deadline_starts_at_the_delivered_wake() -> None:
    snapshot, actions = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW + 5, ApplyConfirmed(1)),
            (NOW + 5, WakeDelivered(1, NOW + 4)),
        ],
    )
    assert snapshot.phase is Phase.AWAITING_CHECKIN
    assert snapshot.wake_attempts == 1 and snapshot.last_wake_sent_at == NOW + 4
    assert snapshot.checkin_deadline_at == NOW + 34
    assert actions[-1] == ScheduleDeadline(NOW + 34, 1)


def test_checkin_after_wake_resets_attempts_and_clears_deadline() -> None:
    snapshot, actions = run(provisioned_and_woken(), [(NOW + 10, CheckIn(NOW + 10))])
    assert snapshot.status is Status.ONLINE and snapshot.phase is Phase.IDLE
    assert snapshot.wake_attempts == 0 and snapshot.checkin_deadline_at is None
    assert snapshot.last_seen_at == NOW + 10
    assert CancelDeadline() in actions


def test_run_final_is_a_checkin() -> None:
    snapshot, _ = run(provisioned_and_woken(), [(NOW + 7, CheckIn(NOW + 7, CheckInSource.WAKE))])
    assert snapshot.status is Status.ONLINE and snapshot.checkin_deadline_at is None


def test_checkin_older_than_the_wake_does_not_answer_it() -> None:
    woken = provisioned_and_woken(NOW)
    snapshot, _ = run(woken, [(NOW + 1, CheckIn(NOW - 5))])
    assert snapshot.phase is Phase.AWAITING_CHECKIN and snapshot.wake_attempts == 1
    assert snapshot.status is Status.ONLINE  # it is alive, but the wake is still unanswered
    assert snapshot.checkin_deadline_at == NOW + 30


def test_checkin_that_beats_the_delivery_report_answers_the_wake() -> None:
    snapshot, _ = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW + 2, CheckIn(NOW + 2)),
            (NOW + 3, WakeDelivered(1, NOW + 1)),
        ],
    )
    assert snapshot.phase is Phase.IDLE and snapshot.status is Status.ONLINE
    assert snapshot.wake_attempts == 0


# -------------------------------------------------------------------- re-wake


def test_deadline_without_checkin_wakes_again_with_same_generation_and_token() -> None:
    snapshot, actions = deadline_passes(provisioned_and_woken())
    assert commands(actions) == [SendWake(generation=1, attempt=2)]  # no new apply, no new token
    assert snapshot.lifecycle_generation == 1 and snapshot.phase is Phase.WAKING
    assert LogEvent.RETRIGGERED in logs(actions)


def test_three_unanswered_wakes_mark_offline_with_error() -> None:
    snapshot = provisioned_and_woken()
    for attempt in (2, 3):
        snapshot, actions = deadline_passes(snapshot)
        assert commands(actions) == [SendWake(1, attempt)]
        snapshot = deliver_pending_wake(snapshot, snapshot.checkin_deadline_at or 0)
    assert snapshot.wake_attempts == 3
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == []
    assert snapshot.status is Status.OFFLINE and snapshot.phase is Phase.IDLE
    assert "max wake attempts reached" in (snapshot.last_provision_error or "")
    assert LogEvent.MAX_ATTEMPTS_REACHED in logs(actions)
    assert CancelDeadline() in actions
    assert not is_stuck(snapshot)


def test_checkin_after_giving_up_brings_the_agent_back() -> None:
    snapshot = fresh(status=Status.OFFLINE, last_provision_error="gave up", last_seen_at=NOW - 99)
    snapshot, actions = run(snapshot, [(NOW, CheckIn(NOW))])
    assert snapshot.status is Status.ONLINE and snapshot.last_provision_error is None
    assert LogEvent.CHECKED_IN in logs(actions)


def test_a_failed_run_is_an_answer_the_verdict_is_due_at_once() -> None:
    snapshot, actions = run(
        provisioned_and_woken(), [(NOW + 3, RunFailed(1, "No route-compatible auth"))]
    )
    assert snapshot.reason is WaitReason.WAKE_FAILED
    assert snapshot.checkin_deadline_at == NOW + 3  # not NOW + 30
    assert ScheduleDeadline(NOW + 3, 1) in actions and LogEvent.RUN_FAILED in logs(actions)
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == [SendWake(1, 2)]  # the next attempt, at once


def test_a_failed_third_run_goes_offline_at_once_with_its_error() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, _ = run(snapshot, [(NOW + 12, RunFailed(1, "No route-compatible auth"))])
    snapshot, actions = deadline_passes(snapshot)
    assert snapshot.status is Status.OFFLINE and commands(actions) == []
    assert "No route-compatible auth" in (snapshot.last_provision_error or "")


def test_a_failed_run_of_an_earlier_wake_does_not_answer_the_latest() -> None:
    snapshot = provisioned_and_woken()
    snapshot, _ = run(snapshot, [(NOW + 40, RunFailed(1, "connection refused", latest=False))])
    assert snapshot.checkin_deadline_at == NOW + 30  # the latest wake keeps its deadline
    assert "connection refused" in (snapshot.last_provision_error or "")


def test_a_failed_run_still_waits_out_the_restart_grace() -> None:
    restarted = Policy(hub_started_at=NOW)
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, _ = run(snapshot, [(NOW + 2, RunFailed(1, "boom"))], restarted)
    snapshot, actions = run(snapshot, [(NOW + 2, DeadlineDue(NOW + 2, 1))], restarted)
    assert snapshot.status is Status.PROVISIONING and commands(actions) == []
    assert snapshot.checkin_deadline_at == NOW + restarted.restart_grace_s


def test_a_failed_run_after_the_gateway_came_back_is_judged_at_once() -> None:
    # 2026.3 restarts itself on some config writes: the run that fails after it is back
    # is the answer the gateway's grace waits for.
    back = dataclasses.replace(provisioned_and_woken(), gateway_up_since=NOW + 1)
    snapshot, _ = run(back, [(NOW + 2, RunFailed(1, "401 Incorrect API key"))])
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == [SendWake(1, 2)]
    silent, actions = run(back, [(NOW + 31, DeadlineDue(NOW + 30, 1))])
    assert commands(actions) == []  # silence is still judged only after the grace
    assert silent.checkin_deadline_at == NOW + 1 + POLICY.restart_grace_s


# ------------------------------------------------- a check-in is evidence


def test_a_run_final_without_a_model_turn_is_not_a_checkin() -> None:
    woken = provisioned_and_woken()
    event = run_event(
        final=True, model_turn=False, generation=1, message="", at=NOW + 2, latest=True
    )
    assert isinstance(event, RunWithoutTurn)
    snapshot, actions = run(woken, [(NOW + 2, event)])
    assert snapshot.status is Status.PROVISIONING and snapshot.last_seen_at is None
    assert snapshot.checkin_deadline_at == NOW + 30  # no answer either: the deadline stands
    assert LogEvent.RUN_WITHOUT_TURN in logs(actions)
    assert "without a model turn" in (snapshot.last_provision_error or "")


@pytest.mark.parametrize(
    ("final", "model_turn", "expected"),
    [(True, True, CheckIn), (True, False, RunWithoutTurn), (False, True, RunFailed),
     (False, False, RunFailed)],
)  # fmt: skip
def test_run_event_needs_a_model_turn_for_a_checkin(
    final: bool, model_turn: bool, expected: type
) -> None:
    event = run_event(
        final=final, model_turn=model_turn, generation=1, message="m", at=NOW, latest=True
    )
    assert type(event) is expected
    if isinstance(event, CheckIn):
        assert event.source is CheckInSource.WAKE


# ---------------------------------------------------------- undeliverable wakes


def test_wake_not_counted_while_sidecar_disconnected() -> None:
    snapshot = fresh(link_up_since=None)
    snapshot, actions = run(snapshot, [(NOW, ApplyRequested(1, wake=True))])
    assert snapshot.reason is WaitReason.SIDECAR_DISCONNECTED
    assert snapshot.checkin_deadline_at is None and snapshot.wake_attempts == 0
    assert QueueApply(1, wake=True) in actions  # the outbox delivers it on reconnect
    snapshot, actions = run(snapshot, [(NOW + 600, SidecarReconnected())])
    assert snapshot.reason is None and snapshot.checkin_deadline_at == NOW + 630
    assert commands(actions) == []  # replayed by the outbox, not sent twice
    snapshot = deliver_pending_wake(snapshot, NOW + 601)
    assert snapshot.wake_attempts == 1


def test_undeliverable_wake_is_not_an_attempt_and_waits_for_the_sidecars_retry() -> None:
    snapshot, actions = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW + 1, ApplyConfirmed(1)),
            (NOW + 1, WakeUndeliverable(1, UNREACHABLE, "gateway refused the connection")),
        ],
    )
    assert snapshot.wake_attempts == 0 and snapshot.reason is UNREACHABLE
    assert snapshot.phase is Phase.WAKING  # the sidecar retries the command in place
    assert snapshot.last_provision_error == "gateway refused the connection"
    assert snapshot.checkin_deadline_at == NOW + 31
    assert LogEvent.WAKE_UNDELIVERABLE in logs(actions)
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == []  # no copy from the hub: it would be a second wake
    snapshot = deliver_pending_wake(snapshot, NOW + 40)  # the sidecar's retry landed
    assert snapshot.phase is Phase.AWAITING_CHECKIN and snapshot.wake_attempts == 1


def test_a_wake_the_sidecar_gave_up_on_is_resent_by_the_hub_with_backoff() -> None:
    snapshot, _ = run(fresh(), [(NOW, ApplyRequested(1, wake=True)), (NOW, ApplyConfirmed(1))])
    delays = []
    for _ in range(6):
        at = snapshot.checkin_deadline_at or NOW
        refused = WakeUndeliverable(1, WaitReason.WAKE_FAILED, "refused", permanent=True)
        snapshot, _ = run(snapshot, [(at, refused)])
        assert snapshot.phase is Phase.RETRY_WAKE and snapshot.checkin_deadline_at is not None
        delays.append(snapshot.checkin_deadline_at - at)
        snapshot, actions = deadline_passes(snapshot)
        assert commands(actions) == [SendWake(1, attempt=1)]  # the apply landed: only the wake
    assert delays == [30, 60, 120, 240, 300, 300]
    assert snapshot.wake_attempts == 0


def test_a_late_delivery_of_a_wake_given_up_on_is_counted_not_repeated() -> None:
    snapshot, _ = run(fresh(), [(NOW, ApplyRequested(1, wake=True)), (NOW, ApplyConfirmed(1))])
    refused = WakeUndeliverable(1, WaitReason.WAKE_FAILED, "refused", permanent=True)
    snapshot, _ = run(snapshot, [(NOW + 1, refused), (NOW + 5, WakeDelivered(1, NOW + 4))])
    assert snapshot.phase is Phase.AWAITING_CHECKIN and snapshot.wake_attempts == 1
    snapshot, _ = run(snapshot, [(NOW + 6, CheckIn(NOW + 6, CheckInSource.WAKE))])
    assert snapshot.status is Status.ONLINE and snapshot.phase is Phase.IDLE
    assert snapshot.checkin_deadline_at is None  # nothing left to resend: no extra wake


def test_failed_apply_is_retried_by_the_sidecar_not_resent() -> None:
    snapshot, actions = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW + 1, ApplyFailed(1, UNREACHABLE, "gateway down")),
        ],
    )
    assert snapshot.status is Status.PROVISIONING and snapshot.reason is UNREACHABLE
    assert snapshot.phase is Phase.WAKING
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == []


def test_an_apply_to_resend_is_resent_unchanged_not_rerendered() -> None:
    # A row from before sidecars retried in place (or a cycle answered before its apply).
    waiting = fresh(lifecycle_generation=1, phase=Phase.RETRY_WAKE, checkin_deadline_at=NOW)
    snapshot, actions = run(waiting, [(NOW, DeadlineDue(NOW, 1))])
    assert commands(actions) == [ResendApply(1, wake=True)]  # it holds the token file
    assert snapshot.phase is Phase.WAKING


def test_failed_rewake_waits_for_the_sidecar_under_current_generation() -> None:
    # The reference's defect #4: a failed re-wake left the agent `updating` forever.
    online = fresh(status=Status.ONLINE, last_seen_at=NOW - 5, lifecycle_generation=4,
                   applied_generation=4)  # fmt: skip
    snapshot, _ = run(
        online,
        [
            (NOW, ApplyRequested(5, wake=True)),
            (NOW, ApplyConfirmed(5)),
            (NOW, WakeDelivered(5, NOW)),
        ],
    )
    assert snapshot.status is Status.UPDATING
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == [SendWake(5, 2)]
    snapshot, actions = run(snapshot, [(NOW + 31, WakeUndeliverable(5, UNREACHABLE, "boom"))])
    assert snapshot.status is Status.UPDATING and snapshot.reason is UNREACHABLE
    assert actions[-1] == ScheduleDeadline(NOW + 61, 5)  # same generation: not dropped as stale
    assert not is_stuck(snapshot)
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == []  # the sidecar still holds SendWake(5, 2)
    snapshot = deliver_pending_wake(snapshot, NOW + 70)
    assert snapshot.wake_attempts == 2 and snapshot.phase is Phase.AWAITING_CHECKIN


def test_permanently_refused_apply_leaves_a_clear_state() -> None:
    refused = ApplyFailed(1, UNREACHABLE, "bad file", permanent=True)
    snapshot, _ = run(fresh(), [(NOW, ApplyRequested(1, wake=True)), (NOW, refused)])
    assert snapshot.status is Status.OFFLINE and snapshot.phase is Phase.IDLE
    assert snapshot.last_provision_error == "bad file" and snapshot.checkin_deadline_at is None


# ------------------------------------------------------------- disconnection


def test_never_offline_while_sidecar_disconnected() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, actions = run(snapshot, [(NOW + 5, SidecarDisconnected())])
    assert snapshot.reason is WaitReason.SIDECAR_DISCONNECTED
    assert snapshot.checkin_deadline_at is None and CancelDeadline() in actions
    # A deadline event that was already in flight changes nothing.
    snapshot, _ = run(snapshot, [(NOW + 31, DeadlineDue(NOW + 30, 1))])
    assert snapshot.status is Status.PROVISIONING
    snapshot, _ = run(snapshot, [(NOW + 9999, PresenceTick())])
    assert snapshot.status is Status.PROVISIONING


def test_deadline_of_a_row_loaded_after_restart_waits_for_the_sidecar() -> None:
    # After a hub restart rows keep their deadlines, but no sidecar has said Hello yet.
    loaded = dataclasses.replace(provisioned_and_woken(), wake_attempts=3, link_up_since=None)
    snapshot, actions = run(loaded, [(NOW + 30, DeadlineDue(NOW + 30, 1))])
    assert snapshot.status is Status.PROVISIONING and commands(actions) == []
    assert snapshot.reason is WaitReason.SIDECAR_DISCONNECTED
    assert snapshot.checkin_deadline_at is None and CancelDeadline() in actions


def test_reconnect_gives_buffered_heartbeats_a_grace_before_any_verdict() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, _ = run(
        snapshot, [(NOW + 5, SidecarDisconnected()), (NOW + 500, SidecarReconnected())]
    )
    assert snapshot.reason is None
    assert snapshot.checkin_deadline_at == NOW + 500 + POLICY.restart_grace_s
    snapshot, _ = run(snapshot, [(NOW + 501, CheckIn(NOW + 20))])  # buffered while we were apart
    assert snapshot.status is Status.ONLINE and snapshot.phase is Phase.IDLE


def test_online_agent_keeps_its_status_across_a_disconnect() -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW)
    snapshot, actions = run(snapshot, [(NOW, SidecarDisconnected())])
    assert snapshot.reason is None and snapshot.status is Status.ONLINE and actions == []


def test_reconnect_resends_what_the_sidecar_gave_up_on_at_once() -> None:
    snapshot, _ = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW, ApplyConfirmed(1)),
            (NOW, WakeUndeliverable(1, UNREACHABLE, "refused", permanent=True)),
            (NOW + 1, SidecarDisconnected()),
        ],
    )
    snapshot, actions = run(snapshot, [(NOW + 2, SidecarReconnected())])
    assert commands(actions) == [SendWake(1, attempt=1)]
    assert snapshot.phase is Phase.WAKING and snapshot.checkin_deadline_at == NOW + 32


def test_reconnect_waits_for_the_replayed_command() -> None:
    snapshot, _ = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW, ApplyFailed(1, UNREACHABLE, "down")),
            (NOW + 1, SidecarDisconnected()),
        ],
    )
    snapshot, actions = run(snapshot, [(NOW + 2, SidecarReconnected())])
    assert commands(actions) == []  # the outbox replays it
    assert snapshot.phase is Phase.WAKING and snapshot.checkin_deadline_at == NOW + 32


# ------------------------------------------------------------ stale and grace


def test_stale_deadline_is_harmless() -> None:
    snapshot = provisioned_and_woken()
    again, actions = run(snapshot, [(NOW + 999, DeadlineDue(NOW - 100, 0))])
    assert again == snapshot
    assert logs(actions) == [LogEvent.SKIP_NOT_STUCK]


def test_early_deadline_is_deferred_and_rescheduled() -> None:
    snapshot = provisioned_and_woken()
    again, actions = run(snapshot, [(NOW + 10, DeadlineDue(NOW + 10, 1))])
    assert again == snapshot
    assert actions == [
        Log(LogEvent.DEFERRED, (("why", "not due yet"), ("due_at", NOW + 30))),
        ScheduleDeadline(NOW + 30, 1),
    ]


def test_deadline_after_checkin_is_skipped_as_not_stuck() -> None:
    snapshot, _ = run(provisioned_and_woken(), [(NOW + 3, CheckIn(NOW + 3))])
    again, actions = run(snapshot, [(NOW + 30, DeadlineDue(NOW + 30, 1))])
    assert again == snapshot and logs(actions) == [LogEvent.SKIP_NOT_STUCK]


def test_stale_results_of_older_generations_are_ignored() -> None:
    snapshot = provisioned_and_woken()
    snapshot, _ = run(snapshot, [(NOW + 1, ApplyRequested(2, wake=True))])
    for event in (WakeDelivered(1, NOW + 2), WakeUndeliverable(1, UNREACHABLE), RunFailed(1, "x")):
        again, actions = run(snapshot, [(NOW + 2, event)])
        assert again == snapshot and logs(actions) == [LogEvent.STALE_EVENT]


def test_apply_generation_never_goes_back() -> None:
    snapshot = fresh(lifecycle_generation=7, applied_generation=7, status=Status.ONLINE,
                     last_seen_at=NOW)  # fmt: skip
    for generation in (7, 3):
        again, actions = run(snapshot, [(NOW, ApplyRequested(generation, wake=True))])
        assert again == snapshot and commands(actions) == []


def test_restart_grace_defers_the_offline_verdict() -> None:
    restarted = Policy(hub_started_at=NOW + 20)
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, actions = run(snapshot, [(NOW + 30, DeadlineDue(NOW + 30, 1))], restarted)
    assert snapshot.status is Status.PROVISIONING
    assert snapshot.checkin_deadline_at == NOW + 20 + 60
    assert LogEvent.DEFERRED in logs(actions)
    snapshot, actions = run(snapshot, [(NOW + 80, DeadlineDue(NOW + 80, 1))], restarted)
    assert snapshot.status is Status.OFFLINE


def test_gateway_suspect_blames_the_gateway_not_the_agent() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, actions = deadline_passes(snapshot, gateway_suspect=True)
    assert snapshot.status is Status.PROVISIONING
    assert snapshot.reason is WaitReason.GATEWAY_UNREACHABLE
    assert snapshot.checkin_deadline_at is not None and snapshot.checkin_deadline_at > NOW + 30
    assert commands(actions) == []
    snapshot, _ = deadline_passes(snapshot, gateway_suspect=False)
    assert snapshot.status is Status.OFFLINE


# --------------------------------------------------------- updates, presence


def test_apply_without_wake_on_a_live_agent_returns_to_online() -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW - 10, lifecycle_generation=2,
                     applied_generation=2)  # fmt: skip
    snapshot, actions = run(snapshot, [(NOW, ApplyRequested(3, wake=False))])
    assert commands(actions) == [QueueApply(3, wake=False)]
    assert snapshot.status is Status.UPDATING and snapshot.phase is Phase.APPLYING
    snapshot, actions = run(snapshot, [(NOW + 1, ApplyConfirmed(3))])
    assert snapshot.status is Status.ONLINE and snapshot.phase is Phase.IDLE
    assert CancelDeadline() in actions


def test_failed_apply_without_wake_waits_for_the_sidecars_retry() -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW, lifecycle_generation=2,
                     applied_generation=2)  # fmt: skip
    snapshot, _ = run(
        snapshot, [(NOW, ApplyRequested(3, wake=False)), (NOW, ApplyFailed(3, BUSY, "busy"))]
    )
    assert snapshot.phase is Phase.APPLYING and snapshot.reason is BUSY
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == []
    snapshot, _ = run(snapshot, [(NOW + 40, ApplyConfirmed(3))])
    assert snapshot.status is Status.ONLINE and snapshot.phase is Phase.IDLE


def test_apply_during_a_wake_cycle_carries_the_wake_and_starts_a_new_cycle() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=2)
    snapshot, actions = run(snapshot, [(NOW + 5, ApplyRequested(2, wake=False))])
    assert commands(actions) == [QueueApply(2, wake=True)]
    assert snapshot.wake_attempts == 0 and snapshot.lifecycle_generation == 2


def test_without_the_ladder_presence_goes_offline_after_two_intervals_of_silence() -> None:
    policy = Policy(recovery_ladder=False)
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW, heartbeat_interval_s=300)
    same, _ = run(snapshot, [(NOW + 600, PresenceTick())], policy)
    assert same.status is Status.ONLINE
    snapshot, actions = run(snapshot, [(NOW + 601, PresenceTick())], policy)
    assert snapshot.status is Status.OFFLINE
    assert "no check-in for 601 s" in (snapshot.last_provision_error or "")
    assert LogEvent.WENT_OFFLINE in logs(actions)


@pytest.mark.parametrize(
    "snapshot_changes",
    [
        {"heartbeat_interval_s": 0},  # heartbeats off
        {"link_up_since": None},  # sidecar disconnected
        {"link_up_since": NOW + 1990},  # just reconnected
    ],
)
def test_presence_never_judges_what_it_cannot_see(snapshot_changes: dict[str, object]) -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW, heartbeat_interval_s=300)
    snapshot = dataclasses.replace(snapshot, **snapshot_changes)  # type: ignore[arg-type]
    after, _ = run(snapshot, [(NOW + 2000, PresenceTick())])
    assert after.status is Status.ONLINE


def test_presence_holds_when_the_gateway_is_suspect() -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW, heartbeat_interval_s=300)
    after, _ = run(snapshot, [(NOW + 2000, PresenceTick(gateway_suspect=True))])
    assert after.status is Status.ONLINE


def test_is_missing_counts_unanswered_wakes_and_silent_agents() -> None:
    woken = provisioned_and_woken()
    assert not is_missing(woken, POLICY, NOW + 29)
    assert is_missing(woken, POLICY, NOW + 30)
    silent = fresh(status=Status.ONLINE, last_seen_at=NOW, heartbeat_interval_s=300)
    assert not is_missing(silent, POLICY, NOW + 600)
    assert is_missing(silent, POLICY, NOW + 601)


def test_delete_stops_everything() -> None:
    snapshot, actions = run(provisioned_and_woken(), [(NOW + 1, DeleteRequested())])
    assert snapshot.status is Status.DELETING and CancelDeadline() in actions
    for event in (
        DeadlineDue(NOW + 30, 1),
        CheckIn(NOW + 2),
        ApplyRequested(9, wake=True),
        PresenceTick(),
    ):
        after, actions = run(snapshot, [(NOW + 40, event)])
        assert after.status is Status.DELETING and commands(actions) == []


def test_a_row_that_was_never_applied_counts_as_stuck() -> None:
    assert is_stuck(AgentLifecycle())
    assert not is_stuck(provisioned_and_woken())


# ------------------------------------------------ the gateway is blamed, not the agent


def test_never_offline_while_the_gateway_is_known_unreachable() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, actions = run(snapshot, [(NOW + 5, GatewayUnreachable())])
    assert snapshot.reason is UNREACHABLE and snapshot.checkin_deadline_at is None
    assert CancelDeadline() in actions and not is_stuck(snapshot)
    for event in (DeadlineDue(NOW + 30, 1), PresenceTick(), RunFailed(1, "aborted")):
        held, actions = run(snapshot, [(NOW + 31, event)])
        assert held.status is Status.PROVISIONING and commands(actions) == []


def test_a_gateway_back_gets_the_grace_before_any_verdict() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=3)
    snapshot, _ = run(snapshot, [(NOW + 5, GatewayUnreachable()), (NOW + 26, GatewayReachable())])
    assert snapshot.reason is None
    assert snapshot.checkin_deadline_at == NOW + 26 + POLICY.restart_grace_s
    snapshot, _ = deadline_passes(snapshot)
    assert snapshot.status is Status.OFFLINE


def test_presence_waits_for_an_unreachable_gateway() -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW, heartbeat_interval_s=300)
    snapshot, _ = run(snapshot, [(NOW + 1, GatewayUnreachable()), (NOW + 2000, PresenceTick())])
    assert snapshot.status is Status.ONLINE
    snapshot, _ = run(snapshot, [(NOW + 2001, GatewayReachable())])
    same, _ = run(snapshot, [(NOW + 2002, PresenceTick())])
    assert same.status is Status.ONLINE  # within the grace after the gateway came back
    later, actions = run(snapshot, [(NOW + 2001 + POLICY.restart_grace_s, PresenceTick())])
    assert later.recovery is Recovery.NUDGED  # judged now: the ladder's first rung
    assert [a for a in actions if isinstance(a, SendWake)] == [SendWake(0, 1, Recovery.NUDGED)]


def test_a_disconnected_sidecar_stays_the_reason_over_its_gateway() -> None:
    snapshot, _ = run(
        provisioned_and_woken(), [(NOW + 1, SidecarDisconnected()), (NOW + 2, GatewayUnreachable())]
    )
    assert snapshot.reason is WaitReason.SIDECAR_DISCONNECTED
    snapshot, _ = run(snapshot, [(NOW + 3, SidecarReconnected())])
    assert snapshot.reason is UNREACHABLE and snapshot.checkin_deadline_at is None


# ------------------------------------------- every outcome advances the lifecycle

APPLY_WAKE = CommandFacts(CommandKind.APPLY, 1, wakes=True, queued_at=NOW - 1)
APPLY = CommandFacts(CommandKind.APPLY, 1, queued_at=NOW - 1)
WAKE = CommandFacts(CommandKind.WAKE, 1, queued_at=NOW - 1)
REMOVE = CommandFacts(CommandKind.REMOVE, 1, queued_at=NOW - 1)


def waiting_on(command: CommandFacts) -> AgentLifecycle:
    """An agent whose lifecycle waits for `command`'s outcome, as the hub queued it."""
    if command.kind is CommandKind.REMOVE:
        snapshot, _ = run(provisioned_and_woken(NOW - 10), [(NOW - 1, DeleteRequested())])
        return snapshot
    if command.kind is CommandKind.WAKE:
        snapshot, _ = deadline_passes(provisioned_and_woken(NOW - 31))
        return snapshot
    seen = fresh(status=Status.ONLINE, last_seen_at=NOW - 5, lifecycle_generation=0)
    snapshot, _ = run(seen, [(NOW - 1, ApplyRequested(1, wake=command.wakes))])
    return snapshot


def moved_on(before: AgentLifecycle, after: AgentLifecycle, actions: list[Action]) -> bool:
    """The outcome was taken: the lifecycle no longer waits for that command's result."""
    if before.status is Status.DELETING:
        return any(isinstance(a, ForgetAgent) for a in actions)
    return after.phase is not before.phase or after.wake_attempts != before.wake_attempts


RESULTS = [
    ResultFacts(ResultOutcome.APPLIED, wake_delivered=True, observed_at=NOW),
    ResultFacts(ResultOutcome.APPLIED, observed_at=NOW),
    ResultFacts(ResultOutcome.ALREADY_APPLIED, observed_at=NOW),
    ResultFacts(ResultOutcome.REJECTED, error_kind=GatewayErrorKind.PERMANENT, error="no"),
    ResultFacts(ResultOutcome.FAILED, error_kind=GatewayErrorKind.RETRY, error="busy"),
    ResultFacts(ResultOutcome.FAILED, error_kind=GatewayErrorKind.UNREACHABLE, error="down"),
    ResultFacts(ResultOutcome.FAILED, error_code="gateway_unreachable", error="old sidecar"),
]


@pytest.mark.parametrize("command", [APPLY_WAKE, APPLY, WAKE, REMOVE], ids=str)
@pytest.mark.parametrize("result", RESULTS, ids=lambda r: f"{r.outcome}-{r.error_kind.name}")
def test_every_command_result_advances_the_lifecycle(
    command: CommandFacts, result: ResultFacts
) -> None:
    if command.kind is CommandKind.WAKE and result.outcome is ResultOutcome.APPLIED:
        result = dataclasses.replace(result, wake_delivered=True)  # a wake APPLIED is delivered
    before = waiting_on(command)
    after, actions = run(before, [(NOW, e) for e in result_events(command, result)])
    assert not is_stuck(after)
    if result.outcome is ResultOutcome.FAILED:
        # The sidecar keeps it and retries in place: still waiting, saying why.
        if before.status is not Status.DELETING:
            assert after.phase is before.phase and after.reason is not None
            assert commands(actions) == []  # no copy of it from the hub
        return
    if command.kind is CommandKind.WAKE and result.outcome is ResultOutcome.ALREADY_APPLIED:
        return  # superseded by a newer generation, which has its own command
    assert moved_on(before, after, actions), (before, after)


@pytest.mark.parametrize("command", [APPLY_WAKE, APPLY, WAKE, REMOVE], ids=str)
@pytest.mark.parametrize("inventory", [None, 0, 1, 2], ids=lambda g: f"inventory-{g}")
def test_every_command_confirmed_by_a_hello_advances_the_lifecycle(
    command: CommandFacts, inventory: int | None
) -> None:
    """The result was lost (hub or sidecar restarted); the Hello says it was processed."""
    before = waiting_on(command)
    disconnected, _ = run(before, [(NOW, SidecarDisconnected())])
    events = confirmation_events(command, inventory)
    after, actions = run(disconnected, [(NOW + 1, e) for e in events])
    after, more = run(after, [(NOW + 1, SidecarReconnected())])
    actions += more
    assert not is_stuck(after)
    if command.kind is CommandKind.WAKE and inventory is not None and inventory > 1:
        return  # superseded
    assert moved_on(before, after, actions), (before, after)


def test_a_lost_apply_result_is_confirmed_with_its_wake_counted_from_the_queue_time() -> None:
    events = confirmation_events(APPLY_WAKE, applied_generation=1)
    assert events == [ApplyConfirmed(1), WakeDelivered(1, NOW - 1)]
    snapshot, _ = run(waiting_on(APPLY_WAKE), [(NOW, e) for e in events])
    assert snapshot.phase is Phase.AWAITING_CHECKIN and snapshot.last_wake_sent_at == NOW - 1
    snapshot, _ = run(snapshot, [(NOW + 1, CheckIn(NOW))])  # a beat buffered since the wake
    assert snapshot.status is Status.ONLINE


def test_an_apply_the_sidecar_never_took_is_a_refusal() -> None:
    (event,) = confirmation_events(APPLY_WAKE, applied_generation=0)
    assert isinstance(event, ApplyFailed) and event.permanent
    assert "refused generation 1" in event.message


def test_a_deleted_agent_is_forgotten_once_its_removal_is_confirmed_or_refused() -> None:
    deleting = waiting_on(REMOVE)
    for event, refused in ((RemovalConfirmed(1), ""), (RemovalRefused(1, "kept"), "kept")):
        _, actions = run(deleting, [(NOW, event)])
        assert ForgetAgent(refused=refused) in actions
    # An agent that is not deleting is never forgotten by a stray removal outcome.
    _, actions = run(provisioned_and_woken(), [(NOW, RemovalConfirmed(1))])
    assert not any(isinstance(a, ForgetAgent) for a in actions)


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [(GatewayErrorKind.UNREACHABLE, "", UNREACHABLE), (GatewayErrorKind.RETRY, "", BUSY),
     (GatewayErrorKind.PERMANENT, "", WaitReason.WAKE_FAILED),
     (GatewayErrorKind.UNSPECIFIED, "gateway_timeout", UNREACHABLE),
     (GatewayErrorKind.UNSPECIFIED, "io_error", WaitReason.WAKE_FAILED)],
)  # fmt: skip
def test_the_wait_reason_follows_the_sidecars_classification(
    kind: GatewayErrorKind, code: str, reason: WaitReason
) -> None:
    assert wait_reason(kind, code) is reason


# ===================================================== random event sequences


class LifecycleMachine(RuleBasedStateMachine):
    """One agent, its sidecar and gateway, a clock, and a reconciler's schedule.

    Every action the lifecycle returns is carried out the way the hub would: commands
    go to the outbox, deadlines to the schedule, ForgetAgent ends the agent. The sidecar
    takes commands in order while connected and answers them the way sidecar/commands.py
    does: applied (a wake with it delivered), refused, or failed and kept at the head to
    retry in place (always, while the gateway is down). A result may be lost with the
    stream (the hub or the sidecar killed meanwhile): the next Hello confirms the command
    with the sidecar's inventory. Delivered wakes start runs that end with a model turn,
    without one, or in an error. Random stale and out-of-order events are mixed in.
    Invariants are checked after every step; the last one probes that from any state a
    working sidecar and a silent agent bring the agent to rest: online, offline or gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.policy = Policy(hub_started_at=0.0)
        self.now = 0.0
        self.snapshot = AgentLifecycle(link_up_since=0.0, heartbeat_interval_s=60)
        self.outbox: list[CommandFacts] = []  # the hub's outbox, in the sidecar's order
        self.scheduled: tuple[float, int] | None = None
        self.sidecar_generation: int | None = None  # the sidecar's inventory of the agent
        self.lost: list[CommandFacts] = []  # processed, results lost with the stream
        self.processed: list[CommandFacts] = []  # taken off the outbox by the sidecar
        self.runs: list[int] = []  # generations of delivered wakes whose runs still go
        self.gateway_up = True
        self.forgotten = False
        self.agent_ran = False  # the agent heartbeated, or a run of it had a model turn
        self.delivered_in_cycle = 0
        self.last_new_apply = 0

    # ---- plumbing

    def feed(self, event: Event) -> None:
        assert not self.forgotten
        before = self.snapshot
        after, actions = step(before, event, self.policy, self.now)
        for action in actions:
            if isinstance(action, QueueApply | ResendApply):
                wakes = action.wake
                self.no_second_wake(action.generation, wakes)
                self.outbox.append(
                    CommandFacts(CommandKind.APPLY, action.generation, wakes, self.now)
                )
            elif isinstance(action, SendWake):
                self.no_second_wake(action.generation, True)
                self.outbox.append(
                    CommandFacts(CommandKind.WAKE, action.generation, True, self.now)
                )
            elif isinstance(action, ScheduleDeadline):
                self.scheduled = (action.at, action.generation)
            elif isinstance(action, CancelDeadline):
                self.scheduled = None
            elif isinstance(action, ForgetAgent):
                assert before.status is Status.DELETING, "forgot an agent nobody deleted"
                self.forgotten = True
            if isinstance(action, Log):
                # Fields go to structlog as keywords: `event` is its own positional name.
                assert "event" not in action.as_dict()
                assert all(
                    isinstance(v, str | int | float | bool) for v in action.as_dict().values()
                )
            if isinstance(action, QueueApply):
                # The sidecar applies a generation once: each new apply needs a new one.
                assert action.generation > self.last_new_apply, "generation reused"
                self.last_new_apply = action.generation
        # Properties of every single step (also checked while probing for settlement).
        assert after.lifecycle_generation >= before.lifecycle_generation
        assert after.applied_generation <= after.lifecycle_generation
        # Status never lies: only a check-in (evidence that the agent ran) is presence.
        if not isinstance(event, CheckIn):
            assert after.last_seen_at == before.last_seen_at, "presence without a check-in"
        assert after.status is not Status.ONLINE or after.last_seen_at is not None
        assert after.status is not Status.ONLINE or self.agent_ran, "online, yet it never ran"
        if after.status is Status.OFFLINE and before.status is not Status.OFFLINE:
            refused = isinstance(event, ApplyFailed) and event.permanent
            assert path_down(after) is None or refused, "offline while the path is down"
        if (
            isinstance(event, ApplyRequested)
            and after.lifecycle_generation > before.lifecycle_generation
        ):
            self.delivered_in_cycle = 0
        if after.wake_attempts > before.wake_attempts:
            self.delivered_in_cycle += after.wake_attempts - before.wake_attempts
        if before.wake_attempts > 0 and after.wake_attempts == 0 and after.status is Status.ONLINE:
            self.delivered_in_cycle = 0  # a check-in answered the cycle
        assert after.wake_attempts <= self.policy.max_wakes
        assert self.delivered_in_cycle <= self.policy.max_wakes, "too many wakes in one cycle"
        self.snapshot = after

    def no_second_wake(self, generation: int, wakes: bool) -> None:
        """The hub never queues a wake while one of the same generation is still with the
        sidecar (its retry would land too: the agent woken twice)."""
        if wakes:
            pending = [c for c in self.outbox if c.wakes and c.generation == generation]
            assert not pending, f"second wake queued for generation {generation}: {pending}"

    def process_next(self, answer: str, *, lose: bool = False) -> None:
        """The sidecar takes the head of the outbox: 'ok', 'reject' or 'fail'."""
        command = self.outbox[0]
        if not self.gateway_up:
            answer = "fail"
        result = self.sidecar_applies(command, answer)
        if result.outcome is not ResultOutcome.FAILED:
            self.processed.append(self.outbox.pop(0))
        if lose and result.outcome is not ResultOutcome.FAILED:
            self.lost.append(command)
            self.feed(SidecarDisconnected())  # the stream went with the result
            return
        for event in result_events(command, result):
            if not self.forgotten:
                self.feed(event)

    def sidecar_applies(self, command: CommandFacts, answer: str) -> ResultFacts:
        """What sidecar/commands.py does with `command`, as a result."""
        known = self.sidecar_generation
        if answer == "fail":
            kind = GatewayErrorKind.UNREACHABLE if not self.gateway_up else GatewayErrorKind.RETRY
            return ResultFacts(ResultOutcome.FAILED, error_kind=kind, error="try again")
        if command.kind is CommandKind.REMOVE:
            if known is not None and known > command.generation:
                return ResultFacts(ResultOutcome.ALREADY_APPLIED, observed_at=self.now)
        elif command.kind is CommandKind.APPLY:
            if known is not None and known >= command.generation:
                return ResultFacts(ResultOutcome.ALREADY_APPLIED, observed_at=self.now)
        elif known is not None and known > command.generation:
            return ResultFacts(ResultOutcome.ALREADY_APPLIED, observed_at=self.now)
        if answer == "reject":
            error = GatewayErrorKind.PERMANENT
            return ResultFacts(ResultOutcome.REJECTED, error_kind=error, error="refused")
        if command.kind is CommandKind.REMOVE:
            self.sidecar_generation = None
        elif command.kind is CommandKind.APPLY:
            self.sidecar_generation = command.generation
        delivered = command.wakes
        if delivered:
            self.runs.append(command.generation)
        return ResultFacts(ResultOutcome.APPLIED, wake_delivered=delivered, observed_at=self.now)

    def hello(self) -> None:
        """The sidecar reconnects: the Hello confirms what it processed, then the link is up."""
        for command in self.lost:
            for event in confirmation_events(command, self.sidecar_generation):
                if not self.forgotten:
                    self.feed(event)
        self.lost = []
        if self.forgotten:
            return
        if not self.gateway_up:
            self.feed(GatewayUnreachable())  # what the Hello says of the gateway
        self.feed(SidecarReconnected())

    def fire_deadline(self, suspect: bool) -> None:
        assert self.scheduled is not None
        at, generation = self.scheduled
        self.now = max(self.now, at)
        self.feed(DeadlineDue(at, generation, gateway_suspect=suspect))

    def link_up(self) -> bool:
        return not self.forgotten and self.snapshot.link_up_since is not None

    # ---- rules

    @initialize()
    def create(self) -> None:
        self.feed(ApplyRequested(1, wake=True))

    @rule(seconds=st.floats(min_value=0, max_value=1000, allow_nan=False))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: not self.forgotten)
    @rule(wake=st.booleans(), stale=st.booleans())
    def apply_requested(self, wake: bool, stale: bool) -> None:
        generation = self.snapshot.lifecycle_generation + (0 if stale else 1)
        self.feed(ApplyRequested(generation, wake=wake))

    @precondition(lambda self: self.outbox and self.link_up())
    @rule(answer=st.sampled_from(["ok", "reject", "fail"]), lose=st.booleans())
    def sidecar_answers(self, answer: str, lose: bool) -> None:
        self.process_next(answer, lose=lose)

    @precondition(lambda self: self.link_up() and self.gateway_up)
    @rule()
    def sidecar_works_agent_stays_silent(self) -> None:
        """The common path to a verdict: every command lands, the next deadline passes."""
        while self.outbox and not self.forgotten:
            self.process_next("ok")
        if self.scheduled is not None and not self.forgotten:
            self.fire_deadline(suspect=False)

    @precondition(lambda self: self.link_up())
    @rule()
    def sidecar_disconnects(self) -> None:
        self.feed(SidecarDisconnected())

    @precondition(lambda self: not self.forgotten and self.snapshot.link_up_since is None)
    @rule()
    def sidecar_reconnects(self) -> None:
        self.hello()

    @precondition(lambda self: self.link_up() and self.gateway_up)
    @rule()
    def gateway_goes_down(self) -> None:
        self.gateway_up = False
        self.feed(GatewayUnreachable())

    @precondition(lambda self: not self.gateway_up)
    @rule()
    def gateway_comes_back(self) -> None:
        self.gateway_up = True
        if self.link_up():
            self.feed(GatewayReachable())

    @precondition(lambda self: not self.forgotten)
    @rule(lag=st.floats(min_value=0, max_value=100, allow_nan=False))
    def agent_heartbeats(self, lag: float) -> None:
        self.agent_ran = True
        self.feed(CheckIn(self.now - lag, CheckInSource.HEARTBEAT))

    @precondition(lambda self: self.runs and self.link_up())
    @rule(data=st.data(), how=st.sampled_from(["turn", "no_turn", "error"]))
    def a_wake_run_ends(self, data: st.DataObject, how: str) -> None:
        index = data.draw(st.integers(min_value=0, max_value=len(self.runs) - 1))
        generation = self.runs.pop(index)
        self.agent_ran = self.agent_ran or how == "turn"
        event = run_event(
            final=how != "error",
            model_turn=how == "turn",
            generation=generation,
            message="run ended",
            at=self.now,
            latest=index == len(self.runs),  # no wake was delivered after this one
        )
        self.feed(event)

    @precondition(lambda self: self.scheduled is not None and not self.forgotten)
    @rule(suspect=st.booleans())
    def deadline_fires(self, suspect: bool) -> None:
        self.fire_deadline(suspect)

    @precondition(lambda self: not self.forgotten)
    @rule(
        at=st.floats(min_value=0, max_value=1e6, allow_nan=False),
        generation=st.integers(min_value=0, max_value=10),
        kind=st.sampled_from(
            ["deadline", "delivered", "undeliverable", "run_failed", "no_turn", "confirmed"]
        ),
    )
    def stray_event(self, at: float, generation: int, kind: str) -> None:
        # Duplicates, reordering, results of commands long superseded.
        event: Event = {
            "deadline": DeadlineDue(at, generation),
            "delivered": WakeDelivered(generation, min(at, self.now)),
            "undeliverable": WakeUndeliverable(generation, UNREACHABLE),
            "run_failed": RunFailed(generation, "error", latest=False),
            "no_turn": RunWithoutTurn(generation),
            "confirmed": ApplyConfirmed(generation),
        }[kind]
        if isinstance(event, WakeDelivered) and not any(
            c.wakes and c.generation == generation for c in self.processed
        ):
            # A delivery report (a duplicate, a late one) needs a command the sidecar took:
            # one still queued has delivered nothing, and delivers when it is taken.
            return
        if isinstance(event, ApplyConfirmed | WakeUndeliverable) and not any(
            c.generation == generation for c in [*self.outbox, *self.lost]
        ):
            return  # so does a report of its outcome
        self.feed(event)

    @precondition(lambda self: not self.forgotten)
    @rule(suspect=st.booleans())
    def presence_tick(self, suspect: bool) -> None:
        self.feed(PresenceTick(gateway_suspect=suspect))

    @precondition(lambda self: not self.forgotten and self.snapshot.status is not Status.DELETING)
    @rule(interval=st.sampled_from([0, 60, 600]))
    def heartbeat_interval_changes(self, interval: int) -> None:
        self.snapshot = dataclasses.replace(self.snapshot, heartbeat_interval_s=interval)

    @precondition(lambda self: not self.forgotten and self.snapshot.status is not Status.DELETING)
    @rule()
    def operator_deletes(self) -> None:
        generation = self.snapshot.lifecycle_generation
        self.feed(DeleteRequested())
        self.outbox.append(CommandFacts(CommandKind.REMOVE, generation, queued_at=self.now))

    # ---- invariants

    @invariant()
    def never_stuck(self) -> None:
        if self.forgotten:
            return
        s = self.snapshot
        assert not is_stuck(s), s
        if s.phase is Phase.IDLE and s.status is not Status.DELETING:
            assert s.status in (Status.ONLINE, Status.OFFLINE), s
        if s.phase is not Phase.IDLE:
            down = path_down(s)
            if down is not None:
                assert s.reason is down and s.checkin_deadline_at is None
            else:
                assert s.checkin_deadline_at is not None

    @invariant()
    def schedule_follows_the_snapshot(self) -> None:
        if self.forgotten:
            return
        s = self.snapshot
        expected = (
            None
            if s.checkin_deadline_at is None
            else (s.checkin_deadline_at, s.lifecycle_generation)
        )
        assert self.scheduled == expected

    @invariant()
    def the_agent_always_settles(self) -> None:
        """From here, once the sidecar and its gateway work and the agent stays silent, it
        ends online, offline, or (deleted) gone: no state without a way out."""
        probe = LifecycleMachine.__new__(LifecycleMachine)
        probe.__dict__.update(self.__dict__)
        probe.outbox = list(self.outbox)
        probe.lost = list(self.lost)
        probe.processed = list(self.processed)
        probe.runs = []  # the agent's runs never end: it stays silent
        probe.gateway_up = True
        if not probe.forgotten and probe.snapshot.link_up_since is None:
            probe.hello()
        elif not probe.forgotten and not self.gateway_up:
            probe.feed(GatewayReachable())
        for _ in range(80):
            if probe.forgotten:
                return
            s = probe.snapshot
            if s.phase is Phase.IDLE and s.status is not Status.DELETING:
                assert s.status in (Status.ONLINE, Status.OFFLINE)
                return
            if probe.outbox:
                probe.process_next("ok")
            elif probe.scheduled is not None:
                probe.fire_deadline(suspect=False)
            else:
                raise AssertionError(f"nothing will move this agent on: {s}")
        raise AssertionError(f"did not settle within 80 steps: {probe.snapshot}")


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
