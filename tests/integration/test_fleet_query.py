"""POST /api/v1/fleet/query: one question to every selected sidecar, answers streamed back
as they arrive, with a deadline. A real hub and real sidecars on loopback, each in front
of the in-memory gateway (tests/interop/ asks the same questions of OpenClaw)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from hub.app import Hub
from sidecar.app import Sidecar
from tests.support import (
    ADMIN_TOKEN,
    RecordingGateway,
    api,
    make_sidecar,
    sidecar_connected,
    wait_for,
)

FAST = ("gw-a", "gw-b")
SLOW = "gw-slow"  # its gateway takes a while to answer status reads
MUTE = "gw-mute"  # its sidecar never answers a query
AWAY = "away"  # created, never connected (its id is the hub's)


@asynccontextmanager
async def fleet(hub: Hub, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Four connected sidecars labelled env=prod (one main agent each, online) and one
    gateway that never connects; yields the agents by gateway."""
    async with AsyncExitStack() as stack:
        agents: dict[str, Any] = {}
        sidecars: dict[str, Sidecar] = {}
        for name in (*FAST, SLOW, MUTE):
            gateway = RecordingGateway(query_delay_s=2.0 if name == SLOW else 0.0)
            sidecar = make_sidecar(
                tmp_path, hub, gateway, gateway_id=name, name=f"state-{name}", workspaces=name
            )
            await sidecar.start()
            stack.push_async_callback(sidecar.stop)
            sidecars[name] = sidecar
            await wait_for(lambda n=name: sidecar_connected(hub, n), what=f"{name} connected")
        status, away = await api(hub, "POST", "/api/v1/gateways", {"name": AWAY})
        assert status == 201, away
        for name in (*sidecars, away["id"]):
            status, _ = await api(
                hub, "PUT", f"/api/v1/gateways/{name}/labels", {"labels": {"env": "prod"}}
            )
            assert status == 200
        for name in sidecars:
            _, agents[name] = await api(
                hub, "POST", "/api/v1/agents", {"name": "main", "gateway_id": name}
            )

        async def online() -> bool:
            for agent in agents.values():
                _, row = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
                if row["status"] != "online":
                    return False
            return True

        await wait_for(online, timeout_s=30, what="every main agent online")
        sidecars[MUTE].link.on_gateway_query = lambda query: None
        yield agents | {AWAY: away}


