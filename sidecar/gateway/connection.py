"""`GatewayConnection`: one live WebSocket to the OpenClaw gateway on loopback.

The transport under `OpenClawGatewayClient` (sidecar/gateway/openclaw.py): the socket
and its handshake, requests multiplexed by id (answers may come out of order; the
`agent` method answers twice under one id), brief retries of reads, events fanned out
to subscribers, and a reconnect loop with backoff. It knows frames, not agents. The
address and token are read from openclaw.json on every (re)connect, so a rotated token
(the gateway closes with 4001) is picked up by simply reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived
from missioncontrol.version import VERSION as SIDECAR_VERSION
from sidecar.gateway import GatewayInfo, GatewayUnavailable
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

log = get_logger("sidecar.gateway")

EventCallback = Callable[[str, Any], None]


@dataclass(frozen=True)
class ConnectionPolicy:
    """Bounds and pacing of the connection. Defaults suit a gateway on the same host."""

    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    ready_wait_s: float = 5.0  # how long a call waits for a connection before refusing
    poll_interval_s: float = 0.1  # the first read retry's delay (then doubling)
    reconnect_first_s: float = 0.5  # x1.6 per failure, +-20 % jitter (sidecar.link.backoff)
    # A loopback connect costs next to nothing: a gateway that restarts (10-20 s on a busy
    # host) is reattached within seconds of being back, not after a 20-30 s backoff step.
    reconnect_max_s: float = 5.0
    read_retries: int = 4  # idempotent reads on UNAVAILABLE: 0.1 + 0.2 + 0.4 + 0.8 s


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


class _Socket:
    """One open, handshaken socket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hello: Hello) -> None:
        self.ws = ws
        self.hello = hello
        self.pending: dict[str, _Pending] = {}


class GatewayConnection:
    """The connection to one gateway, kept up in the background from `start()` to `stop()`."""

    def __init__(
        self,
        config_path: Path,
        policy: ConnectionPolicy,
        *,
        identity: ClientIdentity | None = None,
        client_version: str = SIDECAR_VERSION,
    ) -> None:
        self._config_path = config_path
        self._policy = policy
        self._identity = identity or ClientIdentity()
        self._client_version = client_version
        self._info = GatewayInfo(reachable=False, unreachable_reason="not connected yet")
        self._info_callbacks: list[Callable[[GatewayInfo], None]] = []
        self._subscribers: list[tuple[str | None, EventCallback]] = []
        self._socket: _Socket | None = None
        self._connected = asyncio.Event()
        self._last_error: GatewayUnavailable | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._wake_up = asyncio.Event()  # cut a reconnect delay short
        self._attempted = asyncio.Event()  # a connection attempt just ended

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._session = aiohttp.ClientSession()
            self._task = start_long_lived(self._run(), name="gateway-client", log=log)

    async def stop(self) -> None:
        self._stopping = True
        self._wake_up.set()
        sock = self._socket
        if sock is not None:
            await sock.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._set_info(GatewayInfo(reachable=False, unreachable_reason="sidecar stopped"))

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
        sock = self._socket
        return sock.hello if sock else None

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
                sock = await self._open()
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
                try:
                    close_code, reason = await self._serve(sock)
                except Exception as exc:  # a bug must not end the connection loop either
                    log.exception("gateway.connection.failed", error=repr(exc))
                    close_code, reason = None, f"connection failed: {exc!r}"
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

    async def _open(self) -> _Socket:
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
        sock = _Socket(ws, hello)
        self._socket = sock
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
        return sock

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
                frame = proto.decode_frame(msg.data)
            except (ValueError, RecursionError):
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

    async def _serve(self, sock: _Socket) -> tuple[int | None, str]:
        """Read frames until the socket ends; return its close code and why it ended."""
        # The gateway ticks every tickIntervalMs; twice that in silence is a dead socket.
        silence_s = 2 * sock.hello.tick_interval_ms / 1000
        reason = "connection closed"
        try:
            while True:
                try:
                    msg = await sock.ws.receive(timeout=silence_s)
                except TimeoutError:
                    reason = f"no frame from the gateway for {silence_s:.0f} s (dead socket)"
                    log.warning("gateway.connection.stale", silence_s=silence_s)
                    await sock.ws.close()
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(sock, msg.data)
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    reason = f"gateway closed the connection (code {sock.ws.close_code})"
                    break
        finally:
            self._socket = None
            self._connected.clear()
            close_code = sock.ws.close_code
            if not sock.ws.closed:
                await sock.ws.close()
            lost = GatewayUnavailable(f"gateway connection lost: {reason}")
            for pending in sock.pending.values():
                pending.answers.put_nowait(lost)
            sock.pending.clear()
            log.info("gateway.disconnected", close_code=close_code, reason=reason)
        return close_code, reason

    def _dispatch(self, sock: _Socket, data: str) -> None:
        try:
            frame = proto.decode_frame(data)
        except (ValueError, RecursionError):
            log.warning("gateway.frame.invalid", data=data[:200])
            return
        if not isinstance(frame, Mapping):
            return
        kind = frame.get("type")
        if kind == "res":
            request_id = frame.get("id")
            pending = sock.pending.get(request_id) if isinstance(request_id, str) else None
            if pending is None:
                log.debug("gateway.response.unmatched", id=request_id)
                return
            pending.answers.put_nowait(frame)
            pending.expected -= 1
            if pending.expected <= 0:
                sock.pending.pop(str(request_id), None)
        elif kind == "event":
            event = frame.get("event")
            if isinstance(event, str):
                self._on_event(event, frame.get("payload"))

    def _on_event(self, event: str, payload: Any) -> None:
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
        sock = await self._ready_socket()
        request_id = str(uuid.uuid4())
        # Register before sending: the answer can arrive before send_str returns.
        pending = _Pending(method, answers)
        sock.pending[request_id] = pending
        timeout = timeout_s if timeout_s is not None else self._policy.request_timeout_s
        deadline = time.monotonic() + timeout
        try:
            try:
                await sock.ws.send_str(proto.request_frame(request_id, method, params))
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
            sock.pending.pop(request_id, None)

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

    async def _ready_socket(self) -> _Socket:
        sock = self._socket
        if sock is not None:
            return sock
        if self._task is None:
            raise GatewayUnavailable("gateway client is not started")
        await self.wait_ready(self._policy.ready_wait_s)
        sock = self._socket
        if sock is None:
            raise self._unavailable()
        return sock

    async def ready_hello(self) -> Hello:
        """The connected gateway's hello (waits briefly for a connection)."""
        return (await self._ready_socket()).hello
