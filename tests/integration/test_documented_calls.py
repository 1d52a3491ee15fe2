"""Mission Control's documented requests, sent as its operators copy them, through a real
hub and (where a gateway is involved) a real sidecar on loopback.

Each either works as Mission Control documents it, or, where the design differs, is
refused with an error that names the difference and the call to use instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.app import Hub
from tests.support import api, connected_sidecar, make_sidecar, wait_for

MC_AGENT = {
    "name": "DevOps Engineer",
    "is_board_lead": False,
    "identity_profile": {
        "role": "DevOps Engineer",
        "expertise": ["Kubernetes", "CI/CD"],
        "tone": "professional",
        "communication_style": "Proactive",
    },
    "heartbeat_config": {"enabled": True, "intervalSeconds": 300},
}


async def gateway_with_root(hub: Hub, root: Path | str = "/srv/openclaw") -> dict[str, Any]:
    status, gateway = await api(
        hub, "POST", "/api/v1/gateways", {"name": "host-1", "workspace_root": str(root)}
    )
    assert status == 201, gateway
    return gateway


async def board_on(hub: Hub, gateway_id: str, name: str = "Ops") -> dict[str, Any]:
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": name, "gateway_id": gateway_id}
    )
    assert status == 201, board
    return board


async def agent_row(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, agent = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, agent
    return agent


# ------------------------------------------------------------------ gateways


async def test_gateway_create_takes_a_workspace_root(hub: Hub) -> None:
    gateway = await gateway_with_root(hub)
    assert gateway["workspace_root"] == "/srv/openclaw"
    assert gateway["workspace_root_problem"] is None
    assert gateway["connected"] is False
    assert gateway["enroll_command"]  # what to run on the host next

    status, body = await api(
        hub, "POST", "/api/v1/gateways", {"name": "x", "workspace_root": "srv/openclaw"}
    )
    assert status == 422 and "absolute" in json.dumps(body["detail"])
    status, body = await api(
        hub, "POST", "/api/v1/gateways", {"name": "x", "workspace_root": "/srv/../etc"}
    )
    assert status == 422 and "'..'" in json.dumps(body["detail"])


async def test_gateway_url_and_token_are_refused_naming_why(hub: Hub) -> None:
    for field, value, why in (
        ("url", "ws://gateway.example:18789", "dials out"),
        ("token", "s3cr3t-gateway-token", "never leaves its host"),
        ("allow_insecure_tls", True, "loopback"),
        ("disable_device_pairing", True, "pairing"),
    ):
        status, body = await api(
            hub,
            "POST",
            "/api/v1/gateways",
            {"name": "host-1", "workspace_root": "/srv/openclaw", field: value},
        )
        assert status == 422, body
        assert body["request_id"]
        (error,) = body["detail"]
        assert error["loc"] == [field]
        assert why in error["msg"] and f"{field} has no meaning here" in error["msg"]
        assert "s3cr3t" not in json.dumps(body)  # a secret is never echoed
    # Mission Control clients that send the empty defaults are not refused.
    status, _ = await api(
        hub,
        "POST",
        "/api/v1/gateways",
        {"name": "host-2", "token": None, "allow_insecure_tls": False},
    )
    assert status == 201


# ------------------------------------------------- before the first connection


async def test_boards_and_agents_wait_in_the_outbox_until_the_sidecar_connects(
    hub: Hub, tmp_path: Path
) -> None:
    root = tmp_path / "srv-openclaw"
    gateway = await gateway_with_root(hub, root)
    board = await board_on(hub, gateway["id"])
    status, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    assert status == 201, agent
    assert agent["status"] == "provisioning"
    assert agent["status_reason"] == "sidecar_disconnected"
    status, main = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Gateway Agent", "gateway_id": gateway["id"], "board_id": None},
    )
    assert status == 201 and main["is_gateway_main"] and main["board_id"] is None

    # The host comes up: its sidecar, started without --workspace-root, writes there.
    sidecar = make_sidecar(
        tmp_path, hub, gateway_id=gateway["id"], workspaces="elsewhere", follows_hub=True
    )
    await sidecar.start()
    try:
        # The files first name the default agent API address (all the hub knew), then,
        # rendered again after the Hello, the address the sidecar really listens on.
        agents_md = root / f"workspace-{agent['gateway_agent_id']}" / "AGENTS.md"
        await wait_for(
            lambda: agents_md.exists() and sidecar.agent_api_url in agents_md.read_text(),
            what="files under the declared root, naming the sidecar's address",
        )
        assert "every 5m" in agents_md.read_text()
        await wait_for(lambda: _applied(hub, agent["id"]), what="the queued apply confirmed")
        _, read = await api(hub, "GET", f"/api/v1/gateways/{gateway['id']}")
        assert read["workspace_root"] == str(root)
        assert read["workspace_root_reported"] == str(root)
        assert read["workspace_root_problem"] is None
        assert (tmp_path / "sidecar" / "hub-workspace-root").read_text() == str(root)
    finally:
        await sidecar.stop()


async def _applied(hub: Hub, agent_id: str) -> bool:
    agent = await agent_row(hub, agent_id)
    return agent["applied_generation"] >= 1 and agent["status_reason"] is None


async def test_a_sidecar_with_another_root_is_a_gateway_problem_with_the_fix(
    hub: Hub, tmp_path: Path
) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "declared")
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="own"):
        _, read = await api(hub, "GET", f"/api/v1/gateways/{gateway['id']}")
        assert read["workspace_root"] == str(tmp_path / "declared")
        assert read["workspace_root_reported"] == str(tmp_path / "own")
        problem = read["workspace_root_problem"]
        assert f"--workspace-root {tmp_path / 'declared'}" in problem
        assert "install-service" in problem and "PATCH /api/v1/gateways" in problem
        events = await hub.store.events(gateway["id"], "gateway.workspace_root.mismatch")
        assert events and events[-1]["detail"]["reported"] == str(tmp_path / "own")

        # The fix the problem names, while no agent was applied: adopt the sidecar's root.
        status, read = await api(
            hub,
            "PATCH",
            f"/api/v1/gateways/{gateway['id']}",
            {"workspace_root": str(tmp_path / "own")},
        )
        assert status == 200 and read["workspace_root_problem"] is None
        board = await board_on(hub, gateway["id"])
        _, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
        await wait_for(lambda: _applied(hub, agent["id"]), what="agent applied")
        # Now its workspaces exist there: another root would leave them behind.
        status, body = await api(
            hub, "PATCH", f"/api/v1/gateways/{gateway['id']}", {"workspace_root": "/srv/x"}
        )
        assert status == 409 and "leave them behind" in body["detail"]


async def test_without_a_root_an_agent_waits_for_the_sidecar_and_says_how_to_fix(
    hub: Hub,
) -> None:
    _, gateway = await api(hub, "POST", "/api/v1/gateways", {"name": "bare"})
    board = await board_on(hub, gateway["id"])
    status, body = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    assert status == 422
    assert '"workspace_root"' in body["detail"] and "start its sidecar" in body["detail"]


# -------------------------------------------------------------------- agents


async def test_agent_create_takes_mission_controls_body(hub: Hub, tmp_path: Path) -> None:
    gateway = await gateway_with_root(hub)
    board = await board_on(hub, gateway["id"])
    status, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    assert status == 201, agent
    assert agent["name"] == "DevOps Engineer" and not agent["is_board_lead"]
    assert agent["identity_profile"]["expertise"] == ["Kubernetes", "CI/CD"]
    assert agent["heartbeat_config"] == {
        "every": "5m",
        "target": "none",
        "includeReasoning": False,
        "enabled": True,
        "intervalSeconds": 300,
    }

    # OpenClaw's shape, and "enabled: false" (no heartbeat job).
    status, openclaw = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {
            "name": "Researcher",
            "board_id": board["id"],
            "heartbeat_config": {"every": "15m", "target": "last", "includeReasoning": True},
        },
    )
    assert status == 201
    assert openclaw["heartbeat_config"]["intervalSeconds"] == 900
    assert openclaw["heartbeat_config"]["target"] == "last"
    status, quiet = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Quiet", "board_id": board["id"], "heartbeat_config": {"enabled": False}},
    )
    assert status == 201
    assert quiet["heartbeat_config"]["every"] == "0m" and not quiet["heartbeat_config"]["enabled"]
    status, body = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {
            "name": "Confused",
            "board_id": board["id"],
            "heartbeat_config": {"every": "10m", "intervalSeconds": 300},
        },
    )
    assert status == 422 and "disagree" in body["detail"]

    # The gateway main agent, as Mission Control creates it.
    status, main = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "host-1 Gateway Agent", "gateway_id": gateway["id"], "board_id": None},
    )
    assert status == 201, main
    assert main["is_gateway_main"] and main["gateway_agent_id"] == f"mc-gateway-{gateway['id']}"
    status, body = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Second Main", "gateway_id": gateway["id"], "board_id": None},
    )
    assert status == 409 and main["id"] in body["detail"]


async def test_a_taken_name_on_a_board_is_a_409_naming_its_holder(hub: Hub) -> None:
    gateway = await gateway_with_root(hub)
    board = await board_on(hub, gateway["id"])
    other = await board_on(hub, gateway["id"], "Other")
    _, first = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    status, body = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {**MC_AGENT, "name": "devops engineer", "board_id": board["id"]},
    )
    assert status == 409, body
    assert first["id"] in body["detail"] and "'DevOps Engineer'" in body["detail"]
    assert body["request_id"]
    # Another board may have its own DevOps Engineer.
    status, second = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": other["id"]})
    assert status == 201
    # Renaming or moving into a taken name is refused the same way.
    status, body = await api(
        hub, "PATCH", f"/api/v1/agents/{second['id']}", {"board_id": board["id"]}
    )
    assert status == 409 and first["id"] in body["detail"]


async def test_agent_update_reprovisions_in_the_same_transaction(hub: Hub, tmp_path: Path) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    other = await board_on(hub, gateway["id"], "Other")
    _, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws"):
        await wait_for(lambda: _applied(hub, agent["id"]), what="agent applied")
        workspace = tmp_path / "ws" / f"workspace-{agent['gateway_agent_id']}"
        generation = (await agent_row(hub, agent["id"]))["lifecycle_generation"]

        status, updated = await api(
            hub,
            "PATCH",
            f"/api/v1/agents/{agent['id']}",
            {
                "name": "Platform Engineer",
                "identity_profile": {"role": "Platform Engineer", "emoji": "🛠"},
                "heartbeat_config": {"every": "20m"},
                "soul_template": "# SOUL\n\nYou are {{ agent_name }}, calm under load.\n",
                "board_id": other["id"],
            },
        )
        assert status == 200, updated
        assert updated["lifecycle_generation"] == generation + 1
        assert updated["name"] == "Platform Engineer" and updated["board_id"] == other["id"]
        assert updated["heartbeat_config"]["intervalSeconds"] == 1200
        assert updated["soul_template"].startswith("# SOUL")
        # The command that rewrites the files committed with the row.
        commands = await hub.db.read(
            lambda conn: conn.execute(
                "SELECT generation FROM commands WHERE agent_id = ? AND kind = 'apply_agent'",
                (agent["gateway_agent_id"],),
            ).fetchall()
        )
        assert max(r[0] for r in commands) == generation + 1
        await wait_for(
            lambda: "calm under load" in (workspace / "SOUL.md").read_text(),
            what="SOUL.md rewritten",
        )
        assert '"Other"' in (workspace / "AGENTS.md").read_text()
        assert "every 20m" in (workspace / "AGENTS.md").read_text()

        # Nothing changed: nothing happens; ?force=true reapplies anyway.
        status, same = await api(
            hub, "PATCH", f"/api/v1/agents/{agent['id']}", {"name": "Platform Engineer"}
        )
        assert status == 200 and same["lifecycle_generation"] == generation + 1
        status, forced = await api(hub, "PATCH", f"/api/v1/agents/{agent['id']}?force=true", {})
        assert status == 200 and forced["lifecycle_generation"] == generation + 2

        # Status stays the lifecycle's.
        status, body = await api(
            hub, "PATCH", f"/api/v1/agents/{agent['id']}", {"status": "online"}
        )
        assert status == 403 and "lifecycle" in body["detail"]
        # What the reference does not allow, with the way that works.
        _, lead = await api(
            hub,
            "POST",
            "/api/v1/agents",
            {"name": "Lead", "board_id": board["id"], "is_board_lead": True},
        )
        status, body = await api(
            hub, "PATCH", f"/api/v1/agents/{lead['id']}", {"board_id": other["id"]}
        )
        assert status == 422 and "lead-<board>" in body["detail"]
        status, body = await api(
            hub, "PATCH", f"/api/v1/agents/{agent['id']}", {"is_gateway_main": True}
        )
        assert status == 422 and "create an agent of the other kind" in body["detail"]
        status, body = await api(
            hub,
            "PATCH",
            f"/api/v1/agents/{agent['id']}",
            {"soul_template": "{% for x in y %}{% endfor %}"},
        )
        assert status == 422 and "soul_template" in body["detail"]


# ----------------------------------------------------------- heartbeat words


async def agent_call(
    sidecar_url: str, token: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One call an agent makes to its local sidecar (agent API), with its token."""
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(
            method, f"{sidecar_url}{path}", json=body, headers={"X-Agent-Token": token}
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


def token_of(workspace_root: Path, agent: dict[str, Any]) -> str:
    path = workspace_root / f"workspace-{agent['gateway_agent_id']}" / ".mc-agent-token"
    return path.read_text().strip()


async def test_heartbeat_status_words_are_kept_beside_the_lifecycle_status(
    hub: Hub, tmp_path: Path
) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    _, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    _, task = await api(
        hub, "POST", f"/api/v1/boards/{board['id']}/tasks", {"title": "Upgrade the cluster"}
    )
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (sidecar, _):
        await wait_for(lambda: _applied(hub, agent["id"]), what="agent applied")
        token = token_of(tmp_path / "ws", agent)
        url = sidecar.agent_api_url
        status, _ = await agent_call(
            url,
            token,
            "POST",
            "/api/v1/agent/heartbeat",
            {"status": "active", "current_task_id": task["id"]},
        )
        assert status == 202

        async def shows(work_state: str) -> dict[str, Any] | None:
            read = await agent_row(hub, agent["id"])
            return read if read["work_state"] == work_state else None

        read = await wait_for(lambda: shows("active"), what="work state active")
        assert read["status"] == "online"  # the lifecycle's, from the check-in
        assert read["reported_status"] == "active" and read["current_task_id"] == task["id"]

        await agent_call(url, token, "POST", "/api/v1/agent/heartbeat", {"status": "idle"})
        read = await wait_for(lambda: shows("idle"), what="work state idle")
        assert read["current_task_id"] is None and read["status"] == "online"
        # A liveness word and a bare check-in leave the work state alone.
        await agent_call(url, token, "POST", "/api/v1/agent/heartbeat", {"status": "healthy"})
        read = await wait_for(
            lambda: _reported(hub, agent["id"], "healthy"), what="healthy reported"
        )
        assert read["work_state"] == "idle"
        await agent_call(url, token, "POST", "/api/v1/agent/heartbeat", {"status": "Working on it"})
        await wait_for(lambda: shows("other"), what="an unknown word kept as other")
    events = await hub.store.events(gateway["id"])
    assert not [e for e in events if "heartbeat" in e["kind"]]  # no row per heartbeat


async def _reported(hub: Hub, agent_id: str, word: str) -> dict[str, Any] | None:
    read = await agent_row(hub, agent_id)
    return read if read["reported_status"] == word else None
