"""The dashboard over real HTTP (no browser): sessions, CSRF, headers, escaping, actions,
trends. The browser tests (tests/e2e) cover what needs a page's script."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from markupsafe import escape

from hub.app import Hub
from hub.ui.trends import DAY_S, record_sample_in
from protos import link_pb2 as pb
from tests.support import (
    ADMIN_TOKEN,
    JumpClock,
    api,
    connected_sidecar,
    hub_config,
    wait_for,
)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Client:
    """A browser stand-in: a cookie jar, the page last read, its CSRF token."""

    def __init__(self, hub: Hub, session: aiohttp.ClientSession) -> None:
        assert hub.addresses is not None
        self.base = hub.addresses.http_url
        self.session = session
        self.csrf = ""

    async def get(self, path: str, **options: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, **options) as response:
            text = await response.text()
        found = CSRF.search(text)
        if found:
            self.csrf = found.group(1)
        return response.status, text, response

    async def post(
        self, path: str, data: dict[str, str], *, csrf: bool = True, **options: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        form = {**data, **({"csrf_token": self.csrf} if csrf else {})}
        async with self.session.post(self.base + path, data=form, **options) as response:
            text = await response.text()
        found = CSRF.search(text)
        if found:
            self.csrf = found.group(1)
        return response.status, text, response

    async def log_in(self, token: str = ADMIN_TOKEN) -> tuple[int, str, aiohttp.ClientResponse]:
        await self.get("/ui/login")
        return await self.post("/ui/login", {"token": token, "next": "/ui/fleet"})


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def hub(tmp_path: Path, clock: JumpClock, database: str) -> AsyncIterator[Hub]:
    instance = Hub(hub_config(tmp_path / "hub", database=database), clock=clock)
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Client(hub, session)


@pytest.fixture
async def logged_in(client: Client) -> Client:
    status, _, response = await client.log_in()
    assert status == 200 and response.url.path == "/ui/fleet"
    return client


# --------------------------------------------------------------------- sessions


async def test_every_page_needs_a_session_and_leads_to_login_and_back(client: Client) -> None:
    for path in ("/", "/ui", "/ui/", "/ui/fleet", "/ui/agents?status=offline", "/ui/boards"):
        status, text, response = await client.get(path)
        assert status == 200 and response.url.path == "/ui/login", path
        assert "Admin token" in text
    status, _, response = await client.get("/ui/events")
    assert status == 401
    await client.get("/ui/login?next=/ui/agents%3Fstatus%3Doffline")
    status, _, response = await client.post(
        "/ui/login", {"token": ADMIN_TOKEN, "next": "/ui/agents?status=offline"}
    )
    assert response.url.path_qs == "/ui/agents?status=offline"


async def test_login_never_sends_the_browser_to_another_site(client: Client) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/api/v1/x"):
        client.session.cookie_jar.clear()
        await client.get("/ui/login")
        _, _, response = await client.post("/ui/login", {"token": ADMIN_TOKEN, "next": target})
        assert response.url.host == "127.0.0.1" and response.url.path == "/ui/", target


async def test_the_session_cookie_is_http_only_strict_and_expires(hub: Hub) -> None:
    assert hub.addresses is not None
    base = hub.addresses.http_url
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/ui/login") as response:
            login_csrf = response.cookies["mc_login_csrf"]
            token = CSRF.search(await response.text())
        assert token is not None
        async with session.post(
            base + "/ui/login",
            data={"token": ADMIN_TOKEN, "csrf_token": token.group(1)},
            cookies={"mc_login_csrf": login_csrf.value},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            cookie = response.cookies["mc_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert 0 < int(cookie["max-age"]) <= 12 * 3600
    assert not cookie["secure"]  # plain HTTP on loopback; see the TLS test


async def test_behind_a_tls_proxy_the_cookie_is_secure_and_host_only(tmp_path: Path) -> None:
    config = dataclasses.replace(hub_config(tmp_path / "hub"), http_tls="proxy")
    hub = Hub(config)
    await hub.start()
    try:
        assert hub.addresses is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(hub.addresses.http_url + "/ui/login") as response,
        ):
            cookie = response.cookies["__Host-mc_login_csrf"]
            assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
    finally:
        await hub.stop()


async def test_a_session_ends_at_its_lifetime(logged_in: Client, clock: JumpClock) -> None:
    _status, _, response = await logged_in.get("/ui/")
    assert response.url.path == "/ui/"
    clock.advance(12 * 3600 + 1)
    _, _, response = await logged_in.get("/ui/")
    assert response.url.path == "/ui/login"


async def test_logout_ends_the_session_for_every_copy_of_the_cookie(logged_in: Client) -> None:
    cookie = next(c for c in logged_in.session.cookie_jar if c.key == "mc_session").value
    await logged_in.get("/ui/")
    _status, _, response = await logged_in.post("/ui/logout", {})
    assert response.url.path == "/ui/login"
    async with (
        aiohttp.ClientSession() as other,
        other.get(
            logged_in.base + "/ui/", cookies={"mc_session": cookie}, allow_redirects=False
        ) as response,
    ):
        assert response.status == 303 and response.headers["Location"].startswith("/ui/login")


async def test_wrong_tokens_are_limited_like_the_api_and_share_its_count(
    client: Client, hub: Hub
) -> None:
    statuses = []
    for _ in range(25):
        await client.get("/ui/login")
        status, text, _ = await client.post("/ui/login", {"token": "w" * 60})
        statuses.append(status)
    assert (statuses[0] == 401 and "not the admin token" in text) or statuses[-1] == 429
    assert statuses[-1] == 429
    # The same caller is now refused by the API too, before its token is checked.
    status, body = await api(hub, "GET", "/api/v1/gateways")
    assert status == 429 and "failed credential checks" in body["detail"]


# ------------------------------------------------------------------------- CSRF


async def test_a_form_without_the_sessions_csrf_token_is_refused(
    logged_in: Client, hub: Hub
) -> None:
    await logged_in.get("/ui/fleet")
    status, text, _ = await logged_in.post("/ui/gateways", {"name": "x"}, csrf=False)
    assert status == 403 and "CSRF token is missing or wrong" in text
    status, text, _ = await logged_in.post(
        "/ui/gateways", {"name": "x", "csrf_token": "forged"}, csrf=False
    )
    assert status == 403
    _, listing = await api(hub, "GET", "/api/v1/gateways")
    assert listing["total"] == 0


async def test_a_form_from_another_origin_is_refused_even_with_the_token(
    logged_in: Client, hub: Hub
) -> None:
    await logged_in.get("/ui/fleet")
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        status, text, _ = await logged_in.post("/ui/gateways", {"name": "x"}, headers=headers)
        assert status == 403 and "another site" in text
    _, listing = await api(hub, "GET", "/api/v1/gateways")
    assert listing["total"] == 0


async def test_the_login_form_needs_its_own_token(client: Client) -> None:
    status, text, _ = await client.post("/ui/login", {"token": ADMIN_TOKEN}, csrf=False)
    assert status == 403 and "expired or came from another site" in text


# -------------------------------------------------------------------- headers


async def test_every_answer_has_a_strict_policy_and_refuses_framing(
    logged_in: Client, hub: Hub
) -> None:
    paths = ["/ui/", "/ui/fleet", "/ui/boards", "/ui/agents", "/ui/activity", "/ui/rollouts"]
    paths += ["/ui/gateways/nope", "/ui/login", "/ui/static/app.css", "/ui/agents/nope"]
    for path in paths:
        _, _, response = await logged_in.get(path)
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, path
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        if not path.startswith("/ui/static/"):
            assert response.headers["Cache-Control"] == "no-store", path


async def test_unknown_things_are_html_pages_that_say_so(logged_in: Client) -> None:
    for path in ("/ui/gateways/nope", "/ui/boards/nope", "/ui/agents/nope", "/ui/nothing"):
        status, text, response = await logged_in.get(path)
        assert status == 404 and response.content_type == "text/html", path
    status, text, _ = await logged_in.get("/ui/agents/nope")
    assert "agent nope does not exist" in text


async def test_no_template_has_inline_script_style_or_handlers() -> None:
    templates = Path(__file__).parents[2] / "hub" / "ui" / "templates"
    for template in templates.glob("*.html"):
        text = template.read_text()
        assert "<script>" not in text and "<style" not in text, template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert "style=" not in text and "javascript:" not in text, template.name


# ------------------------------------------------------------------- escaping


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def test_every_name_is_escaped_on_every_page(
    logged_in: Client, hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-x"):
        await api(hub, "PATCH", "/api/v1/gateways/gw-x", {"name": "gw " + HOSTILE})
        _, board = await api(
            hub,
            "POST",
            "/api/v1/boards",
            {"name": "b " + HOSTILE, "gateway_id": "gw-x", "objective": HOSTILE},
        )
        _, agent = await api(
            hub,
            "POST",
            "/api/v1/agents",
            {
                "name": "a " + HOSTILE,
                "board_id": board["id"],
                "identity_profile": {"role": HOSTILE},
            },
        )
        await api(
            hub,
            "POST",
            f"/api/v1/boards/{board['id']}/tasks",
            {"title": "t " + HOSTILE, "assigned_agent_id": agent["id"]},
        )
        await api(hub, "POST", f"/api/v1/boards/{board['id']}/webhooks", {"description": HOSTILE})
        # What a sidecar reports is text from elsewhere too: the agent's cause.
        condition = pb.AgentCondition(
            agent_id=agent["gateway_agent_id"], code="runs_failing", detail=HOSTILE
        )
        await hub.reconciler.gateway_state(
            "gw-x",
            pb.GatewayState(reachable=True, conditions=[condition], conditions_reported=True),
        )
        paths = [
            "/ui/",
            "/ui/fleet",
            "/ui/fleet?q=" + "%3Cscript%3E",
            "/ui/gateways/gw-x",
            "/ui/gateways/gw-x/live",
            "/ui/boards",
            f"/ui/boards/{board['id']}",
            "/ui/agents",
            f"/ui/agents/{agent['id']}",
            f"/ui/agents/{agent['id']}?all=1",
            f"/ui/agents/{agent['id']}/delete",
            f"/ui/boards/{board['id']}/delete",
            "/ui/gateways/gw-x/delete",
        ]
        for path in paths:
            status, text, _ = await logged_in.get(path)
            assert status == 200, path
            assert "<script>alert" not in text and "<img src=x" not in text, path
        _, text, _ = await logged_in.get(f"/ui/agents/{agent['id']}")
        assert str(escape("a " + HOSTILE)) in text  # shown, as text
        assert str(escape("runs_failing: " + HOSTILE)) in text


# -------------------------------------------------------------------- actions


async def test_the_forms_create_a_board_and_an_agent_and_act_on_it(
    logged_in: Client, hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-forms"):
        await logged_in.get("/ui/gateways/gw-forms")
        _, text, response = await logged_in.post(
            "/ui/boards", {"name": "Ops", "gateway_id": "gw-forms"}
        )
        assert response.url.path.startswith("/ui/boards/") and "Board Ops created" in text
        board_id = response.url.path.rsplit("/", 1)[-1]
        _, text, response = await logged_in.post(
            "/ui/agents",
            {"name": "Writer", "board_id": board_id, "every": "30s", "role": "Writing"},
        )
        assert response.url.path.startswith("/ui/agents/"), text
        agent_id = response.url.path.rsplit("/", 1)[-1]
        _, agent = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
        assert agent["heartbeat_config"]["every"] == "30s"
        assert agent["identity_profile"] == {"role": "Writing"}
        # The API's own rules answer a form too: naming the field.
        _, text, response = await logged_in.post(
            "/ui/agents", {"name": "Bad", "board_id": board_id, "every": "often"}
        )
        assert "Not done" in text and "heartbeat_config.every" in text
        _, text, _ = await logged_in.post(f"/ui/agents/{agent_id}/token/rotate", {"grace_s": "60"})
        assert "Token rotated" in text
        events = {e["kind"] for e in await hub.store.events("gw-forms")}
        assert "agent.token.rotated" in events
        _, text, _ = await logged_in.post(f"/ui/agents/{agent_id}/reprovision", {})
        assert "generation 2" in text
        _, text, response = await logged_in.post("/ui/gateways/gw-forms/templates/sync", {})
        assert "/sync/" in response.url.path and "Template sync" in text
        await logged_in.get(f"/ui/agents/{agent_id}/delete")
        _, text, response = await logged_in.post(f"/ui/agents/{agent_id}/delete", {})
        assert response.url.path == "/ui/agents" and "Agent deleting" in text
        await wait_for(lambda: _gone(hub, agent_id), what="the agent removed through its sidecar")


async def _gone(hub: Hub, agent_id: str) -> bool:
    status, _ = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    return status == 404


async def test_creating_a_gateway_shows_its_connect_command_once(
    logged_in: Client, hub: Hub
) -> None:
    await logged_in.get("/ui/fleet")
    _, text, response = await logged_in.post("/ui/gateways", {"name": "host-9"})
    gateway_id = response.url.path.rsplit("/", 1)[-1]
    assert f"--insecure-dev --gateway-id {gateway_id}" in text
    _, text, _ = await logged_in.get(f"/ui/gateways/{gateway_id}")
    assert "--gateway-id" not in text.split("<main", 1)[1].split("Enrollment", 1)[0]
    _, text, _ = await logged_in.post(f"/ui/gateways/{gateway_id}/delete", {})
    assert "Gateway deleted" in text


# --------------------------------------------------------------------- trends


async def test_the_overview_compares_with_the_sample_from_a_day_ago(
    logged_in: Client, hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    now = clock()
    await hub.db.write(
        lambda conn: record_sample_in(
            conn, now - DAY_S, {"gateways.connected": 3, "gateways.total": 3, "agents.online": 0}
        )
    )
    async with connected_sidecar(hub, tmp_path, "gw-trend"):
        _, text, _ = await logged_in.get("/ui/")
        assert "-2 since yesterday" in text  # 1 connected now, 3 then
        assert re.search(r'id="kpi-gateways">1 <span class="of">of 1', text)
        assert "<svg" in text and 'role="img"' in text


async def test_a_gateway_that_went_away_needs_attention(
    logged_in: Client, hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-away"):
        pass
    await wait_for(lambda: hub.registry.get("gw-away") is None, what="the stream closed")
    _, text, _ = await logged_in.get("/ui/")
    attention = text.split('id="attention"', 1)[1]
    assert ("Gateways disconnected" in attention and "gw-away" in attention) or "vm" in attention
    _, text, _ = await logged_in.get("/ui/fleet?state=disconnected")
    assert 'data-gateway="gw-away"' in text
    _, text, _ = await logged_in.get("/ui/fleet?state=connected")
    assert 'data-gateway="gw-away"' not in text


async def test_the_dashboards_stream_carries_gateway_and_agent_events(
    logged_in: Client, hub: Hub, tmp_path: Path
) -> None:
    async with logged_in.session.get(logged_in.base + "/ui/events") as stream:
        assert stream.status == 200
        async with connected_sidecar(hub, tmp_path, "gw-stream"):
            seen = b""
            deadline = time.monotonic() + 10
            while b"event: gateway" not in seen and time.monotonic() < deadline:
                seen += await stream.content.readany()
    assert b'"id": "gw-stream"' in seen and b'"connected": true' in seen


async def test_three_missed_wakes_count_as_three_failed_wakes_and_an_offline_agent(
    logged_in: Client, hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    from sidecar.gateway import RunState
    from tests.support import RecordingGateway

    gateway = RecordingGateway(run_outcome=RunState.ERROR)  # no runtime check-in
    async with connected_sidecar(hub, tmp_path, "gw-miss", gateway):
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": "gw-miss"})
        _, agent = await api(
            hub, "POST", "/api/v1/agents", {"name": "Mute", "board_id": board["id"]}
        )
        for _ in range(20):  # bounded; three windows are enough
            _, row = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
            if row["status"] == "offline":
                break
            if row["checkin_deadline_at"] and row["last_wake_sent_at"]:
                # Past the agent's deadline: a failed run's verdict is due at once, yet
                # waits out the hub's restart grace, which can be more than one window.
                due = dt.datetime.fromisoformat(row["checkin_deadline_at"]).timestamp()
                clock.advance(max(due - clock(), 0.0) + 1)
                await hub.reconciler.reconcile_due()
            await wait_for(
                functools.partial(_moved, hub, agent["id"], row),
                timeout_s=10,
                what="the next step",
            )
        _, text, _ = await logged_in.get("/ui/")
    failed = text.split("Wakes failed, last 24 h", 1)[1]
    assert re.match(r'</h3>\s*<p class="figure">3</p>', failed), failed[:200]
    assert "Mute" in text.split('id="attention"', 1)[1]
    assert "did not check in after 3 wakes" in text


async def _moved(hub: Hub, agent_id: str, before: dict[str, Any]) -> bool:
    _, now = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    keys = ("status", "wake_attempts", "checkin_deadline_at", "last_wake_sent_at")
    return any(now[k] != before[k] for k in keys)
