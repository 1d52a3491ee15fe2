"""The sidecar's command queue: removals go to the gateway together, within a bound, and
are still recorded and answered in sequence order; everything else, one at a time.

The gateway is the in-memory stand-in (tests/support.py) with removals that take a
while and can fail; removing real agents concurrently is tried against the real
gateway in tests/interop/test_agent_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protos import link_pb2 as pb
from protos.contract import GatewayErrorKind, GatewayGeneration
from sidecar.commands import CommandApplier, CommandQueue
from sidecar.gateway import AgentEntry, GatewayError, GatewayInfo
from sidecar.state import AgentState, LocalState
from sidecar.workspace import WorkspaceWriter
from tests.support import RecordingGateway, wait_for

Outcome = pb.CommandResult.Outcome
BOUND = 4


@dataclass
class SlowRemovals(RecordingGateway):
    """Removals take `delay_s`; an agent in `busy` is refused once (a retryable answer),
    one in `refused` for good; counts how many removals were under way at once."""

    delay_s: float = 0.05
    busy: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    under_way: int = 0
    most_under_way: int = 0
    ensured_while_removing: list[str] = field(default_factory=list)
    generation: GatewayGeneration = GatewayGeneration.CURRENT

    @property
    def info(self) -> GatewayInfo:
        return GatewayInfo(reachable=self.reachable, generation=self.generation)

    async def ensure_agent(self, entry: AgentEntry) -> None:
        if self.under_way:
            self.ensured_while_removing.append(entry.agent_id)
        await super().ensure_agent(entry)

    async def remove_agent(self, agent_id: str, *, delete_files: bool) -> None:
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            await asyncio.sleep(self.delay_s)
            if agent_id in self.busy:
                self.busy.discard(agent_id)
                raise GatewayError(f"gateway busy removing {agent_id}", code="gateway_busy")
            if agent_id in self.refused:
                raise GatewayError("agent is protected", kind=GatewayErrorKind.PERMANENT)
            await super().remove_agent(agent_id, delete_files=delete_files)
        finally:
            self.under_way -= 1


@dataclass
class World:
    state: LocalState
    gateway: SlowRemovals
    queue: CommandQueue
    results: list[pb.CommandResult]
    # Each result's sequence and outcome, and the applied watermark when it was sent.
    sent: list[tuple[int, int, int]]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    state = LocalState(tmp_path / "state.sqlite3")
    gateway = SlowRemovals()
    applier = CommandApplier(state, WorkspaceWriter(tmp_path / "ws"), gateway, lambda run: None)
    results: list[pb.CommandResult] = []
    marks: list[tuple[int, int, int]] = []

    def send(result: pb.CommandResult) -> None:
        results.append(result)
        marks.append((result.sequence, result.outcome, state.last_applied_sequence))

    queue = CommandQueue(
        applier, send, retry_initial_s=0.01, retry_max_s=0.05, removal_concurrency=BOUND
    )
    task = queue.start()
    yield World(state, gateway, queue, results, marks)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await applier.close()
    state.close()


def agent(i: int) -> str:
    return f"mc-agent-{i:03d}"


def managed(world: World, count: int) -> None:
    world.state.record_applied(
        0, upsert=[AgentState(agent(i), 1, f"workspace-{agent(i)}", {}) for i in range(count)]
    )


def removal(sequence: int, agent_id: str, generation: int = 1) -> pb.Command:
    return pb.Command(
        sequence=sequence, remove_agent=pb.RemoveAgent(agent_id=agent_id, generation=generation)
    )


def application(sequence: int, agent_id: str) -> pb.Command:
    return pb.Command(
        sequence=sequence,
        apply_agent=pb.ApplyAgent(agent_id=agent_id, generation=2, workspace_path=agent_id),
    )


async def all_answered(world: World, last: int) -> None:
    await wait_for(
        lambda: world.state.last_applied_sequence == last and len(world.results) >= last,
        timeout_s=10,
        what=f"commands up to {last} answered",
    )


def assert_answered_in_order(world: World) -> None:
    """Results go out in sequence order, each processed one recorded when it is sent, and
    a failed one sent while the watermark is still below it."""
    processed = [r.sequence for r in world.results if r.outcome != Outcome.FAILED]
    assert processed == sorted(processed)
    for sequence, outcome, watermark in world.sent:
        if outcome == Outcome.FAILED:
            assert watermark < sequence, (sequence, watermark)
        else:
            assert watermark >= sequence, (sequence, watermark)


async def test_removals_go_to_the_gateway_together_within_the_bound(world: World) -> None:
    managed(world, 20)
    for i in range(20):
        world.queue.submit(removal(i + 1, agent(i)))
    await all_answered(world, 20)
    assert 1 < world.gateway.most_under_way <= BOUND
    assert [r.sequence for r in world.results] == list(range(1, 21))
    assert {r.outcome for r in world.results} == {Outcome.APPLIED}
    assert world.state.agents() == []
    assert_answered_in_order(world)


async def test_a_failed_removal_is_retried_in_place_and_those_after_it_wait(world: World) -> None:
    managed(world, 8)
    world.gateway.busy = {agent(2)}  # sequence 3, in the first run of four
    for i in range(8):
        world.queue.submit(removal(i + 1, agent(i)))
    await all_answered(world, 8)
    failed = [r.sequence for r in world.results if r.outcome == Outcome.FAILED]
    assert failed == [3]
    # Nothing after 3 was answered before 3 was; 4 was removed at the gateway with the
    # first run and again behind 3 (an absent agent is removed: no harm).
    first_success_of_3 = next(
        i for i, r in enumerate(world.results) if r.sequence == 3 and r.outcome != Outcome.FAILED
    )
    assert all(r.sequence <= 3 for r in world.results[:first_success_of_3])
    removed_4 = [c for c in world.gateway.calls if c[:2] == ("remove_agent", agent(3))]
    assert len(removed_4) == 2
    assert world.state.agents() == []
    assert_answered_in_order(world)


async def test_a_refused_removal_is_answered_and_does_not_hold_the_others(world: World) -> None:
    managed(world, 4)
    world.gateway.refused = {agent(1)}
    for i in range(4):
        world.queue.submit(removal(i + 1, agent(i)))
    await all_answered(world, 4)
    outcomes = {r.sequence: r.outcome for r in world.results}
    assert outcomes == {
        1: Outcome.APPLIED,
        2: Outcome.REJECTED,
        3: Outcome.APPLIED,
        4: Outcome.APPLIED,
    }
    assert [a.agent_id for a in world.state.agents()] == [agent(1)]
    assert world.gateway.most_under_way == 4
    assert_answered_in_order(world)


async def test_a_run_ends_at_another_command_and_at_the_same_agent_again(world: World) -> None:
    managed(world, 4)
    world.queue.submit(removal(1, agent(0)))
    world.queue.submit(removal(2, agent(1)))
    world.queue.submit(application(3, agent(2)))  # waits for both removals to end
    world.queue.submit(removal(4, agent(3)))
    world.queue.submit(application(5, agent(3)))  # re-created after its removal
    world.queue.submit(removal(6, agent(3), 2))  # and removed again, after the application
    await all_answered(world, 6)
    assert world.gateway.ensured_while_removing == []
    assert [r.sequence for r in world.results] == [1, 2, 3, 4, 5, 6]
    assert world.gateway.most_under_way == 2
    assert [a.agent_id for a in world.state.agents()] == [agent(2)]
    assert_answered_in_order(world)


async def test_replayed_removals_already_processed_are_skipped(world: World) -> None:
    managed(world, 6)
    for i in range(3):
        world.queue.submit(removal(i + 1, agent(i)))
    await all_answered(world, 3)
    # A new stream replays from the start (as after a lost ack), with new commands after.
    world.queue.reset()
    for i in range(6):
        world.queue.submit(removal(i + 1, agent(i)))
    await all_answered(world, 6)
    assert [r.sequence for r in world.results] == [1, 2, 3, 4, 5, 6]
    removals = [c[1] for c in world.gateway.calls if c[0] == "remove_agent"]
    assert sorted(removals) == [agent(i) for i in range(6)]


@pytest.mark.parametrize("generation", [GatewayGeneration.LEGACY_2026_3, GatewayGeneration.UNKNOWN])
async def test_a_gateway_that_loses_concurrent_removals_gets_them_one_at_a_time(
    world: World, generation: GatewayGeneration
) -> None:
    world.gateway.generation = generation
    managed(world, 6)
    for i in range(6):
        world.queue.submit(removal(i + 1, agent(i)))
    await all_answered(world, 6)
    assert world.gateway.most_under_way == 1
    assert [r.sequence for r in world.results] == list(range(1, 7))
    assert world.state.agents() == []
