"""`OpenClawGatewayClient`: the `GatewayClient`, written over one `GatewayConnection`.

Each operation is a few gateway methods sent with the connection's `call()` and
`read()`: ensure or remove an agent and wait until agents.list agrees, set the
heartbeat (guarded by baseHash: config.patch, or config.set on 2026.3, which restarts
after every patch; the checklist in the heartbeat cron job's scratch), wake
(chat.send) and follow the run from `chat` events, with the `agent` events that show
whether the model really ran, reset a session, read the live status and sessions.
Sockets, frames and reconnecting are the connection's
(sidecar/gateway/connection.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from missioncontrol.log import get_logger
from protos.contract import GatewayErrorKind, GatewayGeneration
from sidecar.gateway import (
    AgentEntry,
    GatewayError,
    GatewayInfo,
    GatewayRuntime,
    HeartbeatJobChanged,
    HeartbeatSpec,
    ProviderAuth,
    RunEnded,
    RunKind,
    RunOutcome,
    RunState,
    RuntimeEvent,
    SessionPage,
    SessionTokens,
)
from sidecar.gateway import protocol as proto
from sidecar.gateway.connection import ConnectionPolicy, GatewayConnection
from sidecar.gateway.protocol import ClientIdentity, GatewayRequestError, GatewayTimeout
from sidecar.openclaw_config import OpenClawConfig, read_config

log = get_logger("sidecar.gateway")

# A failed heartbeat's `heartbeat` event precedes its job's `cron` event by milliseconds.
HEARTBEAT_FAILURE_PAIRING_S = 2.0
# A chat run's `chat` end follows its `agent` lifecycle end within milliseconds.
CHAT_END_WAIT_S = 2.0


@dataclass(frozen=True)
class _Wake:
    """A wake this client sent: what to send again if the gateway supersedes its run."""

    agent_id: str
    message: str
    key: str
    origin: str  # the run id the caller of wake() waits on
    resends: int = 0


@dataclass(frozen=True)
class ClientPolicy(ConnectionPolicy):
    """The connection's bounds plus the operations'; agents.list and cron.list are
    polled every `poll_interval_s`."""

    agent_visible_timeout_s: float = 20.0  # create -> listed in agents.list
    conflict_retries: int = 5  # config.patch baseHash / cron scratch revision conflicts
    finished_runs_kept: int = 512  # run outcomes remembered for late wait_run calls
    superseded_resends: int = 2  # a wake whose run the gateway superseded is sent again
    abort_wait_s: float = 15.0  # a removed agent's aborted runs, until they end


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
        self._config_path = config_path
        self._connection = GatewayConnection(config_path, self._policy, identity=identity)
        self._run_waiters: dict[str, list[asyncio.Future[RunOutcome]]] = {}
        self._finished_runs: OrderedDict[str, RunOutcome] = OrderedDict()
        self._turns: OrderedDict[str, None] = OrderedDict()  # runs that showed a model turn
        self._wakes: OrderedDict[str, _Wake] = OrderedDict()  # runs this client started
        self._superseded: OrderedDict[str, None] = OrderedDict()  # runs sent again
        self._resends: set[asyncio.Task[None]] = set()
        self._runtime_listeners: list[Callable[[RuntimeEvent], None]] = []
        # The last failed heartbeat's words: its cron event says only "agent-runner-failure".
        self._heartbeat_failure: tuple[float, str] = (0.0, "")
        # Subscribed first, so a run's end is recorded before anyone else hears of it.
        self._connection.subscribe(self._track_run, "chat")
        self._connection.subscribe(self._track_turn, "agent")
        self._connection.subscribe(self._track_lifecycle, "agent")
        self._connection.subscribe(self._track_heartbeat, "heartbeat")
        self._connection.subscribe(self._track_cron, "cron")
        # The connection's own requests, for what the operations below do not cover.
        self.call = self._connection.call
        self.call_multi = self._connection.call_multi
        self.read = self._connection.read
        self.wait_ready = self._connection.wait_ready

    # ------------------------------------------------------------ the connection

    async def start(self) -> None:
        await self._connection.start()

    async def stop(self) -> None:
        for task in list(self._resends):
            task.cancel()
        await asyncio.gather(*self._resends, return_exceptions=True)
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

    def on_runtime_event(self, callback: Callable[[RuntimeEvent], None]) -> None:
        self._runtime_listeners.append(callback)

    def _emit(self, event: RuntimeEvent) -> None:
        for listener in list(self._runtime_listeners):
            try:
                listener(event)
            except Exception:  # one listener's bug must not cost the others the event
                log.exception("gateway.runtime_listener.failed", runtime_event=type(event).__name__)

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

    async def _being_loaded(self, agent_id: str) -> bool:
        """The gateway has the agent, loaded or loading: listed in agents.list, or already
        in openclaw.json (agents.list lags agents.create by about 0.5-0.8 s)."""
        if await self._listed_agent(agent_id) is not None:
            return True
        config = await asyncio.to_thread(read_config, self._config_path)
        return isinstance(config, OpenClawConfig) and agent_id in config.entries

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
        await self._end_runs(agent_id)
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

    async def _end_runs(self, agent_id: str) -> None:
        """Abort the runs this client started for the agent and wait (bounded) for their
        ends: a run still going when its agent is removed writes the agent's session
        under the gateway's state again when it ends, after the removal cleaned it."""
        active = {
            wake.origin
            for wake in self._wakes.values()
            if wake.agent_id == agent_id and wake.origin not in self._finished_runs
        }
        if not active:
            return
        try:
            await self._connection.call(
                "chat.abort", {"sessionKey": proto.main_session_key(agent_id)}
            )
        except GatewayError as exc:  # the removal goes on; what the run leaves is removed
            log.warning("gateway.run.abort_failed", agent_id=agent_id, error=str(exc))
            return
        ends = [self.wait_run(run_id, self._policy.abort_wait_s) for run_id in sorted(active)]
        outcomes = await asyncio.gather(*ends)
        log.info(
            "gateway.runs.aborted",
            agent_id=agent_id,
            runs=[f"{o.run_id}:{o.state.value}" for o in outcomes],
        )

    # ------------------------------------------------------------ heartbeat

    async def set_heartbeat(self, agent_id: str, heartbeat: HeartbeatSpec) -> None:
        block = {
            "every": proto.heartbeat_every(heartbeat.every_s),
            "target": heartbeat.target or "none",
        }
        generation = await self._generation()
        if generation is GatewayGeneration.LEGACY_2026_3:
            # The hub renders HEARTBEAT.md for this generation; only the cadence goes here.
            # config.set, not config.patch: 2026.3 restarts itself 2 s after every
            # config.patch (SIGUSR1; the runs in flight, such as the wake this apply is
            # about to send, are lost with it) and allows 3 per minute. config.set writes
            # the file, and the gateway hot-applies agents.* as for a hand edit.
            written = await self._write_config(
                lambda cfg: _legacy_config_with_heartbeat(cfg, agent_id, block)
            )
        else:
            written = await self._patch_config(
                lambda cfg: _current_heartbeat_patch(cfg, agent_id, block)
            )
            await self._set_checklist(agent_id, heartbeat.checklist)
        log.info("gateway.heartbeat.set", agent_id=agent_id, changed=written, **block)

    async def _patch_config(
        self, build: Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
    ) -> bool:
        """config.patch guarded by baseHash; on a concurrent write re-read and retry.
        `build` returns None when the config already says it: nothing is written."""
        return await self._guarded_write("config.patch", build)

    async def _write_config(
        self, build: Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
    ) -> bool:
        """config.set of the whole file guarded by baseHash (the gateway restores the
        values config.get redacts); None from `build`: nothing to write."""
        return await self._guarded_write("config.set", build)

    async def _guarded_write(
        self, method: str, build: Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
    ) -> bool:
        for attempt in range(self._policy.conflict_retries + 1):
            current = await self._connection.read("config.get", {})
            parsed = current.get("parsed") or current.get("config") or {}
            document = build(parsed)
            if document is None:
                return False
            params = {"raw": json.dumps(document), "baseHash": current.get("hash")}
            try:
                await self._connection.call(method, params)
                return True
            except GatewayRequestError as exc:
                if not proto.is_config_conflict(exc) or attempt == self._policy.conflict_retries:
                    raise
                log.info("gateway.config_write.conflict", method=method, attempt=attempt + 1)
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
        # The run id is the idempotency key: known before the send, in case the run ends
        # before its ack arrives.
        wake = _Wake(agent_id, message, idempotency_key, origin=idempotency_key)
        self._remember_wake(idempotency_key, wake)
        started = time.monotonic()
        try:
            payload = await self._send_chat(agent_id, message, idempotency_key)
        except GatewayRequestError as exc:
            # A repeated key whose run already failed is answered with that run's error;
            # it is the same run, and its outcome is known.
            if idempotency_key in self._finished_runs:
                log.info("gateway.wake.duplicate", agent_id=agent_id, run_id=idempotency_key)
                return idempotency_key
            if proto.is_agent_not_loaded(exc):
                return await self._wake_once_loaded(agent_id, message, idempotency_key, exc)
            raise
        run_id = str(payload.get("runId") or idempotency_key)
        if run_id != idempotency_key:
            self._remember_wake(run_id, dataclasses.replace(wake, origin=run_id))
        log.info(
            "gateway.wake.sent",
            agent_id=agent_id,
            run_id=run_id,
            status=payload.get("status"),
            ack_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return run_id

    async def _send_chat(self, agent_id: str, message: str, idempotency_key: str) -> Any:
        return await self._connection.call(
            "chat.send",
            {
                "sessionKey": proto.main_session_key(agent_id),
                "message": message,
                "idempotencyKey": idempotency_key,
            },
        )

    def _remember_wake(self, run_id: str, wake: _Wake) -> None:
        self._wakes[run_id] = wake
        while len(self._wakes) > self._policy.finished_runs_kept:
            self._wakes.popitem(last=False)

    async def _resend(self, wake: _Wake) -> None:
        """The gateway superseded the wake's run (a reload of its own, such as the one an
        apply's config change causes, replaced the runtime the run started on): the
        model never saw the wake. Send it again under a derived key; the caller keeps
        waiting on the first run id."""
        key = f"{wake.key}:{wake.resends + 1}"  # `key` stays the first send's
        again = dataclasses.replace(wake, resends=wake.resends + 1)
        self._remember_wake(key, again)
        try:
            payload = await self._send_chat(wake.agent_id, wake.message, key)
        except GatewayError as exc:
            self._finish_run(
                wake.origin,
                RunOutcome(
                    wake.origin,
                    RunState.ERROR,
                    f"the gateway superseded the wake's run and refused it again: {exc}",
                ),
            )
            return
        run_id = str(payload.get("runId") or key)
        if run_id != key:
            self._remember_wake(run_id, again)
        log.info("gateway.wake.resent", agent_id=wake.agent_id, run_id=run_id, origin=wake.origin)

    async def _wake_once_loaded(
        self, agent_id: str, message: str, idempotency_key: str, refused: GatewayRequestError
    ) -> str:
        """chat.send said the agent "no longer exists in configuration". The gateway says
        that both for an agent it is (re)loading (just created or re-applied) and for one
        that is gone: listed in agents.list, it is loading, so send again for a while (a
        retryable error if it stays refused); not listed, it is gone (permanent)."""
        deadline = time.monotonic() + self._policy.agent_visible_timeout_s
        while await self._being_loaded(agent_id):
            if time.monotonic() >= deadline:
                raise refused  # classified RETRY: the command is retried in place
            await asyncio.sleep(self._policy.poll_interval_s)
            try:
                payload = await self._send_chat(agent_id, message, idempotency_key)
            except GatewayRequestError as exc:
                if not proto.is_agent_not_loaded(exc):
                    raise
                refused = exc
                continue
            run_id = str(payload.get("runId") or idempotency_key)
            if run_id != idempotency_key:
                self._remember_wake(
                    run_id, _Wake(agent_id, message, idempotency_key, origin=run_id)
                )
            log.info("gateway.wake.sent", agent_id=agent_id, run_id=run_id, after_reload=True)
            return run_id
        raise GatewayError(
            f"agent {agent_id} is not on the gateway (chat.send: {refused.gateway_message}); "
            "its entry was removed from openclaw.json: the sidecar restores managed entries "
            "unless --no-restore-removed-entries, or re-apply the agent from the hub",
            code="agent_missing",
            kind=GatewayErrorKind.PERMANENT,
        )

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

    def _track_turn(self, event: str, payload: Any) -> None:
        """Remember the runs whose events show that the model ran (bounded, like outcomes)."""
        evidence = proto.turn_evidence(event, payload)
        if evidence is None:
            return
        self._turns[evidence.run_id] = None
        self._turns.move_to_end(evidence.run_id)
        while len(self._turns) > self._policy.finished_runs_kept:
            self._turns.popitem(last=False)

    def _track_run(self, event: str, payload: Any) -> None:
        """A `chat` event: record the run's end if it ended, and tell whoever waits for it."""
        if not isinstance(payload, Mapping):
            return
        self._track_turn(event, payload)  # chat deltas carry the model's output too
        run_id = payload.get("runId")
        outcome = proto.run_outcome(payload, model_turn=run_id in self._turns)
        if not isinstance(run_id, str) or outcome is None:
            return
        if run_id in self._finished_runs or run_id in self._superseded:
            # 2026.9 ends a failed run twice (its error, then the same as a notice): the
            # first end is the run's.
            return
        wake = self._wakes.get(run_id)
        if (
            wake is not None
            and outcome.state is RunState.ERROR
            and proto.is_superseded_run(outcome.message)
            and wake.resends < self._policy.superseded_resends
        ):
            self._superseded[run_id] = None
            while len(self._superseded) > self._policy.finished_runs_kept:
                self._superseded.popitem(last=False)
            log.info("gateway.run.superseded", run_id=run_id, origin=wake.origin)
            task = asyncio.create_task(self._resend(wake))
            self._resends.add(task)
            task.add_done_callback(self._resends.discard)
            return
        origin = wake.origin if wake is not None else run_id
        if origin != run_id:
            self._finished_runs[run_id] = outcome
        self._finish_run(origin, dataclasses.replace(outcome, run_id=origin))
        agent_id = proto.run_agent(payload) or (wake.agent_id if wake is not None else "")
        if agent_id:
            kind = RunKind.WAKE if wake is not None else RunKind.CHAT
            self._emit(RunEnded(agent_id, kind, self._finished_runs[origin]))

    def _track_lifecycle(self, event: str, payload: Any) -> None:
        """A run that ends with no `chat` event is one the gateway started itself: 2026.3's
        heartbeat runs show only their `agent` events (2026.9's, only `cron` ones)."""
        if not isinstance(payload, Mapping) or payload.get("stream") != "lifecycle":
            return
        data = payload.get("data")
        phase = data.get("phase") if isinstance(data, Mapping) else None
        run_id = payload.get("runId")
        agent_id = proto.run_agent(payload)
        if phase not in ("end", "error") or not isinstance(run_id, str) or not agent_id:
            return
        error = str(data.get("error") or "run failed") if isinstance(data, Mapping) else ""
        asyncio.get_running_loop().call_later(
            CHAT_END_WAIT_S, self._ended_without_chat, run_id, agent_id, phase, error
        )

    def _ended_without_chat(self, run_id: str, agent_id: str, phase: str, error: str) -> None:
        if run_id in self._finished_runs or run_id in self._superseded or run_id in self._wakes:
            return  # its chat end came (or it is a wake, whose end is waited for)
        if phase == "end":
            outcome = RunOutcome(run_id, RunState.FINAL, "", model_turn=run_id in self._turns)
        else:
            outcome = RunOutcome(run_id, RunState.ERROR, error)
        self._finish_run(run_id, outcome)  # a late chat end is not a second one
        self._emit(RunEnded(agent_id, RunKind.HEARTBEAT, outcome))

    def _track_heartbeat(self, event: str, payload: Any) -> None:
        """A `heartbeat` event names no agent, but says why a failed heartbeat failed; the
        job's `cron` event that follows it at once names the agent."""
        if isinstance(payload, Mapping) and payload.get("status") == "failed":
            detail = str(payload.get("preview") or payload.get("reason") or "")
            self._heartbeat_failure = (time.monotonic(), detail)

    def _track_cron(self, event: str, payload: Any) -> None:
        """Heartbeat jobs' `cron` events: a run's end, or the job added or removed."""
        if not isinstance(payload, Mapping):
            return
        agent_id = proto.heartbeat_job_agent(payload)
        if not agent_id:
            return
        action = payload.get("action")
        if action in ("added", "removed"):
            self._emit(HeartbeatJobChanged(agent_id, present=action == "added"))
            return
        failed_at, detail = self._heartbeat_failure
        recent = time.monotonic() - failed_at < HEARTBEAT_FAILURE_PAIRING_S
        outcome = proto.heartbeat_run_outcome(payload, detail if recent else "")
        if outcome is not None:
            log.debug(
                "gateway.heartbeat.ended",
                agent_id=agent_id,
                status=payload.get("status"),
                state=outcome.state.value,
                message=outcome.message,
            )
            self._emit(RunEnded(agent_id, RunKind.HEARTBEAT, outcome))

    def _finish_run(self, run_id: str, outcome: RunOutcome) -> None:
        self._finished_runs[run_id] = outcome
        while len(self._finished_runs) > self._policy.finished_runs_kept:
            self._finished_runs.popitem(last=False)
        for future in self._run_waiters.pop(run_id, []):
            if not future.done():
                future.set_result(outcome)
        log.info(
            "gateway.run.ended",
            run_id=run_id,
            state=outcome.state.value,
            model_turn=outcome.model_turn,
        )

    # ------------------------------------------------------------ sessions and status

    async def reset_session(self, agent_id: str) -> None:
        # The gateway answers ok for any key (an absent session is created empty).
        await self._connection.call("sessions.reset", {"key": proto.main_session_key(agent_id)})
        log.info("gateway.session.reset", agent_id=agent_id)

    async def runtime_status(self) -> GatewayRuntime:
        # `status` is live; `health` is a cached snapshot that lags behind config changes.
        return proto.parse_status(await self._connection.read("status", {}))

    async def model_auth(self) -> list[ProviderAuth] | None:
        if "models.authStatus" not in (await self._connection.ready_hello()).methods:
            return None  # 2026.3 has no such method
        return proto.parse_model_auth(await self._connection.read("models.authStatus", {}))

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        params: dict[str, Any] = {"limit": max(1, limit)}
        if agent_id:
            params["agentId"] = agent_id
        return proto.parse_sessions(await self._connection.read("sessions.list", params))

    async def session_tokens(self, key: str, day: str) -> SessionTokens | None:
        payload = await self._connection.read(
            "sessions.usage", proto.session_usage_params(key, day)
        )
        return proto.parse_session_tokens(payload if isinstance(payload, Mapping) else {}, key, day)


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


def _current_heartbeat_patch(
    config: Mapping[str, Any], agent_id: str, block: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The merge patch that sets the agent's heartbeat; None if the entry already has it."""
    agents = config.get("agents")
    entries = agents.get("entries") if isinstance(agents, Mapping) else None
    entry = entries.get(agent_id) if isinstance(entries, Mapping) else None
    current = entry.get("heartbeat") if isinstance(entry, Mapping) else None
    if isinstance(current, Mapping) and {**current, **block} == dict(current):
        return None
    return {"agents": {"entries": {agent_id: {"heartbeat": block}}}}


def _legacy_config_with_heartbeat(
    config: Mapping[str, Any], agent_id: str, block: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The whole 2026.3 config with the agent's heartbeat set in the `agents.list` array;
    None if it already has it."""
    agents = config.get("agents")
    roster = agents.get("list") if isinstance(agents, Mapping) else None
    if not isinstance(agents, Mapping) or not isinstance(roster, list):
        roster = []
    updated = []
    found = changed = False
    for item in roster:
        if isinstance(item, Mapping) and item.get("id") == agent_id:
            heartbeat = dict(item.get("heartbeat") or {})
            found = True
            if {**heartbeat, **block} != heartbeat:
                heartbeat.update(block)
                item = {**item, "heartbeat": heartbeat}
                changed = True
        updated.append(item)
    if not found:
        raise GatewayError(
            f"agent {agent_id} is not in agents.list of openclaw.json; ensure it first",
            code="agent_missing",
        )
    if not changed:
        return None
    return {**config, "agents": {**(agents or {}), "list": updated}}
