"""What the local agent API takes from outside, tried as classes, over raw HTTP.

Requests are written byte for byte to the socket (an HTTP library would normalise
the very paths and headers under test). Each class: every route, every header the
sidecar reads, every heartbeat body field, every non-plain path shape.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from hub.app import Hub
from missioncontrol.agent_api import HEARTBEAT_FIELDS
from sidecar.agent_api import AgentApiLimits
from tests.integration.agent_setup import KEYRING, AgentEnv, agent_env

# One request per route the agent API serves (the forwarded one reaches the hub).
ROUTES = [
    ("POST", "/api/v1/agent/heartbeat"),
    ("POST", "/api/v1/agents/{agent}/heartbeat"),
    ("GET", "/api/v1/agent/healthz"),
    ("GET", "/api/v1/agent/boards"),
]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(
    port: int,
    method: str,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    *,
    host: bytes | None = None,
) -> Answer:
    """One HTTP/1.1 request written as given (Host defaults to 127.0.0.1:PORT)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [method.encode() + b" " + target + b" HTTP/1.1"]
        lines.append(b"Host: " + (host if host is not None else f"127.0.0.1:{port}".encode()))
        lines += [name + b": " + value for name, value in headers]
        lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), parsed, payload)


def port_of(env: AgentEnv) -> int:
    address = env.sidecar.agent_api.address
    assert address is not None
    return address.port


def token_header(env: AgentEnv, agent: str) -> tuple[bytes, bytes]:
    return (b"X-Agent-Token", env.tokens[agent].encode())


