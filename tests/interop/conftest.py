"""One real OpenClaw gateway per test session and generation, on loopback, in a private
home directory.

The gateways come from npm through the product's installer
(hub/demo/openclaw_install.py, cached under $OPENCLAW_CACHE_DIR, default .cache/openclaw/
in the checkout).
Every interop test runs against each version in `OPENCLAW_VERSIONS` (default: the
current generation and the 2026.3 one, so a claim about either is a result of every
run); `OPENCLAW_VERSION` runs one only. pytest groups the tests by version, so each
gateway boots once (a fresh HOME, state dir, TMPDIR, free port and token) and is
stopped by PID when its tests are done (its whole process group, so the spawn broker
goes too). Tests share it, so each test owns its own agents (fresh ids) and undoes the
hand edits it makes to openclaw.json.

The gateway's only model provider is the scripted model (hub/demo/scripted_model.py)
on a port reserved with the gateway, which the gateway then takes as every agent's
model. A test that runs agents serves the model there with the behaviour it needs
(answer, run the check-in curl, reject the credentials, answer slowly); a test that
serves nothing gets a model endpoint that refuses connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hub.demo import openclaw_install
from hub.demo.runner import processes_with_env
from hub.demo.scripted_model import ScriptedModel, provider_config
from sidecar.openclaw_config import write_atomic
from tests.support import JumpClock, add_summary

if TYPE_CHECKING:
    from hub.app import Hub
    from sidecar.app import Sidecar
    from sidecar.usage import UsagePolicy

log = logging.getLogger("interop")

DEFAULT_VERSION = openclaw_install.DEFAULT_VERSION
DEFAULT_VERSIONS = (DEFAULT_VERSION, "2026.3.8")  # the current generation, and 2026.3
CACHE_DIR = openclaw_install.cache_dir(
    os.environ, Path(__file__).resolve().parents[2] / ".cache" / "openclaw"
)
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10


def record_timing(name: str, seconds: float) -> None:
    """Keep a measured duration for the end-of-run summary (and log it now)."""
    add_summary("OpenClaw interop timings", f"{name:<48} {seconds * 1000:9.1f} ms")
    log.info("timing %s: %.3f s", name, seconds)


@dataclass
class RunningGateway:
    """A booted gateway and where its files are."""

    version: str
    port: int
    token: str
    home: Path
    state_dir: Path
    config_path: Path
    workspace_root: Path
    log_path: Path
    pid: int
    boot_s: float
    launcher: Path
    model_port: int  # where the scripted model is expected (tests serve it)
    env: dict[str, str] = field(repr=False)

    @property
    def generation_is_legacy(self) -> bool:
        return self.version.startswith("2026.3.")

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text(encoding="utf-8"))

    def write_config(self, document: dict[str, Any]) -> None:
        """A hand edit the way editors and the gateway do it: temp file, then rename."""
        self.write_text(json.dumps(document, indent=2) + "\n")

    def write_text(self, text: str) -> None:
        write_atomic(self.config_path, text)

    def edit_config(self, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        document = self.read_config()
        mutate(document)
        self.write_config(document)
        return document

    def roster(self) -> dict[str, dict[str, Any]]:
        """Entries by id, whichever shape this generation writes."""
        agents = self.read_config().get("agents") or {}
        if "entries" in agents:
            return dict(agents["entries"])
        return {e["id"]: e for e in agents.get("list") or []}

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def install_openclaw(version: str) -> Path:
    """The launcher of `version`, installed into CACHE_DIR first if need be."""
    try:
        argv, env = openclaw_install.install_command(version, CACHE_DIR)
    except openclaw_install.MissingTool as exc:
        pytest.skip(f"cannot install OpenClaw for interop tests: {exc}")
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=openclaw_install.INSTALL_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"installing openclaw@{version} failed:\n{proc.stderr[-4000:]}")
    launcher = openclaw_install.launcher_from(proc.stdout)
    record_timing(f"install openclaw@{version} (cached or fresh)", time.monotonic() - started)
    return launcher


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    path = "/readyz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            pytest.fail(f"gateway exited with {proc.returncode} during boot:\n{tail}")
        status = _probe(port, path)
        if status == 200:
            return
        if status == 404 and path == "/readyz":
            path = "/healthz"  # older gateways have only the liveness probe
            continue
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-4000:]
    pytest.fail(f"gateway not ready on port {port} within {READY_TIMEOUT_S} s:\n{tail}")


def _stop(proc: subprocess.Popen[bytes], state_dir: Path) -> None:
    """SIGTERM the gateway's process group, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("gateway %d ignored SIGTERM for %d s; killing", proc.pid, STOP_TIMEOUT_S)
    # The spawn broker may outlive the main process; the group goes either way.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    # A gateway that re-executed itself detached is not in the group: find it by the
    # state dir only this fixture uses.
    for pid in processes_with_env("OPENCLAW_STATE_DIR", str(state_dir)):
        log.warning("gateway process %d outlived its group; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in: nested objects merge, anything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        current = out.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = _merged(current, value)
        else:
            out[key] = value
    return out


def versions() -> list[str]:
    """The OpenClaw versions the interop tests run against."""
    single = os.environ.get("OPENCLAW_VERSION", "").strip()
    if single:
        return [single]
    listed = os.environ.get("OPENCLAW_VERSIONS", "")
    return [v.strip() for v in listed.split(",") if v.strip()] or list(DEFAULT_VERSIONS)


@contextlib.contextmanager
def _booted(
    tmp_path_factory: pytest.TempPathFactory,
    version: str,
    model_port: int,
) -> Iterator[RunningGateway]:
    """Install, configure (base config plus the scripted provider), boot; stop by PID."""
    launcher = install_openclaw(version)
    root = tmp_path_factory.mktemp("openclaw")
    home = root / "home"
    state_dir = home / ".openclaw"
    tmpdir = root / "tmp"
    workspace_root = root / "workspaces"
    for directory in (state_dir, tmpdir, workspace_root):
        directory.mkdir(parents=True, mode=0o700)
    config_path = state_dir / "openclaw.json"
    port = _free_port()
    token = secrets.token_urlsafe(32)
    config = _merged(openclaw_install.local_config(port, token), provider_config(model_port))
    write_atomic(config_path, json.dumps(config, indent=2) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    env.update(openclaw_install.private_env(home, state_dir, tmpdir))
    log_path = root / "gateway.log"
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(launcher), "gateway", "run", "--bind", "loopback", "--port", str(port)],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stopped as one
        )
    try:
        _wait_ready(proc, port, log_path)
        boot_s = time.monotonic() - started
        record_timing(f"gateway {version} boot to ready", boot_s)
        yield RunningGateway(
            version=openclaw_install.installed_version(launcher),
            port=port,
            token=token,
            home=home,
            state_dir=state_dir,
            config_path=config_path,
            workspace_root=workspace_root,
            log_path=log_path,
            pid=proc.pid,
            boot_s=boot_s,
            launcher=launcher,
            model_port=model_port,
            env=env,
        )
    finally:
        _stop(proc, state_dir)


