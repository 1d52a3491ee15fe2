"""Presence from what the real gateway does, and the causes it is provoked into, on each
generation.

hub (REST API, reconciler, link; its clock a JumpClock, which the sidecar's relay reads
too) -> in-process sidecar (real gateway client) -> real OpenClaw gateway -> agent runs
-> the scripted model, which never runs the check-in curl here: every check-in after
the wake's is the gateway's own run.

- A heartbeat run brings an agent's presence forward with no curl: past the point where
  presence would have expired, the gateway's heartbeat keeps it online (2026.9: the
  heartbeat job run now with `cron.run`, as `openclaw cron run` does). A chat run from
  another client does the same on both generations.
- The agent's heartbeat block deleted from openclaw.json by hand (the gateway drops its
  heartbeat job with it; the job itself cannot be removed by a client) is noticed, named
  as the agent's cause, and put back.
- A model that rejects the key: the agent's runs fail, and the failure is its cause.
- A provider whose sign-in is missing (2026.9's `models.authStatus`) is every agent's
  cause, and so is the gateway gone (its process killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.demo.scripted_model import Behaviour, ScriptedModel
from sidecar.gateway.openclaw import OpenClawGatewayClient
from tests.interop.conftest import RunningGateway, Stack, linked_stack
from tests.interop.test_status_truth import RUN_TIMEOUT_S, create_agent, state
from tests.support import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

GATEWAY_ID = "gw-presence-runtime"
EVERY_S = 600  # the agents' heartbeat: far longer than the test, so no tick of its own


@contextlib.asynccontextmanager
async def _stack(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with linked_stack(gateway, model, tmp_path, GATEWAY_ID) as stack:
        stack.sidecar.relay.clock = stack.clock  # beats observed at the hub's time
        yield stack


@pytest.fixture
async def served(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with _stack(gateway, model, tmp_path) as stack:
        yield stack


@pytest.fixture
async def served_alone(own_gateway: RunningGateway, tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack on a gateway of its own, for a test whose hand edit of openclaw.json must
    reach the gateway's runtime: a long-used shared gateway was seen to miss such edits."""
    async with (
        ScriptedModel(own_gateway.model_port) as model,
        _stack(own_gateway, model, tmp_path) as stack,
    ):
        yield stack


@contextlib.asynccontextmanager
async def operator(gateway: RunningGateway) -> AsyncIterator[OpenClawGatewayClient]:
    """Another client of the gateway, as `openclaw` on the host or the control UI is."""
    async with OpenClawGatewayClient(gateway.config_path) as client:
        await client.wait_ready(30)
        yield client


async def online_agent(stack: Stack, name: str) -> dict[str, Any]:
    agent = await create_agent(stack, name)
    body = await wait_for(
        lambda: _field_is(stack, agent["id"], "status", "online"),
        timeout_s=RUN_TIMEOUT_S,
        what="online after its wake",
    )
    assert body["last_checkin_source"] == "wake"
    return agent


async def _field_is(stack: Stack, agent_id: str, key: str, value: Any) -> dict[str, Any] | None:
    body = await state(stack, agent_id)
    return body if body[key] == value else None


async def _runtime_after(stack: Stack, agent_id: str, seen: str) -> dict[str, Any] | None:
    body = await state(stack, agent_id)
    fresh = body["last_checkin_source"] == "runtime" and body["last_seen_at"] > seen
    return body if fresh else None


async def _chat(client: OpenClawGatewayClient, gw_agent: str, message: str) -> str:
    """A chat in the agent's main session from this other client; returns its run id."""
    run_id = uuid.uuid4().hex
    params = {"sessionKey": f"agent:{gw_agent}:main", "message": message, "idempotencyKey": run_id}
    await client.call("chat.send", params)
    return run_id


async def _heartbeat_job(client: OpenClawGatewayClient, agent_id: str) -> str:
    jobs = await client.read("cron.list", {"agentId": agent_id, "includeDisabled": True})
    return next(j["id"] for j in jobs["jobs"] if j["declarationKey"] == f"heartbeat:{agent_id}")


async def test_the_gateways_own_runs_keep_an_agent_online_with_no_curl(
    served: Stack, gateway: RunningGateway
) -> None:
    stack = served
    agent = await online_agent(stack, "Runtime Presence")
    gw_agent = agent["gateway_agent_id"]
    seen = (await state(stack, agent["id"]))["last_seen_at"]
    stack.clock.advance(2 * EVERY_S + 1)  # presence would have expired by now
    async with operator(gateway) as client:
        # A heartbeat that finds the agent's session busy is skipped, as the gateway's
        # own tick would be: asked again, as the next tick would.
        for _attempt in range(4):
            if gateway.generation_is_legacy:
                kind = "a chat run from another client"
                await _chat(client, gw_agent, "What is on the board today?")
            else:
                kind = "its heartbeat job's run"
                job = await _heartbeat_job(client, gw_agent)
                await client.call("cron.run", {"jobId": job, "mode": "force"})
            with contextlib.suppress(AssertionError):
                body = await wait_for(
                    lambda: _runtime_after(stack, agent["id"], seen), timeout_s=30, what=kind
                )
                break
        else:
            raise AssertionError(f"no runtime check-in from {kind} in 4 tries")
    await stack.hub.reconciler.sweep_presence()
    after = await state(stack, agent["id"])
    assert after["status"] == "online" and after["recovery"] is None, after
    assert after["last_seen_at"] == body["last_seen_at"]
    assert stack.model is not None and stack.model.requests
    # The model only ever answered with text: no tool call, so no check-in curl ran.
    assert {r.reply for r in stack.model.requests} == {"text"}


