"""Alert rules as pure functions: which event or condition fires which rule, for which
subject, whether a cooldown holds it back, and the signed payload it sends.

Nothing here touches the store, the network or a clock; times are passed in.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hub.activity import summary as event_summary
from hub.lifecycle.decisions import OFFLINE_VERDICTS, offline_reason
from hub.webhooks.rules import RetryPolicy
from missioncontrol.timefmt import iso

MAX_URL_CHARS = 2048
MAX_DETAIL_BYTES = 16 * 1024  # of an event's detail, in the payload
MAX_SUMMARY_CHARS = 1000
MAX_SUBJECT_CHARS = 300
MAX_RESPONSE_EXCERPT_BYTES = 1024  # of a receiver's answer, kept in the delivery history
SIGNATURE_HEADER = "X-Hub-Signature-256"  # the header inbound webhooks read first
ALERT_ID_HEADER = "X-MC-Alert-Id"
ROLLOUT_HALTED = "rollout.halted"  # written by fleet rollouts when one stops itself
DRIFT = "gateway.drift"


class AlertKind(enum.StrEnum):
    AGENT_OFFLINE = "agent_offline"
    GATEWAY_DISCONNECTED = "gateway_disconnected"
    ROLLOUT_HALTED = "rollout_halted"
    CERTIFICATE_EXPIRING = "certificate_expiring"
    DRIFT_FOUND = "drift_found"


# The event kinds each push rule fires on; the other kinds are conditions over time,
# checked by the alert service on a cadence (and when a link event moves their due time).
EVENT_KINDS: dict[AlertKind, frozenset[str]] = {
    AlertKind.AGENT_OFFLINE: frozenset(OFFLINE_VERDICTS),
    AlertKind.ROLLOUT_HALTED: frozenset({ROLLOUT_HALTED}),
    AlertKind.DRIFT_FOUND: frozenset({DRIFT}),
}
WATCHED_EVENTS = frozenset().union(*EVENT_KINDS.values())
TIMED_KINDS = (AlertKind.GATEWAY_DISCONNECTED, AlertKind.CERTIFICATE_EXPIRING)
# The threshold each kind takes (a field of the rule), and the kinds a board filter fits:
# a gateway's condition belongs to no one board.
THRESHOLD_FIELDS = {
    AlertKind.GATEWAY_DISCONNECTED: "disconnected_for_s",
    AlertKind.CERTIFICATE_EXPIRING: "expiring_within_days",
}
BOARD_FILTERED = frozenset(EVENT_KINDS)


def rule_problem(
    kind: AlertKind,
    *,
    board_id: str | None,
    disconnected_for_s: float | None,
    expiring_within_days: float | None,
) -> tuple[str, str] | None:
    """(field, why) when a rule's fields do not fit its kind; None when they do."""
    given = {"disconnected_for_s": disconnected_for_s, "expiring_within_days": expiring_within_days}
    wanted = THRESHOLD_FIELDS.get(kind)
    for name, value in given.items():
        if name == wanted and value is None:
            return name, f"a {kind.value} rule needs {name}"
        if name != wanted and value is not None:
            takes = f"it takes {wanted}" if wanted else "it takes no threshold"
            return name, f"a {kind.value} rule does not take {name}; {takes}"
    if board_id is not None and kind not in BOARD_FILTERED:
        return "board_id", (
            f"a {kind.value} rule is about a gateway, not a board: filter it with gateway_id"
        )
    return None


@dataclass(frozen=True)
class AlertPolicy:
    """How alerts are checked and delivered: the cadence of the time-based checks, the
    retry schedule of a delivery, the timeout of one attempt, how many run at once."""

    check_interval_s: float = 60.0
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            initial_s=10.0, factor=2.0, max_s=1800.0, max_attempts=10
        )
    )
    attempt_timeout_s: float = 10.0
    max_concurrent: int = 8

    def __post_init__(self) -> None:
        if self.check_interval_s <= 0 or self.attempt_timeout_s <= 0 or self.max_concurrent < 1:
            raise ValueError(
                "alert policy: check_interval_s and attempt_timeout_s > 0, max_concurrent >= 1"
            )


