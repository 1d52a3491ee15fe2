"""What the real gateway's errors mean, one class at a time, on each generation.

The sidecar classifies a gateway error once (sidecar.gateway.protocol.classify_error):
RETRY (the gateway works and asks to be asked again: FAILED, retried in place),
PERMANENT (never as sent: REJECTED) or UNREACHABLE (the gateway cannot serve the
sidecar: the agent waits for its gateway). Each test provokes the gateway into one.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protos.contract import GatewayErrorKind
from sidecar.gateway import AgentEntry, GatewayError, GatewayInfo, HeartbeatSpec, RunState
from sidecar.gateway.openclaw import ClientPolicy, OpenClawGatewayClient
from sidecar.gateway.protocol import GatewayRequestError
from sidecar.openclaw_config import write_atomic
from tests.interop.conftest import RunningGateway
from tests.interop.scripted_model import ScriptedModel

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

READY_S = 15.0
RUN_TIMEOUT_S = 60.0


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[OpenClawGatewayClient]:
    async with OpenClawGatewayClient(gateway.config_path) as gateway_client:
        await gateway_client.wait_ready(READY_S)
        yield gateway_client


def new_agent(gateway: RunningGateway) -> AgentEntry:
    agent_id = f"mc-{uuid.uuid4()}"
    return AgentEntry(agent_id, agent_id, gateway.workspace_root / agent_id)


# --------------------------------------------------------------------------- RETRY


async def test_a_wake_right_after_create_rides_out_the_agent_being_loaded(
    gateway: RunningGateway, client: OpenClawGatewayClient, model: ScriptedModel
) -> None:
    """2026.9 answers chat.send for an agent it is still loading (just created, or
    re-applied) with INVALID_REQUEST "no longer exists in configuration": asking again
    succeeds, so it is RETRY, and the wake itself asks again while the agent is listed."""
    entry = new_agent(gateway)
    await client.call("agents.create", {"name": entry.agent_id, "workspace": str(entry.workspace)})
    run_id = await client.wake(entry.agent_id, "Wake up.", str(uuid.uuid4()))  # no wait at all
    outcome = await client.wait_run(run_id, RUN_TIMEOUT_S)
    # The run itself may fail (2026.9 can supersede a run started while a new agent's
    # runtime is prepared): that is the run's answer, not a refused wake.
    assert outcome.state in (RunState.FINAL, RunState.ERROR), outcome


async def test_resetting_a_session_while_its_run_is_active_is_asked_again(
    gateway: RunningGateway, client: OpenClawGatewayClient, model: ScriptedModel
) -> None:
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    model.delay_s = 6.0
    run_id = await client.wake(entry.agent_id, "Take your time.", str(uuid.uuid4()))
    await _model_called(model, entry.agent_id)
    try:
        await client.reset_session(entry.agent_id)
    except GatewayRequestError as exc:
        # 2026.9, while the run is in a phase it will not cut short: UNAVAILABLE "... is
        # still active; try again in a moment." (it resets a run waiting on the model).
        assert exc.kind is GatewayErrorKind.RETRY and exc.retryable, exc
    model.delay_s = 0.0
    await client.wait_run(run_id, RUN_TIMEOUT_S)
    await client.reset_session(entry.agent_id)  # asked again, once the run is over: done


async def test_a_config_write_over_a_changed_config_is_asked_again(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> None:
    """config.patch guarded by a hash that is no longer the file's: "config changed since
    last load; re-run config.get and retry" (INVALID_REQUEST, yet RETRY by what it says)."""
    stale = "0" * 64
    with pytest.raises(GatewayRequestError) as refused:
        await client.call("config.patch", {"raw": json.dumps({}), "baseHash": stale})
    assert refused.value.kind is GatewayErrorKind.RETRY and refused.value.retryable, refused.value


