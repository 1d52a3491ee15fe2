"""Every long-lived loop survives one bad item, and says so loudly if it ever ends.

The defect this class comes from: one agent's heartbeat with a lone surrogate in its
status made building the relay's batch raise, the send loop died silently, no agent's
beats reached the hub again while the link still showed connected, and stopping the
sidecar then lost every pending beat. Each test below feeds one loop one item it
cannot handle and shows the next item still goes through; the first shows that every
loop of a running hub and sidecar is started as a long-lived task (whose unexpected
end is logged as `task.loop.ended`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from hub.app import Hub
from missioncontrol.tasks import LOOP_ENDED, long_lived_names
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos.contract import LINK_PROTOCOL
from sidecar.app import Sidecar
from sidecar.commands import CommandApplier, CommandQueue
from sidecar.gateway import (
    AgentEntry,
    GatewayRuntime,
    RunState,
    SessionInfo,
    SessionPage,
    SessionTokens,
)
from sidecar.gateway.openclaw import OpenClawGatewayClient
from sidecar.link.client import LinkClient, LinkStatus
from sidecar.link.heartbeats import HeartbeatRelay
from sidecar.state import LocalState
from sidecar.usage import UsagePolicy
from sidecar.workspace import WorkspaceWriter
from tests.integration.agent_setup import agent_env, last_seen
from tests.support import (
    RecordingGateway,
    api,
    connected_sidecar,
    fast_backoff,
    sidecar_config,
    sidecar_connected,
    wait_for,
)

BAD_TEXT = "\ud800"  # a lone surrogate: valid in a Python str, not in UTF-8 or protobuf


def loop_ends(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == LOOP_ENDED]


# ---------------------------------------------------------------- the inventory


async def test_every_loop_of_a_running_hub_and_sidecar_is_started_long_lived(
    hub: Hub, tmp_path: Path
) -> None:
    assert hub.addresses is not None
    # The real gateway client (its connection loop retries against no gateway here).
    config = sidecar_config(tmp_path / "sc", hub.addresses.link, gateway_id="gw-test")
    sidecar = Sidecar(config, link_backoff=fast_backoff())
    await sidecar.start()
    try:
        await wait_for(lambda: sidecar_connected(hub, "gw-test"), what="sidecar connected")
        expected = {
            "sidecar-link",
            "sidecar-commands",
            "sidecar-heartbeat-send",
            "sidecar-heartbeat-persist",
            "config-watch",
            "gateway-client",
            "reconciler-deadlines",
            "reconciler-presence",
            "webhook-delivery",
            "alert-events",
            "alert-conditions",
            "alert-delivery",
            "link-read",
            "link-outbox",
            "rollout-driver",
            "sidecar-usage",
        }
        # The hub starts a stream's tasks as it registers it: wait for them, bounded.
        await wait_for(lambda: expected <= long_lived_names(), what="every loop started long-lived")
    finally:
        await sidecar.stop()


# ---------------------------------------------------------------- heartbeat relay


async def test_one_beat_the_link_cannot_carry_does_not_stop_the_relay_for_the_host(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub) as env:
        bad, good = env.agents
        with structlog.testing.capture_logs() as logs:
            # As if a check upstream had missed it: the relay must not die of it.
            env.sidecar.relay.record(bad, status=BAD_TEXT)
            env.sidecar.relay.record(good, status="working")
            await wait_for(lambda: _seen(hub, good), what="the other agent's beat relayed")
            env.sidecar.relay.record(bad, status="fine again")
            await wait_for(lambda: _seen(hub, bad), what="the same agent's next beat relayed")
        dropped = [e for e in logs if e["event"] == "heartbeat.beat.dropped"]
        assert [e["agent_id"] for e in dropped] == [bad]
        assert dropped[0]["log_level"] == "error"
        assert not loop_ends(logs)
        assert env.sidecar.link.streams_opened == 1


async def _seen(hub: Hub, agent: str) -> float | None:
    return (await last_seen(hub)).get(agent)


class BrokenLink:
    """A link that takes nothing: every send raises."""

    def __init__(self) -> None:
        self.attempts = 0

    def send(self, message: pb.SidecarMessage) -> None:
        self.attempts += 1
        raise ConnectionError("the link is broken (test)")


async def test_stopping_keeps_every_unacked_beat_whatever_the_loops_went_through(
    tmp_path: Path,
) -> None:
    state = LocalState(tmp_path / "state.sqlite3")
    link = BrokenLink()
    relay = HeartbeatRelay(link.send, state, flush_interval_s=0.05)
    relay.on_link_status(LinkStatus(connected=True, since=time.time()))
    await relay.start()
    try:
        with structlog.testing.capture_logs() as logs:
            relay.record("mc-a", "working", "t-1")
            relay.record("mc-b", BAD_TEXT)  # cannot be sent nor stored
            relay.record("mc-c")
            await wait_for(lambda: link.attempts >= 2, what="the send loop tried twice")
            await relay.stop()
        assert not loop_ends(logs)
        assert {b.agent_id: b.status for b in state.pending_beats()} == {
            "mc-a": "working",
            "mc-c": "",
        }
    finally:
        state.close()


async def test_persisting_while_the_hub_is_away_skips_only_the_beat_it_cannot_store(
    tmp_path: Path,
) -> None:
    state = LocalState(tmp_path / "state.sqlite3")
    relay = HeartbeatRelay(BrokenLink().send, state, persist_interval_s=0.01)
    await relay.start()  # never connected: the persist loop writes what arrives
    try:
        relay.record("mc-b", BAD_TEXT)
        relay.record("mc-a", "working")
        await wait_for(lambda: state.pending_beats(), what="the good beat persisted")
        relay.record("mc-c", "later")
        await wait_for(lambda: len(state.pending_beats()) == 2, what="the loop still persists")
    finally:
        await relay.stop()
        state.close()


# ---------------------------------------------------------------- command queue


@dataclass
class FlakyGateway(RecordingGateway):
    """ensure_agent fails unexpectedly (a bug, not a GatewayError) the first `failures` times."""

    failures: int = 1

    async def ensure_agent(self, entry: AgentEntry) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise KeyError("surprise (test)")
        await super().ensure_agent(entry)


async def test_a_command_that_fails_unexpectedly_is_retried_and_the_queue_goes_on(
    tmp_path: Path,
) -> None:
    state = LocalState(tmp_path / "state.sqlite3")
    gateway = FlakyGateway()
    results: list[pb.CommandResult] = []
    applier = CommandApplier(state, WorkspaceWriter(tmp_path / "ws"), gateway, lambda run: None)
    queue = CommandQueue(applier, results.append, retry_initial_s=0.01, retry_max_s=0.02)
    task = queue.start()
    try:
        with structlog.testing.capture_logs() as logs:
            for sequence, agent in ((1, "mc-a"), (2, "mc-b")):
                queue.submit(
                    pb.Command(
                        sequence=sequence,
                        apply_agent=pb.ApplyAgent(
                            agent_id=agent,
                            generation=1,
                            workspace_path=str(tmp_path / "ws" / f"workspace-{agent}"),
                            files=[pb.WorkspaceFile(name="AGENTS.md", content=b"# a\n")],
                        ),
                    )
                )
            await wait_for(lambda: state.last_applied_sequence == 2, what="both applied")
        first, *rest = results
        assert (first.sequence, first.outcome, first.error_code) == (
            1,
            pb.CommandResult.FAILED,
            "internal_error",
        )
        assert "surprise" in first.error and "retries" in first.error
        assert [(r.sequence, r.outcome) for r in rest] == [
            (1, pb.CommandResult.APPLIED),
            (2, pb.CommandResult.APPLIED),
        ]
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["command.apply.failed"]
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        state.close()


# ---------------------------------------------------------------- link client


async def test_a_hub_message_whose_handler_fails_does_not_end_the_stream(
    hub: Hub, tmp_path: Path
) -> None:
    assert hub.addresses is not None
    acks: list[int] = []

    def on_ack(batch_id: int) -> None:
        acks.append(batch_id)
        if len(acks) == 1:
            raise RuntimeError("handler bug (test)")

    def on_status(status: LinkStatus) -> None:
        raise RuntimeError("listener bug (test)")

    async def hello() -> pb.Hello:
        return pb.Hello(
            gateway_id="gw-loops",
            link_protocol=LINK_PROTOCOL,
            sidecar_version=VERSION,
            hostname="test",
        )

    state = LocalState(tmp_path / "state.sqlite3")
    applier = CommandApplier(state, WorkspaceWriter(tmp_path), RecordingGateway(), print)
    queue = CommandQueue(applier, lambda result: None)
    link = LinkClient(
        str(hub.addresses.link), hello, queue, backoff=fast_backoff(), on_heartbeat_ack=on_ack
    )
    link.on_status(on_status)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(link.run())
        try:
            await wait_for(lambda: link.status.connected, what="connected despite the listener")
            for batch_id in (1, 2):
                link.send(pb.SidecarMessage(heartbeats=pb.HeartbeatBatch(batch_id=batch_id)))
            await wait_for(lambda: acks == [1, 2], what="the ack after the failing one handled")
            assert link.streams_opened == 1 and link.status.connected
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            state.close()
    events = {e["event"] for e in logs if e["log_level"] == "error"}
    assert {"link.message.failed", "link.status_listener.failed"} <= events


# ---------------------------------------------------------------- gateway queries


@dataclass
class HostileGateway(RecordingGateway):
    """Answers status reads with what the link cannot carry."""

    runtime_pid: int = 2**70  # beyond int64
    session_text: str = BAD_TEXT

    async def runtime_status(self) -> GatewayRuntime:
        return GatewayRuntime(sessions_count=1, agents=(), pid=self.runtime_pid, rss_bytes=1)

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        return SessionPage(
            (SessionInfo(key="agent:x:main", agent_id="x", status=self.session_text),), 1
        )


async def test_a_gateway_answer_the_link_cannot_carry_still_gets_the_hub_an_answer(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-hostile", HostileGateway()):
        with structlog.testing.capture_logs() as logs:
            status, read = await api(hub, "GET", "/api/v1/gateway/status?gateway_id=gw-hostile")
        assert status == 200, read
        assert read["error_code"] == "internal_error"
        assert "gateway.query.crashed" in read["error"]
        status, page = await api(hub, "GET", "/api/v1/gateway/sessions?gateway_id=gw-hostile")
        assert status == 502 and "gateway.query.crashed" in page["detail"], page
    assert not loop_ends(logs)


# ---------------------------------------------------------------- usage relay


@dataclass
class FlakyUsageGateway(RecordingGateway):
    """A sessions listing raises once; one agent's figures carry what protobuf cannot."""

    fail_next: bool = False
    bad_agent: str = ""

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a listing nobody expected")
        return await super().list_sessions(agent_id, limit)

    async def session_tokens(self, key: str, day: str) -> SessionTokens | None:
        figures = await super().session_tokens(key, day)
        if figures is not None and self.bad_agent and self.bad_agent in key:
            return dataclasses.replace(figures, session_id=BAD_TEXT)
        return figures


