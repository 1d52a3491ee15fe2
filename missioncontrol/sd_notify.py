"""The sd_notify protocol: tell systemd when a service is ready, stopping and alive.

systemd passes an AF_UNIX datagram socket in NOTIFY_SOCKET (a path, or an abstract
name written with a leading "@"); each datagram is newline-separated KEY=VALUE lines.
With WatchdogSec= it also passes WATCHDOG_USEC (and WATCHDOG_PID) and restarts a
service that stays silent that long. The pings are sent by a task on the event loop,
so a loop that is stuck (a blocking call, a coroutine that never yields) stops them
and the process is restarted; a thread would keep pinging on behalf of a dead loop.

Without NOTIFY_SOCKET (a terminal, launchd, tests) every call does nothing. A message
that cannot be sent is logged, never raised: the service itself keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping

from missioncontrol.log import get_logger

log = get_logger("service.notify")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
# A ping every third of WatchdogSec: one or two late pings under load do not kill us.
WATCHDOG_PINGS_PER_INTERVAL = 3


def socket_address(value: str) -> str | None:
    """The address to send to for a NOTIFY_SOCKET value, or None if we cannot use it."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:CID:PORT (VMs); not a socket this service is given


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """WatchdogSec as systemd passed it, or None when no watchdog applies to `pid`."""
    raw = environ.get(WATCHDOG_USEC_ENV, "")
    if not raw:
        return None
    owner = environ.get(WATCHDOG_PID_ENV, "")
    if owner and owner != str(pid):
        return None  # inherited from the process systemd started, not meant for us
    try:
        usec = int(raw)
    except ValueError:
        log.warning("service.notify.watchdog_invalid", value=raw)
        return None
    return usec / 1_000_000 if usec > 0 else None


class ServiceNotifier:
    """Sends READY=1, STOPPING=1, STATUS= and WATCHDOG=1 to the service manager."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address else None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] = os.environ, pid: int | None = None
    ) -> ServiceNotifier:
        raw = environ.get(NOTIFY_SOCKET_ENV, "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("service.notify.unsupported_socket", notify_socket=raw)
        return cls(address, watchdog_interval_s(environ, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_period_s(self) -> float | None:
        return None if self.watchdog_s is None else self.watchdog_s / WATCHDOG_PINGS_PER_INTERVAL

    async def notify(self, *assignments: str) -> bool:
        """Send one datagram of KEY=VALUE lines; True if it was handed to the socket."""
        if self.address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        payload = "\n".join(assignments).encode()
        try:
            await asyncio.get_running_loop().sock_sendto(self._socket, payload, self.address)
        except OSError as exc:
            log.warning(
                "service.notify.failed",
                message=assignments[0] if assignments else "",
                error=exc.strerror or repr(exc),
            )
            return False
        return True

    async def ready(self, status: str) -> bool:
        return await self.notify("READY=1", f"STATUS={status}")

    async def stopping(self, status: str = "stopping") -> bool:
        return await self.notify("STOPPING=1", f"STATUS={status}")

    async def run_watchdog(self) -> None:
        """Ping until cancelled; returns at once when systemd asked for no watchdog."""
        period = self.watchdog_period_s
        if period is None:
            return
        log.debug("service.notify.watchdog_started", period_s=period)
        while True:
            await self.notify("WATCHDOG=1")
            await asyncio.sleep(period)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@contextlib.asynccontextmanager
async def supervised(
    status: str, notifier: ServiceNotifier | None = None
) -> AsyncIterator[ServiceNotifier]:
    """READY=1 with `status` on entry, WATCHDOG=1 while inside, STOPPING=1 on the way out.

    Enter it once the service does what READY promises (ports bound, stores open).
    """
    notifier = notifier or ServiceNotifier.from_environ()
    watchdog = asyncio.create_task(notifier.run_watchdog(), name="service-watchdog")
    try:
        await notifier.ready(status)
        yield notifier
    finally:
        await notifier.stopping()
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        notifier.close()
