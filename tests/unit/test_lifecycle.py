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
    DeadlineDue,
    DeleteRequested,
    Event,
    Log,
    LogEvent,
    Phase,
    Policy,
    PresenceTick,
    QueueApply,
    ResendApply,
    RunFailed,
    ScheduleDeadline,
    SendWake,
    SidecarDisconnected,
    SidecarReconnected,
    Status,
    WaitReason,
    WakeDelivered,
    WakeUndeliverable,
    gateway_suspect,
    is_missing,
    is_stuck,
    step,
)

POLICY = Policy()
T0 = 1_000_000.0  # hub start; agents below are created well after the restart grace
NOW = T0 + 3600.0
LINK_UP = NOW - 3600.0  # link up long enough that reconnect grace does not interfere
UNREACHABLE = WaitReason.GATEWAY_UNREACHABLE


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
    snapshot, _ = run(
        provisioned_and_woken(), [(NOW + 7, CheckIn(NOW + 7, CheckInSource.RUN_FINAL))]
    )
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


def test_run_failure_is_shown_and_carried_into_the_offline_error() -> None:
    snapshot, _ = run(
        provisioned_and_woken(), [(NOW + 3, RunFailed(1, "No route-compatible auth"))]
    )
    assert snapshot.reason is WaitReason.WAKE_FAILED
    assert snapshot.checkin_deadline_at == NOW + 30  # still waits for the deadline
    snapshot = dataclasses.replace(snapshot, wake_attempts=3)
    snapshot, _ = deadline_passes(snapshot)
    assert snapshot.status is Status.OFFLINE
    assert "No route-compatible auth" in (snapshot.last_provision_error or "")


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


def test_undeliverable_wake_is_not_an_attempt_and_shows_the_reason() -> None:
    snapshot, actions = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW + 1, ApplyConfirmed(1)),
            (NOW + 1, WakeUndeliverable(1, UNREACHABLE, "gateway refused the connection")),
        ],
    )
    assert snapshot.wake_attempts == 0 and snapshot.reason is UNREACHABLE
    assert snapshot.phase is Phase.RETRY_WAKE
    assert snapshot.last_provision_error == "gateway refused the connection"
    assert snapshot.checkin_deadline_at == NOW + 31
    assert LogEvent.WAKE_UNDELIVERABLE in logs(actions)
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == [SendWake(1, attempt=1)]  # the apply landed: only the wake again


def test_undeliverable_wakes_back_off() -> None:
    snapshot, _ = run(fresh(), [(NOW, ApplyRequested(1, wake=True)), (NOW, ApplyConfirmed(1))])
    delays = []
    for _ in range(6):
        at = snapshot.checkin_deadline_at or NOW
        snapshot, _ = run(snapshot, [(at, WakeUndeliverable(1, WaitReason.WAKE_FAILED))])
        assert snapshot.checkin_deadline_at is not None
        delays.append(snapshot.checkin_deadline_at - at)
        snapshot, _ = deadline_passes(snapshot)
    assert delays == [30, 60, 120, 240, 300, 300]
    assert snapshot.wake_attempts == 0


def test_failed_apply_is_resent_unchanged_not_rerendered() -> None:
    snapshot, _ = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW + 1, ApplyFailed(1, UNREACHABLE, "gateway down")),
        ],
    )
    assert snapshot.status is Status.PROVISIONING and snapshot.reason is UNREACHABLE
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == [ResendApply(1, wake=True)]  # it holds the token file


def test_failed_rewake_schedules_retry_under_current_generation() -> None:
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
    assert commands(actions) == [SendWake(5, 2)]


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


def test_reconnect_resends_what_failed_at_once() -> None:
    snapshot, _ = run(
        fresh(),
        [
            (NOW, ApplyRequested(1, wake=True)),
            (NOW, ApplyFailed(1, UNREACHABLE, "down")),
            (NOW + 1, SidecarDisconnected()),
        ],
    )
    snapshot, actions = run(snapshot, [(NOW + 2, SidecarReconnected())])
    assert commands(actions) == [ResendApply(1, wake=True)]
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


def test_failed_apply_without_wake_is_retried() -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW, lifecycle_generation=2,
                     applied_generation=2)  # fmt: skip
    snapshot, _ = run(
        snapshot, [(NOW, ApplyRequested(3, wake=False)), (NOW, ApplyFailed(3, UNREACHABLE, "x"))]
    )
    assert snapshot.phase is Phase.RETRY_APPLY and snapshot.reason is UNREACHABLE
    snapshot, actions = deadline_passes(snapshot)
    assert commands(actions) == [ResendApply(3, wake=False)]


