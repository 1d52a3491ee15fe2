"""The agent lifecycle as pure decisions: applies, wakes, check-in deadlines, presence.

`step(snapshot, event, policy, now)` returns the agent's next snapshot and the
actions the caller performs (queue a command, move the agent's deadline, log).
Nothing here reads a clock or does I/O; times are Unix seconds, as in the store.

The rules (DESIGN.md "Lifecycle policy"; mission-control.md §3 is what we replace):

- An apply (create, update, template sync) moves the agent to a new generation and
  starts a new check-in cycle. It wakes the agent when asked to, when the agent
  has never checked in (otherwise nothing would ever bring it online: reference
  issues #144, #199) and when a wake was already outstanding.
- After a *delivered* wake the agent must check in within `checkin_deadline_s`.
  At the deadline with no check-in since that wake it is woken again, with the
  same generation and token (no rotation, no rewrite), up to `max_wakes`
  delivered wakes in total; then it is `offline` with `last_provision_error`.
- A wake or apply that could not be delivered (sidecar disconnected, gateway
  unreachable, wake refused) is not an attempt: the agent keeps a `reason`. A
  command the sidecar reported FAILED is retried by the sidecar in place, so the
  hub waits for its result (sending its own copy would wake the agent twice); one
  the sidecar refused is resent by the hub with backoff up to `retry_max_s`. A
  failure never leaves an agent `updating` with nothing scheduled (the
  reference's defect #4, issue #206).
- A check-in is evidence that the agent ran: its heartbeat, or a wake run that
  reached `final` with a model turn (`RunWithoutTurn` is not one). A check-in
  not older than the last delivered wake answers the cycle: attempts reset,
  deadline cleared. `online` is only ever set by a check-in or by settling an
  apply for an agent that has checked in before; never merely because
  provisioning succeeded.
- A wake run that failed is an answer: the verdict (wake again, or offline after
  `max_wakes`) is due at once instead of at the deadline.
- Nobody goes offline while the sidecar is disconnected or the hub knows the
  gateway is unreachable, within `restart_grace_s` of a hub restart, of the
  sidecar reconnecting (heartbeats buffered by the sidecar are still arriving)
  or of the gateway becoming reachable again, or while the reconciler suspects
  the gateway (`gateway_suspect`): then the gateway is blamed, not the agent.
- Every outcome of a command the hub can learn advances the lifecycle: its
  result (`result_events`), or, when the result was lost, the Hello that
  confirms the command with the sidecar's inventory (`confirmation_events`). A
  deleting agent is forgotten once its removal is confirmed or refused.
- Presence, with a recovery ladder: an `online` agent with nothing outstanding that
  has not checked in for `offline_after_intervals` x its heartbeat interval is first
  *nudged* (a wake into its existing session), then, if that is not answered within
  `checkin_deadline_s`, *woken in a fresh session*, and only then marked `offline`,
  with the cause the hub knows (`cause`: the sidecar's report of what keeps the agent
  from running, else the last run's error) rather than a generic silence. A check-in
  or an apply ends the ladder; a failed run is an answer and moves it on at once; the
  guarantees above hold on every rung (never offline while the path is down, within a
  grace, or while the gateway is suspect). `Policy(recovery_ladder=False)` marks a
  silent agent offline at once instead.

One deadline per agent: `checkin_deadline_at` is the next time the reconciler must
look at the agent: the check-in deadline after a delivered wake, the retry time
after a failure, or how long to wait for the sidecar's answer to a queued command.
`ScheduleDeadline` replaces whatever was scheduled for the agent before; a
`DeadlineDue` for an older generation or an already-answered wake is harmless.

Wiring (for the store, link and reconciler):
- CommandResult -> `result_events`; a command confirmed by a Hello without its
  result -> `confirmation_events`; RunObserved -> `run_event`.
- Hello / stream end -> `SidecarReconnected` / `SidecarDisconnected` for each of the
  gateway's agents; the gateway's reachability (GatewayState, and the Hello's) ->
  `GatewayReachable` / `GatewayUnreachable`. `link_up_since` and the gateway's
  reachability are not persisted: snapshots loaded after a hub restart start with
  the link down (the default) until the sidecar's Hello.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protos.contract import GatewayErrorKind

# --------------------------------------------------------------------- vocabulary


class Status(enum.StrEnum):
    PROVISIONING = "provisioning"  # has never checked in
    UPDATING = "updating"  # an apply is in progress for an agent that has checked in before
    ONLINE = "online"
    OFFLINE = "offline"
    DELETING = "deleting"


class WaitReason(enum.StrEnum):
    """Why an agent is waiting instead of progressing (shown in the API as `status_reason`)."""

    SIDECAR_DISCONNECTED = "sidecar_disconnected"
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    GATEWAY_BUSY = "gateway_busy"  # the gateway asked to be asked again; the sidecar retries
    WAKE_FAILED = "wake_failed"


class Phase(enum.StrEnum):
    """What the lifecycle is waiting for (persisted next to the status)."""

    IDLE = "idle"  # nothing outstanding
    APPLYING = "applying"  # an ApplyAgent without a wake is queued: waiting for its result
    WAKING = "waking"  # a command that wakes is queued: waiting for its result
    AWAITING_CHECKIN = "awaiting_checkin"  # a wake was delivered: check-in due by the deadline
    RETRY_APPLY = "retry_apply"  # the apply failed: resend it at the deadline
    RETRY_WAKE = "retry_wake"  # the wake was not delivered: resend it at the deadline


class Recovery(enum.StrEnum):
    """The rung of the recovery ladder an agent that went quiet is on (persisted)."""

    NUDGED = "nudged"  # woken in its existing session
    FRESH_SESSION = "fresh_session"  # woken in a fresh session: the last rung before offline


class CheckInSource(enum.StrEnum):
    HEARTBEAT = "heartbeat"  # the agent called its sidecar's heartbeat endpoint
    RUNTIME = "runtime"  # the gateway finished a heartbeat or chat run of it (a model turn)
    WAKE = "wake"  # the run of a wake the hub sent reached `final` with a model turn


class LogEvent(enum.StrEnum):
    """Log event names; the first five are the names operators know from the reference."""

    ENQUEUED = "lifecycle.queue.enqueued"
    DEFERRED = "lifecycle.reconcile.deferred"
    RETRIGGERED = "lifecycle.reconcile.retriggered"
    SKIP_NOT_STUCK = "lifecycle.reconcile.skip_not_stuck"
    MAX_ATTEMPTS_REACHED = "lifecycle.reconcile.max_attempts_reached"
    CHECKED_IN = "lifecycle.checkin.accepted"
    WAKE_DELIVERED = "lifecycle.wake.delivered"
    WAKE_UNDELIVERABLE = "lifecycle.wake.undeliverable"
    APPLY_FAILED = "lifecycle.apply.failed"
    WENT_OFFLINE = "lifecycle.presence.offline"
    STALE_EVENT = "lifecycle.event.stale"
    RUN_FAILED = "lifecycle.run.failed"
    RUN_WITHOUT_TURN = "lifecycle.run.no_turn"  # a run reported final that is no check-in
    RECOVERY_NUDGE = "lifecycle.recovery.nudge"  # a quiet agent is nudged
    RECOVERY_FRESH_SESSION = "lifecycle.recovery.fresh_session"  # the nudge went unanswered
    REMOVED = "lifecycle.remove.confirmed"
    REMOVAL_REFUSED = "lifecycle.remove.refused"


# The log events that mark an agent offline, with the reason each stands for (metrics
# count by it, alerts fire on it). A refused apply is one only when it is permanent.
OFFLINE_VERDICTS = {
    LogEvent.MAX_ATTEMPTS_REACHED.value: "no_checkin",
    LogEvent.WENT_OFFLINE.value: "heartbeat_silence",
    LogEvent.APPLY_FAILED.value: "apply_refused",
}


def offline_reason(event: str, fields: Mapping[str, Any]) -> str | None:
    """Why this lifecycle log event marks its agent offline; None if it does not."""
    if event == LogEvent.APPLY_FAILED.value and not fields.get("permanent"):
        return None
    return OFFLINE_VERDICTS.get(event)


# ------------------------------------------------------------------------ policy


@dataclass(frozen=True)
class Policy:
    """Lifecycle constants. Build once per hub process, with `hub_started_at` set."""

    checkin_deadline_s: float = 30.0
    max_wakes: int = 3
    offline_after_intervals: float = 2.0  # quiet after 2 x the agent's heartbeat interval
    recovery_ladder: bool = True  # a quiet agent is nudged, then woken afresh, then offline
    restart_grace_windows: float = 2.0  # no offline verdicts for 2 check-in windows after a restart
    suspect_min_missing: int = 3  # fewer missing agents say nothing about the gateway
    retry_max_s: float = 300.0  # backoff ceiling for undelivered wakes and failed applies
    hub_started_at: float | None = None

    def __post_init__(self) -> None:
        if self.checkin_deadline_s <= 0 or self.max_wakes < 1 or self.retry_max_s <= 0:
            raise ValueError(
                "lifecycle policy: checkin_deadline_s and retry_max_s must be > 0, max_wakes >= 1"
            )
        if self.offline_after_intervals <= 0 or self.restart_grace_windows < 0:
            raise ValueError("lifecycle policy: offline_after_intervals > 0, grace windows >= 0")

    @property
    def restart_grace_s(self) -> float:
        return self.restart_grace_windows * self.checkin_deadline_s

    def offline_after_s(self, heartbeat_interval_s: float) -> float | None:
        """Silence after which an agent is offline; None when heartbeats are switched off."""
        if heartbeat_interval_s <= 0:
            return None
        return self.offline_after_intervals * heartbeat_interval_s

    def retry_delay_s(self, failures: int) -> float:
        """Delay before resending after the n-th consecutive failure: 30 s, 60 s, ... capped."""
        exponent = min(max(failures, 1) - 1, 16)
        return min(self.checkin_deadline_s * 2**exponent, self.retry_max_s)


def gateway_suspect(missed: int, total: int, policy: Policy) -> bool:
    """Whether so many of a gateway's agents miss at once that the gateway is to blame.

    More than half must be missing, and at least `suspect_min_missing`: with one or
    two agents "more than half" says nothing about the gateway.
    """
    if total <= 0 or missed <= 0:
        return False
    return missed >= policy.suspect_min_missing and 2 * missed > total


def may_be_suspect(total: int, policy: Policy) -> bool:
    """Whether a gateway of `total` agents can be suspect at all (`gateway_suspect` needs
    at least `suspect_min_missing` of them missing): if not, nobody need be counted."""
    return total >= policy.suspect_min_missing


# ---------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class AgentLifecycle:
    """The lifecycle fields of one agent row (all visible in the API)."""

    status: Status = Status.PROVISIONING
    reason: WaitReason | None = None
    lifecycle_generation: int = 0
    applied_generation: int = 0  # highest generation the sidecar confirmed applying
    wake_attempts: int = 0  # delivered wakes in the current check-in cycle
    checkin_deadline_at: float | None = None
    last_wake_sent_at: float | None = None  # when the last wake was delivered
    last_seen_at: float | None = None
    last_provision_error: str | None = None
    heartbeat_interval_s: int = 600
    phase: Phase = Phase.IDLE
    delivery_failures: int = 0  # consecutive undelivered wakes / failed applies (backoff)
    link_up_since: float | None = None  # not persisted: None until the sidecar's Hello
    # Not persisted: what the sidecar last said of its gateway (unknown counts as reachable).
    gateway_reachable: bool = True
    gateway_up_since: float | None = None  # when it last became reachable again
    paused: bool = False  # paused by an admin (or with its board): see `_while_paused`
    recovery: Recovery | None = None  # the ladder's rung, while a quiet agent is recovered
    last_checkin_source: CheckInSource | None = None  # of the latest check-in
    # Not persisted here: what keeps the agent from running as far as its sidecar found
    # (kept by the store from its reports); named when the ladder ends offline.
    cause: str | None = None


# ------------------------------------------------------------------------ events


@dataclass(frozen=True)
class ApplyRequested:
    """The hub is about to queue an ApplyAgent bringing the agent to `generation`."""

    generation: int
    wake: bool


@dataclass(frozen=True)
class ApplyConfirmed:
    generation: int


@dataclass(frozen=True)
class ApplyFailed:
    """FAILED: the sidecar keeps the command and retries it in place. REJECTED
    (`permanent`): the sidecar gave up on it; resending cannot help."""

    generation: int
    reason: WaitReason
    message: str
    permanent: bool = False


@dataclass(frozen=True)
class WakeDelivered:
    generation: int
    at: float  # when the gateway accepted the wake (sidecar clock, clamped by the hub)


@dataclass(frozen=True)
class WakeUndeliverable:
    """FAILED: the sidecar retries the wake in place. `permanent` (REJECTED): the sidecar
    gave up on it, so the hub sends a new one later (not an attempt either way)."""

    generation: int
    reason: WaitReason
    message: str = ""
    permanent: bool = False


@dataclass(frozen=True)
class RunFailed:
    """A wake run ended in an error (or was aborted). `latest`: it is the run of the
    agent's most recent delivered wake, so it answers that wake."""

    generation: int
    message: str
    latest: bool = True