async def stream(hub: Hub, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The query's server-sent events, in the order they came."""
    assert hub.addresses is not None
    events: list[tuple[str, dict[str, Any]]] = []
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.post(
            f"http://{hub.addresses.http}/api/v1/fleet/query",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "text/event-stream"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        name = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


async def test_answers_stream_as_they_arrive_and_the_deadline_ends_the_query(
    hub: Hub, tmp_path: Path
) -> None:
    async with fleet(hub, tmp_path) as made:
        away = made[AWAY]["id"]
        events = await stream(hub, {"selector": "env=prod", "question": "status", "timeout_s": 6})
        names = [name for name, _ in events]
        assert names[0] == "query" and names[-1] == "done"
        assert events[0][1] == {
            "question": "status",
            "selector": "env=prod",
            "selected": 5,
            "timeout_s": 6.0,
        }
        answers = [data for name, data in events if name == "answer"]
        order = [a["gateway_id"] for a in answers]
        assert sorted(order) == sorted([*FAST, SLOW, MUTE, away])  # each exactly once
        by_id = {a["gateway_id"]: a for a in answers}
        # Known at once, then the prompt sidecars, then the slow gateway, then the deadline.
        assert order[0] == away and by_id[away]["outcome"] == "disconnected"
        assert by_id[away]["gateway_name"] == AWAY
        assert set(order[1:3]) == set(FAST)
        assert order[3:] == [SLOW, MUTE]
        for name in (*FAST, SLOW):
            answer = by_id[name]
            assert answer["outcome"] == "answered" and answer["error"] is None, answer
            assert answer["data"]["gateway_reachable"] is True
            assert answer["data"]["openclaw_version"] == "2026.9.6"
            assert (answer["data"]["pid"], answer["data"]["agents"]) == (4242, 1)
        mute = by_id[MUTE]
        assert mute["outcome"] == "no_answer" and "6 s" in mute["error"]
        assert mute["elapsed_ms"] >= 6000 > by_id[SLOW]["elapsed_ms"]
        summary = events[-1][1]
        assert (summary["selected"], summary["answered"], summary["no_answer"]) == (5, 3, 1)
        assert (summary["disconnected"], summary["failed"]) == (1, 0)

        # A selector narrows who is asked; without the event-stream Accept it is one JSON.
        await api(hub, "PUT", "/api/v1/gateways/gw-b/labels", {"labels": {"env": "test"}})
        status, read = await api(
            hub, "POST", "/api/v1/fleet/query", {"selector": "env=test", "question": "heartbeats"}
        )
        assert status == 200, read
        [answer] = read["answers"]
        assert answer["gateway_id"] == "gw-b" and answer["outcome"] == "answered"
        [agent] = answer["data"]["agents"]
        assert agent["name"] == "main" and agent["agent_id"] is not None
        assert (agent["heartbeat_enabled"], agent["heartbeat_every_s"]) == (True, 600)
        assert read["summary"]["selected"] == 1 and read["summary"]["answered"] == 1


async def test_a_file_question_hashes_on_the_host_beside_what_the_hub_rendered(
    hub: Hub, tmp_path: Path
) -> None:
    async with fleet(hub, tmp_path) as agents:

        def workspace(gateway_id: str) -> Path:
            return tmp_path / gateway_id / f"workspace-{agents[gateway_id]['gateway_agent_id']}"

        soul = workspace("gw-b") / "SOUL.md"
        soul.write_text("# Soul\n\nEdited by hand on the host.\n")
        # What an agent's shell may leave where a file is expected: nothing blocks or leaks.
        (workspace(SLOW) / "SOUL.md").unlink()
        os.mkfifo(workspace(SLOW) / "SOUL.md")
        status, read = await api(
            hub,
            "POST",
            "/api/v1/fleet/query",
            {"selector": "env=prod", "question": "file", "file": "SOUL.md", "timeout_s": 5},
        )
        assert status == 200, read
        by_id = {a["gateway_id"]: a for a in read["answers"]}
        assert by_id[MUTE]["outcome"] == "no_answer"
        assert by_id[agents[AWAY]["id"]]["outcome"] == "disconnected"
        a = by_id["gw-a"]["data"]["files"]
        assert [(f["file"], f["agent_id"], f["matches_rendered"]) for f in a] == [
            ("SOUL.md", agents["gw-a"]["id"], True)
        ]
        assert a[0]["sha256"] == a[0]["rendered_sha256"]
        [edited] = by_id["gw-b"]["data"]["files"]
        assert edited["sha256"] == hashlib.sha256(soul.read_bytes()).hexdigest()
        assert edited["matches_rendered"] is False and edited["rendered_sha256"] is not None
        [fifo] = by_id[SLOW]["data"]["files"]
        assert fifo["sha256"] is None and fifo["problem"] == "missing or not a regular file"
        # A file question needs no gateway: it is read on the host.
        assert by_id[SLOW]["outcome"] == "answered"


BAD_QUESTIONS: list[tuple[dict[str, Any], str]] = [
    ({"question": "file"}, "question=file needs file"),
    ({"question": "file", "file": ".mc-agent-token"}, "needs file, one of"),
    ({"question": "file", "file": "../../etc/passwd"}, "needs file, one of"),
    ({"question": "file", "file": "SOUL%2EMD"}, "needs file, one of"),
    ({"question": "file", "file": "SOUL.md\u0000"}, "control character"),
    ({"question": "status", "file": "SOUL.md"}, "only asked with question=file"),
    ({"question": "sessions"}, "question"),
    ({"question": "status", "timeout_s": 0}, "timeout_s"),
    ({"question": "status", "timeout_s": 3600}, "timeout_s"),
    ({"question": "status", "selector": "env=="}, "selector"),
    ({"question": "status", "shell": "rm -rf /"}, "shell"),
]


async def test_a_bad_question_is_refused_naming_the_field(hub: Hub) -> None:
    for body, says in BAD_QUESTIONS:
        status, answer = await api(hub, "POST", "/api/v1/fleet/query", body)
        assert status == 422, (body, answer)
        assert says in json.dumps(answer), (body, answer)


async def test_an_empty_selection_ends_at_once(hub: Hub) -> None:
    status, read = await api(
        hub, "POST", "/api/v1/fleet/query", {"selector": "env=nowhere", "question": "status"}
    )
    assert status == 200 and read["answers"] == []
    assert read["summary"]["selected"] == 0
