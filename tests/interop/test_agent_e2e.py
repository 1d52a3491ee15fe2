"""A real OpenClaw agent, driven by a scripted model, checks in with the hub end to end.

hub (REST API, reconciler, link) -> in-process sidecar (real gateway client, local
agent API) -> real OpenClaw gateway -> agent run -> scripted model on loopback.

- Test A: the model answers the wake with text. The run reaching `final` is the
  runtime check-in that brings the agent online; no heartbeat is sent.
- Test B: the model does what the wake message tells it: it runs the check-in
  `curl` through the gateway's exec tool, against the sidecar's local agent API,
  with the token read from the workspace by the shell. The model's final answer
  is held until the hub has seen the heartbeat, so the check-in the hub accepts is
  the heartbeat's, not the run's.

The scripted provider is the gateway's only one, so the gateway makes it the default
model (`agents.defaults.model.primary`): agents run on `scripted/scripted-1` without
the hub naming a model in ApplyAgent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shlex
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.demo.scripted_model import (
    MODEL_ID,
    MODEL_REF,
    Behaviour,
    ModelRequest,
    ScriptedModel,
)
from protos import link_pb2 as pb
from sidecar.gateway.openclaw import OpenClawGatewayClient
from tests.interop.conftest import RunningGateway, Stack, linked_stack, record_timing
from tests.support import api, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

GATEWAY_ID = "gw-agent-e2e"
CHECKIN_DEADLINE_S = 30.0
# The first run after a gateway boot takes 5-7 s, a fresh agent's first turn about 2 s.
RUN_TIMEOUT_S = 90.0
# Answers of the exec tool that mean it did not run the command at all.
EXEC_REFUSALS = ("exec denied", "Headless runs cannot wait", "Cannot resolve sandbox")


@pytest.fixture
async def stack(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with linked_stack(
        gateway, model, tmp_path, GATEWAY_ID, checkin_deadline_s=CHECKIN_DEADLINE_S
    ) as linked:
        yield linked


# ------------------------------------------------------------------ hub REST API


async def create_agent(hub: Hub, name: str) -> dict[str, Any]:
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": f"{name} board", "gateway_id": GATEWAY_ID}
    )
    assert status == 201, board
    status, agent = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": name, "board_id": board["id"], "heartbeat_config": {"every": "10m"}},
    )
    assert status == 201, agent
    assert agent["status"] == "provisioning"
    return agent


async def agent_state(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, body = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, body
    return body


async def _field(hub: Hub, agent_id: str, name: str) -> Any:
    return (await agent_state(hub, agent_id))[name]


async def _online(hub: Hub, agent_id: str) -> dict[str, Any] | None:
    state = await agent_state(hub, agent_id)
    return state if state["status"] == "online" else None


async def _last_seen(hub: Hub, gateway_agent_id: str) -> float | None:
    row = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT last_seen_at FROM agents WHERE gateway_id = ? AND gateway_agent_id = ?",
            (GATEWAY_ID, gateway_agent_id),
        ).fetchone()
    )
    return row[0] if row else None


async def _wake_message(hub: Hub, gateway_agent_id: str) -> str:
    """The wake message the hub queued in the agent's ApplyAgent command."""
    payload = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT payload FROM commands WHERE gateway_id = ? AND agent_id = ? "
            "AND kind = 'apply_agent' ORDER BY sequence LIMIT 1",
            (GATEWAY_ID, gateway_agent_id),
        ).fetchone()[0]
    )
    message = pb.Command.FromString(payload).apply_agent.wake_message
    assert message, "the hub queued the apply without a wake message"
    return message


async def _events(hub: Hub, kind: str, agent_id: str) -> list[dict[str, Any]]:
    return [e for e in await hub.store.events(GATEWAY_ID, kind) if e["agent_id"] == agent_id]


# ------------------------------------------------------------------ shared steps


