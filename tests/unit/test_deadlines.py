"""The reconciler's deadline schedule, without a database or a real clock."""

from __future__ import annotations

import asyncio

from hub.lifecycle.deadlines import DeadlineSchedule, Due


def test_due_deadlines_come_out_earliest_first_and_leave_the_schedule() -> None:
    schedule = DeadlineSchedule()
    schedule.set("b", 20.0, 1)
    schedule.set("a", 10.0, 1)
    schedule.set("c", 30.0, 1)
    assert schedule.pop_due(25.0, limit=10) == [Due(10.0, "a", 1), Due(20.0, "b", 1)]
    assert schedule.pop_due(25.0, limit=10) == []
    assert len(schedule) == 1 and schedule.next_at() == 30.0


def test_a_newer_deadline_replaces_the_older_one() -> None:
    schedule = DeadlineSchedule()
    schedule.set("a", 10.0, 1)
    schedule.set("a", 50.0, 2)
    assert schedule.pop_due(40.0, limit=10) == []
    assert schedule.next_at() == 50.0
    assert schedule.pop_due(50.0, limit=10) == [Due(50.0, "a", 2)]


def test_a_cancelled_deadline_never_comes_due() -> None:
    schedule = DeadlineSchedule()
    schedule.set("a", 10.0, 1)
    schedule.set("a", None, 0)
    assert schedule.next_at() is None and len(schedule) == 0
    assert schedule.pop_due(100.0, limit=10) == []


def test_the_same_deadline_set_twice_comes_due_once() -> None:
    schedule = DeadlineSchedule()
    schedule.set("a", 10.0, 1)
    schedule.set("a", 10.0, 1)
    assert schedule.pop_due(10.0, limit=10) == [Due(10.0, "a", 1)]
    assert schedule.pop_due(10.0, limit=10) == []


def test_pop_due_takes_at_most_the_limit() -> None:
    schedule = DeadlineSchedule()
    for index in range(5):
        schedule.set(f"agent-{index}", float(index), 1)
    assert [d.agent_id for d in schedule.pop_due(10.0, limit=3)] == [
        "agent-0",
        "agent-1",
        "agent-2",
    ]
    assert len(schedule) == 2


async def test_wait_returns_when_a_deadline_is_set() -> None:
    schedule = DeadlineSchedule()
    waiter = asyncio.create_task(schedule.wait(lambda: 0.0))
    await asyncio.sleep(0)
    assert not waiter.done()  # nothing scheduled: it waits for a change
    schedule.set("a", 100.0, 1)
    async with asyncio.timeout(5):
        await waiter


async def test_wait_returns_at_once_when_something_is_already_due() -> None:
    schedule = DeadlineSchedule()
    schedule.set("a", 5.0, 1)
    async with asyncio.timeout(5):
        await schedule.wait(lambda: 10.0)


def test_deadlines_loaded_at_once_come_due_as_if_set_one_by_one() -> None:
    loaded, one_by_one = DeadlineSchedule(), DeadlineSchedule()
    deadlines = [("b", 20.0, 1), ("a", 10.0, 1), ("c", 30.0, 2), ("a", 5.0, 2), ("d", 20.0, 1)]
    loaded.load(deadlines)
    for agent_id, at, generation in deadlines:
        one_by_one.set(agent_id, at, generation)
    assert len(loaded) == len(one_by_one) == 4
    assert loaded.pop_due(25.0, limit=10) == one_by_one.pop_due(25.0, limit=10)
    assert loaded.pop_due(25.0, limit=10) == [] and loaded.next_at() == 30.0
