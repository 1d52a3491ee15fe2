"""Drift, for real: a file edited by hand on a gateway host is found fleet-wide from the
sidecar's report, and one call heals it through a rollout."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

from hub.app import Hub
from missioncontrol.netaddr import HostPort
from sidecar.app import Sidecar
from tests.integration.test_adoption import openclaw_json
from tests.support import (
    RecordingGateway,
    api,
    fast_backoff,
    sidecar_config,
    sidecar_connected,
    wait_for,
)


async def rollout_done(hub: Hub, rollout_id: str) -> dict | None:
    _, body = await api(hub, "GET", f"/api/v1/rollouts/{rollout_id}")
    return body if body["status"] in ("completed", "halted") else None


def host(tmp_path: Path, hub: Hub, name: str, api_port: int) -> Sidecar:
    """A sidecar whose agent API keeps its port across restarts (a new address would make
    the hub render the agents' files again, which would heal the drift by itself)."""
    assert hub.addresses is not None
    config = sidecar_config(
        tmp_path / name, hub.addresses.link, gateway_id=name, workspace_root=tmp_path / name
    )
    config = dataclasses.replace(config, agent_api_listen=HostPort("127.0.0.1", api_port))
    return Sidecar(config, gateway=RecordingGateway(), link_backoff=fast_backoff())


async def test_a_hand_edited_file_is_listed_as_drift_and_healed_by_a_rollout(
    hub: Hub, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    ports = {"gw-1": free_port(), "gw-2": free_port()}
    sidecars = []
    try:
        for name in ("gw-1", "gw-2"):
            # The gateway's own config has the main agent's entry (the in-memory gateway
            # of these tests does not write it).
            openclaw_json(
                tmp_path / name / "openclaw" / "openclaw.json",
                {
                    f"mc-gateway-{name}": {
                        "workspace": str(tmp_path / name / f"workspace-mc-gateway-{name}")
                    }
                },
            )
            sidecar = host(tmp_path, hub, name, ports[name])
            await sidecar.start()
            sidecars.append(sidecar)
            await wait_for(lambda n=name: sidecar_connected(hub, n), what=f"{name} connected")
            await api(hub, "PUT", f"/api/v1/gateways/{name}/labels", {"labels": {"env": "prod"}})
        agents = {}
        for name in ("gw-1", "gw-2"):
            _, agents[name] = await api(
                hub, "POST", "/api/v1/agents", {"name": "main", "gateway_id": name}
            )

        async def all_online() -> bool:
            for agent in agents.values():
                _, row = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
                if row["status"] != "online":
                    return False
            return True

        await wait_for(all_online, timeout_s=30, what="main agents online")
        _, clean = await api(hub, "GET", "/api/v1/fleet/drift")
        assert clean["drifted"] == [] and clean["checked"] == 2
        status, answer = await api(hub, "POST", "/api/v1/fleet/drift/reapply", {})
        assert status == 409 and "nothing to re-apply" in answer["detail"]

        soul = tmp_path / "gw-2" / f"workspace-{agents['gw-2']['gateway_agent_id']}" / "SOUL.md"
        rendered = hashlib.sha256(soul.read_bytes()).hexdigest()
        soul.write_text("# Soul\n\nEdited by hand on the host.\n")
        # The sidecar reports its files when it (re)connects: its Hello's inventory.
        await sidecars[1].stop()
        sidecars[1] = host(tmp_path, hub, "gw-2", ports["gw-2"])
        await sidecars[1].start()

        async def drifted() -> dict | None:
            _, body = await api(hub, "GET", "/api/v1/fleet/drift?selector=env=prod")
            return body if [d["files"] for d in body["drifted"]] == [["SOUL.md"]] else None

        report = await wait_for(drifted, timeout_s=30, what="drift reported")
        [entry] = report["drifted"]
        assert entry["gateway_id"] == "gw-2" and entry["files"] == ["SOUL.md"]
        assert entry["agent_id"] == agents["gw-2"]["id"] and not entry["entry_missing"]

        status, plan = await api(hub, "POST", "/api/v1/fleet/drift/reapply", {"dry_run": True})
        assert status == 200 and [
            g["gateway_id"] for w in plan["waves"] for g in w["gateways"]
        ] == ["gw-2"]
        status, rollout = await api(
            hub, "POST", "/api/v1/fleet/drift/reapply", {"gate_deadline_s": 60}
        )
        assert status == 201 and rollout["change"]["kind"] == "reapply"
        done = await wait_for(
            lambda: rollout_done(hub, rollout["id"]), timeout_s=60, what="heal rollout done"
        )
        assert done["status"] == "completed", done
        assert hashlib.sha256(soul.read_bytes()).hexdigest() == rendered  # healed on disk
        _, after = await api(hub, "GET", "/api/v1/fleet/drift")
        assert after["drifted"] == [] and after["checked"] == 2
        status, answer = await api(hub, "POST", f"/api/v1/rollouts/{rollout['id']}/rollback")
        assert status == 409 and "no previous generation" in answer["detail"]
    finally:
        for sidecar in sidecars:
            await sidecar.stop()
