"""`OpenClawGatewayClient`: the `GatewayClient` over the gateway's loopback WebSocket.

One persistent connection, requests multiplexed by id (answers may come out of order;
the `agent` method answers twice under one id), events fanned out to subscribers. The
address and token are read from openclaw.json on every (re)connect, so a rotated token
(the gateway closes with 4001) is picked up by simply reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from missioncontrol.log import get_logger
from missioncontrol.version import VERSION as SIDECAR_VERSION
from protos.contract import GatewayGeneration
from sidecar.gateway import (
    AgentEntry,
    GatewayError,
    GatewayInfo,
    GatewayRuntime,
    GatewayUnavailable,
    HeartbeatSpec,
    RunOutcome,
    RunState,
    SessionPage,
)
from sidecar.gateway import protocol as proto
from sidecar.gateway.protocol import (
    ClientIdentity,
    GatewayConnectRefused,
    GatewayHandshakeError,
    GatewayRequestError,
    GatewayTimeout,
    Hello,
)
from sidecar.link.backoff import Backoff
from sidecar.openclaw_config import ConfigInvalid, read_config

log = get_logger("gateway")

EventCallback = Callable[[str, Any], None]


@dataclass(frozen=True)
class ClientPolicy:
    """Bounds and pacing. Defaults suit a gateway on the same host."""

    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    ready_wait_s: float = 5.0  # how long a call waits for a connection before refusing
    agent_visible_timeout_s: float = 20.0  # create -> listed in agents.list
    poll_interval_s: float = 0.1
    reconnect_first_s: float = 0.5  # x1.6 per failure, +-20 % jitter (sidecar.link.backoff)
    reconnect_max_s: float = 30.0
    conflict_retries: int = 5  # config.patch baseHash / cron scratch revision conflicts
    read_retries: int = 4  # idempotent reads on UNAVAILABLE: 0.1 + 0.2 + 0.4 + 0.8 s
    finished_runs_kept: int = 512  # run outcomes remembered for late wait_run calls


@dataclass(frozen=True)
class Reply:
    """One `res` frame: a payload, or the gateway's error."""

    payload: Any
    error: GatewayRequestError | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.payload


class _Pending:
    """A request waiting for its answer(s). `agent` answers twice under one id."""

    def __init__(self, method: str, expected: int) -> None:
        self.method = method
        self.expected = expected
        self.answers: asyncio.Queue[Mapping[str, Any] | BaseException] = asyncio.Queue()


