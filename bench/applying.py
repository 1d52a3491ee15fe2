"""Simulated gateways that answer every command as a real sidecar reports it.

`applying_fleet_main`: one process holding many sidecars, each a real `LinkClient`
whose command queue answers every command in sequence order with the `CommandResult`
a real sidecar sends (sidecar/commands.py): APPLIED, or ALREADY_APPLIED for a
generation it has; the files' hashes; for a wake, that it was delivered and the run's
id. The sequence then counts as applied, so the next Hello says so, with every agent's
generation as its inventory. A woken agent's run ends at once with a model turn
(`RunObserved` FINAL): the runtime check-in a real agent's run reports.

No gateway, no files written, no model: what a benchmark measures with these is the
hub and the link, not an agent's model turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing.connection as mpc
import uuid
from typing import Any, cast

from bench.harness import LOAD_CORE, pin_to, pipe_inbox, quiet_logs, raise_fd_limit, report_errors
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos.contract import LINK_PROTOCOL, GatewayGeneration, timestamp
from sidecar.commands import CommandQueue
from sidecar.link.client import LinkClient

Outcome = pb.CommandResult.Outcome
# What bench/seed.py declares for every gateway: a Hello that says the same changes nothing.
WORKSPACE_ROOT = "/srv/openclaw"
AGENT_API_URL = "http://127.0.0.1:18790"


class ApplyingSidecar:
    """One gateway's sidecar: its link, what it has applied, and its command queue."""

    def __init__(self, target: str, gateway_id: str, agents: dict[str, int]) -> None:
        """`agents`: each managed agent's gateway id and the generation it has applied."""
        self.gateway_id = gateway_id
        self.generations = dict(agents)
        self.files: dict[str, dict[str, str]] = {a: {} for a in agents}
        self.last_applied_sequence = 0
        self.applied = 0  # commands answered (any outcome)
        self.runs = 0  # RunObserved reported
        self.client = LinkClient(target, self.hello, cast(CommandQueue, self))

    async def hello(self) -> pb.Hello:
        return pb.Hello(
            gateway_id=self.gateway_id,
            link_protocol=LINK_PROTOCOL,
            sidecar_version=VERSION,
            hostname=self.gateway_id,
            gateway_generation=GatewayGeneration.CURRENT.proto,
            workspace_root=WORKSPACE_ROOT,
            agent_api_url=AGENT_API_URL,
            last_applied_sequence=self.last_applied_sequence,
            inventory=[
                pb.ManagedAgent(
                    agent_id=agent_id,
                    applied_generation=generation,
                    present_in_config=True,
                    file_sha256=self.files[agent_id],
                )
                for agent_id, generation in self.generations.items()
            ],
            gateway_state=pb.GatewayState(
                reachable=True, generation=GatewayGeneration.CURRENT.proto, config_valid=True
            ),
        )

    # The CommandQueue face LinkClient uses.

    def submit(self, command: pb.Command) -> None:
        if command.sequence <= self.last_applied_sequence:
            return  # replayed after a reconnect: processed already
        result, run = self._apply(command)
        result.observed_at.CopyFrom(timestamp())
        self.last_applied_sequence = command.sequence
        self.applied += 1
        self.client.send(pb.SidecarMessage(command_result=result))
        if run is not None:
            run.observed_at.CopyFrom(timestamp())
            self.runs += 1
            self.client.send(pb.SidecarMessage(run_observed=run))

    def reset(self) -> None:
        return None  # nothing waits in this queue: each command is answered as it arrives

    def _apply(self, command: pb.Command) -> tuple[pb.CommandResult, pb.RunObserved | None]:
        kind = command.WhichOneof("action")
        action: Any = getattr(command, kind) if kind else None
        agent_id = str(getattr(action, "agent_id", ""))
        generation = int(getattr(action, "generation", 0))
        result = pb.CommandResult(
            sequence=command.sequence,
            agent_id=agent_id,
            generation=generation,
            outcome=Outcome.APPLIED,
        )
        known = self.generations.get(agent_id)
        wake = ""
        if kind == "apply_agent":
            if known is not None and known >= generation:
                result.outcome = Outcome.ALREADY_APPLIED
                return result, None
            hashes = {f.name: hashlib.sha256(f.content).hexdigest() for f in action.files}
            self.generations[agent_id] = generation
            self.files[agent_id] = hashes
            result.file_sha256.update(hashes)
            wake = action.wake_message
        elif kind == "wake_agent":
            if known is not None and known > generation:
                result.outcome = Outcome.ALREADY_APPLIED  # superseded by a newer apply
                return result, None
            wake = action.message
        elif kind == "set_heartbeat":
            if known is not None and known >= generation:
                result.outcome = Outcome.ALREADY_APPLIED
            elif known is not None:
                self.generations[agent_id] = generation
        elif kind == "remove_agent":
            if known is not None and known > generation:
                result.outcome = Outcome.ALREADY_APPLIED  # re-created since
            else:
                self.generations.pop(agent_id, None)
                self.files.pop(agent_id, None)
        elif kind != "set_credentials":
            result.outcome = Outcome.REJECTED
            result.error_code = "unknown_command"
            result.error = f"command type {kind!r} is not supported by this sidecar"
        if not wake:
            return result, None
        result.run_id = uuid.uuid4().hex
        result.wake_delivered = True
        run = pb.RunObserved(
            agent_id=agent_id,
            generation=generation,
            run_id=result.run_id,
            command_sequence=command.sequence,
            outcome=pb.RunObserved.FINAL,
            model_turn=True,
        )
        return result, run


def applying_fleet_main(
    conn: mpc.Connection, target: str, fleet: list[tuple[str, dict[str, int]]]
) -> None:
    """`fleet`: each gateway's id and its agents (gateway agent id -> applied generation).
    Answers "status" with what the sidecars did; None ends the process."""
    report_errors(conn, lambda: asyncio.run(_fleet(conn, target, fleet)))


async def _fleet(
    conn: mpc.Connection, target: str, fleet: list[tuple[str, dict[str, int]]]
) -> None:
    pin_to(LOAD_CORE)
    raise_fd_limit()
    quiet_logs()
    sidecars = [ApplyingSidecar(target, gateway_id, agents) for gateway_id, agents in fleet]
    tasks = [asyncio.create_task(s.client.run()) for s in sidecars]
    conn.send({"ready": True})
    inbox = pipe_inbox(conn)
    try:
        while (request := await inbox.get()) is not None:
            if request == "status":
                conn.send(
                    {
                        "connected": sum(s.client.status.connected for s in sidecars),
                        "commands": sum(s.applied for s in sidecars),
                        "runs": sum(s.runs for s in sidecars),
                    }
                )
    finally:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
