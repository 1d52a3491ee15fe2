"""Status that never lies, against the real gateway of each generation.

hub (REST API, reconciler, link; its clock a JumpClock) -> in-process sidecar (real
gateway client) -> real OpenClaw gateway -> agent runs -> the scripted model.

- A model endpoint that refuses connections: no run ever has a model turn, so the
  agent never comes online. 2026.9 retries the first run for about 70 s and ends a
  wake sent meanwhile at once, `final` with no message (the defect: online 30 s after
  create); 2026.3 fails each run at once.
- Overlapping wakes: a second wake that arrives while the first run waits for a slow
  model is folded into it and ends `final` without a turn: no check-in; the first
  run's turn is.
- A model that rejects the credentials: every run ends in an error, and each error
  starts the next wake at once (no deadline passes in this test), 3 in all.
- The recovery ladder: an online agent gone quiet, its model now rejecting the key, is
  nudged, then woken in a fresh session, each failed run moving it on at once, and is
  offline with the gateway's error as the cause.

Deadlines are moved with the hub's clock, never waited out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.demo.scripted_model import Behaviour, ScriptedModel
from protos import link_pb2 as pb
from tests.interop.conftest import RunningGateway, Stack, linked_stack
from tests.support import api, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

GATEWAY_ID = "gw-status-truth"
DEADLINE_S = 30.0
PAST_THE_GRACE_S = 2 * DEADLINE_S + 1  # the hub's grace is two check-in windows
RUN_TIMEOUT_S = 90.0  # a first run after boot takes 5-7 s; 2026.9 retries a refused model


@pytest.fixture
async def served(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with linked_stack(
        gateway, model, tmp_path, GATEWAY_ID, checkin_deadline_s=DEADLINE_S
    ) as stack:
        yield stack


@pytest.fixture
async def unserved(gateway: RunningGateway, tmp_path: Path) -> AsyncIterator[Stack]:
    """Nothing listens on the model's port: the gateway's model calls are refused."""
    async with linked_stack(
        gateway, None, tmp_path, GATEWAY_ID, checkin_deadline_s=DEADLINE_S
    ) as stack:
        yield stack


async def create_agent(stack: Stack, name: str, **extra: Any) -> dict[str, Any]:
    hub = stack.hub
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": f"{name} board", "gateway_id": stack.gateway_id}
    )
    assert status == 201, board
    status, agent = await api(
        hub, "POST", "/api/v1/agents", {"name": name, "board_id": board["id"], **extra}
    )
    assert status == 201, agent
    return agent


async def state(stack: Stack, agent_id: str) -> dict[str, Any]:
    status, body = await api(stack.hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, body
    return body


async def runs(stack: Stack, gateway_agent_id: str) -> list[dict[str, Any]]:
    return [
        e["detail"]
        for e in await stack.hub.store.events(GATEWAY_ID, "agent.run.observed")
        if e["agent_id"] == gateway_agent_id
    ]


async def checkins(stack: Stack, agent_id: str) -> list[dict[str, Any]]:
    return [
        e["detail"]
        for e in await stack.hub.store.events(GATEWAY_ID, "lifecycle.checkin.accepted")
        if e["agent_id"] == agent_id
    ]


async def next_deadline(stack: Stack) -> None:
    """Past the latest wake's deadline, and past the grace the hub gives agents after
    their gateway is reachable again (2026.3 restarts itself when an agent is created)."""
    stack.clock.advance(PAST_THE_GRACE_S)
    await stack.hub.reconciler.reconcile_due()


async def test_a_model_that_refuses_connections_never_brings_the_agent_online(
    unserved: Stack,
) -> None:
    stack = unserved
    agent = await create_agent(stack, "Refused Model")
    gw_agent = agent["gateway_agent_id"]
    attempts = 0
    while True:  # each delivered wake: its deadline passes (or its run failed already)
        now = await wait_for(
            lambda n=attempts: _woken_beyond(stack, agent["id"], n),
            timeout_s=RUN_TIMEOUT_S,
            what=f"a wake after {attempts} or the verdict",
        )
        assert now["status"] != "online" and now["last_seen_at"] is None, now
        if now["status"] == "offline":
            break
        attempts = now["wake_attempts"]
        await next_deadline(stack)
    # The runs end after the verdict, some of them: 2026.9 ends each wake sent while the
    # first run retries at once, final without a model turn; 2026.3 fails each at once.
    if stack.gateway.generation_is_legacy:
        await wait_for(lambda: runs(stack, gw_agent), timeout_s=30, what="a failed run")
    else:
        await wait_for(
            lambda: _final_without_turn(stack, gw_agent), timeout_s=30, what="a folded wake"
        )
    offline = await state(stack, agent["id"])
    assert offline["status"] == "offline" and offline["last_seen_at"] is None, offline
    assert offline["wake_attempts"] == 3
    ended = await runs(stack, gw_agent)
    assert ended and all(not r["model_turn"] for r in ended), ended
    assert not await checkins(stack, agent["id"])


async def test_a_wake_folded_into_a_running_turn_is_not_a_checkin_but_that_turn_is(
    served: Stack,
) -> None:
    stack = served
    model = stack.model
    assert model is not None
    model.delay_s = 8.0  # the first run is in its model call when the second wake comes
    agent = await create_agent(stack, "Overlapping Wakes")
    gw_agent = agent["gateway_agent_id"]
    await wait_for(
        lambda: model.for_agent(gw_agent), timeout_s=RUN_TIMEOUT_S, what="the first model call"
    )
    await next_deadline(stack)  # the second wake, while the first run waits for the model
    await wait_for(
        lambda: _attempts(stack, agent["id"], 2), timeout_s=30, what="the second wake delivered"
    )
    folded = await wait_for(
        lambda: _final_without_turn(stack, gw_agent), timeout_s=30, what="the folded wake's end"
    )
    assert folded["outcome"] == "FINAL" and not folded["model_turn"]
    meanwhile = await state(stack, agent["id"])
    assert meanwhile["status"] == "provisioning" and meanwhile["last_seen_at"] is None
    online = await wait_for(
        lambda: _status(stack, agent["id"], "online"),
        timeout_s=RUN_TIMEOUT_S,
        what="online from the first run's turn",
    )
    assert online["wake_attempts"] == 0
    assert [c["source"] for c in await checkins(stack, agent["id"])] == ["wake"]
    ended = await runs(stack, gw_agent)
    assert sorted(r["model_turn"] for r in ended) == [False, True], ended


async def test_each_failed_run_starts_the_next_wake_at_once(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> None:
    model.behaviour = Behaviour.REJECT_CREDENTIALS
    # A check-in deadline no test waits out: any wake after the first is an error's doing.
    long_s = 3600.0
    async with linked_stack(gateway, model, tmp_path, GATEWAY_ID, checkin_deadline_s=long_s) as s:
        agent = await create_agent(s, "Rejected Key")
        offline = await wait_for(
            lambda: _status(s, agent["id"], "offline"),
            timeout_s=RUN_TIMEOUT_S,
            what="offline after three failed runs",
        )
        ended = await runs(s, agent["gateway_agent_id"])
        assert [r["outcome"] for r in ended] == ["ERROR"] * 3, ended
        assert offline["wake_attempts"] == 3
        assert "after 3 wakes" in offline["last_provision_error"]
        assert ended[-1]["message"] in offline["last_provision_error"]
        # (2026.9 keeps a provider whose key was refused in a cooldown: the later runs fail
        # without asking the model again.)
        assert model.for_agent(agent["gateway_agent_id"])


async def test_a_quiet_agent_climbs_the_ladder_and_goes_offline_naming_the_model_error(
    served: Stack,
) -> None:
    stack = served
    model = stack.model
    assert model is not None
    every_s = 60  # the gateway's own first heartbeat run comes after the test is done
    agent = await create_agent(stack, "Quiet Agent", heartbeat_config={"every": "1m"})
    gw_agent = agent["gateway_agent_id"]
    await wait_for(
        lambda: _status(stack, agent["id"], "online"), timeout_s=RUN_TIMEOUT_S, what="online"
    )
    seen = len(await runs(stack, gw_agent))
    model.behaviour = Behaviour.REJECT_CREDENTIALS  # from now on every run fails
    # Silent for two intervals (the hub's clock stays behind the sidecar's, so each rung's
    # deadline lies ahead: only the failed runs move the ladder on).
    stack.clock.advance(2 * every_s + 1)
    await stack.hub.reconciler.sweep_presence()
    offline = await wait_for(
        lambda: _status(stack, agent["id"], "offline"),
        timeout_s=RUN_TIMEOUT_S,
        what="offline at the ladder's end",
    )
    kinds = [e["kind"] for e in await stack.hub.store.events(GATEWAY_ID) if e["agent_id"] in (
        agent["id"], gw_agent)]  # fmt: skip
    assert "lifecycle.recovery.nudge" in kinds and "lifecycle.recovery.fresh_session" in kinds
    commands = [
        pb.Command.FromString(c.payload)
        for c in await stack.hub.store.commands_after(GATEWAY_ID, 0, limit=1000)
    ]
    wakes = [
        c.wake_agent
        for c in commands
        if c.WhichOneof("action") == "wake_agent" and c.wake_agent.agent_id == gw_agent
    ]
    # The nudge wakes the existing session, the last rung a fresh one (the sidecar resets
    # it first: sessions.reset, tested against this gateway in test_sidecar_e2e.py).
    assert [w.fresh_session for w in wakes][-2:] == [False, True], wakes
    ladder = (await runs(stack, gw_agent))[seen:]
    assert [r["outcome"] for r in ladder] == ["ERROR", "ERROR"], ladder
    error = offline["last_provision_error"]
    assert "a nudge and a wake in a fresh session went unanswered" in error
    assert ladder[-1]["message"] in error  # the cause: what the gateway said of the model


# ------------------------------------------------------------------------- helpers


async def _woken_beyond(stack: Stack, agent_id: str, wakes: int) -> dict[str, Any] | None:
    now = await state(stack, agent_id)
    return now if now["status"] == "offline" or now["wake_attempts"] > wakes else None


async def _attempts(stack: Stack, agent_id: str, wakes: int) -> bool:
    return bool((await state(stack, agent_id))["wake_attempts"] >= wakes)


async def _status(stack: Stack, agent_id: str, status: str) -> dict[str, Any] | None:
    now = await state(stack, agent_id)
    return now if now["status"] == status else None


async def _final_without_turn(stack: Stack, gw_agent: str) -> dict[str, Any] | None:
    return next(
        (r for r in await runs(stack, gw_agent) if r["outcome"] == "FINAL" and not r["model_turn"]),
        None,
    )
