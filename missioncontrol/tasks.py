"""Long-lived tasks: loops that should run until they are cancelled, and say so if not.

A loop that ends on its own (it returned, or an exception escaped it) while the program
goes on is the worst kind of failure: nothing crashes, the link still looks connected,
and the work the loop did silently stops. Every long-lived loop of both programs is
started here, so that decision is made once: cancellation is how a loop is meant to
end and is not reported; any other end is logged at error level as `task.loop.ended`
(with the loop's name, how it ended and the exception), and `on_end` is told, so its
owner can end what the loop served (a stream, for instance) instead of leaving it mute.
Loops themselves still catch what one bad item raises, log it and go on; this is the
net under them.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

LOOP_ENDED = "task.loop.ended"

_running: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def start_long_lived(
    coro: Coroutine[Any, Any, T],
    *,
    name: str,
    log: structlog.typing.FilteringBoundLogger,
    on_end: Callable[[BaseException | None], None] | None = None,
    may_return: bool = False,
) -> asyncio.Task[T]:
    """Start `coro` as a task named `name` whose end, unless cancelled, is logged loudly.

    `on_end(exception or None)` runs after such an unexpected end (not after a
    cancellation). `may_return`: returning is a normal end too (a stream's reader at
    the end of its stream); only an exception is then unexpected."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(lambda done: _ended(done, log, on_end, may_return))
    return task


def long_lived_names() -> set[str]:
    """Names of the long-lived tasks still running (for tests and diagnostics)."""
    return {task.get_name() for task in _running if not task.done()}


def _ended(
    task: asyncio.Task[Any],
    log: structlog.typing.FilteringBoundLogger,
    on_end: Callable[[BaseException | None], None] | None,
    may_return: bool,
) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is None and may_return:
        return
    if error is None:
        log.error(LOOP_ENDED, task=task.get_name(), how="returned")
    else:
        log.error(
            LOOP_ENDED,
            task=task.get_name(),
            how="raised",
            error=repr(error),
            exc_info=error,
        )
    if on_end is not None:
        try:
            on_end(error)
        except Exception as exc:  # a broken handler must not hide the loop's own end
            log.error(LOOP_ENDED, task=task.get_name(), how="on_end_failed", error=repr(exc))
