"""`mc-hub demo`: the whole system on one machine, on loopback, until Ctrl-C.

It starts, each as a child process in its own process group: the scripted model
(hub/demo/scripted_model.py, the gateway's only model provider), a real OpenClaw gateway
installed from npm into a cache (hub/demo/openclaw_install.py), the hub, and a sidecar
enrolled over mutual TLS with a join token (the real enrollment). It then creates a
board with a lead and a worker through the REST API, waits until both are online, and
prints where to look and what to try.

Everything it makes lives in its state directory (default var/demo/), which is cleared
at the next start; `demo.json` there names every process it runs, by PID. Ctrl-C (or
SIGTERM) stops them by PID: SIGTERM to each process group, SIGKILL after a grace, then
any process still carrying this run's marker in its environment. A second Ctrl-C skips
the grace. SIGUSR1 stops the scripted model, or starts it again, so agents can be
watched going offline and coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from hub.config import ADMIN_TOKEN_ENV, load_admin_token
from hub.demo import openclaw_install
from hub.demo.scripted_model import provider_config
from missioncontrol.netaddr import HostPort
from missioncontrol.private_files import write_file_atomic

RUN_MARKER_ENV = "MC_DEMO_RUN"  # every child carries it: strays are found by it
STATE_MARKER = ".mc-demo"  # a state directory the demo may clear
STATE_FILE = "demo.json"
HEARTBEAT_EVERY = "1m"
OFFLINE_AFTER = "2 min"  # the hub's rule: 2 missed heartbeat intervals
STOP_GRACE_S = 10.0
POLL_S = 0.5
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)  # a hung part must not stall a bounded wait
_CHILD_ENV_PREFIXES = ("OPENCLAW_", "MC_HUB_", "MC_SIDECAR_")
LOOPBACK = "127.0.0.1"


class DemoError(RuntimeError):
    """The demo cannot start or went wrong; the message names the cause and the fix."""


@dataclass(frozen=True)
class DemoConfig:
    state_dir: Path
    cache_dir: Path
    openclaw_version: str = openclaw_install.DEFAULT_VERSION
    http_listen: HostPort = field(default_factory=lambda: HostPort(LOOPBACK, 8000))
    link_listen: HostPort = field(default_factory=lambda: HostPort(LOOPBACK, 7443))
    enroll_listen: HostPort = field(default_factory=lambda: HostPort(LOOPBACK, 7444))
    online_timeout_s: float = 300.0  # the gateway's first runs take seconds each
    stop_grace_s: float = STOP_GRACE_S  # SIGTERM to SIGKILL, per process group

    def validate(self) -> None:
        for flag, address in (
            ("--http-listen", self.http_listen),
            ("--link-listen", self.link_listen),
            ("--enroll-listen", self.enroll_listen),
        ):
            if not address.is_loopback:
                raise DemoError(f"{flag} {address}: the demo listens on loopback only")
            if address.port == 0:
                raise DemoError(
                    f"{flag} {address}: give a port; the commands the demo prints name it"
                )
        if len({self.http_listen, self.link_listen, self.enroll_listen}) < 3:
            raise DemoError("--http-listen, --link-listen and --enroll-listen must differ")


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


@dataclass
class Layout:
    """Where each part's files are, under the state directory."""

    root: Path

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    @property
    def admin_token(self) -> Path:
        return self.hub_dir / "admin-token"

    @property
    def sidecar_dir(self) -> Path:
        return self.root / "sidecar"

    @property
    def openclaw_home(self) -> Path:
        return self.root / "openclaw"

    @property
    def openclaw_config(self) -> Path:
        return self.openclaw_home / ".openclaw" / "openclaw.json"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE


