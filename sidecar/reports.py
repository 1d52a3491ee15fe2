"""What the sidecar tells the hub about itself: the Hello, the GatewayState, which drift.

The Hello opens every stream: versions, where workspaces and the agent API are, the last
applied command sequence, the inventory of managed agents (applied generation, entry
present in openclaw.json, file hashes) from which the hub confirms or replays commands,
and the gateway's state as it is now.
The GatewayState says whether the gateway is reachable and openclaw.json valid, with the
drift worth reporting. The sidecar's own commands change managed entries too (through
the gateway), so CHANGED drift for an agent it just changed itself is not a hand edit:
`OwnChanges` decides which to drop. Nothing here sends; the composition root does.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos.contract import LINK_PROTOCOL, timestamp
from sidecar.config_watch import ConfigReport
from sidecar.gateway import GatewayClient
from sidecar.openclaw_config import Drift, DriftKind
from sidecar.state import LocalState
from sidecar.workspace import WorkspaceWriter

# How long after the sidecar changed an agent the CHANGED drift of its entry is ours.
OWN_CHANGE_WINDOW_S = 5.0


class OwnChanges:
    """The agents the sidecar changed itself, and when; decides whose drift to report."""

    def __init__(
        self, window_s: float = OWN_CHANGE_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._changed_at: dict[str, float] = {}

    def changed(self, agent_id: str) -> None:
        """The sidecar just applied a command to this agent."""
        self._changed_at[agent_id] = self._clock()

    def reportable(self, drift: Iterable[Drift]) -> list[Drift]:
        """All drift but CHANGED for an agent the sidecar changed within the window."""
        now = self._clock()
        return [item for item in drift if not self._own(item, now)]

    def _own(self, item: Drift, now: float) -> bool:
        changed_at = self._changed_at.get(item.agent_id)
        return (
            item.kind == DriftKind.CHANGED
            and changed_at is not None
            and now - changed_at < self.window_s
        )


@dataclass
class Reports:
    """Builds the Hello and the GatewayState from the sidecar's parts, as they are now."""

    gateway_id: str
    workspace_root: Path
    state: LocalState
    writer: WorkspaceWriter
    gateway: GatewayClient
    agent_api_url: Callable[[], str]  # known once the API is bound (port 0 allowed)
    # openclaw.json as the config watcher last reported it; None before its first pass.
    config: ConfigReport | None = None

    def hello(self) -> pb.Hello:
        info = self.gateway.info
        return pb.Hello(
            gateway_id=self.gateway_id,
            link_protocol=LINK_PROTOCOL,
            sidecar_version=VERSION,
            openclaw_version=info.version,
            openclaw_protocol=info.protocol,
            gateway_generation=info.generation.proto,
            workspace_root=str(self.workspace_root),
            agent_api_url=self.agent_api_url(),
            last_applied_sequence=self.state.last_applied_sequence,
            inventory=[
                pb.ManagedAgent(
                    agent_id=a.agent_id,
                    applied_generation=a.generation,
                    present_in_config=self._present(a.agent_id),
                    file_sha256=self.writer.hashes(a.workspace),
                )
                for a in self.state.agents()
            ],
            hostname=socket.gethostname(),
            # Whether the gateway is reachable right now, so the hub never judges agents
            # behind a gateway it does not know is down (no report may follow the Hello).
            gateway_state=self.gateway_state(),
        )

    def gateway_state(self, drift: Iterable[Drift] = ()) -> pb.GatewayState:
        info = self.gateway.info
        report = self.config
        state = pb.GatewayState(
            reachable=info.reachable,
            unreachable_reason=info.unreachable_reason,
            openclaw_version=info.version,
            openclaw_protocol=info.protocol,
            generation=info.generation.proto,
            config_valid=report.valid if report else True,
            config_error=report.error if report else "",
            last_touched_version=report.last_touched_version if report else "",
            observed_at=timestamp(),
        )
        for item in drift:
            state.drift.add(agent_id=item.agent_id, kind=int(item.kind), detail=item.detail)
        return state

    def _present(self, agent_id: str) -> bool:
        # Before the watcher's first pass nothing says an entry is missing.
        report = self.config
        return report is None or agent_id in report.present
