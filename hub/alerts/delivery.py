"""The alert sender: pending deliveries become signed POSTs to the rule's URL.

A delivery row holds the exact body; each attempt signs it with the rule's secret
(opened from the SecretBox at that moment, so a secret set again applies to the next
attempt) and records one attempt row with the outcome. A 2xx answer delivers; anything
else (another status, a redirect, a refused connection, a timeout) is retried with the
webhook `RetryPolicy`'s capped exponential backoff, until it gives up. Rows are the
truth: an attempt cut short by a hub stop leaves its delivery pending, and the next
hub sends it (at least once; receivers dedupe by the alert id header).

Every hub on a shared database runs a sender: there, due deliveries are claimed in a
write that locks them where it reads them and holds them for a lease (their next
attempt moved past the attempt's timeout), so one hub sends each; a hub that dies
mid-attempt leaves them to another once the lease ends. Alone on SQLite the hub reads
them, as before.

Outbound HTTP runs on the loop (aiohttp), never follows redirects, sends a bounded
body and reads at most an excerpt of the answer. The worker does not poll: it sleeps
until the earliest due attempt and is woken when an alert is queued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from hub.alerts.rules import (
    ALERT_ID_HEADER,
    MAX_RESPONSE_EXCERPT_BYTES,
    SIGNATURE_HEADER,
    AlertPolicy,
)
from hub.alerts.store import (
    claim_due_deliveries_in,
    due_deliveries_in,
    next_due_at_in,
    record_attempt_in,
)
from hub.pki.secrets_box import SecretBox, SecretBoxError
from hub.store.database import Connection, Database
from hub.webhooks.rules import sign
from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived, wait_until
from missioncontrol.timefmt import iso
from missioncontrol.version import VERSION

log = get_logger("hub.alerts")

USER_AGENT = f"mc-hub/{VERSION} (alerts)"
CLAIM_MARGIN_S = 30.0  # a claim outlasts the attempt's timeout by this (the write after it)


class AlertSender:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        policy: AlertPolicy,
        *,
        clock: Callable[[], float] = time.time,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        """`on_attempt(outcome)`: delivered, retry or failed, after each attempt (metrics)."""
        self.db = db
        self.box = box
        self.policy = policy
        self.clock = clock
        self.on_attempt = on_attempt
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=self.policy.max_concurrent),
                timeout=aiohttp.ClientTimeout(total=self.policy.attempt_timeout_s),
                headers={"User-Agent": USER_AGENT},
            )
            self._task = start_long_lived(self._run(), name="alert-delivery", log=log)

    async def stop(self) -> None:
        """Stop sending. Attempts under way are cut short and stay pending (sent again by
        the next hub)."""
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._in_flight.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def nudge(self) -> None:
        """Look for due deliveries now (an alert was queued, an attempt finished)."""
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                next_due_at = await self._start_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep sending; the rows still say what is due
                log.error("alert.delivery.pass_failed", error=str(exc))
                next_due_at = self.clock() + self.policy.retry.initial_s
            await wait_until(self._wakeup, next_due_at, self.clock)

    async def _start_due(self) -> float | None:
        """Start an attempt for each due delivery there is room for; return when the next
        one not under way is due (None: wait for a nudge; a finished attempt gives one)."""
        room = self.policy.max_concurrent - len(self._in_flight)
        if room <= 0:
            return None
        busy = tuple(self._in_flight)

        def read(conn: Connection) -> tuple[list[Any], float | None]:
            rows = due_deliveries_in(conn, self.clock(), busy, room)
            return rows, next_due_at_in(conn, (*busy, *(r["id"] for r in rows)))

        def claim(conn: Connection) -> tuple[list[Any], float | None]:
            lease_s = self.policy.attempt_timeout_s + CLAIM_MARGIN_S
            rows = claim_due_deliveries_in(conn, self.clock(), busy, room, lease_s)
            return rows, next_due_at_in(conn, (*busy, *(r["id"] for r in rows)))

        if self.db.shared:
            rows, next_due_at = await self.db.write(claim, urgent=True)
        else:
            rows, next_due_at = await self.db.read(read)
        for row in rows:
            delivery_id = row["id"]
            self._in_flight[delivery_id] = asyncio.get_running_loop().create_task(
                self._attempt(dict(row)), name=f"alert-attempt-{delivery_id}"
            )
        return next_due_at

    async def _attempt(self, row: dict[str, Any]) -> None:
        delivery_id = row["id"]
        attempt = row["attempts"] + 1
        try:
            status, error, answer, duration_ms = await self._post(row, attempt)
            retry = self.policy.retry
            now = self.clock()
            next_attempt_at = (
                None
                if error is None or attempt >= retry.max_attempts
                else now + retry.delay_s(attempt)
            )
            state = await self.db.write(
                lambda conn: record_attempt_in(
                    conn,
                    delivery_id,
                    attempt=attempt,
                    at=now,
                    status=status,
                    error=error,
                    response=answer,
                    duration_ms=duration_ms,
                    next_attempt_at=next_attempt_at,
                ),
                urgent=True,
            )
            fields = {
                "delivery_id": delivery_id,
                "rule_id": row["rule_id"],
                "attempt": attempt,
                "status": status,
            }
            if state == "delivered":
                log.info("alert.delivery.delivered", **fields)
            elif state == "pending":
                log.warning(
                    "alert.delivery.retry",
                    **fields,
                    error=error,
                    next_attempt_at=iso(next_attempt_at),
                )
            elif state == "failed":
                log.error("alert.delivery.gave_up", **fields, error=error)
            if state is not None and self.on_attempt is not None:
                self.on_attempt("retry" if state == "pending" else state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad delivery must not stop the others
            log.error("alert.delivery.attempt_failed", delivery_id=delivery_id, error=str(exc))
        finally:
            self._in_flight.pop(delivery_id, None)
            self.nudge()

    async def _post(
        self, row: dict[str, Any], attempt: int
    ) -> tuple[int | None, str | None, bytes, float]:
        """One POST: (status, error or None when delivered, the answer's start, ms)."""
        assert self._session is not None
        body = bytes(row["payload"])
        try:
            secret = self.box.open(bytes(row["secret_sealed"]), context=row["rule_id"].encode())
        except SecretBoxError:
            return (
                None,
                (
                    "the rule's secret cannot be read by this hub; set it again with "
                    f"PATCH /api/v1/alerts/{row['rule_id']}"
                ),
                b"",
                0.0,
            )
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, body),
            ALERT_ID_HEADER: row["id"],
            "X-MC-Alert-Attempt": str(attempt),
        }
        started = time.perf_counter()
        try:
            async with self._session.post(
                row["url"], data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await response.content.read(MAX_RESPONSE_EXCERPT_BYTES)
                status = response.status
                location = response.headers.get("Location", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            duration_ms = (time.perf_counter() - started) * 1000
            what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
            return None, f"the request {what}", b"", duration_ms
        duration_ms = (time.perf_counter() - started) * 1000
        if 200 <= status < 300:
            return status, None, answer, duration_ms
        if 300 <= status < 400:
            error = (
                f"the receiver answered {status}, a redirect to {location[:200]!r}; redirects "
                "are not followed: set the rule's url to the final address"
            )
        else:
            error = f"the receiver answered {status}"
        return status, error, answer, duration_ms