async def test_a_failed_usage_pass_or_figure_the_link_cannot_carry_does_not_stop_the_relay(
    hub: Hub, tmp_path: Path
) -> None:
    gateway = FlakyUsageGateway()
    fast = UsagePolicy(interval_s=0.1, jitter=0.0, after_run_s=0.05, settle_s=0.0, first_pass_s=0.0)
    async with connected_sidecar(hub, tmp_path, "gw-usage-flaky", gateway, usage_policy=fast):
        with structlog.testing.capture_logs() as logs:
            _, board = await api(
                hub, "POST", "/api/v1/boards", {"name": "b", "gateway_id": "gw-usage-flaky"}
            )
            agents = []
            for name in ("odd", "plain"):
                _, agent = await api(
                    hub, "POST", "/api/v1/agents", {"name": name, "board_id": board["id"]}
                )
                agents.append(agent)
            await wait_for(lambda: gateway.count("wake") == 2, what="both agents woken")
            odd, plain = (a["gateway_agent_id"] for a in agents)
            gateway.bad_agent = odd
            gateway.fail_next = True
            await wait_for(lambda: not gateway.fail_next, what="a pass that failed")
            gateway.tokens.update({odd: 70, plain: 30})

            async def both_counted() -> bool:
                _, read = await api(hub, "GET", "/api/v1/usage")
                return bool(read["total"]["total_tokens"] == 100)

            await wait_for(both_counted, what="both agents' tokens counted")
    assert any(e["event"] == "usage.pass.failed" for e in logs)
    assert not loop_ends(logs)