@dataclass(frozen=True)
class Rule:
    """What the matching needs of a rule (the stored row has more)."""

    id: str
    name: str
    kind: AlertKind
    board_id: str | None = None
    gateway_id: str | None = None
    disconnected_for_s: float | None = None
    expiring_within_days: float | None = None
    cooldown_s: float = 900.0

    def covers(self, board_id: str | None, gateway_id: str | None) -> bool:
        """The rule's filters: a filtered rule matches only what names that board/gateway."""
        return (self.board_id is None or self.board_id == board_id) and (
            self.gateway_id is None or self.gateway_id == gateway_id
        )


@dataclass(frozen=True)
class Alert:
    """One firing of a rule. `subject` is what the cooldown counts per (an agent, a
    gateway, a rollout); `occurrence` tells one episode of a lasting condition from the
    next, so a condition still true at the next check does not fire again."""

    subject: str
    occurrence: str
    summary: str
    occurred_at: float
    board_id: str | None = None
    gateway_id: str | None = None
    agent_id: str | None = None
    event_id: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Both come partly from what sidecars and rollouts wrote: bounded here, once.
        object.__setattr__(self, "subject", self.subject[:MAX_SUBJECT_CHARS])
        object.__setattr__(self, "summary", self.summary[:MAX_SUMMARY_CHARS])


def alert_for_event(rule: Rule, event: Mapping[str, Any]) -> Alert | None:
    """The alert `rule` raises for an event-log entry (id, at, kind, gateway_id,
    board_id, agent_id, detail), or None."""
    kind = event["kind"]
    if kind not in EVENT_KINDS.get(rule.kind, ()):
        return None
    if not rule.covers(event.get("board_id"), event.get("gateway_id")):
        return None
    detail = event.get("detail") or {}
    gateway_id, agent_id = event.get("gateway_id"), event.get("agent_id")
    if rule.kind is AlertKind.AGENT_OFFLINE:
        reason = offline_reason(kind, detail)
        if reason is None:
            return None
        subject = f"agent:{agent_id}"
        text = f"agent {agent_id} is offline ({reason}): {event_summary(kind, detail)}"
    elif rule.kind is AlertKind.DRIFT_FOUND:
        subject = f"gateway:{gateway_id}/agent:{agent_id}"
        text = f"drift on gateway {gateway_id}: {event_summary(kind, detail)}"
    else:  # ROLLOUT_HALTED
        rollout = detail.get("rollout_id") or f"event-{event['id']}"
        subject = f"rollout:{rollout}"
        why = detail.get("reason") or detail.get("error") or "no reason given"
        text = f"rollout {rollout} halted: {why}"
    return Alert(
        subject=subject,
        occurrence=f"event:{event['id']}",
        summary=text,
        occurred_at=float(event["at"]),
        board_id=event.get("board_id"),
        gateway_id=gateway_id,
        agent_id=agent_id,
        event_id=int(event["id"]),
        detail=detail,
    )


def disconnected_alert(
    rule: Rule, gateway_id: str, name: str, disconnected_at: float, now: float
) -> Alert | None:
    """A gateway whose sidecar has been away longer than the rule allows."""
    assert rule.disconnected_for_s is not None
    if not rule.covers(None, gateway_id):
        return None
    if now - disconnected_at < rule.disconnected_for_s:
        return None
    return Alert(
        subject=f"gateway:{gateway_id}",
        occurrence=f"disconnected:{disconnected_at!r}",
        summary=(
            f"gateway {name!r} ({gateway_id}) has been disconnected for "
            f"{now - disconnected_at:.0f} s (since {iso(disconnected_at)}); its sidecar does not "
            "reach the hub: check `mc-sidecar` on that host"
        ),
        occurred_at=disconnected_at,
        gateway_id=gateway_id,
        detail={"disconnected_at": iso(disconnected_at), "threshold_s": rule.disconnected_for_s},
    )


def disconnected_due_at(rule: Rule, disconnected_at: float) -> float:
    """When a disconnect that started at `disconnected_at` crosses the rule's threshold."""
    assert rule.disconnected_for_s is not None
    return disconnected_at + rule.disconnected_for_s


