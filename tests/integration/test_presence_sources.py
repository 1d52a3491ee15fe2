"""Presence from what the gateway does, and offline with a cause: hub + sidecar on
loopback, the real link, a recording gateway that broadcasts runs as the real one does.

- A heartbeat or chat run the gateway finishes is a check-in with source `runtime`: an
  agent that never calls the agent API stays online from its runs alone.
- What the sidecar finds keeps an agent from running (its heartbeat job gone, its runs
  failing, a provider's sign-in expired, the gateway unreachable) is kept as the agent's
  cause, with events when found and cleared, and named when the agent goes offline.

The hub's clock is a JumpClock, and the sidecar's relay reads the same clock, so a beat
observed after a jump is observed at the hub's time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from sidecar.app import Sidecar
from sidecar.gateway import ProviderAuth, RunEnded, RunKind, RunOutcome, RunState
from tests.integration.test_lifecycle_outcomes import (
    GATEWAY,
    PAST_THE_GRACE_S,
    clock,
    create,
    events,
    hub,
    start_sidecar,
    state,
)
from tests.support import JumpClock, RecordingGateway, wait_for

__all__ = ["clock", "hub"]  # fixtures, shared with the lifecycle outcome tests

INTERVAL_S = 600  # the agents' default heartbeat, 10 minutes
AUTH_401 = "Authentication failed (provider returned HTTP 401)"


@pytest.fixture
async def linked(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> AsyncIterator[tuple[Sidecar, RecordingGateway]]:
    gateway = RecordingGateway()
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    sidecar.relay.clock = clock  # beats observed at the hub's time
    sidecar.own_changes.window_s = 0.0  # the watch looks again at once after its own change
    clock.advance(PAST_THE_GRACE_S)
    try:
        yield sidecar, gateway
    finally:
        await sidecar.stop()


def ran(gateway: RecordingGateway, agent: dict[str, Any], kind: RunKind, **outcome: Any) -> None:
    state_ = outcome.pop("state", RunState.FINAL)
    gateway.emit(RunEnded(agent["gateway_agent_id"], kind, RunOutcome("run", state_, **outcome)))


async def online(hub: Hub, agent: dict[str, Any]) -> dict[str, Any]:
    async def is_online() -> dict[str, Any] | None:
        body = await state(hub, agent["id"])
        return body if body["status"] == "online" else None

    return await wait_for(is_online, what="online")


async def source_is(
    hub: Hub, agent_id: str, source: str, after: str | None
) -> dict[str, Any] | None:
    body = await state(hub, agent_id)
    moved = after is None or (body["last_seen_at"] or "") > after
    return body if body["last_checkin_source"] == source and moved else None


async def cause_is(hub: Hub, agent_id: str, code: str | None) -> dict[str, Any] | None:
    body = await state(hub, agent_id)
    return body if body["cause_code"] == code else None


async def test_heartbeat_runs_alone_keep_an_agent_online(
    hub: Hub, linked: tuple[Sidecar, RecordingGateway], clock: JumpClock
) -> None:
    _, gateway = linked
    agent = await create(hub)
    woken = await online(hub, agent)
    assert woken["last_checkin_source"] == "wake"
    seen = woken["last_seen_at"]
    for _ in range(4):  # four intervals: twice what presence allows without a check-in
        clock.advance(INTERVAL_S)
        ran(gateway, agent, RunKind.HEARTBEAT, model_turn=True)
        body = await wait_for(
            lambda s=seen: source_is(hub, agent["id"], "runtime", s), what="a runtime check-in"
        )
        seen = body["last_seen_at"]
        await hub.reconciler.sweep_presence()
    body = await state(hub, agent["id"])
    assert body["status"] == "online" and body["recovery"] is None
    assert gateway.count("wake") == 1  # never nudged
    # A chat run from elsewhere counts too; one without a model turn does not.
    clock.advance(60)
    ran(gateway, agent, RunKind.HEARTBEAT, model_turn=False)
    ran(gateway, agent, RunKind.CHAT, model_turn=True)
    await wait_for(lambda: source_is(hub, agent["id"], "runtime", seen), what="the chat run")


async def test_a_heartbeat_job_gone_is_the_cause_until_put_back(
    hub: Hub, linked: tuple[Sidecar, RecordingGateway]
) -> None:
    sidecar, gateway = linked
    agent = await create(hub)
    await online(hub, agent)
    gateway.heartbeat_off.add(agent["gateway_agent_id"])
    await sidecar.runtime.check()
    found = await wait_for(
        lambda: cause_is(hub, agent["id"], "heartbeat_missing"), what="the cause"
    )
    assert "the sidecar put it back" in found["cause"]
    assert ("set_heartbeat", agent["gateway_agent_id"], INTERVAL_S) in gateway.calls
    await sidecar.runtime.check()  # it runs again
    await wait_for(lambda: cause_is(hub, agent["id"], None), what="the cause cleared")
    assert [e["kind"] for e in await events(hub, "agent.cause.found")] == ["agent.cause.found"]
    (cleared,) = await events(hub, "agent.cause.cleared")
    assert cleared["agent_id"] == agent["gateway_agent_id"]


async def test_failing_runs_are_the_cause_the_ladder_names_when_it_ends_offline(
    hub: Hub, linked: tuple[Sidecar, RecordingGateway], clock: JumpClock
) -> None:
    _, gateway = linked
    agent = await create(hub)
    await online(hub, agent)
    gateway.run_outcome, gateway.run_message = RunState.ERROR, AUTH_401  # wakes fail too
    for _ in range(2):
        ran(gateway, agent, RunKind.HEARTBEAT, state=RunState.ERROR, message=AUTH_401)
    found = await wait_for(lambda: cause_is(hub, agent["id"], "runs_failing"), what="the cause")
    assert AUTH_401 in found["cause"] and found["cause_since"] is not None
    clock.advance(2 * INTERVAL_S + 1)  # quiet: the ladder starts
    await hub.reconciler.sweep_presence()

    async def offline() -> dict[str, Any] | None:
        body = await state(hub, agent["id"])
        return body if body["status"] == "offline" else None

    # Each rung's wake fails at once (an answer), so no deadline needs to pass.
    body = await wait_for(offline, what="offline at the ladder's end")
    assert gateway.count("wake") == 3  # the first wake, the nudge, the fresh session
    assert "cause: runs_failing: its runs keep failing" in body["last_provision_error"]


async def test_gateway_wide_conditions_are_every_agents_cause(
    hub: Hub, linked: tuple[Sidecar, RecordingGateway]
) -> None:
    sidecar, gateway = linked
    agents = [await create(hub, name) for name in ("Alpha", "Beta")]
    for agent in agents:
        await online(hub, agent)
    gateway.provider_auth = [ProviderAuth("scripted", "static"), ProviderAuth("openai", "expired")]
    await sidecar.runtime.check()
    for agent in agents:
        body = await wait_for(lambda a=agent: cause_is(hub, a["id"], "model_auth"), what="auth")
        assert "openai (expired)" in body["cause"]
    gateway.set_reachable(False)  # told at once, as any change of the gateway's state
    for agent in agents:
        body = await wait_for(
            lambda a=agent: cause_is(hub, a["id"], "gateway_unreachable"), what="unreachable"
        )
        assert body["cause"].startswith("gateway_unreachable: gateway is down (test)")
        assert "model_auth" in body["cause"]  # still there, named after the telling one
    gateway.provider_auth = [ProviderAuth("openai", "ok")]
    gateway.set_reachable(True)
    await sidecar.runtime.check()
    for agent in agents:
        await wait_for(lambda a=agent: cause_is(hub, a["id"], None), what="all clear")
    assert agents[0]["gateway_id"] == GATEWAY