@dataclasses.dataclass
class Provisioned:
    agent: dict[str, Any]
    workspace: Path
    started: float  # perf_counter at the create call
    files_s: float
    wake_s: float

    @property
    def id(self) -> str:
        return str(self.agent["id"])

    @property
    def gateway_agent_id(self) -> str:
        return str(self.agent["gateway_agent_id"])


async def provision_and_wake(stack: Stack, name: str) -> Provisioned:
    """Create through the REST API; wait for files, the gateway entry and the delivered wake."""
    started = time.perf_counter()
    agent = await create_agent(stack.hub, name)
    gw_agent = agent["gateway_agent_id"]
    workspace = stack.gateway.workspace_root / f"workspace-{gw_agent}"
    await wait_for(
        lambda: (workspace / "AGENTS.md").exists() and (workspace / ".mc-agent-token").exists(),
        timeout_s=60,
        what="workspace files on disk",
    )
    files_s = time.perf_counter() - started
    await wait_for(
        lambda: _field(stack.hub, agent["id"], "last_wake_sent_at"),
        timeout_s=60,
        what="wake delivered",
    )
    wake_s = time.perf_counter() - started
    entry = stack.gateway.roster().get(gw_agent)
    assert entry is not None, "the agent has no entry in openclaw.json"
    assert entry["workspace"] == str(workspace)
    assert (workspace / ".mc-agent-token").stat().st_mode & 0o777 == 0o600
    return Provisioned(agent, workspace, started, files_s, wake_s)


async def agent_model(stack: Stack, gateway_agent_id: str) -> str | None:
    """The model the gateway runs the agent on. 2026.9 resolves it in agents.list; 2026.3
    lists only id and name there (a model only when the agent has one of its own, and the
    hub names none), so read it from the agent's main session, which records the
    provider and model its run used."""
    assert isinstance(stack.sidecar.gateway, OpenClawGatewayClient)
    listed = await stack.sidecar.gateway.read("agents.list", {})
    for agent in listed.get("agents", []):
        if agent.get("id") == gateway_agent_id:
            model = agent.get("model")
            if model:
                return str(model.get("primary") if isinstance(model, dict) else model)
    sessions = await stack.sidecar.gateway.read("sessions.list", {})
    for session in sessions.get("sessions", []):
        if session.get("key") == f"agent:{gateway_agent_id}:main" and session.get("model"):
            provider = session.get("modelProvider")
            return f"{provider}/{session['model']}" if provider else str(session["model"])
    return None


def report(name: str, p: Provisioned, online_s: float) -> None:
    record_timing(f"{name}: create -> files on disk", p.files_s)
    record_timing(f"{name}: create -> wake delivered", p.wake_s)
    record_timing(f"{name}: create -> online", online_s)
    print(
        f"{name}: create -> files {p.files_s:.2f} s, -> wake delivered {p.wake_s:.2f} s, "
        f"-> online {online_s:.2f} s"
    )


# ------------------------------------------------------------------------ tests


async def test_a_wake_run_reaching_final_brings_the_agent_online(stack: Stack) -> None:
    hub, model = stack.hub, stack.model
    model.behaviour = Behaviour.REPLY
    p = await provision_and_wake(stack, "Runtime Checker")
    online = await wait_for(
        lambda: _online(hub, p.id), timeout_s=RUN_TIMEOUT_S, what="online from the wake run"
    )
    online_s = time.perf_counter() - p.started
    report("agent e2e A (run final)", p, online_s)

    assert online["wake_attempts"] == 0
    assert online["checkin_deadline_at"] is None
    assert online["last_seen_at"] is not None
    # The real run reached `final` with a model turn because the scripted model answered it.
    runs = await _events(hub, "agent.run.observed", p.gateway_agent_id)
    assert [(r["detail"]["outcome"], r["detail"]["model_turn"]) for r in runs] == [
        ("FINAL", True)
    ], runs
    requests = model.for_agent(p.gateway_agent_id)
    assert requests, "the gateway never asked the scripted model for this agent"
    assert requests[0].body["model"] == MODEL_ID and requests[0].body["stream"] is True
    assert await _wake_message(hub, p.gateway_agent_id) in requests[0].turn_text
    # The workspace files the sidecar wrote are what the gateway put into the prompt.
    agents_md = (p.workspace / "AGENTS.md").read_text()
    assert agents_md.splitlines()[0] == "# AGENTS.md - Runtime Checker"
    assert agents_md.strip() in requests[0].system_text
    assert await agent_model(stack, p.gateway_agent_id) == MODEL_REF
    # The runtime signal checked it in: no heartbeat was sent or accepted.
    checkins = await _events(hub, "lifecycle.checkin.accepted", p.id)
    assert [c["detail"]["source"] for c in checkins] == ["wake"], checkins
    assert stack.sidecar.relay.stats.received == 0
    assert all(r.reply == "text" for r in requests)


