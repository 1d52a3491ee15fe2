"""Fleet rollouts for real: a hub over mutual TLS, several enrolled sidecars, their files.

Hosts enroll with one labelled fleet token; a selector picks them; a rollout changes
their main agents' SOUL.md in waves. The gate reads what the hub learns through the
link (applied generations, check-ins from the wake runs), so a canary whose agents never
check in halts the rollout before any other gateway is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from hub.app import Hub
from sidecar.app import Sidecar
from sidecar.gateway import RunState
from sidecar.link.enrollment import enroll, read_hub_link
from tests.support import RecordingGateway, api, fast_backoff, hub_config, sidecar_config, wait_for

NEW_SOUL = "# Soul\n\nYou are the fleet's careful main agent, version 2.\n"


@dataclass
class Host:
    index: int
    gateway_id: str
    state_dir: Path
    sidecar: Sidecar
    gateway: RecordingGateway
    agent: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"host-{self.index:02d}"

    def soul_sha256(self) -> str:
        assert self.agent is not None
        path = self.workspace / "SOUL.md"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""

    @property
    def workspace(self) -> Path:
        assert self.agent is not None
        return self.state_dir / "ws" / f"workspace-{self.agent['gateway_agent_id']}"


def tls_config(data_dir: Path, link_port: int = 0, http_port: int = 0):
    return dataclasses.replace(
        hub_config(data_dir, link_port=link_port, http_port=http_port), insecure_dev=False
    )


@asynccontextmanager
async def fleet(hub: Hub, tmp_path: Path, count: int, token: str) -> AsyncIterator[list[Host]]:
    """`count` hosts enrolled with `token`, each a started sidecar with its own state,
    workspaces and in-memory gateway, named host-00.. on the hub, each with a main agent
    that has checked in."""
    assert hub.addresses is not None and hub.addresses.enroll is not None
    hosts: list[Host] = []
    async with AsyncExitStack() as stack:
        for index in range(count):
            state = tmp_path / f"host-{index:02d}"
            enrolled = await enroll(hub.addresses.enroll, token, state)
            link = read_hub_link(state)
            assert link is not None
            config = dataclasses.replace(
                sidecar_config(state, link), insecure_dev=False, workspace_root=state / "ws"
            )
            gateway = RecordingGateway()
            sidecar = Sidecar(config, gateway=gateway, link_backoff=fast_backoff())
            await sidecar.start()
            stack.push_async_callback(sidecar.stop)
            hosts.append(Host(index, enrolled.gateway_id, state, sidecar, gateway))
        for host in hosts:
            await wait_for(lambda h=host: hub.registry.get(h.gateway_id), what="mTLS stream")
            status, _ = await api(
                hub, "PATCH", f"/api/v1/gateways/{host.gateway_id}", {"name": host.name}
            )
            assert status == 200
            status, host.agent = await api(
                hub, "POST", "/api/v1/agents", {"name": "main", "gateway_id": host.gateway_id}
            )
            assert status == 201, host.agent
        for host in hosts:
            await wait_for(lambda h=host: agent_online(hub, h), what=f"{host.name} main online")
        yield hosts


async def agent_online(hub: Hub, host: Host) -> bool:
    assert host.agent is not None
    _, agent = await api(hub, "GET", f"/api/v1/agents/{host.agent['id']}")
    return agent["status"] == "online" and host.soul_sha256() != ""


async def rollout_state(hub: Hub, rollout_id: str, *statuses: str) -> dict[str, Any] | None:
    _, body = await api(hub, "GET", f"/api/v1/rollouts/{rollout_id}")
    return body if body["status"] in statuses else None


def soul_rollout(**fields: Any) -> dict[str, Any]:
    return {
        "selector": "env=prod,region!=us",
        "change": {"kind": "templates", "soul_template": NEW_SOUL},
        "canary": 1,
        "waves": [50, 100],
        "gate_deadline_s": 3,
        **fields,
    }


async def fleet_token(hub: Hub, uses: int) -> str:
    status, token = await api(
        hub,
        "POST",
        "/api/v1/fleet/join-tokens",
        {"uses": uses, "labels": {"env": "prod", "region": "eu"}},
    )
    assert status == 201, token
    assert token["labels"] == {"env": "prod", "region": "eu"}
    return str(token["join_token"])


async def test_a_failing_canary_halts_the_rollout_and_rollback_restores_its_files(
    tmp_path: Path,
) -> None:
    hub = Hub(tls_config(tmp_path / "hub"))
    await hub.start()
    try:
        token = await fleet_token(hub, uses=5)
        _, tokens = await api(hub, "GET", "/api/v1/fleet/join-tokens")
        assert [t["active"] for t in tokens["items"]] == [True]
        async with fleet(hub, tmp_path, 4, token) as hosts:
            # Every host carries the token's labels; one is moved out of the selection.
            status, page = await api(hub, "GET", "/api/v1/gateways?selector=env=prod")
            assert status == 200 and page["total"] == 4
            assert {g["labels"]["region"] for g in page["items"]} == {"eu"}
            us = hosts[3]
            status, labels = await api(
                hub,
                "PATCH",
                f"/api/v1/gateways/{us.gateway_id}/labels",
                {"labels": {"region": "us"}},
            )
            assert status == 200 and labels["labels"] == {"env": "prod", "region": "us"}
            _, inventory = await api(hub, "GET", "/api/v1/fleet/inventory?selector=region=eu")
            assert inventory["total"] == 3 and inventory["connected"] == 3
            assert {g["agents_managed"] for g in inventory["gateways"]} == {1}
            assert all(g["certificate_expires_at"] for g in inventory["gateways"])

            canary, second, third = hosts[0], hosts[1], hosts[2]
            canary.gateway.run_outcome = RunState.ERROR  # its agent's wakes never check in
            before = {h.name: h.soul_sha256() for h in hosts}
            applies = {h.name: h.gateway.count("ensure_agent") for h in hosts}

            status, plan = await api(hub, "POST", "/api/v1/rollouts", soul_rollout(dry_run=True))
            assert status == 200 and plan["status"] == "dry_run"
            assert [[g["name"] for g in w["gateways"]] for w in plan["waves"]] == [
                ["host-00"],
                ["host-01"],
                ["host-02"],
            ]
            _, listed = await api(hub, "GET", "/api/v1/rollouts")
            assert listed["total"] == 0  # a dry run changes nothing

            status, rollout = await api(hub, "POST", "/api/v1/rollouts", soul_rollout())
            assert status == 201, rollout
            halted = await wait_for(
                lambda: rollout_state(hub, rollout["id"], "halted", "completed"),
                timeout_s=30,
                what="rollout halted",
            )
            assert halted["status"] == "halted"
            assert "wave 1 failed its health gate" in halted["reason"]
            wave1, wave2, wave3 = halted["waves"]
            assert wave1["gateways"][0]["state"] == "failed"
            assert "did not apply and check in within 3 s" in wave1["gateways"][0]["reason"]
            assert [wave2["state"], wave3["state"]] == ["pending", "pending"]
            assert canary.soul_sha256() != before["host-00"]  # the canary got the change
            for host in (second, third, us):  # nobody else was touched
                assert host.soul_sha256() == before[host.name]
                assert host.gateway.count("ensure_agent") == applies[host.name]
            assert "version 2" in (canary.workspace / "SOUL.md").read_text()

            status, conflict = await api(hub, "POST", f"/api/v1/rollouts/{rollout['id']}/resume")
            assert status == 409 and "rolled back or aborted" in conflict["detail"]
            status, _ = await api(hub, "POST", f"/api/v1/rollouts/{rollout['id']}/rollback")
            assert status == 200
            await wait_for(
                lambda: rollout_state(hub, rollout["id"], "rolled_back"),
                timeout_s=30,
                what="rolled back",
            )
            await wait_for(
                lambda: canary.soul_sha256() == before["host-00"],
                timeout_s=30,
                what="the canary's SOUL.md restored",
            )
            for host in (second, third, us):
                assert host.soul_sha256() == before[host.name]

            _, trail = await api(hub, "GET", "/api/v1/activity?kind=rollout.")
            kinds = [e["kind"] for e in reversed(trail["items"])]
            assert kinds[0] == "rollout.created" and "rollout.halted" in kinds
            assert kinds.index("rollout.gateway.failed") < kinds.index("rollout.halted")
            assert kinds[-1] == "rollout.rolled_back"
    finally:
        await hub.stop()


async def test_a_good_rollout_goes_wave_by_wave_and_survives_a_hub_restart(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    config = tls_config(tmp_path / "hub", link_port=free_port(), http_port=free_port())
    hub = Hub(config)
    await hub.start()
    stopped = False
    try:
        token = await fleet_token(hub, uses=3)
        async with fleet(hub, tmp_path, 3, token) as hosts:
            rest = hosts[1:]
            for host in rest:  # wave 2's wakes end in error: only heartbeats will answer
                host.gateway.run_outcome = RunState.ERROR
            before = {h.name: h.soul_sha256() for h in hosts}
            status, rollout = await api(
                hub, "POST", "/api/v1/rollouts", soul_rollout(waves=[100], gate_deadline_s=60)
            )
            assert status == 201 and rollout["wave_count"] == 2

            async def wave2_applied() -> bool:
                _, body = await api(hub, "GET", f"/api/v1/rollouts/{rollout['id']}")
                return [g["state"] for g in body["waves"][1]["gateways"]] == ["applied"] * 2

            await wait_for(wave2_applied, timeout_s=30, what="wave 2 applied")
            _, mid = await api(hub, "GET", f"/api/v1/rollouts/{rollout['id']}")
            assert mid["status"] == "running" and mid["current_wave"] == 2
            assert mid["waves"][0]["gateways"][0]["state"] == "healthy"
            for host in hosts:  # created, then the rollout: two applies, files first
                await wait_for(
                    lambda h=host: h.gateway.count("ensure_agent") == 2, what=f"{host.name} applied"
                )
                assert host.soul_sha256() != before[host.name]
            applies = {h.name: h.gateway.count("ensure_agent") for h in hosts}

            await hub.stop()  # mid-rollout: wave 2 waits on its gate
            stopped = True
            # While the hub is down, wave 2's agents check in through their sidecars,
            # which keep the heartbeats and relay them once the hub is back.
            async with aiohttp.ClientSession() as http:
                for host in rest:
                    token_file = host.workspace / ".mc-agent-token"
                    async with http.post(
                        host.sidecar.agent_api.url + "/api/v1/agent/heartbeat",
                        headers={"X-Agent-Token": token_file.read_text().strip()},
                    ) as response:
                        assert response.status in (200, 202), await response.text()

            hub = Hub(config)
            await hub.start()
            stopped = False
            done = await wait_for(
                lambda: rollout_state(hub, rollout["id"], "completed", "halted"),
                timeout_s=60,
                what="rollout continued after the restart",
            )
            assert done["status"] == "completed", [
                (g["name"], g["state"], g["reason"]) for w in done["waves"] for g in w["gateways"]
            ]
            assert [g["state"] for w in done["waves"] for g in w["gateways"]] == ["healthy"] * 3
            for host in hosts:  # nothing was applied twice across the restart
                assert host.gateway.count("ensure_agent") == applies[host.name]
                assert "version 2" in (host.workspace / "SOUL.md").read_text()
    finally:
        if not stopped:
            await hub.stop()


async def test_rollout_requests_are_checked_and_commands_follow_the_state(
    hub: Hub, tmp_path: Path
) -> None:
    from tests.support import connected_sidecar

    async with connected_sidecar(hub, tmp_path, "gw-a") as (_, gateway):
        status, labels = await api(
            hub, "PUT", "/api/v1/gateways/gw-a/labels", {"labels": {"env": "dev", "tier": "1"}}
        )
        assert status == 200 and labels["labels"] == {"env": "dev", "tier": "1"}
        status, labels = await api(
            hub, "PATCH", "/api/v1/gateways/gw-a/labels", {"labels": {"tier": None}}
        )
        assert labels["labels"] == {"env": "dev"}
        status, body = await api(
            hub, "PUT", "/api/v1/gateways/gw-a/labels", {"labels": {"env": "bad value"}}
        )
        assert status == 422 and "is not valid" in str(body["detail"])
        status, body = await api(hub, "PUT", "/api/v1/gateways/nope/labels", {"labels": {}})
        assert status == 404

        bad = [
            ({"selector": "env=", "change": {"kind": "reapply"}}, "selector"),
            ({"selector": "env=prod", "change": {"kind": "reapply"}}, "picks no gateway"),
            ({"change": {"kind": "reboot"}}, "change"),
            ({"change": {"kind": "reapply"}, "waves": [50, 10]}, "grow"),
            ({"change": {"kind": "reapply"}, "colour": "red"}, "unknown field 'colour'"),
            ({"change": {"kind": "heartbeat", "heartbeat_config": {"every": "soon"}}}, "every"),
        ]
        for body, fragment in bad:
            status, answer = await api(hub, "POST", "/api/v1/rollouts", body)
            assert status == 422, (body, answer)
            assert fragment in str(answer["detail"]), (fragment, answer)

        _, agent = await api(hub, "POST", "/api/v1/agents", {"name": "m", "gateway_id": "gw-a"})
        await wait_for(lambda: gateway.count("ensure_agent") == 1, what="main agent applied")
        gateway.run_outcome = RunState.ERROR  # the gate keeps waiting: commands can be tried
        change = {"kind": "heartbeat", "heartbeat_config": {"every": "15m"}}
        status, rollout = await api(
            hub,
            "POST",
            "/api/v1/rollouts",
            {"selector": "env=dev", "change": change, "gate_deadline_s": 600},
        )
        assert status == 201 and rollout["gateways"] == 1
        path = f"/api/v1/rollouts/{rollout['id']}"
        status, again = await api(
            hub, "POST", "/api/v1/rollouts", {"selector": "env=dev", "change": change}
        )
        assert status == 409 and rollout["id"] in again["detail"]  # one rollout per gateway
        status, paused = await api(hub, "POST", path + "/pause")
        assert status == 200 and paused["status"] == "paused"
        status, answer = await api(hub, "POST", path + "/pause")
        assert status == 409 and "resume it" in answer["detail"]
        status, resumed = await api(hub, "POST", path + "/resume")
        assert resumed["status"] == "running"
        await wait_for(lambda: rollout_state(hub, rollout["id"], "running"), what="still running")
        _, agent_now = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
        assert agent_now["heartbeat_config"]["every"] == "15m"
        status, aborted = await api(hub, "POST", path + "/abort")
        assert aborted["status"] == "aborted" and aborted["finished_at"]
        status, answer = await api(hub, "POST", path + "/abort")
        assert status == 409
        status, _ = await api(hub, "POST", path + "/rollback")
        assert status == 200
        await wait_for(lambda: rollout_state(hub, rollout["id"], "rolled_back"), what="undone")
        _, agent_now = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
        assert agent_now["heartbeat_config"]["every"] != "15m"  # the previous cadence again
        status, _ = await api(hub, "GET", "/api/v1/rollouts/nope")
        assert status == 404