def test_apply_during_a_wake_cycle_carries_the_wake_and_starts_a_new_cycle() -> None:
    snapshot = dataclasses.replace(provisioned_and_woken(), wake_attempts=2)
    snapshot, actions = run(snapshot, [(NOW + 5, ApplyRequested(2, wake=False))])
    assert commands(actions) == [QueueApply(2, wake=True)]
    assert snapshot.wake_attempts == 0 and snapshot.lifecycle_generation == 2


def test_presence_goes_offline_after_two_intervals_without_heartbeat() -> None:
    snapshot = fresh(status=Status.ONLINE, last_seen_at=NOW, heartbeat_interval_s=300)
    same, _ = run(snapshot, [(NOW + 600, PresenceTick())])
    assert same.status is Status.ONLINE
    snapshot, actions = run(snapshot, [(NOW + 601, PresenceTick())])
    assert snapshot.status is Status.OFFLINE
    assert "no heartbeat for 601 s" in (snapshot.last_provision_error or "")
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


# ===================================================== random event sequences


class LifecycleMachine(RuleBasedStateMachine):
    """One agent, a sidecar with an ordered outbox, a clock, and a reconciler's schedule.

    Every action the lifecycle returns is carried out the way the hub would: commands
    go to the outbox, deadlines to the schedule. The sidecar answers commands in order
    while connected, successfully or not; random stale and out-of-order events are
    mixed in. Invariants are checked after every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.policy = Policy(hub_started_at=0.0)
        self.now = 0.0
        self.snapshot = AgentLifecycle(link_up_since=0.0, heartbeat_interval_s=60)
        self.outbox: list[Action] = []
        self.scheduled: tuple[float, int] | None = None
        self.delivered_in_cycle = 0
        self.last_new_apply = 0

    # ---- plumbing

    def feed(self, event: Event) -> None:
        before = self.snapshot
        after, actions = step(before, event, self.policy, self.now)
        for action in actions:
            if isinstance(action, QueueApply | ResendApply | SendWake):
                self.outbox.append(action)
            elif isinstance(action, ScheduleDeadline):
                self.scheduled = (action.at, action.generation)
            elif isinstance(action, CancelDeadline):
                self.scheduled = None
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
        assert after.status is not Status.ONLINE or after.last_seen_at is not None
        if after.status is Status.OFFLINE and before.status is not Status.OFFLINE:
            refused = isinstance(event, ApplyFailed) and event.permanent
            assert after.link_up_since is not None or refused, "offline while disconnected"
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

    def answer_next_command(
        self, *, ok: bool, wake_ok: bool = True, permanent: bool = False
    ) -> None:
        command = self.outbox.pop(0)
        generation = command.generation
        if isinstance(command, QueueApply | ResendApply):
            if not ok:
                self.feed(ApplyFailed(generation, UNREACHABLE, "down", permanent=permanent))
                return
            self.feed(ApplyConfirmed(generation))
            if not command.wake:
                return
        if wake_ok and ok:
            self.feed(WakeDelivered(generation, self.now))
        else:
            self.feed(WakeUndeliverable(generation, WaitReason.WAKE_FAILED, "refused"))

    # ---- rules

    @initialize()
    def create(self) -> None:
        self.feed(ApplyRequested(1, wake=True))

    @rule(seconds=st.floats(min_value=0, max_value=1000, allow_nan=False))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(wake=st.booleans(), stale=st.booleans())
    def apply_requested(self, wake: bool, stale: bool) -> None:
        generation = self.snapshot.lifecycle_generation + (0 if stale else 1)
        self.feed(ApplyRequested(generation, wake=wake))

    @precondition(lambda self: self.outbox and self.snapshot.link_up_since is not None)
    @rule(ok=st.booleans(), wake_ok=st.booleans(), permanent=st.booleans())
    def sidecar_answers(self, ok: bool, wake_ok: bool, permanent: bool) -> None:
        self.answer_next_command(ok=ok, wake_ok=wake_ok, permanent=permanent and not ok)

    @precondition(lambda self: self.snapshot.link_up_since is not None)
    @rule()
    def sidecar_works_agent_stays_silent(self) -> None:
        """The common path to a verdict: every command lands, the next deadline passes."""
        while self.outbox:
            self.answer_next_command(ok=True)
        if self.scheduled is not None:
            self.deadline_fires(suspect=False)

    @precondition(lambda self: self.snapshot.link_up_since is not None)
    @rule()
    def sidecar_disconnects(self) -> None:
        self.feed(SidecarDisconnected())

    @precondition(lambda self: self.snapshot.link_up_since is None)
    @rule()
    def sidecar_reconnects(self) -> None:
        self.feed(SidecarReconnected())

    @rule(lag=st.floats(min_value=0, max_value=100, allow_nan=False), final=st.booleans())
    def agent_checks_in(self, lag: float, final: bool) -> None:
        source = CheckInSource.RUN_FINAL if final else CheckInSource.HEARTBEAT
        self.feed(CheckIn(self.now - lag, source))

    @precondition(lambda self: self.scheduled is not None)
    @rule(suspect=st.booleans())
    def deadline_fires(self, suspect: bool) -> None:
        assert self.scheduled is not None
        at, generation = self.scheduled
        self.now = max(self.now, at)
        self.feed(DeadlineDue(at, generation, gateway_suspect=suspect))

    @rule(
        at=st.floats(min_value=0, max_value=1e6, allow_nan=False),
        generation=st.integers(min_value=0, max_value=10),
        kind=st.sampled_from(["deadline", "delivered", "undeliverable", "run_failed", "confirmed"]),
    )
    def stray_event(self, at: float, generation: int, kind: str) -> None:
        # Duplicates, reordering, results of commands long superseded.
        event: Event = {
            "deadline": DeadlineDue(at, generation),
            "delivered": WakeDelivered(generation, min(at, self.now)),
            "undeliverable": WakeUndeliverable(generation, UNREACHABLE),
            "run_failed": RunFailed(generation, "error"),
            "confirmed": ApplyConfirmed(generation),
        }[kind]
        if isinstance(event, WakeDelivered) and not any(
            isinstance(c, SendWake | QueueApply | ResendApply) and c.generation == generation
            for c in self.outbox
        ):
            return  # a delivery report needs a command that could have been delivered
        self.feed(event)

    @rule(suspect=st.booleans())
    def presence_tick(self, suspect: bool) -> None:
        self.feed(PresenceTick(gateway_suspect=suspect))

    @precondition(lambda self: self.snapshot.status is not Status.DELETING)
    @rule(
        interval=st.sampled_from([0, 60, 600]),
        data=st.data(),
    )
    def heartbeat_interval_changes(self, interval: int, data: st.DataObject) -> None:
        self.snapshot = dataclasses.replace(self.snapshot, heartbeat_interval_s=interval)

    # ---- invariants

    @invariant()
    def never_stuck(self) -> None:
        s = self.snapshot
        assert not is_stuck(s), s
        if s.phase is Phase.IDLE and s.status is not Status.DELETING:
            assert s.status in (Status.ONLINE, Status.OFFLINE), s
        if s.phase is not Phase.IDLE:
            if s.link_up_since is None:
                assert s.reason is WaitReason.SIDECAR_DISCONNECTED and s.checkin_deadline_at is None
            else:
                assert s.checkin_deadline_at is not None

    @invariant()
    def schedule_follows_the_snapshot(self) -> None:
        s = self.snapshot
        expected = (
            None
            if s.checkin_deadline_at is None
            else (s.checkin_deadline_at, s.lifecycle_generation)
        )
        assert self.scheduled == expected

    @invariant()
    def the_agent_always_settles(self) -> None:
        """From here, with a working sidecar and a silent agent, it ends online or offline."""
        probe = LifecycleMachine.__new__(LifecycleMachine)
        probe.__dict__.update(self.__dict__)
        probe.outbox = list(self.outbox)
        if probe.snapshot.link_up_since is None:
            probe.feed(SidecarReconnected())
        for _ in range(60):
            s = probe.snapshot
            if s.phase is Phase.IDLE:
                assert s.status in (Status.ONLINE, Status.OFFLINE, Status.DELETING)
                return
            if probe.outbox:
                probe.answer_next_command(ok=True)
            elif probe.scheduled is not None:
                at, generation = probe.scheduled
                probe.now = max(probe.now, at)
                probe.feed(DeadlineDue(at, generation))
            else:
                raise AssertionError(f"nothing will move this agent on: {s}")
        raise AssertionError(f"did not settle within 60 steps: {probe.snapshot}")


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
