"""Template sync: re-render and re-apply a gateway's agents as a background job.

A request never waits for the gateway: the job queues one ApplyAgent per agent
(a new generation, same token unless rotation is asked for) and returns at once;
its progress and per-agent results are read from the outbox acknowledgements.
Jobs are rows, so an admin polling one across a hub restart still gets its
results; a job the restart cut short says which agents it never queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hub.provisioning.agents import AgentError, AgentRow
from hub.provisioning.service import Provisioning
from hub.store.database import Database
from missioncontrol.log import get_logger

log = get_logger("hub.provisioning.template_sync")
KEEP_JOBS_S = 7 * 24 * 3600
INTERRUPTED = "the hub stopped before this agent was queued; run the sync again"


@dataclass(frozen=True)
class SyncOptions:
    include_main: bool = True
    lead_only: bool = False
    reset_sessions: bool = False
    rotate_tokens: bool = False
    force_bootstrap: bool = False
    overwrite: bool = False
    board_id: str | None = None


@dataclass
class SyncItem:
    agent_id: str
    name: str
    gateway_agent_id: str
    generation: int = 0
    error: str | None = None
    skipped: str | None = None  # why it was left alone (paused)


PAUSED = "paused: a paused agent's templates are not synced; resume it, then sync again"


@dataclass
class SyncJob:
    id: str
    gateway_id: str
    options: SyncOptions
    created_at: float = field(default_factory=time.time)
    items: list[SyncItem] = field(default_factory=list)
    # Whether this hub was still queueing the job when it was read: an item without a
    # generation is then pending, not cut short by a stop.
    running: bool = True


class TemplateSync:
    def __init__(self, db: Database, provisioning: Provisioning) -> None:
        self.db = db
        self.provisioning = provisioning
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start_job(self, gateway_id: str, options: SyncOptions) -> SyncJob:
        agents = await self.db.read(lambda conn: _select(conn, gateway_id, options))
        job = SyncJob(
            str(uuid.uuid4()),
            gateway_id,
            options,
            items=[
                SyncItem(
                    a.id,
                    a.name,
                    a.gateway_agent_id,
                    skipped=PAUSED if a.paused_at is not None else None,
                )
                for a in agents
            ],
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM template_sync_jobs WHERE created_at < ?",
                (job.created_at - KEEP_JOBS_S,),
            )
            conn.execute(
                "INSERT INTO template_sync_jobs (id, gateway_id, options, items, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    job.id,
                    gateway_id,
                    json.dumps(dataclasses.asdict(options)),
                    _items_json(job),
                    job.created_at,
                ),
            )

        await self.db.write(insert)
        self._running.add(job.id)
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info(
            "templates.sync.started", gateway_id=gateway_id, job_id=job.id, agents=len(job.items)
        )
        return job

    async def job(self, job_id: str) -> SyncJob | None:
        running = job_id in self._running  # before the read: it may finish meanwhile
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM template_sync_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        )
        if row is None:
            return None
        return SyncJob(
            row["id"],
            row["gateway_id"],
            SyncOptions(**json.loads(row["options"])),
            created_at=row["created_at"],
            items=[SyncItem(**item) for item in json.loads(row["items"])],
            running=running,
        )

    async def _run(self, job: SyncJob) -> None:
        try:
            for item in job.items:
                if item.skipped:
                    continue
                try:
                    if job.options.rotate_tokens:
                        await self.provisioning.rotate_token(item.agent_id)
                    row = await self.provisioning.reapply(
                        item.agent_id,
                        overwrite=job.options.overwrite,
                        force_bootstrap=job.options.force_bootstrap,
                        reset_session=job.options.reset_sessions,
                    )
                    item.generation = row.lifecycle_generation
                except AgentError as exc:
                    item.error = str(exc)
                await self._save(job)
        finally:
            self._running.discard(job.id)
        log.info(
            "templates.sync.queued",
            gateway_id=job.gateway_id,
            job_id=job.id,
            errors=sum(1 for i in job.items if i.error),
        )

    async def _save(self, job: SyncJob) -> None:
        await self.db.write(
            lambda conn: conn.execute(
                "UPDATE template_sync_jobs SET items = ? WHERE id = ?", (_items_json(job), job.id)
            )
        )

    async def status(self, job: SyncJob) -> dict[str, Any]:
        """The job with each agent's result, read from the outbox acknowledgements."""

        def op(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            results: dict[str, dict[str, Any]] = {}
            for item in job.items:
                row = conn.execute(
                    """SELECT acked_at, outcome, error FROM commands WHERE gateway_id = ?
                           AND agent_id = ? AND kind = 'apply_agent' AND generation = ?
                       ORDER BY sequence DESC LIMIT 1""",
                    (job.gateway_id, item.gateway_agent_id, item.generation),
                ).fetchone()
                results[item.agent_id] = dict(row) if row else {}
            return results

        acks = await self.db.read(op)
        items = []
        for item in job.items:
            ack = acks.get(item.agent_id, {})
            if item.skipped:
                state, message = "skipped", item.skipped
            elif item.error:
                state, message = "failed", item.error
            elif not item.generation and not job.running:
                state, message = "failed", INTERRUPTED
            elif not item.generation:
                state, message = "pending", None
            elif not ack.get("acked_at"):
                state, message = "queued", None
            elif ack["outcome"] in ("APPLIED", "ALREADY_APPLIED", "CONFIRMED_BY_HELLO"):
                state, message = "applied", None
            else:
                state, message = "failed", ack.get("error") or ack["outcome"]
            items.append(
                {
                    "agent_id": item.agent_id,
                    "agent_name": item.name,
                    "generation": item.generation,
                    "state": state,
                    "message": message,
                }
            )
        done = all(i["state"] in ("applied", "failed", "skipped") for i in items)
        return {
            "job_id": job.id,
            "gateway_id": job.gateway_id,
            "status": "done" if done else "running",
            "options": dataclasses.asdict(job.options),
            "total": len(items),
            "applied": sum(1 for i in items if i["state"] == "applied"),
            "failed": sum(1 for i in items if i["state"] == "failed"),
            "skipped": sum(1 for i in items if i["state"] == "skipped"),
            "items": items,
        }

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _items_json(job: SyncJob) -> str:
    return json.dumps([dataclasses.asdict(item) for item in job.items])


def _select(conn: sqlite3.Connection, gateway_id: str, options: SyncOptions) -> list[AgentRow]:
    rows = conn.execute(
        """SELECT * FROM agents WHERE gateway_id = ? AND status != 'deleting'
               AND (? IS NULL OR board_id = ? OR (kind = 'main' AND ?))
           ORDER BY created_at, id""",
        (gateway_id, options.board_id, options.board_id, options.include_main),
    ).fetchall()
    agents = [AgentRow.from_row(r) for r in rows]
    if not options.include_main:
        agents = [a for a in agents if a.kind != "main"]
    if options.lead_only:
        agents = [a for a in agents if a.kind == "lead"]
    return agents
