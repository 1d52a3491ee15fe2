"""Template sync: re-render and re-apply a gateway's agents as a background job.

A request never waits for the gateway: the job queues one ApplyAgent per agent
(a new generation, same token unless rotation is asked for) and returns at once;
its progress and per-agent results are read from the outbox acknowledgements,
so they need no extra bookkeeping. Jobs live in memory (a restarted hub forgets
them; the queued commands themselves are durable).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hub.agents import AgentError, AgentRow
from hub.database import Database
from hub.reconciler import Reconciler
from missioncontrol.log import get_logger

log = get_logger("hub.template_sync")
MAX_JOBS = 1000


@dataclass(frozen=True)
class SyncOptions:
    include_main: bool = True
    lead_only: bool = False
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


@dataclass
class SyncJob:
    id: str
    gateway_id: str
    options: SyncOptions
    created_at: float = field(default_factory=time.time)
    items: list[SyncItem] = field(default_factory=list)
    queued_all: bool = False


class TemplateSync:
    def __init__(self, db: Database, reconciler: Reconciler) -> None:
        self.db = db
        self.reconciler = reconciler
        self.jobs: dict[str, SyncJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start_job(self, gateway_id: str, options: SyncOptions) -> SyncJob:
        agents = await self.db.read(lambda conn: _select(conn, gateway_id, options))
        job = SyncJob(
            str(uuid.uuid4()),
            gateway_id,
            options,
            items=[SyncItem(a.id, a.name, a.gateway_agent_id) for a in agents],
        )
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS:  # forget the oldest
            self.jobs.pop(next(iter(self.jobs)))
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info(
            "templates.sync.started", gateway_id=gateway_id, job_id=job.id, agents=len(job.items)
        )
        return job

    async def _run(self, job: SyncJob) -> None:
        for item in job.items:
            try:
                if job.options.rotate_tokens:
                    await self.reconciler.rotate_token(item.agent_id)
                row = await self.reconciler.reapply(
                    item.agent_id,
                    overwrite=job.options.overwrite,
                    force_bootstrap=job.options.force_bootstrap,
                )
                item.generation = row.lifecycle_generation
            except AgentError as exc:
                item.error = str(exc)
        job.queued_all = True
        log.info(
            "templates.sync.queued",
            gateway_id=job.gateway_id,
            job_id=job.id,
            errors=sum(1 for i in job.items if i.error),
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
            if item.error:
                state, message = "failed", item.error
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
        done = job.queued_all and all(i["state"] in ("applied", "failed") for i in items)
        return {
            "job_id": job.id,
            "gateway_id": job.gateway_id,
            "status": "done" if done else "running",
            "options": job.options.__dict__,
            "total": len(items),
            "applied": sum(1 for i in items if i["state"] == "applied"),
            "failed": sum(1 for i in items if i["state"] == "failed"),
            "items": items,
        }

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


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
