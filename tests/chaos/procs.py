"""The hub and the sidecar as the operator runs them: `mc-hub serve`, `mc-sidecar run`.

Each is a real OS process started with its real flags, logging JSON lines to a file of
its own (appended across restarts), and signalled by its PID: SIGKILL for a crash,
SIGSTOP/SIGCONT for a partition, SIGTERM (then SIGKILL) to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def program(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter, else its module."""
    beside = Path(sys.executable).parent / name
    return [str(beside)] if beside.exists() else [sys.executable, "-m", module]


@dataclass
class Program:
    """One program, restartable: `start()` spawns it again with the same flags."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped (a partition), not yet continued
    starts: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running (pid {self.pid})"
        with self.log_path.open("ab") as log:
            log.write(f'{{"event": "chaos.process.start", "start": {self.starts}}}\n'.encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a Ctrl-C of the harness reaches only the harness
            )
        self.starts += 1
        self.pids.append(self.process.pid)
        self.stopped = False

    def kill(self) -> None:
        """kill -9 by PID: no cleanup runs, as in a crash or an OOM kill."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self.stopped = False

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def stop(self) -> int | None:
        """SIGTERM (after SIGCONT if paused), SIGKILL if it lingers; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self.stopped:
                    os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self.stopped = False
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class HubPorts:
    http: int
    link: int
    enroll: int

    @classmethod
    def pick(cls) -> HubPorts:
        return cls(free_port(), free_port(), free_port())


def hub_program(
    data_dir: Path, ports: HubPorts, admin_token: str, *, checkin_deadline_s: float
) -> Program:
    argv = [
        *program("mc-hub", "hub.cli"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--http-listen",
        f"127.0.0.1:{ports.http}",
        "--link-listen",
        f"127.0.0.1:{ports.link}",
        "--enroll-listen",
        f"127.0.0.1:{ports.enroll}",
        "--checkin-deadline",
        str(checkin_deadline_s),
        "--shutdown-grace",
        "1",
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_")}
    env["MC_ADMIN_TOKEN"] = admin_token
    return Program("hub", argv, data_dir.parent / "hub.log", env)


def sidecar_program(
    state_dir: Path, openclaw_config: Path, workspace_root: Path, agent_api_port: int
) -> Program:
    argv = [
        *program("mc-sidecar", "sidecar.cli"),
        "run",
        "--state-dir",
        str(state_dir),
        "--openclaw-config",
        str(openclaw_config),
        "--workspace-root",
        str(workspace_root),
        "--agent-api-listen",
        f"127.0.0.1:{agent_api_port}",
        "--metrics-listen",
        "off",
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_")}
    return Program("sidecar", argv, state_dir.parent / "sidecar.log", env)


def enroll_sidecar(enroll_port: int, join_token: str, state_dir: Path) -> None:
    """`mc-sidecar enroll`, as the README has the operator run it."""
    done = subprocess.run(
        [
            *program("mc-sidecar", "sidecar.cli"),
            "enroll",
            "--hub",
            f"127.0.0.1:{enroll_port}",
            "--token",
            join_token,
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mc-sidecar enroll failed ({done.returncode}): {done.stderr}")


def fleet_join_token(data_dir: Path, uses: int) -> str:
    """`mc-hub gateway join-token --uses N`: one token that enrolls N new gateways."""
    done = subprocess.run(
        [
            *program("mc-hub", "hub.cli"),
            "gateway",
            "join-token",
            "--uses",
            str(uses),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("MC_")},
    )
    if done.returncode != 0:
        raise RuntimeError(f"mc-hub gateway join-token failed ({done.returncode}): {done.stderr}")
    return done.stdout.split()[0]


def http_ready(port: int, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_hub_ready(hub: Program, ports: HubPorts, timeout_s: float = 90.0) -> float:
    """Seconds until the hub answers /readyz; fails with its log if it exits or never does."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not hub.running:
            raise RuntimeError(f"mc-hub exited during start:\n{hub.log_tail()}")
        if http_ready(ports.http):
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"mc-hub not ready within {timeout_s:.0f} s:\n{hub.log_tail()}")