async def test_b_the_agent_checks_in_by_running_its_curl_through_exec(stack: Stack) -> None:
    pytest.importorskip(
        "sidecar.agent_api",
        reason="the sidecar's local agent API (sidecar/agent_api.py) is not there yet",
    )
    hub, model, sidecar = stack.hub, stack.model, stack.sidecar
    heartbeat_seen_by_hub: list[float] = []

    async def hold_final_until_the_hub_saw_the_heartbeat(request: ModelRequest) -> None:
        # The run's `final` is a check-in too; answering only after the hub stored the
        # heartbeat keeps the two apart (a missing heartbeat fails the test below).
        with contextlib.suppress(AssertionError):
            await wait_for(
                lambda: _last_seen(hub, request.agent_id or ""),
                timeout_s=15,
                what="heartbeat stored by the hub",
            )
            heartbeat_seen_by_hub.append(time.perf_counter())

    model.behaviour = Behaviour.CHECK_IN
    model.before_final = hold_final_until_the_hub_saw_the_heartbeat
    p = await provision_and_wake(stack, "Curl Checker")
    gw_agent = p.gateway_agent_id
    online = await wait_for(lambda: _online(hub, p.id), timeout_s=RUN_TIMEOUT_S, what="online")
    online_s = time.perf_counter() - p.started
    await wait_for(
        lambda: _events(hub, "agent.run.observed", gw_agent),
        timeout_s=RUN_TIMEOUT_S,
        what="the wake run's outcome",
    )

    requests = model.for_agent(gw_agent)
    assert requests, "the gateway never asked the scripted model for this agent"
    first = requests[0]
    if "exec" not in first.tool_names:
        pytest.skip(f"the gateway offered no exec tool to the agent: {first.tool_names}")
    calls = [r for r in requests if r.reply == "tool_call"]
    assert len(calls) == 1, f"expected one exec call; model saw: {[r.turn_text for r in requests]}"
    results = [text for r in requests for text in r.tool_results]
    assert results, "the exec tool call never came back with a result"
    if any(refusal.lower() in results[0].lower() for refusal in EXEC_REFUSALS):
        pytest.skip(f"the gateway's exec tool did not run curl: {results[0]}")

    # The command is the one the wake message gives, pointing at this sidecar's agent
    # API, with the token read from the workspace file by the shell at call time.
    token_path = p.workspace / ".mc-agent-token"
    command = calls[0].command or ""
    wake_message = await _wake_message(hub, gw_agent)
    assert wake_message in calls[0].turn_text and command in wake_message  # told by the wake...
    assert command in calls[0].system_text  # ...and the same in AGENTS.md, in the prompt
    assert command.startswith(f"curl -fsS -X POST {sidecar.agent_api.url}/api/v1/agent/heartbeat")
    assert f"$(cat {shlex.quote(str(token_path))})" in command
    token = token_path.read_text().strip()
    assert token and all(token not in json.dumps(r.body) for r in requests), (
        "the raw token reached the model"
    )
    # The sidecar answered 202 (curl -f prints the body only for a 2xx), for this agent.
    accepted = json.loads(results[0])
    assert accepted == {"ok": True, "agent_id": gw_agent, "relayed": "queued"}, results[0]
    assert sidecar.relay.stats.received == 1

    # The hub stored the heartbeat before the model answered, and the heartbeat is what
    # answered the wake; the run's `final` came after it.
    assert heartbeat_seen_by_hub, "the hub did not see the heartbeat within 15 s of the POST"
    checkins = await _events(hub, "lifecycle.checkin.accepted", p.id)
    assert [c["detail"]["source"] for c in checkins] == ["heartbeat"], checkins
    assert checkins[0]["detail"]["answered_wake"] == 1
    runs = await _events(hub, "agent.run.observed", gw_agent)
    assert [r["detail"]["outcome"] for r in runs] == ["FINAL"], runs
    assert runs[0]["id"] > checkins[0]["id"] and runs[0]["at"] >= checkins[0]["at"]
    final_request = requests[-1]
    assert final_request.reply == "text" and final_request.tool_results

    assert online["wake_attempts"] == 0
    assert online["checkin_deadline_at"] is None
    assert online["last_seen_at"] is not None
    post_s = calls[0].received_at - p.started  # the model asked for the exec; the POST follows
    hub_s = heartbeat_seen_by_hub[0] - p.started
    report("agent e2e B (curl)", p, online_s)
    record_timing("agent e2e B (curl): create -> exec tool call", post_s)
    record_timing("agent e2e B (curl): create -> heartbeat stored by hub", hub_s)
    print(f"agent e2e B: create -> exec call {post_s:.2f} s, -> heartbeat at hub {hub_s:.2f} s")