@dataclass(frozen=True)
class RunWithoutTurn:
    """A wake run the gateway reported `final` without a model turn (a wake folded into a
    run already going, a model endpoint that never answered): no check-in."""

    generation: int
    message: str = ""


@dataclass(frozen=True)
class CheckIn:
    at: float
    source: CheckInSource = CheckInSource.HEARTBEAT


@dataclass(frozen=True)
class DeadlineDue:
    deadline_at: float
    generation: int
    gateway_suspect: bool = False  # the reconciler's `gateway_suspect` verdict right now


@dataclass(frozen=True)
class SidecarDisconnected:
    pass


@dataclass(frozen=True)
class SidecarReconnected:
    pass


@dataclass(frozen=True)
class GatewayUnreachable:
    """The sidecar says it has no working connection to its gateway."""


@dataclass(frozen=True)
class GatewayReachable:
    """The sidecar says its gateway is reachable (again)."""


@dataclass(frozen=True)
class DeleteRequested:
    pass


@dataclass(frozen=True)
class RemovalConfirmed:
    """The sidecar removed the agent (its result, or a Hello's inventory without it)."""

    generation: int


@dataclass(frozen=True)
class RemovalRefused:
    """The sidecar refused the removal for good: the hub forgets the agent anyway (the
    operator asked for it), and says what is left on the gateway."""

    generation: int
    message: str


