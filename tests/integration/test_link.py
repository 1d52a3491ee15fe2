"""The hub <-> sidecar link end to end: real gRPC, real SQLite, real files, loopback only."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from hub.app import Hub
from missioncontrol.netaddr import HostPort
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc
from protos.contract import LINK_PROTOCOL
from sidecar.app import Sidecar
from sidecar.link.backoff import Backoff
from tests.support import (
    ADMIN_TOKEN,
    RecordingGateway,
    api,
    hub_config,
    make_sidecar,
    running_hub,
    sidecar_config,
    wait_for,
)

AGENT = "mc-11111111-2222-3333-4444-555555555555"


def apply_command(
    workspace_root: Path,
    *,
    generation: int = 1,
    wake: bool = True,
    files: list[pb.WorkspaceFile] | None = None,
    workspace: str | None = None,
) -> pb.Command:
    return pb.Command(
        apply_agent=pb.ApplyAgent(
            agent_id=AGENT,
            generation=generation,
            display_name="Worker One",
            workspace_path=workspace or str(workspace_root / f"workspace-{AGENT}"),
            files=files
            if files is not None
            else [
                pb.WorkspaceFile(name="AGENTS.md", content=f"# Agents g{generation}\n".encode()),
                pb.WorkspaceFile(name="USER.md", content=b"# User\n", preserve_if_present=True),
                pb.WorkspaceFile(name=".mc-agent-token", content=b"tok.secret", secret=True),
            ],
            heartbeat=pb.HeartbeatSettings(every_s=600),
            wake_message="Your workspace is ready. Check in." if wake else "",
        )
    )


@pytest.fixture
async def http(hub: Hub) -> AsyncIterator[Callable[..., Any]]:
    assert hub.addresses is not None
    base = f"http://{hub.addresses.http}"
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as s:

        async def get(path: str) -> tuple[int, Any]:
            async with s.get(base + path) as response:
                return response.status, await response.json()

        yield get


async def gateway_listing(http: Callable[..., Any], gateway_id: str) -> dict[str, Any] | None:
    status, body = await http("/api/v1/gateways")
    assert status == 200
    return next((g for g in body["items"] if g["id"] == gateway_id), None)


async def acked(hub: Hub, gateway_id: str, sequence: int) -> dict[str, Any] | None:
    row = await hub.store.command_status(gateway_id, sequence)
    return row if row and row["acked_at"] else None


async def test_sidecar_connects_and_hub_lists_it_with_versions(
    hub: Hub, http: Callable[..., Any], tmp_path: Path
) -> None:
    sidecar = make_sidecar(tmp_path, hub, RecordingGateway())
    await sidecar.start()
    try:
        listed = await wait_for(
            lambda: _connected(http, "gw-test", True), what="gateway listed as connected"
        )
        assert listed["sidecar_version"] == VERSION
        assert listed["openclaw_version"] == "2026.9.6"
        assert listed["openclaw_protocol"] == 4
        assert listed["gateway_generation"] == "current"
        assert listed["workspace_root"] == str(tmp_path / "workspaces")
        assert listed["last_seen_at"].endswith("Z")
    finally:
        await sidecar.stop()
    gone = await wait_for(
        lambda: _connected(http, "gw-test", False),
        timeout_s=15,
        what="gateway listed as disconnected",
    )
    assert gone["disconnected_at"] is not None


async def test_sidecar_stops_promptly_at_any_point_of_the_handshake(
    hub: Hub, tmp_path: Path
) -> None:
    """A stop that lands while the Welcome arrives still ends the link.

    Python 3.11's asyncio.wait_for returned the result instead of raising when the
    cancellation and the result met in one loop step, leaving the link running after stop.
    """
    for step in range(16):
        sidecar = make_sidecar(tmp_path, hub, RecordingGateway())
        await sidecar.start()
        if step == 0:
            await wait_for(lambda: hub.registry.get("gw-test"), what="session registered")
        else:
            await asyncio.sleep(step * 0.003)
        async with asyncio.timeout(5):
            await sidecar.stop()
        await wait_for(
            lambda: hub.registry.get("gw-test") is None,
            timeout_s=5,
            what=f"link ended after stop at step {step}",
        )


async def _connected(http: Callable[..., Any], gateway_id: str, expected: bool) -> Any:
    listed = await gateway_listing(http, gateway_id)
    return listed if listed is not None and listed["connected"] is expected else None


async def test_frozen_sidecar_is_noticed_within_the_keepalive_window(
    hub: Hub, http: Callable[..., Any], tmp_path: Path
) -> None:
    """A sidecar that stops answering (SIGSTOP: socket open, nothing read) is dropped."""
    assert hub.addresses is not None
    log_path = tmp_path / "sidecar.log"
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "run",
        "--hub",
        str(hub.addresses.link),
        "--insecure-dev",
        "--state-dir",
        str(tmp_path / "frozen"),
        "--gateway-id",
        "gw-frozen",
        "--openclaw-config",
        str(tmp_path / "oc" / "openclaw.json"),
        "--agent-api-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",  # its default port is every sidecar's: tests run side by side
        "--log-format",
        "json",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
    )

    async def connected() -> Any:
        if process.returncode is not None:
            raise AssertionError(
                f"the sidecar exited ({process.returncode}): {log_path.read_text()[-4000:]}"
            )
        return await _connected(http, "gw-frozen", True)

    try:
        await wait_for(connected, timeout_s=20, what="subprocess sidecar connected")
        os.kill(process.pid, signal.SIGSTOP)
        await wait_for(
            lambda: _connected(http, "gw-frozen", False),
            timeout_s=20,
            interval_s=0.2,
            what="frozen sidecar marked disconnected",
        )
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        log_file.close()


async def test_command_queued_while_sidecar_offline_is_applied_once_after_it_connects(
    hub: Hub, tmp_path: Path
) -> None:
    await hub.store.create_gateway("gw-test", "test gateway")
    sequence = await hub.store.enqueue_command("gw-test", apply_command(tmp_path / "workspaces"))
    gateway = RecordingGateway()
    sidecar = make_sidecar(tmp_path, hub, gateway)
    await sidecar.start()
    try:
        row = await wait_for(lambda: acked(hub, "gw-test", sequence), what="command acked")
        assert row["outcome"] == "APPLIED"
        assert row["run_id"] == next(iter(gateway.runs.values()))
        workspace = tmp_path / "workspaces" / f"workspace-{AGENT}"
        assert (workspace / "AGENTS.md").read_text() == "# Agents g1\n"
        assert (workspace / ".mc-agent-token").stat().st_mode & 0o777 == 0o600
        assert workspace.stat().st_mode & 0o777 == 0o700
        assert [c[0] for c in gateway.calls] == ["ensure_agent", "set_heartbeat", "wake"]
        events = await wait_for(
            lambda: hub.store.events("gw-test", "agent.run.observed"), what="run outcome reported"
        )
        assert events[0]["detail"]["outcome"] == "FINAL"
    finally:
        await sidecar.stop()


async def test_hub_restart_mid_stream_applies_each_command_exactly_once(
    tmp_path: Path, free_port: Callable[[], int], database: str
) -> None:
    config = hub_config(
        tmp_path / "hub", link_port=free_port(), http_port=free_port(), database=database
    )
    hub = Hub(config)
    await hub.start()
    gateway = RecordingGateway()
    sidecar = make_sidecar(tmp_path, hub, gateway)
    await sidecar.start()
    try:
        await wait_for(lambda: hub.registry.get("gw-test"), what="sidecar connected")
        first = await hub.store.enqueue_command("gw-test", apply_command(tmp_path / "workspaces"))
        await wait_for(lambda: acked(hub, "gw-test", first), what="first command acked")
        await hub.stop()

        hub = Hub(config)  # same database, same ports
        await hub.start()
        second = await hub.store.enqueue_command(
            "gw-test", apply_command(tmp_path / "workspaces", generation=2)
        )
        row = await wait_for(
            lambda: acked(hub, "gw-test", second),
            timeout_s=15,
            what="second command acked after the hub restart",
        )
        assert row["outcome"] == "APPLIED"
        assert gateway.count("ensure_agent") == 2  # one per command, no replays
        assert gateway.count("wake") == 2
        assert len(gateway.runs) == 2
        workspace = tmp_path / "workspaces" / f"workspace-{AGENT}"
        assert (workspace / "AGENTS.md").read_text() == "# Agents g2\n"
        assert sidecar.link.streams_opened == 2
    finally:
        await sidecar.stop()
        await hub.stop()


async def test_sidecar_restart_after_apply_but_before_ack_applies_once(
    hub: Hub, tmp_path: Path
) -> None:
    await hub.store.create_gateway("gw-test", "test gateway")
    gateway = RecordingGateway()
    first = make_sidecar(tmp_path, hub, gateway)
    # The result never reaches the hub: as if the process died right after applying.
    first.link.send = lambda message: None  # type: ignore[method-assign]
    await first.start()
    sequence = await hub.store.enqueue_command("gw-test", apply_command(tmp_path / "workspaces"))
    await wait_for(lambda: first.state.last_applied_sequence == sequence, what="applied")
    await first.stop()
    assert (await hub.store.command_status("gw-test", sequence))["acked_at"] is None
    workspace = tmp_path / "workspaces" / f"workspace-{AGENT}"
    before = {p.name: p.read_bytes() for p in workspace.iterdir()}

    second = make_sidecar(tmp_path, hub, gateway)
    await second.start()
    try:
        row = await wait_for(lambda: acked(hub, "gw-test", sequence), what="confirmed by Hello")
        assert row["outcome"] == "CONFIRMED_BY_HELLO"
        # Commands are delivered and applied in order: once a later one is acked, a wrong
        # replay of the first would already have happened.
        later = await hub.store.enqueue_command(
            "gw-test", pb.Command(set_credentials=pb.SetAgentCredentials(agent_id=AGENT))
        )
        await wait_for(lambda: acked(hub, "gw-test", later), what="a later command acked")
        assert gateway.count("ensure_agent") == 1
        assert gateway.count("wake") == 1
        assert {p.name: p.read_bytes() for p in workspace.iterdir()} == before
    finally:
        await second.stop()


async def test_sidecar_crash_before_recording_apply_replays_without_second_run(
    hub: Hub, tmp_path: Path
) -> None:
    """Applied, then died before persisting: the hub replays; the wake key dedupes the run."""
    await hub.store.create_gateway("gw-test", "test gateway")
    gateway = RecordingGateway()
    first = make_sidecar(tmp_path, hub, gateway)
    first.link.send = lambda message: None  # type: ignore[method-assign]
    first.state.record_applied = lambda *a, **k: None  # type: ignore[method-assign]
    await first.start()
    sequence = await hub.store.enqueue_command("gw-test", apply_command(tmp_path / "workspaces"))
    await wait_for(lambda: gateway.count("wake") == 1, what="first apply reached the wake")
    await first.stop()

    second = make_sidecar(tmp_path, hub, gateway)
    await second.start()
    try:
        row = await wait_for(lambda: acked(hub, "gw-test", sequence), what="replayed and acked")
        assert row["outcome"] == "APPLIED"
        assert gateway.count("wake") == 2  # the replay asked again ...
        assert len(gateway.runs) == 1  # ... with the same key: one run on the gateway
        workspace = tmp_path / "workspaces" / f"workspace-{AGENT}"
        assert sorted(p.name for p in workspace.iterdir()) == [
            ".mc-agent-token",
            "AGENTS.md",
            "USER.md",
        ]
    finally:
        await second.stop()


async def test_path_traversal_file_name_is_rejected_and_nothing_is_written(
    hub: Hub, tmp_path: Path
) -> None:
    await hub.store.create_gateway("gw-test", "test gateway")
    gateway = RecordingGateway()
    sidecar = make_sidecar(tmp_path, hub, gateway)
    await sidecar.start()
    root = tmp_path / "workspaces"
    try:
        evil = await hub.store.enqueue_command(
            "gw-test",
            apply_command(
                root,
                files=[
                    pb.WorkspaceFile(name="AGENTS.md", content=b"fine"),
                    pb.WorkspaceFile(name="../../escape.md", content=b"pwned"),
                ],
            ),
        )
        row = await wait_for(lambda: acked(hub, "gw-test", evil), what="traversal refused")
        assert row["outcome"] == "REJECTED"
        assert row["error_code"] == "invalid_file_name"
        assert "../../escape.md" in row["error"]
        outside = await hub.store.enqueue_command(
            "gw-test", apply_command(root, workspace=str(tmp_path / "elsewhere"))
        )
        row = await wait_for(lambda: acked(hub, "gw-test", outside), what="outside root refused")
        assert row["error_code"] == "path_outside_workspace_root"
        assert list(root.iterdir()) == []
        assert not (tmp_path / "escape.md").exists() and not (tmp_path / "elsewhere").exists()
        assert gateway.calls == []
        # The stream survived: the next valid command is applied.
        good = await hub.store.enqueue_command("gw-test", apply_command(root))
        row = await wait_for(lambda: acked(hub, "gw-test", good), what="valid command applied")
        assert row["outcome"] == "APPLIED"
        assert sidecar.link.streams_opened == 1
    finally:
        await sidecar.stop()


async def _raw_stream(hub: Hub) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:
    assert hub.addresses is not None
    channel = grpc.aio.insecure_channel(str(hub.addresses.link))
    return channel, pb_grpc.LinkStub(channel).Connect()


async def _refusal(call: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode, str]:
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return await call.code(), await call.details()


def _hello(**overrides: Any) -> pb.Hello:
    fields: dict[str, Any] = {
        "gateway_id": "gw-raw",
        "link_protocol": LINK_PROTOCOL,
        "sidecar_version": VERSION,
    }
    fields.update(overrides)
    return pb.Hello(**fields)


@pytest.mark.parametrize(
    ("hello", "code", "phrase"),
    [
        (_hello(link_protocol=99), grpc.StatusCode.FAILED_PRECONDITION, "link protocol 99"),
        (_hello(sidecar_version="0.9.0"), grpc.StatusCode.FAILED_PRECONDITION, "newer than hub"),
        (_hello(gateway_id="../etc"), grpc.StatusCode.INVALID_ARGUMENT, "gateway id"),
    ],
)
async def test_bad_hello_is_refused_with_a_clear_error_and_nothing_recorded(
    hub: Hub, hello: pb.Hello, code: grpc.StatusCode, phrase: str
) -> None:
    channel, call = await _raw_stream(hub)
    async with channel:
        await call.write(pb.SidecarMessage(hello=hello))
        got_code, details = await _refusal(call)
    assert got_code == code
    assert phrase in details
    _, total = await hub.store.list_gateways()
    assert total == 0


async def test_first_message_must_be_hello(hub: Hub) -> None:
    channel, call = await _raw_stream(hub)
    async with channel:
        await call.write(pb.SidecarMessage(heartbeats=pb.HeartbeatBatch(batch_id=1)))
        code, details = await _refusal(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be a Hello" in details


async def test_oversized_message_is_refused_and_other_streams_survive(
    hub: Hub, http: Callable[..., Any], tmp_path: Path
) -> None:
    sidecar = make_sidecar(tmp_path, hub, RecordingGateway())
    await sidecar.start()
    try:
        await wait_for(lambda: hub.registry.get("gw-test"), what="good sidecar connected")
        channel, call = await _raw_stream(hub)
        async with channel:
            await call.write(pb.SidecarMessage(hello=_hello()))
            assert (await call.read()).WhichOneof("body") == "welcome"
            huge = pb.GatewayState(config_error="x" * (5 * 1024 * 1024))
            await call.write(pb.SidecarMessage(gateway_state=huge))
            code, details = await _refusal(call)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in details.lower() or "too large" in details.lower()
        raw = await hub.store.get_gateway("gw-raw")
        assert raw is not None and raw.config_error is None  # nothing of it was written
        assert hub.registry.get("gw-test") is not None
        assert sidecar.link.streams_opened == 1
        status, _ = await http("/readyz")
        assert status == 200
    finally:
        await sidecar.stop()


async def test_hub_refuses_to_queue_a_command_larger_than_the_link_carries(hub: Hub) -> None:
    from hub.store.outbox import CommandTooLarge

    await hub.store.create_gateway("gw-test", "test gateway")
    huge = pb.Command(
        apply_agent=pb.ApplyAgent(
            agent_id=AGENT,
            files=[pb.WorkspaceFile(name="AGENTS.md", content=b"x" * (4 * 1024 * 1024))],
        )
    )
    with pytest.raises(CommandTooLarge, match="at most"):
        await hub.store.enqueue_command("gw-test", huge)
    assert await hub.store.commands_after("gw-test", 0) == []


async def test_readyz_reports_503_while_the_database_cannot_be_written(
    hub: Hub, http: Callable[..., Any]
) -> None:
    import sqlite3

    import psycopg

    status, body = await http("/readyz")
    assert (status, body["ready"]) == (200, True)
    blocker: Any
    if hub.config.on_sqlite:
        blocker = sqlite3.connect(hub.config.database_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
    else:  # another session holding the lock every write needs
        blocker = psycopg.connect(hub.config.database_url, autocommit=True)
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE schema_version IN ACCESS EXCLUSIVE MODE")
    try:
        status, body = await http("/readyz")
        assert status == 503
        assert body["ready"] is False
        assert body["failing"][0]["check"] == "database"
        assert "lock" in body["failing"][0]["detail"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    status, body = await http("/readyz")
    assert status == 200


async def test_gateway_api_requires_the_admin_token(hub: Hub) -> None:
    assert hub.addresses is not None
    url = f"http://{hub.addresses.http}/api/v1/gateways"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            async with session.get(url, headers=headers) as response:
                body = await response.json()
                assert response.status == 401
                assert body["request_id"] == response.headers["X-Request-Id"]
                assert "admin token" in body["detail"]


def test_link_address_is_loopback_in_tests(tmp_path: Path) -> None:
    assert HostPort.parse(str(hub_config(tmp_path).link_listen)).is_loopback


async def test_frozen_hub_is_noticed_by_the_sidecar_within_the_keepalive_window(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    link_port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        "serve",
        "--data-dir",
        str(tmp_path / "hub"),
        "--insecure-dev",
        "--link-listen",
        f"127.0.0.1:{link_port}",
        "--http-listen",
        f"127.0.0.1:{free_port()}",
        "--log-format",
        "json",
        env={**os.environ, "MC_ADMIN_TOKEN": ADMIN_TOKEN},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    config = sidecar_config(tmp_path / "sc", HostPort("127.0.0.1", link_port), gateway_id="gw-test")
    sidecar = Sidecar(
        config, gateway=RecordingGateway(), link_backoff=Backoff(initial_s=0.1, max_s=0.5)
    )
    await sidecar.start()
    try:
        await wait_for(lambda: sidecar.link.status.connected, timeout_s=20, what="connected")
        os.kill(process.pid, signal.SIGSTOP)
        await wait_for(
            lambda: not sidecar.link.status.connected,
            timeout_s=20,
            interval_s=0.1,
            what="sidecar noticed the frozen hub",
        )
        os.kill(process.pid, signal.SIGCONT)
        await wait_for(lambda: sidecar.link.status.connected, timeout_s=20, what="reconnected")
    finally:
        await sidecar.stop()
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def test_gateway_state_with_drift_is_recorded(hub: Hub) -> None:
    await hub.store.create_gateway("gw-drift", "drift")
    state = pb.GatewayState(
        reachable=True,
        openclaw_version="2026.9.6",
        config_valid=True,
        drift=[pb.Drift(agent_id=AGENT, kind=pb.Drift.REMOVED, detail="entry removed by hand")],
    )
    await hub.store.record_gateway_state("gw-drift", state)
    events = await hub.store.events("gw-drift", "gateway.drift")
    assert [(e["agent_id"], e["detail"]["drift"]) for e in events] == [(AGENT, "REMOVED")]
    row = await hub.store.get_gateway("gw-drift")
    assert row is not None and row.openclaw_version == "2026.9.6" and row.reachable is True


async def test_a_second_hub_cannot_share_the_link_port(tmp_path: Path) -> None:
    from hub.app import HubStartError

    async with running_hub(tmp_path / "first") as first:
        assert first.addresses is not None
        config = dataclasses.replace(
            hub_config(tmp_path / "second"), link_listen=first.addresses.link
        )
        second = Hub(config)
        with pytest.raises(HubStartError, match=r"--link-listen.*choose another address"):
            await second.start()
        assert second.addresses is None


async def test_the_welcome_goes_out_before_the_hubs_link_up_work_and_the_stream_serves_after(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's part of a new link (the lifecycle step, a re-render) can wait behind a
    reconnect storm's group commits: the Welcome must not, or sidecars time out waiting
    for it and reconnect, and the hub does it all again. No command goes out before
    that part is done."""
    await hub.store.create_gateway("gw-w", "welcome")
    gateway = RecordingGateway()
    sidecar = make_sidecar(tmp_path, hub, gateway, gateway_id="gw-w")
    await sidecar.start()
    try:
        await wait_for(lambda: sidecar.link.status.connected, what="first link")
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": "W", "gateway_id": "gw-w"})
        status, first = await api(
            hub, "POST", "/api/v1/agents", {"name": "first", "board_id": board["id"]}
        )
        assert status == 201, first
        await wait_for(lambda: gateway.count("ensure_agent") == 1, what="first agent applied")
    finally:
        await sidecar.stop()
    status, second = await api(
        hub, "POST", "/api/v1/agents", {"name": "second", "board_id": board["id"]}
    )
    assert status == 201, second  # queued while the sidecar is away
    held, started = asyncio.Event(), asyncio.Event()
    rerender = hub.provisioning.rerender_stale

    async def held_link_up_work(gateway_id: str) -> int:
        started.set()
        await held.wait()
        return await rerender(gateway_id)

    monkeypatch.setattr(hub.provisioning, "rerender_stale", held_link_up_work)
    again = make_sidecar(tmp_path, hub, gateway, gateway_id="gw-w")
    await again.start()
    try:
        await wait_for(lambda: started.is_set(), what="the hub's link-up work under way")
        await wait_for(lambda: again.link.status.connected, what="the Welcome, work held")
        await asyncio.sleep(0.3)
        assert gateway.count("ensure_agent") == 1, "a command went out before the link-up work"
        held.set()  # then the queued agent (and both again: the new sidecar's agent API moved)
        await wait_for(lambda: gateway.count("ensure_agent") >= 2, what="the queued agent")
    finally:
        await again.stop()
