"""The heartbeat governor end to end: hub + sidecar on loopback (the in-memory gateway),
the hub's clock moved instead of waited. A quiet board's agents back off step by step
(the gateway's heartbeat job follows), nobody is judged silent for it, and the first
task snaps them back."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from protos import link_pb2 as pb
from protos.contract import timestamp
from sidecar.app import Sidecar
from tests import support
from tests.support import JumpClock, RecordingGateway, api, hub_config, wait_for

GW = "gw-gov"
HOUR = 3600


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def hub(tmp_path: Path, clock: JumpClock, database: str) -> AsyncIterator[Hub]:
    config = dataclasses.replace(hub_config(tmp_path / "hub", database=database))
    instance = Hub(config, clock=clock)
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
async def connected(hub: Hub, tmp_path: Path) -> AsyncIterator[tuple[Sidecar, RecordingGateway]]:
    gateway = RecordingGateway()
    sidecar = support.make_sidecar(tmp_path, hub, gateway, gateway_id=GW, name="sc")
    await sidecar.start()
    await wait_for(lambda: support.sidecar_connected(hub, GW), what="sidecar connected")
    yield sidecar, gateway
    await sidecar.stop()


async def agent(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, body = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, body
    return body


async def board_with_lead_and_worker(hub: Hub) -> tuple[str, dict[str, Any], dict[str, Any]]:
    _, board = await api(hub, "POST", "/api/v1/boards", {"name": "Quiet", "gateway_id": GW})
    made = []
    for name, lead in (("Lead", True), ("Worker", False)):
        status, body = await api(
            hub,
            "POST",
            "/api/v1/agents",
            {"name": name, "board_id": board["id"], "is_board_lead": lead},
        )
        assert status == 201, body
        made.append(body)
    for a in made:
        await wait_for(lambda a=a: _is(hub, a["id"], status="online"), what=f"{a['name']} online")
    return board["id"], made[0], made[1]


async def _is(hub: Hub, agent_id: str, **fields: Any) -> dict[str, Any] | None:
    now = await agent(hub, agent_id)
    return now if all(now[k] == v for k, v in fields.items()) else None


def beats(gateway: RecordingGateway, gateway_agent_id: str) -> list[int]:
    return [c[2] for c in gateway.calls if c[0] == "set_heartbeat" and c[1] == gateway_agent_id]


async def test_a_quiet_board_backs_off_and_the_first_task_snaps_it_back(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway], clock: JumpClock
) -> None:
    _, gateway = connected
    board_id, lead, worker = await board_with_lead_and_worker(hub)
    status, read = await api(hub, "PUT", f"/api/v1/boards/{board_id}/heartbeat-governor", {})
    assert status == 200, read
    assert read["heartbeat_governor"] == {
        "enabled": True, "steps": ["30m", "1h", "3h"], "idle_after": "1h", "lead_max": "1h"
    }  # fmt: skip
    assert {(a["name"], a["step"], a["every_s"], a["source"]) for a in read["agents"]} == {
        ("Lead", 0, 600, "board"), ("Worker", 0, 600, "board")
    }  # fmt: skip
    assert all(a["next_step_at"] for a in read["agents"])

    async def cadence_is(a: dict[str, Any], every_s: int, step: int) -> None:
        async def applied() -> bool:
            now = await agent(hub, a["id"])
            return (now["heartbeat_every_s"], now["heartbeat_governor_step"]) == (
                every_s,
                step,
            ) and now["applied_generation"] == now["lifecycle_generation"]

        await wait_for(applied, what=f"{a['name']} every {every_s} s, applied")

    async def heartbeat_now() -> None:
        """Both agents beat at the hub's now, as they do at whatever cadence they run."""
        beats = [
            pb.AgentHeartbeat(agent_id=a["gateway_agent_id"], observed_at=timestamp(clock()))
            for a in (lead, worker)
        ]
        await hub.reconciler.heartbeats(GW, pb.HeartbeatBatch(batch_id=1, beats=beats))

    woken = gateway.count("wake")
    clock.advance(HOUR + 1)
    await heartbeat_now()
    assert await hub.governor.govern() == 2
    for a in (lead, worker):
        await cadence_is(a, 1800, 1)
    clock.advance(2 * HOUR)
    await heartbeat_now()
    await hub.governor.govern()
    await cadence_is(worker, 10800, 3)
    await cadence_is(lead, 3600, 3)  # a lead is capped at an hour
    assert beats(gateway, worker["gateway_agent_id"])[-2:] == [1800, 10800]
    assert beats(gateway, lead["gateway_agent_id"])[-1] == 3600
    assert gateway.count("wake") == woken  # backing off wakes nobody

    # Silent for far longer than twice their own 10 minutes, but not than twice the
    # cadence they run now: nobody is nudged or marked offline.
    clock.advance(1.5 * HOUR)
    await hub.reconciler.sweep_presence()
    for a in (lead, worker):
        now = await agent(hub, a["id"])
        assert (now["status"], now["recovery"]) == ("online", None), now
    assert gateway.count("wake") == woken

    # The first task snaps both back to their own cadence, and wakes them to see it.
    status, _ = await api(hub, "POST", f"/api/v1/boards/{board_id}/tasks", {"title": "Work"})
    assert status == 201
    for a in (lead, worker):
        await cadence_is(a, 600, 0)
    await wait_for(lambda: gateway.count("wake") >= woken + 2, what="both woken")
    _, after = await api(hub, "GET", f"/api/v1/boards/{board_id}/heartbeat-governor")
    assert after["last_activity_at"] is not None
    _, trail = await api(hub, "GET", f"/api/v1/activity?board_id={board_id}&limit=200")
    governed = [e for e in trail["items"] if e["kind"] == "agent.heartbeat.governed"]
    assert len(governed) == 6  # two steps down and one back up, each


