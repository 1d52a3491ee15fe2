"""`OpenClawGatewayClient`: the `GatewayClient`, written over one `GatewayConnection`.

Each operation is a few gateway methods sent with the connection's `call()` and
`read()`: ensure or remove an agent and wait until agents.list agrees, set the
heartbeat (config.patch guarded by baseHash; the checklist in the heartbeat cron job's
scratch), wake (chat.send) and follow the run from `chat` events, reset a session, read
the live status and sessions. Sockets, frames and reconnecting are the connection's
(sidecar/gateway/connection.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from missioncontrol.log import get_logger
from protos.contract import GatewayGeneration
from sidecar.gateway import (
    AgentEntry,
    GatewayError,
    GatewayInfo,
    GatewayRuntime,
    HeartbeatSpec,
    RunOutcome,
    RunState,
    SessionPage,
)
from sidecar.gateway import protocol as proto
from sidecar.gateway.connection import ConnectionPolicy, GatewayConnection
from sidecar.gateway.protocol import ClientIdentity, GatewayRequestError, GatewayTimeout

log = get_logger("sidecar.gateway")


@dataclass(frozen=True)
class ClientPolicy(ConnectionPolicy):
    """The connection's bounds plus the operations'; agents.list and cron.list are
    polled every `poll_interval_s`."""

    agent_visible_timeout_s: float = 20.0  # create -> listed in agents.list
    conflict_retries: int = 5  # config.patch baseHash / cron scratch revision conflicts
    finished_runs_kept: int = 512  # run outcomes remembered for late wait_run calls


DEFAULT_POLICY = ClientPolicy()


class OpenClawGatewayClient:
    """The `GatewayClient` of a real OpenClaw gateway, over a connection it owns."""

    def __init__(
        self,
        config_path: Path,
        *,
        policy: ClientPolicy = DEFAULT_POLICY,
        identity: ClientIdentity | None = None,
    ) -> None:
        self._policy = policy
        self._connection = GatewayConnection(config_path, self._policy, identity=identity)
        self._run_waiters: dict[str, list[asyncio.Future[RunOutcome]]] = {}
        self._finished_runs: OrderedDict[str, RunOutcome] = OrderedDict()
        # Subscribed first, so a run's end is recorded before anyone else hears of it.
        self._connection.subscribe(self._track_run, "chat")
        # The connection's own requests, for what the operations below do not cover.
        self.call = self._connection.call
        self.call_multi = self._connection.call_multi
        self.read = self._connection.read
        self.wait_ready = self._connection.wait_ready

    # ------------------------------------------------------------ the connection

    async def start(self) -> None:
        await self._connection.start()

    async def stop(self) -> None:
        await self._connection.stop()

    async def __aenter__(self) -> OpenClawGatewayClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def info(self) -> GatewayInfo:
        return self._connection.info

    def on_info_change(self, callback: Callable[[GatewayInfo], None]) -> None:
        self._connection.on_info_change(callback)

    async def _generation(self) -> GatewayGeneration:
        """The connected gateway's generation (waits briefly for a connection)."""
        return (await self._connection.ready_hello()).generation

    # ------------------------------------------------------------ agents

    async def list_agent_ids(self) -> set[str]:
        payload = await self._connection.read("agents.list", {})
        return {a["id"] for a in payload.get("agents", []) if isinstance(a, Mapping) and "id" in a}

    async def _listed_agent(self, agent_id: str) -> Mapping[str, Any] | None:
        payload = await self._connection.read("agents.list", {})
        for agent in payload.get("agents", []):
            if isinstance(agent, Mapping) and agent.get("id") == agent_id:
                return agent
        return None

    async def _wait_listed(self, agent_id: str, *, present: bool) -> Mapping[str, Any] | None:
        """Poll agents.list until the id is (or is no longer) listed, within a bound."""
        deadline = time.monotonic() + self._policy.agent_visible_timeout_s
        while True:
            agent = await self._listed_agent(agent_id)
            if (agent is not None) == present:
                return agent
            if time.monotonic() >= deadline:
                state = "listed" if present else "gone"
                raise GatewayTimeout(
                    f"agent {agent_id} was not {state} in agents.list within "
                    f"{self._policy.agent_visible_timeout_s:.0f} s"
                )
            await asyncio.sleep(self._policy.poll_interval_s)

    async def ensure_agent(self, entry: AgentEntry) -> None:
        if not entry.workspace.is_absolute():
            # The gateway resolves relative paths against its own cwd.
            raise GatewayError(
                f"workspace for {entry.agent_id} must be absolute, got {entry.workspace}",
                code="invalid_workspace",
                retryable=False,
            )
        started = time.monotonic()
        listed = await self._listed_agent(entry.agent_id)
        created = False
        if listed is None:
            created = await self._create_agent(entry)
            listed = await self._wait_listed(entry.agent_id, present=True)
        assert listed is not None
        accepted = proto.agent_fields("agents.update", await self._generation())
        changes = {k: v for k, v in _agent_update(entry, listed).items() if k in accepted}
        if changes:
            await self._connection.call("agents.update", {"agentId": entry.agent_id, **changes})
        log.info(
            "gateway.agent.ensured",
            agent_id=entry.agent_id,
            created=created,
            updated=sorted(changes),
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _create_agent(self, entry: AgentEntry) -> bool:
        """agents.create with the id as name (ids derive from names); False if it existed."""
        wanted = {
            "name": entry.agent_id,
            "workspace": str(entry.workspace),
            "model": entry.model,
            "emoji": entry.emoji,
        }
        accepted = proto.agent_fields("agents.create", await self._generation())
        # What create cannot take here (model on 2026.3) the update after it sets.
        params = {k: v for k, v in wanted.items() if v and k in accepted}
        try:
            payload = await self._connection.call("agents.create", params)
        except GatewayRequestError as exc:
            if proto.is_already_exists(exc):
                return False  # in the config but not yet loaded; the poll below waits
            raise
        agent_id = payload.get("agentId") if isinstance(payload, Mapping) else None
        if agent_id is not None and agent_id != entry.agent_id:
            raise GatewayError(
                f"gateway created agent {agent_id!r} for requested id {entry.agent_id!r}: ids "
                "must be lowercase [a-z0-9_-], at most 64 characters",
                code="invalid_agent_id",
                retryable=False,
            )
        return True

    async def remove_agent(self, agent_id: str, *, delete_files: bool) -> None:
        try:
            await self._connection.call(
                "agents.delete", {"agentId": agent_id, "deleteFiles": delete_files}
            )
        except GatewayRequestError as exc:
            if not proto.is_not_found(exc):
                raise
            log.info("gateway.agent.already_absent", agent_id=agent_id)
            return
        await self._wait_listed(agent_id, present=False)
        log.info("gateway.agent.removed", agent_id=agent_id, delete_files=delete_files)

    # ------------------------------------------------------------ heartbeat

    async def set_heartbeat(self, agent_id: str, heartbeat: HeartbeatSpec) -> None:
        block = {
            "every": proto.heartbeat_every(heartbeat.every_s),
            "target": heartbeat.target or "none",
        }
        generation = await self._generation()
        if generation is GatewayGeneration.LEGACY_2026_3:
            # The hub renders HEARTBEAT.md for this generation; only the cadence goes here.
            await self._patch_config(lambda cfg: _legacy_heartbeat_patch(cfg, agent_id, block))
        else:
            patch = {"agents": {"entries": {agent_id: {"heartbeat": block}}}}
            await self._patch_config(lambda _cfg: patch)
            await self._set_checklist(agent_id, heartbeat.checklist)
        log.info("gateway.heartbeat.set", agent_id=agent_id, **block)

    async def _patch_config(
        self, build: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        """config.patch guarded by baseHash; on a concurrent write re-read and retry."""
        for attempt in range(self._policy.conflict_retries + 1):
            current = await self._connection.read("config.get", {})
            parsed = current.get("parsed") or current.get("config") or {}
            params = {"raw": json.dumps(build(parsed)), "baseHash": current.get("hash")}
            try:
                return await self._connection.call("config.patch", params)
            except GatewayRequestError as exc:
                if not proto.is_config_conflict(exc) or attempt == self._policy.conflict_retries:
                    raise
                log.info("gateway.config_patch.conflict", attempt=attempt + 1)
        raise AssertionError("unreachable")

    async def _set_checklist(self, agent_id: str, checklist: str) -> None:
        """Put the checklist in the monitor scratch of the agent's heartbeat cron job."""
        job_id = await self._heartbeat_job(agent_id)
        if job_id is None:
            if checklist:
                raise GatewayError(
                    f"no heartbeat:{agent_id} cron job appeared after setting the heartbeat, "
                    "so the checklist has nowhere to go",
                    code="heartbeat_job_missing",
                )
            return
        for _attempt in range(self._policy.conflict_retries + 1):
            current = await self._connection.read("cron.scratch.get", {"jobId": job_id})
            scratch = current.get("scratch") or {}
            if (scratch.get("content") or "") == checklist:
                return
            revision = current.get("currentRevision", 0)
            result = await self._connection.call(
                "cron.scratch.set",
                {"jobId": job_id, "content": checklist, "expectedRevision": revision},
            )
            if result.get("ok"):
                return
            if result.get("reason") != "revision-conflict":
                raise GatewayError(f"cron.scratch.set refused: {result.get('reason')}")
            log.info("gateway.scratch.conflict", agent_id=agent_id)
        raise GatewayError(
            f"heartbeat checklist for {agent_id}: scratch kept changing under us; retry later"
        )

    async def _heartbeat_job(self, agent_id: str) -> str | None:
        """The id of cron job `heartbeat:<id>`; it appears shortly after the patch."""
        key = f"heartbeat:{agent_id}"
        deadline = time.monotonic() + self._policy.agent_visible_timeout_s
        while True:
            payload = await self._connection.read(
                "cron.list", {"agentId": agent_id, "includeDisabled": True}
            )
            for job in payload.get("jobs", []):
                if isinstance(job, Mapping) and job.get("declarationKey") == key:
                    return str(job["id"])
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self._policy.poll_interval_s)

    # ------------------------------------------------------------ runs

    async def wake(self, agent_id: str, message: str, idempotency_key: str) -> str:
        # Every terminal chat event is recorded as it arrives (bounded, see _track_run),
        # so a run that ends before this ack, or before wait_run is called, is not missed.
        started = time.monotonic()
        try:
            payload = await self._connection.call(
                "chat.send",
                {
                    "sessionKey": proto.main_session_key(agent_id),
                    "message": message,
                    "idempotencyKey": idempotency_key,
                },
            )
        except GatewayRequestError:
            # A repeated key whose run already failed is answered with that run's error;
            # it is the same run, and its outcome is known.
            if idempotency_key in self._finished_runs:
                log.info("gateway.wake.duplicate", agent_id=agent_id, run_id=idempotency_key)
                return idempotency_key
            raise
        run_id = str(payload.get("runId") or idempotency_key)
        log.info(
            "gateway.wake.sent",
            agent_id=agent_id,
            run_id=run_id,
            status=payload.get("status"),
            ack_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return run_id

    async def wait_run(self, run_id: str, timeout_s: float) -> RunOutcome:
        finished = self._finished_runs.get(run_id)
        if finished is not None:
            return finished
        future: asyncio.Future[RunOutcome] = asyncio.get_running_loop().create_future()
        self._run_waiters.setdefault(run_id, []).append(future)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            return RunOutcome(
                run_id, RunState.ABORTED, f"no end of the run seen within {timeout_s:.0f} s"
            )
        finally:
            waiters = self._run_waiters.get(run_id)
            if waiters and future in waiters:
                waiters.remove(future)

    def _track_run(self, event: str, payload: Any) -> None:
        """A `chat` event: record the run's end if it ended, and tell whoever waits for it."""
        if not isinstance(payload, Mapping):
            return
        run_id = payload.get("runId")
        outcome = proto.run_outcome(payload)
        if not isinstance(run_id, str) or outcome is None:
            return
        self._finished_runs[run_id] = outcome
        while len(self._finished_runs) > self._policy.finished_runs_kept:
            self._finished_runs.popitem(last=False)
        for future in self._run_waiters.pop(run_id, []):
            if not future.done():
                future.set_result(outcome)
        log.info("gateway.run.ended", run_id=run_id, state=outcome.state.value)

    # ------------------------------------------------------------ sessions and status

    async def reset_session(self, agent_id: str) -> None:
        # The gateway answers ok for any key (an absent session is created empty).
        await self._connection.call("sessions.reset", {"key": proto.main_session_key(agent_id)})
        log.info("gateway.session.reset", agent_id=agent_id)

    async def runtime_status(self) -> GatewayRuntime:
        # `status` is live; `health` is a cached snapshot that lags behind config changes.
        return proto.parse_status(await self._connection.read("status", {}))

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        params: dict[str, Any] = {"limit": max(1, limit)}
        if agent_id:
            params["agentId"] = agent_id
        return proto.parse_sessions(await self._connection.read("sessions.list", params))


def _agent_update(entry: AgentEntry, listed: Mapping[str, Any]) -> dict[str, Any]:
    """The agents.update fields that differ from what agents.list shows.

    Only differences are sent: every update with a name or emoji makes the gateway
    rewrite IDENTITY.md in the workspace.
    """
    changes: dict[str, Any] = {}
    identity = listed.get("identity")
    if not isinstance(identity, Mapping):
        identity = {}
    if entry.name and listed.get("name") != entry.name:
        changes["name"] = entry.name
    if entry.emoji and identity.get("emoji") != entry.emoji:
        changes["emoji"] = entry.emoji
    model = listed.get("model")
    current_model = model.get("primary") if isinstance(model, Mapping) else model
    if entry.model and current_model != entry.model:
        changes["model"] = entry.model
    if listed.get("workspace") and Path(str(listed["workspace"])) != entry.workspace:
        changes["workspace"] = str(entry.workspace)
    return changes


def _legacy_heartbeat_patch(
    config: Mapping[str, Any], agent_id: str, block: Mapping[str, Any]
) -> Mapping[str, Any]:
    """2026.3 keeps the roster in an array, which a merge patch replaces whole."""
    agents = config.get("agents")
    roster = agents.get("list") if isinstance(agents, Mapping) else None
    if not isinstance(roster, list):
        roster = []
    updated = []
    found = False
    for item in roster:
        if isinstance(item, Mapping) and item.get("id") == agent_id:
            heartbeat = dict(item.get("heartbeat") or {})
            heartbeat.update(block)
            item = {**item, "heartbeat": heartbeat}
            found = True
        updated.append(item)
    if not found:
        raise GatewayError(
            f"agent {agent_id} is not in agents.list of openclaw.json; ensure it first",
            code="agent_missing",
        )
    return {"agents": {"list": updated}}
