"""An agent's timeline: the event log's entries as sentences an operator reads.

`entry(event)` is a pure function of one row of the `events` table (hub/store/
event_log.py); the agent page shows them newest first. Kinds it does not know are
shown by their name, so a new kind of entry is never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Tones the templates style (and say in words: a tone is never the only signal).
OK, INFO, WARN, BAD, QUIET = "ok", "info", "warn", "bad", "quiet"


@dataclass(frozen=True)
class TimelineEntry:
    id: int
    at: float
    kind: str
    title: str
    detail: str
    tone: str


def _attempt(detail: dict[str, Any]) -> str:
    attempt = detail.get("attempt")
    return f" (attempt {attempt})" if attempt else ""


def _generation(detail: dict[str, Any]) -> str:
    generation = detail.get("generation")
    return f"generation {generation}" if generation else ""


def _describe(kind: str, d: dict[str, Any]) -> tuple[str, str, str]:
    """(title, detail, tone) for one entry."""
    if kind == "agent.created":
        return "Provisioned", f"{d.get('agent_kind', 'agent')} created, token minted", INFO
    if kind == "lifecycle.queue.enqueued":
        if d.get("command") == "wake_agent":
            return f"Wake queued{_attempt(d)}", _generation(d), INFO
        what = "files and wake" if d.get("wake") else "files"
        return f"Apply queued ({what})", _generation(d), INFO
    if kind == "command.queued":
        return f"Sent to the sidecar's outbox: {d.get('command', '?')}", _seq(d), QUIET
    if kind == "command.acked":
        outcome = str(d.get("outcome", "?"))
        tone = BAD if outcome in ("FAILED", "REJECTED") else QUIET
        text = f"Sidecar answered {outcome.lower().replace('_', ' ')}"
        return text, d.get("error") or _seq(d), tone
    if kind == "lifecycle.wake.delivered":
        return f"Wake sent{_attempt(d)}", "delivered to the gateway; check-in due", INFO
    if kind == "lifecycle.checkin.accepted":
        source = d.get("source", "heartbeat")
        return "Checked in", f"by {source}", OK
    if kind == "lifecycle.reconcile.retriggered":
        if d.get("attempt"):
            return (
                f"Missed check-in; woken again{_attempt(d)}",
                "no check-in before the deadline",
                WARN,
            )
        why = d.get("why") or f"retrying after {d.get('failures', 0)} failure(s)"
        return "Retried", str(why), WARN
    if kind == "lifecycle.reconcile.max_attempts_reached":
        attempts = d.get("attempts", "?")
        return "Offline", f"missed check-in after {attempts} wakes", BAD
    if kind == "lifecycle.presence.offline":
        silent = d.get("silent_s")
        interval = d.get("interval_s")
        return "Offline", f"no heartbeat for {silent} s (interval {interval} s)", BAD
    if kind == "lifecycle.wake.undeliverable":
        return "Wake not delivered", str(d.get("error") or d.get("reason") or ""), WARN
    if kind == "lifecycle.apply.failed":
        permanent = " (permanent)" if d.get("permanent") else ""
        return f"Apply failed{permanent}", str(d.get("message") or d.get("reason") or ""), BAD
    if kind == "lifecycle.reconcile.deferred":
        why = str(d.get("why", ""))
        return "Waiting", why, WARN if "disconnected" in why or "suspect" in why else QUIET
    if kind == "lifecycle.reconcile.skip_not_stuck":
        return "Deadline passed: nothing to do", str(d.get("why", "")), QUIET
    if kind == "lifecycle.event.stale":
        return "Stale report ignored", str(d.get("received", "")), QUIET
    if kind == "gateway.drift":
        drift = str(d.get("drift", "CHANGED"))
        if drift == "RESTORED":
            return "Entry restored by the sidecar", str(d.get("detail", "")), OK
        title = {
            "REMOVED": "Entry removed from openclaw.json by hand",
            "ADDED": "Entry added by hand",
        }.get(drift, "Entry changed by hand")
        return title, str(d.get("detail", "")), WARN
    if kind == "agent.token.rotated":
        return "Token rotated", f"previous token valid for {d.get('grace_s', 0):g} s", INFO
    if kind == "agent.run.observed":
        outcome = str(d.get("outcome", "?"))
        tone = OK if outcome == "FINAL" else BAD
        return f"Run ended: {outcome.lower()}", str(d.get("message") or ""), tone
    if kind == "agent.tasks.unassigned":
        return "Tasks unassigned", f"{d.get('tasks', 0)} task(s)", INFO
    if kind == "agent.deleted":
        return "Deleted", "the sidecar removed it", INFO
    return kind, ", ".join(f"{k}={v}" for k, v in sorted(d.items())), QUIET


def _seq(d: dict[str, Any]) -> str:
    sequence = d.get("sequence")
    return f"command #{sequence}" if sequence else ""


def entry(event: dict[str, Any]) -> TimelineEntry:
    detail = event.get("detail") or {}
    title, text, tone = _describe(str(event["kind"]), detail)
    return TimelineEntry(
        int(event["id"]), float(event["at"]), str(event["kind"]), title, text, tone
    )


def entries(events: list[dict[str, Any]], *, quiet: bool = True) -> list[TimelineEntry]:
    """The entries of `events` in their order; without `quiet`, only the milestones."""
    out = [entry(e) for e in events]
    return out if quiet else [e for e in out if e.tone != QUIET]