# ------------------------------------------------------------------ deleting an agent


async def _gone(hub: Hub, agent_id: str) -> bool:
    status, _ = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    return status == 404


def empty_directories(root: Path) -> set[Path]:
    return {d for d in root.rglob("*") if d.is_dir() and not any(d.iterdir())}


def assert_nothing_left(gateway: RunningGateway, p: Provisioned, empty_before: set[Path]) -> None:
    """No workspace, no per-agent state, no token in a Trash folder, and no directory the
    removal emptied left under the gateway's state."""
    assert not p.workspace.exists(), sorted(str(x) for x in p.workspace.rglob("*"))
    agent_state = gateway.state_dir / "agents" / p.gateway_agent_id
    assert not agent_state.exists(), sorted(str(x) for x in agent_state.rglob("*"))
    trash = gateway.home / ".Trash"
    tokens = list(trash.rglob(".mc-agent-token")) if trash.exists() else []
    assert not tokens, f"a removed agent's token went to the Trash: {tokens}"
    # The gateway's own directory of every agent's state is empty when the removed agent
    # was the last one there (which depends on the tests that ran before on this gateway).
    emptied = empty_directories(gateway.state_dir) - empty_before - {gateway.state_dir / "agents"}
    assert not emptied, f"empty directories left under the gateway's state: {emptied}"


async def test_c_deleting_an_agent_during_its_wake_run_leaves_nothing_behind(stack: Stack) -> None:
    hub, model = stack.hub, stack.model
    model.behaviour = Behaviour.REPLY
    in_run, release = asyncio.Event(), asyncio.Event()

    async def hold_the_run(request: ModelRequest) -> None:
        in_run.set()
        await release.wait()

    model.before_reply = hold_the_run
    try:
        p = await provision_and_wake(stack, "Deleted Mid Run")
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await in_run.wait()  # the wake run is with the model, and stays there
        empty_before = empty_directories(stack.gateway.state_dir)
        status, body = await api(hub, "DELETE", f"/api/v1/agents/{p.id}")
        assert status == 202, body
        await wait_for(lambda: _gone(hub, p.id), timeout_s=60, what="the removal confirmed")
        assert_nothing_left(stack.gateway, p, empty_before)
    finally:
        release.set()
    # The run ends (in an error: its agent is gone); nothing comes back after it.
    await wait_for(
        lambda: _events(hub, "agent.run.observed", p.gateway_agent_id),
        timeout_s=RUN_TIMEOUT_S,
        what="the held run's outcome",
    )
    assert_nothing_left(stack.gateway, p, empty_before)