# ---------------------------------------------------------------- gateway connection


@dataclass
class FakeGateway:
    """A WebSocket server that does the gateway's handshake, then sends `frames`.

    A stand-in only because the real gateway cannot be made to send hostile frames."""

    frames: list[str]
    port: int = 0
    token: str = "tok"
    sent: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "event", "event": "connect.challenge"}))
        connect = json.loads((await ws.receive()).data)
        hello = {
            "type": "hello-ok",
            "protocol": 4,
            "server": {"version": "2026.9.6"},
            "features": {"methods": ["health"]},
            "auth": {"scopes": ["operator.admin"]},
            "policy": {"tickIntervalMs": 30000},
        }
        await ws.send_str(
            json.dumps({"type": "res", "id": connect["id"], "ok": True, "payload": hello})
        )
        for frame in self.frames:
            await ws.send_str(frame)
        self.sent.set()
        async for _ in ws:
            pass
        return ws


@pytest.fixture
async def fake_gateway() -> AsyncIterator[FakeGateway]:
    run_end = {
        "type": "event",
        "event": "chat",
        "payload": {
            "runId": "run-2",
            "state": "final",
            "message": {"content": "text with a lone surrogate \ud800 in it"},
        },
    }
    frames = [
        "[" * 100_000 + "]" * 100_000,  # nested beyond what a JSON decoder recurses into
        "{" + '"n": ' + "9" * 5000 + "}",  # a number too long to read
        json.dumps({"type": "event", "event": "chat", "payload": {"runId": "run-1", "state": "x"}}),
        json.dumps(run_end),
    ]
    server = FakeGateway(frames)
    await server.start()
    yield server
    await server.stop()


