"""Status that never lies: hub + sidecar on loopback, the real link, a recording gateway.

Each test tries one class of defect end to end:
- a check-in needs evidence that the agent ran (a run reported final without a model
  turn is none);
- every outcome of a command advances the lifecycle, also when its result is lost
  (the Hello that confirms the command does);
- a failed wake run is an answer (the next attempt starts at once), a wake the
  sidecar retries is never sent twice, and no agent is judged while the hub knows
  its gateway is unreachable.

Time moves with a JumpClock: the check-in deadline is the real 30 s, so nothing here
happens because real time passed a deadline; a test that needs one advances the clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from missioncontrol.netaddr import HostPort
from sidecar.app import Sidecar
from sidecar.gateway import RunState
from sidecar.gateway.protocol import request_error
from tests.support import (
    JumpClock,
    RecordingGateway,
    api,
    hub_config,
    make_sidecar,
    sidecar_connected,
    wait_for,
)

GATEWAY = "gw-truth"
DEADLINE_S = 30.0
PAST_THE_GRACE_S = 2 * DEADLINE_S + 1  # restart and reconnect grace: 2 check-in windows


def fixed_ports(free_port: Callable[[], int]) -> dict[str, HostPort]:
    """Ports a restarted hub listens on again, so its sidecar finds it."""
    return {
        "link_listen": HostPort("127.0.0.1", free_port()),
        "http_listen": HostPort("127.0.0.1", free_port()),
    }


def make_hub(data_dir: Path, clock: JumpClock, ports: dict[str, Any] | None = None) -> Hub:
    config = dataclasses.replace(
        hub_config(data_dir), checkin_deadline_s=DEADLINE_S, **(ports or {})
    )
    return Hub(config, clock=clock)


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def hub(tmp_path: Path, clock: JumpClock) -> AsyncIterator[Hub]:
    instance = make_hub(tmp_path / "hub", clock)
    await instance.start()
    yield instance
    await instance.stop()


_AGENT_API_PORTS: dict[Path, int] = {}


def sidecar_for(tmp_path: Path, hub: Hub, gateway: RecordingGateway) -> Sidecar:
    """The test's sidecar; started again, it keeps its agent-API port, as a real one does
    (a new address would have the hub render its agents' files again)."""
    if tmp_path not in _AGENT_API_PORTS:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            _AGENT_API_PORTS[tmp_path] = sock.getsockname()[1]
    listen = HostPort("127.0.0.1", _AGENT_API_PORTS[tmp_path])
    return make_sidecar(
        tmp_path, hub, gateway, gateway_id=GATEWAY, name="sc", agent_api_listen=listen
    )


async def start_sidecar(tmp_path: Path, hub: Hub, gateway: RecordingGateway) -> Sidecar:
    sidecar = sidecar_for(tmp_path, hub, gateway)
    await sidecar.start()
    await wait_for(lambda: sidecar_connected(hub, GATEWAY), what="sidecar connected")
    return sidecar


def drop_results(sidecar: Sidecar) -> None:
    """The sidecar applies, but no command result ever reaches the hub: as if it was
    killed after applying (its state on disk says what it applied)."""
    sidecar.link.send = lambda message: None  # type: ignore[method-assign]


async def create(hub: Hub, name: str = "Worker") -> dict[str, Any]:
    status, board = await api(hub, "POST", "/api/v1/boards", {"name": name, "gateway_id": GATEWAY})
    assert status == 201, board
    status, agent = await api(
        hub, "POST", "/api/v1/agents", {"name": name, "board_id": board["id"]}
    )
    assert status == 201, agent
    return agent


async def state(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, body = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, body
    return body


async def status_is(hub: Hub, agent_id: str, status: str) -> dict[str, Any] | None:
    body = await state(hub, agent_id)
    return body if body["status"] == status else None


async def events(hub: Hub, kind: str) -> list[dict[str, Any]]:
    return await hub.store.events(GATEWAY, kind)


async def pass_deadlines(hub: Hub, clock: JumpClock, windows: int = 1) -> None:
    for _ in range(windows):
        clock.advance(DEADLINE_S + 1)
        await hub.reconciler.reconcile_due()


# ------------------------------------------------------------------ a check-in is evidence


async def test_a_run_final_without_a_model_turn_never_brings_the_agent_online(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway(run_turn=False)  # final, but the model never ran
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        clock.advance(PAST_THE_GRACE_S)
        agent = await create(hub)
        await wait_for(lambda: events(hub, "lifecycle.run.no_turn"), what="the run's end")
        woken = await state(hub, agent["id"])
        assert woken["status"] == "provisioning" and woken["last_seen_at"] is None
        assert woken["wake_attempts"] == 1
        assert "without a model turn" in (woken["last_provision_error"] or "")
        for wakes in (2, 3):  # each deadline: the next wake, its run again without a turn
            await pass_deadlines(hub, clock)
            await wait_for(lambda n=wakes: _delivered(hub, agent["id"], n), what=f"wake {wakes}")
            await wait_for(
                lambda n=wakes: _runs_without_turn(hub, n), what=f"run {wakes} without a turn"
            )
        await pass_deadlines(hub, clock)
        offline = await wait_for(lambda: status_is(hub, agent["id"], "offline"), what="offline")
        assert gateway.count("wake") == 3 and offline["last_seen_at"] is None
        assert "did not check in after 3 wakes" in offline["last_provision_error"]
        assert not await events(hub, "lifecycle.checkin.accepted")
    finally:
        await sidecar.stop()


async def test_a_run_with_a_model_turn_is_the_runtime_checkin(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway()  # final, with a model turn
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        agent = await create(hub)
        online = await wait_for(lambda: status_is(hub, agent["id"], "online"), what="online")
        assert online["wake_attempts"] == 0 and online["last_seen_at"] is not None
        (checkin,) = await events(hub, "lifecycle.checkin.accepted")
        assert checkin["detail"]["source"] == "wake"
    finally:
        await sidecar.stop()


# ------------------------------------------------------------ a failed run is an answer


async def test_a_failed_run_is_answered_by_the_next_wake_at_once(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway(run_outcome=RunState.ERROR, run_message="No API key for openai")
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        clock.advance(PAST_THE_GRACE_S)
        agent = await create(hub)
        # No deadline passes (the clock stands still): each error starts the next wake.
        offline = await wait_for(
            lambda: status_is(hub, agent["id"], "offline"), what="offline after three failed runs"
        )
        assert gateway.count("wake") == 3
        assert "after 3 wakes" in offline["last_provision_error"]
        assert "No API key for openai" in offline["last_provision_error"]
        assert len(await events(hub, "lifecycle.run.failed")) == 3
    finally:
        await sidecar.stop()


async def test_a_silent_agent_is_woken_at_each_deadline_then_offline(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway(runs_end=False)  # runs never end, nothing checks in
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        clock.advance(PAST_THE_GRACE_S)
        agent = await create(hub)
        await wait_for(lambda: gateway.count("wake") == 1, what="the first wake")
        for wakes in (2, 3):
            assert gateway.count("wake") == wakes - 1  # the deadline has not passed
            await pass_deadlines(hub, clock)
            await wait_for(lambda n=wakes: _delivered(hub, agent["id"], n), what=f"wake {wakes}")
        await pass_deadlines(hub, clock)
        offline = await wait_for(lambda: status_is(hub, agent["id"], "offline"), what="offline")
        assert offline["wake_attempts"] == 3 and gateway.count("wake") == 3
        assert await events(hub, "lifecycle.reconcile.max_attempts_reached")
    finally:
        await sidecar.stop()


# ------------------------------------------------------- one wake, not one per retry


async def test_a_wake_the_sidecar_retries_is_sent_once_and_answered_once(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway()
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        clock.advance(PAST_THE_GRACE_S)
        gateway.set_reachable(False)
        agent = await create(hub)
        waiting = await wait_for(lambda: state(hub, agent["id"]), what="waiting for the gateway")
        await wait_for(
            lambda: _reason(hub, agent["id"], "gateway_unreachable"), what="the reason shown"
        )
        assert waiting["wake_attempts"] == 0
        await pass_deadlines(hub, clock, windows=3)  # the hub sends no copy meanwhile
        gateway.set_reachable(True)  # the sidecar's retry goes through
        online = await wait_for(lambda: status_is(hub, agent["id"], "online"), what="online")
        assert online["wake_attempts"] == 0
        await pass_deadlines(hub, clock, windows=4)
        await hub.reconciler.sweep_presence()
        assert gateway.count("wake") == 1, gateway.calls  # no second wake, ever
        assert (await state(hub, agent["id"]))["status"] == "online"
    finally:
        await sidecar.stop()


@pytest.mark.parametrize(
    "answer",
    [
        {"code": "UNAVAILABLE", "retryable": True,
         "message": "Previous run is still shutting down. Please try again in a moment."},
        # 2026.9 for an agent its runtime is reloading (after a reprovision's config change).
        {"code": "INVALID_REQUEST", "message": 'Agent "x" no longer exists in configuration'},
    ],
    ids=["still-shutting-down", "being-reloaded"],
)  # fmt: skip
async def test_a_retryable_gateway_error_in_a_reprovision_is_waited_out_not_offline(
    answer: dict[str, object], hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    """The gateway asks to be asked again while the wake starts (as 2026.9 does for a
    run still shutting down), and the agent is reprovisioned meanwhile: FAILED with
    RETRY, the sidecar retries the command in place, the hub shows why and sends no
    copy; nobody goes offline, and the sidecar ends on the newest generation."""
    busy = request_error("chat.send", answer)
    gateway = RecordingGateway(wake_refusals=[busy, busy])
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        clock.advance(PAST_THE_GRACE_S)
        agent = await create(hub)
        waiting = await wait_for(
            lambda: _reason(hub, agent["id"], "gateway_busy"), what="the gateway's answer shown"
        )
        assert waiting["status"] == "provisioning", waiting
        assert str(answer["message"]) in (waiting["last_provision_error"] or "")
        status, body = await api(hub, "PATCH", f"/api/v1/agents/{agent['id']}?force=true", {})
        assert status == 200, body
        await pass_deadlines(hub, clock, windows=4)  # the hub waits for the sidecar's retry
        assert (await state(hub, agent["id"]))["status"] != "offline"
        settled = await wait_for(
            lambda: _settled(hub, agent["id"]), timeout_s=30, what="the reprovision settled"
        )
        assert settled["lifecycle_generation"] == 2 and settled["status_reason"] is None
        managed = sidecar.state.agent(agent["gateway_agent_id"])
        assert managed is not None and managed.generation == 2
        first = [c[2] for c in gateway.calls if c[0] == "wake"][:3]
        assert len(set(first)) == 1, gateway.calls  # the refused wake, asked again: one run
    finally:
        await sidecar.stop()


async def test_no_agent_is_judged_while_the_hub_knows_its_gateway_is_unreachable(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway(runs_end=False)
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        clock.advance(PAST_THE_GRACE_S)
        agent = await create(hub)
        await wait_for(lambda: gateway.count("wake") == 1, what="woken")
        for wakes in (2, 3):
            await pass_deadlines(hub, clock)
            await wait_for(lambda n=wakes: _delivered(hub, agent["id"], n), what=f"wake {wakes}")
        gateway.set_reachable(False)  # the gateway restarts; the sidecar says so
        held = await wait_for(lambda: _reason(hub, agent["id"], "gateway_unreachable"), what="held")
        assert held["checkin_deadline_at"] is None
        await pass_deadlines(hub, clock, windows=5)
        still = await state(hub, agent["id"])
        assert still["status"] == "provisioning", still
        gateway.set_reachable(True)  # reattached: the agents behind it get the grace
        back = await wait_for(lambda: _reason(hub, agent["id"], None), what="reachable again")
        assert back["checkin_deadline_at"] is not None
        await pass_deadlines(hub, clock, windows=3)
        await wait_for(lambda: status_is(hub, agent["id"], "offline"), what="then judged")
    finally:
        await sidecar.stop()


async def test_a_hub_restarted_while_the_gateway_is_down_learns_it_from_the_hello(
    tmp_path: Path, clock: JumpClock, free_port: Callable[[], int]
) -> None:
    ports = fixed_ports(free_port)
    hub = make_hub(tmp_path / "hub", clock, ports)
    await hub.start()
    gateway = RecordingGateway(runs_end=False)
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        clock.advance(PAST_THE_GRACE_S)
        agent = await create(hub)
        await wait_for(lambda: gateway.count("wake") == 1, what="woken")
        await hub.stop()
        gateway.set_reachable(False)  # while the hub is away: no report reaches it
        hub = make_hub(tmp_path / "hub", clock, ports)
        await hub.start()
        await wait_for(lambda: sidecar_connected(hub, GATEWAY), what="reconnected")
        await wait_for(lambda: _reason(hub, agent["id"], "gateway_unreachable"), what="held")
        await pass_deadlines(hub, clock, windows=6)
        assert (await state(hub, agent["id"]))["status"] == "provisioning"
        assert gateway.count("wake") == 1
    finally:
        await sidecar.stop()
        await hub.stop()


# -------------------------------------------------- a lost result is learned from the Hello


async def test_a_created_agent_whose_result_was_lost_moves_on_after_the_hello(
    tmp_path: Path, clock: JumpClock, free_port: Callable[[], int]
) -> None:
    ports = fixed_ports(free_port)
    hub = make_hub(tmp_path / "hub", clock, ports)
    await hub.start()
    gateway = RecordingGateway(runs_end=False)
    first = await start_sidecar(tmp_path, hub, gateway)
    drop_results(first)
    try:
        agent = await create(hub)
        await wait_for(lambda: gateway.count("wake") == 1, what="applied and woken")
        await wait_for(lambda: first.state.last_applied_sequence > 0, what="recorded as applied")
    finally:
        await first.stop()  # killed: its result never left
    await hub.stop()  # and the hub restarts meanwhile
    hub = make_hub(tmp_path / "hub", clock, ports)
    await hub.start()
    assert (await state(hub, agent["id"]))["last_wake_sent_at"] is None
    second = await start_sidecar(tmp_path, hub, gateway)
    try:
        woken = await wait_for(
            lambda: _field(hub, agent["id"], "last_wake_sent_at"), what="the Hello's outcome"
        )
        assert woken
        after = await state(hub, agent["id"])
        assert after["wake_attempts"] == 1 and after["status"] == "provisioning"
        assert after["applied_generation"] == after["lifecycle_generation"]
        assert after["checkin_deadline_at"] is not None  # a check-in is due: not stuck
        assert gateway.count("wake") == 1  # confirmed, not replayed
        (confirmed,) = await events(hub, "lifecycle.command.confirmed_without_result")
        assert confirmed["detail"]["command"] == "apply_agent"
        clock.advance(PAST_THE_GRACE_S)
        await hub.reconciler.reconcile_due()
        await wait_for(lambda: gateway.count("wake") == 2, what="the next wake at the deadline")
    finally:
        await second.stop()
        await hub.stop()


@pytest.mark.parametrize("sidecar_killed", [False, True], ids=["sidecar-stays", "sidecar-killed"])
@pytest.mark.parametrize("change", ["create", "delete agent", "delete board"])
async def test_a_command_applied_while_the_hub_was_down_settles_after_the_reconnect(
    change: str,
    sidecar_killed: bool,
    tmp_path: Path,
    clock: JumpClock,
    free_port: Callable[[], int],
) -> None:
    """The hub stops while the sidecar is applying: the result has no stream to go to.
    The sidecar reconnects to the restarted hub (the same one, which sends the result it
    kept; or one started again after a kill, which lost it: only its Hello confirms the
    command). Whatever the hub learns, the agent settles: a created one leaves
    provisioning, a deleted one (and its board) is gone."""
    ports = fixed_ports(free_port)
    hub = make_hub(tmp_path / "hub", clock, ports)
    await hub.start()
    gateway = RecordingGateway()
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        if change == "create":
            gateway.hold = asyncio.Event()
            agent = await create(hub)
            method = "ensure_agent"
        else:
            agent = await create(hub, "Doomed")
            await wait_for(lambda: status_is(hub, agent["id"], "online"), what="online")
            gateway.hold = asyncio.Event()
            path = (
                f"/api/v1/agents/{agent['id']}"
                if change == "delete agent"
                else f"/api/v1/boards/{agent['board_id']}"
            )
            status, _ = await api(hub, "DELETE", path)
            assert status == 202
            method = "remove_agent"
        await wait_for(lambda: gateway.count(method) == 1, what=f"{method} under way")
        await hub.stop()  # the result has nowhere to go
        gateway.hold.set()
        await wait_for(
            lambda: sidecar.state.last_applied_sequence > 0 and _applied(sidecar, method),
            what="the sidecar applied it",
        )
        if sidecar_killed:
            drop_results(sidecar)
            await sidecar.stop()  # its unsent result is lost with it
        hub = make_hub(tmp_path / "hub", clock, ports)
        await hub.start()
        if sidecar_killed:
            gateway.hold = None
            sidecar = await start_sidecar(tmp_path, hub, gateway)
        await wait_for(lambda: sidecar_connected(hub, GATEWAY), timeout_s=30, what="reconnected")
        if change == "create":
            settled = await wait_for(
                lambda: _settled_online(hub, clock, agent["id"]),
                timeout_s=30,
                what="the created agent online",
            )
            assert settled["applied_generation"] == settled["lifecycle_generation"]
            assert gateway.count("ensure_agent") == 1  # confirmed, not replayed
        else:
            await wait_for(
                lambda: _gone(hub, f"/api/v1/agents/{agent['id']}"), what="the agent row gone"
            )
            if change == "delete board":
                await wait_for(
                    lambda: _gone(hub, f"/api/v1/boards/{agent['board_id']}"),
                    what="the board gone",
                )
            assert gateway.count("remove_agent") == 1
    finally:
        await sidecar.stop()
        await hub.stop()


async def test_a_deleted_board_whose_removal_result_was_lost_is_gone_after_the_hello(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway()
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    agent = await create(hub, "Doomed")
    await wait_for(lambda: status_is(hub, agent["id"], "online"), what="online")
    drop_results(sidecar)
    status, _ = await api(hub, "DELETE", f"/api/v1/boards/{agent['board_id']}")
    assert status == 202
    await wait_for(lambda: gateway.count("remove_agent") == 1, what="removed on the gateway")
    await wait_for(
        lambda: not any(a.agent_id == agent["gateway_agent_id"] for a in sidecar.state.agents()),
        what="the sidecar recorded the removal",
    )
    await sidecar.stop()  # killed: its result never left
    assert (await state(hub, agent["id"]))["status"] == "deleting"
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        status, _ = await wait_for(
            lambda: _gone(hub, f"/api/v1/agents/{agent['id']}"), what="the agent row gone"
        )
        assert await _gone(hub, f"/api/v1/boards/{agent['board_id']}"), "the board remains"
        assert gateway.count("remove_agent") == 1  # confirmed, not replayed
    finally:
        await sidecar.stop()


async def test_a_removal_the_sidecar_refused_still_ends_the_deletion(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = RecordingGateway()
    sidecar = await start_sidecar(tmp_path, hub, gateway)
    try:
        agent = await create(hub, "Stubborn")
        await wait_for(lambda: status_is(hub, agent["id"], "online"), what="online")
        gateway.refuse_removal = "The only configured agent cannot be deleted"
        status, _ = await api(hub, "DELETE", f"/api/v1/boards/{agent['board_id']}")
        assert status == 202
        await wait_for(
            lambda: _gone(hub, f"/api/v1/boards/{agent['board_id']}"), what="the board gone"
        )
        (deleted,) = await events(hub, "agent.deleted")
        assert "cannot be deleted" in deleted["detail"]["refused"]
    finally:
        await sidecar.stop()


# ------------------------------------------------------------------------- helpers


async def _delivered(hub: Hub, agent_id: str, wakes: int) -> bool:
    """The hub counted `wakes` delivered wakes (the next deadline runs from the last)."""
    return bool((await state(hub, agent_id))["wake_attempts"] >= wakes)


async def _runs_without_turn(hub: Hub, count: int) -> bool:
    return len(await events(hub, "lifecycle.run.no_turn")) >= count


async def _settled(hub: Hub, agent_id: str) -> dict[str, Any] | None:
    body = await state(hub, agent_id)
    done = body["applied_generation"] == body["lifecycle_generation"]
    return body if done and body["status"] == "online" else None


def _applied(sidecar: Sidecar, method: str) -> bool:
    managed = list(sidecar.state.agents())
    return bool(managed) if method == "ensure_agent" else not managed


async def _settled_online(hub: Hub, clock: JumpClock, agent_id: str) -> dict[str, Any] | None:
    """Online, passing a check-in window each time (a wake's report may be lost too)."""
    body = await state(hub, agent_id)
    if body["status"] == "online":
        return body
    assert body["status"] in ("provisioning", "updating"), body
    await pass_deadlines(hub, clock)
    return None


async def _field(hub: Hub, agent_id: str, name: str) -> Any:
    return (await state(hub, agent_id))[name]


async def _reason(hub: Hub, agent_id: str, reason: str | None) -> dict[str, Any] | None:
    body = await state(hub, agent_id)
    return body if body["status_reason"] == reason else None


async def _gone(hub: Hub, path: str) -> tuple[int, Any] | None:
    status, body = await api(hub, "GET", path)
    return (status, body) if status == 404 else None