def assert_our_error(answer: Answer, status: int, phrase: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    body = answer.json()
    assert phrase in body["detail"], body
    assert body["request_id"] == answer.headers["x-request-id"]


def route_target(path: str, agent: str) -> bytes:
    return path.replace("{agent}", agent).encode()


# ---------------------------------------------------------------- who may call


NON_LOOPBACK_HOSTS = [
    b"evil.example",
    b"evil.example:18790",
    b"127.0.0.1.nip.io",  # a name that resolves to loopback is still a name
    b"localhost.evil.example",
    b"[::2]:18790",
    b"0.0.0.0",
    b"::1",  # an IPv6 address without brackets is no Host
    b"127.0.0.1:x",
    b"",
    b"\xff",
]
BROWSER_HEADERS = [
    (b"Origin", b"http://evil.example"),
    (b"Origin", b"null"),
    (b"Origin", b"http://127.0.0.1"),  # even a page served from loopback
    (b"Sec-Fetch-Site", b"cross-site"),
    (b"Sec-Fetch-Mode", b"cors"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_refuses_non_loopback_hosts_and_browsers(
    hub: Hub, tmp_path: Path, method: str, path: str
) -> None:
    async with agent_env(tmp_path, hub, agents=1) as env:
        agent = env.agents[0]
        port, target = port_of(env), route_target(path, agent)
        for host in NON_LOOPBACK_HOSTS:
            answer = await raw_request(port, method, target, [token_header(env, agent)], host=host)
            assert_our_error(answer, 403, "loopback")
        for header in BROWSER_HEADERS:
            answer = await raw_request(port, method, target, [token_header(env, agent), header])
            assert_our_error(answer, 403, "browser")
        # A CORS preflight gets no CORS answer either.
        preflight = await raw_request(
            port, "OPTIONS", target, [(b"Origin", b"http://evil.example")]
        )
        assert preflight.status == 403
        assert "access-control-allow-origin" not in preflight.headers
        assert env.sidecar.relay.stats.received == 0
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
            answer = await raw_request(
                port, method, target, [token_header(env, agent)], host=host.encode()
            )
            # Past the check (the forwarded route then gets the hub's own verdict).
            assert answer.status < 500, (host, answer.status, answer.body)
            assert b"loopback" not in answer.body and b"browser" not in answer.body, host


# ---------------------------------------------------------------- failed token checks


def unknown_token() -> str:
    return KEYRING.mint().raw  # well formed, never issued to this gateway


def wrong_secret(token: str) -> str:
    return token[:13] + secrets.token_urlsafe(32)[:43]


async def test_failed_token_checks_are_limited_per_token_id_and_never_lock_out_others(
    hub: Hub, tmp_path: Path
) -> None:
    limits = AgentApiLimits(failed_auth_rate_per_s=0.001, failed_auth_burst=5)
    async with agent_env(tmp_path, hub, agents=2, limits=limits) as env:
        target, other = env.agents
        port = port_of(env)
        floods = {
            "unknown token ids (a fresh id each time)": lambda: unknown_token(),
            "malformed tokens": lambda: secrets.token_hex(8),
            "the target's token id with guessed secrets": lambda: wrong_secret(env.tokens[target]),
        }
        for what, guess in floods.items():
            statuses = []
            for _ in range(12):
                answer = await raw_request(
                    port,
                    "POST",
                    b"/api/v1/agent/heartbeat",
                    [(b"X-Agent-Token", guess().encode())],
                )
                statuses.append(answer.status)
            assert statuses[:5] == [401] * 5, what
            assert set(statuses[5:]) == {429}, what  # refused before any check
            assert int(answer.headers["retry-after"]) >= 1
            assert "too many failed credential checks" in answer.json()["detail"]
            # The other agent's valid token is never held back by someone else's failures.
            ok = await raw_request(
                port, "POST", b"/api/v1/agent/heartbeat", [token_header(env, other)]
            )
            assert ok.status == 202, what
        # A drained token id is not checked at all, so even its right secret waits: a
        # guesser learns nothing from the answers while the limit holds.
        held = await raw_request(
            port, "POST", b"/api/v1/agent/heartbeat", [token_header(env, target)]
        )
        assert held.status == 429


async def test_rejection_log_lines_are_bounded_and_say_how_many_were_held_back(
    hub: Hub, tmp_path: Path
) -> None:
    limits = AgentApiLimits(
        failed_auth_rate_per_s=1e9,  # every guess checked, so every one is a rejection
        failed_auth_burst=1e9,
        rejection_log_rate_per_s=0.001,
        rejection_log_burst=4,
    )
    async with agent_env(tmp_path, hub, agents=1, limits=limits) as env:
        port = port_of(env)
        with structlog.testing.capture_logs() as logs:
            for _ in range(50):
                answer = await raw_request(
                    port,
                    "POST",
                    b"/api/v1/agent/heartbeat",
                    [(b"X-Agent-Token", unknown_token().encode())],
                )
                assert answer.status == 401
        lines = [e for e in logs if e["event"].startswith("agent_api.")]
        assert len(lines) == 4
        assert all(e["log_level"] == "warning" for e in lines)


# ---------------------------------------------------------------- headers and bodies

# Every request header the sidecar reads, and what is hostile in it.
READ_HEADERS = [
    b"Host",
    b"Origin",
    b"X-Request-Id",
    b"X-Agent-Token",
    b"Authorization",
    b"Content-Type",
    b"Sec-Fetch-Site",
]
HOSTILE_VALUES = [b"\xff", b"\xff\xfe\xfd", b"Bearer \xff", b"\xc3\x28", "é".encode(), b"x" * 4000]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_no_header_value_is_ever_a_500(
    hub: Hub, tmp_path: Path, method: str, path: str
) -> None:
    async with agent_env(tmp_path, hub, agents=1) as env:
        agent = env.agents[0]
        port, target = port_of(env), route_target(path, agent)
        for name in READ_HEADERS:
            for value in HOSTILE_VALUES:
                headers = [] if name == b"Host" else [(name, value)]
                if name not in (b"X-Agent-Token", b"Authorization"):
                    headers.append(token_header(env, agent))
                answer = await raw_request(
                    port,
                    method,
                    target,
                    headers,
                    host=value if name == b"Host" else None,
                )
                assert answer.status < 500, (name, value, answer.status, answer.body)
                if answer.headers.get("content-type", "").startswith("application/json"):
                    body = answer.json()
                    assert "internal error" not in str(body.get("detail")), (name, value)


async def test_a_forwarded_call_with_an_undecodable_content_type_is_400(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub, agents=1) as env:
        agent = env.agents[0]
        answer = await raw_request(
            port_of(env),
            "POST",
            b"/api/v1/agent/boards",
            [token_header(env, agent), (b"Content-Type", b"\xff")],
            b"{}",
        )
        assert_our_error(answer, 400, "Content-Type")


def hostile_field_values(max_chars: int) -> list[tuple[bytes, str]]:
    """(JSON value, phrase of the refusal) for one string field."""
    return [
        (b'"\\ud800"', "UTF-8"),  # a lone surrogate
        (b'"\\udc00 tail"', "UTF-8"),
        (b'"a\\u0000b"', "control character"),
        (b'"line\\nbreak"', "control character"),
        (b'"a\\u2028b"', "control character"),  # alone it is whitespace, stripped
        (b'"\\u009b"', "control character"),
        (b'"' + b"x" * (max_chars + 1) + b'"', "characters"),
        (b"9" * 5000, "too long to read"),  # a number Python will not read
        (b"1" * 100, "must be a string"),
        (b"1e999", "must be a string"),
        (b"true", "must be a string"),
        (b"[]", "must be a string"),
        (b'{"a": 1}', "must be a string"),
        (b"[" * 8000 + b"]" * 8000, "nested too deeply"),  # within the body cap
    ]


@pytest.mark.parametrize("field", sorted(HEARTBEAT_FIELDS))
async def test_every_heartbeat_body_field_refuses_what_the_hub_refuses(
    hub: Hub, tmp_path: Path, field: str
) -> None:
    async with agent_env(tmp_path, hub, agents=1) as env:
        agent = env.agents[0]
        for value, phrase in hostile_field_values(HEARTBEAT_FIELDS[field]):
            body = b'{"' + field.encode() + b'": ' + value + b"}"
            answer = await raw_request(
                port_of(env),
                "POST",
                b"/api/v1/agent/heartbeat",
                [token_header(env, agent), (b"Content-Type", b"application/json")],
                body,
            )
            assert_our_error(answer, 422, phrase)
        assert env.sidecar.relay.stats.received == 0
        # Spaces around a value are dropped, as the hub drops them.
        ok = await raw_request(
            port_of(env),
            "POST",
            b"/api/v1/agent/heartbeat",
            [token_header(env, agent)],
            b'{"' + field.encode() + b'": "  working  "}',
        )
        assert ok.status == 202
        assert env.sidecar.relay.stats.received == 1


# ---------------------------------------------------------------- forwarded paths

NOT_PLAIN = [
    b"/api/v1/agent/%252e%252e/openapi.json",  # double-encoded dot segments
    b"/api/v1/agent/%252e%252e/%252e%252e/api/v1/gateways",
    b"/api/v1/agent/%2e%2e/%2e%2e/api/v1/gateways",
    b"/api/v1/agent/../../api/v1/gateways",
    b"/api/v1/agent/./boards",
    b"/api/v1/agent/boards%2f..%2f..%2fgateways",  # an encoded slash
    b"/api/v1/agent/boards%2F..%2F..%2Fgateways",
    b"/api/v1/agent/boards\\..\\..\\gateways",  # backslashes
    b"/api/v1/agent/%5c..%5cgateways",
    b"/api/v1/agent//boards",  # empty segments
    b"/api/v1/agent/boards//x",
    b"/api/v1/agent/boards/",
    b"/api/v1/agen%74/boards",  # an escape that decodes to a plain path is still one
    b"/api/v1/agent/boards%00",
    b"/api/v1/agent/%ff",
    b"/api/v1/agent/" + b"a" * 5000,
]


async def test_a_path_that_is_not_plain_is_refused_locally_with_the_reason(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub, agents=1) as env:
        agent = env.agents[0]
        with structlog.testing.capture_logs() as logs:
            for target in NOT_PLAIN:
                answer = await raw_request(port_of(env), "GET", target, [token_header(env, agent)])
                assert_our_error(answer, 404, "not a path of the agent API")
                assert "no %-escapes" in answer.json()["detail"]
            plain = await raw_request(
                port_of(env), "GET", b"/api/v1/agent/boards", [token_header(env, agent)]
            )
        assert plain.status != 404 or "not a path" not in plain.body.decode(), plain.body
        # None of them reached the hub, whose own refusal would have logged this.
        assert not [e for e in logs if e["event"] == "agent_call.refused"]


async def test_the_query_string_is_forwarded_as_sent_and_bounded(hub: Hub, tmp_path: Path) -> None:
    async with agent_env(tmp_path, hub, agents=1) as env:
        agent = env.agents[0]
        too_long = b"/api/v1/agent/boards?q=" + b"a" * 5000
        answer = await raw_request(port_of(env), "GET", too_long, [token_header(env, agent)])
        assert_our_error(answer, 400, "query string")
        encoded = await raw_request(
            port_of(env), "GET", b"/api/v1/agent/boards?limit=%ff%0a", [token_header(env, agent)]
        )
        assert encoded.status < 500, encoded.body