@dataclass(frozen=True)
class PresenceTick:
    """Periodic sweep for the presence rule (uses `now` given to `step`)."""

    gateway_suspect: bool = False


Event = (
    ApplyRequested
    | ApplyConfirmed
    | ApplyFailed
    | WakeDelivered
    | WakeUndeliverable
    | RunFailed
    | RunWithoutTurn
    | CheckIn
    | DeadlineDue
    | SidecarDisconnected
    | SidecarReconnected
    | GatewayUnreachable
    | GatewayReachable
    | DeleteRequested
    | RemovalConfirmed
    | RemovalRefused
    | PresenceTick
)

# ----------------------------------------------------------------------- actions


@dataclass(frozen=True)
class QueueApply:
    """Render the files and queue a new ApplyAgent; with a wake message when `wake`."""

    generation: int
    wake: bool


@dataclass(frozen=True)
class ResendApply:
    """Queue the stored ApplyAgent of `generation` again, unchanged.

    Resent rather than re-rendered: it may carry the freshly minted token file,
    which the hub cannot produce again.
    """

    generation: int
    wake: bool


@dataclass(frozen=True)
class SendWake:
    """Queue a WakeAgent (same generation and token; nothing is rewritten)."""

    generation: int
    attempt: int  # 1-based number of the wake within this check-in cycle
    recovery: Recovery | None = None  # a rung of the ladder: FRESH_SESSION starts one afresh


@dataclass(frozen=True)
class ScheduleDeadline:
    """Look at the agent again at `at`; replaces any deadline scheduled for it."""

    at: float
    generation: int


@dataclass(frozen=True)
class CancelDeadline:
    pass


@dataclass(frozen=True)
class ForgetAgent:
    """The agent is gone from its gateway (or can never be removed): delete its row,
    unassign its tasks, finish its board if that waits for it. `refused`: why the
    gateway may still hold its entry."""

    refused: str = ""


@dataclass(frozen=True)
class Log:
    event: LogEvent
    fields: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return dict(self.fields)


Action = QueueApply | ResendApply | SendWake | ScheduleDeadline | CancelDeadline | ForgetAgent | Log

# -------------------------------------------------------------------------- step


def step(
    snapshot: AgentLifecycle, event: Event, policy: Policy, now: float
) -> tuple[AgentLifecycle, tuple[Action, ...]]:
    """Apply one event; return the new snapshot and the actions to perform, in order."""
    out = _Out()
    if snapshot.status is Status.DELETING:
        new = _while_deleting(snapshot, event, out, now)
    elif snapshot.paused:
        new = _while_paused(snapshot, event, policy, now, out)
    else:
        handler = _HANDLERS[type(event)]
        new = handler(snapshot, event, policy, now, out)
    return new, tuple(out.actions) + _deadline_actions(snapshot, new, out.reschedule)


def is_stuck(snapshot: AgentLifecycle) -> bool:
    """True when nothing would ever move the agent on: no deadline and no reason to wait.

    `step` never produces such a snapshot; a row loaded from elsewhere might be one.
    """
    if snapshot.status is Status.DELETING:
        return False
    if snapshot.phase is Phase.IDLE:
        return snapshot.status in (Status.PROVISIONING, Status.UPDATING)
    down = path_down(snapshot)
    if down is not None:  # held until the path is back, which an event says
        return snapshot.reason is not down
    return snapshot.checkin_deadline_at is None


def is_missing(snapshot: AgentLifecycle, policy: Policy, now: float) -> bool:
    """Whether the agent counts as missing for `gateway_suspect`: a wake went unanswered
    past its deadline, or an online agent's heartbeats stopped (a paused one never is)."""
    if snapshot.paused:
        return False
    if snapshot.phase is Phase.AWAITING_CHECKIN and snapshot.last_wake_sent_at is not None:
        return now >= snapshot.last_wake_sent_at + policy.checkin_deadline_s and not _answered_by(
            snapshot, snapshot.last_seen_at
        )
    if snapshot.status is Status.ONLINE and snapshot.phase is Phase.IDLE:
        return presence_expired(snapshot, policy, now)
    return False


# ---------------------------------------------------------------------- handlers


@dataclass
class _Out:
    actions: list[Action] = dataclasses.field(default_factory=list)
    reschedule: bool = False  # schedule the (unchanged) deadline again

    def log(self, name: LogEvent, /, **fields: Any) -> None:
        self.actions.append(Log(name, tuple(fields.items())))


