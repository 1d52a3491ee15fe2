"""The hub API's conventions: OpenAPI from the validating models, errors, limits, SSE."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import hub.api as hub_api
from hub.app import Hub
from missioncontrol.netaddr import HostPort
from protos import link_pb2 as pb
from sidecar.app import Sidecar
from tests.support import (
    ADMIN_TOKEN,
    RecordingGateway,
    api,
    fast_backoff,
    hub_config,
    sidecar_config,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    assert hub.addresses is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session, f"http://{hub.addresses.http}"


async def test_openapi_documents_every_route_from_the_validating_models(
    hub: Hub, client: tuple[aiohttp.ClientSession, str]
) -> None:
    session, base = client
    async with session.get(f"{base}/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    routes = {(r.method.lower(), r.path) for r in hub_api.build_api().routes}
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes == documented
    create = document["paths"]["/api/v1/agents"]["post"]
    schema_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False  # unknown fields are refused
    assert "name" in schema["required"]
    assert "422" in create["responses"] and "401" in create["responses"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"name": "x", "bogus": 1}', 422, "bogus"),
        (b'{"name": 5}', 422, "name"),
        (b'{"name": "x",', 422, "not valid JSON"),
        (b"[]", 422, "object"),
        (b"{}", 422, "name"),
    ],
)
async def test_bad_bodies_get_a_422_that_names_the_field(
    client: tuple[aiohttp.ClientSession, str], body: bytes, status: int, needle: str
) -> None:
    session, base = client
    async with session.post(
        f"{base}/api/v1/gateways", data=body, headers={**AUTH, "Content-Type": "application/json"}
    ) as response:
        payload = await response.json()
        assert response.status == status
        assert needle.lower() in json.dumps(payload["detail"]).lower()
        assert payload["request_id"] == response.headers["X-Request-Id"]


async def test_oversized_bodies_are_refused_with_or_without_content_length(
    client: tuple[aiohttp.ClientSession, str],
) -> None:
    session, base = client
    big = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    async with session.post(f"{base}/api/v1/gateways", data=big, headers=AUTH) as response:
        assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # streamed: no Content-Length
        for _ in range(20):
            yield b"x" * 65536

    async with session.post(f"{base}/api/v1/gateways", data=chunks(), headers=AUTH) as response:
        assert response.status == 413
        assert "bytes" in (await response.json())["detail"]


async def test_wrong_admin_token_is_401_and_unknown_routes_are_json_404(
    client: tuple[aiohttp.ClientSession, str],
) -> None:
    session, base = client
    async with session.get(
        f"{base}/api/v1/agents", headers={"Authorization": "Bearer nope"}
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    async with session.get(f"{base}/api/v1/nothing-here", headers=AUTH) as response:
        body = await response.json()
        assert response.status == 404 and body["request_id"]


async def test_admin_rate_limit_answers_429_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    monkeypatch.setattr(hub_api, "ADMIN_RATE", (1.0, 3))
    instance = Hub(hub_config(tmp_path / "hub", database=database))
    await instance.start()
    try:
        assert instance.addresses is not None
        url = f"http://{instance.addresses.http}/api/v1/gateways"
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(5):
                async with session.get(url, headers=AUTH) as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        assert int(response.headers["Retry-After"]) >= 1
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    finally:
        await instance.stop()


async def test_agent_status_change_reaches_an_sse_client_within_100_ms(
    hub: Hub, client: tuple[aiohttp.ClientSession, str], tmp_path: Path
) -> None:
    session, base = client
    assert hub.addresses is not None
    gateway = RecordingGateway()
    config = sidecar_config(
        tmp_path / "sc", hub.addresses.link, gateway_id="gw-sse", workspace_root=tmp_path / "ws"
    )
    sidecar = Sidecar(config, gateway=gateway, link_backoff=fast_backoff())
    await sidecar.start()
    try:
        await wait_for(lambda: hub.registry.get("gw-sse"), what="connected")
        await wait_for(lambda: _root_known(hub), what="workspace root known")
        async with session.post(
            f"{base}/api/v1/boards", json={"name": "B", "gateway_id": "gw-sse"}, headers=AUTH
        ) as response:
            board = await response.json()
        events: list[tuple[float, dict[str, Any]]] = []

        async def listen() -> None:
            async with session.get(
                f"{base}/api/v1/agents/stream?board_id={board['id']}", headers=AUTH
            ) as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                async for line in response.content:
                    if line.startswith(b"data: "):
                        events.append((time.monotonic(), json.loads(line[6:])["agent"]))

        subscribers = len(hub.events)
        listener = asyncio.create_task(listen())
        await wait_for(lambda: len(hub.events) > subscribers, what="the stream subscribed")
        async with session.post(
            f"{base}/api/v1/agents", json={"name": "W", "board_id": board["id"]}, headers=AUTH
        ) as response:
            agent = await response.json()
        await wait_for(
            lambda: any(e[1]["status"] == "online" for e in events), what="online pushed"
        )
        # When did the hub commit `online`? The same instant the event went out: measure
        # from the row's updated_at to the client receiving it.
        online = next(e for e in events if e[1]["status"] == "online")
        assert online[1]["id"] == agent["id"]
        statuses = [e[1]["status"] for e in events]
        assert statuses[0] == "provisioning" and statuses[-1] == "online"
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await _published_change_arrives(hub, base, session, board["id"])
    finally:
        await sidecar.stop()


async def _root_known(hub: Hub) -> bool:
    row = await hub.store.get_gateway("gw-sse")
    return bool(row and row.workspace_root)


async def _published_change_arrives(
    hub: Hub, base: str, session: aiohttp.ClientSession, board_id: str
) -> None:
    """A change published on the bus reaches a subscribed SSE client."""
    received = asyncio.get_running_loop().create_future()

    async def listen() -> None:
        async with session.get(
            f"{base}/api/v1/agents/stream?board_id={board_id}", headers=AUTH
        ) as response:
            async for line in response.content:
                if line.startswith(b"data: ") and not received.done():
                    received.set_result(json.loads(line[6:])["agent"])

    subscribers = len(hub.events)
    listener = asyncio.create_task(listen())
    await wait_for(lambda: len(hub.events) > subscribers, what="the stream subscribed")
    hub.events.publish(
        "agent",
        {"id": "x", "board_id": board_id, "status": "online"},
        board_id=board_id,
        gateway_id="gw-sse",
    )
    arrived = await asyncio.wait_for(received, 5)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert arrived["id"] == "x"


async def test_gateway_rename_and_agent_filters_and_admin_heartbeat(
    hub: Hub, tmp_path: Path
) -> None:
    from tests.support import api, connected_sidecar

    async with connected_sidecar(hub, tmp_path, "gw-x") as (_, gateway):
        gateway.run_outcome = gateway.run_outcome.ERROR  # only a heartbeat checks in
        status, renamed = await api(hub, "PATCH", "/api/v1/gateways/gw-x", {"name": "Rack 4"})
        assert (status, renamed["name"]) == (200, "Rack 4")
        status, _ = await api(hub, "PATCH", "/api/v1/gateways/nope", {"name": "x"})
        assert status == 404
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": "gw-x"})
        _, agent = await api(hub, "POST", "/api/v1/agents", {"name": "W", "board_id": board["id"]})
        _, managed = await api(hub, "GET", "/api/v1/agents?is_mc_agent=true")
        _, unmanaged = await api(hub, "GET", "/api/v1/agents?is_mc_agent=false")
        assert [a["id"] for a in managed["items"]] == [agent["id"]] and unmanaged["total"] == 0
        await wait_for(lambda: gateway.count("wake") == 1, what="woken")
        status, after = await api(
            hub, "POST", f"/api/v1/agents/{agent['id']}/heartbeat", {"status": "online"}
        )
        assert status == 200 and after["status"] == "online" and after["wake_attempts"] == 0


async def test_cors_allows_only_configured_origins(tmp_path: Path) -> None:
    import dataclasses

    instance = Hub(
        dataclasses.replace(hub_config(tmp_path / "hub"), cors_origins=("https://dash.example",))
    )
    await instance.start()
    try:
        assert instance.addresses is not None
        url = f"http://{instance.addresses.http}/api/v1/gateways"
        async with aiohttp.ClientSession() as session:
            preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "GET"}
            async with session.options(url, headers=preflight) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example"
            async with session.get(
                url, headers={**AUTH, "Origin": "https://evil.example"}
            ) as response:
                assert response.status == 200
                assert "Access-Control-Allow-Origin" not in response.headers
    finally:
        await instance.stop()


async def test_a_connected_event_stream_does_not_hold_the_hub_stop(tmp_path: Path) -> None:
    config = dataclasses.replace(hub_config(tmp_path / "hub"), shutdown_grace_s=60.0)
    hub = Hub(config)
    await hub.start()
    assert hub.addresses is not None
    said: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        response = await session.get(
            f"http://{hub.addresses.http}/api/v1/agents/stream", headers=AUTH
        )
        await wait_for(lambda: len(hub.events) == 1, what="the stream subscribed")
        # Far less than the 60 s the HTTP server would otherwise wait for the handler.
        async with asyncio.timeout(20):
            await hub.stop()
            async for line in response.content:
                said.append(line)
        response.release()
    assert any(b"shutting down" in line for line in said)


async def _raw_request(address: HostPort, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange with bytes no client library would send."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?i)content-length: (\d+)", head)
        body = await reader.readexactly(int(length.group(1))) if length else b""
        return status, body
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe" + b"x" * 60,
        b"Authorization: \xff",
        b"X-Agent-Token: \xff" + b"a" * 55,
        b"X-Request-Id: \xff\xfe",
        b"Origin: http://\xff.example",
        b"Content-Type: application/\xff",
        b"X-MC-Via-Gateway: \xff",
        b"X-Hub-Signature-256: sha256=\xff",
        b"X-Custom: \xff\x1b[2J",
    ],
)
async def test_undecodable_bytes_in_any_header_are_never_a_500(hub: Hub, header: bytes) -> None:
    assert hub.addresses is not None
    await hub.store.create_gateway("gw-bytes", "gw-bytes")
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": "gw-bytes"}
    )
    assert status == 201, board
    status, webhook = await api(
        hub, "POST", f"/api/v1/boards/{board['id']}/webhooks", {"description": "triage"}
    )
    assert status == 201, webhook
    targets = [
        (b"GET", b"/api/v1/gateways", b""),
        (b"GET", b"/api/v1/agent/healthz", b""),
        (b"POST", b"/api/v1/agent/heartbeat", b"{}"),
        (b"POST", b"/api/v1/boards", b'{"name": "b", "gateway_id": "x"}'),
        (b"POST", webhook["endpoint_path"].encode(), b'{"event": "opened"}'),
    ]
    for method, path, body in targets:
        request = (
            method + b" " + path + b" HTTP/1.1\r\nHost: " + str(hub.addresses.http).encode()
            + b"\r\n" + header + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body
        )  # fmt: skip
        status, answer = await _raw_request(hub.addresses.http, request)
        assert status < 500, (path, status, answer)


async def test_guessing_the_admin_token_is_rate_limited_per_caller(hub: Hub) -> None:
    assert hub.addresses is not None
    url = f"http://{hub.addresses.http}/api/v1/gateways"
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        for attempt in range(60):
            wrong = {"Authorization": f"Bearer wrong-{attempt:03d}" + "x" * 50}
            async with session.get(url, headers=wrong) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
                    assert "failed credential checks" in (await response.json())["detail"]
                    break
    assert statuses[0] == 401 and statuses[-1] == 429
    assert 10 <= len(statuses) - 1 <= 45  # a burst of failures is checked, then refused


async def test_the_rest_api_over_tls_is_served_with_the_hub_ca_certificate(
    tmp_path: Path,
) -> None:
    config = dataclasses.replace(hub_config(tmp_path / "hub"), insecure_dev=False, http_tls="on")
    hub = Hub(config)
    await hub.start()
    try:
        assert hub.addresses is not None and hub.addresses.http_url.startswith("https://")
        pinned = ssl.create_default_context(cafile=str(tmp_path / "hub" / "ca" / "ca.crt"))
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{hub.addresses.http_url}/api/v1/gateways", headers=AUTH, ssl=pinned
            ) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served there
                async with session.get(f"http://{hub.addresses.http}/healthz") as response:
                    await response.read()
        # Agent calls a sidecar forwards reach the API over the same TLS listener.
        assert hub.agent_calls is not None
        forwarded = await hub.agent_calls.handle(
            "gw-tls", pb.AgentCall(method="GET", path="/api/v1/agent/healthz", agent_token="x")
        )
        assert forwarded.status == 401  # answered by the API, not a 502 from the forwarder
    finally:
        await hub.stop()


async def test_an_unknown_field_is_named_with_the_fields_the_request_takes(hub: Hub) -> None:
    status, body = await api(hub, "POST", "/api/v1/gateways", {"name": "gw", "colour": "red"})
    assert status == 422
    (error,) = body["detail"]
    assert error["loc"] == ["colour"] and error["type"] == "extra_forbidden"
    assert "unknown field 'colour'" in error["msg"] and "takes: " in error["msg"]
    assert "name" in error["msg"].split("takes: ")[1]
    status, body = await api(
        hub, "POST", "/api/v1/agents", {"name": "a", "heartbeat_config": {"cadence": "5m"}}
    )
    assert status == 422
    nested = next(e for e in body["detail"] if e["loc"] == ["heartbeat_config", "cadence"])
    assert "every" in nested["msg"]  # the nested model's own fields
