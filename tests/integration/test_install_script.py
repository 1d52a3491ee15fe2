"""packaging/install.sh as an operator runs it on a gateway host, into a temporary prefix.

The wheel is built once per session from this checkout; pip's cache serves the
dependencies after the first run. The service goes below a --root directory, so this
machine's service manager is never touched.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SH = ROOT / "packaging" / "install.sh"
ADMIN_TOKEN = "i" * 64


BUILD_LOG = "build.log"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout (tracked and new files) built into a wheel, once."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0 or not listed.stdout.strip():
        pytest.skip("not a git checkout")
    source = tmp_path_factory.mktemp("source")
    for name in listed.stdout.split():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(source)],
        check=True, capture_output=True, timeout=300, text=True,
    )  # fmt: skip
    (dist / BUILD_LOG).write_text(done.stdout + done.stderr)
    (built,) = dist.glob("*.whl")
    return built


def test_the_build_declares_every_package_it_ships_and_ships_the_demo(wheel: Path) -> None:
    log = (wheel.parent / BUILD_LOG).read_text()
    assert "absent from" not in log, log  # setuptools: a shipped directory left undeclared
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"hub/demo/install_openclaw.sh", "hub/demo/scripted_model.py"} <= names
    assert {"hub/ui/static/live.js", "missioncontrol/packaging/install.sh"} <= names


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the gateway's user can reach too (pytest's tmp_path is private to us)."""
    base = Path(tempfile.mkdtemp(prefix="mc-install-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _gateway_user() -> pwd.struct_passwd:
    """Ourselves, or as root an unprivileged account (the sidecar never runs as root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    if shutil.which("runuser") is None:
        pytest.skip("runuser (util-linux) is needed to enroll as the gateway's user")
    for entry in pwd.getpwall():
        if 0 < entry.pw_uid < 65534 and entry.pw_name != "nobody":
            return entry
    pytest.skip("no unprivileged account on this host")


def _system_python() -> list[str]:
    """As root, a Python the gateway's user can run too (ours may live under /root)."""
    if os.geteuid() != 0:
        return []
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        ok = subprocess.run(
            [candidate, "-c", "import sys, venv; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
        )
        if Path(candidate).exists() and ok.returncode == 0:
            return ["--python", candidate]
    pytest.skip("no system-wide Python 3.11+ with venv for the gateway's user to run")


def _install_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args], capture_output=True, text=True, timeout=600
    )


@contextmanager
def serving_hub(data_dir: Path, admin_token: str = ADMIN_TOKEN) -> Iterator[tuple[str, str]]:
    """`mc-hub serve` over mutual TLS in a process of its own: (HTTP address, enroll
    address), stopped by its PID at the end."""
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "serve", "--data-dir", str(data_dir),
         "--http-listen", "127.0.0.1:0", "--link-listen", "127.0.0.1:0",
         "--enroll-listen", "127.0.0.1:0", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "MC_ADMIN_TOKEN": admin_token},
    )  # fmt: skip
    try:
        assert hub.stdout is not None
        banner = ""
        for line in hub.stdout:
            banner += line
            if "Ctrl-C" in line:
                break
        http = re.search(r"REST API:\s+http://([\d.]+:\d+)", banner)
        enroll = re.search(r"enroll:\s+([\d.]+:\d+)", banner)
        assert http and enroll, banner
        yield http.group(1), enroll.group(1)
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(hub.pid, signal.SIGKILL)
            hub.wait(timeout=30)


@pytest.fixture
def enrollment_hub(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real hub with its enrollment listener: (enroll address, a fresh join token)."""
    with serving_hub(tmp_path / "hub") as (http, enroll):
        request = urllib.request.Request(
            f"http://{http}/api/v1/gateways",
            data=b'{"name": "gateway-host-1"}',
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.loads(response.read())["join_token"]
        yield enroll, token


@pytest.mark.slow
def test_one_command_installs_enrolls_and_writes_the_service_and_uninstall_keeps_workspaces(
    wheel: Path, shared_dir: Path, enrollment_hub: tuple[str, str]
) -> None:
    enroll_address, join_token = enrollment_hub
    user = _gateway_user()
    home = shared_dir / "gateway-home"
    home.mkdir(mode=0o700)
    os.chown(home, user.pw_uid, user.pw_gid)
    prefix, bin_dir, staged = shared_dir / "prefix", shared_dir / "bin", shared_dir / "image"
    state = home / ".mc-sidecar"
    scope = "system" if os.geteuid() == 0 else "user"
    args = [
        "--from", str(wheel), "--prefix", str(prefix), "--bin-dir", str(bin_dir),
        "--hub", enroll_address, "--token", join_token, "--gateway-user", user.pw_name,
        "--state-dir", str(state), *_system_python(),
        "--", "--root", str(staged), "--openclaw-config", str(home / ".openclaw/openclaw.json"),
    ]  # fmt: skip

    first = _install_sh(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"enrolling as {user.pw_name}" in first.stdout
    for command in ("mc-sidecar", "mc-hub"):
        link = bin_dir / command
        assert link.is_symlink() and link.resolve() == (prefix / "venv/bin" / command).resolve()
        version = subprocess.run([str(link), "--version"], capture_output=True, text=True)
        assert version.returncode == 0 and "0.1.0" in version.stdout
    assert (state / "link-identity.pem").stat().st_uid == user.pw_uid  # enrolled as that user
    unit_dir = "etc/systemd/system" if scope == "system" else ".config/systemd/user"
    unit_root = staged if scope == "system" else staged / Path(user.pw_dir).relative_to("/")
    unit = (unit_root / unit_dir / "mc-sidecar.service").read_text()
    assert f"ExecStart={prefix}/venv/bin/mc-sidecar run --config " in unit
    assert f"ReadWritePaths={state} {home / '.openclaw'}" in unit

    again = _install_sh(*args)  # safe to repeat: no second enrollment, nothing rewritten
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already enrolled" in again.stdout and "reusing the environment" in again.stdout
    assert "wrote" not in again.stdout and again.stdout.count("same ") == 2

    workspace = home / ".openclaw" / "workspace-a"
    workspace.mkdir(parents=True)
    (workspace / "AGENTS.md").write_text("keep me")
    removed = _install_sh("--uninstall", "--prefix", str(prefix), "--bin-dir", str(bin_dir))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not prefix.exists() and not (bin_dir / "mc-sidecar").exists()
    assert (workspace / "AGENTS.md").read_text() == "keep me"
    assert (state / "link-identity.pem").exists()


def test_install_script_refuses_half_an_enrollment_and_a_prefix_it_did_not_make(
    tmp_path: Path,
) -> None:
    half = _install_sh("--from", str(ROOT), "--hub", "hub.example:7444")
    assert half.returncode == 1 and "--hub and --token go together" in half.stderr
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "data").write_text("precious")
    refused = _install_sh("--uninstall", "--prefix", str(foreign), "--bin-dir", str(tmp_path))
    assert refused.returncode == 1 and "did not make it" in refused.stderr
    assert (foreign / "data").read_text() == "precious"
    usage = _install_sh("--help")
    assert usage.returncode == 0 and "--uninstall" in usage.stdout