async def test_d_deleting_an_agent_after_its_run_trashes_no_token_and_leaves_no_directory(
    stack: Stack,
) -> None:
    hub, model = stack.hub, stack.model
    model.behaviour = Behaviour.REPLY
    p = await provision_and_wake(stack, "Deleted After Run")
    await wait_for(lambda: _online(hub, p.id), timeout_s=RUN_TIMEOUT_S, what="online")
    empty_before = empty_directories(stack.gateway.state_dir)
    status, body = await api(hub, "DELETE", f"/api/v1/agents/{p.id}")
    assert status == 202, body
    await wait_for(lambda: _gone(hub, p.id), timeout_s=60, what="the removal confirmed")
    assert_nothing_left(stack.gateway, p, empty_before)
    # The gateway still moved the rest to its Trash (the sidecar only took the token).
    trash = stack.gateway.home / ".Trash"
    assert any(trash.rglob("AGENTS.md")), "expected the gateway to trash the workspace"


BOARD_AGENTS = 6


@pytest.fixture
async def stack_alone(own_gateway: RunningGateway, tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack on a gateway of its own: a burst of removals can make 2026.9 restart
    itself (it reschedules its cron monitor), which the session's other tests must not
    share."""
    async with (
        ScriptedModel(own_gateway.model_port) as model,
        linked_stack(
            own_gateway, model, tmp_path, GATEWAY_ID, checkin_deadline_s=CHECKIN_DEADLINE_S
        ) as linked,
    ):
        yield linked


async def test_e_a_deleted_board_removes_its_agents_together_and_none_comes_back(
    stack_alone: Stack,
) -> None:
    """A board's removals reach the gateway as one run (at once on the current
    generation, one after another on 2026.3, which loses concurrent ones): every agent
    goes, none reappears, the gateway keeps the others' entries."""
    stack = stack_alone
    hub, model = stack.hub, stack.model
    model.behaviour = Behaviour.REPLY
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "Removed together", "gateway_id": GATEWAY_ID}
    )
    assert status == 201, board
    agents = []
    for i in range(BOARD_AGENTS):
        status, agent = await api(
            hub, "POST", "/api/v1/agents", {"name": f"Removed {i}", "board_id": board["id"]}
        )
        assert status == 201, agent
        agents.append(agent)
    ids = {a["gateway_agent_id"] for a in agents}
    await wait_for(
        lambda: ids <= set(stack.gateway.roster()), timeout_s=180, what="every entry applied"
    )
    others = set(stack.gateway.roster()) - ids
    started = time.perf_counter()
    status, body = await api(hub, "DELETE", f"/api/v1/boards/{board['id']}")
    assert status == 202, body
    for agent in agents:
        await wait_for(lambda a=agent: _gone(hub, a["id"]), timeout_s=120, what="removal confirmed")
    removed_s = time.perf_counter() - started
    record_timing(f"{BOARD_AGENTS} agents removed with their board", removed_s)
    # And still gone a while later: openclaw.json is what the gateway reloads, and what
    # a restore (the config watcher's, or a heartbeat put back) would write them into.
    for _check in range(4):
        assert not ids & set(stack.gateway.roster()), stack.gateway.roster().keys()
        await asyncio.sleep(2)
    assert others <= set(stack.gateway.roster())
    for agent in agents:
        workspace = stack.gateway.workspace_root / f"workspace-{agent['gateway_agent_id']}"
        assert not workspace.exists(), workspace
