"""The webhook delivery worker: stored payloads become wakes of the board's agent.

A due payload becomes a `WakeAgent` command to the webhook's agent (else the
board's lead): the webhook's description is the instruction, the payload follows
fenced as external, untrusted data. The command is queued in the gateway's outbox
in the same transaction that marks the payload delivered; the outbox is persisted
and replayed to the sidecar until acknowledged, so a queued delivery is not lost
when a sidecar is offline. Every hub on a shared database runs this worker: a pass
locks the payloads it reads until the commit that marks them (hub/store/claims.py), so
each is delivered by one hub, and a hub that dies mid-pass leaves them due.

Without a target agent a delivery is retried with capped exponential backoff, up to
`RetryPolicy.max_attempts`, and `last_error` says why. The worker does not poll: it
sleeps until the earliest `next_attempt_at` and is woken by each new payload.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hub.store.database import Connection, Database
from hub.store.errors import StoreError
from hub.store.event_log import add_event
from hub.store.outbox import enqueue_command_in
from hub.webhooks.rules import PREVIEW_BYTES, RetryPolicy, delivery_message
from hub.webhooks.store import (
    due_payloads_in,
    mark_attempt_failed_in,
    mark_delivered_in,
    next_due_at_in,
    target_agent_in,
)
from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived, wait_until
from missioncontrol.timefmt import iso
from protos import link_pb2 as pb

log = get_logger("hub.webhooks")

DELIVERY_BATCH = 50


@dataclass
class _Pass:
    """What one delivery pass did, for after its transaction commits."""

    next_due_at: float | None = None
    batch_full: bool = False
    logs: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)


class DeliveryWorker:
    def __init__(
        self, db: Database, retry: RetryPolicy, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.retry = retry
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = start_long_lived(self._run(), name="webhook-delivery", log=log)
            log.info("webhook.worker.started")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def nudge(self) -> None:
        """Look for due deliveries now (a payload arrived, a target may have appeared)."""
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                done = await self._deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the worker alive; the rows still say what is due
                log.error("webhook.delivery.pass_failed", error=str(exc))
                done = _Pass(next_due_at=self.clock() + self.retry.initial_s)
            if done.batch_full:
                continue
            await wait_until(self._wakeup, done.next_due_at, self.clock)

    async def _deliver_due(self) -> _Pass:
        def job(conn: Connection) -> _Pass:
            done = _Pass()
            now = self.clock()
            rows = due_payloads_in(conn, now, PREVIEW_BYTES, DELIVERY_BATCH)
            for row in rows:
                self._attempt(conn, row, now, done)
            done.batch_full = len(rows) == DELIVERY_BATCH
            done.next_due_at = next_due_at_in(conn)
            return done

        done = await self.db.write(job)
        for level, event, fields in done.logs:
            log.log(level, event, **fields)
        return done

    def _attempt(self, conn: Connection, row: sqlite3.Row, now: float, done: _Pass) -> None:
        attempts = row["delivery_attempts"] + 1
        ids = {
            "payload_id": row["id"],
            "webhook_id": row["webhook_id"],
            "board_id": row["board_id"],
        }
        target = target_agent_in(conn, row["board_id"], row["agent_id"])
        if target is not None and target["paused_at"] is not None:
            # A paused agent is not woken: hold the payload, without spending an attempt,
            # and look again later (it is delivered once the agent is resumed).
            held = f"agent {target['id']} is paused; delivered once it is resumed"
            mark_attempt_failed_in(
                conn, row["id"], row["delivery_attempts"], now + self.retry.max_s, held
            )
            done.logs.append(
                (logging.INFO, "webhook.delivery.held", {**ids, "agent_id": target["id"]})
            )
            return
        if target is None:
            error = (
                f"no agent to deliver to: the webhook names no current agent and board "
                f"{row['board_id']} has no lead; create the board's lead agent or set the "
                "webhook's agent_id"
            )
        else:
            message = delivery_message(
                board_name=row["board_name"],
                webhook_id=row["webhook_id"],
                description=row["description"],
                payload_id=row["id"],
                content_type=row["content_type"],
                received_at=row["received_at"],
                preview=bytes(row["preview"]),
                size_bytes=row["size_bytes"],
            )
            # The agent's current generation, so the sidecar does not take the wake for a
            # stale one; attempt 0 marks it as not one of the lifecycle's own wakes.
            command = pb.Command(
                wake_agent=pb.WakeAgent(
                    agent_id=target["gateway_agent_id"],
                    generation=target["lifecycle_generation"],
                    message=message,
                    attempt=0,
                )
            )
            try:
                sequence = enqueue_command_in(conn, target["gateway_id"], command)
            except StoreError as exc:
                error = f"could not queue the wake for agent {target['id']}: {exc}"
            else:
                mark_delivered_in(conn, row["id"], attempts, now)
                add_event(
                    conn,
                    "webhook.delivery.queued",
                    gateway_id=target["gateway_id"],
                    agent_id=target["id"],
                    at=now,
                    sequence=sequence,
                    **ids,
                )
                done.logs.append(
                    (
                        logging.INFO,
                        "webhook.delivery.queued",
                        {
                            **ids,
                            "agent_id": target["id"],
                            "gateway_id": target["gateway_id"],
                            "sequence": sequence,
                            "attempt": attempts,
                        },
                    )
                )
                return
        if attempts >= self.retry.max_attempts:
            last_error = f"gave up after {attempts} attempts: {error}"
            next_attempt_at = None
            event = "webhook.delivery.gave_up"
        else:
            last_error = f"attempt {attempts} of {self.retry.max_attempts} failed: {error}"
            next_attempt_at = now + self.retry.delay_s(attempts)
            event = "webhook.delivery.retry"
        mark_attempt_failed_in(conn, row["id"], attempts, next_attempt_at, last_error)
        fields = {**ids, "attempt": attempts, "next_attempt_at": iso(next_attempt_at)}
        done.logs.append((logging.WARNING, event, {**fields, "error": error}))