@dataclass
class Demo:
    config: DemoConfig
    out: TextIO = field(default=sys.stdout)
    children: dict[str, Child] = field(default_factory=dict)
    layout: Layout = field(init=False)
    info: dict[str, Any] = field(default_factory=dict)
    _model_port: int = 0
    _unexpected: asyncio.Queue[Child] = field(default_factory=asyncio.Queue)
    _watchers: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.layout = Layout(self.config.state_dir.absolute())

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Everything up to both agents online; raises DemoError naming what failed."""
        config = self.config
        config.validate()
        if shutil.which("curl") is None:
            raise DemoError(
                "curl is not on PATH: agents check in by running curl through the gateway. "
                "Install it (Debian/Ubuntu: sudo apt-get install -y curl; macOS: it ships "
                "with the system)"
            )
        for flag, address in (
            ("--http-listen", config.http_listen),
            ("--link-listen", config.link_listen),
            ("--enroll-listen", config.enroll_listen),
        ):
            _check_free(flag, address)
        launcher = await self._install()
        self._prepare_state_dir()
        layout = self.layout
        self._model_port = _free_port()
        await self.start_model()
        gateway_port = _free_port()
        gateway_token = secrets.token_urlsafe(32)
        self._write_openclaw_config(gateway_port, gateway_token)
        gateway = await self._spawn(
            "gateway",
            [str(launcher), "gateway", "run", "--bind", "loopback", "--port", str(gateway_port)],
            env=self._gateway_env(),
            cwd=layout.openclaw_home,
        )
        self.say(f"  OpenClaw gateway {config.openclaw_version} starting (pid {gateway.pid})")
        # The token file exists before the hub starts, so its banner names the file and
        # never prints the secret into a log.
        token, _ = load_admin_token(layout.hub_dir, {})
        http = self.info["http"] = f"http://{config.http_listen}"
        hub = await self._spawn(
            "hub",
            [
                sys.executable,
                "-m",
                "hub.cli",
                "serve",
                "--data-dir",
                str(layout.hub_dir),
                "--http-listen",
                str(config.http_listen),
                "--link-listen",
                str(config.link_listen),
                "--enroll-listen",
                str(config.enroll_listen),
            ],
        )
        self.say(f"  hub starting (pid {hub.pid})")
        async with aiohttp.ClientSession(
            base_url=http, headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT
        ) as session:
            await self._wait("the hub to be ready", lambda: _status_is(session, "/readyz", 200))
            await self._wait(
                "the OpenClaw gateway to be ready",
                lambda: _gateway_ready(gateway_port),
                timeout_s=120,
            )
            await self._enroll_and_run_sidecar(session)
            await self._create_board(session)
            await self._wait_online(session)

    async def _install(self) -> Path:
        config = self.config
        cached = openclaw_install.cached_launcher(config.openclaw_version, config.cache_dir)
        if cached is not None:
            return cached
        try:
            argv, env = openclaw_install.install_command(config.openclaw_version, config.cache_dir)
        except openclaw_install.MissingTool as exc:
            raise DemoError(str(exc)) from None
        self.say(
            f"  installing OpenClaw {config.openclaw_version} from npm into {config.cache_dir} "
            "(once; later starts reuse it)"
        )
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # stopped as a group, with npm, if the demo is stopped
        )
        try:
            stdout, _ = await asyncio.wait_for(
                proc.communicate(), openclaw_install.INSTALL_TIMEOUT_S
            )
        except BaseException:
            await _stop_group(proc, asyncio.Event(), config.stop_grace_s)
            raise
        if proc.returncode != 0:
            raise DemoError(
                f"installing OpenClaw {config.openclaw_version} failed (exit {proc.returncode}; "
                "its output is above). Check that the npm registry is reachable, or point "
                f"{openclaw_install.CACHE_ENV} at a cache that has this version"
            )
        return openclaw_install.launcher_from(stdout.decode())

    def _prepare_state_dir(self) -> None:
        root = self.layout.root
        if root.exists() and any(root.iterdir()):
            if not (root / STATE_MARKER).exists():
                raise DemoError(
                    f"{root} is not empty and is not a demo state directory (no {STATE_MARKER}); "
                    "the demo clears its state directory at each start: pick an empty or new "
                    "one with --state-dir"
                )
            shutil.rmtree(root)
        for directory in (
            root,
            self.layout.openclaw_config.parent,
            self.layout.openclaw_home / "tmp",
            self.layout.workspaces,
            self.layout.logs,
        ):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / STATE_MARKER).write_text("state of `mc-hub demo`; cleared at its next start\n")

    def _write_openclaw_config(self, port: int, token: str) -> None:
        document = {
            **openclaw_install.local_config(port, token),
            **provider_config(self._model_port),
        }
        write_file_atomic(
            self.layout.openclaw_config, (json.dumps(document, indent=2) + "\n").encode()
        )

    def _gateway_env(self) -> dict[str, str]:
        home = self.layout.openclaw_home
        return openclaw_install.private_env(home, self.layout.openclaw_config.parent, home / "tmp")

    async def _enroll_and_run_sidecar(self, session: aiohttp.ClientSession) -> None:
        layout = self.layout
        created = await _api(
            session,
            "POST",
            "/api/v1/gateways",
            {"name": "demo-gateway", "workspace_root": str(layout.workspaces)},
            201,
        )
        self.info["gateway_id"] = created["id"]
        self.say(f"  gateway {created['id']} created; enrolling the sidecar with its join token")
        enroll = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar.cli",
            "enroll",
            "--hub",
            str(self.config.enroll_listen),
            "--token",
            created["join_token"],
            "--state-dir",
            str(layout.sidecar_dir),
            env=self._child_env({}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(enroll.communicate(), 60)
        except BaseException:
            await _stop_group(enroll, asyncio.Event(), self.config.stop_grace_s)
            raise
        if enroll.returncode != 0:
            raise DemoError(f"mc-sidecar enroll failed:\n{output.decode(errors='replace')}")
        self.info["agent_api"] = f"127.0.0.1:{_free_port()}"
        sidecar = await self._spawn(
            "sidecar",
            [
                sys.executable,
                "-m",
                "sidecar.cli",
                "run",
                "--state-dir",
                str(layout.sidecar_dir),
                "--openclaw-config",
                str(layout.openclaw_config),
                "--workspace-root",
                str(layout.workspaces),
                "--agent-api-listen",
                self.info["agent_api"],
                "--metrics-listen",
                "off",
            ],
        )
        self.say(f"  sidecar enrolled over mutual TLS, starting (pid {sidecar.pid})")
        gateway_path = f"/api/v1/gateways/{created['id']}"

        async def linked() -> bool:
            gateway = await _api(session, "GET", gateway_path)
            return bool(gateway.get("connected") and gateway.get("openclaw_version"))

        await self._wait("the sidecar to link the gateway to the hub", linked, timeout_s=120)

    async def _create_board(self, session: aiohttp.ClientSession) -> None:
        board = await _api(
            session,
            "POST",
            "/api/v1/boards",
            {"name": "Demo board", "gateway_id": self.info["gateway_id"]},
            201,
        )
        self.info["board_id"] = board["id"]
        agents = {}
        for role, body in (
            ("lead", {"name": "Lead", "is_board_lead": True}),
            ("worker", {"name": "Worker"}),
        ):
            agent = await _api(
                session,
                "POST",
                "/api/v1/agents",
                {**body, "board_id": board["id"], "heartbeat_config": {"every": HEARTBEAT_EVERY}},
                201,
            )
            agents[role] = {
                "id": agent["id"],
                "name": agent["name"],
                "gateway_agent_id": agent["gateway_agent_id"],
            }
        self.info["agents"] = agents
        self._save_state()
        self.say(
            f'  board "Demo board" with a lead and a worker created; waiting for both to '
            f"come online (a real run each, through the gateway, up to "
            f"{self.config.online_timeout_s:.0f} s)"
        )

    async def _wait_online(self, session: aiohttp.ClientSession) -> None:
        seen: dict[str, str] = {}

        async def both_online() -> bool:
            for role, agent in self.info["agents"].items():
                state = await _api(session, "GET", f"/api/v1/agents/{agent['id']}")
                status = state["status"]
                if seen.get(role) != status:
                    seen[role] = status
                    reason = f" ({state['status_reason']})" if state.get("status_reason") else ""
                    self.say(f"    {role} {agent['name']}: {status}{reason}")
            return all(status == "online" for status in seen.values())

        await self._wait(
            "both agents to come online", both_online, timeout_s=self.config.online_timeout_s
        )

    # ------------------------------------------------------------------ children

    def _child_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_CHILD_ENV_PREFIXES) and k != ADMIN_TOKEN_ENV
        }
        env.update(extra)
        env[RUN_MARKER_ENV] = str(self.layout.root)
        return env

    async def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log_path = self.layout.logs / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=self._child_env(env or {}),
                cwd=cwd or self.layout.root,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group: Ctrl-C reaches only the demo, which stops each
                # group in order, and helpers a child starts go with it.
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children[name] = child
        watcher = asyncio.create_task(self._watch(child), name=f"demo.watch.{name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        self._save_state()
        return child

    async def _watch(self, child: Child) -> None:
        await child.proc.wait()
        if not child.expected_exit:
            await self._unexpected.put(child)

    async def next_unexpected_exit(self) -> Child:
        return await self._unexpected.get()

    async def _wait(
        self, what: str, check: Callable[[], Awaitable[bool]], *, timeout_s: float = 60.0
    ) -> None:
        """Poll `check` until true, bounded; a child that exits meanwhile ends the wait."""
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            for child in self.children.values():
                if child.proc.returncode is not None and not child.expected_exit:
                    raise DemoError(
                        f"the {child.name} exited with {child.proc.returncode} while waiting "
                        f"for {what}; the end of {child.log_path}:\n{child.log_tail()}"
                    )
            try:
                if await check():
                    return
            except (aiohttp.ClientError, OSError, TimeoutError, DemoError) as exc:
                last_error = f" (last error: {exc})"
            await asyncio.sleep(POLL_S)
        raise DemoError(
            f"gave up waiting for {what} after {timeout_s:.0f} s{last_error}; the logs are in "
            f"{self.layout.logs}"
        )

    async def start_model(self) -> None:
        child = await self._spawn(
            "model",
            [sys.executable, "-m", "hub.demo", "model", "--port", str(self._model_port)],
        )
        await self._wait(
            "the scripted model to listen",
            lambda: _status_is_url(f"http://127.0.0.1:{self._model_port}/v1/models", 200),
        )
        self.say(f"  scripted model listening on 127.0.0.1:{self._model_port} (pid {child.pid})")

    async def toggle_model(self) -> None:
        """Stop the scripted model if it runs, else start it again (SIGUSR1)."""
        model = self.children.get("model")
        if model is not None and model.proc.returncode is None:
            model.expected_exit = True
            await _stop_group(model.proc, asyncio.Event(), self.config.stop_grace_s)
            del self.children["model"]
            self._save_state()
            self.say(
                "scripted model stopped: agent runs now fail, so heartbeats stop and both agents "
                f"turn offline within about {OFFLINE_AFTER} (watch the dashboard). "
                f"Start it again with: kill -USR1 {os.getpid()}"
            )
            return
        await self.start_model()
        self.say(
            "scripted model started again: the agents come back online at their next heartbeat"
        )

    async def stop(self, hurry: asyncio.Event) -> None:
        """Stop every child by PID (the sidecar first, then the rest), then any stray."""
        for child in self.children.values():
            child.expected_exit = True
        # The sidecar first, so it closes its link to a hub that is still there.
        first = [c for n, c in self.children.items() if n == "sidecar"]
        rest = [c for n, c in self.children.items() if n != "sidecar"]
        for batch in (first, rest):
            grace = self.config.stop_grace_s
            await asyncio.gather(*(_stop_group(c.proc, hurry, grace) for c in batch))
        for pid in strays(self.layout.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for watcher in list(self._watchers):
            watcher.cancel()

    def _save_state(self) -> None:
        """demo.json: the demo's PID, every child's, and what was created."""
        document = {
            "pid": os.getpid(),
            "children": {name: child.pid for name, child in self.children.items()},
            **self.info,
        }
        if self.layout.root.exists():
            write_file_atomic(
                self.layout.state_file, (json.dumps(document, indent=2) + "\n").encode()
            )

    # ------------------------------------------------------------------ banner

    def banner(self) -> str:
        layout = self.layout
        http = self.info["http"]
        token = shown(layout.admin_token)
        bearer = f'-H "Authorization: Bearer $(cat {shlex.quote(token)})"'
        lead = self.info["agents"]["lead"]
        worker = self.info["agents"]["worker"]
        processes = ", ".join(f"{name} {child.pid}" for name, child in self.children.items())
        lines = [
            "",
            "Mission Control demo is running (everything on loopback; Ctrl-C stops it all)",
            f"  dashboard:   {http}/   (log in with the admin token)",
            f"  admin token: {token}",
            f'  board:       "Demo board": lead "{lead["name"]}" and worker "{worker["name"]}", '
            f"both online, heartbeating every {HEARTBEAT_EVERY}",
            f"  processes:   {processes}; demo {os.getpid()}",
            f"  logs:        {shown(layout.logs)}/",
            "",
            "Try next:",
            "  * the API:",
            f"      curl {bearer} {http}/api/v1/agents",
            "  * an agent goes offline: stop the scripted model, and runs fail, heartbeats stop;",
            f"    within about {OFFLINE_AFTER} both agents are offline, and the same command "
            "brings them back:",
            f"      kill -USR1 {os.getpid()}",
        ]
        python = shown(Path(sys.executable))
        workspace = layout.workspaces / f"workspace-{worker['gateway_agent_id']}"
        token_file = workspace / ".mc-agent-token"
        if self.config.openclaw_version.startswith("2026.3."):
            remove = "      (delete the worker's entry from agents.list in an editor)"
        else:
            remove = (
                f"      {python} -c 'import json, sys; p, a = sys.argv[1:]; "
                'd = json.load(open(p)); del d["agents"]["entries"][a]; '
                'json.dump(d, open(p, "w"), indent=2)\' '
                f"{shlex.quote(shown(layout.openclaw_config))} {worker['gateway_agent_id']}"
            )
        lines += [
            "  * hand-edit openclaw.json and watch it heal: remove the worker's entry; the "
            "sidecar writes it back",
            remove,
            f"      grep config.restored {shlex.quote(shown(layout.logs / 'sidecar.log'))}",
            "  * rotate the worker's token (the old one keeps working for grace_s seconds):",
            f"      curl -X POST {bearer} -d '{{\"grace_s\": 60}}' "
            f"{http}/api/v1/agents/{worker['id']}/token/rotate",
            f"      cat {shlex.quote(shown(token_file))}",
            "",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------- helpers


def shown(path: Path) -> str:
    """`path` relative to the working directory when inside it (what a user types)."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def strays(root: Path) -> list[int]:
    """PIDs of processes still carrying the marker of the run kept in `root`."""
    return processes_with_env(RUN_MARKER_ENV, str(root))


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs of other processes whose environment has `name=value` (Linux /proc; elsewhere
    none are found, and stopping relies on the process groups alone)."""
    marker = f"{name}={value}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError):
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return [pid for pid in found if pid != os.getpid()]


async def _stop_group(
    proc: asyncio.subprocess.Process, hurry: asyncio.Event, grace_s: float
) -> None:
    """SIGTERM the process group led by `proc`, SIGKILL it after `grace_s` (or at once
    when `hurry` is set), and reap `proc`."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        hurried = asyncio.create_task(hurry.wait())
        exited = asyncio.create_task(proc.wait())
        await asyncio.wait({hurried, exited}, timeout=grace_s, return_when="FIRST_COMPLETED")
        hurried.cancel()
        exited.cancel()
    # Helpers the leader started may outlive it; the group goes either way.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)  # SIGKILL is not refused


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_free(flag: str, address: HostPort) -> None:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address.host, address.port))
        except OSError:
            raise DemoError(
                f"{address} is in use (a hub from `make run`, or another demo?): stop it, or "
                f"give the demo another address, e.g. {flag} {address.host}:{address.port + 100}"
            ) from None


