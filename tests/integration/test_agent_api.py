"""The sidecar's local agent API over real HTTP on loopback, with credentials that came
from the hub over the real link, and heartbeats that end up in the hub's SQLite."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import structlog

from hub.app import Hub
from missioncontrol.agent_token import sidecar_verifier
from protos import link_pb2 as pb
from protos.contract import timestamp
from sidecar.agent_api import AgentApiLimits
from tests.integration.agent_setup import (
    GATEWAY,
    KEYRING,
    agent_env,
    all_commands_acked,
    last_seen,
)
from tests.support import wait_for


def assert_error_shape(body: dict[str, object], headers: Mapping[str, str]) -> None:
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == headers["X-Request-Id"]


async def test_valid_token_is_accepted_and_the_beat_reaches_the_hub(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub) as env:
        agent = env.agents[0]
        sent_at = time.time()
        status, body, headers = await env.beat(agent, {"status": "working"})
        assert status == 202
        assert body == {"ok": True, "agent_id": agent, "relayed": "queued"}
        assert headers["X-Request-Id"]
        seen = await wait_for(
            lambda: _seen(hub, agent), timeout_s=10, what="last_seen_at recorded by the hub"
        )
        assert sent_at - 1 <= seen <= time.time()
        assert (await last_seen(hub))[env.agents[1]] is None  # only the agent that beat


async def _seen(hub: Hub, agent: str) -> float | None:
    return (await last_seen(hub)).get(agent)


async def test_bearer_header_and_the_named_path_for_oneself_are_accepted(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub) as env:
        agent = env.agents[0]
        url = f"{env.base}/api/v1/agents/{agent}/heartbeat"
        headers = {"Authorization": f"Bearer {env.tokens[agent]}", "X-Request-Id": "req-123"}
        async with env.http.post(url, headers=headers) as response:  # no body at all
            assert response.status == 202
            assert response.headers["X-Request-Id"] == "req-123"
            assert (await response.json())["agent_id"] == agent


async def test_hello_names_the_bound_agent_api_address(hub: Hub, tmp_path: Path) -> None:
    async with agent_env(tmp_path, hub) as env:
        address = env.sidecar.agent_api.address
        assert address is not None and address.host == "127.0.0.1" and address.port != 0
        row = await hub.store.get_gateway(GATEWAY)
        assert row is not None
        assert row.agent_api_url == f"http://127.0.0.1:{address.port}"


async def test_missing_malformed_unknown_and_forged_tokens_are_401_and_never_logged(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub) as env:
        real = env.tokens[env.agents[0]]
        forged = real[:13] + ("A" if real[13] != "A" else "B") + real[14:]
        stranger = KEYRING.mint().raw
        cases: list[dict[str, str]] = [
            {},
            {"X-Agent-Token": ""},
            {"X-Agent-Token": "not-a-token"},
            {"X-Agent-Token": "x" * 4000},
            {"X-Agent-Token": stranger},
            {"X-Agent-Token": forged},
            {"Authorization": f"Basic {real}"},
        ]
        url = f"{env.base}/api/v1/agent/heartbeat"
        with structlog.testing.capture_logs() as logs:
            for headers in cases:
                async with env.http.post(url, headers=headers) as response:
                    body = await response.json()
                    assert response.status == 401, headers
                    assert response.headers["WWW-Authenticate"] == "Bearer"
                    assert_error_shape(body, response.headers)
                    for secret in (forged, stranger, real):
                        assert secret not in body["detail"]
        rejected = [e for e in logs if e["event"] == "agent_api.heartbeat.rejected"]
        assert len(rejected) == len(cases)
        text = repr(logs)
        for secret in (forged[13:], stranger[13:], real[13:]):
            assert secret not in text
        assert env.sidecar.relay.stats.received == 0


async def test_token_of_one_agent_cannot_heartbeat_for_another(hub: Hub, tmp_path: Path) -> None:
    async with agent_env(tmp_path, hub) as env:
        a, b = env.agents
        status, body, headers = await env.beat(a, path=f"/api/v1/agents/{b}/heartbeat")
        assert status == 403
        assert_error_shape(body, headers)
        assert a in str(body["detail"]) and b in str(body["detail"])
        assert env.sidecar.relay.stats.received == 0


async def test_malformed_or_unknown_body_is_422_naming_the_cause(hub: Hub, tmp_path: Path) -> None:
    async with agent_env(tmp_path, hub) as env:
        agent = env.agents[0]
        url = f"{env.base}/api/v1/agent/heartbeat"
        headers = {"X-Agent-Token": env.tokens[agent], "Content-Type": "application/json"}
        cases = [
            (b'{"status": ', "not valid JSON"),
            (b'"working"', "must be a JSON object"),
            (b'{"status": "ok", "mood": "great"}', "'mood'"),
            (b'{"status": 42}', "'status' must be a string"),
            (b'{"current_task_id": "' + b"t" * 200 + b'"}', "'current_task_id'"),
        ]
        for payload, phrase in cases:
            async with env.http.post(url, data=payload, headers=headers) as response:
                body = await response.json()
                assert response.status == 422, payload
                assert phrase in body["detail"]
                assert_error_shape(body, response.headers)
        assert env.sidecar.relay.stats.received == 0


async def test_oversized_body_is_413(hub: Hub, tmp_path: Path) -> None:
    async with agent_env(tmp_path, hub) as env:
        huge = {"status": "x" * (17 * 1024)}
        status, body, headers = await env.beat(env.agents[0], huge)
        assert status == 413
        assert "16384" in str(body["detail"])
        assert_error_shape(body, headers)
        # Chunked, so the declared length cannot give it away.
        url = f"{env.base}/api/v1/agent/heartbeat"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b" " * 1024

        headers2 = {"X-Agent-Token": env.tokens[env.agents[0]]}
        async with env.http.post(url, data=chunks(), headers=headers2) as response:
            assert response.status == 413
            assert_error_shape(await response.json(), response.headers)


async def test_rate_limit_is_per_agent_and_answers_429_with_retry_after(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub) as env:
        noisy, quiet = env.agents
        results = [await env.beat(noisy) for _ in range(40)]
        statuses = [status for status, _, _ in results]
        assert statuses[:20] == [202] * 20  # the burst
        limited = [r for r in results if r[0] == 429]
        assert len(limited) >= 10
        _, body, headers = limited[0]
        assert int(headers["Retry-After"]) >= 1
        assert "rate limit" in str(body["detail"])
        assert_error_shape(body, headers)
        # Same host, same IP, another agent: unaffected.
        assert (await env.beat(quiet))[0] == 202


async def test_healthz_needs_a_token_and_errors_are_json_everywhere(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub) as env:
        agent = env.agents[0]
        url = f"{env.base}/api/v1/agent/healthz"
        async with env.http.get(url) as response:
            assert response.status == 401
        async with env.http.get(url, headers={"X-Agent-Token": env.tokens[agent]}) as response:
            assert response.status == 200
            assert await response.json() == {
                "ok": True,
                "agent_id": agent,
                "gateway_id": GATEWAY,
                "hub_connected": True,
            }
        async with env.http.get(f"{env.base}/api/v1/nope") as response:
            body = await response.json()
            assert response.status == 404
            assert_error_shape(body, response.headers)
        async with env.http.get(f"{env.base}/api/v1/agent/heartbeat") as response:
            body = await response.json()
            assert response.status == 405
            assert "POST" in response.headers["Allow"]
            assert_error_shape(body, response.headers)


async def test_heartbeat_latency_on_loopback(hub: Hub, tmp_path: Path) -> None:
    """Prints p50/p99 of 1000 sequential heartbeat POSTs (a figure, not a gate)."""
    unlimited = AgentApiLimits(rate_per_s=1e9, burst=1e9)
    async with agent_env(tmp_path, hub, agents=1, limits=unlimited) as env:
        agent = env.agents[0]
        url = f"{env.base}/api/v1/agent/heartbeat"
        headers = {"X-Agent-Token": env.tokens[agent]}
        payload = b'{"status": "working", "current_task_id": "task-1"}'
        samples_ms: list[float] = []
        for _ in range(1000):
            started = time.perf_counter()
            async with env.http.post(url, data=payload, headers=headers) as response:
                await response.read()
                assert response.status == 202
            samples_ms.append((time.perf_counter() - started) * 1000)
        samples_ms.sort()
        p50 = statistics.median(samples_ms)
        p99 = samples_ms[int(len(samples_ms) * 0.99) - 1]
        print(
            f"agent API heartbeat latency over 1000 sequential POSTs: p50 {p50:.3f} ms, "
            f"p99 {p99:.3f} ms"
        )
        # Coalesced: a thousand beats from one agent are a handful of batches.
        await wait_for(lambda: not env.sidecar.relay.unacked(), what="relay drained")
        assert env.sidecar.relay.stats.batches_sent < 50


async def test_rotated_credentials_from_the_hub_take_effect_without_a_restart(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub) as env:
        agent, other = env.agents
        old_raw, new = env.tokens[agent], KEYRING.mint()
        rotate = pb.Command(
            set_credentials=pb.SetAgentCredentials(
                agent_id=agent,
                credentials=[
                    pb.AgentCredential(token_id=new.token_id, sha256=new.sidecar_sha256),
                    pb.AgentCredential(
                        token_id=old_raw[:12],
                        sha256=sidecar_verifier(old_raw),
                        not_after=timestamp(time.time() - 1),  # grace already over
                    ),
                ],
            )
        )
        await hub.store.enqueue_command(GATEWAY, rotate)
        await wait_for(lambda: all_commands_acked(hub), what="rotation applied")
        status, body, _ = await env.beat(agent)
        assert status == 401 and "grace window ended" in str(body["detail"])
        env.tokens[agent] = new.raw
        assert (await env.beat(agent))[0] == 202
        assert (await env.beat(other))[0] == 202  # the other agent's token is untouched
