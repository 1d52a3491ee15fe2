"""The dashboard's fleet pages in a real browser: gateways filtered by a label selector,
and a rollout's waves moving on the rollouts page without a reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from hub.app import Hub
from sidecar.gateway import RunState
from tests.e2e.conftest import base_url, screenshot
from tests.support import api, connected_sidecar, wait_for

WAIT_MS = 15_000  # a bound on each wait, never an expected duration

pytestmark = pytest.mark.e2e


async def test_labels_filter_the_fleet_and_a_rollout_shows_its_waves_live(
    page: Page, hub: Hub, tmp_path: Path
) -> None:
    url = base_url(hub)
    async with connected_sidecar(hub, tmp_path, "gw-eu") as (_, gateway):
        await api(hub, "PATCH", "/api/v1/gateways/gw-eu", {"name": "eu-host"})
        await api(hub, "PUT", "/api/v1/gateways/gw-eu/labels", {"labels": {"env": "prod"}})
        await hub.store.create_gateway("gw-us", "us-host")
        await api(hub, "PUT", "/api/v1/gateways/gw-us/labels", {"labels": {"env": "dev"}})

        await page.goto(url + "/ui/fleet")
        rows = page.locator("table.fleet tbody tr")
        await expect(rows).to_have_count(2, timeout=WAIT_MS)
        await expect(page.locator('tr[data-gateway="gw-eu"]')).to_contain_text("env=prod")
        await page.get_by_label("Labels").fill("env=prod")
        await page.get_by_role("button", name="Filter").click()
        await expect(rows).to_have_count(1, timeout=WAIT_MS)
        await expect(rows.first).to_contain_text("eu-host")
        await screenshot(page, "fleet-labels")
        await page.get_by_label("Labels").fill("env=")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.get_by_role("alert")).to_contain_text("key=value")

        await api(hub, "POST", "/api/v1/agents", {"name": "m", "gateway_id": "gw-eu"})
        await wait_for(lambda: gateway.count("ensure_agent") == 1, what="main agent applied")
        gateway.run_outcome = RunState.ERROR  # its wake never checks in: the gate waits
        await page.goto(url + "/ui/rollouts")
        await expect(page.get_by_text("No rollout yet.")).to_be_visible()
        await page.evaluate("window.__sameLoad = 7")
        status, rollout = await api(
            hub,
            "POST",
            "/api/v1/rollouts",
            {
                "selector": "env=prod",
                "name": "cadence",
                "change": {"kind": "heartbeat", "heartbeat_config": {"every": "20m"}},
                "gate_deadline_s": 1,
            },
        )
        assert status == 201, rollout
        row = page.locator(f'tr[data-rollout="{rollout["id"]}"]')
        await expect(row).to_contain_text("halted", timeout=WAIT_MS)
        await expect(row.locator('li[data-wave="1"]')).to_contain_text("1 failed")
        await expect(row).to_contain_text("failed its health gate")
        assert await page.evaluate("window.__sameLoad === 7")  # it moved without a reload
        await screenshot(page, "rollouts-halted")
