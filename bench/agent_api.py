"""Local heartbeat API: requests/s and latency with valid tokens, sidecar against bare aiohttp.

Server (core 0): the sidecar's `AgentApi` with its `CredentialIndex` and a real
`HeartbeatRelay` whose link is up and acknowledges every batch at once; or, as the
BASELINE, a bare aiohttp handler answering the same JSON. The per-agent rate limit
still runs on every request but is raised far above the load, so every request is a
valid, accepted heartbeat. Load (core 1): keep-alive HTTP/1.1 connections on raw asyncio
streams in their own process (much cheaper per request than aiohttp's client),
cycling through the agents' tokens.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection as mpc
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from bench.harness import (
    LOAD_CORE,
    SERVER_CORE,
    Child,
    Figure,
    Section,
    Sizes,
    Target,
    child,
    free_port,
    percentile,
    pin_to,
    quiet_logs,
    report_errors,
)
from hub.provisioning.agent_tokens import TokenKeyring
from missioncontrol.agent_token import sidecar_verifier

CONCURRENCY = 64
BODY = b'{"status": "working"}'
PATH = "/api/v1/agent/heartbeat"


def missing_reason() -> str | None:
    """Why the sidecar's agent API cannot be benchmarked yet, or None."""
    try:
        import sidecar.agent_api
        import sidecar.credentials
        import sidecar.link.heartbeats  # noqa: F401
    except ImportError as exc:
        return f"sidecar agent API not importable yet ({exc})"
    return None


def run(sizes: Sizes) -> Section:
    section = Section("agent_api", "Local heartbeat API")
    reason = missing_reason()
    if reason is not None:
        section.available = False
        section.reason = reason
        return section
    keyring = TokenKeyring(os.urandom(32))
    minted = [keyring.mint() for _ in range(max(sizes.api_agents))]
    credentials = [
        (m.token_id, f"mc-agent-{i}", sidecar_verifier(m.raw)) for i, m in enumerate(minted)
    ]
    results: dict[str, dict[int, list[dict[str, float]]]] = {"sidecar": {}, "bare": {}}
    for kind in ("sidecar", "bare"):
        port = free_port()
        server = Child(_server_main, kind, port, credentials, name=f"bench-api-{kind}")
        try:
            server.recv(60.0)
            for agents in sizes.api_agents:
                tokens = [m.raw for m in minted[:agents]]
                with child(
                    _client_main, port, tokens, name="bench-api-load", ready_timeout_s=60.0
                ) as load:
                    runs = results[kind].setdefault(agents, [])
                    for _ in range(sizes.runs):
                        runs.append(load.ask(("run", sizes.api_duration_s), 120.0))
        finally:
            server.stop()
    for agents in sizes.api_agents:
        real, bare = results["sidecar"][agents], results["bare"][agents]
        section.figures += [
            Figure(
                f"sidecar AgentApi, {agents:,} agents",
                "req/s",
                [r["rps"] for r in real],
                "bare aiohttp",
                [r["rps"] for r in bare],
                target=Target(">=", 0.6, on="ratio"),
            ),
            Figure(
                f"  p50 latency, {agents:,} agents",
                "ms",
                [r["p50_ms"] for r in real],
                "bare aiohttp",
                [r["p50_ms"] for r in bare],
            ),
            Figure(
                f"  p99 latency, {agents:,} agents",
                "ms",
                [r["p99_ms"] for r in real],
                "bare aiohttp",
                [r["p99_ms"] for r in bare],
            ),
        ]
        failed = sum(r["failed"] for r in real)
        if failed:
            section.notes.append(f"{agents} agents: {failed:.0f} requests not answered 202")
    section.notes.append(
        f"{CONCURRENCY} connections from one client process; the per-agent rate limit "
        "(10/s by default) raised so every request is accepted"
    )
    return section


# ------------------------------------------------------------------- server


def _server_main(
    conn: mpc.Connection, kind: str, port: int, credentials: list[tuple[str, str, bytes]]
) -> None:
    report_errors(conn, lambda: asyncio.run(_serve(conn, kind, port, credentials)))


async def _serve(
    conn: mpc.Connection, kind: str, port: int, credentials: list[tuple[str, str, bytes]]
) -> None:
    from aiohttp import web

    pin_to(SERVER_CORE)
    quiet_logs()
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        if kind == "sidecar":
            stop = await _start_sidecar_api(Path(tmp), port, credentials)
        else:

            async def heartbeat(request: web.Request) -> web.Response:
                await request.read()
                return web.json_response(
                    {"ok": True, "agent_id": "mc-agent-0", "relayed": "queued"}, status=202
                )

            app = web.Application()
            app.router.add_post(PATH, heartbeat)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            stop = runner.cleanup
        conn.send({"ready": True})
        loop.add_reader(conn.fileno(), stopped.set)
        try:
            await stopped.wait()
        finally:
            loop.remove_reader(conn.fileno())
            await stop()


async def _start_sidecar_api(
    state_dir: Path, port: int, credentials: list[tuple[str, str, bytes]]
) -> Any:
    from bench.sidecars import CredentialRows
    from missioncontrol.netaddr import HostPort
    from protos import link_pb2 as pb
    from sidecar.agent_api import AgentApi, AgentApiLimits
    from sidecar.credentials import CredentialIndex
    from sidecar.link.client import LinkStatus
    from sidecar.link.heartbeats import HeartbeatRelay
    from sidecar.state import Credential, LocalState

    loop = asyncio.get_running_loop()
    state = LocalState(state_dir / "state.sqlite3")
    rows = [Credential(token_id, agent_id, sha) for token_id, agent_id, sha in credentials]
    index = CredentialIndex(cast(Any, CredentialRows(rows)))
    index.reload()
    relay: HeartbeatRelay

    def send(message: pb.SidecarMessage) -> None:  # the hub acknowledges at once
        loop.call_soon(relay.on_ack, message.heartbeats.batch_id)

    relay = HeartbeatRelay(send, state)
    relay.on_link_status(LinkStatus(connected=True, since=time.time()))
    await relay.start()
    limits = AgentApiLimits(rate_per_s=1e9, burst=1e9, max_tracked_agents=len(rows) + 1)
    api = AgentApi(
        HostPort("127.0.0.1", port),
        index,
        relay,
        gateway_id="bench-gw",
        hub_connected=lambda: True,
        limits=limits,
    )
    await api.start()

    async def stop() -> None:
        await api.stop()
        await relay.stop()
        state.close()

    return stop


# ------------------------------------------------------------------- client


def _client_main(conn: mpc.Connection, port: int, tokens: list[str]) -> None:
    report_errors(conn, lambda: asyncio.run(_clients(conn, port, tokens)))


async def _clients(conn: mpc.Connection, port: int, tokens: list[str]) -> None:
    pin_to(LOAD_CORE)
    requests = [
        (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Agent-Token: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        ).encode()
        + BODY
        for token in tokens
    ]
    conn.send({"ready": True})
    while (request := await asyncio.to_thread(conn.recv)) is not None:
        _, duration_s = request
        conn.send(await _one_run(port, requests, duration_s))


async def _one_run(port: int, requests: list[bytes], duration_s: float) -> dict[str, float]:
    """Keep-alive HTTP/1.1 over raw streams: a client far cheaper than the server it loads."""
    latencies: list[float] = []
    failed = 0
    next_request = 0
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal next_request, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                payload = requests[next_request % len(requests)]
                next_request += 1
                started = time.perf_counter()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 202"):
                    failed += 1
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "failed": float(failed),
    }
