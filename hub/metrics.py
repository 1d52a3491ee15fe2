"""The hub's Prometheus metrics, one set per Hub (built in hub/app.py).

Hot paths pay one counter increment and no label lookup: heartbeat ingest counts
beats with a pre-bound counter; a group commit is observed on the writer thread.
What a scrape can read for itself (streams now open, outbox depth, database size) is
read at scrape time instead of being counted on every change.

Names (all prefixed mc_hub_):
  link_streams                          sidecar streams open now
  commands_queued_total                 commands put in gateway outboxes
  commands_acked_total{outcome}         command results from sidecars
  commands_pending                      queued and not yet acknowledged (all outboxes)
  outbox_depth_max                      unacknowledged commands of the deepest outbox
  outbox_oldest_pending_seconds         age of the oldest unacknowledged command
  heartbeats_ingested_total             agent heartbeats stored
  heartbeat_batches_ingested_total      heartbeat batches stored (one per sidecar flush)
  db_group_commits_total, db_write_jobs_total, db_group_commit_duration_seconds
  db_size_bytes                         database file plus its WAL
  reconciler_wakes_total                wakes queued (first wakes and re-wakes)
  agents_offline_verdicts_total{reason} no_checkin, heartbeat_silence, apply_refused
  lifecycle_events_total{event}         every lifecycle log event, by its stable name
  http_requests_total{route,method,status}, http_request_duration_seconds{route,method}
  backups_total{result}, backup_last_success_timestamp_seconds
  alerts_total{kind,outcome}            alerts fired or held back by a cooldown
  alert_attempts_total{outcome}         webhook attempts: delivered, retry, failed
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hub.lifecycle.decisions import LogEvent, offline_reason
from hub.link.server import ReportSink
from hub.store.backup import BackupInfo
from hub.store.database import Database
from missioncontrol.metrics import LATENCY_BUCKETS, new_registry
from protos import link_pb2 as pb

UNMATCHED_ROUTE = "unmatched"


class HubMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or new_registry("hub")
        self.link_streams = Gauge("mc_hub_link_streams", "sidecar streams open now", registry=r)
        self.commands_queued = Counter(
            "mc_hub_commands_queued", "commands put in gateway outboxes", registry=r
        )
        self.commands_acked = Counter(
            "mc_hub_commands_acked",
            "command results received from sidecars, by outcome",
            ["outcome"],
            registry=r,
        )
        self._acked = {
            value: self.commands_acked.labels(name.lower())
            for name, value in pb.CommandResult.Outcome.items()
        }
        self.commands_pending = Gauge(
            "mc_hub_commands_pending",
            "commands queued and not yet acknowledged, all gateways",
            registry=r,
        )
        self.outbox_depth_max = Gauge(
            "mc_hub_outbox_depth_max",
            "unacknowledged commands in the deepest gateway outbox",
            registry=r,
        )
        self.outbox_oldest_pending = Gauge(
            "mc_hub_outbox_oldest_pending_seconds",
            "age of the oldest unacknowledged command (0: none)",
            registry=r,
        )
        self.heartbeats = Counter(
            "mc_hub_heartbeats_ingested", "agent heartbeats received and stored", registry=r
        )
        self.agent_tokens = Counter(
            "mc_hub_agent_tokens",
            "tokens agents used, all agents, as their gateways count them (GET /api/v1/usage "
            "has them per agent and board)",
            registry=r,
        )
        self.heartbeat_batches = Counter(
            "mc_hub_heartbeat_batches_ingested",
            "heartbeat batches stored (one per sidecar flush)",
            registry=r,
        )
        self.commits = Counter(
            "mc_hub_db_group_commits", "group commits of the database writer", registry=r
        )
        self.write_jobs = Counter(
            "mc_hub_db_write_jobs",
            "write jobs committed (one group commit carries many)",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "mc_hub_db_group_commit_duration_seconds",
            "time from BEGIN to a durable COMMIT of one group commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_size = Gauge(
            "mc_hub_db_size_bytes",
            "database file plus its write-ahead log (PostgreSQL: the database's size)",
            registry=r,
        )
        self.wakes = Counter(
            "mc_hub_reconciler_wakes", "wakes queued (first wakes and re-wakes)", registry=r
        )
        self.offline = Counter(
            "mc_hub_agents_offline_verdicts",
            "agents marked offline, by reason",
            ["reason"],
            registry=r,
        )
        self.lifecycle_events = Counter(
            "mc_hub_lifecycle_events",
            "lifecycle decisions, by their log event name",
            ["event"],
            registry=r,
        )
        self._lifecycle = {e.value: self.lifecycle_events.labels(e.value) for e in LogEvent}
        self.http_requests = Counter(
            "mc_hub_http_requests",
            "REST API requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "mc_hub_http_request_duration_seconds",
            "REST API request durations by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backups = Counter(
            "mc_hub_backups", "scheduled backups, by result", ["result"], registry=r
        )
        self.backup_last_success = Gauge(
            "mc_hub_backup_last_success_timestamp_seconds",
            "when the last scheduled backup completed (epoch seconds; 0: none yet)",
            registry=r,
        )

        self.alerts = Counter(
            "mc_hub_alerts",
            "alerts raised by rule kind: fired, or suppressed by a cooldown",
            ["kind", "outcome"],
            registry=r,
        )
        self.alert_attempts = Counter(
            "mc_hub_alert_attempts",
            "alert webhook attempts, by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=r,
        )

    # ------------------------------------------------------------- observers

    def alert_raised(self, kind: str, outcome: str) -> None:
        self.alerts.labels(kind, outcome).inc()

    def alert_attempted(self, outcome: str) -> None:
        self.alert_attempts.labels(outcome).inc()

    def commands_queued_notice(self, gateway_id: str) -> None:
        """A listener on the outbox notice: one per queued command, after its commit."""
        self.commands_queued.inc()

    def committed(self, jobs: int, seconds: float) -> None:
        """Database.on_commit (the writer thread)."""
        self.commits.inc()
        self.write_jobs.inc(jobs)
        self.commit_seconds.observe(seconds)

    def lifecycle_logged(self, event: str, fields: dict[str, Any]) -> None:
        """Reconciler.on_log: every lifecycle log event once its transaction committed."""
        child = self._lifecycle.get(event)
        if child is not None:
            child.inc()
        if event == LogEvent.ENQUEUED.value and (
            fields.get("command") == "wake_agent" or fields.get("wake") is True
        ):
            self.wakes.inc()
        elif (reason := offline_reason(event, fields)) is not None:
            self.offline.labels(reason).inc()

    def backup_finished(self, info: BackupInfo | None) -> None:
        if info is None:
            self.backups.labels("failed").inc()
            return
        self.backups.labels("ok").inc()
        self.backup_last_success.set(info.taken_at or time.time())

    def command_results(self, results: list[pb.CommandResult]) -> None:
        for result in results:
            child = self._acked.get(result.outcome)
            if child is not None:
                child.inc()

    # ------------------------------------------------------------- scrape time

    async def refresh(self, db: Database, streams: int) -> None:
        """Read what the scrape reports as it stands now (one small query)."""
        self.link_streams.set(streams)
        now = time.time()

        def read(conn: Any) -> tuple[int, int, float | None, int | None]:
            total, deepest = conn.execute(
                "SELECT COALESCE(SUM(next_sequence - 1 - acked_sequence), 0), "
                "COALESCE(MAX(next_sequence - 1 - acked_sequence), 0) FROM gateways"
            ).fetchone()
            oldest = conn.execute(
                "SELECT MIN(created_at) FROM commands WHERE acked_at IS NULL"
            ).fetchone()[0]
            size = None  # the SQLite file is measured on disk, below
            if conn.dialect == "postgresql":
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            return int(total), int(deepest), oldest, size

        total, deepest, oldest, size = await db.read(read)
        self.commands_pending.set(total)
        self.outbox_depth_max.set(deepest)
        self.outbox_oldest_pending.set(max(0.0, now - oldest) if oldest else 0.0)
        if db.path is not None:
            size = _size(db.path) + _size(db.path.with_name(db.path.name + "-wal"))
        self.db_size.set(size or 0)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """Counts and times every API request by its route template (bounded labels)."""
        requests, seconds = self.http_requests, self.http_seconds

        @web.middleware
        async def metered(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else UNMATCHED_ROUTE
                method = request.method if request.method.isalpha() else "OTHER"
                requests.labels(route, method[:10], str(status)).inc()
                seconds.labels(route, method[:10]).observe(time.perf_counter() - started)

        return metered


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class MeteredReports:
    """The link's report sink with counting in front: heartbeats and command results are
    counted once the inner sink stored them."""

    def __init__(self, inner: ReportSink, metrics: HubMetrics) -> None:
        self.inner = inner
        self._beats = metrics.heartbeats
        self._batches = metrics.heartbeat_batches
        self._metrics = metrics

    async def command_results(
        self, gateway_id: str, results: list[pb.CommandResult], *, epoch: int | None = None
    ) -> None:
        await self.inner.command_results(gateway_id, results, epoch=epoch)
        self._metrics.command_results(results)

    def heartbeats(self, gateway_id: str, batch: pb.HeartbeatBatch) -> asyncio.Future[None]:
        stored = self.inner.heartbeats(gateway_id, batch)
        stored.add_done_callback(functools.partial(self._count_beats, len(batch.beats)))
        return stored

    def _count_beats(self, beats: int, stored: asyncio.Future[None]) -> None:
        if not stored.cancelled() and stored.exception() is None:
            self._beats.inc(beats)
            self._batches.inc()

    async def run_observed(
        self, gateway_id: str, run: pb.RunObserved, *, epoch: int | None = None
    ) -> None:
        await self.inner.run_observed(gateway_id, run, epoch=epoch)

    async def gateway_state(self, gateway_id: str, state: pb.GatewayState) -> None:
        await self.inner.gateway_state(gateway_id, state)
