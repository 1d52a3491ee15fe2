"""Waiting for the signals that stop a service (SIGINT from Ctrl-C, SIGTERM from init)."""

from __future__ import annotations

import asyncio
import signal

from missioncontrol.log import get_logger

log = get_logger("service.signals")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def until_stopped() -> None:
    """Return when the process receives SIGINT or SIGTERM.

    The handlers stay in place afterwards: a second Ctrl-C while the service shuts
    down is acknowledged instead of interrupting the shutdown half way (the loop
    drops the handlers when it closes).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, _already_stopping, sig)


def _already_stopping(sig: signal.Signals) -> None:
    log.warning(
        "service.stop.in_progress",
        signal=sig.name,
        detail="already stopping: open streams are drained and queued writes committed first",
    )