def _on_apply_requested(
    s: AgentLifecycle, e: ApplyRequested, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation <= s.lifecycle_generation:
        out.log(LogEvent.STALE_EVENT, received="apply_requested", generation=e.generation)
        return s
    wake_outstanding = s.phase in (Phase.WAKING, Phase.AWAITING_CHECKIN, Phase.RETRY_WAKE)
    wake = e.wake or s.last_seen_at is None or wake_outstanding
    s = dataclasses.replace(
        s,
        status=Status.PROVISIONING if s.last_seen_at is None else Status.UPDATING,
        lifecycle_generation=e.generation,
        wake_attempts=0,  # an apply starts a new check-in cycle
        reason=None,
        last_provision_error=None,
        delivery_failures=0,
        recovery=None,
    )
    out.actions.append(QueueApply(e.generation, wake))
    out.log(LogEvent.ENQUEUED, command="apply_agent", generation=e.generation, wake=wake)
    return _queued(s, Phase.WAKING if wake else Phase.APPLYING, policy, now)


def _on_apply_confirmed(
    s: AgentLifecycle, e: ApplyConfirmed, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation > s.lifecycle_generation:
        out.log(LogEvent.STALE_EVENT, received="apply_confirmed", generation=e.generation)
        return s
    s = dataclasses.replace(s, applied_generation=max(s.applied_generation, e.generation))
    if e.generation == s.lifecycle_generation and s.phase in (Phase.APPLYING, Phase.RETRY_APPLY):
        return _settle(s, policy, now)
    return s


def _on_apply_failed(
    s: AgentLifecycle, e: ApplyFailed, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation != s.lifecycle_generation or s.phase not in (Phase.APPLYING, Phase.WAKING):
        out.log(LogEvent.STALE_EVENT, received="apply_failed", generation=e.generation)
        return s
    message = e.message or "the sidecar could not apply the agent"
    out.log(
        LogEvent.APPLY_FAILED,
        generation=e.generation,
        reason=str(e.reason),
        permanent=e.permanent,
        error=message,
    )
    s = dataclasses.replace(s, last_provision_error=message)
    if e.permanent:
        return _settle(s, policy, now)
    return _sidecar_retrying(s, e.reason, policy, now)


def _on_wake_delivered(
    s: AgentLifecycle, e: WakeDelivered, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    # RETRY_WAKE too: a wake the hub gave up on may still land (the sidecar's retry of it,
    # a result that arrives late); the cycle then waits for the agent, not for a resend.
    if e.generation != s.lifecycle_generation or s.phase not in (Phase.WAKING, Phase.RETRY_WAKE):
        out.log(LogEvent.STALE_EVENT, received="wake_delivered", generation=e.generation)
        return s
    at = min(e.at, now)
    s = dataclasses.replace(
        s,
        wake_attempts=s.wake_attempts + 1,
        last_wake_sent_at=at,
        applied_generation=e.generation,  # a wake is sent only after applying
        delivery_failures=0,
        reason=None,
    )
    out.log(LogEvent.WAKE_DELIVERED, generation=e.generation, attempt=s.wake_attempts)
    if _answered_by(s, s.last_seen_at):  # the agent checked in before the ack reached us
        return _cycle_answered(s, policy, now)
    s = dataclasses.replace(s, phase=Phase.AWAITING_CHECKIN)
    down = path_down(s)
    if down is not None:  # the result was processed after the stream ended
        return _held(s, down)
    return _arm(s, at + policy.checkin_deadline_s)


def _on_wake_undeliverable(
    s: AgentLifecycle, e: WakeUndeliverable, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation != s.lifecycle_generation or s.phase is not Phase.WAKING:
        out.log(LogEvent.STALE_EVENT, received="wake_undeliverable", generation=e.generation)
        return s
    message = e.message or f"the wake could not be delivered ({e.reason})"
    out.log(
        LogEvent.WAKE_UNDELIVERABLE,
        generation=e.generation,
        reason=str(e.reason),
        permanent=e.permanent,
        error=message,
    )
    s = dataclasses.replace(s, last_provision_error=message)
    if e.permanent:
        return _retry_later(s, Phase.RETRY_WAKE, e.reason, policy, now, out)
    return _sidecar_retrying(s, e.reason, policy, now)


def _on_run_failed(
    s: AgentLifecycle, e: RunFailed, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation != s.lifecycle_generation or s.phase is not Phase.AWAITING_CHECKIN:
        out.log(LogEvent.STALE_EVENT, received="run_failed", generation=e.generation)
        return s
    error = f"wake run failed: {e.message or 'no message from the gateway'}"
    out.log(LogEvent.RUN_FAILED, generation=e.generation, latest=e.latest, error=error)
    s = dataclasses.replace(s, last_provision_error=error)
    if not e.latest or _answered_by(s, s.last_seen_at):
        return s  # an earlier wake's run: the latest wake is still to be answered
    down = path_down(s)
    if down is not None:
        return _held(s, down)
    # An error is an answer: the verdict (wake again, or offline after max_wakes) is due
    # now, not at the deadline. DeadlineDue carries it out, with the grace and the
    # gateway-suspect rules.
    return _arm(dataclasses.replace(s, reason=WaitReason.WAKE_FAILED), now)


def _on_run_without_turn(
    s: AgentLifecycle, e: RunWithoutTurn, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    out.log(LogEvent.RUN_WITHOUT_TURN, generation=e.generation)
    if e.generation != s.lifecycle_generation or s.phase is not Phase.AWAITING_CHECKIN:
        return s
    # Not a check-in, and no answer either: the run may be one the wake was folded into,
    # still going. The deadline stands; an operator sees why nothing checked in.
    return dataclasses.replace(
        s,
        last_provision_error=(
            "the wake's run ended without a model turn (the gateway reported it final "
            "with no model output: a wake folded into a run already going, or a model "
            "endpoint that never answered); it is not a check-in"
        ),
    )


def _on_check_in(
    s: AgentLifecycle, e: CheckIn, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    at = min(e.at, now)
    before = s
    latest = s.last_seen_at is None or at >= s.last_seen_at
    s = dataclasses.replace(
        s,
        status=Status.ONLINE,
        last_seen_at=at if latest else s.last_seen_at,
        last_checkin_source=e.source if latest else s.last_checkin_source,
    )
    if s.phase in (Phase.AWAITING_CHECKIN, Phase.WAKING, Phase.RETRY_WAKE) and _answered_by(s, at):
        out.log(LogEvent.CHECKED_IN, source=str(e.source), answered_wake=s.wake_attempts)
        return _cycle_answered(s, policy, now)
    if s.phase is Phase.IDLE:
        s = dataclasses.replace(s, wake_attempts=0, reason=None, last_provision_error=None)
    if before.status is not Status.ONLINE:
        out.log(LogEvent.CHECKED_IN, source=str(e.source), previous_status=str(before.status))
    return s


def _on_deadline_due(
    s: AgentLifecycle, e: DeadlineDue, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation != s.lifecycle_generation or s.checkin_deadline_at is None:
        out.log(LogEvent.SKIP_NOT_STUCK, why="stale deadline", generation=e.generation)
        return s
    if now < s.checkin_deadline_at:
        out.log(LogEvent.DEFERRED, why="not due yet", due_at=s.checkin_deadline_at)
        out.reschedule = True
        return s
    down = path_down(s)
    if down is not None:
        out.log(LogEvent.DEFERRED, why=str(down))
        return _held(s, down)
    if s.phase is Phase.IDLE:
        out.log(LogEvent.SKIP_NOT_STUCK, why="nothing outstanding")
        return dataclasses.replace(s, checkin_deadline_at=None)
    if s.phase in (Phase.APPLYING, Phase.WAKING):
        out.log(LogEvent.DEFERRED, why="waiting for the sidecar's result", phase=str(s.phase))
        return _arm(s, now + policy.checkin_deadline_s)
    if s.phase in (Phase.RETRY_APPLY, Phase.RETRY_WAKE):
        out.log(LogEvent.RETRIGGERED, phase=str(s.phase), failures=s.delivery_failures)
        return _resend(s, policy, now, out)
    # AWAITING_CHECKIN
    if _answered_by(s, s.last_seen_at):
        out.log(LogEvent.SKIP_NOT_STUCK, why="checked in since the wake")
        return _cycle_answered(s, policy, now)
    # A failed run (the reason it shows while awaiting a check-in) happened with the
    # gateway reachable: the gateway's own grace is over for this agent.
    not_before = verdicts_not_before(s, policy, gateway_back=s.reason is not WaitReason.WAKE_FAILED)
    if now < not_before:
        out.log(LogEvent.DEFERRED, why="restart or reconnect grace", until=not_before)
        return _arm(s, not_before)
    if e.gateway_suspect:
        out.log(LogEvent.DEFERRED, why="gateway suspect: most of its agents missed")
        s = dataclasses.replace(
            s,
            reason=WaitReason.GATEWAY_UNREACHABLE,
            last_provision_error=(
                "most agents on this gateway missed their check-in at once; waiting for the "
                "gateway (check its model credentials and `openclaw status`)"
            ),
        )
        return _arm(s, now + policy.restart_grace_s + policy.checkin_deadline_s)
    if s.recovery is not None:
        return _climb(dataclasses.replace(s, reason=None), policy, now, out)
    if s.wake_attempts >= policy.max_wakes:
        error = f"agent did not check in after {s.wake_attempts} wakes; max wake attempts reached"
        if s.last_provision_error:
            error += f"; last error: {s.last_provision_error}"
        if s.cause:
            error += f"; cause: {s.cause}"
        out.log(LogEvent.MAX_ATTEMPTS_REACHED, attempts=s.wake_attempts, cause=s.cause or "")
        return dataclasses.replace(
            s,
            status=Status.OFFLINE,
            phase=Phase.IDLE,
            reason=None,
            checkin_deadline_at=None,
            last_provision_error=error,
        )
    out.log(LogEvent.RETRIGGERED, attempt=s.wake_attempts + 1)
    return _send_wake(dataclasses.replace(s, reason=None), policy, now, out)


def _on_sidecar_disconnected(
    s: AgentLifecycle, e: SidecarDisconnected, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    # What the sidecar said of its gateway is unknown until its next Hello.
    s = dataclasses.replace(s, link_up_since=None, gateway_reachable=True)
    if s.phase is Phase.IDLE:
        return s
    out.log(LogEvent.DEFERRED, why="sidecar disconnected", phase=str(s.phase))
    return _held(s, WaitReason.SIDECAR_DISCONNECTED)


def _on_sidecar_reconnected(
    s: AgentLifecycle, e: SidecarReconnected, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    s = dataclasses.replace(s, link_up_since=now)
    return _path_restored(
        s, WaitReason.SIDECAR_DISCONNECTED, "sidecar reconnected", policy, now, out
    )


def _on_gateway_unreachable(
    s: AgentLifecycle, e: GatewayUnreachable, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    s = dataclasses.replace(s, gateway_reachable=False)
    if s.phase is Phase.IDLE or s.link_up_since is None:
        return s  # a disconnected sidecar stays the reason shown
    out.log(LogEvent.DEFERRED, why="gateway unreachable", phase=str(s.phase))
    return _held(s, WaitReason.GATEWAY_UNREACHABLE)


def _on_gateway_reachable(
    s: AgentLifecycle, e: GatewayReachable, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    # The reconciler tells each agent once, when the sidecar's report changes.
    s = dataclasses.replace(s, gateway_reachable=True, gateway_up_since=now)
    return _path_restored(s, WaitReason.GATEWAY_UNREACHABLE, "gateway reachable", policy, now, out)


def _path_restored(
    s: AgentLifecycle, was: WaitReason, why: str, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    """The sidecar is back, or its gateway is: pick up what waited for it."""
    if s.phase is Phase.IDLE:
        return s
    if s.reason is was:
        s = dataclasses.replace(s, reason=None)
    down = path_down(s)
    if down is not None:
        return _held(s, down)
    if s.phase in (Phase.APPLYING, Phase.WAKING):
        # The outbox replays the command, or the sidecar's retry of it goes through now.
        return _arm(s, now + policy.checkin_deadline_s)
    if s.phase is Phase.AWAITING_CHECKIN:
        due = (s.last_wake_sent_at or now) + policy.checkin_deadline_s
        return _arm(s, max(due, verdicts_not_before(s, policy)))
    out.log(LogEvent.RETRIGGERED, phase=str(s.phase), why=why)
    return _resend(s, policy, now, out)


def _on_delete_requested(
    s: AgentLifecycle, e: DeleteRequested, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    return dataclasses.replace(
        s, status=Status.DELETING, phase=Phase.IDLE, reason=None, checkin_deadline_at=None
    )


def _on_presence_tick(
    s: AgentLifecycle, e: PresenceTick, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if s.status is not Status.ONLINE or s.phase is not Phase.IDLE or s.last_seen_at is None:
        return s
    if not presence_expired(s, policy, now) or e.gateway_suspect:
        return s
    if path_down(s) is not None or now < verdicts_not_before(s, policy):
        return s
    silent_s = now - s.last_seen_at
    if policy.recovery_ladder:
        out.log(
            LogEvent.RECOVERY_NUDGE, silent_s=round(silent_s), interval_s=s.heartbeat_interval_s
        )
        s = dataclasses.replace(
            s,
            recovery=Recovery.NUDGED,
            wake_attempts=0,
            delivery_failures=0,
            last_provision_error=None,  # from here on, the ladder's own runs' errors
        )
        return _send_wake(s, policy, now, out)
    out.log(LogEvent.WENT_OFFLINE, silent_s=round(silent_s), interval_s=s.heartbeat_interval_s)
    return dataclasses.replace(
        s,
        status=Status.OFFLINE,
        last_provision_error=_silence(s, now) + (f"; cause: {s.cause}" if s.cause else ""),
    )


def _climb(s: AgentLifecycle, policy: Policy, now: float, out: _Out) -> AgentLifecycle:
    """The ladder's rung went unanswered: wake in a fresh session, or end offline."""
    if s.recovery is Recovery.NUDGED:
        out.log(LogEvent.RECOVERY_FRESH_SESSION, attempt=s.wake_attempts + 1)
        return _send_wake(dataclasses.replace(s, recovery=Recovery.FRESH_SESSION), policy, now, out)
    out.log(
        LogEvent.WENT_OFFLINE,
        silent_s=round(now - (s.last_seen_at or now)),
        interval_s=s.heartbeat_interval_s,
        ladder="exhausted",
        cause=s.cause or s.last_provision_error or "",
    )
    return dataclasses.replace(
        s,
        status=Status.OFFLINE,
        phase=Phase.IDLE,
        reason=None,
        checkin_deadline_at=None,
        recovery=None,
        last_provision_error=(
            _silence(s, now) + "; a nudge and a wake in a fresh session went unanswered"
            + _cause(s)
        ),
    )  # fmt: skip


def _silence(s: AgentLifecycle, now: float) -> str:
    silent_s = now - (s.last_seen_at or now)
    return f"no check-in for {silent_s:.0f} s; it heartbeats every {s.heartbeat_interval_s} s"


def _cause(s: AgentLifecycle) -> str:
    """What the hub knows of why: the sidecar's cause, else the ladder's own failed run."""
    if s.cause:
        return f"; cause: {s.cause}"
    if s.last_provision_error:
        return f"; {s.last_provision_error}"
    return "; no cause reported (check the gateway's logs and `openclaw status`)"


def _while_deleting(s: AgentLifecycle, event: Event, out: _Out, now: float) -> AgentLifecycle:
    # The outbox owns the removal now; its outcome ends the agent, whatever it is.
    if isinstance(event, RemovalConfirmed):
        out.log(LogEvent.REMOVED, generation=event.generation)
        out.actions.append(ForgetAgent())
    elif isinstance(event, RemovalRefused):
        out.log(LogEvent.REMOVAL_REFUSED, generation=event.generation, error=event.message)
        out.actions.append(ForgetAgent(refused=event.message))
    elif isinstance(event, SidecarDisconnected):
        return dataclasses.replace(s, link_up_since=None, gateway_reachable=True)
    elif isinstance(event, SidecarReconnected):
        return dataclasses.replace(s, link_up_since=now)
    elif isinstance(event, GatewayUnreachable):
        return dataclasses.replace(s, gateway_reachable=False)
    elif isinstance(event, GatewayReachable):
        return dataclasses.replace(s, gateway_reachable=True, gateway_up_since=now)
    elif isinstance(event, DeadlineDue):
        out.log(LogEvent.SKIP_NOT_STUCK, why="deleting")
    return s


def _on_removal_outcome(
    s: AgentLifecycle, e: RemovalConfirmed | RemovalRefused, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    # Only a deleting agent is removed (see _while_deleting); anything else is stale.
    out.log(LogEvent.STALE_EVENT, received="removal", generation=e.generation)
    return s


def _while_paused(
    s: AgentLifecycle, event: Event, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    """A paused agent is never woken and never marked offline (its heartbeat job is off).

    Applies still go out (the pause itself is one: it turns the heartbeat off) and are
    retried when they fail; check-ins still count as presence. Anything that would wake
    it, re-wake it or judge it silent settles instead, and the status stays what it was.
    Resuming is an apply with a wake of the unpaused agent, a check-in cycle as ever.
    """
    if isinstance(event, ApplyRequested):
        if event.generation <= s.lifecycle_generation:
            out.log(LogEvent.STALE_EVENT, received="apply_requested", generation=event.generation)
            return s
        s = dataclasses.replace(
            s,
            lifecycle_generation=event.generation,
            wake_attempts=0,
            reason=None,
            last_provision_error=None,
            delivery_failures=0,
        )
        out.actions.append(QueueApply(event.generation, wake=False))
        out.log(LogEvent.ENQUEUED, command="apply_agent", generation=event.generation, wake=False)
        return _queued(s, Phase.APPLYING, policy, now)
    if isinstance(event, ApplyConfirmed | WakeDelivered | WakeUndeliverable):
        if event.generation != s.lifecycle_generation:
            return s
        applied = isinstance(event, ApplyConfirmed | WakeDelivered)
        if applied:
            s = dataclasses.replace(
                s, applied_generation=max(s.applied_generation, event.generation)
            )
        if s.phase in (Phase.APPLYING, Phase.WAKING):
            return _paused_idle(s)
        return s
    if isinstance(event, ApplyFailed):
        if event.generation != s.lifecycle_generation:
            return s
        s = dataclasses.replace(s, last_provision_error=event.message or None)
        if event.permanent:
            return _paused_idle(s)
        return _retry_later(s, Phase.RETRY_APPLY, event.reason, policy, now, out)
    if isinstance(event, CheckIn):
        at = min(event.at, now)
        seen = at if s.last_seen_at is None else max(s.last_seen_at, at)
        return dataclasses.replace(s, status=Status.ONLINE, last_seen_at=seen)
    if isinstance(event, DeadlineDue):
        if event.generation != s.lifecycle_generation or s.checkin_deadline_at is None:
            return s
        if now < s.checkin_deadline_at:
            out.reschedule = True
            return s
        down = path_down(s)
        if down is not None:
            return _held(s, down)
        if s.phase is Phase.RETRY_APPLY:
            out.actions.append(ResendApply(s.lifecycle_generation, wake=False))
            return _queued(s, Phase.APPLYING, policy, now)
        if s.phase is Phase.APPLYING:
            return _arm(s, now + policy.checkin_deadline_s)  # still waiting for its result
        return _paused_idle(s)  # a wake outstanding from before the pause: dropped
    if isinstance(event, SidecarDisconnected):
        s = dataclasses.replace(s, link_up_since=None, gateway_reachable=True)
        return s if s.phase is Phase.IDLE else _held(s, WaitReason.SIDECAR_DISCONNECTED)
    if isinstance(event, GatewayUnreachable):
        s = dataclasses.replace(s, gateway_reachable=False)
        if s.phase is Phase.IDLE or s.link_up_since is None:
            return s
        return _held(s, WaitReason.GATEWAY_UNREACHABLE)
    if isinstance(event, SidecarReconnected | GatewayReachable):
        if isinstance(event, SidecarReconnected):
            s = dataclasses.replace(s, link_up_since=now)
        else:
            s = dataclasses.replace(s, gateway_reachable=True, gateway_up_since=now)
        down = path_down(s)
        if down is not None:
            return s if s.phase is Phase.IDLE else _held(s, down)
        s = dataclasses.replace(s, reason=None)
        if s.phase is Phase.RETRY_APPLY:
            out.actions.append(ResendApply(s.lifecycle_generation, wake=False))
            return _queued(s, Phase.APPLYING, policy, now)
        if s.phase is Phase.APPLYING:
            return _arm(s, now + policy.checkin_deadline_s)
        return _paused_idle(s) if s.phase is not Phase.IDLE else s
    if isinstance(event, DeleteRequested):
        return _on_delete_requested(s, event, policy, now, out)
    return s  # RunFailed, RunWithoutTurn, PresenceTick, removals: nothing to judge while paused


def _paused_idle(s: AgentLifecycle) -> AgentLifecycle:
    return dataclasses.replace(
        s, phase=Phase.IDLE, reason=None, checkin_deadline_at=None, recovery=None
    )


_HANDLERS: dict[type, Any] = {
    ApplyRequested: _on_apply_requested,
    ApplyConfirmed: _on_apply_confirmed,
    ApplyFailed: _on_apply_failed,
    WakeDelivered: _on_wake_delivered,
    WakeUndeliverable: _on_wake_undeliverable,
    RunFailed: _on_run_failed,
    RunWithoutTurn: _on_run_without_turn,
    CheckIn: _on_check_in,
    DeadlineDue: _on_deadline_due,
    SidecarDisconnected: _on_sidecar_disconnected,
    SidecarReconnected: _on_sidecar_reconnected,
    GatewayUnreachable: _on_gateway_unreachable,
    GatewayReachable: _on_gateway_reachable,
    DeleteRequested: _on_delete_requested,
    RemovalConfirmed: _on_removal_outcome,
    RemovalRefused: _on_removal_outcome,
    PresenceTick: _on_presence_tick,
}

# ----------------------------------------------------------------------- helpers


def _arm(s: AgentLifecycle, at: float) -> AgentLifecycle:
    return dataclasses.replace(s, checkin_deadline_at=at)


def path_down(s: AgentLifecycle) -> WaitReason | None:
    """What stands between the hub and the agent right now, if anything."""
    if s.link_up_since is None:
        return WaitReason.SIDECAR_DISCONNECTED
    if not s.gateway_reachable:
        return WaitReason.GATEWAY_UNREACHABLE
    return None


def _held(s: AgentLifecycle, reason: WaitReason) -> AgentLifecycle:
    # Nothing can be delivered or judged until the path is back: no deadline, a reason.
    return dataclasses.replace(s, reason=reason, checkin_deadline_at=None)


def _queued(s: AgentLifecycle, phase: Phase, policy: Policy, now: float) -> AgentLifecycle:
    """A command was queued: wait for its result (the outbox delivers it on reconnect)."""
    s = dataclasses.replace(s, phase=phase)
    down = path_down(s)
    if down is not None:
        return _held(s, down)
    return _arm(s, now + policy.checkin_deadline_s)


def _sidecar_retrying(
    s: AgentLifecycle, reason: WaitReason, policy: Policy, now: float
) -> AgentLifecycle:
    """The sidecar reported FAILED and retries the command in place: wait for its result,
    showing why (a copy from the hub would be applied after it, a second wake)."""
    failures = s.delivery_failures + 1
    s = dataclasses.replace(s, reason=reason, delivery_failures=failures)
    down = path_down(s)
    if down is not None:
        return _held(s, down)
    return _arm(s, now + policy.retry_delay_s(failures))


def _retry_later(
    s: AgentLifecycle, phase: Phase, reason: WaitReason, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    failures = s.delivery_failures + 1
    s = dataclasses.replace(s, phase=phase, reason=reason, delivery_failures=failures)
    down = path_down(s)
    if down is not None:
        return _held(s, down)
    return _arm(s, now + policy.retry_delay_s(failures))


def _resend(s: AgentLifecycle, policy: Policy, now: float, out: _Out) -> AgentLifecycle:
    """Resend what failed: the apply if it never landed, else only the wake."""
    generation = s.lifecycle_generation
    if s.phase is Phase.RETRY_APPLY:
        out.actions.append(ResendApply(generation, wake=False))
        out.log(LogEvent.ENQUEUED, command="apply_agent", generation=generation, wake=False)
        return _queued(s, Phase.APPLYING, policy, now)
    if s.applied_generation < generation:
        out.actions.append(ResendApply(generation, wake=True))
        out.log(LogEvent.ENQUEUED, command="apply_agent", generation=generation, wake=True)
        return _queued(s, Phase.WAKING, policy, now)
    return _send_wake(s, policy, now, out)


def _send_wake(s: AgentLifecycle, policy: Policy, now: float, out: _Out) -> AgentLifecycle:
    attempt = s.wake_attempts + 1  # counted only once delivered
    out.actions.append(SendWake(s.lifecycle_generation, attempt, s.recovery))
    out.log(
        LogEvent.ENQUEUED, command="wake_agent", generation=s.lifecycle_generation, attempt=attempt
    )
    return _queued(s, Phase.WAKING, policy, now)


def _answered_by(s: AgentLifecycle, checked_in_at: float | None) -> bool:
    """A check-in at `checked_in_at` answers this cycle's wakes."""
    return (
        checked_in_at is not None
        and s.wake_attempts > 0
        and s.last_wake_sent_at is not None
        and checked_in_at >= s.last_wake_sent_at
    )


def _cycle_answered(s: AgentLifecycle, policy: Policy, now: float) -> AgentLifecycle:
    s = dataclasses.replace(
        s,
        status=Status.ONLINE,
        wake_attempts=0,
        reason=None,
        last_provision_error=None,
        delivery_failures=0,
        recovery=None,
    )
    if s.applied_generation < s.lifecycle_generation and s.phase is not Phase.AWAITING_CHECKIN:
        # The wake is answered but this generation's apply has not landed yet.
        if s.phase is Phase.RETRY_WAKE:
            return dataclasses.replace(s, phase=Phase.RETRY_APPLY)
        return dataclasses.replace(s, phase=Phase.APPLYING)
    return dataclasses.replace(s, phase=Phase.IDLE, checkin_deadline_at=None)


def _settle(s: AgentLifecycle, policy: Policy, now: float) -> AgentLifecycle:
    """Nothing is outstanding any more: the status follows presence."""
    if s.last_seen_at is None:
        status = Status.OFFLINE  # only reachable through a refused apply: say so, don't wait
    elif (
        presence_expired(s, policy, now)
        and path_down(s) is None
        and now >= verdicts_not_before(s, policy)
    ):
        status = Status.OFFLINE
    else:
        status = Status.ONLINE
    return dataclasses.replace(
        s, status=status, phase=Phase.IDLE, reason=None, checkin_deadline_at=None
    )


def presence_expired(s: AgentLifecycle, policy: Policy, now: float) -> bool:
    """The agent heartbeats, and has been silent longer than its presence allows
    (hub/lifecycle/presence.py asks the store the same question in SQL)."""
    offline_after = policy.offline_after_s(s.heartbeat_interval_s)
    return (
        offline_after is not None
        and s.last_seen_at is not None
        and now - s.last_seen_at > offline_after
    )


def verdicts_not_before(s: AgentLifecycle, policy: Policy, *, gateway_back: bool = True) -> float:
    """Earliest time a verdict that blames the agent (re-wake, offline) may be made.

    The restart-grace rule: after a hub restart or a sidecar reconnect, heartbeats
    the sidecar buffered may still be arriving, and after its gateway is reachable
    again the agents behind it need a moment to run, so for `restart_grace_s` after
    any of these nobody is re-woken or marked offline. `gateway_back=False`: a run
    that failed since the gateway came back is that moment's outcome already.
    """
    since_gateway = s.gateway_up_since if gateway_back else None
    starts = [t for t in (policy.hub_started_at, s.link_up_since, since_gateway) if t is not None]
    return max(starts) + policy.restart_grace_s if starts else float("-inf")


def _deadline_actions(
    old: AgentLifecycle, new: AgentLifecycle, reschedule: bool
) -> tuple[Action, ...]:
    """ScheduleDeadline / CancelDeadline so the reconciler's schedule follows the snapshot."""
    if new.checkin_deadline_at is None:
        return (CancelDeadline(),) if old.checkin_deadline_at is not None else ()
    changed = (new.checkin_deadline_at, new.lifecycle_generation) != (
        old.checkin_deadline_at,
        old.lifecycle_generation,
    )
    if changed or reschedule:
        return (ScheduleDeadline(new.checkin_deadline_at, new.lifecycle_generation),)
    return ()


# ---------------------------------------------------------------------- outcomes
# What the hub learns about a command or a run, as lifecycle events. Pure: the
# reconciler reads the facts from the store and the link and steps what comes back.


class CommandKind(enum.StrEnum):
    APPLY = "apply_agent"
    WAKE = "wake_agent"
    REMOVE = "remove_agent"
    OTHER = "other"  # heartbeat and credential changes: no lifecycle outcome

    @classmethod
    def of(cls, kind: str) -> CommandKind:
        try:
            return cls(kind)
        except ValueError:
            return cls.OTHER


class ResultOutcome(enum.StrEnum):
    """The sidecar's CommandResult.Outcome."""

    APPLIED = "APPLIED"
    ALREADY_APPLIED = "ALREADY_APPLIED"
    REJECTED = "REJECTED"  # the sidecar gave up on it; it counts as processed
    FAILED = "FAILED"  # the sidecar keeps it and retries it in place


@dataclass(frozen=True)
class CommandFacts:
    """A queued command as the store holds it."""

    kind: CommandKind
    generation: int
    wakes: bool = False  # an ApplyAgent carrying a wake message
    queued_at: float = 0.0


@dataclass(frozen=True)
class ResultFacts:
    outcome: ResultOutcome
    wake_delivered: bool = False
    error_kind: GatewayErrorKind = GatewayErrorKind.UNSPECIFIED
    error_code: str = ""
    error: str = ""
    observed_at: float = 0.0


def wait_reason(error_kind: GatewayErrorKind, error_code: str) -> WaitReason:
    """Why an agent waits on a command the sidecar could not carry out."""
    if error_kind is GatewayErrorKind.UNREACHABLE:
        return WaitReason.GATEWAY_UNREACHABLE
    if error_kind is GatewayErrorKind.RETRY:
        return WaitReason.GATEWAY_BUSY
    if error_kind is GatewayErrorKind.PERMANENT:
        return WaitReason.WAKE_FAILED
    # An older sidecar does not classify: its gateway codes all start with "gateway".
    if error_code.startswith("gateway"):
        return WaitReason.GATEWAY_UNREACHABLE
    return WaitReason.WAKE_FAILED


def result_events(command: CommandFacts, result: ResultFacts) -> list[Event]:
    """The lifecycle events of a command's result (sidecar/commands.py says what each
    outcome means: APPLIED with a wake message means the wake was delivered)."""
    g, outcome = command.generation, result.outcome
    done = outcome in (ResultOutcome.APPLIED, ResultOutcome.ALREADY_APPLIED)
    reason = wait_reason(result.error_kind, result.error_code)
    permanent = outcome is ResultOutcome.REJECTED
    if command.kind is CommandKind.REMOVE:
        if done:
            return [RemovalConfirmed(g)]
        if permanent:
            return [RemovalRefused(g, result.error or "the sidecar refused the removal")]
        return []  # FAILED: the sidecar retries it in place
    if command.kind is CommandKind.APPLY:
        if not done:
            return [ApplyFailed(g, reason, result.error, permanent=permanent)]
        events: list[Event] = [ApplyConfirmed(g)]
        if result.wake_delivered or (command.wakes and outcome is ResultOutcome.ALREADY_APPLIED):
            # ALREADY_APPLIED: an earlier command applied this generation, and its wake
            # with it (an apply is applied only once its wake was delivered).
            events.append(WakeDelivered(g, result.observed_at))
        elif command.wakes:
            # Done without its wake: the sidecar will not send it, so the hub does later.
            events.append(WakeUndeliverable(g, reason, result.error, permanent=True))
        return events
    if command.kind is CommandKind.WAKE:
        if result.wake_delivered:
            return [WakeDelivered(g, result.observed_at)]
        if outcome is ResultOutcome.ALREADY_APPLIED:
            return []  # superseded by a newer generation on the sidecar
        if not done:
            return [WakeUndeliverable(g, reason, result.error, permanent=permanent)]
    return []


def confirmation_events(command: CommandFacts, applied_generation: int | None) -> list[Event]:
    """The lifecycle events of a command a Hello confirmed (the sidecar processed it) whose
    result never reached the hub. `applied_generation`: the agent's generation in the
    Hello's inventory, None when the sidecar does not manage it.

    Processed means APPLIED, ALREADY_APPLIED or REJECTED (FAILED is kept and retried, so
    it is never confirmed). The inventory tells them apart where it can: an apply whose
    generation is not there was refused; a removed agent is not in it. A wake is taken as
    delivered (an undelivered one is answered by the same deadlines as a silent agent),
    counted from when it was queued, the earliest it can have reached the agent.
    """
    g = command.generation
    if command.kind is CommandKind.REMOVE:
        if applied_generation is None or applied_generation > g:
            return [RemovalConfirmed(g)]
        return [
            RemovalRefused(
                g,
                "the sidecar refused the removal (its result was lost; it still manages "
                "the agent): the gateway may still hold its entry, see the sidecar's log",
            )
        ]
    if command.kind is CommandKind.APPLY:
        if applied_generation is None or applied_generation < g:
            message = (
                f"the sidecar refused generation {g} (its result was lost; the Hello "
                "confirmed the command without it): see the sidecar's log for why"
            )
            return [ApplyFailed(g, WaitReason.WAKE_FAILED, message, permanent=True)]
        events: list[Event] = [ApplyConfirmed(g)]
        if command.wakes:
            events.append(WakeDelivered(g, command.queued_at))
        return events
    if command.kind is CommandKind.WAKE:
        if applied_generation is not None and applied_generation > g:
            return []  # superseded
        return [WakeDelivered(g, command.queued_at)]
    return []


def run_event(
    *, final: bool, model_turn: bool, generation: int, message: str, at: float, latest: bool
) -> Event:
    """A wake run's end as a lifecycle event. Only a run with a model turn is a check-in;
    a failed one answers the wake it belongs to if that is the agent's latest (`latest`)."""
    if final:
        if model_turn:
            return CheckIn(at=at, source=CheckInSource.WAKE)
        return RunWithoutTurn(generation, message)
    return RunFailed(generation, message, latest=latest)
