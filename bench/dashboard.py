"""Dashboard: how long each page takes to answer with a large fleet in the store, beside
the JSON API's answer for the same data.

The store (bench/seed.py, then history added here with plain SQL) holds 1,000 gateways
with 10 agents each, a board per gateway with tasks, about ten event log entries per
agent, a week of fleet samples and a certificate per gateway; a tenth of the agents are
offline with a reason. The real hub (hub.app.Hub) serves it from its own process on
core 0; this process (core 1) logs in once and asks each page in turn, one request at a
time, measuring the time to the last byte. A figure is the median over the requests of
a run; the baseline is the API route that returns the same rows as JSON.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.harness import LOAD_CORE, Figure, Section, Sizes, Target, free_port, pin_to
from bench.hubproc import ADMIN_TOKEN, HubAddress, start_hub
from bench.seed import SeededAgent, seed
from hub.store.database import connect

AGENTS_PER_GATEWAY = 10
EVENTS_PER_AGENT = 10
TASKS_PER_BOARD = 5
TARGET_MS = 100.0


def add_history(path: Path, agents: list[SeededAgent], gateways: int) -> None:
    """Offline agents with reasons, event log entries, tasks, samples and certificates."""
    now = time.time()
    rng = random.Random(7)
    conn = connect(path)
    conn.execute("BEGIN")
    offline = agents[::AGENTS_PER_GATEWAY][: len(agents) // 10] + agents[1::97]
    conn.executemany(
        "UPDATE agents SET status = 'offline', wake_attempts = 3, last_provision_error = ? "
        "WHERE id = ?",
        [
            ("agent did not check in after 3 wakes; max wake attempts reached", a.id)
            for a in offline
        ],
    )
    conn.execute("UPDATE gateways SET connected_at = ?, last_seen_at = ?", (now - 7200, now - 60))
    kinds = (
        ("agent.created", {"agent_kind": "worker"}),
        ("lifecycle.queue.enqueued", {"command": "apply_agent", "generation": 1, "wake": True}),
        ("command.queued", {"sequence": 1, "command": "apply_agent"}),
        ("command.acked", {"sequence": 1, "outcome": "APPLIED"}),
        ("lifecycle.wake.delivered", {"generation": 1, "attempt": 1}),
        ("lifecycle.reconcile.retriggered", {"attempt": 2}),
        ("lifecycle.wake.delivered", {"generation": 1, "attempt": 2}),
        ("lifecycle.checkin.accepted", {"source": "heartbeat"}),
        ("lifecycle.wake.undeliverable", {"reason": "gateway_unreachable"}),
        ("gateway.drift", {"drift": "CHANGED", "detail": "model"}),
    )
    rows = []
    for index, agent in enumerate(agents):
        for step in range(EVENTS_PER_AGENT):
            kind, detail = kinds[step % len(kinds)]
            at = now - 86400 * 3 + index * 0.5 + step
            who = agent.gateway_agent_id if kind.startswith(("command.", "gateway.")) else agent.id
            rows.append((at, kind, agent.gateway_id, who, json.dumps(detail)))
    conn.executemany(
        "INSERT INTO events (at, kind, gateway_id, agent_id, detail) VALUES (?, ?, ?, ?, ?)", rows
    )
    statuses = ("inbox", "in_progress", "review", "done")
    conn.executemany(
        "INSERT INTO tasks (id, board_id, title, status, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                f"task-{g}-{t}",
                f"board-bench-gw-{g:05d}",
                f"task {t}",
                statuses[t % 4],
                now - 86400 * 14,
                now - rng.random() * 86400 * 14,
            )
            for g in range(gateways)
            for t in range(TASKS_PER_BOARD)
        ],
    )
    conn.executemany(
        "INSERT INTO fleet_samples (at, counts) VALUES (?, ?)",
        [
            (
                now - i * 300,
                json.dumps(
                    {"agents.online": len(agents) - rng.randint(0, 200), "gateways.total": gateways}
                ),
            )
            for i in range(7 * 288)
        ],
    )
    conn.executemany(
        "INSERT INTO certificates (serial, gateway_id, issued_at, not_after) VALUES (?, ?, ?, ?)",
        [
            (f"{g:x}", f"bench-gw-{g:05d}", now - 86400, now + (86400 * (2 if g % 50 == 0 else 29)))
            for g in range(gateways)
        ],
    )
    conn.execute("COMMIT")
    conn.close()


def pages(agents: list[SeededAgent], gateways: int) -> list[tuple[str, str, str | None]]:
    """(figure, dashboard path, the API path for the same data or None)."""
    agent = agents[len(agents) // 2]
    last = max(0, gateways - 50)
    board = f"board-{agent.gateway_id}"
    return [
        ("overview", "/ui/", None),
        ("fleet, first page", "/ui/fleet", "/api/v1/gateways?limit=50"),
        (
            "fleet, last page",
            f"/ui/fleet?offset={last}",
            f"/api/v1/gateways?limit=50&offset={last}",
        ),
        ("fleet, filtered by name", "/ui/fleet?q=gw-0042&state=disconnected", None),
        ("gateway", f"/ui/gateways/{agent.gateway_id}", f"/api/v1/gateways/{agent.gateway_id}"),
        ("boards", "/ui/boards", "/api/v1/boards?limit=50"),
        ("board", f"/ui/boards/{board}", f"/api/v1/agents?board_id={board}"),
        ("agents, offline", "/ui/agents?status=offline", "/api/v1/agents?limit=50"),
        ("agent with timeline", f"/ui/agents/{agent.id}", f"/api/v1/agents/{agent.id}"),
    ]


async def _time(
    session: aiohttp.ClientSession, url: str, requests: int, **options: object
) -> float:
    took = []
    for attempt in range(requests + 2):  # two to warm up
        started = time.perf_counter()
        async with session.get(url, **options) as response:  # type: ignore[arg-type]
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")
        if attempt >= 2:
            took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


async def _log_in(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(base + "/ui/login") as response:
        found = re.search(r'name="csrf_token" value="([^"]+)"', await response.text())
    assert found is not None
    async with session.post(
        base + "/ui/login", data={"token": ADMIN_TOKEN, "csrf_token": found.group(1)}
    ) as response:
        if response.url.path != "/ui/":
            raise RuntimeError("the bench could not log in to the dashboard")


async def _measure(
    base: str, plan: list[tuple[str, str, str | None]], sizes: Sizes
) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _, _ in plan}
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _log_in(session, base)
        for _ in range(sizes.runs):
            for name, page, api in plan:
                results[name][0].append(await _time(session, base + page, sizes.dashboard_requests))
                if api is not None:
                    results[name][1].append(
                        await _time(session, base + api, sizes.dashboard_requests, headers=bearer)
                    )
    return results


def run(sizes: Sizes) -> Section:
    section = Section("dashboard", "Dashboard")
    gateways = sizes.dashboard_gateways
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        data_dir = Path(tmp) / "hub"
        data_dir.mkdir()
        agents = seed(
            data_dir / "hub.sqlite3", gateways=gateways, agents_per_gateway=AGENTS_PER_GATEWAY
        )
        add_history(data_dir / "hub.sqlite3", agents, gateways)
        address = HubAddress(link_port=free_port(), http_port=free_port())
        hub = start_hub(data_dir, address)
        try:
            pin_to(LOAD_CORE)
            plan = pages(agents, gateways)
            results = asyncio.run(_measure(f"http://127.0.0.1:{address.http_port}", plan, sizes))
        finally:
            hub.stop()
    fleet = f"{gateways:,} gateways x {AGENTS_PER_GATEWAY}"
    for name, _, api in plan:
        ui_runs, api_runs = results[name]
        section.figures.append(
            Figure(
                f"{name} ({fleet})",
                "ms",
                ui_runs,
                baseline_name="JSON API, same rows" if api else "",
                baseline_runs=api_runs,
                target=Target("<=", TARGET_MS),
                note="median time to the last byte, one request at a time",
            )
        )
    section.notes.append(
        f"store: {len(agents):,} agents, {len(agents) * EVENTS_PER_AGENT:,} event log entries, "
        f"{gateways * TASKS_PER_BOARD:,} tasks, a week of samples; pages of 50 rows"
    )
    return section
