"""The dashboard in a real browser: log in, watch a gateway connect and an agent come
online without reloading, follow a timeline to offline, CSRF, logout, escaping."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from hub.app import Hub
from missioncontrol.agent_api import TOKEN_FILE_NAME, TOKEN_HEADER
from sidecar.gateway import RunState
from tests.e2e.conftest import DEADLINE_S, base_url, log_in, screenshot
from tests.support import JumpClock, RecordingGateway, api, connected_sidecar, wait_for

WAIT_MS = 15_000  # a bound on each wait, never an expected duration

pytestmark = pytest.mark.e2e


async def agent_row(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, body = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, body
    return body


async def board_and_agent(hub: Hub, gateway_id: str, name: str = "Researcher") -> tuple[str, str]:
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": gateway_id}
    )
    assert status == 201, board
    status, agent = await api(
        hub, "POST", "/api/v1/agents", {"name": name, "board_id": board["id"]}
    )
    assert status == 201, agent
    return board["id"], agent["id"]


async def mark_page(page: Page, value: int) -> None:
    """A value only this page load holds: still there later means no reload happened."""
    await page.evaluate(f"window.__sameLoad = {value}")


async def same_load(page: Page, value: int) -> bool:
    return bool(await page.evaluate(f"window.__sameLoad === {value}"))


async def test_gateway_connects_and_agent_goes_online_without_reloading(
    page: Page, hub: Hub, tmp_path: Path
) -> None:
    url = base_url(hub)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await screenshot(page, "overview-empty")
    # Create the gateway from the fleet page; the answer says how to connect its sidecar.
    await page.goto(url + "/ui/fleet")
    await page.get_by_label("Name", exact=True).fill("host-1")
    await page.get_by_role("button", name="Create gateway").click()
    await expect(page.get_by_role("heading", name="Gateway host-1")).to_be_visible()
    await expect(page.locator(".flash .secret")).to_contain_text("--insecure-dev --gateway-id")
    gateway_id = page.url.rsplit("/", 1)[-1]
    await expect(page.locator("#gateway-link")).to_contain_text("never connected")
    await expect(page.locator("body[data-live-connected]")).to_have_count(1, timeout=WAIT_MS)
    await mark_page(page, 1)

    gateway = RecordingGateway(run_outcome=RunState.ERROR)  # only a heartbeat checks in
    async with connected_sidecar(hub, tmp_path, gateway_id, gateway) as (sidecar, _):
        await expect(page.locator("#gateway-link .badge-online")).to_have_text(
            "connected", timeout=WAIT_MS
        )
        assert await same_load(page, 1), "the page reloaded instead of updating in place"
        await expect(page.locator("#live [data-loaded], #live #gateway-live")).to_have_count(
            1, timeout=WAIT_MS
        )
        await screenshot(page, "gateway")

        # A board from the gateway page, an agent from the board page.
        await page.get_by_label("New board").fill("Ops")
        await page.get_by_role("button", name="Create board").click()
        await expect(page.get_by_role("heading", name="Board Ops")).to_be_visible()
        await page.get_by_label("Name", exact=True).fill("Researcher")
        await page.get_by_label("Role").fill("Research")
        await page.get_by_role("button", name="Create agent").click()
        await expect(page.get_by_role("heading", name="Agent Researcher")).to_be_visible()
        agent_id = page.url.rsplit("/", 1)[-1]
        status = page.locator("#agent-status")
        await expect(status).to_contain_text("provisioning")
        await expect(page.locator("body[data-live-connected]")).to_have_count(1, timeout=WAIT_MS)
        await mark_page(page, 2)

        # The agent heartbeats the way its files tell it to: its sidecar's local API.
        agent = await agent_row(hub, agent_id)
        token_file = tmp_path / "ws" / f"workspace-{agent['gateway_agent_id']}" / TOKEN_FILE_NAME
        await wait_for(token_file.exists, what="the agent's token file")
        await wait_for(lambda: _wake_delivered(hub, agent_id), what="the wake delivered")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{sidecar.agent_api_url}/api/v1/agent/heartbeat",
                json={"status": "online"},
                headers={TOKEN_HEADER: token_file.read_text().strip()},
            ) as response,
        ):
            assert response.status == 202, await response.text()
        await expect(status.locator(".badge-online")).to_have_text("online", timeout=WAIT_MS)
        assert await same_load(page, 2), "the page reloaded instead of updating in place"
        await expect(page.locator("#agent-timeline")).to_contain_text("Checked in")
        await screenshot(page, "agent-online")

        for path, name in (
            ("/ui/", "overview"),
            ("/ui/fleet", "fleet"),
            ("/ui/boards", "boards"),
            (f"/ui/boards/{agent['board_id']}", "board"),
            ("/ui/agents", "agents"),
            (f"/ui/gateways/{gateway_id}/live", "gateway-live"),
            ("/ui/activity", "activity"),
        ):
            response = await page.goto(url + path)
            assert response is not None and response.status == 200, path
            await screenshot(page, name)
        await page.emulate_media(color_scheme="dark")  # the system's setting picks the scheme
        await page.goto(url + "/ui/")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(17, 20, 24)", background
        await screenshot(page, "overview-dark")


async def _wake_delivered(hub: Hub, agent_id: str) -> bool:
    return (await agent_row(hub, agent_id))["last_wake_sent_at"] is not None


async def test_timeline_follows_three_missed_wakes_to_offline(
    page: Page, hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway(run_outcome=RunState.ERROR)  # runs end without a check-in
    async with connected_sidecar(hub, tmp_path, "gw-quiet", gateway):
        _, agent_id = await board_and_agent(hub, "gw-quiet", "Quiet One")
        await page.goto(f"{base_url(hub)}/ui/agents/{agent_id}")
        await expect(page.locator("body[data-live-connected]")).to_have_count(1, timeout=WAIT_MS)
        await mark_page(page, 3)
        timeline = page.locator("#agent-timeline")
        for _ in range(20):  # bounded: three windows are enough, a few spare
            agent = await agent_row(hub, agent_id)
            if agent["status"] == "offline":
                break
            if agent["checkin_deadline_at"] is not None:
                clock.advance(DEADLINE_S)  # the check-in window passes at once
                await hub.reconciler.reconcile_due()
            await wait_for(
                functools.partial(_changed, hub, agent_id, agent),
                timeout_s=10,
                what="the next step",
            )
        await expect(page.locator("#agent-status .badge-offline")).to_have_text(
            "offline", timeout=WAIT_MS
        )
        await expect(timeline).to_contain_text("Wake sent (attempt 1)")
        await expect(timeline).to_contain_text("Missed check-in; woken again (attempt 2)")
        await expect(timeline).to_contain_text("Missed check-in; woken again (attempt 3)")
        await expect(timeline).to_contain_text("missed check-in after 3 wakes")
        assert await same_load(page, 3), "the page reloaded instead of updating in place"
        assert gateway.count("wake") == 3
        await screenshot(page, "agent-offline")


async def _changed(hub: Hub, agent_id: str, before: dict[str, Any]) -> bool:
    now = await agent_row(hub, agent_id)
    keys = ("status", "wake_attempts", "checkin_deadline_at", "last_wake_sent_at")
    return any(now[k] != before[k] for k in keys)


async def test_a_form_without_its_csrf_token_is_refused_and_logout_ends_the_session(
    page: Page, hub: Hub
) -> None:
    url = base_url(hub)
    await page.goto(url + "/ui/fleet")
    form = page.locator('form[action="/ui/gateways"]')
    await form.locator('input[name="csrf_token"]').evaluate("input => input.value = 'forged'")
    await page.get_by_label("Name", exact=True).fill("never-made")
    await page.get_by_role("button", name="Create gateway").click()
    await expect(page.get_by_role("alert")).to_contain_text("CSRF token is missing or wrong")
    status, listing = await api(hub, "GET", "/api/v1/gateways")
    assert status == 200 and listing["total"] == 0

    await page.goto(url + "/ui/")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in to Mission Control")).to_be_visible()
    cookies = await page.context.cookies()
    assert not [c for c in cookies if c["name"].endswith("mc_session")]
    await page.goto(url + "/ui/fleet")
    assert "/ui/login" in page.url
    await screenshot(page, "login")
    # A wrong token is refused with where the right one is.
    await log_in(page, hub, token="wrong-" + "x" * 60)
    await expect(page.get_by_role("alert")).to_contain_text("not the admin token")


HOSTILE = '<img src=x onerror="window.__xss=1">"\'><script>window.__xss=2</script>'


async def test_a_hostile_agent_name_is_shown_as_text_and_never_runs(
    page: Page, hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-hostile"):
        board_id, agent_id = await board_and_agent(hub, "gw-hostile", HOSTILE)
        url = base_url(hub)
        for path in (f"/ui/agents/{agent_id}", f"/ui/boards/{board_id}", "/ui/agents", "/ui/"):
            response = await page.goto(url + path)
            assert response is not None
            policy = response.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
            assert "unsafe-inline" not in policy
            assert await page.evaluate("window.__xss") is None, path
        await page.goto(f"{url}/ui/agents/{agent_id}")
        heading = page.get_by_role("heading", level=1)
        await expect(heading).to_have_text(re.compile(re.escape(f"Agent {HOSTILE}")))
        assert await page.locator("main img, main script").count() == 0
        assert await page.evaluate("window.__xss") is None


async def test_pause_and_resume_an_agent(page: Page, hub: Hub, tmp_path: Path) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-pause"):
        _, agent_id = await board_and_agent(hub, "gw-pause")
        await page.goto(f"{base_url(hub)}/ui/agents/{agent_id}")
        await page.get_by_role("button", name="Pause").click()
        await expect(page.get_by_role("button", name="Resume")).to_be_visible()
        await page.get_by_role("button", name="Resume").click()
        await expect(page.get_by_role("button", name="Pause")).to_be_visible()
