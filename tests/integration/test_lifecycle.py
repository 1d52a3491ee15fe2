"""Provisioning, wakes and check-in reconciliation: hub + sidecar on loopback, short deadlines."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from protos import link_pb2 as pb
from protos.contract import timestamp
from sidecar.app import Sidecar
from sidecar.gateway import RunState
from tests import support
from tests.support import JumpClock, RecordingGateway, api, hub_config, wait_for

DEADLINE_S = 1.0


def lifecycle_hub(tmp_path: Path, clock: JumpClock | None = None, **overrides: Any) -> Hub:
    config = dataclasses.replace(
        hub_config(tmp_path / "hub"), checkin_deadline_s=DEADLINE_S, **overrides
    )
    return Hub(config, clock=clock or JumpClock())


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def hub(tmp_path: Path, clock: JumpClock, database: str) -> AsyncIterator[Hub]:
    instance = lifecycle_hub(tmp_path, clock, database=database)
    await instance.start()
    yield instance
    await instance.stop()


def make_sidecar(tmp_path: Path, hub: Hub, gateway: RecordingGateway) -> Sidecar:
    return support.make_sidecar(tmp_path, hub, gateway, gateway_id="gw-life", name="sc")


async def provision(hub: Hub, every: str = "10m") -> dict[str, Any]:
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": "gw-life"}
    )
    assert status == 201, board
    status, agent = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {
            "name": "Worker One",
            "board_id": board["id"],
            "heartbeat_config": {"every": every},
            "identity_profile": {"role": "Researcher"},
        },
    )
    assert status == 201, agent
    return agent


async def agent_state(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, body = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200
    return body


def beat(sidecar: Sidecar, gateway_agent_id: str) -> None:
    sidecar.link.send(
        pb.SidecarMessage(
            heartbeats=pb.HeartbeatBatch(
                batch_id=int(time.time() * 1000),
                beats=[
                    pb.AgentHeartbeat(
                        agent_id=gateway_agent_id, observed_at=timestamp(), status="online"
                    )
                ],
            )
        )
    )


@pytest.fixture
async def connected(hub: Hub, tmp_path: Path) -> AsyncIterator[tuple[Sidecar, RecordingGateway]]:
    gateway = RecordingGateway()
    sidecar = make_sidecar(tmp_path, hub, gateway)
    await sidecar.start()
    await wait_for(lambda: _has_root(hub), what="sidecar connected with its workspace root")
    yield sidecar, gateway
    await sidecar.stop()


async def _has_root(hub: Hub) -> bool:
    row = await hub.store.get_gateway("gw-life")
    return bool(row and row.workspace_root and hub.registry.get("gw-life"))


async def test_provision_wake_heartbeat_online(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway], tmp_path: Path
) -> None:
    sidecar, gateway = connected
    gateway.run_outcome = gateway.run_outcome.ERROR  # only the heartbeat may check it in
    started = time.perf_counter()
    agent = await provision(hub)
    assert agent["status"] == "provisioning"
    assert agent["lifecycle_generation"] == 1
    gw_agent = agent["gateway_agent_id"]
    assert gw_agent == f"mc-{agent['id']}"
    workspace = tmp_path / "workspaces" / f"workspace-{gw_agent}"
    # The token file is written last (files are written off the event loop, one by one).
    await wait_for(lambda: (workspace / ".mc-agent-token").exists(), what="files on disk")
    files_s = time.perf_counter() - started
    token = (workspace / ".mc-agent-token").read_text().strip()
    assert token and token not in (workspace / "AGENTS.md").read_text()
    delivered = await wait_for(
        lambda: _field(hub, agent["id"], "last_wake_sent_at"), what="wake delivered"
    )
    wake_s = time.perf_counter() - started
    state = await agent_state(hub, agent["id"])
    assert state["wake_attempts"] == 1 and state["checkin_deadline_at"] is not None
    assert delivered
    beat(sidecar, gw_agent)
    online = await wait_for(lambda: _status(hub, agent["id"], "online"), what="online")
    print(f"create -> files {files_s * 1000:.0f} ms, -> wake delivered {wake_s * 1000:.0f} ms")
    assert online["wake_attempts"] == 0
    assert online["checkin_deadline_at"] is None
    assert online["last_seen_at"] is not None
    assert gateway.count("wake") == 1


async def test_failed_runs_mean_three_wakes_then_offline(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway]
) -> None:
    _, gateway = connected
    gateway.run_outcome = gateway.run_outcome.ERROR  # runs end without a runtime check-in
    agent = await provision(hub)
    offline = await wait_for(
        lambda: _status(hub, agent["id"], "offline"), timeout_s=30, what="offline after three wakes"
    )
    assert gateway.count("wake") == 3
    assert offline["wake_attempts"] == 3
    assert "did not check in" in (offline["last_provision_error"] or "")
    wakes = [e for e in await hub.store.events("gw-life") if e["kind"] == "command.acked"]
    assert len(wakes) >= 3
    events = {e["kind"] for e in await hub.store.events("gw-life")}
    assert "lifecycle.reconcile.retriggered" in events
    assert "lifecycle.reconcile.max_attempts_reached" in events
    # A silent agent's wakes follow the deadline: test_lifecycle_outcomes.py moves the clock.


async def test_a_run_that_reaches_final_is_a_runtime_checkin(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway]
) -> None:
    _, gateway = connected  # RecordingGateway runs end `final` by default
    agent = await provision(hub)
    online = await wait_for(lambda: _status(hub, agent["id"], "online"), what="online")
    assert online["wake_attempts"] == 0
    assert gateway.count("wake") == 1


async def test_wakes_are_not_counted_while_the_sidecar_is_disconnected(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway()
    gateway.run_outcome = gateway.run_outcome.ERROR
    sidecar = make_sidecar(tmp_path, hub, gateway)
    await sidecar.start()
    await wait_for(lambda: _has_root(hub), what="connected")
    await sidecar.stop()
    await wait_for(lambda: hub.registry.get("gw-life") is None, what="disconnected")
    agent = await provision(hub)
    waiting = await wait_for(
        lambda: _reason(hub, agent["id"], "sidecar_disconnected"), what="reason shown"
    )
    assert waiting["wake_attempts"] == 0
    clock.advance(DEADLINE_S * 4)  # four check-in windows pass, and every verdict is asked for
    await hub.reconciler.reconcile_due()
    await hub.reconciler.sweep_presence()
    still = await agent_state(hub, agent["id"])
    assert still["wake_attempts"] == 0 and still["status"] != "offline"
    assert gateway.count("wake") == 0


async def test_unreachable_gateway_does_not_burn_attempts_and_shows_the_reason(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway]
) -> None:
    _, gateway = connected
    gateway.set_reachable(False)
    agent = await provision(hub)
    # The reason shows as soon as the sidecar says its gateway is down; the apply's
    # FAILED result (the sidecar retries it in place) then says why.
    waiting = await wait_for(
        lambda: _reason_and_error(hub, agent["id"], "gateway_unreachable", "down"),
        what="gateway_unreachable shown with the sidecar's error",
    )
    assert waiting["wake_attempts"] == 0
    gateway.set_reachable(True)
    online = await wait_for(
        lambda: _status(hub, agent["id"], "online"),
        timeout_s=20,
        what="online once the gateway is back",
    )
    assert gateway.count("wake") == 1 and online["wake_attempts"] == 0


async def test_hub_restart_mid_deadline_honours_the_deadline(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    ports = {"link_listen": None, "http_listen": None}
    from missioncontrol.netaddr import HostPort

    ports = {
        "link_listen": HostPort("127.0.0.1", free_port()),
        "http_listen": HostPort("127.0.0.1", free_port()),
    }
    hub = lifecycle_hub(tmp_path, **ports)
    await hub.start()
    gateway = RecordingGateway()
    gateway.run_outcome = gateway.run_outcome.ERROR
    sidecar = make_sidecar(tmp_path, hub, gateway)
    await sidecar.start()
    try:
        await wait_for(lambda: _has_root(hub), what="connected")
        agent = await provision(hub)
        await wait_for(lambda: _field(hub, agent["id"], "last_wake_sent_at"), what="wake 1")
        await hub.stop()
        hub = lifecycle_hub(tmp_path, **ports)
        await hub.start()
        restarted_at = time.time()
        offline = await wait_for(
            lambda: _status(hub, agent["id"], "offline"),
            timeout_s=40,
            what="deadline honoured after restart: rewakes, then offline",
        )
        assert gateway.count("wake") == 3
        # The restart grace (2 check-in windows) held back verdicts right after the restart.
        events = await hub.store.events("gw-life", "lifecycle.reconcile.retriggered")
        assert events and min(e["at"] for e in events) >= restarted_at + 2 * DEADLINE_S - 0.2
        assert offline["wake_attempts"] == 3
    finally:
        await sidecar.stop()
        await hub.stop()


async def test_delete_never_fails_while_the_gateway_is_down(hub: Hub, tmp_path: Path) -> None:
    gateway = RecordingGateway()
    sidecar = make_sidecar(tmp_path, hub, gateway)
    await sidecar.start()
    await wait_for(lambda: _has_root(hub), what="connected")
    agent = await provision(hub)
    await wait_for(lambda: _status(hub, agent["id"], "online"), what="online")
    gateway.set_reachable(False)
    status, body = await api(hub, "DELETE", f"/api/v1/agents/{agent['id']}")
    assert status == 202 and body["status"] == "deleting"
    assert (await agent_state(hub, agent["id"]))["status"] == "deleting"
    gateway.set_reachable(True)
    await wait_for(lambda: _gone(hub, agent["id"]), timeout_s=20, what="row removed on ack")
    assert gateway.count("remove_agent") == 1
    await sidecar.stop()


async def test_setting_status_directly_is_refused(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway]
) -> None:
    agent = await provision(hub)
    status, body = await api(hub, "PATCH", f"/api/v1/agents/{agent['id']}", {"status": "online"})
    assert status == 403 and "lifecycle" in body["detail"]


async def test_one_lead_per_board(hub: Hub, connected: tuple[Sidecar, RecordingGateway]) -> None:
    _, board = await api(hub, "POST", "/api/v1/boards", {"name": "Leads", "gateway_id": "gw-life"})
    first, _ = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead", "board_id": board["id"], "is_board_lead": True},
    )
    second, body = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead 2", "board_id": board["id"], "is_board_lead": True},
    )
    assert (first, second) == (201, 409)
    assert "already has a lead" in body["detail"]


async def _field(hub: Hub, agent_id: str, name: str) -> Any:
    return (await agent_state(hub, agent_id))[name]


async def _status(hub: Hub, agent_id: str, status: str) -> dict[str, Any] | None:
    state = await agent_state(hub, agent_id)
    return state if state["status"] == status else None


async def _reason(hub: Hub, agent_id: str, reason: str) -> dict[str, Any] | None:
    state = await agent_state(hub, agent_id)
    return state if state["status_reason"] == reason else None


async def _reason_and_error(
    hub: Hub, agent_id: str, reason: str, error: str
) -> dict[str, Any] | None:
    state = await _reason(hub, agent_id, reason)
    return state if state and error in (state["last_provision_error"] or "") else None


async def _changed(hub: Hub, agent_id: str, name: str, before: Any) -> bool:
    return await _field(hub, agent_id, name) != before


async def _gone(hub: Hub, agent_id: str) -> bool:
    status, _ = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    return status == 404


GRACE_S = 60.0  # long enough that a busy machine never sees the old token expire here


async def test_token_rotation_writes_a_new_token_and_keeps_the_old_for_the_grace_window(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway], tmp_path: Path
) -> None:
    sidecar, gateway = connected
    agent = await provision(hub)
    await wait_for(lambda: _status(hub, agent["id"], "online"), what="online")
    workspace = tmp_path / "workspaces" / f"workspace-{agent['gateway_agent_id']}"
    old = (workspace / ".mc-agent-token").read_text()
    generation = (await agent_state(hub, agent["id"]))["lifecycle_generation"]
    status, _ = await api(
        hub, "POST", f"/api/v1/agents/{agent['id']}/token/rotate", {"grace_s": GRACE_S}
    )
    assert status == 202
    await wait_for(
        lambda: (workspace / ".mc-agent-token").read_text() != old, what="new token file written"
    )
    assert (workspace / ".mc-agent-token").stat().st_mode & 0o777 == 0o600
    ids = {
        c.token_id for c in sidecar.state.credentials() if c.agent_id == agent["gateway_agent_id"]
    }
    assert ids == {old.split(".")[0], (workspace / ".mc-agent-token").read_text().split(".")[0]}
    after = await agent_state(hub, agent["id"])
    assert after["lifecycle_generation"] == generation  # no new generation, no wake
    assert gateway.count("wake") == 1
    graced = [c for c in sidecar.state.credentials() if c.not_after is not None]
    assert len(graced) == 1 and graced[0].token_id == old.split(".")[0]
    assert graced[0].not_after is not None
    assert time.time() < graced[0].not_after <= time.time() + GRACE_S


async def test_a_quiet_agent_climbs_the_recovery_ladder_then_goes_offline_with_the_cause(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway], clock: JumpClock
) -> None:
    sidecar, gateway = connected
    agent = await provision(hub, every="1s")
    online = await wait_for(lambda: _status(hub, agent["id"], "online"), what="online")
    assert online["heartbeat_config"]["every"] == "1s"
    before = online["last_seen_at"]
    beat(sidecar, agent["gateway_agent_id"])
    await wait_for(
        lambda: _changed(hub, agent["id"], "last_seen_at", before), what="the beat recorded"
    )
    # Silent for less than twice the interval: still online, nothing sent.
    woken = gateway.count("wake")
    clock.advance(1.5)
    await hub.reconciler.sweep_presence()
    assert (await agent_state(hub, agent["id"]))["status"] == "online"
    assert gateway.count("wake") == woken
    # From here its runs fail: neither the nudge nor the fresh session brings it back.
    gateway.run_outcome = RunState.ERROR
    gateway.run_message = "No API key found for provider openai"
    clock.advance(1.0)  # 2.5 s of silence in all
    await hub.reconciler.sweep_presence()
    offline = await wait_for(
        lambda: _status(hub, agent["id"], "offline"), timeout_s=30, what="offline after the ladder"
    )
    assert gateway.count("wake") == woken + 2  # the nudge, then the wake in a fresh session
    assert gateway.count("reset_session") == 1  # only the last rung starts afresh
    assert offline["recovery"] is None and offline["checkin_deadline_at"] is None
    error = offline["last_provision_error"] or ""
    assert "a nudge and a wake in a fresh session went unanswered" in error
    assert "No API key found for provider openai" in error  # the cause, not just silence
    kinds = [e["kind"] for e in await hub.store.events("gw-life")]
    nudge, fresh = (
        kinds.index("lifecycle.recovery.nudge"),
        kinds.index("lifecycle.recovery.fresh_session"),
    )
    assert nudge < fresh < len(kinds) - 1 - kinds[::-1].index("lifecycle.presence.offline")


async def test_a_step_that_changes_nothing_kept_writes_nothing_and_tells_no_one(
    hub: Hub, connected: tuple[Sidecar, RecordingGateway]
) -> None:
    """A link coming up again for online agents moves only what is not kept (since when
    the link is up): their rows are not written and no agent view is pushed, which in a
    reconnect storm is most of the hub's work per sidecar."""
    agent = await provision(hub)
    await wait_for(lambda: _status(hub, agent["id"], "online"), what="online")

    def row_of(conn: Any) -> dict[str, Any]:
        found = conn.execute("SELECT * FROM agents WHERE id = ?", (agent["id"],)).fetchone()
        return dict(found)

    before = await hub.db.read(row_of)
    heard = hub.events.subscribe(None, frozenset({"agent"}))
    try:
        await hub.reconciler.link_changed("gw-life", True)
        assert await hub.db.read(row_of) == before
        assert await heard.next(0.3) is None
    finally:
        heard.close()
