"""Helpers shared by the tests: config builders, bounded waiting, a recording gateway,
sidecars linked to a test hub."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hub.config import HubConfig
from hub.webhooks.rules import signature_valid
from missioncontrol.netaddr import HostPort
from protos.contract import GatewayErrorKind, GatewayGeneration
from sidecar.agent_api import AgentApiLimits
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from sidecar.gateway import (
    AgentEntry,
    AgentRuntime,
    GatewayError,
    GatewayInfo,
    GatewayRuntime,
    GatewayUnavailable,
    HeartbeatSpec,
    ProviderAuth,
    RunOutcome,
    RunState,
    RuntimeEvent,
    SessionInfo,
    SessionPage,
    SessionTokens,
)
from sidecar.link.backoff import Backoff
from sidecar.usage import UsagePolicy, utc_day

ADMIN_TOKEN = "test-admin-token-" + "x" * 48


def hub_config(
    data_dir: Path, *, link_port: int = 0, http_port: int = 0, database: str = ""
) -> HubConfig:
    """`database`: a --database URL ("" the SQLite file in `data_dir`)."""
    return HubConfig(
        database=database,
        data_dir=data_dir,
        http_listen=HostPort("127.0.0.1", http_port),
        link_listen=HostPort("127.0.0.1", link_port),
        insecure_dev=True,
        commit_interval_s=0.02,
        shutdown_grace_s=1.0,
        log_level="warning",
        log_format="json",
        admin_token=ADMIN_TOKEN,
        enroll_listen=HostPort("127.0.0.1", 0),
    )


@asynccontextmanager
async def running_hub(data_dir: Path, database: str = "", **options: Any) -> AsyncIterator[Hub]:
    """A real hub on loopback (see hub_config), started and stopped around the block."""
    from hub.app import Hub

    hub = Hub(hub_config(data_dir, database=database), **options)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


def sidecar_config(
    state_dir: Path,
    hub: HostPort,
    *,
    gateway_id: str | None = None,
    workspace_root: Path | None = None,
) -> SidecarConfig:
    return SidecarConfig(
        hub=hub,
        state_dir=state_dir,
        openclaw_config=state_dir / "openclaw" / "openclaw.json",
        workspace_root=workspace_root or state_dir / "workspaces",
        agent_api_listen=HostPort("127.0.0.1", 0),
        gateway_id=gateway_id,
        insecure_dev=True,
        restore_removed_entries=True,
        log_level="warning",
        log_format="json",
    )


class JumpClock:
    """Real time that a test can move forward at once: the hub's injected clock, so a
    test skips ahead to a deadline instead of sleeping until it."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


