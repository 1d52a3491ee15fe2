"""A rollout across fifty real sidecars under one hub (dev-mode link on loopback): the
waves go in order, each starting only after the one before passed its gate."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import pytest

from hub.app import Hub
from tests.support import api, make_sidecar, sidecar_connected, wait_for

GATEWAYS = 50

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_fifty_gateways_take_a_cadence_wave_by_wave(hub: Hub, tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        names = [f"gw-{i:02d}" for i in range(GATEWAYS)]
        for name in names:
            sidecar = make_sidecar(tmp_path, hub, gateway_id=name, name=name, workspaces=name)
            await sidecar.start()
            stack.push_async_callback(sidecar.stop)
        for name in names:
            await wait_for(lambda n=name: sidecar_connected(hub, n), timeout_s=60, what=name)
            labels = {"env": "prod", "ring": "canary" if name == "gw-00" else "main"}
            await api(hub, "PUT", f"/api/v1/gateways/{name}/labels", {"labels": labels})
            await api(hub, "PATCH", f"/api/v1/gateways/{name}", {"name": name})
            status, _ = await api(hub, "POST", "/api/v1/agents", {"name": "m", "gateway_id": name})
            assert status == 201

        async def online() -> bool:
            _, page = await api(hub, "GET", "/api/v1/agents?limit=200")
            return sum(1 for a in page["items"] if a["status"] == "online") == GATEWAYS

        await wait_for(online, timeout_s=120, what="every main agent online")
        status, rollout = await api(
            hub,
            "POST",
            "/api/v1/rollouts",
            {
                "selector": "env=prod",
                "change": {"kind": "heartbeat", "heartbeat_config": {"every": "30m"}},
                "gate_deadline_s": 120,
            },
        )
        assert status == 201, rollout
        assert [w["size"] for w in rollout["waves"]] == [1, 4, 20, 25]
        assert rollout["waves"][0]["gateways"][0]["gateway_id"] == "gw-00"

        async def finished() -> dict | None:
            _, body = await api(hub, "GET", f"/api/v1/rollouts/{rollout['id']}")
            return body if body["status"] in ("completed", "halted") else None

        done = await wait_for(finished, timeout_s=300, what="rollout finished")
        assert done["status"] == "completed", done["reason"]
        assert done["counts"]["healthy"] == GATEWAYS
        for before, after in zip(done["waves"], done["waves"][1:], strict=False):
            passed = max(at(g["decided_at"]) for g in before["gateways"])
            started = min(at(g["applied_at"]) for g in after["gateways"])
            assert started >= passed, (before["index"], after["index"])
        _, page = await api(hub, "GET", "/api/v1/agents?limit=200")
        assert {a["heartbeat_config"]["every"] for a in page["items"]} == {"30m"}