async def test_a_heartbeat_deleted_by_hand_is_noticed_and_put_back(
    served_alone: Stack, own_gateway: RunningGateway
) -> None:
    stack, gateway = served_alone, own_gateway
    agent = await online_agent(stack, "Heartbeat Kept")
    gw_agent = agent["gateway_agent_id"]
    assert "heartbeat" in gateway.roster()[gw_agent]
    await wait_for(lambda: not stack.sidecar.own_changes.recent(gw_agent), what="its apply settled")

    def drop(document: dict[str, Any]) -> None:
        agents = document["agents"]
        if "entries" in agents:
            agents["entries"][gw_agent].pop("heartbeat")
        for entry in agents.get("list") or []:
            if entry.get("id") == gw_agent:
                entry.pop("heartbeat")

    gateway.edit_config(drop)
    await wait_for(
        lambda: stack.hub.store.events(GATEWAY_ID, "agent.cause.found"),
        timeout_s=150,  # at once on the change, else at the minute's check
        what="the missing heartbeat noticed",
    )
    (found,) = await stack.hub.store.events(GATEWAY_ID, "agent.cause.found")
    # Missing, or, where no agent has a heartbeat block any more, the gateway's default
    # cadence for every agent: either way not the heartbeat the hub set.
    assert found["agent_id"] == gw_agent
    assert found["detail"]["code"] in ("heartbeat_missing", "heartbeat_changed"), found
    await wait_for(
        lambda: stack.hub.store.events(GATEWAY_ID, "agent.cause.cleared"),
        timeout_s=150,
        what="the heartbeat back and the cause cleared",
    )
    assert "heartbeat" in gateway.roster()[gw_agent]
    status = await stack.sidecar.gateway.runtime_status()
    (runtime,) = [a for a in status.agents if a.agent_id == gw_agent]
    assert runtime.heartbeat_enabled and runtime.heartbeat_every_s == EVERY_S
    assert (await state(stack, agent["id"]))["cause_code"] is None


async def test_a_model_that_rejects_the_key_is_the_agents_cause(
    served: Stack, gateway: RunningGateway
) -> None:
    stack = served
    agent = await online_agent(stack, "Rejected Key")
    gw_agent = agent["gateway_agent_id"]
    assert stack.model is not None
    stack.model.behaviour = Behaviour.REJECT_CREDENTIALS
    async with operator(gateway) as client:
        for _ in range(2):  # two chats from another client, each failing
            await client.wait_run(await _chat(client, gw_agent, "hi"), RUN_TIMEOUT_S)
    body = await wait_for(
        lambda: _field_is(stack, agent["id"], "cause_code", "runs_failing"),
        timeout_s=RUN_TIMEOUT_S,
        what="the failing runs as the cause",
    )
    assert "its runs keep failing" in body["cause"], body
    assert "401" in body["cause"] or "key" in body["cause"].lower(), body


async def test_a_provider_without_its_sign_in_is_every_agents_cause(
    served_alone: Stack, own_gateway: RunningGateway
) -> None:
    stack, gateway = served_alone, own_gateway
    if gateway.generation_is_legacy:
        pytest.skip("2026.3 has no models.authStatus: nothing tells the sign-in's state")
    agent = await online_agent(stack, "Signed Out")
    before = gateway.read_config()

    def sign_in_needed(document: dict[str, Any]) -> None:
        providers = document.setdefault("models", {}).setdefault("providers", {})
        signed_out = {k: v for k, v in providers["scripted"].items() if k != "apiKey"}
        providers["mc-signed-out"] = {**signed_out, "auth": "oauth"}

    try:
        gateway.edit_config(sign_in_needed)
        stack.sidecar.runtime.poke(after_s=2.0)
        body = await wait_for(
            lambda: _field_is(stack, agent["id"], "cause_code", "model_auth"),
            timeout_s=150,  # the gateway may not answer the sign-in read at once
            what="the provider's missing sign-in as the cause",
        )
        assert "mc-signed-out (missing)" in body["cause"], body
    finally:
        gateway.write_config(before)


async def test_a_gateway_gone_is_every_agents_cause(
    own_gateway: RunningGateway, tmp_path: Path
) -> None:
    """This test's own gateway, killed: the sidecar loses its socket at once."""
    async with linked_stack(own_gateway, None, tmp_path, GATEWAY_ID) as stack:
        agent = await create_agent(stack, "Gateway Gone")
        await wait_for(
            lambda: _field_is(stack, agent["id"], "applied_generation", 1),
            timeout_s=RUN_TIMEOUT_S,
            what="applied",
        )
        assert (await state(stack, agent["id"]))["cause_code"] is None
        os.killpg(own_gateway.pid, signal.SIGKILL)
        body = await wait_for(
            lambda: _field_is(stack, agent["id"], "cause_code", "gateway_unreachable"),
            timeout_s=60,
            what="the gateway's loss as the cause",
        )
        assert body["cause"].startswith("gateway_unreachable: "), body
        assert body["status"] != "offline"  # the gateway is blamed, not the agent
