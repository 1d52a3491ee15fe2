"""An `agents` rollout for real: a hub over mutual TLS, enrolled sidecars, their files.

Every gateway gets a worker on its own board named "Ops" (its main agent, asked for by
the same name, is already there and left alone): the canary first, then the rest, each
gated on the new workers checking in. A hub restart mid-rollout and a second run of the
same change create no second worker; a main agent the gateways cannot take fails the
canary and halts; a rollback removes the workers from the gateways, through their
sidecars.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from hub.app import Hub
from tests.integration.test_fleet_rollouts import (
    Host,
    fleet,
    fleet_token,
    rollout_state,
    tls_config,
)
from tests.support import api, wait_for

WORKER = {"name": "Host Worker", "board": "ops", "identity_profile": {"role": "Researcher"}}


def agents_rollout(*agents: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "selector": "env=prod",
        "change": {"kind": "agents", "agents": list(agents)},
        "canary": 1,
        "waves": [100],
        "gate_deadline_s": 60,
        **fields,
    }


async def workers(hub: Hub, host: Host) -> list[dict[str, Any]]:
    _, page = await api(hub, "GET", f"/api/v1/agents?gateway_id={host.gateway_id}")
    return [a for a in page["items"] if a["name"] == WORKER["name"]]


def states(body: dict[str, Any]) -> list[list[str]]:
    return [[g["state"] for g in w["gateways"]] for w in body["waves"]]


async def test_agents_are_created_canary_first_once_each_and_rolled_back(
    tmp_path: Path, free_port: Callable[[], int], database: str
) -> None:
    config = dataclasses.replace(
        tls_config(tmp_path / "hub", link_port=free_port(), http_port=free_port()),
        database=database,  # on both engines: its SQL is the store's one dialect
    )
    hub = Hub(config)
    await hub.start()
    running = True
    try:
        token = await fleet_token(hub, uses=3)
        async with fleet(hub, tmp_path, 3, token) as hosts:
            for host in hosts:
                status, board = await api(
                    hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": host.gateway_id}
                )
                assert status in (200, 201), board
            change = agents_rollout({"name": "main"}, WORKER)

            status, plan = await api(hub, "POST", "/api/v1/rollouts", {**change, "dry_run": True})
            assert status == 200, plan
            assert [len(w["gateways"]) for w in plan["waves"]] == [1, 2]
            canary = plan["waves"][0]["gateways"][0]["gateway_id"]

            status, rollout = await api(hub, "POST", "/api/v1/rollouts", change)
            assert status == 201, rollout

            async def canary_applied() -> dict[str, Any] | None:
                _, body = await api(hub, "GET", f"/api/v1/rollouts/{rollout['id']}")
                return body if body["waves"][0]["gateways"][0]["state"] != "pending" else None

            first = await wait_for(canary_applied, timeout_s=30, what="canary applied")
            assert first["waves"][0]["gateways"][0]["gateway_id"] == canary
            if first["current_wave"] == 1:  # the canary's worker has not checked in yet
                assert states(first)[1] == ["pending", "pending"]
            for host in hosts:
                if host.gateway_id != canary and first["current_wave"] == 1:
                    assert await workers(hub, host) == []

            await hub.stop()  # wherever the rollout is: it continues from its rows
            running = False
            hub = Hub(config)
            await hub.start()
            running = True
            done = await wait_for(
                lambda: rollout_state(hub, rollout["id"], "completed", "halted"),
                timeout_s=90,
                what="rollout finished after the restart",
            )
            assert done["status"] == "completed", done
            assert states(done) == [["healthy"], ["healthy", "healthy"]]
            (gated,) = done["waves"][0]["gateways"]
            for target in done["waves"][1]["gateways"]:  # the rest only after the canary passed
                assert _at(target["applied_at"]) >= _at(gated["decided_at"])
            assert [g["agents"] for w in done["waves"] for g in w["gateways"]] == [1, 1, 1]
            created: dict[str, str] = {}
            for host in hosts:
                (worker,) = await workers(hub, host)  # one each, across the restart
                assert worker["status"] == "online" and worker["board_id"] is not None
                created[host.name] = worker["id"]
                ensured = [c for c in host.gateway.calls if c[0] == "ensure_agent"]
                # The main agent was there already: applied once, when it was made.
                assert [c[1] for c in ensured].count(host.agent["gateway_agent_id"]) == 1
                assert [c[1] for c in ensured].count(worker["gateway_agent_id"]) == 1
                assert (Path(ensured[-1][2]) / "SOUL.md").exists()

            # The same change again: every agent is already there, so nothing is created.
            status, again = await api(hub, "POST", "/api/v1/rollouts", change)
            assert status == 201, again
            rerun = await wait_for(
                lambda: rollout_state(hub, again["id"], "completed", "halted"),
                timeout_s=60,
                what="rerun finished",
            )
            assert rerun["status"] == "completed", rerun
            assert states(rerun) == [["skipped"], ["skipped", "skipped"]]
            assert "already there" in rerun["waves"][0]["gateways"][0]["reason"]
            for host in hosts:
                assert [w["id"] for w in await workers(hub, host)] == [created[host.name]]

            # A second main agent: the gateways have one; the canary fails and halts.
            status, clash = await api(
                hub, "POST", "/api/v1/rollouts", agents_rollout({"name": "Other Main"})
            )
            assert status == 201, clash
            halted = await wait_for(
                lambda: rollout_state(hub, clash["id"], "halted"), timeout_s=60, what="halted"
            )
            (failed,) = halted["waves"][0]["gateways"]
            assert failed["state"] == "failed" and "already a main agent" in failed["reason"]
            assert states(halted)[1] == ["pending", "pending"]
            status, _ = await api(hub, "POST", f"/api/v1/rollouts/{clash['id']}/abort")
            assert status == 200

            # Rollback removes the workers the first rollout created, and only them.
            status, _ = await api(hub, "POST", f"/api/v1/rollouts/{rollout['id']}/rollback")
            assert status == 200
            await wait_for(
                lambda: rollout_state(hub, rollout["id"], "rolled_back"),
                timeout_s=60,
                what="rolled back",
            )
            for host in hosts:
                await wait_for(
                    lambda h=host: _gone(hub, created[h.name]), timeout_s=60, what="removed"
                )
                removed = [c for c in host.gateway.calls if c[0] == "remove_agent"]
                assert len(removed) == 1 and "mc-" + created[host.name] in removed[0][1]
                assert host.agent is not None
                _, main = await api(hub, "GET", f"/api/v1/agents/{host.agent['id']}")
                assert main["status"] == "online"
    finally:
        if running:
            await hub.stop()


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def _gone(hub: Hub, agent_id: str) -> bool:
    status, _ = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    return status == 404


async def test_agents_changes_are_checked_before_any_wave(tmp_path: Path) -> None:
    hub = Hub(tls_config(tmp_path / "hub"))
    await hub.start()
    try:
        await fleet_token(hub, uses=1)
        for agents, loc, says in [
            ([], "agents", "at least 1"),
            ([{"name": "w", "board_id": "b"}], "agents.0", "name the board with `board`"),
            ([{"name": "w", "gateway_id": "g"}], "agents.0", "choose gateways with the selector"),
            ([{"name": "m", "board": "Ops", "is_gateway_main": True}], "agents.0", "board null"),
            ([{"name": "l", "is_board_lead": True}], "agents.0", "name it with `board`"),
            ([{"name": "w", "board": "ops", "extra": 1}], "extra", "Extra inputs"),
            ([{"name": "a"}, {"name": "b"}], "change", "one main agent"),
            ([{"name": "a", "board": "x"}, {"name": "A", "board": "X"}], "change", "twice"),
        ]:
            status, body = await api(hub, "POST", "/api/v1/rollouts", agents_rollout(*agents))
            assert status == 422, (agents, body)
            detail = " ".join(
                ".".join(map(str, d["loc"])) + ": " + d["msg"] for d in body["detail"]
            )
            assert loc in detail and says in detail, (agents, body)
    finally:
        await hub.stop()
