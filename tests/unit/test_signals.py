"""Stop signals: the first ends the wait, later ones do not interrupt the shutdown."""

from __future__ import annotations

import asyncio
import os
import signal

from structlog.testing import capture_logs

from missioncontrol.signals import until_stopped


async def test_a_second_ctrl_c_during_shutdown_is_acknowledged_not_raised() -> None:
    waiter = asyncio.create_task(until_stopped())
    await asyncio.sleep(0)  # handlers installed
    os.kill(os.getpid(), signal.SIGINT)
    async with asyncio.timeout(5):
        await waiter
    with capture_logs() as logs:
        os.kill(os.getpid(), signal.SIGINT)  # during the shutdown that would follow
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(20):  # the loop runs signal handlers between steps
            await asyncio.sleep(0.01)
            if len(logs) >= 2:
                break
    assert [(entry["event"], entry["signal"]) for entry in logs] == [
        ("service.stop.in_progress", "SIGINT"),
        ("service.stop.in_progress", "SIGTERM"),
    ]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
