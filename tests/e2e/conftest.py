"""Browser tests: a real headless Chromium (the system's, Debian's `chromium`) driven by
Playwright for Python, against a real hub and real sidecars on loopback.

Playwright's own browser download cannot run on these machines, so the browser is the
one at CHROMIUM (default: `chromium` on PATH). `make test` installs it when it is
missing; without it these tests are skipped with the command that installs it.
Screenshots of each page go to E2E_SCREENSHOTS (default build/e2e-screenshots/).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.app import Hub
from tests.support import ADMIN_TOKEN, JumpClock, hub_config

# What this machine's closed network needs: no background connections, no first-run UI.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DEADLINE_S = 1.0
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "build/e2e-screenshots"))


def chromium_path() -> str | None:
    return shutil.which(os.environ.get("CHROMIUM", "chromium"))


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def hub(tmp_path: Path, clock: JumpClock) -> AsyncIterator[Hub]:
    config = dataclasses.replace(hub_config(tmp_path / "hub"), checkin_deadline_s=DEADLINE_S)
    instance = Hub(config, clock=clock)
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[object]:
    """A Chromium context with an empty profile of its own, closed (and its processes
    stopped) at the end."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no Chromium: install Debian's package (`apt-get install -y chromium`, as root) "
            "or set CHROMIUM to a Chromium binary; `make test` installs it where it can"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def page(browser: object, hub: Hub) -> AsyncIterator[object]:
    """A tab logged in to the hub's dashboard."""
    from playwright.async_api import BrowserContext

    assert isinstance(browser, BrowserContext)
    tab = await browser.new_page()
    await log_in(tab, hub)
    yield tab
    await tab.close()


def base_url(hub: Hub) -> str:
    assert hub.addresses is not None
    return hub.addresses.http_url


async def log_in(tab: object, hub: Hub, token: str = ADMIN_TOKEN) -> None:
    from playwright.async_api import Page

    assert isinstance(tab, Page)
    await tab.goto(base_url(hub) + "/")
    await tab.get_by_label("Admin token").fill(token)
    await tab.get_by_role("button", name="Log in").click()


async def screenshot(tab: object, name: str) -> None:
    from playwright.async_api import Page

    assert isinstance(tab, Page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a test's own folder)
    await tab.screenshot(
        path=str(SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name)}.png"), full_page=True
    )
