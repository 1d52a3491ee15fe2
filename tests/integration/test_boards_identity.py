"""Boards CRUD (delete through the sidecars) and the identity endpoints USER.md comes from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.app import Hub
from sidecar.app import Sidecar
from tests.support import RecordingGateway, api, fast_backoff, sidecar_config, wait_for


@pytest.fixture
async def connected(hub: Hub, tmp_path: Path) -> AsyncIterator[tuple[Sidecar, RecordingGateway]]:
    assert hub.addresses is not None
    gateway = RecordingGateway()
    config = sidecar_config(
        tmp_path / "sc", hub.addresses.link, gateway_id="gw-b", workspace_root=tmp_path / "ws"
    )
    sidecar = Sidecar(config, gateway=gateway, link_backoff=fast_backoff())
    await sidecar.start()
    await wait_for(lambda: _root(hub), what="connected with a workspace root")
    yield sidecar, gateway
    await sidecar.stop()


async def _root(hub: Hub) -> bool:
    row = await hub.store.get_gateway("gw-b")
    return bool(row and row.workspace_root and hub.registry.get("gw-b"))


async def test_board_crud_and_validation(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway]
) -> None:
    status, board = await api(
        hub,
        "POST",
        "/api/v1/boards",
        {
            "name": "Launch",
            "gateway_id": "gw-b",
            "objective": "Ship v1",
            "success_metrics": {"users": 100},
            "target_date": "2027-01-31",
            "only_lead_can_change_status": True,
        },
    )
    assert status == 201, board
    assert board["slug"] == "launch" and board["success_metrics"] == {"users": 100}
    assert board["target_date"] == "2027-01-31" and board["only_lead_can_change_status"]
    status, body = await api(hub, "POST", "/api/v1/boards", {"name": "X", "gateway_id": "nope"})
    assert status == 422 and "gateway_id" in str(body["detail"])
    status, body = await api(
        hub, "POST", "/api/v1/boards", {"name": "X", "gateway_id": "gw-b", "max_agents": -1}
    )
    assert status == 422 and "max_agents" in str(body["detail"])
    status, patched = await api(
        hub,
        "PATCH",
        f"/api/v1/boards/{board['id']}",
        {"objective": "Ship v2", "goal_confirmed": True},
    )
    assert status == 200 and patched["objective"] == "Ship v2" and patched["goal_confirmed"]
    assert patched["name"] == "Launch"  # untouched fields keep their values
    status, listed = await api(hub, "GET", "/api/v1/boards?gateway_id=gw-b")
    assert status == 200 and [b["id"] for b in listed["items"]] == [board["id"]]
    status, _ = await api(hub, "GET", "/api/v1/boards/missing")
    assert status == 404


async def test_deleting_a_board_removes_its_agents_even_while_the_gateway_is_down(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway]
) -> None:
    _, gateway = connected
    _, board = await api(hub, "POST", "/api/v1/boards", {"name": "Doomed", "gateway_id": "gw-b"})
    agents = []
    for name in ("one", "two"):
        status, agent = await api(
            hub, "POST", "/api/v1/agents", {"name": name, "board_id": board["id"]}
        )
        assert status == 201
        agents.append(agent)
    await wait_for(lambda: gateway.count("ensure_agent") == 2, what="agents applied")
    gateway.set_reachable(False)
    status, body = await api(hub, "DELETE", f"/api/v1/boards/{board['id']}")
    assert status == 202 and body["status"] == "deleting"
    status, again = await api(hub, "GET", f"/api/v1/boards/{board['id']}")
    assert again["status"] == "deleting"
    status, body = await api(
        hub, "POST", "/api/v1/agents", {"name": "late", "board_id": board["id"]}
    )
    assert status == 422 and "being deleted" in body["detail"]
    gateway.set_reachable(True)
    await wait_for(
        lambda: _gone(hub, f"/api/v1/boards/{board['id']}"),
        timeout_s=20,
        what="board gone with its last agent",
    )
    for agent in agents:
        status, _ = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
        assert status == 404
    assert gateway.count("remove_agent") == 2


async def test_an_empty_board_is_deleted_at_once(hub: Hub) -> None:
    await hub.store.create_gateway("gw-e", "empty")
    _, board = await api(hub, "POST", "/api/v1/boards", {"name": "E", "gateway_id": "gw-e"})
    status, body = await api(hub, "DELETE", f"/api/v1/boards/{board['id']}")
    assert (status, body["status"]) == (202, "deleted")
    assert await _gone(hub, f"/api/v1/boards/{board['id']}")


async def _gone(hub: Hub, path: str) -> bool:
    status, _ = await api(hub, "GET", path)
    return status == 404


async def test_user_profile_feeds_user_md_and_a_missing_timezone_is_reported(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway], tmp_path: Path
) -> None:
    status, me = await api(hub, "GET", "/api/v1/users/me")
    assert status == 200 and me["timezone_missing"] is True
    status, boot = await api(hub, "GET", "/api/v1/auth/bootstrap")
    assert status == 200 and boot["member"]["role"] == "owner"
    status, body = await api(hub, "PATCH", "/api/v1/users/me", {"timezone": "Mars/Olympus"})
    assert status == 422 and "time zone" in str(body["detail"])
    status, me = await api(
        hub,
        "PATCH",
        "/api/v1/users/me",
        {"name": "Ada Lovelace", "preferred_name": "Ada", "timezone": "Europe/London"},
    )
    assert status == 200 and me["timezone_missing"] is False
    status, member = await api(hub, "GET", "/api/v1/organizations/me/member")
    assert status == 200 and member["role"] == "owner"
    _, board = await api(hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": "gw-b"})
    _, agent = await api(hub, "POST", "/api/v1/agents", {"name": "W", "board_id": board["id"]})
    user_md = tmp_path / "ws" / f"workspace-{agent['gateway_agent_id']}" / "USER.md"
    await wait_for(user_md.exists, what="USER.md written")
    text = user_md.read_text()
    assert "Ada" in text and "Europe/London" in text


async def test_identity_md_names_the_main_session_only_when_the_gateway_has_a_main_agent(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway], tmp_path: Path
) -> None:
    _, board = await api(hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": "gw-b"})
    _, lone = await api(hub, "POST", "/api/v1/agents", {"name": "Lone", "board_id": board["id"]})
    identity = tmp_path / "ws" / f"workspace-{lone['gateway_agent_id']}" / "IDENTITY.md"
    await wait_for(identity.exists, what="IDENTITY.md written")
    text = identity.read_text()
    assert "Main agent session" not in text and "agent:mc-gateway-" not in text
    assert "Main agent: none on this gateway" in text

    status, main = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Main", "gateway_id": "gw-b", "is_gateway_main": True},
    )
    assert status == 201, main
    _, worker = await api(hub, "POST", "/api/v1/agents", {"name": "W2", "board_id": board["id"]})
    identity = tmp_path / "ws" / f"workspace-{worker['gateway_agent_id']}" / "IDENTITY.md"
    await wait_for(identity.exists, what="IDENTITY.md written")
    assert f"- Main agent session: `agent:{main['gateway_agent_id']}:main`" in identity.read_text()
