"""Alerts as a service: rule CRUD, the watcher that turns events and lasting
conditions into deliveries, and the sender (hub/alerts/delivery.py).

Events are pushed: the event log's commit notice wakes the watcher, which reads the
log after its cursor, matches the enabled rules, and commits each alert's delivery,
its cooldown mark and the moved cursor in one transaction, so an alert is neither
lost nor sent twice across a restart. Conditions that no event marks when they become
true (a gateway away longer than N seconds, a certificate within N days of its end)
are checked on a cadence and at the moment the next disconnect crosses its threshold;
link events move that moment.

Every hub on a shared database runs the watchers: each pass takes its advisory lock
first (hub/store/claims.py), so one hub at a time reads past the cursor or checks the
conditions, and sees what the previous pass committed; a hub that finds the lock taken
looks again shortly, in case the holder's pass began before its news.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.alerts.delivery import AlertSender
from hub.alerts.rules import (
    EVENT_KINDS,
    TIMED_KINDS,
    WATCHED_EVENTS,
    Alert,
    AlertKind,
    AlertPolicy,
    Rule,
    Verdict,
    alert_body,
    alert_for_event,
    certificate_alert,
    cooldown_verdict,
    disconnected_alert,
    disconnected_due_at,
    rule_problem,
)
from hub.alerts.store import (
    InvalidRule,
    RuleRow,
    check_filters_in,
    cursor_in,
    delete_rule_in,
    delivery_summary_in,
    disconnected_gateways_in,
    enabled_rules_in,
    events_after_in,
    get_delivery_in,
    insert_delivery_in,
    insert_rule_in,
    list_deliveries_in,
    list_rules_in,
    mark_subject_in,
    require_rule_in,
    set_cursor_in,
    subject_state_in,
    update_rule_in,
)
from hub.pki.secrets_box import SecretBox
from hub.store.claims import Singleton, singleton_in
from hub.store.database import Connection, Database
from hub.store.event_log import LINK_EVENTS
from hub.store.gateways import certificates_expiring_in, gateway_names_in
from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived, wait_until

log = get_logger("hub.alerts")

SECRET_BOX_PURPOSE = "alert-secrets"
EVENT_BATCH = 500
MAX_TIMED_SUBJECTS = 10_000  # gateways looked at per check and rule
PASS_RETRY_S = 5.0  # after a failed pass (the database refused a write)
CONTENDED_RETRY_S = 1.0  # another hub held the pass, or an event id is missing: look again
GAP_WAIT_S = 10.0  # a missing event id not committed by then never will be (a rollback's)
SETTLE_SCAN = 10_000  # event ids looked at per pass for a missing one


@dataclass
class _Raised:
    """What one pass raised, for logs and counters once it committed."""

    fired: list[tuple[Rule, Alert, str]] = field(default_factory=list)
    suppressed: list[tuple[Rule, Alert]] = field(default_factory=list)
    skipped: list[tuple[str, int, str]] = field(default_factory=list)  # rule, event, error
    more: bool = False  # the pass stopped at its batch size
    contended: bool = False  # another hub's pass was under way: this one did nothing
    waiting: bool = False  # stopped before a missing event id another hub may still commit
    next_check_at: float | None = None


class AlertService:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        policy: AlertPolicy | None = None,
        clock: Callable[[], float] = time.time,
        on_raised: Callable[[str, str], None] | None = None,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        """`on_raised(kind, "fired" | "suppressed")` and `on_attempt(outcome)` are told
        after the commit (metrics)."""
        self.db = db
        self.box = box
        self.policy = policy or AlertPolicy()
        self.clock = clock
        self.on_raised = on_raised
        self.sender = AlertSender(db, box, self.policy, clock=clock, on_attempt=on_attempt)
        self._events_due = asyncio.Event()
        self._missing: dict[int, float] = {}  # event id -> when first seen missing (monotonic)
        self._timed_due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_hub_key(cls, db: Database, hub_key: bytes, **options: Any) -> AlertService:
        return cls(db, SecretBox.from_hub_key(hub_key, SECRET_BOX_PURPOSE), **options)

    async def start(self) -> None:
        if self._tasks:
            return
        await self.sender.start()
        self._events_due.set()  # catch up with what was logged since the last read
        self._tasks = [
            start_long_lived(self._watch_events(), name="alert-events", log=log),
            start_long_lived(self._watch_conditions(), name="alert-conditions", log=log),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.sender.stop()

    def event_committed(self, event: Mapping[str, Any]) -> None:
        """Listener on the event log's notice channel (after each commit)."""
        kind = event.get("kind")
        if kind in WATCHED_EVENTS:
            self._events_due.set()
        if kind in LINK_EVENTS:
            self._timed_due.set()

    # ------------------------------------------------------------------ watching

    async def _watch_events(self) -> None:
        while True:
            self._events_due.clear()
            try:
                raised = await self.db.write(self._match_events_in)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the cursor did not move: the next pass tries again
                log.error("alert.events.pass_failed", error=str(exc))
                await asyncio.sleep(PASS_RETRY_S)
                continue
            self._report(raised)
            if raised.contended or raised.waiting:
                await wait_until(self._events_due, self.clock() + CONTENDED_RETRY_S, self.clock)
            elif not raised.more:
                await self._events_due.wait()

    def _match_events_in(self, conn: Connection) -> _Raised:
        raised = _Raised()
        if not singleton_in(conn, Singleton.ALERT_EVENTS):
            raised.contended = True
            return raised
        after = cursor_in(conn)
        events, until = events_after_in(conn, after, WATCHED_EVENTS, EVENT_BATCH)
        if conn.dialect == "postgresql":
            settled = self._settled_until_in(conn, after, until)
            if settled < until:
                events = [e for e in events if int(e["id"]) <= settled]
                until, raised.waiting = settled, True
        rules = enabled_rules_in(conn, EVENT_KINDS) if events else []
        now = self.clock()
        for event in events:
            for rule in rules:
                try:
                    conn.execute("SAVEPOINT alert")
                    alert = alert_for_event(rule, event)
                    if alert is not None:
                        self._raise_in(conn, rule, alert, now, raised)
                    conn.execute("RELEASE alert")
                except Exception as exc:  # one bad entry must not hold back all after it
                    conn.execute("ROLLBACK TO alert")
                    conn.execute("RELEASE alert")
                    raised.skipped.append((rule.id, int(event["id"]), repr(exc)))
        if until != after:
            set_cursor_in(conn, until)
        raised.more = len(events) == EVENT_BATCH
        return raised

    def _settled_until_in(self, conn: Connection, after: int, until: int) -> int:
        """How far past `after` the cursor may move: up to `until`, but not past an event
        id missing for less than GAP_WAIT_S. Hubs sharing a database take event ids in one
        order and may commit them in another: an id missing now may still commit (the
        event it names would be passed over), or never (a rolled-back insert's)."""
        ids = [
            int(row[0])
            for row in conn.execute(
                "SELECT id FROM events WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after, until, SETTLE_SCAN),
            )
        ]
        now = time.monotonic()
        expected = after + 1
        for found in ids:
            for missing in range(expected, found):
                first_seen = self._missing.setdefault(missing, now)
                if now - first_seen < GAP_WAIT_S:
                    return missing - 1
            expected = found + 1
        for missing in [m for m in self._missing if m < expected]:
            del self._missing[missing]  # committed, or waited out
        return until if len(ids) < SETTLE_SCAN else expected - 1

    async def _watch_conditions(self) -> None:
        while True:
            self._timed_due.clear()
            try:
                raised = await self.db.write(self._check_conditions_in)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("alert.conditions.pass_failed", error=str(exc))
                raised = _Raised(next_check_at=self.clock() + PASS_RETRY_S)
            self._report(raised)
            await wait_until(self._timed_due, raised.next_check_at, self.clock)

    def _check_conditions_in(self, conn: Connection) -> _Raised:
        """Raise what the lasting conditions call for now; say when to look again (None:
        no rule watches a condition, so only a new rule or a link event wakes it)."""
        raised = _Raised()
        rules = enabled_rules_in(conn, TIMED_KINDS)
        if not rules:
            return raised
        now = self.clock()
        if not singleton_in(conn, Singleton.ALERT_CONDITIONS):
            raised.next_check_at = now + CONTENDED_RETRY_S
            return raised
        next_check_at = now + self.policy.check_interval_s
        away = [r for r in rules if r.kind is AlertKind.GATEWAY_DISCONNECTED]
        if away:
            gateways = disconnected_gateways_in(conn)
            for rule in away:
                for gateway_id, name, since in gateways[:MAX_TIMED_SUBJECTS]:
                    alert = disconnected_alert(rule, gateway_id, name, since, now)
                    if alert is not None:
                        self._raise_in(conn, rule, alert, now, raised)
                    elif rule.covers(None, gateway_id):
                        next_check_at = min(next_check_at, disconnected_due_at(rule, since))
        for rule in (r for r in rules if r.kind is AlertKind.CERTIFICATE_EXPIRING):
            assert rule.expiring_within_days is not None
            ending = certificates_expiring_in(
                conn, now + rule.expiring_within_days * 86400, MAX_TIMED_SUBJECTS
            )
            names = gateway_names_in(conn, [gateway_id for gateway_id, _ in ending])
            for gateway_id, not_after in ending:
                name = names.get(gateway_id, gateway_id)
                alert = certificate_alert(rule, gateway_id, name, not_after, now)
                if alert is not None:
                    self._raise_in(conn, rule, alert, now, raised)
        raised.next_check_at = next_check_at
        return raised

    def _raise_in(
        self, conn: Connection, rule: Rule, alert: Alert, now: float, raised: _Raised
    ) -> None:
        state = subject_state_in(conn, rule.id, alert.subject)
        verdict = cooldown_verdict(state, alert.occurrence, rule.cooldown_s, now)
        if verdict is Verdict.SEEN:
            return
        if verdict is Verdict.SUPPRESS:
            mark_subject_in(conn, rule.id, alert.subject, alert.occurrence, fired_at=None)
            raised.suppressed.append((rule, alert))
            return
        delivery_id = self._queue_in(conn, rule, alert, now, suppressed=state.suppressed)
        mark_subject_in(conn, rule.id, alert.subject, alert.occurrence, fired_at=now)
        raised.fired.append((rule, alert, delivery_id))

    def _queue_in(
        self, conn: Connection, rule: Rule, alert: Alert, now: float, *, suppressed: int
    ) -> str:
        """Store the alert's delivery (its body as it will be signed); the sender is
        nudged once it commits. Returns its id."""
        delivery_id = str(uuid.uuid4())
        body = alert_body(rule, alert, delivery_id=delivery_id, fired_at=now, suppressed=suppressed)
        insert_delivery_in(
            conn,
            delivery_id,
            rule.id,
            subject=alert.subject,
            summary=alert.summary,
            event_id=alert.event_id,
            payload=body,
            now=now,
        )
        conn.after_commit(self.sender.nudge)
        return delivery_id

    def _report(self, raised: _Raised) -> None:
        for rule_id, event_id, error in raised.skipped:
            log.error("alert.event.skipped", rule_id=rule_id, event_id=event_id, error=error)
        for rule, alert, delivery_id in raised.fired:
            log.info(
                "alert.fired",
                rule_id=rule.id,
                kind=rule.kind.value,
                subject=alert.subject,
                delivery_id=delivery_id,
            )
            if self.on_raised is not None:
                self.on_raised(rule.kind.value, "fired")
        for rule, alert in raised.suppressed:
            log.info(
                "alert.suppressed",
                rule_id=rule.id,
                kind=rule.kind.value,
                subject=alert.subject,
                cooldown_s=rule.cooldown_s,
            )
            if self.on_raised is not None:
                self.on_raised(rule.kind.value, "suppressed")

    # ------------------------------------------------------------------ rules

    async def list_rules(
        self, kind: str | None, limit: int, offset: int
    ) -> tuple[list[RuleRow], int]:
        return await self.db.read(lambda conn: list_rules_in(conn, kind, limit, offset))

    async def get_rule(self, rule_id: str) -> RuleRow:
        return await self.db.read(lambda conn: require_rule_in(conn, rule_id))

    async def create_rule(self, fields: Mapping[str, Any]) -> RuleRow:
        """`fields`: the rule's columns (RULE_COLUMNS) with `secret` in clear instead of
        `secret_sealed`."""
        rule_id = str(uuid.uuid4())
        problem = rule_problem(
            AlertKind(fields["kind"]),
            board_id=fields.get("board_id"),
            disconnected_for_s=fields.get("disconnected_for_s"),
            expiring_within_days=fields.get("expiring_within_days"),
        )
        if problem is not None:  # refused before the write, which checks it again
            raise InvalidRule(*problem)
        await self.db.read(
            lambda conn: check_filters_in(conn, fields.get("board_id"), fields.get("gateway_id"))
        )
        columns = self._columns(rule_id, fields)
        row = await self.db.write(
            lambda conn: insert_rule_in(conn, rule_id, columns, self.clock()), urgent=True
        )
        self._timed_due.set()
        log.info("alert.rule.created", rule_id=rule_id, kind=row.rule.kind.value, url=row.url)
        return row

    async def update_rule(self, rule_id: str, changes: Mapping[str, Any]) -> RuleRow:
        columns = self._columns(rule_id, changes)
        row = await self.db.write_checked(
            lambda conn: require_rule_in(conn, rule_id),
            lambda conn, _: update_rule_in(conn, rule_id, columns, self.clock()),
            urgent=True,
        )
        self._timed_due.set()
        log.info("alert.rule.updated", rule_id=rule_id, fields=sorted(changes))
        return row

    async def delete_rule(self, rule_id: str) -> int:
        deliveries = await self.db.write_checked(
            lambda conn: require_rule_in(conn, rule_id),
            lambda conn, _: delete_rule_in(conn, rule_id),
            urgent=True,
        )
        log.info("alert.rule.deleted", rule_id=rule_id, deliveries=deliveries)
        return deliveries

    async def send_test(self, rule_id: str) -> dict[str, Any]:
        """Queue a test alert for the rule now, past its cooldown (disabled rules too): the
        receiver's URL, its signature check and the history can be tried before a page."""

        def op(conn: Connection) -> dict[str, Any]:
            rule = require_rule_in(conn, rule_id).rule
            now = self.clock()
            alert = Alert(
                subject="test",
                occurrence=f"test:{now!r}",
                summary=f"test alert from rule {rule.name!r} ({rule.kind.value}); nothing is wrong",
                occurred_at=now,
                detail={"test": True},
            )
            delivery_id = self._queue_in(conn, rule, alert, now, suppressed=0)
            return delivery_summary_in(conn, delivery_id)

        sent = await self.db.write(op, urgent=True)
        log.info("alert.test.queued", rule_id=rule_id, delivery_id=sent["id"])
        return sent

    async def list_deliveries(
        self, rule_id: str, state: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        return await self.db.read(
            lambda conn: list_deliveries_in(conn, rule_id, state, limit, offset)
        )

    async def get_delivery(self, rule_id: str, delivery_id: str) -> dict[str, Any]:
        return await self.db.read(lambda conn: get_delivery_in(conn, rule_id, delivery_id))

    def _columns(self, rule_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        columns = {name: value for name, value in fields.items() if name != "secret"}
        if "kind" in columns:
            columns["kind"] = AlertKind(columns["kind"]).value
        if "enabled" in columns:
            columns["enabled"] = int(bool(columns["enabled"]))
        if fields.get("secret") is not None:
            columns["secret_sealed"] = self.box.seal(
                str(fields["secret"]).encode(), context=rule_id.encode()
            )
        return columns
