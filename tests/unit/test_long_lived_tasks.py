"""missioncontrol/tasks.py: a long-lived loop that ends any way but cancellation is loud."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from missioncontrol.log import get_logger
from missioncontrol.tasks import LOOP_ENDED, long_lived_names, start_long_lived

log = get_logger("test.tasks")


async def returns() -> None:
    await asyncio.sleep(0)


async def raises() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("one bad item")


async def forever() -> None:
    await asyncio.Event().wait()


def ended(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == LOOP_ENDED]


@pytest.mark.parametrize(("loop", "how"), [(returns, "returned"), (raises, "raised")])
async def test_a_loop_that_ends_on_its_own_is_logged_at_error_and_its_owner_told(
    loop: object, how: str
) -> None:
    told: list[BaseException | None] = []
    with structlog.testing.capture_logs() as logs:
        task = start_long_lived(loop(), name="test-loop", log=log, on_end=told.append)  # type: ignore[operator]
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next turn
    [event] = ended(logs)
    assert (event["log_level"], event["task"], event["how"]) == ("error", "test-loop", how)
    assert len(told) == 1
    assert (told[0] is None) == (how == "returned")
    if how == "raised":
        assert "one bad item" in str(event["error"])


async def test_cancelling_a_loop_is_its_normal_end_and_is_not_reported() -> None:
    told: list[BaseException | None] = []
    with structlog.testing.capture_logs() as logs:
        task = start_long_lived(forever(), name="test-forever", log=log, on_end=told.append)
        await asyncio.sleep(0)
        assert "test-forever" in long_lived_names()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    assert not ended(logs) and not told
    assert "test-forever" not in long_lived_names()


async def test_a_reader_may_return_at_the_end_of_its_stream_but_not_raise() -> None:
    with structlog.testing.capture_logs() as logs:
        quiet = start_long_lived(returns(), name="reader-ok", log=log, may_return=True)
        loud = start_long_lived(raises(), name="reader-bad", log=log, may_return=True)
        await asyncio.gather(quiet, loud, return_exceptions=True)
        await asyncio.sleep(0)
    assert [e["task"] for e in ended(logs)] == ["reader-bad"]


async def test_a_failing_end_handler_does_not_hide_the_end() -> None:
    def broken(_error: BaseException | None) -> None:
        raise ValueError("handler bug")

    with structlog.testing.capture_logs() as logs:
        task = start_long_lived(returns(), name="test-handler", log=log, on_end=broken)
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    assert [e["how"] for e in ended(logs)] == ["returned", "on_end_failed"]