def certificate_alert(
    rule: Rule, gateway_id: str, name: str, not_after: float, now: float
) -> Alert | None:
    """A gateway whose newest link certificate ends within the rule's window."""
    assert rule.expiring_within_days is not None
    if not rule.covers(None, gateway_id):
        return None
    if not_after - now > rule.expiring_within_days * 86400:
        return None
    left_days = (not_after - now) / 86400
    state = f"expires in {left_days:.1f} days" if left_days > 0 else "has expired"
    return Alert(
        subject=f"gateway:{gateway_id}",
        occurrence=f"not_after:{not_after!r}",
        summary=(
            f"the link certificate of gateway {name!r} ({gateway_id}) {state} "
            f"({iso(not_after)}) and was not renewed: check that its sidecar connects, or "
            "enroll it again with a new join token"
        ),
        occurred_at=now,
        gateway_id=gateway_id,
        detail={"not_after": iso(not_after), "within_days": rule.expiring_within_days},
    )


class Verdict(enum.StrEnum):
    FIRE = "fire"
    SUPPRESS = "suppress"  # within the cooldown of the last alert for this subject
    SEEN = "seen"  # this occurrence was already fired, or already held back and counted


@dataclass(frozen=True)
class SubjectState:
    """What a rule last did for one subject."""

    last_fired_at: float | None = None
    fired_occurrence: str | None = None  # the occurrence last sent
    last_occurrence: str | None = None  # the occurrence last seen (sent or held back)
    suppressed: int = 0  # held back since the last one sent


def cooldown_verdict(
    state: SubjectState, occurrence: str, cooldown_s: float, now: float
) -> Verdict:
    """Whether an alert for a subject goes out. An occurrence goes out once; one held back
    by the cooldown is counted once, and goes out when the cooldown ends if its condition
    still holds (a gateway still away), so a flap inside the cooldown hides nothing."""
    if occurrence == state.fired_occurrence:
        return Verdict.SEEN
    cooling = state.last_fired_at is not None and now - state.last_fired_at < cooldown_s
    if cooling:
        return Verdict.SEEN if occurrence == state.last_occurrence else Verdict.SUPPRESS
    return Verdict.FIRE


def alert_body(
    rule: Rule, alert: Alert, *, delivery_id: str, fired_at: float, suppressed: int
) -> bytes:
    """The JSON a receiver gets; bounded (a large event detail is replaced by its size).
    Kept as bytes with the delivery, so every attempt sends (and signs) the same body."""
    detail: Any = dict(alert.detail)
    encoded = json.dumps(detail, separators=(",", ":"), default=str).encode()
    if len(encoded) > MAX_DETAIL_BYTES:
        detail = {"truncated": True, "size_bytes": len(encoded)}
    body = {
        "id": delivery_id,
        "rule": {"id": rule.id, "name": rule.name, "kind": rule.kind.value},
        "kind": rule.kind.value,
        "subject": alert.subject,
        "summary": alert.summary,
        "board_id": alert.board_id,
        "gateway_id": alert.gateway_id,
        "agent_id": alert.agent_id,
        "event_id": alert.event_id,
        "occurred_at": iso(alert.occurred_at),
        "fired_at": iso(fired_at),
        "suppressed_since_last": suppressed,
        "detail": detail,
    }
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def url_problem(url: str) -> str | None:
    """Why `url` cannot be an alert destination, naming the fix; None if it can."""
    if len(url) > MAX_URL_CHARS:
        return f"is {len(url)} characters; at most {MAX_URL_CHARS}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a URL ({exc}); send an absolute http:// or https:// URL"
    if parts.scheme not in ("http", "https"):
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return f"has {scheme}; alerts are sent over http:// or https:// only"
    if not parts.hostname:
        return "names no host; send an absolute URL such as https://alerts.example.com/hook"
    if parts.username is not None or parts.password is not None:
        return (
            "carries credentials; drop them from the URL (the payload is signed with the "
            "rule's secret, which the receiver checks)"
        )
    if parts.fragment:
        return "has a #fragment, which is never sent; drop it"
    if port == 0:
        return "names port 0; give the receiver's port"
    return None


def response_excerpt(data: bytes) -> str:
    """What the history keeps of a receiver's answer: its start, as text."""
    text = data[:MAX_RESPONSE_EXCERPT_BYTES].decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)
