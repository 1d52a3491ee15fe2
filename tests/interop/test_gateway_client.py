"""OpenClawGatewayClient against a real gateway: handshake, agents, heartbeat, runs, auth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hub.demo.scripted_model import Behaviour, ScriptedModel
from protos.contract import GatewayGeneration
from sidecar.gateway import AgentEntry, GatewayInfo, HeartbeatSpec, RunState
from sidecar.gateway.openclaw import ClientPolicy, OpenClawGatewayClient
from sidecar.gateway.protocol import (
    ClientIdentity,
    GatewayScopesCleared,
    GatewayTokenMismatch,
)
from sidecar.openclaw_config import write_atomic
from tests.interop.conftest import RunningGateway, record_timing

# The first test's setup may install OpenClaw from npm (a minute or more on a cold cache).
pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

READY_S = 15.0


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[OpenClawGatewayClient]:
    async with OpenClawGatewayClient(gateway.config_path) as gateway_client:
        await gateway_client.wait_ready(READY_S)
        yield gateway_client


def new_agent(gateway: RunningGateway, name: str = "") -> AgentEntry:
    agent_id = f"mc-{uuid.uuid4()}"
    return AgentEntry(
        agent_id=agent_id, name=name or agent_id, workspace=gateway.workspace_root / agent_id
    )


async def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` until true; return how long it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_handshake_reports_version_protocol_and_generation(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> None:
    info = client.info
    assert info.reachable
    assert info.version == gateway.version
    if gateway.generation_is_legacy:
        assert (info.protocol, info.generation) == (3, GatewayGeneration.LEGACY_2026_3)
    else:
        assert (info.protocol, info.generation) == (4, GatewayGeneration.CURRENT)
    assert info.unreachable_reason == ""


async def test_concurrent_requests_each_get_their_own_answer(
    client: OpenClawGatewayClient,
) -> None:
    listed, config, status = await asyncio.gather(
        client.call("agents.list", {}),
        client.call("config.get", {}),
        client.call("status", {}),
    )
    assert "agents" in listed
    assert "hash" in config
    assert "agents" not in status and "hash" not in status


async def test_ensure_agent_creates_entry_listed_and_serves_workspace_files(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> None:
    entry = new_agent(gateway)
    started = time.monotonic()
    await client.ensure_agent(entry)
    record_timing("ensure_agent (create until listed)", time.monotonic() - started)

    assert entry.agent_id in await client.list_agent_ids()
    in_file = gateway.roster()[entry.agent_id]
    assert Path(in_file["workspace"]) == entry.workspace
    marker = f"memory marker {uuid.uuid4()}"
    (entry.workspace / "MEMORY.md").write_text(marker, encoding="utf-8")
    got = await client.call("agents.files.get", {"agentId": entry.agent_id, "name": "MEMORY.md"})
    assert got["file"]["content"] == marker


async def test_ensure_agent_twice_updates_name_and_emoji_in_place(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> None:
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    renamed = AgentEntry(entry.agent_id, "Board Lead", entry.workspace, emoji="🦀")
    started = time.monotonic()
    await client.ensure_agent(renamed)
    record_timing("ensure_agent (existing, update)", time.monotonic() - started)
    in_file = gateway.roster()[entry.agent_id]
    assert in_file["name"] == "Board Lead"
    if not gateway.generation_is_legacy:
        assert in_file["identity"]["emoji"] == "🦀"
    assert Path(in_file["workspace"]) == entry.workspace


async def test_remove_agent_drops_entry_and_an_absent_agent_is_fine(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> None:
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    started = time.monotonic()
    await client.remove_agent(entry.agent_id, delete_files=False)
    record_timing("remove_agent (deleteFiles false)", time.monotonic() - started)
    assert entry.agent_id not in gateway.roster()
    assert entry.agent_id not in await client.list_agent_ids()
    assert entry.workspace.is_dir(), "deleteFiles:false keeps the workspace"
    await client.remove_agent(entry.agent_id, delete_files=False)


async def test_set_heartbeat_sets_cadence_and_checklist(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> None:
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    checklist = f"# Heartbeat checklist\n- check the board {uuid.uuid4()}\n"
    started = time.monotonic()
    await client.set_heartbeat(entry.agent_id, HeartbeatSpec(1800, "none", checklist))
    record_timing("set_heartbeat (patch + checklist)", time.monotonic() - started)
    assert gateway.roster()[entry.agent_id]["heartbeat"] == {"every": "30m", "target": "none"}
    if gateway.generation_is_legacy:
        # 2026.3 reads the checklist from HEARTBEAT.md, which the hub renders.
        await client.set_heartbeat(entry.agent_id, HeartbeatSpec(0, "none", ""))  # quiet
        return
    jobs = await client.call("cron.list", {"agentId": entry.agent_id, "includeDisabled": True})
    job = next(j for j in jobs["jobs"] if j["declarationKey"] == f"heartbeat:{entry.agent_id}")
    scratch = await client.call("cron.scratch.get", {"jobId": job["id"]})
    assert scratch["scratch"]["content"] == checklist

    # Changing only the cadence keeps the checklist; changing the checklist bumps it.
    await client.set_heartbeat(entry.agent_id, HeartbeatSpec(45, "none", checklist + "- more\n"))
    assert gateway.roster()[entry.agent_id]["heartbeat"]["every"] == "45s"
    scratch = await client.call("cron.scratch.get", {"jobId": job["id"]})
    assert scratch["scratch"]["content"] == checklist + "- more\n"
    assert scratch["currentRevision"] == 2
    await client.set_heartbeat(entry.agent_id, HeartbeatSpec(0, "none", ""))  # quiet again


async def test_wake_whose_model_rejects_the_credentials_ends_in_error_with_its_message(
    gateway: RunningGateway, client: OpenClawGatewayClient, model: ScriptedModel
) -> None:
    model.behaviour = Behaviour.REJECT_CREDENTIALS
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    key = str(uuid.uuid4())
    started = time.monotonic()
    run_id = await client.wake(entry.agent_id, "Wake up: check your board.", key)
    record_timing("wake ack (chat.send)", time.monotonic() - started)
    assert run_id
    outcome = await client.wait_run(run_id, timeout_s=60)
    record_timing("wake to run end (model rejects the key: error)", time.monotonic() - started)
    assert outcome.run_id == run_id
    assert outcome.state is RunState.ERROR, outcome
    assert outcome.message and outcome.message != "run failed"
    assert not outcome.model_turn
    # The outcome is remembered: asking again after the end answers at once.
    assert await client.wait_run(run_id, timeout_s=0.1) == outcome
    # Same idempotency key, same run.
    assert await client.wake(entry.agent_id, "Wake up: check your board.", key) == run_id


async def test_agent_method_answers_twice_under_one_request_id(
    gateway: RunningGateway, client: OpenClawGatewayClient, model: ScriptedModel
) -> None:
    model.behaviour = Behaviour.REJECT_CREDENTIALS
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    accepted, ended = await client.call_multi(
        "agent",
        {
            "message": "ping",
            "agentId": entry.agent_id,
            "sessionKey": f"agent:{entry.agent_id}:main",
            "idempotencyKey": str(uuid.uuid4()),
        },
        answers=2,
        timeout_s=60,
    )
    assert accepted.unwrap()["status"] == "accepted"
    # The model rejects the key: the second answer under the same id is the run's failure,
    # as an error (2026.9), or as a result whose run stopped on an error (2026.3).
    if gateway.generation_is_legacy and ended.error is None:
        assert '"stopReason": "error"' in json.dumps(ended.payload), ended
    else:
        assert ended.error is not None, ended
        assert ended.error.method == "agent" and ended.error.gateway_message


async def test_wrong_token_is_refused_with_auth_token_mismatch(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    document = gateway.read_config()
    document["gateway"]["auth"]["token"] = "not-the-gateway-token"
    wrong = tmp_path / "openclaw.json"
    write_atomic(wrong, json.dumps(document))
    async with OpenClawGatewayClient(wrong) as client:
        with pytest.raises(GatewayTokenMismatch) as failure:
            await client.wait_ready(READY_S)
        await eventually(lambda: bool(client.info.unreachable_reason), 5, "reason reported")
        assert not client.info.reachable
    message = str(failure.value)
    assert failure.value.code == "gateway_token_mismatch"
    assert "AUTH_TOKEN_MISMATCH" in message
    assert "gateway.auth.token" in message and str(wrong) in message


@pytest.mark.parametrize(
    "identity",
    [ClientIdentity(origin="http://127.0.0.1"), ClientIdentity(client_id="test")],
    ids=["origin-header", "wrong-client-id"],
)
async def test_cleared_scopes_fail_and_say_the_backend_identity_is_the_fix(
    gateway: RunningGateway, identity: ClientIdentity
) -> None:
    if gateway.generation_is_legacy:
        pytest.skip("2026.3 sends no auth.scopes in hello-ok")
    async with OpenClawGatewayClient(gateway.config_path, identity=identity) as client:
        with pytest.raises(GatewayScopesCleared) as failure:
            await client.wait_ready(READY_S)
    message = str(failure.value)
    assert "cleared its scopes" in message
    assert "gateway-client/backend" in message
    if identity.origin:
        assert f"Origin header {identity.origin!r}" in message
    else:
        assert f"client {identity.client_id}/{identity.mode}" in message
    assert "dangerouslyDisableDeviceAuth" not in message


async def test_token_rotation_closes_the_socket_and_client_reconnects_with_new_token(
    own_gateway: RunningGateway,
) -> None:
    # Its own gateway: a 2026.9 gateway shared by the session's tests was seen to stop
    # noticing hand edits of openclaw.json after many of them (no "config change
    # detected" in its log for three fresh tokens in a row); what is tested here is what
    # our client does once the gateway applies a rotation.
    gateway = own_gateway
    # Current gateways close shared-token sockets with 4001; 2026.3 restarts (1012).
    close_code = "1012" if gateway.generation_is_legacy else "4001"
    changes: list[GatewayInfo] = []
    new_token = ""

    def rotate(document: dict[str, object]) -> None:
        document["gateway"]["auth"]["token"] = new_token  # type: ignore[index]

    def closed() -> bool:
        return any(close_code in c.unreachable_reason for c in changes)

    async with OpenClawGatewayClient(gateway.config_path) as client:
        await client.wait_ready(READY_S)
        client.on_info_change(changes.append)
        started = time.monotonic()
        for attempt in range(1, 4):
            # A busy 2026.9 now and then misses a hand edit made just after writes of its
            # own; a file written again with the same bytes is no change to it, so each
            # attempt writes a token of its own.
            new_token = f"rotated-{uuid.uuid4().hex}"
            gateway.edit_config(rotate)
            with contextlib.suppress(pytest.fail.Exception):
                await eventually(closed, 5 * attempt, "socket closed")
            if closed():
                break
        assert closed(), f"the gateway never applied the rotation:\n{gateway.log_tail()}"
        await eventually(lambda: bool(changes) and changes[-1].reachable, 30, "reconnected")
        record_timing("token rotation to reconnected", time.monotonic() - started)
        assert await client.list_agent_ids()


async def test_calls_fail_fast_with_the_reason_when_the_gateway_is_unreachable(
    tmp_path: Path,
) -> None:
    config = tmp_path / "openclaw.json"
    write_atomic(config, json.dumps({"gateway": {"port": 9, "auth": {"token": "x"}}}))
    policy = ClientPolicy(ready_wait_s=0.5)
    async with OpenClawGatewayClient(config, policy=policy) as client:
        entry = AgentEntry("mc-x", "x", tmp_path / "mc-x")
        with pytest.raises(Exception) as failure:
            await client.ensure_agent(entry)
    assert getattr(failure.value, "code", "") == "gateway_unreachable"
    assert "cannot reach the gateway" in str(failure.value)