class _Connection:
    """One open, handshaken socket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hello: Hello) -> None:
        self.ws = ws
        self.hello = hello
        self.pending: dict[str, _Pending] = {}


class OpenClawGatewayClient:
    def __init__(
        self,
        config_path: Path,
        *,
        policy: ClientPolicy | None = None,
        identity: ClientIdentity | None = None,
        client_version: str = SIDECAR_VERSION,
    ) -> None:
        self._config_path = config_path
        self._policy = policy or ClientPolicy()
        self._identity = identity or ClientIdentity()
        self._client_version = client_version
        self._info = GatewayInfo(reachable=False, unreachable_reason="not connected yet")
        self._info_callbacks: list[Callable[[GatewayInfo], None]] = []
        self._subscribers: list[tuple[str | None, EventCallback]] = []
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._last_error: GatewayUnavailable | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._wake_up = asyncio.Event()  # cut a reconnect delay short
        self._attempted = asyncio.Event()  # a connection attempt just ended
        self._run_waiters: dict[str, list[asyncio.Future[RunOutcome]]] = {}
        self._finished_runs: OrderedDict[str, RunOutcome] = OrderedDict()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._session = aiohttp.ClientSession()
            self._task = asyncio.create_task(self._run(), name="gateway-client")

    async def stop(self) -> None:
        self._stopping = True
        self._wake_up.set()
        conn = self._conn
        if conn is not None:
            await conn.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._set_info(GatewayInfo(reachable=False, unreachable_reason="sidecar stopped"))

    async def __aenter__(self) -> OpenClawGatewayClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_ready(self, timeout_s: float) -> GatewayInfo:
        """Wait for a working connection; raise why there is none on timeout, or at once
        when an attempt failed in a way retrying will not fix (token, scopes, protocol)."""
        deadline = time.monotonic() + timeout_s
        while not self._connected.is_set():
            error = self._last_error
            if isinstance(error, GatewayConnectRefused):
                raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._unavailable()
            self._attempted.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (self._connected, self._attempted)]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
        return self._info

    def reconnect_now(self) -> None:
        """Skip the current reconnect delay (the token or config was fixed)."""
        self._wake_up.set()

    # ------------------------------------------------------------ info and events

    @property
    def info(self) -> GatewayInfo:
        return self._info

    @property
    def hello(self) -> Hello | None:
        conn = self._conn
        return conn.hello if conn else None

    def on_info_change(self, callback: Callable[[GatewayInfo], None]) -> None:
        self._info_callbacks.append(callback)

    def subscribe(self, callback: EventCallback, event: str | None = None) -> Callable[[], None]:
        """Call `callback(event, payload)` for gateway events (all, or one name)."""
        entry = (event, callback)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(entry)

        return unsubscribe

    def _set_info(self, info: GatewayInfo) -> None:
        if info == self._info:
            return
        self._info = info
        for callback in list(self._info_callbacks):
            try:
                callback(info)
            except Exception:
                log.exception("gateway.info_callback.failed")

    def _unavailable(self) -> GatewayUnavailable:
        if self._last_error is not None:
            return self._last_error
        return GatewayUnavailable(f"gateway unreachable: {self._info.unreachable_reason}")

    # ------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        backoff = Backoff(
            initial_s=self._policy.reconnect_first_s, max_s=self._policy.reconnect_max_s
        )
        while not self._stopping:
            reason = ""
            quick_retry = False
            previous = self._info.unreachable_reason
            try:
                conn = await self._open()
            except GatewayUnavailable as exc:
                self._last_error = exc
                reason = str(exc)
                # Said once per cause, not on every retry.
                report = log.warning if reason != previous else log.debug
                report("gateway.handshake.failed", code=exc.code, error=reason)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = f"cannot reach the gateway: {exc or type(exc).__name__}"
                self._last_error = GatewayUnavailable(
                    f"{reason}. Is it running (openclaw gateway run) on the port in "
                    f"{self._config_path}?"
                )
                report = log.info if reason != previous else log.debug
                report("gateway.connect.failed", error=reason)
            except Exception as exc:  # a gateway bug must not end the connection loop
                reason = f"unexpected error while connecting: {exc!r}"
                self._last_error = GatewayUnavailable(reason)
                log.exception("gateway.connect.failed", error=reason)
            else:
                self._last_error = None
                backoff.reset()
                close_code, reason = await self._serve(conn)
                # After a token rotation the new token is already in the file: go again now.
                quick_retry = close_code == proto.CLOSE_TOKEN_ROTATED
                if quick_retry:
                    reason = "gateway closed the connection: auth token rotated (4001)"
            self._set_info(replace(self._info, reachable=False, unreachable_reason=reason))
            self._attempted.set()
            if self._stopping:
                break
            self._wake_up.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.0 if quick_retry else backoff.next_delay()):
                    await self._wake_up.wait()

    async def _open(self) -> _Connection:
        """Read the config, open the socket and run the handshake."""
        config = await asyncio.to_thread(read_config, self._config_path)
        if isinstance(config, ConfigInvalid):
            raise GatewayHandshakeError(
                f"cannot read the gateway address and token: {config}. Fix openclaw.json."
            )
        assert self._session is not None
        url = f"ws://{config.connect_host}:{config.port}/"
        headers = {"Origin": self._identity.origin} if self._identity.origin else None
        started = time.monotonic()
        ws = await self._session.ws_connect(
            url,
            headers=headers,
            autoping=True,
            max_msg_size=0,  # hello-ok.policy.maxPayload is 25 MiB; trust the local gateway
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
        try:
            async with asyncio.timeout(self._policy.connect_timeout_s):
                hello = await self._handshake(ws, config.token, str(config.path))
        except TimeoutError:
            await ws.close()
            raise GatewayHandshakeError(
                f"gateway at {url} did not complete the handshake within "
                f"{self._policy.connect_timeout_s:.0f} s"
            ) from None
        except BaseException:
            await ws.close()
            raise
        conn = _Connection(ws, hello)
        self._conn = conn
        self._connected.set()
        log.info(
            "gateway.connected",
            url=url,
            version=hello.version,
            protocol=hello.protocol,
            generation=hello.generation.name,
            handshake_ms=round((time.monotonic() - started) * 1000, 1),
        )
        self._set_info(
            GatewayInfo(
                reachable=True,
                version=hello.version,
                protocol=hello.protocol,
                generation=hello.generation,
            )
        )
        return conn

    async def _handshake(
        self, ws: aiohttp.ClientWebSocketResponse, token: str, config_path: str
    ) -> Hello:
        frame = await self._receive_json(ws)
        if frame.get("type") != "event" or frame.get("event") != "connect.challenge":
            raise GatewayHandshakeError(
                f"expected connect.challenge from the gateway, got {str(frame)[:200]}"
            )
        protocols = (proto.MIN_PROTOCOL, proto.MAX_PROTOCOL)
        for _attempt in range(2):
            params = proto.connect_params(
                token,
                self._identity,
                self._client_version,
                sys.platform,
                min_protocol=protocols[0],
                max_protocol=protocols[1],
            )
            request_id = str(uuid.uuid4())
            await ws.send_str(proto.request_frame(request_id, "connect", params))
            answer = await self._await_answer(ws, request_id)
            if answer.get("ok"):
                hello = proto.parse_hello(answer.get("payload") or {})
                cleared = proto.check_scopes(hello, self._identity)
                if cleared is not None:
                    raise cleared
                return hello
            error = answer.get("error") or {}
            details = error.get("details") or {}
            expected = details.get("expectedProtocol")
            if (
                details.get("code") == "PROTOCOL_MISMATCH"
                and isinstance(expected, int)
                and proto.MIN_PROTOCOL <= expected <= proto.MAX_PROTOCOL
                and protocols != (expected, expected)
            ):
                # A gateway that rejects the range but names a protocol we speak.
                protocols = (expected, expected)
                continue
            raise proto.handshake_error(error, config_path=config_path, protocols=protocols)
        raise GatewayHandshakeError("the gateway refused every protocol the sidecar offered")

    async def _await_answer(
        self, ws: aiohttp.ClientWebSocketResponse, request_id: str
    ) -> Mapping[str, Any]:
        while True:
            frame = await self._receive_json(ws)
            if frame.get("type") == "res" and frame.get("id") == request_id:
                return frame

    async def _receive_json(self, ws: aiohttp.ClientWebSocketResponse) -> Mapping[str, Any]:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                frame = json.loads(msg.data)
            except ValueError:
                frame = None
            if isinstance(frame, Mapping):
                return frame
            raise GatewayHandshakeError(f"gateway sent a non-object frame: {msg.data[:200]}")
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise GatewayHandshakeError(
                f"gateway closed the connection during the handshake (code {ws.close_code})"
            )
        raise GatewayHandshakeError(f"unexpected WebSocket message {msg.type.name}")

    async def _serve(self, conn: _Connection) -> tuple[int | None, str]:
        """Read frames until the socket ends; return its close code and why it ended."""
        # The gateway ticks every tickIntervalMs; twice that in silence is a dead socket.
        silence_s = 2 * conn.hello.tick_interval_ms / 1000
        reason = "connection closed"
        try:
            while True:
                try:
                    msg = await conn.ws.receive(timeout=silence_s)
                except TimeoutError:
                    reason = f"no frame from the gateway for {silence_s:.0f} s (dead socket)"
                    log.warning("gateway.connection.stale", silence_s=silence_s)
                    await conn.ws.close()
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(conn, msg.data)
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    reason = f"gateway closed the connection (code {conn.ws.close_code})"
                    break
        finally:
            self._conn = None
            self._connected.clear()
            close_code = conn.ws.close_code
            if not conn.ws.closed:
                await conn.ws.close()
            lost = GatewayUnavailable(f"gateway connection lost: {reason}")
            for pending in conn.pending.values():
                pending.answers.put_nowait(lost)
            conn.pending.clear()
            log.info("gateway.disconnected", close_code=close_code, reason=reason)
        return close_code, reason

    def _dispatch(self, conn: _Connection, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            log.warning("gateway.frame.invalid", data=data[:200])
            return
        if not isinstance(frame, Mapping):
            return
        kind = frame.get("type")
        if kind == "res":
            request_id = frame.get("id")
            pending = conn.pending.get(request_id) if isinstance(request_id, str) else None
            if pending is None:
                log.debug("gateway.response.unmatched", id=request_id)
                return
            pending.answers.put_nowait(frame)
            pending.expected -= 1
            if pending.expected <= 0:
                conn.pending.pop(str(request_id), None)
        elif kind == "event":
            event = frame.get("event")
            if isinstance(event, str):
                self._on_event(event, frame.get("payload"))

    def _on_event(self, event: str, payload: Any) -> None:
        if event == "chat" and isinstance(payload, Mapping):
            self._track_run(payload)
        for name, callback in list(self._subscribers):
            if name is None or name == event:
                try:
                    callback(event, payload)
                except Exception:
                    log.exception("gateway.event_callback.failed", gateway_event=event)

    # ------------------------------------------------------------ requests

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Any:
        """Send one request and return its payload (for `agent`: the first answer)."""
        replies = await self.call_multi(method, params, answers=1, timeout_s=timeout_s)
        return replies[0].unwrap()

    async def call_multi(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        answers: int,
        timeout_s: float | None = None,
    ) -> list[Reply]:
        """Send one request and collect `answers` responses sent under its id.

        `agent` answers twice (accepted, then the run's end); either may be an error.
        """
        conn = await self._connection()
        request_id = str(uuid.uuid4())
        # Register before sending: the answer can arrive before send_str returns.
        pending = _Pending(method, answers)
        conn.pending[request_id] = pending
        timeout = timeout_s if timeout_s is not None else self._policy.request_timeout_s
        deadline = time.monotonic() + timeout
        try:
            try:
                await conn.ws.send_str(proto.request_frame(request_id, method, params))
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise GatewayUnavailable(
                    f"gateway connection lost while sending {method}: {exc}"
                ) from exc
            replies: list[Reply] = []
            while len(replies) < answers:
                remaining = deadline - time.monotonic()
                try:
                    async with asyncio.timeout(max(remaining, 0.001)):
                        answer = await pending.answers.get()
                except TimeoutError:
                    raise GatewayTimeout(
                        f"{method}: no answer from the gateway within {timeout:.0f} s"
                    ) from None
                if isinstance(answer, BaseException):
                    raise answer
                if answer.get("ok"):
                    replies.append(Reply(answer.get("payload")))
                else:
                    replies.append(
                        Reply(None, proto.request_error(method, answer.get("error") or {}))
                    )
            return replies
        finally:
            conn.pending.pop(request_id, None)

    async def read(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """A read-only call, retried briefly on errors the gateway calls passing
        (UNAVAILABLE while a plugin reloads just after boot, for instance)."""
        delay_s = self._policy.poll_interval_s
        for attempt in range(self._policy.read_retries + 1):
            try:
                return await self.call(method, params)
            except GatewayRequestError as exc:
                if not exc.retryable or attempt == self._policy.read_retries:
                    raise
                log.info("gateway.read.retry", method=method, error=exc.gateway_message)
            await asyncio.sleep(delay_s)
            delay_s *= 2
        raise AssertionError("unreachable")

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None:
            return conn
        if self._task is None:
            raise GatewayUnavailable("gateway client is not started")
        await self.wait_ready(self._policy.ready_wait_s)
        conn = self._conn
        if conn is None:
            raise self._unavailable()
        return conn

    async def _generation(self) -> GatewayGeneration:
        """The connected gateway's generation (waits briefly for a connection)."""
        return (await self._connection()).hello.generation

    # ------------------------------------------------------------ agents

    async def list_agent_ids(self) -> set[str]:
        payload = await self.read("agents.list", {})
        return {a["id"] for a in payload.get("agents", []) if isinstance(a, Mapping) and "id" in a}

    async def _listed_agent(self, agent_id: str) -> Mapping[str, Any] | None:
        payload = await self.read("agents.list", {})
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
            await self.call("agents.update", {"agentId": entry.agent_id, **changes})
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
            payload = await self.call("agents.create", params)
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
            await self.call("agents.delete", {"agentId": agent_id, "deleteFiles": delete_files})
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
            current = await self.read("config.get", {})
            parsed = current.get("parsed") or current.get("config") or {}
            params = {"raw": json.dumps(build(parsed)), "baseHash": current.get("hash")}
            try:
                return await self.call("config.patch", params)
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
            current = await self.read("cron.scratch.get", {"jobId": job_id})
            scratch = current.get("scratch") or {}
            if (scratch.get("content") or "") == checklist:
                return
            revision = current.get("currentRevision", 0)
            result = await self.call(
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
            payload = await self.read("cron.list", {"agentId": agent_id, "includeDisabled": True})
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
            payload = await self.call(
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

    # ------------------------------------------------------------ sessions and status

    async def reset_session(self, agent_id: str) -> None:
        # The gateway answers ok for any key (an absent session is created empty).
        await self.call("sessions.reset", {"key": proto.main_session_key(agent_id)})
        log.info("gateway.session.reset", agent_id=agent_id)

    async def runtime_status(self) -> GatewayRuntime:
        # `status` is live; `health` is a cached snapshot that lags behind config changes.
        return proto.parse_status(await self.read("status", {}))

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        params: dict[str, Any] = {"limit": max(1, limit)}
        if agent_id:
            params["agentId"] = agent_id
        return proto.parse_sessions(await self.read("sessions.list", params))

    def _track_run(self, payload: Mapping[str, Any]) -> None:
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
