"""`mc-hub demo` as a newcomer runs it: a real process, until both agents are online
through the API, then Ctrl-C (SIGINT), and nothing it started may still run.

Every process the demo starts carries its run marker in the environment, so "nothing
left" is checked twice: each PID it named in demo.json is gone, and no process on this
host carries the marker (the gateway's own helpers included).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.demo.runner import RUN_MARKER_ENV, STATE_FILE, processes_with_env
from tests.interop.conftest import CACHE_DIR, DEFAULT_VERSION, install_openclaw
from tests.support import demo_command

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

ONLINE_TIMEOUT_S = 600.0  # two agents' first runs on a loaded machine, bounded
STOP_TIMEOUT_S = 90.0
CHILDREN = {"model", "gateway", "hub", "sidecar"}


class DemoProcess:
    def __init__(self, tmp_path: Path, *extra: str) -> None:
        install_openclaw(os.environ.get("OPENCLAW_VERSION", DEFAULT_VERSION))  # or skip
        self.state_dir = (tmp_path / "demo").absolute()
        self.output = tmp_path / "demo.out"
        argv, self.http = demo_command(
            self.state_dir, CACHE_DIR, "--online-timeout", str(ONLINE_TIMEOUT_S), *extra
        )
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the test's signals only, as from a terminal
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads((self.state_dir / STATE_FILE).read_text()))
        return {}

    def wait_until(self, what: str, check: Any, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the demo exited with {self.proc.returncode}:\n{self.text()}")
            result = check()
            if result:
                return result
            time.sleep(0.5)
        pytest.fail(f"no {what} within {timeout_s:.0f} s:\n{self.text()}")

    def api(self, path: str) -> Any:
        token = (self.state_dir / "hub" / "admin-token").read_text().strip()
        request = urllib.request.Request(
            self.http + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def statuses(self) -> dict[str, str]:
        agents = self.state().get("agents") or {}
        if not agents:
            return {}
        try:
            return {
                role: self.api(f"/api/v1/agents/{agent['id']}")["status"]
                for role, agent in agents.items()
            }
        except OSError:
            return {}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.exit_code()

    def exit_code(self) -> int:
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within {STOP_TIMEOUT_S:.0f} s:\n{self.text()}")

    def left_running(self, pids: dict[str, int]) -> list[str]:
        left = [f"{name} {pid}" for name, pid in pids.items() if _alive(pid)]
        left += [f"marked {pid}" for pid in processes_with_env(RUN_MARKER_ENV, str(self.state_dir))]
        return left

    def kill_all(self) -> None:
        """Cleanup after a failed test: the demo and everything it marked, by PID."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        for pid in processes_with_env(RUN_MARKER_ENV, str(self.state_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_brings_a_lead_and_a_worker_online_and_ctrl_c_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    demo = DemoProcess(tmp_path)
    try:
        demo.wait_until(
            "lead and worker online through the API",
            lambda: demo.statuses() == {"lead": "online", "worker": "online"},
            ONLINE_TIMEOUT_S + 120,
        )
        demo.wait_until("banner", lambda: "Try next:" in demo.text(), 60)
        pids = demo.state()["children"]
        assert set(pids) == CHILDREN
        assert all(_alive(pid) for pid in pids.values())
        gateway = demo.api(f"/api/v1/gateways/{demo.state()['gateway_id']}")
        assert gateway["connected"] is True  # linked over mTLS after a real enrollment
        assert (demo.state_dir / "sidecar").is_dir()

        code = demo.stop()

        assert code == 0, demo.text()
        assert demo.left_running(pids) == []
        assert "nothing it started is running" in demo.text()
    finally:
        demo.kill_all()


def test_a_second_ctrl_c_kills_a_process_that_does_not_stop_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    # A grace far beyond the test's bound: only the second Ctrl-C can end the stop in time.
    demo = DemoProcess(tmp_path, "--stop-grace", "3600")
    try:
        # The sidecar starts after the hub served enrollment, so the hub handles SIGTERM by
        # now: stopped, it leaves SIGTERM pending (one still on the default action dies).
        demo.wait_until(
            "the sidecar started",
            lambda: set(demo.state().get("children") or {}) >= CHILDREN,
            300,
        )
        pids = demo.state()["children"]
        os.kill(pids["hub"], signal.SIGSTOP)

        demo.proc.send_signal(signal.SIGINT)
        demo.wait_until("the first Ctrl-C seen", lambda: "stopping everything" in demo.text(), 30)
        demo.proc.send_signal(signal.SIGINT)
        code = demo.exit_code()

        assert code == 130, demo.text()
        assert "killing what is left" in demo.text()
        assert demo.left_running(pids) == []
    finally:
        demo.kill_all()