async def _api(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    expect: int = 200,
) -> dict[str, Any]:
    async with session.request(method, path, json=body) as response:
        text = await response.text()
        if response.status != expect:
            raise DemoError(f"{method} {path} answered {response.status}: {text[:500]}")
        result: dict[str, Any] = json.loads(text)
        return result


async def _status_is(session: aiohttp.ClientSession, path: str, status: int) -> bool:
    async with session.get(path) as response:
        return response.status == status


async def _status_is_url(url: str, status: int) -> bool:
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
        session.get(url) as response,
    ):
        return response.status == status


async def _gateway_ready(port: int) -> bool:
    """The gateway's /readyz answers 200 (older gateways have only /healthz)."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        for path in ("/readyz", "/healthz"):
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                if response.status == 200:
                    return True
                if response.status != 404:
                    return False
    return False


# ---------------------------------------------------------------------- main


async def run(config: DemoConfig, out: TextIO = sys.stdout) -> int:
    """Start the demo, print the banner, run until SIGINT/SIGTERM; stop everything."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hurry = asyncio.Event()
    toggles: set[asyncio.Task[None]] = set()
    demo = Demo(config, out)

    def on_stop_signal() -> None:
        if not stop.is_set():
            stop.set()
            demo.say("\nstopping everything the demo started (Ctrl-C again to kill at once) ...")
        else:
            hurry.set()
            demo.say("killing what is left ...")

    def on_toggle() -> None:
        if stop.is_set() or toggles:
            return
        task = asyncio.create_task(demo.toggle_model(), name="demo.toggle_model")
        toggles.add(task)
        task.add_done_callback(toggles.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGUSR1, on_toggle)
    stopped = asyncio.create_task(stop.wait())
    code = 0
    try:
        demo.say(f"Mission Control demo: state in {shown(demo.layout.root)}/")
        starting = asyncio.create_task(demo.start(), name="demo.start")
        await asyncio.wait({starting, stopped}, return_when="FIRST_COMPLETED")
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, DemoError):
                await starting
            return 130
        starting.result()  # raises the DemoError that ended the start
        demo.say(demo.banner())
        crashed = asyncio.create_task(demo.next_unexpected_exit())
        await asyncio.wait({crashed, stopped}, return_when="FIRST_COMPLETED")
        if crashed.done():
            child = crashed.result()
            demo.say(
                f"the {child.name} (pid {child.pid}) exited with {child.proc.returncode}; "
                f"stopping the demo. The end of {shown(child.log_path)}:\n{child.log_tail()}"
            )
            code = 1
        crashed.cancel()
    except DemoError as exc:
        demo.say(f"mc-hub demo: {exc}")
        code = 1
    finally:
        stopped.cancel()
        for task in list(toggles):
            task.cancel()
        await demo.stop(hurry)
        left = strays(demo.layout.root)
        demo.say(
            "demo stopped; nothing it started is running"
            if not left
            else f"demo stopped, but processes {left} would not die"
        )
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
    return code