# ----------------------------------------------------------------------- PERMANENT


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("agents.update", {"bogus": 1}),
        ("agents.files.set", {"name": "../escape.md", "content": "x"}),
    ],
    ids=["unknown-param", "unsupported-file"],
)
async def test_a_request_that_can_never_succeed_is_permanent(
    gateway: RunningGateway, client: OpenClawGatewayClient, method: str, params: dict[str, object]
) -> None:
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    with pytest.raises(GatewayRequestError) as refused:
        await client.call(method, {"agentId": entry.agent_id, **params})
    assert refused.value.kind is GatewayErrorKind.PERMANENT and not refused.value.retryable


async def test_a_wake_for_an_agent_that_is_gone_is_permanent(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> None:
    if gateway.generation_is_legacy:
        pytest.skip("2026.3 accepts chat.send for a session key of an agent it does not have")
    with pytest.raises(GatewayError) as refused:
        await client.wake(f"mc-{uuid.uuid4()}", "Anyone there?", str(uuid.uuid4()))
    assert refused.value.code == "agent_missing"
    assert refused.value.kind is GatewayErrorKind.PERMANENT
    assert "not on the gateway" in str(refused.value)


# ---------------------------------------------------------------------- UNREACHABLE


async def test_a_refused_token_means_the_gateway_is_unreachable_for_the_sidecar(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    document = gateway.read_config()
    document["gateway"]["auth"]["token"] = "not-the-gateway-token"
    wrong = tmp_path / "openclaw.json"
    write_atomic(wrong, json.dumps(document))
    async with OpenClawGatewayClient(wrong) as refused_client:
        with pytest.raises(GatewayError) as refused:
            await refused_client.ensure_agent(new_agent(gateway))
    assert refused.value.kind is GatewayErrorKind.UNREACHABLE and refused.value.retryable


async def test_a_gateway_that_is_not_there_is_unreachable(tmp_path: Path) -> None:
    config = tmp_path / "openclaw.json"
    write_atomic(config, json.dumps({"gateway": {"port": 9, "auth": {"token": "x"}}}))
    async with OpenClawGatewayClient(config, policy=ClientPolicy(ready_wait_s=0.5)) as down:
        with pytest.raises(GatewayError) as refused:
            await down.wake("mc-x", "hello", str(uuid.uuid4()))
    assert refused.value.kind is GatewayErrorKind.UNREACHABLE


# ------------------------------------------------------------- a change under a run


async def test_setting_the_heartbeat_keeps_the_gateway_up_for_the_wake_that_follows(
    gateway: RunningGateway, client: OpenClawGatewayClient, model: ScriptedModel
) -> None:
    """An apply sets the heartbeat, then wakes. 2026.3 restarts itself 2 s after every
    config.patch, which lost the wake's run (and every other run in flight); the sidecar
    writes it with config.set there, which the gateway applies without a restart."""
    changes: list[GatewayInfo] = []
    client.on_info_change(changes.append)
    entry = new_agent(gateway)
    await client.ensure_agent(entry)
    model.delay_s = 3.0  # the run outlives the moment a restart would come
    await client.set_heartbeat(entry.agent_id, HeartbeatSpec(900, "none", "- check in\n"))
    run_id = await client.wake(entry.agent_id, "Your heartbeat is set.", str(uuid.uuid4()))
    outcome = await client.wait_run(run_id, RUN_TIMEOUT_S)
    assert outcome.state is RunState.FINAL and outcome.model_turn, outcome
    assert [c for c in changes if not c.reachable] == [], "the gateway went away meanwhile"
    assert gateway.roster()[entry.agent_id]["heartbeat"] == {"every": "15m", "target": "none"}
    status = await client.runtime_status()
    assert {a.agent_id: a.heartbeat_every_s for a in status.agents}[entry.agent_id] == 900
    # Setting the same again writes nothing.
    before = gateway.config_path.stat().st_mtime_ns
    await client.set_heartbeat(entry.agent_id, HeartbeatSpec(900, "none", "- check in\n"))
    assert gateway.config_path.stat().st_mtime_ns == before


async def _model_called(model: ScriptedModel, agent_id: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not model.for_agent(agent_id):
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway never called the model for {agent_id}")
        await asyncio.sleep(0.05)