@pytest.fixture(scope="session", params=versions())
def openclaw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The session's gateway of one version (the test id names it)."""
    with _booted(tmp_path_factory, request.param, _free_port()) as running:
        yield running


@pytest.fixture
def own_gateway(
    openclaw: RunningGateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """A gateway of the session's version for this test alone: for a test whose hand
    edits the shared one can miss after many edits of its own and of other tests."""
    with _booted(tmp_path_factory, openclaw.version, _free_port()) as running:
        yield running


@pytest.fixture
def gateway(openclaw: RunningGateway) -> RunningGateway:
    """The gateway this test runs against (shared by the session: own your agents)."""
    return openclaw


@pytest.fixture
def scripted_model_port(openclaw: RunningGateway) -> int:
    """The loopback port the gateway expects the scripted model on."""
    return openclaw.model_port


@pytest.fixture
async def model(scripted_model_port: int) -> AsyncIterator[ScriptedModel]:
    """The scripted model served for this test (it answers with text unless told)."""
    async with ScriptedModel(scripted_model_port) as server:
        yield server


@dataclass
class Stack:
    """A hub and an in-process sidecar with the real gateway client, on `gateway`."""

    hub: Hub
    sidecar: Sidecar
    model: ScriptedModel | None  # None: nothing serves the model (connections refused)
    gateway: RunningGateway
    clock: JumpClock
    gateway_id: str


@contextlib.asynccontextmanager
async def linked_stack(
    gateway: RunningGateway,
    model: ScriptedModel | None,
    tmp_path: Path,
    gateway_id: str,
    *,
    checkin_deadline_s: float = 30.0,
    usage_policy: UsagePolicy | None = None,
) -> AsyncIterator[Stack]:
    """Hub (its clock a JumpClock) -> sidecar (real gateway client, local agent API) ->
    the real gateway; both linked and the gateway reachable before the block runs.

    The hub's clock starts two check-in windows and a second behind the real one: its
    restart and reconnect grace are over when the block begins, and a time the sidecar
    reports (its own clock, ahead) is clamped to the hub's now, so reports are ordered as
    they arrive. A test moves deadlines with `stack.clock.advance`."""
    from hub.app import Hub
    from sidecar.app import Sidecar
    from sidecar.gateway.openclaw import OpenClawGatewayClient
    from tests.support import fast_backoff, hub_config, sidecar_config, wait_for

    grace_s = 2 * checkin_deadline_s + 1  # the hub's restart and reconnect grace, and a bit
    clock = JumpClock()
    clock.advance(-2 * grace_s)  # behind the sidecar's clock by the grace once it is over
    hub = Hub(
        dataclasses.replace(hub_config(tmp_path / "hub"), checkin_deadline_s=checkin_deadline_s),
        clock=clock,
    )
    await hub.start()
    assert hub.addresses is not None
    config = dataclasses.replace(
        sidecar_config(
            tmp_path / "sc",
            hub.addresses.link,
            gateway_id=gateway_id,
            workspace_root=gateway.workspace_root,
        ),
        openclaw_config=gateway.config_path,
    )
    sidecar = Sidecar(config, link_backoff=fast_backoff(), usage_policy=usage_policy)
    assert isinstance(sidecar.gateway, OpenClawGatewayClient)  # the real client, not a fake

    async def linked() -> bool:
        # Linked, and the hub knows the workspace root and agent API it renders files for.
        row = await hub.store.get_gateway(gateway_id)
        return bool(
            hub.registry.get(gateway_id) and row and row.workspace_root and row.agent_api_url
        )

    await sidecar.start()
    try:
        await wait_for(lambda: sidecar.gateway.info.reachable, timeout_s=30, what="gateway up")
        await wait_for(linked, timeout_s=30, what="sidecar link up")
        clock.advance(grace_s)
        yield Stack(hub, sidecar, model, gateway, clock, gateway_id)
    finally:
        await sidecar.stop()
        # Let the hub record the disconnect before it closes its database.
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: hub.registry.get(gateway_id) is None, what="link closed")
        await hub.stop()


@pytest.fixture(autouse=True)
async def _runs_left_behind_are_aborted(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Tests share the session's gateway: a run one leaves going (a model that refuses
    connections makes 2026.9 retry for about 70 s; a slow model) must not hold up the
    next test's. At the end of each test, the runs of the agents it created are aborted."""
    if "openclaw" not in request.fixturenames:
        yield
        return
    gateway: RunningGateway = request.getfixturevalue("openclaw")
    before = set(gateway.roster())
    yield
    created = set(gateway.roster()) - before
    if not created:
        return
    from sidecar.gateway.openclaw import OpenClawGatewayClient

    async with OpenClawGatewayClient(gateway.config_path) as client:
        with contextlib.suppress(Exception):
            await client.wait_ready(10)
            for agent_id in sorted(created):
                with contextlib.suppress(Exception):
                    await client.call("chat.abort", {"sessionKey": f"agent:{agent_id}:main"})
