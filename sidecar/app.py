"""Composition root of mc-sidecar: builds the parts, starts them, stops them in order.

Start: local state -> workspace writer -> gateway client -> command queue -> link.
Stop: the link (no new commands) -> the command queue -> run watchers -> state.
"""

from __future__ import annotations

import asyncio
import socket

from missioncontrol.log import get_logger
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos.contract import LINK_PROTOCOL, timestamp
from sidecar.commands import CommandApplier, CommandQueue
from sidecar.config import SidecarConfig
from sidecar.enrollment import CertificateRenewal
from sidecar.gateway import GatewayClient, GatewayInfo, NoGateway
from sidecar.identity import renewal_due_at
from sidecar.link import LinkClient
from sidecar.state import LocalState
from sidecar.workspace import WorkspaceWriter

log = get_logger("sidecar.app")


class Sidecar:
    def __init__(self, config: SidecarConfig, gateway: GatewayClient | None = None) -> None:
        self.config = config
        config.workspace_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state = LocalState(config.state_db)
        # mTLS: the certificate names the gateway; insecure-dev: a flag or a generated id.
        self.renewal: CertificateRenewal | None = None
        if config.insecure_dev:
            self.gateway_id = config.gateway_id or self.state.gateway_id()
        else:
            self.renewal = CertificateRenewal(config.state_dir, self._send)
            renewal_due_at(self.renewal.identity.certificate)  # fail now if already expired
            self.gateway_id = self.renewal.identity.gateway_id
        self.writer = WorkspaceWriter(config.workspace_root)
        self.gateway: GatewayClient = gateway or NoGateway()
        self.applier = CommandApplier(
            self.state, self.writer, self.gateway, on_run_observed=self._report_run
        )
        self.queue = CommandQueue(self.applier, self._report_result)
        self.link = LinkClient(
            str(config.hub),
            self.hello,
            self.queue,
            credentials=self.renewal.credentials if self.renewal else None,
            on_renew=self.renewal.on_response if self.renewal else lambda response: None,
        )
        self.gateway.on_info_change(self._report_gateway)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def agent_api_url(self) -> str:
        return f"http://{self.config.agent_api_listen}"

    def hello(self) -> pb.Hello:
        info = self.gateway.info
        return pb.Hello(
            gateway_id=self.gateway_id,
            link_protocol=LINK_PROTOCOL,
            sidecar_version=VERSION,
            openclaw_version=info.version,
            openclaw_protocol=info.protocol,
            gateway_generation=int(info.generation),  # type: ignore[arg-type]
            workspace_root=str(self.config.workspace_root),
            agent_api_url=self.agent_api_url,
            last_applied_sequence=self.state.last_applied_sequence,
            inventory=[
                pb.ManagedAgent(
                    agent_id=a.agent_id,
                    applied_generation=a.generation,
                    present_in_config=True,
                    file_sha256=self.writer.hashes(a.workspace),
                )
                for a in self.state.agents()
            ],
            hostname=socket.gethostname(),
        )

    def _send(self, message: pb.SidecarMessage) -> None:
        self.link.send(message)

    def _report_result(self, result: pb.CommandResult) -> None:
        self.link.send(pb.SidecarMessage(command_result=result))

    def _report_run(self, run: pb.RunObserved) -> None:
        self.link.send(pb.SidecarMessage(run_observed=run))

    def _report_gateway(self, info: GatewayInfo) -> None:
        self.link.send(
            pb.SidecarMessage(
                gateway_state=pb.GatewayState(
                    reachable=info.reachable,
                    unreachable_reason=info.unreachable_reason,
                    openclaw_version=info.version,
                    openclaw_protocol=info.protocol,
                    generation=int(info.generation),  # type: ignore[arg-type]
                    config_valid=True,
                    observed_at=timestamp(),
                )
            )
        )

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.queue.run(), name="sidecar-commands"),
            asyncio.create_task(self.link.run(), name="sidecar-link"),
        ]
        if self.renewal is not None:
            self._tasks.append(asyncio.create_task(self.renewal.run(), name="sidecar-renewal"))
        log.info(
            "sidecar.started",
            gateway_id=self.gateway_id,
            hub=str(self.config.hub),
            workspace_root=str(self.config.workspace_root),
            last_applied_sequence=self.state.last_applied_sequence,
        )

    async def stop(self) -> None:
        for task in reversed(self._tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.applier.close()
        self.state.close()
        log.info("sidecar.stopped", gateway_id=self.gateway_id)
