"""GET /api/v1/gateway/status and /gateway/sessions: asked live through the sidecar's stream.

A real hub and a real sidecar on loopback; the gateway behind the sidecar is the
in-memory RecordingGateway (tests/interop/ runs the same reads against OpenClaw).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hub.app import Hub
from tests.integration.board_setup import call
from tests.support import ADMIN_TOKEN, api, connected_sidecar, wait_for

GW = "gw-live"


async def _provision(hub: Hub) -> dict[str, Any]:
    """A main agent and two boards with one worker each; returns them by name."""
    made: dict[str, Any] = {}
    _, made["main"] = await api(
        hub, "POST", "/api/v1/agents", {"name": "main", "gateway_id": GW, "is_gateway_main": True}
    )
    for name in ("red", "blue"):
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": name, "gateway_id": GW})
        made[f"{name}-board"] = board
        _, made[name] = await api(
            hub, "POST", "/api/v1/agents", {"name": f"{name} worker", "board_id": board["id"]}
        )
    return made


async def test_status_reads_the_gateway_through_the_sidecar(hub: Hub, tmp_path: Path) -> None:
    async with connected_sidecar(hub, tmp_path, GW) as (_, gateway):
        made = await _provision(hub)
        await wait_for(lambda: gateway.count("wake") == 3, what="three agents woken")
        status, read = await api(hub, "GET", f"/api/v1/gateway/status?gateway_id={GW}")
        assert status == 200, read
        assert read["connected"] and read["live_read"] and read["gateway_reachable"]
        assert read["error"] is None and read["observed_at"].endswith("Z")
        assert (read["openclaw_version"], read["openclaw_protocol"]) == ("2026.9.6", 4)
        assert read["gateway_generation"] == "current"
        assert (read["pid"], read["sessions_count"]) == (4242, 3)
        by_gateway_id = {a["gateway_agent_id"]: a for a in read["agents"]}
        for name in ("main", "red", "blue"):
            runtime = by_gateway_id[made[name]["gateway_agent_id"]]
            assert runtime["agent_id"] == made[name]["id"]  # mapped to the hub's agent
            assert runtime["heartbeat_enabled"] and runtime["heartbeat_every_s"] == 600
        main = read["main_session"]
        assert main["agent_id"] == made["main"]["id"] and main["is_main"]
        assert main["key"] == f"agent:{made['main']['gateway_agent_id']}:main"
        assert {s["agent_id"] for s in read["sessions"]} == {
            made[n]["id"] for n in made if "-" not in n
        }

        # A board narrows the sessions to its agents; the main session is still shown.
        red_board = made["red-board"]["id"]
        status, read = await api(hub, "GET", f"/api/v1/gateway/status?board_id={red_board}")
        assert status == 200 and read["gateway_id"] == GW
        assert [s["agent_id"] for s in read["sessions"]] == [made["red"]["id"]]
        assert read["sessions"][0]["board_id"] == red_board
        assert read["main_session"]["agent_id"] == made["main"]["id"]


async def test_sessions_by_gateway_board_and_agent(hub: Hub, tmp_path: Path) -> None:
    async with connected_sidecar(hub, tmp_path, GW) as (_, gateway):
        made = await _provision(hub)
        await wait_for(lambda: gateway.count("wake") == 3, what="three agents woken")
        status, every = await api(hub, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}")
        assert status == 200 and every["total"] == 3 and len(every["sessions"]) == 3
        updated = [s["updated_at"] for s in every["sessions"]]
        assert updated == sorted(updated, reverse=True)  # most recent first
        assert every["main_session"]["agent_id"] == made["main"]["id"]

        status, limited = await api(hub, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}&limit=1")
        assert status == 200 and len(limited["sessions"]) == 1 and limited["total"] == 3

        blue = made["blue"]
        status, one = await api(hub, "GET", f"/api/v1/gateway/sessions?agent_id={blue['id']}")
        assert status == 200 and [s["agent_id"] for s in one["sessions"]] == [blue["id"]]
        assert one["sessions"][0]["gateway_agent_id"] == blue["gateway_agent_id"]
        assert one["sessions"][0]["status"] == "done"

        blue_board = made["blue-board"]["id"]
        status, board = await api(hub, "GET", f"/api/v1/gateway/sessions?board_id={blue_board}")
        assert status == 200 and [s["agent_id"] for s in board["sessions"]] == [blue["id"]]
        assert board["total"] == 1

        # Naming things that do not belong together is refused, not guessed.
        red_board = made["red-board"]["id"]
        for query, code, words in (
            ("", 422, "gateway_id, board_id or agent_id"),
            ("?gateway_id=nope", 404, "gateway not found"),
            ("?board_id=nope", 404, "board not found"),
            ("?agent_id=nope", 404, "agent not found"),
            (f"?board_id={red_board}&agent_id={blue['id']}", 422, "not on that board"),
            (f"?gateway_id=other&board_id={red_board}", 422, "not on gateway other"),
            (f"?gateway_id={GW}&limit=201", 422, "limit"),
        ):
            status, body = await api(hub, "GET", f"/api/v1/gateway/sessions{query}")
            assert status == code and words in str(body["detail"]), (query, body)


async def test_gateway_reads_need_the_admin_token(hub: Hub) -> None:
    for path in ("/api/v1/gateway/status", "/api/v1/gateway/sessions"):
        for headers in ({}, {"Authorization": "Bearer " + "w" * 60}):
            status, body, _ = await call(hub, "GET", f"{path}?gateway_id={GW}", headers=headers)
            assert status == 401 and body["request_id"]


async def test_disconnected_sidecar_status_is_200_with_stored_values_and_the_reason(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, GW):
        pass  # connected once (versions stored), then stopped
    await wait_for(lambda: hub.registry.get(GW) is None, what="disconnected")
    status, read = await api(hub, "GET", f"/api/v1/gateway/status?gateway_id={GW}")
    assert status == 200
    assert not read["connected"] and not read["live_read"]
    assert read["error_code"] == "sidecar_disconnected"
    assert "not connected since" in read["error"] and "mc-sidecar" in read["error"]
    assert read["openclaw_version"] == "2026.9.6"  # last reported, from the store
    assert read["observed_at"] is None and read["sessions"] == []

    status, body, headers = await call(
        hub,
        "GET",
        f"/api/v1/gateway/sessions?gateway_id={GW}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status == 503 and headers["Retry-After"] == "5"
    assert "not connected" in body["detail"]


async def test_unreachable_gateway_is_reported_by_the_connected_sidecar(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, GW) as (_, gateway):
        gateway.set_reachable(False)
        status, read = await api(hub, "GET", f"/api/v1/gateway/status?gateway_id={GW}")
        assert status == 200 and read["connected"] and not read["live_read"]
        assert read["gateway_reachable"] is False
        assert read["error_code"] == "gateway_unreachable"
        assert "down" in read["gateway_unreachable_reason"]

        status, body = await api(hub, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}")
        assert status == 502 and "down" in body["detail"]


async def test_a_slow_sidecar_times_out_and_a_vanishing_one_fails_fast(
    hub: Hub, tmp_path: Path
) -> None:
    hub.queries.timeout_s = 0.5
    async with connected_sidecar(hub, tmp_path, GW) as (sidecar, gateway):
        gateway.query_delay_s = 3.0
        # The sidecar is told the hub's deadline: it answers why before the hub gives up.
        status, body = await api(hub, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}")
        assert status == 504 and "gateway did not answer within 0.4 s" in body["detail"], body
        answer = sidecar.link.on_gateway_query
        sidecar.link.on_gateway_query = lambda query: None  # a sidecar that never answers
        status, body = await api(hub, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}")
        assert status == 504 and "sidecar did not answer within 0.5 s" in body["detail"], body
        sidecar.link.on_gateway_query = answer

        # The sidecar going away mid-query answers at once, not at the deadline.
        hub.queries.timeout_s = 30.0
        request = api(hub, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}")
        pending = asyncio.ensure_future(request)
        await wait_for(lambda: hub.queries.in_flight, what="query in flight")
        session = hub.registry.get(GW)
        assert session is not None
        session.close("test: stream dropped")
        async with asyncio.timeout(10):  # far short of the 30 s query deadline
            status, body = await pending
        assert status == 503 and "disconnected before answering" in body["detail"]
        # The old session stays registered while it ends: wait for the sidecar's count.
        await wait_for(lambda: sidecar.link.streams_opened >= 2, what="sidecar reconnected")


async def test_the_sidecar_runs_at_most_four_queries_and_refuses_the_rest_at_once(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, GW) as (_, gateway):
        gateway.query_delay_s = 1.0
        path = f"/api/v1/gateway/sessions?gateway_id={GW}"
        answers = await asyncio.gather(*(api(hub, "GET", path) for _ in range(6)))
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200] * 4 + [503] * 2, answers
        refused = [body for status, body in answers if status == 503]
        assert all("already running" in body["detail"] for body in refused)
