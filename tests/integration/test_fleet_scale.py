"""A rollout across fifty real sidecars under one hub (dev-mode link on loopback): the
waves go in order, each starting only after the one before passed its gate. A wave's
verdicts are written together, however many gateways it has."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.fleet import rollouts as ro
from hub.fleet.store import gateway_facts_in, targets_in
from hub.store.database import Database
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


class CountingWrites:
    """The driver's database, counting the writes it asks for."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writes = 0

    async def write(self, fn: Callable[..., Any], **options: Any) -> Any:
        self.writes += 1
        return await self.db.write(fn, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


async def test_a_waves_verdicts_are_one_write_however_many_gateways(
    hub: Hub, tmp_path: Path
) -> None:
    # One paced group commit per gateway, awaited in turn, would hold a wave of n
    # gateways for n commit intervals. The test takes the driver's passes itself.
    await hub.rollouts.stop()
    wave = 8
    async with AsyncExitStack() as stack:
        names = [f"gw-{i:02d}" for i in range(wave + 1)]
        for name in names:
            sidecar = make_sidecar(tmp_path, hub, gateway_id=name, name=name, workspaces=name)
            await sidecar.start()
            stack.push_async_callback(sidecar.stop)
        for name in names:
            await wait_for(lambda n=name: sidecar_connected(hub, n), timeout_s=60, what=name)
            await api(hub, "PATCH", f"/api/v1/gateways/{name}", {"name": name})
            status, _ = await api(hub, "POST", "/api/v1/agents", {"name": "m", "gateway_id": name})
            assert status == 201

        async def online() -> bool:
            _, page = await api(hub, "GET", "/api/v1/agents?limit=50")
            return sum(1 for a in page["items"] if a["status"] == "online") == len(names)

        await wait_for(online, timeout_s=120, what="every main agent online")
        status, rollout = await api(
            hub,
            "POST",
            "/api/v1/rollouts",
            {
                "change": {"kind": "heartbeat", "heartbeat_config": {"every": "30m"}},
                "canary": 1,
                "waves": [100],
            },
        )
        assert status == 201, rollout
        assert [w["size"] for w in rollout["waves"]] == [1, wave]
        rollout_id = rollout["id"]

        async def all_answered(index: int) -> bool:
            def op(conn: Any) -> bool:
                applied = [
                    t
                    for t in targets_in(conn, rollout_id)
                    if t.wave == index and t.state is ro.TargetState.APPLIED
                ]
                facts = gateway_facts_in(conn, applied)
                gate = ro.Gate()
                return len(applied) == (1 if index == 0 else wave) and all(
                    ro.gate_verdict(t.decision_view(), facts[t.gateway_id], gate, 1e12, 0)
                    == (ro.TargetState.HEALTHY, None)
                    for t in applied
                )

            return bool(await hub.db.read(op))

        async def current_wave() -> int:
            return (await hub.rollouts.read(rollout_id)).rollout.current_wave

        await hub.rollouts.advance(rollout_id)  # the canary applied
        await wait_for(lambda: all_answered(0), timeout_s=60, what="the canary's check-in")
        while await current_wave() == 0:  # its verdict, then the next wave started
            await hub.rollouts.advance(rollout_id)
        await hub.rollouts.advance(rollout_id)  # the wave applied
        await wait_for(lambda: all_answered(1), timeout_s=60, what="the wave's check-ins")

        counting = CountingWrites(hub.db)
        hub.rollouts.db = counting  # type: ignore[assignment]
        await hub.rollouts.advance(rollout_id)
        done = await hub.rollouts.read(rollout_id)
        assert done.rollout.status is ro.Status.COMPLETED, done.rollout.reason
        decided = {t.decided_at for t in done.targets if t.wave == 1}
        assert len(decided) == 1 and None not in decided
        assert all(t.state is ro.TargetState.HEALTHY for t in done.targets)
        assert counting.writes == 2  # the wave's verdicts, then the rollout completed