async def wait_for(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


@dataclass
class RecordingGateway:
    """An in-memory GatewayClient that records calls, for tests of the sidecar's own logic.

    Like the real gateway, a wake with a known idempotency key returns the same run
    and starts nothing new. Tests against the real gateway live in tests/interop/.
    """

    reachable: bool = True
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)
    run_outcome: RunState = RunState.FINAL
    run_message: str = ""
    run_turn: bool = True  # a FINAL run had a model turn (a runtime check-in)
    runs_end: bool = True  # False: runs never end (a silent agent), as far as tests wait
    refuse_removal: str = ""  # set: remove_agent is refused for good with this message
    query_delay_s: float = 0.0  # how long status and session reads take
    # Raised by the next wakes, one each (what the gateway answered: a busy gateway).
    wake_refusals: list[GatewayError] = field(default_factory=list)
    # Set: agents are ensured and removed only once it is set (an apply under way).
    hold: asyncio.Event | None = None
    # Tokens each agent's main session used today, as sessions.usage counts them; tests
    # raise them (a raise also moves the session's updatedAt, as a run does).
    tokens: dict[str, int] = field(default_factory=dict)
    session_ids: dict[str, str] = field(default_factory=dict)  # a reset: a new id
    tokens_day: str | None = None  # the UTC day `tokens` count (None: today)
    # Agents whose heartbeat job the gateway does not run (removed by hand); a
    # set_heartbeat with a cadence puts it back, as config.patch does.
    heartbeat_off: set[str] = field(default_factory=set)
    provider_auth: list[ProviderAuth] | None = None  # None: no models.authStatus
    _listeners: list[Callable[[GatewayInfo], None]] = field(default_factory=list)
    _runtime_listeners: list[Callable[[RuntimeEvent], None]] = field(default_factory=list)

    @property
    def info(self) -> GatewayInfo:
        if not self.reachable:
            return GatewayInfo(reachable=False, unreachable_reason="gateway is down (test)")
        return GatewayInfo(
            reachable=True, version="2026.9.6", protocol=4, generation=GatewayGeneration.CURRENT
        )

    def on_info_change(self, callback: Callable[[GatewayInfo], None]) -> None:
        self._listeners.append(callback)

    def on_runtime_event(self, callback: Callable[[RuntimeEvent], None]) -> None:
        self._runtime_listeners.append(callback)

    def emit(self, event: RuntimeEvent) -> None:
        """What the gateway would broadcast: a run's end, a heartbeat job's change."""
        for listener in self._runtime_listeners:
            listener(event)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def set_reachable(self, reachable: bool) -> None:
        self.reachable = reachable
        for listener in self._listeners:
            listener(self.info)

    def _check(self) -> None:
        if not self.reachable:
            raise GatewayUnavailable("gateway is down (test)")

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)

    async def ensure_agent(self, entry: AgentEntry) -> None:
        self._check()
        self.calls.append(("ensure_agent", entry.agent_id, str(entry.workspace)))
        if self.hold is not None:
            await self.hold.wait()

    async def remove_agent(self, agent_id: str, *, delete_files: bool) -> None:
        self._check()
        self.calls.append(("remove_agent", agent_id, delete_files))
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse_removal:
            raise GatewayError(self.refuse_removal, kind=GatewayErrorKind.PERMANENT)

    async def set_heartbeat(self, agent_id: str, heartbeat: HeartbeatSpec) -> None:
        self._check()
        self.calls.append(("set_heartbeat", agent_id, heartbeat.every_s))
        if heartbeat.every_s:
            self.heartbeat_off.discard(agent_id)

    async def wake(self, agent_id: str, message: str, idempotency_key: str) -> str:
        self._check()
        self.calls.append(("wake", agent_id, idempotency_key))
        if self.wake_refusals:
            raise self.wake_refusals.pop(0)
        if idempotency_key not in self.runs:
            self.runs[idempotency_key] = str(uuid.uuid4())
        return self.runs[idempotency_key]

    async def wait_run(self, run_id: str, timeout_s: float) -> RunOutcome:
        if not self.runs_end:
            await asyncio.Event().wait()  # until the sidecar stops its run watchers
        await asyncio.sleep(0.01)
        turn = self.run_turn and self.run_outcome is RunState.FINAL
        return RunOutcome(run_id, self.run_outcome, self.run_message, model_turn=turn)

    async def reset_session(self, agent_id: str) -> None:
        self._check()
        self.calls.append(("reset_session", agent_id))

    def _sessions(self) -> list[SessionInfo]:
        # Like the gateway: a woken agent has a main session, newest first.
        woken: dict[str, int] = {}
        for index, call in enumerate(self.calls):
            if call[0] == "wake":
                woken[call[1]] = index
        return [
            SessionInfo(
                key=f"agent:{agent_id}:main",
                agent_id=agent_id,
                kind="direct",
                is_main=True,
                status="failed" if self.run_outcome is RunState.ERROR else "done",
                updated_at_ms=1_795_000_000_000 + index + self.tokens.get(agent_id, 0),
                last_run_error=self.run_message,
                model="scripted/test",
                total_tokens=self.tokens.get(agent_id, 0),
            )
            for agent_id, index in sorted(woken.items(), key=lambda kv: -kv[1])
        ]

    async def runtime_status(self) -> GatewayRuntime:
        self._check()
        await asyncio.sleep(self.query_delay_s)
        ensured = dict.fromkeys(c[1] for c in self.calls if c[0] == "ensure_agent")
        every = {c[1]: c[2] for c in self.calls if c[0] == "set_heartbeat"}
        return GatewayRuntime(
            sessions_count=len(self._sessions()),
            agents=tuple(
                AgentRuntime(a, True, every.get(a) or 600)
                if a not in self.heartbeat_off
                else AgentRuntime(a, False, 0)
                for a in ensured
            ),
            pid=4242,
            rss_bytes=64 << 20,
        )

    async def model_auth(self) -> list[ProviderAuth] | None:
        self._check()
        return self.provider_auth

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        self._check()
        await asyncio.sleep(self.query_delay_s)
        every = [s for s in self._sessions() if not agent_id or s.agent_id == agent_id]
        return SessionPage(tuple(every[:limit]), len(every))

    async def session_tokens(self, key: str, day: str) -> SessionTokens | None:
        self._check()
        agent_id = key.split(":")[1] if key.count(":") >= 2 else ""
        if agent_id not in self.tokens or day != (self.tokens_day or utc_day(time.time())):
            return None
        total = self.tokens[agent_id]
        session_id = self.session_ids.get(agent_id, f"session-{agent_id}")
        return SessionTokens(key, session_id, day, total, input=total * 5 // 6, output=total // 6)


def fast_backoff() -> Backoff:
    """Link reconnect pacing for tests: a dropped sidecar is back within a fraction of a second."""
    return Backoff(initial_s=0.05, max_s=0.3)


def make_sidecar(
    tmp_path: Path,
    hub: Hub,
    gateway: RecordingGateway | None = None,
    *,
    gateway_id: str = "gw-test",
    name: str = "sidecar",
    workspaces: str = "workspaces",
    limits: AgentApiLimits | None = None,
    follows_hub: bool = False,
    agent_api_listen: HostPort | None = None,
    usage_policy: UsagePolicy | None = None,
) -> Sidecar:
    """A sidecar (not started) for `hub`: state in tmp_path/name, workspaces in
    tmp_path/workspaces, an in-memory gateway unless one is given. `follows_hub`: started
    without --workspace-root, it writes under the root the hub declares instead.
    `agent_api_listen`: a fixed agent-API address (a restarted sidecar keeps its own,
    so the hub has no reason to render its agents' files again)."""
    assert hub.addresses is not None
    config = sidecar_config(
        tmp_path / name,
        hub.addresses.link,
        gateway_id=gateway_id,
        workspace_root=tmp_path / workspaces,
    )
    config = dataclasses.replace(config, follows_hub_workspace_root=follows_hub)
    if agent_api_listen is not None:
        config = dataclasses.replace(config, agent_api_listen=agent_api_listen)
    return Sidecar(
        config,
        gateway=gateway or RecordingGateway(),
        link_backoff=fast_backoff(),
        agent_api_limits=limits,
        usage_policy=usage_policy,
    )


async def sidecar_connected(hub: Hub, gateway_id: str) -> bool:
    """The hub holds the gateway's stream and knows its workspace root (from the Hello)."""
    row = await hub.store.get_gateway(gateway_id)
    return bool(row and row.workspace_root and hub.registry.get(gateway_id))


@asynccontextmanager
async def connected_sidecar(
    hub: Hub,
    tmp_path: Path,
    gateway_id: str,
    gateway: RecordingGateway | None = None,
    *,
    workspaces: str = "ws",
    usage_policy: UsagePolicy | None = None,
) -> AsyncIterator[tuple[Sidecar, RecordingGateway]]:
    """A started sidecar connected to `hub` over the link, stopped on exit."""
    gateway = gateway or RecordingGateway()
    sidecar = make_sidecar(
        tmp_path,
        hub,
        gateway,
        gateway_id=gateway_id,
        name="sc",
        workspaces=workspaces,
        usage_policy=usage_policy,
    )
    await sidecar.start()
    try:
        await wait_for(
            lambda: sidecar_connected(hub, gateway_id),
            what="sidecar connected with its workspace root",
        )
        yield sidecar, gateway
    finally:
        await sidecar.stop()


if TYPE_CHECKING:
    from hub.app import Hub


async def api(hub: Hub, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One admin REST call to a test hub: (status, JSON body)."""
    import aiohttp

    assert hub.addresses is not None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(
            method,
            f"http://{hub.addresses.http}{path}",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response,
    ):
        return response.status, await response.json()


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: Any


class SseListener:
    """Reads a server-sent event stream of a test hub in the background: `events` fills as
    they arrive. `async with SseListener(hub, path, headers) as sse: ...`."""

    def __init__(self, hub: Hub, path: str, headers: dict[str, str] | None = None) -> None:
        assert hub.addresses is not None
        self.url = f"http://{hub.addresses.http}{path}"
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **(headers or {})}
        self.events: list[SseEvent] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SseListener:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._read())
        await wait_for(lambda: self.status is not None, what=f"stream {self.url} answered")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._session.close()

    async def _read(self) -> None:
        async with self._session.get(self.url, headers=self.headers) as response:
            self.status = response.status
            fields: dict[str, str] = {}
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in fields:
                        self.events.append(
                            SseEvent(
                                fields.get("id"), fields.get("event"), json.loads(fields["data"])
                            )
                        )
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")

    async def wait(self, predicate: Callable[[SseEvent], bool], what: str) -> SseEvent:
        """The first event (received or to come) that `predicate` accepts."""
        return await wait_for(
            lambda: next((e for e in self.events if predicate(e)), None), what=what
        )


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free now (all bound at once, then released)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def demo_command(state_dir: Path, cache_dir: Path, *extra: str) -> tuple[list[str], str]:
    """`mc-hub demo` on free ports with this state and cache, and its API's URL."""
    import sys

    http, link, enroll = free_ports(3)
    argv = [
        sys.executable, "-m", "hub.cli", "demo",
        "--state-dir", str(state_dir), "--openclaw-cache", str(cache_dir),
        "--http-listen", f"127.0.0.1:{http}", "--link-listen", f"127.0.0.1:{link}",
        "--enroll-listen", f"127.0.0.1:{enroll}",
        *extra,
    ]  # fmt: skip
    return argv, f"http://127.0.0.1:{http}"


@dataclass
class WebhookReceiver:
    """An outbound-webhook receiver on loopback (alerts): answers `statuses` in turn (then
    200), records every request, and checks each signature with `secret`."""

    secret: str
    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    other_hits: int = 0  # requests to /elsewhere, where its redirects point
    url: str = ""

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(
            {
                "body": json.loads(body),
                "signed": signature_valid(
                    self.secret.encode(), body, request.headers.get("X-Hub-Signature-256")
                ),
                "alert_id": request.headers.get("X-MC-Alert-Id"),
                "attempt": request.headers.get("X-MC-Alert-Attempt"),
            }
        )
        status = self.statuses.pop(0) if self.statuses else 200
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status, text=f"answered {status}")

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.other_hits += 1
        return web.Response(text="followed")

    def bodies(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r["body"] for r in self.received if kind is None or r["body"]["kind"] == kind]


@asynccontextmanager
async def webhook_receiver(secret: str) -> AsyncIterator[WebhookReceiver]:
    """A WebhookReceiver serving POST /hook on a loopback port, stopped on exit."""
    found = WebhookReceiver(secret)
    app = web.Application()
    app.router.add_post("/hook", found.hook)
    app.router.add_route("*", "/elsewhere", found.elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield found
    finally:
        await runner.cleanup()


# End-of-run sections (`make test` prints them): section title -> lines, in the order
# added. Under pytest-xdist each worker's lines reach the controller (tests/conftest.py).
SUMMARY: dict[str, list[str]] = {}


def add_summary(section: str, text: str) -> None:
    """Print `text` (one or more lines) under `section` at the end of the run."""
    SUMMARY.setdefault(section, []).extend(text.splitlines())
