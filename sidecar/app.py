"""Composition root of mc-sidecar: builds the parts, starts them, stops them in order.

Start: local state and credential index -> agent API (bound first, so the Hello
names its real port and a taken port fails before anything else starts) ->
heartbeat relay -> gateway client -> config watcher -> command queue -> link -> usage
relay (token usage of managed agents' sessions, sidecar/usage.py) -> runtime watch (runs
as check-ins, conditions as causes: sidecar/runtime_watch.py).
The /metrics listener (--metrics-listen) starts right after the agent API.
Stop: the agent API and /metrics first (no new heartbeats), then the link (no new commands),
the command queue and run watchers, the config watcher, the gateway client, then
the relay writes unacknowledged heartbeats to the state, which closes last. Each step
runs even if one before it failed (logged as `sidecar.stop.failed`): a part that
cannot stop cleanly must not cost the beats the relay still holds.

The state directory holds the sidecar's key and its token verifiers: it is made (or
tightened to) 0700 before anything is written to it, in every mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from missioncontrol.log import get_logger
from missioncontrol.private_files import ensure_private_dir
from missioncontrol.tasks import start_long_lived
from protos import link_pb2 as pb
from protos.contract import epoch_s
from sidecar.agent_api import AgentApi, AgentApiLimits
from sidecar.commands import CommandApplier, CommandQueue
from sidecar.config import SidecarConfig
from sidecar.config_watch import ConfigReport, ConfigWatcher
from sidecar.credentials import CredentialIndex
from sidecar.gateway import GatewayClient, GatewayInfo
from sidecar.gateway.openclaw import OpenClawGatewayClient
from sidecar.gateway.queries import GatewayQueries
from sidecar.link.backoff import Backoff
from sidecar.link.client import LinkClient
from sidecar.link.enrollment import CertificateRenewal
from sidecar.link.heartbeats import HeartbeatRelay
from sidecar.link.hub_calls import HubCalls
from sidecar.link.identity import renewal_due_at
from sidecar.metrics import MetricsServer, Readings, SidecarMetrics
from sidecar.openclaw_config import Drift, DriftKind
from sidecar.reports import OwnChanges, Reports
from sidecar.runtime_watch import HOT_RELOAD_S, RuntimeWatch
from sidecar.state import LocalState
from sidecar.usage import UsagePolicy, UsageRelay
from sidecar.workspace import WorkspaceWriter, atomic_write

log = get_logger("sidecar.app")

HUB_ROOT_FILE = "hub-workspace-root"  # in the state directory: the root the hub declared


def _saved_hub_root(state_dir: Path) -> Path | None:
    try:
        text = (state_dir / HUB_ROOT_FILE).read_text().strip()
    except OSError:
        return None
    return Path(text) if text.startswith("/") else None


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        gateway: GatewayClient | None = None,
        *,
        link_backoff: Backoff | None = None,
        agent_api_limits: AgentApiLimits | None = None,
        writer: WorkspaceWriter | None = None,
        usage_policy: UsagePolicy | None = None,
    ) -> None:
        self.config = config
        # Without --workspace-root the sidecar writes where the hub declares (saved here once
        # learnt, so a restart's first Hello already names it); else where it was told.
        self.workspace_root = (
            _saved_hub_root(config.state_dir) if config.follows_hub_workspace_root else None
        ) or config.workspace_root
        self.workspace_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        ensure_private_dir(config.state_dir)
        # Its own registry, read at scrape time through `_readings` (parts built below).
        self.metrics = SidecarMetrics(self._readings)
        self.state = LocalState(config.state_db)
        # mTLS: the certificate names the gateway; insecure-dev: a flag or a generated id.
        self.renewal: CertificateRenewal | None = None
        if config.insecure_dev:
            self.gateway_id = config.gateway_id or self.state.gateway_id()
        else:
            self.renewal = CertificateRenewal(config.state_dir, self._send)
            renewal_due_at(self.renewal.identity.certificate)  # fail now if already expired
            self.gateway_id = self.renewal.identity.gateway_id
        self.credentials = CredentialIndex(self.state)
        self.credentials.reload()
        self._hub_agent_ids = self.state.hub_agent_ids()
        self.relay = HeartbeatRelay(self._send, self.state)
        self.writer = writer or WorkspaceWriter(self.workspace_root)
        self.gateway: GatewayClient = gateway or OpenClawGatewayClient(config.openclaw_config)
        # Agents whose removal is under way (until it is recorded): nothing restores them.
        self._removing: set[str] = set()
        self.applier = CommandApplier(
            self.state,
            self.writer,
            self.gateway,
            on_run_observed=self._report_run,
            on_unmanage=self._unmanage,
            on_manage=self._manage,
            on_applied=self.metrics.command_applied,
            on_credentials=self.credentials.accept,
            gateway_state_dir=config.openclaw_config.parent,
        )
        self.queue = CommandQueue(self.applier, self._report_result)
        self.watcher = ConfigWatcher(
            config.openclaw_config, self._on_config, restore_removed=config.restore_removed_entries
        )
        # The link is built last: it takes the other parts' handlers. Parts that talk to
        # the hub get `_send` and `_hub_connected`, which reach it once it exists.
        self.hub_calls = HubCalls(self._send, self._hub_connected)
        self.agent_api = AgentApi(
            config.agent_api_listen,
            self.credentials,
            self.relay,
            gateway_id=self.gateway_id,
            limits=agent_api_limits,
            hub_connected=self._hub_connected,
            hub_calls=self.hub_calls,
            on_heartbeat_refused=self.metrics.heartbeat_refused,
            hub_agent_id=lambda agent_id: self._hub_agent_ids.get(agent_id, ""),
        )
        self.own_changes = OwnChanges()
        self.reports = Reports(
            gateway_id=self.gateway_id,
            workspace_root=self.workspace_root,
            state=self.state,
            writer=self.writer,
            gateway=self.gateway,
            agent_api_url=lambda: self.agent_api_url,
            follows_hub_workspace_root=config.follows_hub_workspace_root,
        )
        self.runtime = RuntimeWatch(
            self.gateway,
            self.relay,
            self.state,
            self.own_changes,
            self._report_gateway,
            restore=config.restore_removed_entries,
            being_removed=self._removing.__contains__,
        )
        self.reports.conditions = self.runtime.report
        self.queries = GatewayQueries(
            self.gateway, self.reports.gateway_state, self._send, self.reports.file_digests
        )
        self.link = LinkClient(
            [str(hub) for hub in config.hubs],
            self.reports.hello,
            self.queue,
            credentials=self.renewal.credentials if self.renewal else None,
            backoff=link_backoff,
            on_renew=self.renewal.on_response if self.renewal else lambda response: None,
            on_welcome=self._on_welcome,
            on_heartbeat_ack=self.relay.on_ack,
            on_agent_call_result=self.hub_calls.on_result,
            on_gateway_query=self.queries.submit,
        )
        self.usage = UsageRelay(
            self.gateway,
            self._send,
            lambda: {a.agent_id for a in self.state.agents()},
            self._hub_connected,
            policy=usage_policy,
        )
        self.link.on_status(self.relay.on_link_status)
        self.link.on_status(lambda status: self.usage.link_changed(status.connected))
        self.link.on_status(
            lambda status: None if status.connected else self.hub_calls.on_link_down()
        )
        self.gateway.on_info_change(self._on_gateway_info)
        self.metrics_server = (
            MetricsServer(config.metrics_listen, self.metrics.registry)
            if config.metrics_listen is not None
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def agent_api_url(self) -> str:
        return self.agent_api.url  # the bound address once started (port 0 allowed)

    def _readings(self) -> Readings:
        unacked = self.relay.unacked()
        return Readings(
            heartbeats_accepted=self.relay.stats.received,
            unacknowledged=len(unacked),
            oldest_unacknowledged_at=min((b.observed_at for b in unacked.values()), default=None),
            link_connected=self.link.status.connected,
            link_streams_opened=self.link.streams_opened,
            gateway_reachable=self.gateway.info.reachable,
            runtime_checkins=self.relay.stats.runtime,
            conditions=self.runtime.count(),
        )

    def _send(self, message: pb.SidecarMessage) -> None:
        self.link.send(message)

    def _hub_connected(self) -> bool:
        return self.link.status.connected

    def _on_welcome(self, welcome: pb.Welcome) -> None:
        self.relay.on_welcome(welcome)
        if welcome.HasField("server_time"):
            now = time.time()
            self.state.record_hub_clock(epoch_s(welcome.server_time) - now, now)
        applied = self.state.last_applied_sequence
        if welcome.last_sequence < applied:
            # The hub's outbox is behind what we applied (it was restored from a backup):
            # its numbers from here on are new commands, not ones we already processed.
            log.warning(
                "link.sequence.rewound",
                applied=applied,
                hub_last_sequence=welcome.last_sequence,
            )
            self.state.reset_sequence(welcome.last_sequence)
        self._follow_hub_root(welcome)

    def _follow_hub_root(self, welcome: pb.Welcome) -> None:
        """Without --workspace-root, write under the root the hub declares for the gateway."""
        declared = welcome.workspace_root
        if not declared or Path(declared) == self.workspace_root:
            return
        if not self.config.follows_hub_workspace_root:
            log.warning(
                "sidecar.workspace_root.mismatch",
                workspace_root=str(self.workspace_root),
                hub_workspace_root=declared,
                fix=f"run with --workspace-root {declared}, or without --workspace-root",
            )
            return
        root = Path(declared)
        try:
            if not root.is_absolute():
                raise OSError(f"{declared!r} is not absolute")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.config.state_dir / HUB_ROOT_FILE, declared.encode(), 0o600)
        except OSError as exc:
            log.error(
                "sidecar.workspace_root.unusable",
                hub_workspace_root=declared,
                error=str(exc),
                fix="make the directory writable for this user, or run with --workspace-root",
            )
            return
        self.workspace_root = self.writer.root = self.reports.workspace_root = root
        log.info("sidecar.workspace_root.adopted", workspace_root=declared)

    def _report_result(self, result: pb.CommandResult) -> None:
        if result.outcome != pb.CommandResult.FAILED and result.agent_id:
            # A recorded command may have replaced or removed this agent's token verifiers;
            # its recorded set also ends what it accepted ahead (a failed one is retried).
            self.credentials.reload_agent(result.agent_id)
            self._hub_agent_ids = self.state.hub_agent_ids()
        if result.agent_id:
            if result.outcome != pb.CommandResult.FAILED:
                self._removing.discard(result.agent_id)  # recorded: gone, or kept for good
            self.own_changes.changed(result.agent_id)
            self.watcher.set_managed(self._managed())
        self.link.send(pb.SidecarMessage(command_result=result))

    def _managed(self) -> set[str]:
        """The agents whose entries the sidecar keeps (and restores after a hand edit)."""
        return {a.agent_id for a in self.state.agents()} - self._removing

    def _manage(self, agent_id: str) -> None:
        self.own_changes.changed(agent_id)
        self.watcher.set_managed(self._managed() | {agent_id})

    def _unmanage(self, agent_id: str) -> None:
        # Kept until the removal is recorded: several may be under way at once, and a
        # removal done at the gateway but not yet recorded must not look like a hand edit.
        self._removing.add(agent_id)
        self.watcher.set_managed(self._managed())

    def _report_run(self, run: pb.RunObserved) -> None:
        self.link.send(pb.SidecarMessage(run_observed=run))
        self.usage.run_ended()

    def _on_gateway_info(self, info: GatewayInfo) -> None:
        if info.version:
            self.watcher.set_gateway_version(info.version)
        if info.reachable:
            self.runtime.poke()  # back (perhaps restarted): see what it runs now
        self._report_gateway()

    def _on_config(self, report: ConfigReport) -> None:
        self.reports.config = report
        self.runtime.poke(after_s=HOT_RELOAD_S)  # a hand edit may have taken a heartbeat away
        drift = self.own_changes.reportable(report.drift)
        for item in drift:
            log.info(
                "gateway.config.drift",
                agent_id=item.agent_id,
                kind=DriftKind(item.kind).name,
                detail=item.detail,
            )
        self._report_gateway(drift)

    def _report_gateway(self, drift: Iterable[Drift] = ()) -> None:
        self.link.send(pb.SidecarMessage(gateway_state=self.reports.gateway_state(drift)))

    async def start(self) -> None:
        await self.agent_api.start()
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except BaseException:
                await self.agent_api.stop()
                raise
        await self.relay.start()
        await self.gateway.start()
        self.watcher.set_managed(a.agent_id for a in self.state.agents())
        await self.watcher.start()
        self._tasks = [
            self.queue.start(),
            start_long_lived(self.link.run(), name="sidecar-link", log=log),
            self.usage.start(),
            self.runtime.start(),
        ]
        if self.renewal is not None:
            self._tasks.append(self.renewal.start())
        log.info(
            "sidecar.started",
            gateway_id=self.gateway_id,
            hub=str(self.config.hub),
            workspace_root=str(self.workspace_root),
            last_applied_sequence=self.state.last_applied_sequence,
            agent_api=self.agent_api_url,
            credentials=len(self.credentials),
        )

    async def stop(self) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("agent_api", self.agent_api.stop),
            ("metrics", self._stop_metrics),
            ("tasks", self._stop_tasks),
            ("queries", self.queries.stop),
            ("run_watchers", self.applier.close),
            ("config_watcher", self.watcher.stop),
            ("gateway", self.gateway.stop),
            ("heartbeat_relay", self.relay.stop),
        ]
        for part, stop in steps:
            try:
                await stop()
            except Exception as exc:
                log.exception("sidecar.stop.failed", part=part, error=repr(exc))
        self.state.close()
        log.info("sidecar.stopped", gateway_id=self.gateway_id)

    async def _stop_metrics(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()

    async def _stop_tasks(self) -> None:
        for task in reversed(self._tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
