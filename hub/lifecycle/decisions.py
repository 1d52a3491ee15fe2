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
  unreachable, wake refused) is not an attempt: the agent keeps a `reason` and a
  retry deadline (backoff up to `retry_max_s`), so a failure never leaves it
  `updating` with nothing scheduled (the reference's defect #4, issue #206).
- A check-in (heartbeat, or a wake run that reached `final`) not older than the
  last delivered wake answers the cycle: attempts reset, deadline cleared.
  `online` is only ever set by a check-in or by settling an apply for an agent
  that has checked in before; never merely because provisioning succeeded.
- Nobody goes offline while the sidecar is disconnected, within
  `restart_grace_s` of a hub restart or of the sidecar reconnecting (heartbeats
  buffered by the sidecar are still arriving), or while the reconciler suspects
  the gateway (`gateway_suspect`): then the gateway is blamed, not the agent.
- Presence: an `online` agent with nothing outstanding goes `offline` when it has
  not heartbeated for `offline_after_intervals` x its heartbeat interval.

One deadline per agent: `checkin_deadline_at` is the next time the reconciler must
look at the agent: the check-in deadline after a delivered wake, the retry time
after a failure, or how long to wait for the sidecar's answer to a queued command.
`ScheduleDeadline` replaces whatever was scheduled for the agent before; a
`DeadlineDue` for an older generation or an already-answered wake is harmless.

Wiring (for the store, link and reconciler):
- CommandResult of an ApplyAgent: APPLIED/ALREADY_APPLIED -> `ApplyConfirmed`, then,
  if it carried a wake, `WakeDelivered` (wake_delivered) or `WakeUndeliverable`;
  FAILED -> `ApplyFailed`; REJECTED -> `ApplyFailed(permanent=True)`.
- CommandResult of a WakeAgent: `WakeDelivered` or `WakeUndeliverable`.
- RunObserved FINAL -> `CheckIn(source=RUN_FINAL)`; ERROR/ABORTED -> `RunFailed`.
- Hello / stream end -> `SidecarReconnected` / `SidecarDisconnected` for each of the
  gateway's agents. `link_up_since` is not persisted: snapshots loaded after a hub
  restart start with the link down (the default) until the sidecar's Hello.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    WAKE_FAILED = "wake_failed"


class Phase(enum.StrEnum):
    """What the lifecycle is waiting for (persisted next to the status)."""

    IDLE = "idle"  # nothing outstanding
    APPLYING = "applying"  # an ApplyAgent without a wake is queued: waiting for its result
    WAKING = "waking"  # a command that wakes is queued: waiting for its result
    AWAITING_CHECKIN = "awaiting_checkin"  # a wake was delivered: check-in due by the deadline
    RETRY_APPLY = "retry_apply"  # the apply failed: resend it at the deadline
    RETRY_WAKE = "retry_wake"  # the wake was not delivered: resend it at the deadline


class CheckInSource(enum.StrEnum):
    HEARTBEAT = "heartbeat"
    RUN_FINAL = "run_final"  # a wake run reached `final`: the runtime itself checked in


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
    offline_after_intervals: float = 2.0  # offline after 2 x the agent's heartbeat interval
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
    paused: bool = False  # paused by an admin (or with its board): see `_while_paused`


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
    generation: int
    reason: WaitReason
    message: str
    permanent: bool = False  # REJECTED: resending cannot help


@dataclass(frozen=True)
class WakeDelivered:
    generation: int
    at: float  # when the gateway accepted the wake (sidecar clock, clamped by the hub)


@dataclass(frozen=True)
class WakeUndeliverable:
    generation: int
    reason: WaitReason
    message: str = ""


@dataclass(frozen=True)
class RunFailed:
    generation: int
    message: str


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
class DeleteRequested:
    pass


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
    | CheckIn
    | DeadlineDue
    | SidecarDisconnected
    | SidecarReconnected
    | DeleteRequested
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


@dataclass(frozen=True)
class ScheduleDeadline:
    """Look at the agent again at `at`; replaces any deadline scheduled for it."""

    at: float
    generation: int


@dataclass(frozen=True)
class CancelDeadline:
    pass


@dataclass(frozen=True)
class Log:
    event: LogEvent
    fields: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return dict(self.fields)


Action = QueueApply | ResendApply | SendWake | ScheduleDeadline | CancelDeadline | Log

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
    if snapshot.link_up_since is None:
        return snapshot.reason is not WaitReason.SIDECAR_DISCONNECTED
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
    retry = Phase.RETRY_WAKE if s.phase is Phase.WAKING else Phase.RETRY_APPLY
    return _retry_later(s, retry, e.reason, policy, now, out)


def _on_wake_delivered(
    s: AgentLifecycle, e: WakeDelivered, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation != s.lifecycle_generation or s.phase is not Phase.WAKING:
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
    if s.link_up_since is None:  # the result was processed after the stream ended
        return _disconnected(s)
    return _arm(s, at + policy.checkin_deadline_s)


def _on_wake_undeliverable(
    s: AgentLifecycle, e: WakeUndeliverable, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation != s.lifecycle_generation or s.phase is not Phase.WAKING:
        out.log(LogEvent.STALE_EVENT, received="wake_undeliverable", generation=e.generation)
        return s
    message = e.message or f"the wake could not be delivered ({e.reason})"
    out.log(
        LogEvent.WAKE_UNDELIVERABLE, generation=e.generation, reason=str(e.reason), error=message
    )
    s = dataclasses.replace(s, last_provision_error=message)
    return _retry_later(s, Phase.RETRY_WAKE, e.reason, policy, now, out)


def _on_run_failed(
    s: AgentLifecycle, e: RunFailed, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    if e.generation != s.lifecycle_generation or s.phase is not Phase.AWAITING_CHECKIN:
        out.log(LogEvent.STALE_EVENT, received="run_failed", generation=e.generation)
        return s
    # The deadline stays: the re-wake (or the offline verdict) then carries this error.
    # A disconnected sidecar remains the reason shown: it is what the agent waits for.
    return dataclasses.replace(
        s,
        reason=WaitReason.WAKE_FAILED if s.link_up_since is not None else s.reason,
        last_provision_error=f"wake run failed: {e.message or 'no message from the gateway'}",
    )


def _on_check_in(
    s: AgentLifecycle, e: CheckIn, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    at = min(e.at, now)
    before = s
    s = dataclasses.replace(
        s,
        status=Status.ONLINE,
        last_seen_at=at if s.last_seen_at is None else max(s.last_seen_at, at),
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
    if s.link_up_since is None:
        out.log(LogEvent.DEFERRED, why="sidecar disconnected")
        return _disconnected(s)
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
    not_before = verdicts_not_before(s, policy)
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
    if s.wake_attempts >= policy.max_wakes:
        error = f"agent did not check in after {s.wake_attempts} wakes; max wake attempts reached"
        if s.last_provision_error:
            error += f"; last error: {s.last_provision_error}"
        out.log(LogEvent.MAX_ATTEMPTS_REACHED, attempts=s.wake_attempts)
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
    s = dataclasses.replace(s, link_up_since=None)
    if s.phase is Phase.IDLE:
        return s
    out.log(LogEvent.DEFERRED, why="sidecar disconnected", phase=str(s.phase))
    return _disconnected(s)


def _on_sidecar_reconnected(
    s: AgentLifecycle, e: SidecarReconnected, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    s = dataclasses.replace(s, link_up_since=now)
    if s.phase is Phase.IDLE:
        return s
    if s.reason is WaitReason.SIDECAR_DISCONNECTED:
        s = dataclasses.replace(s, reason=None)
    if s.phase in (Phase.APPLYING, Phase.WAKING):
        return _arm(s, now + policy.checkin_deadline_s)  # the outbox replays the command
    if s.phase is Phase.AWAITING_CHECKIN:
        due = (s.last_wake_sent_at or now) + policy.checkin_deadline_s
        return _arm(s, max(due, verdicts_not_before(s, policy)))
    out.log(LogEvent.RETRIGGERED, phase=str(s.phase), why="sidecar reconnected")
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
    if s.link_up_since is None or now < verdicts_not_before(s, policy):
        return s
    silent_s = now - s.last_seen_at
    out.log(LogEvent.WENT_OFFLINE, silent_s=round(silent_s), interval_s=s.heartbeat_interval_s)
    return dataclasses.replace(
        s,
        status=Status.OFFLINE,
        last_provision_error=(
            f"no heartbeat for {silent_s:.0f} s; it heartbeats every {s.heartbeat_interval_s} s"
        ),
    )


def _while_deleting(s: AgentLifecycle, event: Event, out: _Out, now: float) -> AgentLifecycle:
    # The outbox owns the removal now; only the link state is still tracked.
    if isinstance(event, SidecarDisconnected):
        return dataclasses.replace(s, link_up_since=None)
    if isinstance(event, SidecarReconnected):
        return dataclasses.replace(s, link_up_since=now)
    if isinstance(event, DeadlineDue):
        out.log(LogEvent.SKIP_NOT_STUCK, why="deleting")
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
        if s.link_up_since is None:
            return _disconnected(s)
        if s.phase is Phase.RETRY_APPLY:
            out.actions.append(ResendApply(s.lifecycle_generation, wake=False))
            return _queued(s, Phase.APPLYING, policy, now)
        if s.phase is Phase.APPLYING:
            return _arm(s, now + policy.checkin_deadline_s)  # still waiting for its result
        return _paused_idle(s)  # a wake outstanding from before the pause: dropped
    if isinstance(event, SidecarDisconnected):
        s = dataclasses.replace(s, link_up_since=None)
        return s if s.phase is Phase.IDLE else _disconnected(s)
    if isinstance(event, SidecarReconnected):
        s = dataclasses.replace(s, link_up_since=now, reason=None)
        if s.phase is Phase.RETRY_APPLY:
            out.actions.append(ResendApply(s.lifecycle_generation, wake=False))
            return _queued(s, Phase.APPLYING, policy, now)
        if s.phase is Phase.APPLYING:
            return _arm(s, now + policy.checkin_deadline_s)
        return _paused_idle(s) if s.phase is not Phase.IDLE else s
    if isinstance(event, DeleteRequested):
        return _on_delete_requested(s, event, policy, now, out)
    return s  # RunFailed, PresenceTick: nothing to judge while paused


def _paused_idle(s: AgentLifecycle) -> AgentLifecycle:
    return dataclasses.replace(s, phase=Phase.IDLE, reason=None, checkin_deadline_at=None)


_HANDLERS: dict[type, Any] = {
    ApplyRequested: _on_apply_requested,
    ApplyConfirmed: _on_apply_confirmed,
    ApplyFailed: _on_apply_failed,
    WakeDelivered: _on_wake_delivered,
    WakeUndeliverable: _on_wake_undeliverable,
    RunFailed: _on_run_failed,
    CheckIn: _on_check_in,
    DeadlineDue: _on_deadline_due,
    SidecarDisconnected: _on_sidecar_disconnected,
    SidecarReconnected: _on_sidecar_reconnected,
    DeleteRequested: _on_delete_requested,
    PresenceTick: _on_presence_tick,
}

# ----------------------------------------------------------------------- helpers


def _arm(s: AgentLifecycle, at: float) -> AgentLifecycle:
    return dataclasses.replace(s, checkin_deadline_at=at)


def _disconnected(s: AgentLifecycle) -> AgentLifecycle:
    # Nothing can be delivered or judged until the sidecar is back: no deadline, a reason.
    return dataclasses.replace(s, reason=WaitReason.SIDECAR_DISCONNECTED, checkin_deadline_at=None)


def _queued(s: AgentLifecycle, phase: Phase, policy: Policy, now: float) -> AgentLifecycle:
    """A command was queued: wait for its result (the outbox delivers it on reconnect)."""
    s = dataclasses.replace(s, phase=phase)
    if s.link_up_since is None:
        return _disconnected(s)
    return _arm(s, now + policy.checkin_deadline_s)


def _retry_later(
    s: AgentLifecycle, phase: Phase, reason: WaitReason, policy: Policy, now: float, out: _Out
) -> AgentLifecycle:
    failures = s.delivery_failures + 1
    s = dataclasses.replace(s, phase=phase, reason=reason, delivery_failures=failures)
    if s.link_up_since is None:
        return _disconnected(s)
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
    out.actions.append(SendWake(s.lifecycle_generation, attempt))
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
        and s.link_up_since is not None
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


def verdicts_not_before(s: AgentLifecycle, policy: Policy) -> float:
    """Earliest time a verdict that blames the agent (re-wake, offline) may be made.

    The restart-grace rule: after a hub restart or a sidecar reconnect, heartbeats
    the sidecar buffered may still be arriving, so for `restart_grace_s` after
    either nobody is re-woken or marked offline.
    """
    starts = [t for t in (policy.hub_started_at, s.link_up_since) if t is not None]
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
