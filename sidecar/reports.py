"""What the sidecar tells the hub about itself: the Hello, the GatewayState, which drift.

The Hello opens every stream: versions, where workspaces and the agent API are, the last
applied command sequence, the inventory of managed agents (applied generation, entry
present in openclaw.json, file hashes) from which the hub confirms or replays commands,
and the gateway's state as it is now.
The GatewayState says whether the gateway is reachable and openclaw.json valid, with the
drift worth reporting. The sidecar's own commands change managed entries too (through
the gateway), so CHANGED drift for an agent it just changed itself is not a hand edit:
`OwnChanges` decides which to drop. Nothing here sends; the composition root does.

Text that came from elsewhere (the gateway's errors, openclaw.json, the host name) is
made `displayable` before it goes into a message: a lone surrogate from a JSON escape
would otherwise make the message impossible to build, and the report would be lost.
The inventory's file hashes are read in a worker thread (sidecar/workspace.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from missioncontrol.text import displayable
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos.contract import LINK_PROTOCOL, timestamp
from sidecar.config_watch import ConfigReport
from sidecar.gateway import GatewayClient
from sidecar.openclaw_config import Drift, DriftKind
from sidecar.state import LocalState
from sidecar.workspace import OVERSIZED, WorkspaceWriter

# How long after the sidecar changed an agent the CHANGED drift of its entry is ours.
OWN_CHANGE_WINDOW_S = 5.0
MAX_UNMANAGED = 500  # unmanaged entries reported (a hand-kept roster is never this long)
MAX_REASON_CHARS = 4096
NOT_HASHABLE = "missing or not a regular file"
MAX_DETAIL_CHARS = 1024
MAX_VERSION_CHARS = 64


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

    def recent(self, agent_id: str) -> bool:
        """Whether the sidecar changed this agent within the window."""
        changed_at = self._changed_at.get(agent_id)
        return changed_at is not None and self._clock() - changed_at < self.window_s

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
    workspace_root: Path  # may change once: a following sidecar takes the hub's declared root
    state: LocalState
    writer: WorkspaceWriter
    gateway: GatewayClient
    agent_api_url: Callable[[], str]  # known once the API is bound (port 0 allowed)
    # openclaw.json as the config watcher last reported it; None before its first pass.
    config: ConfigReport | None = None
    follows_hub_workspace_root: bool = False  # no --workspace-root: the hub's root is used
    # What keeps managed agents from running (sidecar/runtime_watch.py); None: not checked.
    conditions: Callable[[], list[pb.AgentCondition]] | None = None

    async def hello(self) -> pb.Hello:
        info = self.gateway.info
        agents = self.state.agents()
        hashes = await asyncio.to_thread(lambda: [self.writer.hashes(a.workspace) for a in agents])
        return pb.Hello(
            gateway_id=self.gateway_id,
            link_protocol=LINK_PROTOCOL,
            sidecar_version=VERSION,
            openclaw_version=displayable(info.version, max_chars=MAX_VERSION_CHARS),
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
                    file_sha256=files,
                )
                for a, files in zip(agents, hashes, strict=True)
            ],
            hostname=displayable(socket.gethostname(), max_chars=253),
            follows_hub_workspace_root=self.follows_hub_workspace_root,
            unmanaged=self._unmanaged(),
            unmanaged_reported=self._roster_known(),
            # Whether the gateway is reachable right now, so the hub never judges agents
            # behind a gateway it does not know is down (no report may follow the Hello).
            gateway_state=self.gateway_state(),
        )

    async def file_digests(self, agent_id: str, name: str) -> list[pb.FileDigest] | None:
        """One workspace file of every managed agent (or of `agent_id`), hashed off the
        loop; None when `agent_id` is not managed here."""
        agents = [a for a in self.state.agents() if not agent_id or a.agent_id == agent_id]
        if agent_id and not agents:
            return None

        def read() -> list[pb.FileDigest]:
            digests = []
            for agent in agents:
                digest = self.writer.digest(agent.workspace, name)
                if digest is None:
                    digests.append(
                        pb.FileDigest(agent_id=agent.agent_id, file=name, problem=NOT_HASHABLE)
                    )
                elif digest.startswith(OVERSIZED):
                    size = digest.removeprefix(OVERSIZED)
                    digests.append(
                        pb.FileDigest(
                            agent_id=agent.agent_id, file=name, problem=f"oversized: {size} bytes"
                        )
                    )
                else:
                    digests.append(pb.FileDigest(agent_id=agent.agent_id, file=name, sha256=digest))
            return digests

        return await asyncio.to_thread(read)

    def gateway_state(self, drift: Iterable[Drift] = ()) -> pb.GatewayState:
        info = self.gateway.info
        report = self.config
        state = pb.GatewayState(
            reachable=info.reachable,
            unreachable_reason=displayable(info.unreachable_reason, max_chars=MAX_REASON_CHARS),
            openclaw_version=displayable(info.version, max_chars=MAX_VERSION_CHARS),
            openclaw_protocol=info.protocol,
            generation=info.generation.proto,
            config_valid=report.valid if report else True,
            config_error=displayable(report.error, max_chars=MAX_REASON_CHARS) if report else "",
            last_touched_version=(
                displayable(report.last_touched_version, max_chars=MAX_VERSION_CHARS)
                if report
                else ""
            ),
            observed_at=timestamp(),
            unmanaged=self._unmanaged(),
            unmanaged_reported=self._roster_known(),
        )
        if self.conditions is not None:
            state.conditions.extend(self.conditions())
            state.conditions_reported = True
        for item in drift:
            state.drift.add(
                agent_id=displayable(item.agent_id, max_chars=128),
                kind=int(item.kind),
                detail=displayable(item.detail, max_chars=MAX_DETAIL_CHARS),
            )
        return state

    def _roster_known(self) -> bool:
        return self.config is not None and self.config.roster is not None

    def _unmanaged(self) -> list[pb.UnmanagedAgent]:
        """openclaw.json's agents this sidecar does not manage (adoptable on the hub)."""
        if self.config is None or self.config.roster is None:
            return []
        managed = {a.agent_id for a in self.state.agents()}
        return [
            pb.UnmanagedAgent(
                agent_id=displayable(e.agent_id, max_chars=128),
                name=displayable(e.name, max_chars=MAX_DETAIL_CHARS),
                workspace=displayable(e.workspace, max_chars=MAX_REASON_CHARS),
            )
            for e in self.config.roster
            if e.agent_id not in managed
        ][:MAX_UNMANAGED]

    def _present(self, agent_id: str) -> bool:
        # Before the watcher's first pass nothing says an entry is missing.
        report = self.config
        return report is None or agent_id in report.present
