"""The sd_notify protocol against a real NOTIFY_SOCKET that the test binds.

The hub and the sidecar run as real subprocesses, as systemd would start them; the
test plays systemd's end of the socket. Waits are bounded; nothing asserts a duration
except the watchdog cadence, which is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from missioncontrol.sd_notify import ServiceNotifier, supervised

WATCHDOG_USEC = 900_000  # 0.9 s: pings every 0.3 s


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: an AF_UNIX datagram socket bound by the test."""

    def __init__(self, address: str) -> None:
        self.address = address  # as bound: a path, or "\0name" for an abstract socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    @property
    def env_value(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def receive(self, timeout_s: float) -> tuple[float, dict[str, str]]:
        """The next datagram as {KEY: VALUE}, with the time it was read."""
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no notification within {timeout_s} s") from None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        return time.monotonic(), fields

    def until(self, key: str, timeout_s: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            _, fields = self.receive(max(0.01, deadline - time.monotonic()))
            if key in fields:
                return fields

    def pending(self) -> list[dict[str, str]]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        found = []
        try:
            while True:
                data = self.sock.recv(4096)
                found.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        except BlockingIOError:
            return found
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path is long.
    with tempfile.TemporaryDirectory(prefix="mc-notify-") as directory:
        sock = NotifySocket(str(Path(directory) / "notify"))
        yield sock
        sock.close()


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket(f"\0mc-notify-test-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def _service_env(notify: NotifySocket, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "WATCHDOG_PID")}
    return {**env, "NOTIFY_SOCKET": notify.env_value, **extra}


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=handle
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _get(url: str) -> int:
    """The HTTP status the server answers with (an error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_hub_is_ready_only_with_its_ports_answering_then_pings_the_watchdog_and_stops(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    env = _service_env(notify_socket, WATCHDOG_USEC=str(WATCHDOG_USEC), MC_ADMIN_TOKEN="n" * 64)
    hub = _start(
        [
            "hub.cli",
            "serve",
            "--insecure-dev",
            "--data-dir",
            str(tmp_path / "hub"),
            "--http-listen",
            "127.0.0.1:0",
            "--link-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        env,
        tmp_path / "hub.log",
    )
    try:
        _, first = notify_socket.receive(timeout_s=60)
        assert first.get("READY") == "1", first  # nothing, not even a ping, before READY
        status = first["STATUS"]
        http = re.search(r"API http://([\d.]+:\d+)", status)
        link = re.search(r"link ([\d.]+:\d+)", status)
        assert http and link, status
        # At READY the API answers, and /readyz (the database's write lock, the link
        # server) says ready; the link port accepts connections.
        assert _get(f"http://{http.group(1)}/readyz") == 200
        host, port = link.group(1).rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=10).close()

        pings = []
        while len(pings) < 5:
            at, fields = notify_socket.receive(timeout_s=10)
            if fields.get("WATCHDOG") == "1":
                pings.append(at)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert statistics.median(gaps) < WATCHDOG_USEC / 1e6 / 2, gaps

        hub.send_signal(signal.SIGTERM)
        assert notify_socket.until("STOPPING", timeout_s=30)["STOPPING"] == "1"
        assert hub.wait(timeout=30) == 0
    finally:
        _stop(hub)


def test_sidecar_is_ready_once_its_agent_api_answers_and_says_stopping(
    tmp_path: Path, abstract_notify_socket: NotifySocket
) -> None:
    with socket.socket() as probe:  # a port nobody listens on: the link keeps retrying
        probe.bind(("127.0.0.1", 0))
        dead_hub = f"127.0.0.1:{probe.getsockname()[1]}"
    sidecar = _start(
        [
            "sidecar.cli",
            "run",
            "--insecure-dev",
            "--hub",
            dead_hub,
            "--state-dir",
            str(tmp_path / "state"),
            "--openclaw-config",
            str(tmp_path / "openclaw" / "openclaw.json"),
            "--agent-api-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        _service_env(abstract_notify_socket),
        tmp_path / "sidecar.log",
    )
    try:
        _, ready = abstract_notify_socket.receive(timeout_s=60)
        assert ready.get("READY") == "1", ready
        api = re.search(r"agent API (http://[\d.]+:\d+)", ready["STATUS"])
        assert api and f"link to {dead_hub}" in ready["STATUS"], ready
        assert _get(f"{api.group(1)}/api/v1/agent/healthz") == 401  # it answers: no token
        assert abstract_notify_socket.pending() == []  # no WATCHDOG_USEC: no pings

        sidecar.send_signal(signal.SIGTERM)
        assert abstract_notify_socket.until("STOPPING", timeout_s=30)["STOPPING"] == "1"
        assert sidecar.wait(timeout=30) == 0
    finally:
        _stop(sidecar)


async def _next_ping(notify: NotifySocket, timeout_s: float = 10.0) -> None:
    """Wait for a WATCHDOG=1 without blocking the loop that sends it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(fields.get("WATCHDOG") == "1" for fields in notify.pending()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no WATCHDOG=1 within {timeout_s} s")


async def test_watchdog_pings_stop_while_the_event_loop_is_blocked(
    notify_socket: NotifySocket,
) -> None:
    notifier = ServiceNotifier(notify_socket.address, watchdog_s=0.3)  # a ping every 0.1 s
    watchdog = asyncio.create_task(notifier.run_watchdog())
    try:
        await _next_ping(notify_socket)
        notify_socket.pending()
        # Blocking the loop on purpose: ten ping periods, three watchdog intervals.
        time.sleep(1.0)  # noqa: ASYNC251
        assert notify_socket.pending() == []  # not one ping while it was stuck
        await _next_ping(notify_socket)  # and they resume with the loop
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        notifier.close()


async def test_supervised_sends_ready_then_stopping_and_no_watchdog_for_another_pid(
    notify_socket: NotifySocket,
) -> None:
    environ = {
        "NOTIFY_SOCKET": notify_socket.env_value,
        "WATCHDOG_USEC": "300000",
        "WATCHDOG_PID": str(os.getpid() + 1),  # the watchdog is another process's
    }
    notifier = ServiceNotifier.from_environ(environ)
    assert notifier.enabled and notifier.watchdog_s is None
    async with supervised("serving", notifier):
        await asyncio.sleep(0.3)
    messages = notify_socket.pending()
    assert messages == [
        {"READY": "1", "STATUS": "serving"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


async def test_without_notify_socket_nothing_is_sent_and_a_vanished_socket_is_not_fatal(
    notify_socket: NotifySocket,
) -> None:
    assert not ServiceNotifier.from_environ({}).enabled
    assert await ServiceNotifier.from_environ({}).ready("x") is False
    gone = ServiceNotifier(notify_socket.address + "-gone")
    assert await gone.ready("x") is False  # logged, not raised: the service keeps running
    gone.close()
