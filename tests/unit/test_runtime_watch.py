"""The sidecar's runtime watch: runs as check-ins, conditions as causes (with an in-memory
gateway; tests/interop/test_presence_runtime.py does the same against the real one)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.gateway import (
    GatewayError,
    HeartbeatJobChanged,
    HeartbeatSpec,
    ProviderAuth,
    RunEnded,
    RunKind,
    RunOutcome,
    RunState,
)
from sidecar.link.heartbeats import HeartbeatRelay
from sidecar.reports import OwnChanges
from sidecar.runtime_watch import (
    GATEWAY_UNREACHABLE,
    HEARTBEAT_CHANGED,
    HEARTBEAT_MISSING,
    MODEL_AUTH,
    RUNS_FAILING,
    RuntimeWatch,
)
from sidecar.state import AgentState, LocalState
from tests.support import RecordingGateway

AGENT = "mc-one"
SPEC = HeartbeatSpec(every_s=600, target="none", checklist="- check in")


@dataclass
class World:
    gateway: RecordingGateway
    state: LocalState
    relay: HeartbeatRelay
    watch: RuntimeWatch
    changes: list[int]

    def end(self, kind: RunKind, state: RunState, *, turn: bool = True, message: str = "") -> None:
        outcome = RunOutcome("run", state, message, model_turn=turn)
        self.gateway.emit(RunEnded(AGENT, kind, outcome))

    def codes(self) -> set[tuple[str, str]]:
        return {(c.agent_id, c.code) for c in self.watch.conditions()}


def _world(tmp_path: Path, *, restore: bool = True) -> Iterator[World]:
    gateway = RecordingGateway()
    gateway.calls.append(("ensure_agent", AGENT, str(tmp_path / AGENT)))
    state = LocalState(tmp_path / "state.sqlite3")
    state.record_applied(1, upsert=[AgentState(AGENT, 1, str(tmp_path / AGENT), heartbeat=SPEC)])
    relay = HeartbeatRelay(lambda message: None, state)
    changes: list[int] = []
    watch = RuntimeWatch(
        gateway,
        relay,
        state,
        OwnChanges(window_s=0.0),
        lambda: changes.append(1),
        restore=restore,
    )
    yield World(gateway, state, relay, watch, changes)
    state.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


@pytest.fixture
def keeping(tmp_path: Path) -> Iterator[World]:
    """The sidecar runs with --no-restore-removed-entries."""
    yield from _world(tmp_path, restore=False)


@pytest.mark.parametrize("kind", [RunKind.HEARTBEAT, RunKind.CHAT])
def test_a_run_with_a_model_turn_is_a_runtime_check_in(world: World, kind: RunKind) -> None:
    world.end(kind, RunState.FINAL)
    beat = world.relay.unacked()[AGENT]
    assert beat.runtime and not beat.status


@pytest.mark.parametrize(
    ("kind", "state", "turn"),
    [
        (RunKind.WAKE, RunState.FINAL, True),  # reported with its command instead
        (RunKind.HEARTBEAT, RunState.FINAL, False),  # skipped: never reached the model
        (RunKind.CHAT, RunState.ERROR, False),
        (RunKind.CHAT, RunState.ABORTED, False),
    ],
)
def test_other_ends_are_no_check_in(
    world: World, kind: RunKind, state: RunState, turn: bool
) -> None:
    world.end(kind, state, turn=turn)
    assert world.relay.unacked() == {}


def test_runs_of_agents_it_does_not_manage_are_not_its_business(world: World) -> None:
    world.gateway.emit(
        RunEnded("main", RunKind.HEARTBEAT, RunOutcome("r", RunState.FINAL, "", True))
    )
    world.gateway.emit(RunEnded("main", RunKind.CHAT, RunOutcome("r", RunState.ERROR, "x")))
    assert world.relay.unacked() == {} and world.watch.conditions() == []


def test_a_runtime_beat_keeps_what_the_agent_said(world: World) -> None:
    world.relay.record(AGENT, status="working", current_task_id="task-7")
    world.end(RunKind.HEARTBEAT, RunState.FINAL)
    beat = world.relay.unacked()[AGENT]
    assert (beat.status, beat.current_task_id, beat.runtime) == ("working", "task-7", False)


def test_runs_failing_in_a_row_are_a_condition_until_one_succeeds(world: World) -> None:
    world.end(RunKind.HEARTBEAT, RunState.ERROR, turn=False, message="first")
    assert world.codes() == set() and world.changes == []
    world.end(RunKind.WAKE, RunState.ERROR, turn=False, message="Authentication failed (401)")
    (condition,) = world.watch.conditions()
    assert condition.code == RUNS_FAILING and condition.agent_id == AGENT
    assert "keep failing" in condition.detail and "Authentication failed (401)" in condition.detail
    assert world.changes == [1]
    world.end(RunKind.CHAT, RunState.ERROR, turn=False, message="Authentication failed (401)")
    assert world.changes == [1]  # the same words: nothing new to tell
    world.end(RunKind.CHAT, RunState.FINAL)
    assert world.codes() == set() and world.changes == [1, 1]


async def test_a_missing_heartbeat_is_found_and_put_back(world: World) -> None:
    world.gateway.heartbeat_off.add(AGENT)
    await world.watch.check()
    (condition,) = world.watch.conditions()
    assert (condition.agent_id, condition.code) == (AGENT, HEARTBEAT_MISSING)
    assert "put it back" in condition.detail
    assert ("set_heartbeat", AGENT, 600) in world.gateway.calls
    assert world.changes == [1]
    await world.watch.check()  # the next look finds it running again
    assert world.watch.conditions() == [] and world.changes == [1, 1]


async def test_a_heartbeat_at_another_cadence_is_found_and_put_back(world: World) -> None:
    world.gateway.calls.append(("set_heartbeat", AGENT, 1800))  # by hand: the default 30 m
    await world.watch.check()
    (condition,) = world.watch.conditions()
    assert (condition.agent_id, condition.code) == (AGENT, HEARTBEAT_CHANGED)
    assert "every 1800 s, not the 600 s the hub set" in condition.detail
    assert world.gateway.calls[-1] == ("set_heartbeat", AGENT, 600)
    await world.watch.check()
    assert world.watch.conditions() == []


async def test_without_the_restore_policy_it_is_only_reported(keeping: World) -> None:
    keeping.gateway.heartbeat_off.add(AGENT)
    await keeping.watch.check()
    await keeping.watch.check()
    (condition,) = keeping.watch.conditions()
    assert condition.code == HEARTBEAT_MISSING and "--restore-removed-entries" in condition.detail
    assert keeping.gateway.count("set_heartbeat") == 0
    assert keeping.changes == [1]  # found once, told once


async def test_an_agent_whose_heartbeat_the_hub_turned_off_is_not_missing(world: World) -> None:
    world.state.record_applied(
        2, upsert=[AgentState(AGENT, 2, "ws", heartbeat=HeartbeatSpec(every_s=0))]
    )
    world.gateway.heartbeat_off.add(AGENT)
    await world.watch.check()
    assert world.watch.conditions() == [] and world.gateway.count("set_heartbeat") == 0


async def test_a_provider_sign_in_expired_is_a_condition_of_every_agent(world: World) -> None:
    world.gateway.provider_auth = [
        ProviderAuth("scripted", "static"),
        ProviderAuth("openai", "expired"),
    ]
    await world.watch.check()
    (condition,) = world.watch.conditions()
    assert (condition.agent_id, condition.code) == ("", MODEL_AUTH)
    assert "openai (expired)" in condition.detail and "scripted" not in condition.detail
    world.gateway.provider_auth = [ProviderAuth("openai", "ok")]
    await world.watch.check()
    assert world.watch.conditions() == []


async def test_an_unreachable_gateway_is_a_condition_and_checks_wait(world: World) -> None:
    world.gateway.set_reachable(False)
    await world.watch.check()  # reads nothing
    (condition,) = world.watch.conditions()
    assert (condition.agent_id, condition.code) == ("", GATEWAY_UNREACHABLE)
    assert condition.detail == "gateway is down (test)"
    since = condition.since
    assert world.watch.conditions()[0].since == since  # the same outage
    world.gateway.set_reachable(True)
    assert world.watch.conditions() == []


async def test_a_check_the_gateway_fails_keeps_what_was_found(world: World) -> None:
    world.gateway.heartbeat_off.add(AGENT)
    world.watch.restore = False
    await world.watch.check()

    async def failing() -> None:
        raise GatewayError("status: gateway busy")

    world.gateway.runtime_status = failing  # type: ignore[assignment,method-assign]
    await world.watch.check()
    assert world.codes() == {(AGENT, HEARTBEAT_MISSING)}


async def test_a_heartbeat_job_removed_is_looked_at_at_once(world: World) -> None:
    world.watch._wakeup.clear()
    world.gateway.emit(HeartbeatJobChanged("main", present=False))
    assert not world.watch._wakeup.is_set()  # not ours
    world.gateway.emit(HeartbeatJobChanged(AGENT, present=False))
    assert world.watch._wakeup.is_set()


async def test_an_agent_no_longer_managed_takes_its_conditions_with_it(world: World) -> None:
    for _ in range(2):
        world.end(RunKind.CHAT, RunState.ERROR, turn=False, message="boom")
    assert world.codes() == {(AGENT, RUNS_FAILING)}
    world.state.record_applied(3, remove=[AGENT])
    await world.watch.check()
    assert world.watch.conditions() == []


async def test_a_sign_in_read_that_fails_costs_the_heartbeat_check_nothing(world: World) -> None:
    world.gateway.provider_auth = [ProviderAuth("openai", "expired")]
    await world.watch.check()
    world.gateway.heartbeat_off.add(AGENT)
    world.watch.restore = False

    async def failing() -> None:
        raise GatewayError("models.authStatus: UNAVAILABLE: catalog not ready")

    world.gateway.model_auth = failing  # type: ignore[assignment,method-assign]
    await world.watch.check()
    assert world.codes() == {(AGENT, HEARTBEAT_MISSING), ("", MODEL_AUTH)}