async def test_frames_the_connection_cannot_read_are_skipped_and_the_next_is_read(
    fake_gateway: FakeGateway, tmp_path: Path
) -> None:
    config = tmp_path / "openclaw.json"
    config.write_text(
        json.dumps({"gateway": {"port": fake_gateway.port, "auth": {"token": fake_gateway.token}}})
    )
    client = OpenClawGatewayClient(config)
    with structlog.testing.capture_logs() as logs:
        await client.start()
        try:
            await wait_for(lambda: fake_gateway.sent.is_set(), what="hostile frames sent")
            outcome = await client.wait_run("run-2", timeout_s=10)
            assert outcome.state is RunState.FINAL
            assert outcome.message.encode()  # carriable: the surrogate became U+FFFD
            assert "\ufffd" in outcome.message
            assert client.info.reachable
        finally:
            await client.stop()
    invalid = [e for e in logs if e["event"] == "gateway.frame.invalid"]
    assert len(invalid) == 2
    assert not loop_ends(logs)


# ---------------------------------------------------------------- hub link server


async def test_a_dead_outbox_pump_ends_the_stream_so_commands_resume_on_reconnect(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = hub.store.commands_after
    failures = [1]

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("database hiccup (test)")
        return await real(*args, **kwargs)

    async with connected_sidecar(hub, tmp_path, "gw-pump") as (sidecar, _):
        monkeypatch.setattr(hub.store, "commands_after", fails_once)
        with structlog.testing.capture_logs() as logs:
            session = hub.registry.get("gw-pump")
            assert session is not None
            session.outbox_changed.set()  # the pump reads the outbox again, and fails
            await wait_for(lambda: sidecar.link.streams_opened >= 2, what="reconnected")
            sequence = await hub.store.enqueue_command(
                "gw-pump",
                pb.Command(set_heartbeat=pb.SetHeartbeat(agent_id="mc-x", generation=1)),
            )
            await wait_for(
                lambda: sidecar.state.last_applied_sequence >= sequence, what="command applied"
            )
        [ended] = loop_ends(logs)
        assert (ended["task"], ended["how"]) == ("link-outbox", "raised")
