"""The sidecar's Prometheus metrics and the small HTTP server behind --metrics-listen.

The local heartbeat API stays as cheap as it was: an accepted beat is already counted
by the relay (`RelayStats.received`), which a scrape reads; only a refused beat pays a
counter increment, pre-bound per reason. Link and gateway state are read at scrape time.

Names (all prefixed mc_sidecar_):
  heartbeats_accepted_total                  beats the local API took
  runtime_checkins_total                     gateway runs (heartbeat, chat) taken as check-ins
  agent_conditions                           conditions found now (runtime_watch.py)
  heartbeats_refused_total{reason}           unauthenticated, forbidden, invalid, too_large,
                                             rate_limited, other
  heartbeats_unacknowledged                  agents whose latest beat the hub has not acked
  heartbeat_relay_lag_seconds                age of the oldest beat not yet acknowledged
  link_connected                             1 while the stream to the hub is up
  link_streams_opened_total, link_reconnects_total
  gateway_reachable                          1 while the gateway's WebSocket is up
  commands_applied_total{kind,result}        hub commands, by type and outcome
  command_duration_seconds{kind}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from missioncontrol.log import get_logger
from missioncontrol.metrics import LATENCY_BUCKETS, exposition, new_registry
from missioncontrol.netaddr import HostPort
from protos import link_pb2 as pb

log = get_logger("sidecar.metrics")

REFUSAL_REASONS = {
    401: "unauthenticated",
    403: "forbidden",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
}
COMMAND_KINDS = ("apply_agent", "remove_agent", "wake_agent", "set_heartbeat", "set_credentials")


@dataclass(frozen=True)
class Readings:
    """What a scrape reads from the running parts."""

    heartbeats_accepted: int
    unacknowledged: int
    oldest_unacknowledged_at: float | None  # epoch seconds of the oldest unacked beat
    link_connected: bool
    link_streams_opened: int
    gateway_reachable: bool
    runtime_checkins: int = 0
    conditions: int = 0


class _ReadingsCollector(Collector):
    def __init__(self, read: Callable[[], Readings]) -> None:
        self.read = read

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self.read()))

    def _families(self, r: Readings | None) -> list[Metric]:
        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value if r is not None else None)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value if r is not None else None)

        now = time.time()
        lag = 0.0
        if r is not None and r.oldest_unacknowledged_at is not None:
            lag = max(0.0, now - r.oldest_unacknowledged_at)
        return [
            counter(
                "mc_sidecar_heartbeats_accepted",
                "heartbeats the local agent API accepted",
                r.heartbeats_accepted if r else 0,
            ),
            counter(
                "mc_sidecar_runtime_checkins",
                "runs the gateway finished for managed agents (heartbeat, chat) taken as check-ins",
                r.runtime_checkins if r else 0,
            ),
            gauge(
                "mc_sidecar_agent_conditions",
                "what keeps managed agents from running, found now (heartbeat missing, runs "
                "failing, provider sign-in, gateway unreachable)",
                r.conditions if r else 0,
            ),
            gauge(
                "mc_sidecar_heartbeats_unacknowledged",
                "agents whose latest heartbeat the hub has not acknowledged yet",
                r.unacknowledged if r else 0,
            ),
            gauge(
                "mc_sidecar_heartbeat_relay_lag_seconds",
                "age of the oldest heartbeat not yet acknowledged by the hub (0: none)",
                lag,
            ),
            gauge(
                "mc_sidecar_link_connected",
                "1 while the stream to the hub is up",
                float(r.link_connected) if r else 0,
            ),
            counter(
                "mc_sidecar_link_streams_opened",
                "streams to the hub that reached Welcome",
                r.link_streams_opened if r else 0,
            ),
            counter(
                "mc_sidecar_link_reconnects",
                "streams to the hub opened after the first",
                max(0, r.link_streams_opened - 1) if r else 0,
            ),
            gauge(
                "mc_sidecar_gateway_reachable",
                "1 while the OpenClaw gateway's WebSocket is connected",
                float(r.gateway_reachable) if r else 0,
            ),
        ]


class SidecarMetrics:
    """One sidecar's metrics, in a registry of its own."""

    def __init__(self, read: Callable[[], Readings]) -> None:
        self.registry: CollectorRegistry = new_registry("sidecar")
        r = self.registry
        r.register(_ReadingsCollector(read))
        self.heartbeats_refused = Counter(
            "mc_sidecar_heartbeats_refused",
            "heartbeats the local agent API refused, by reason",
            ["reason"],
            registry=r,
        )
        self._refused = {
            status: self.heartbeats_refused.labels(reason)
            for status, reason in REFUSAL_REASONS.items()
        }
        self._refused_other = self.heartbeats_refused.labels("other")
        self.commands = Counter(
            "mc_sidecar_commands_applied",
            "hub commands processed, by type and outcome",
            ["kind", "result"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "mc_sidecar_command_duration_seconds",
            "time to apply one hub command, by type",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def heartbeat_refused(self, status: int) -> None:
        self._refused.get(status, self._refused_other).inc()

    def command_applied(self, kind: str, outcome: int, seconds: float) -> None:
        kind = kind if kind in COMMAND_KINDS else "unknown"
        result = pb.CommandResult.Outcome.Name(outcome).lower()
        self.commands.labels(kind, result).inc()
        self.command_seconds.labels(kind).observe(seconds)


class MetricsServer:
    """GET /metrics on its own address (loopback by default), apart from the agent API."""

    def __init__(self, listen: HostPort, registry: CollectorRegistry) -> None:
        self.listen = listen
        self.registry = registry
        self.address: HostPort | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> HostPort:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.listen.host, self.listen.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsServerError(
                f"metrics cannot listen on {self.listen}: {exc.strerror or exc}; free the port, "
                "choose another with --metrics-listen, or turn metrics off with "
                "--metrics-listen off"
            ) from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = HostPort(host, port)
        if not self.listen.is_loopback:
            log.warning(
                "metrics.exposed",
                address=str(self.address),
                detail="/metrics has no authentication; anyone who reaches this address reads it",
            )
        log.info("metrics.started", address=str(self.address))
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return exposition(self.registry)


class MetricsServerError(RuntimeError):
    """The metrics listener could not start; the message names the fix."""
