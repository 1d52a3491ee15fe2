"""`make hubs`: three hubs on one PostgreSQL on this machine, to try several hubs on.

It starts a PostgreSQL server on loopback (hub/demo/postgres_server.py; as the
`postgres` user when run as root), then three `mc-hub serve` processes on loopback
ports, each with its own data directory under the state directory but the same
`hub.key`, `ca/` and admin token (the first hub makes them, the others get copies before
they start), so any hub can send what another queued and a sidecar enrolled through one
is trusted by all. It prints the addresses and how to connect a sidecar, and on Ctrl-C
(or SIGTERM) stops every process it started, by PID, hubs first.

The cluster is kept in the state directory (`postgres/`) and used again on the next
start; run as root it lives in a temporary directory instead (the `postgres` user may
not reach the state directory), so its rows go when it stops.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hub.demo.postgres_server import PostgresServer, PostgresUnavailable

DATABASE = "mission_control"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SHARED = ("hub.key", "ca")  # what every hub must hold the same of


class HubsError(RuntimeError):
    """The hubs cannot be started; the message names the cause and the fix."""


@dataclass(frozen=True)
class HubPorts:
    http: int
    link: int
    enroll: int


def ports_from(base: int, count: int) -> list[HubPorts]:
    """Hub i (from 0) on base+i (HTTP), base+100+i (link), base+200+i (enrollment)."""
    return [HubPorts(base + i, base + 100 + i, base + 200 + i) for i in range(count)]


@dataclass
class RunningHub:
    name: str
    data_dir: Path
    ports: HubPorts
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def mc_hub_command() -> list[str]:
    """This environment's `mc-hub` (the console script beside this Python, else the
    module)."""
    script = Path(sys.executable).parent / "mc-hub"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hub.cli"]


@dataclass
class Hubs:
    """PostgreSQL and `len(ports)` hubs on it; `start()`, then `stop()` (always).
    Given a `database_url`, the hubs use that database and no server is started;
    `serve_args` are added to each `mc-hub serve`."""

    state_dir: Path
    ports: list[HubPorts]
    postgres_port: int = 0
    database_url: str = ""
    serve_args: tuple[str, ...] = ()
    hubs: list[RunningHub] = field(default_factory=list)
    postgres: PostgresServer | None = None

    @property
    def admin_token_file(self) -> Path:
        return self.state_dir / "admin-token"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.database_url:
            kept = None if os.geteuid() == 0 else self.state_dir / "postgres"
            self.postgres = PostgresServer(root=kept, port=self.postgres_port).start()
            self.database_url = self.postgres.url(self.postgres.create_database(DATABASE))
        token = self._admin_token()
        for index, ports in enumerate(self.ports):
            name = f"hub-{index + 1}"
            data_dir = self.state_dir / name
            data_dir.mkdir(exist_ok=True, mode=0o700)
            if index:
                self._share(self.hubs[0].data_dir, data_dir)
            hub = self._spawn(name, data_dir, ports, token)
            self.hubs.append(hub)
            self._wait_ready(hub)  # the first makes hub.key and ca/ before the others copy

    def stop(self) -> None:
        """Stop every hub (SIGTERM by PID, SIGKILL after STOP_TIMEOUT_S), then the
        database."""
        for hub in reversed(self.hubs):
            if hub.process.poll() is None:
                hub.process.send_signal(signal.SIGTERM)
        for hub in reversed(self.hubs):
            try:
                hub.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                hub.process.kill()
                hub.process.wait(timeout=STOP_TIMEOUT_S)
        self.hubs.clear()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def _admin_token(self) -> str:
        path = self.admin_token_file
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token

    @staticmethod
    def _share(first: Path, data_dir: Path) -> None:
        for name in SHARED:
            source, target = first / name, data_dir / name
            if target.exists() or not source.exists():  # no ca/ without TLS (--insecure-dev)
                continue
            if source.is_dir():
                shutil.copytree(source, target, copy_function=shutil.copy2)
            else:
                shutil.copy2(source, target)

    def _spawn(self, name: str, data_dir: Path, ports: HubPorts, token: str) -> RunningHub:
        log = self.state_dir / f"{name}.log"
        argv = [
            *mc_hub_command(), "serve",
            "--data-dir", str(data_dir),
            "--http-listen", f"127.0.0.1:{ports.http}",
            "--link-listen", f"127.0.0.1:{ports.link}",
            "--enroll-listen", f"127.0.0.1:{ports.enroll}",
            *self.serve_args,
        ]  # fmt: skip
        # The database URL and the token in the environment, not in the process list.
        env = {**os.environ, "MC_HUB_DATABASE": self.database_url, "MC_ADMIN_TOKEN": token}
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return RunningHub(name, data_dir, ports, process, log)

    @staticmethod
    def _wait_ready(hub: RunningHub) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if hub.process.poll() is not None:
                raise HubsError(
                    f"{hub.name} exited with status {hub.process.returncode} before it was "
                    f"ready (is port {hub.ports.http}, {hub.ports.link} or {hub.ports.enroll} "
                    f"taken? choose others with --base-port); its log {hub.log} ends:\n"
                    + hub.log_tail()
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{hub.http_url}/readyz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            if time.monotonic() > deadline:
                raise HubsError(
                    f"{hub.name} was not ready within {READY_TIMEOUT_S:.0f} s; its log "
                    f"{hub.log} ends:\n" + hub.log_tail()
                )
            time.sleep(0.2)

    def describe(self) -> str:
        first = self.hubs[0]
        links = ",".join(f"127.0.0.1:{h.ports.link}" for h in self.hubs)
        lines = [f"{len(self.hubs)} hubs on one PostgreSQL (state in {self.state_dir}):"]
        for hub in self.hubs:
            lines.append(
                f"  {hub.name}  {hub.http_url}  link 127.0.0.1:{hub.ports.link}  "
                f"enroll 127.0.0.1:{hub.ports.enroll}  (pid {hub.process.pid}, log {hub.log})"
            )
        lines += [
            f"  database  {self.database_url}",
            "",
            f'TOKEN=$(cat {self.admin_token_file}); H="Authorization: Bearer $TOKEN"',
            "# a gateway, through any hub (the answer carries its join token):",
            f'curl -s -H "$H" -d \'{{"name": "host-1", "workspace_root": "/srv/openclaw"}}\' '
            f"{first.http_url}/api/v1/gateways",
            "# its sidecar: enroll through any hub, then run with every hub's link (it",
            "# stays with the first that answers and moves to the next when that one fails)",
            f"mc-sidecar enroll --hub 127.0.0.1:{first.ports.enroll} --token 'JOIN'",
            f"mc-sidecar run --hub {links} --openclaw-config ~/.openclaw/openclaw.json",
            "",
            "Ctrl-C stops them all.",
        ]
        return "\n".join(lines)


def run(state_dir: Path, base_port: int, count: int, postgres_port: int) -> int:
    """Start, print, wait for Ctrl-C or SIGTERM (or a hub exiting), stop."""
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    hubs = Hubs(state_dir, ports_from(base_port, count), postgres_port=postgres_port)
    try:
        hubs.start()
        print(hubs.describe(), flush=True)
        while not stopping.wait(1.0):
            gone = next((h for h in hubs.hubs if h.process.poll() is not None), None)
            if gone is not None:
                print(f"{gone.name} exited; its log {gone.log} ends:\n{gone.log_tail()}")
                return 1
        return 0
    except (HubsError, PostgresUnavailable) as exc:
        print(f"make hubs: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the hubs and PostgreSQL", flush=True)
        hubs.stop()
