"""GET /api/v1/usage: agents' tokens relayed by the sidecar, per agent and board per day.

A real hub (both engines) and a real sidecar on loopback; the gateway behind the sidecar
is the in-memory RecordingGateway, whose sessions carry the tokens the test raises, as
a run of the agent would (tests/interop/ does the same against OpenClaw).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog

from hub.app import Hub
from sidecar.usage import UsagePolicy, utc_day
from tests.support import api, connected_sidecar, wait_for

GW = "gw-usage"
FAST = UsagePolicy(interval_s=0.2, jitter=0.0, after_run_s=0.05, settle_s=0.0, first_pass_s=0.05)


async def _provision(hub: Hub) -> dict[str, Any]:
    made: dict[str, Any] = {}
    for name in ("red", "blue"):
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": name, "gateway_id": GW})
        made[f"{name}-board"] = board
        status, made[name] = await api(
            hub, "POST", "/api/v1/agents", {"name": f"{name} worker", "board_id": board["id"]}
        )
        assert status in (200, 201), made[name]
    return made


async def _usage(hub: Hub, query: str = "") -> dict[str, Any]:
    status, read = await api(hub, "GET", f"/api/v1/usage{query}")
    assert status == 200, read
    return read


def _agent_total(read: dict[str, Any], agent_id: str) -> int:
    return sum(a["tokens"]["total_tokens"] for a in read["agents"] if a["agent_id"] == agent_id)


async def test_tokens_reach_the_api_per_agent_and_board_per_day(hub: Hub, tmp_path: Path) -> None:
    async with connected_sidecar(hub, tmp_path, GW, usage_policy=FAST) as (_, gateway):
        made = await _provision(hub)
        red, blue = made["red"], made["blue"]
        await wait_for(lambda: gateway.count("wake") == 2, what="both agents woken")
        gateway.tokens[red["gateway_agent_id"]] = 1200
        gateway.tokens[blue["gateway_agent_id"]] = 60

        async def seen(agent: dict[str, Any], total: int) -> bool:
            return _agent_total(await _usage(hub), agent["id"]) == total

        await wait_for(lambda: seen(red, 1200), what="red's 1200 tokens in /api/v1/usage")
        await wait_for(lambda: seen(blue, 60), what="blue's 60 tokens")
        read = await _usage(hub)
        today = utc_day(time.time())
        assert read["until"] == today and read["total"]["total_tokens"] == 1260
        [red_day] = [a for a in read["agents"] if a["agent_id"] == red["id"]]
        assert red_day["day"] == today and red_day["board_id"] == made["red-board"]["id"]
        assert red_day["gateway_id"] == GW and red_day["agent_name"] == "red worker"
        assert red_day["tokens"]["input_tokens"] == 1000 and red_day["sessions"] == 1
        boards = {b["board_id"]: b["tokens"]["total_tokens"] for b in read["boards"]}
        assert boards == {made["red-board"]["id"]: 1200, made["blue-board"]["id"]: 60}

        # More tokens in the same session replace the day's figure; a reset session counts
        # beside the old one.
        gateway.tokens[red["gateway_agent_id"]] = 3000
        await wait_for(lambda: seen(red, 3000), what="red's figure grown to 3000")
        gateway.session_ids[red["gateway_agent_id"]] = "after-reset"
        gateway.tokens[red["gateway_agent_id"]] = 250
        await wait_for(lambda: seen(red, 3250), what="the reset session counted beside")

        # Narrowed: one board, one agent, one gateway; a day with nothing is empty.
        board_id = made["blue-board"]["id"]
        only_blue = await _usage(hub, f"?board_id={board_id}")
        assert [a["agent_id"] for a in only_blue["agents"]] == [blue["id"]]
        assert only_blue["total"]["total_tokens"] == 60
        assert _agent_total(await _usage(hub, f"?agent_id={red['id']}"), red["id"]) == 3250
        assert (await _usage(hub, f"?gateway_id={GW}"))["total"]["total_tokens"] == 3310
        empty = await _usage(hub, "?since=2026-01-01&until=2026-01-02")
        assert empty["agents"] == [] and empty["total"]["total_tokens"] == 0

        # The hub's metric counts what the figures grew by, all agents together.
        assert hub.metrics.registry.get_sample_value("mc_hub_agent_tokens_total") == 3310


async def test_bad_days_are_a_422_naming_the_fix(hub: Hub) -> None:
    status, read = await api(hub, "GET", "/api/v1/usage?since=2026-12-02&until=2026-12-01")
    assert status == 422 and "swap" in str(read)
    status, read = await api(hub, "GET", "/api/v1/usage?since=yesterday")
    assert status == 422


async def test_a_hub_that_takes_no_usage_ignores_the_reports_and_keeps_the_stream(
    hub: Hub, tmp_path: Path
) -> None:
    assert hub.link is not None
    hub.link.usage = None  # as a hub built without the ledger
    async with connected_sidecar(hub, tmp_path, GW, usage_policy=FAST) as (sidecar, gateway):
        made = await _provision(hub)
        await wait_for(lambda: gateway.count("wake") == 2, what="both agents woken")
        with structlog.testing.capture_logs() as logs:
            gateway.tokens[made["red"]["gateway_agent_id"]] = 500
            await wait_for(lambda: sidecar.usage.reports_sent >= 1, what="a report sent")
            await wait_for(
                lambda: any(e["event"] == "link.message.ignored" for e in logs),
                what="the hub ignoring it",
            )
        assert (await _usage(hub))["total"]["total_tokens"] == 0
        streams = sidecar.link.streams_opened
        status, _ = await api(hub, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}")
        assert status == 200 and sidecar.link.streams_opened == streams  # the same stream