async def test_an_exempt_agent_keeps_its_cadence_and_removing_the_governor_restores(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway], clock: JumpClock
) -> None:
    board_id, lead, worker = await board_with_lead_and_worker(hub)
    status, own = await api(
        hub, "PUT", f"/api/v1/agents/{lead['id']}/heartbeat-governor", {"enabled": False}
    )
    assert status == 200 and own["heartbeat_governor"] == {"enabled": False}, own
    await api(hub, "PUT", f"/api/v1/boards/{board_id}/heartbeat-governor", {"steps": ["2h"]})
    clock.advance(HOUR + 1)
    await hub.governor.govern()
    assert (await agent(hub, worker["id"]))["heartbeat_every_s"] == 7200
    assert (await agent(hub, lead["id"]))["heartbeat_every_s"] == 600
    _, read = await api(hub, "GET", f"/api/v1/agents/{lead['id']}/heartbeat-governor")
    assert read["cadence"]["source"] == "exempt" and read["cadence"]["step"] == 0

    status, read = await api(hub, "DELETE", f"/api/v1/boards/{board_id}/heartbeat-governor")
    assert status == 200 and read["heartbeat_governor"] is None
    await wait_for(
        lambda: _is(hub, worker["id"], heartbeat_every_s=600, heartbeat_governor_step=0),
        what="the worker back to its own cadence",
    )

    # An admin's own cadence change is the new base.
    status, _ = await api(
        hub, "PATCH", f"/api/v1/agents/{worker['id']}", {"heartbeat_config": {"every": "20m"}}
    )
    assert status == 200
    assert (await agent(hub, worker["id"]))["heartbeat_every_s"] == 1200


async def test_bad_settings_are_refused_and_unknown_targets_are_404(hub: Hub) -> None:
    _, gateway = await api(hub, "POST", "/api/v1/gateways", {"name": "G"})
    _, board = await api(hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": gateway["id"]})
    path = f"/api/v1/boards/{board['id']}/heartbeat-governor"
    for body, says in (
        ({"steps": ["1h", "30m"]}, "longer than the one before"),
        ({"steps": ["10s"]}, "from 1m to 7d"),
        ({"idle_after": "soon"}, "not a duration"),
        ({"steps": []}, "steps"),
        ({"cadence": "fast"}, "cadence"),
    ):
        status, answer = await api(hub, "PUT", path, body)
        assert status == 422 and says in str(answer), (body, answer)
    for method, target in (
        ("GET", "/api/v1/boards/nope/heartbeat-governor"),
        ("PUT", "/api/v1/boards/nope/heartbeat-governor"),
        ("PUT", "/api/v1/agents/nope/heartbeat-governor"),
        ("GET", "/api/v1/agents/nope/heartbeat-governor"),
    ):
        status, _ = await api(hub, method, target, {} if method == "PUT" else None)
        assert status == 404, (method, target)
