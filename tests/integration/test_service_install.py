"""install-service / uninstall-service as an operator runs them, and what they write.

Nothing here touches this machine's service manager: installs go below a --root
directory (as for an image), or are --dry-run. Every unit is checked by the real
`systemd-analyze verify`, every plist by plistlib.
"""

from __future__ import annotations

import os
import plistlib
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from missioncontrol.system_service import (
    Account,
    Manager,
    Scope,
    ServiceSpec,
    Target,
    installed_command,
    render_plist,
    render_unit,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)
SYSTEMD_RUNNING = Path("/run/systemd/system").is_dir()


def _unprivileged_account() -> Account:
    """An existing account that is neither root nor nobody (systemd warns about nobody)."""
    for entry in pwd.getpwall():
        if 0 < entry.pw_uid < 65534 and entry.pw_name != "nobody":
            return Account.lookup(entry.pw_name)
    pytest.skip("no unprivileged account on this host")


ACCOUNT = _unprivileged_account()


def _cli(
    program: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    module = {"mc-hub": "hub.cli", "mc-sidecar": "sidecar.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _sidecar_settings(tmp_path: Path) -> list[str]:
    return [
        "--insecure-dev",
        "--hub",
        "127.0.0.1:7443",
        "--state-dir",
        str(tmp_path / "gateway-home" / ".mc-sidecar"),
        "--openclaw-config",
        str(tmp_path / "gateway-home" / ".openclaw" / "openclaw.json"),
    ]


def _install_system(program: str, root: Path, tmp_path: Path, *extra: str) -> Path:
    """`install-service --system --root ROOT`; returns the unit or plist it wrote."""
    if program == "mc-hub":
        args = ["--service-user", ACCOUNT.name, *extra]
    else:
        args = ["--gateway-user", ACCOUNT.name, *_sidecar_settings(tmp_path), *extra]
    done = _cli(program, "install-service", "--system", "--root", str(root), *args)
    assert done.returncode == 0, done.stderr
    assert "not started" in done.stdout
    if "launchd" in extra:
        return root / f"Library/LaunchDaemons/org.missioncontrol.{program}.plist"
    return root / f"etc/systemd/system/{program}.service"


def _user_spec(program: str, manager: Manager, tmp_path: Path) -> ServiceSpec:
    """A user-scope install rendered directly (the CLI refuses a --user service of root)."""
    target = Target(program, manager, Scope.USER, ACCOUNT, tmp_path / "config")
    return ServiceSpec(
        target=target,
        subcommand="serve" if program == "mc-hub" else "run",
        command=installed_command(program),
        settings_toml="",
        read_write_paths=(tmp_path / "state", tmp_path / "workspaces"),
    )


def _verify(unit: Path, *, user: bool, tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    runtime = tmp_path / "runtime"  # a user manager wants a runtime directory
    runtime.mkdir(mode=0o700, exist_ok=True)
    command = [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify", str(unit)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    # verify exits 0 on unknown keys and unsafe settings too, warning on stderr.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("program", ["mc-hub", "mc-sidecar"])
def test_system_units_written_by_install_service_pass_systemd_analyze_verify(
    program: str, tmp_path: Path
) -> None:
    unit = _install_system(program, tmp_path / "root", tmp_path)
    text = unit.read_text()
    assert f"ExecStart={installed_command(program)} " in text
    assert f"User={ACCOUNT.name}\n" in text
    _verify(unit, user=False, tmp_path=tmp_path)


@needs_systemd_analyze
@pytest.mark.parametrize("program", ["mc-hub", "mc-sidecar"])
def test_user_units_pass_systemd_analyze_verify(program: str, tmp_path: Path) -> None:
    unit = tmp_path / f"{program}.service"
    unit.write_text(render_unit(_user_spec(program, Manager.SYSTEMD, tmp_path)))
    _verify(unit, user=True, tmp_path=tmp_path)


def test_sidecar_unit_may_write_exactly_its_state_workspaces_and_openclaw_directory(
    tmp_path: Path,
) -> None:
    home = tmp_path / "gateway-home"
    unit = _install_system(
        "mc-sidecar", tmp_path / "root", tmp_path, "--workspace-root", str(home / "agents")
    )
    (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ReadWritePaths=")]
    assert line.split("=", 1)[1].split() == [
        str(home / ".mc-sidecar"),
        str(home / "agents"),
        str(home / ".openclaw"),
    ]
    config = (tmp_path / "root/etc/mc-sidecar/sidecar.toml").read_text()
    assert f'workspace_root = "{home / "agents"}"' in config
    for directory in (home / ".mc-sidecar", home / "agents", home / ".openclaw"):
        staged = tmp_path / "root" / directory.relative_to("/")
        assert staged.is_dir() and staged.stat().st_mode & 0o777 == 0o700


def test_reinstalling_changes_nothing_and_uninstall_leaves_state_and_workspaces(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    unit = _install_system("mc-sidecar", root, tmp_path)
    config = root / "etc/mc-sidecar/sidecar.toml"
    before = (unit.read_bytes(), config.read_bytes())
    workspace = root / (tmp_path / "gateway-home/.openclaw/workspace-a").relative_to("/")
    workspace.mkdir()
    (workspace / "AGENTS.md").write_text("keep me")

    # No settings this time: a re-run starts from the file the first run wrote.
    again = _cli(
        "mc-sidecar", "install-service", "--system", "--root", str(root),
        "--gateway-user", ACCOUNT.name,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("same ") == 2 and "wrote" not in again.stdout
    assert (unit.read_bytes(), config.read_bytes()) == before

    removed = _cli("mc-sidecar", "uninstall-service", "--system", "--root", str(root))
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists() and not config.exists()
    assert (workspace / "AGENTS.md").read_text() == "keep me"
    assert (root / (tmp_path / "gateway-home/.mc-sidecar").relative_to("/")).is_dir()
    once_more = _cli("mc-sidecar", "uninstall-service", "--system", "--root", str(root))
    assert once_more.returncode == 0 and "nothing to do" in once_more.stdout


def test_dry_run_prints_unit_and_config_and_writes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub-data"
    done = _cli(
        "mc-hub", "install-service", "--system", "--dry-run", "--manager", "systemd",
        "--service-user", ACCOUNT.name, "--data-dir", str(data_dir),
        "--http-listen", "0.0.0.0:8000",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"ExecStart={installed_command('mc-hub')} serve --config /etc/mc-hub/hub.toml" in out
    assert f"ReadWritePaths={data_dir}" in out
    assert 'http_listen = "0.0.0.0:8000"' in out and f'data_dir = "{data_dir}"' in out
    assert "systemctl enable mc-hub.service" in out
    assert not data_dir.exists()


def test_the_sidecar_never_runs_as_root_and_must_be_enrolled(tmp_path: Path) -> None:
    as_root = _cli(
        "mc-sidecar", "install-service", "--system", "--root", str(tmp_path / "root"),
        "--gateway-user", "root", *_sidecar_settings(tmp_path),
    )  # fmt: skip
    assert as_root.returncode == 1 and "never as root" in as_root.stderr
    if os.geteuid() == 0:
        user_of_root = _cli("mc-sidecar", "install-service", "--user", "--dry-run")
        assert user_of_root.returncode == 1 and "--gateway-user" in user_of_root.stderr
    not_enrolled = _cli(
        "mc-sidecar", "install-service", "--system", "--dry-run", "--manager", "systemd",
        "--gateway-user", ACCOUNT.name, "--hub", "hub.example:7443",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert not_enrolled.returncode == 1 and "mc-sidecar enroll" in not_enrolled.stderr
    assert not (tmp_path / "root").exists()


def test_launchd_plists_are_property_lists_that_restart_on_failure_and_log(
    tmp_path: Path,
) -> None:
    daemon_path = _install_system("mc-hub", tmp_path / "root", tmp_path, "--manager", "launchd")
    agent_spec = _user_spec("mc-sidecar", Manager.LAUNCHD, tmp_path)
    daemon = plistlib.loads(daemon_path.read_bytes())
    agent = plistlib.loads(render_plist(agent_spec).encode())
    for plist, program, subcommand in ((daemon, "mc-hub", "serve"), (agent, "mc-sidecar", "run")):
        assert plist["Label"] == f"org.missioncontrol.{program}"
        command, *rest = plist["ProgramArguments"]
        assert Path(command) == installed_command(program) and Path(command).is_file()
        assert rest[:2] == [subcommand, "--config"] and rest[2].endswith(".toml")
        assert plist["KeepAlive"] == {"SuccessfulExit": False}
        assert plist["RunAtLoad"] is True
        assert isinstance(plist["ThrottleInterval"], int) and plist["ThrottleInterval"] > 0
        assert plist["StandardOutPath"] == plist["StandardErrorPath"]
        assert plist["StandardErrorPath"].endswith(f"Logs/{program}/{program}.log")
        assert plist["Umask"] == 0o077
    assert daemon["UserName"] == ACCOUNT.name and "UserName" not in agent
    assert daemon["ProgramArguments"][3] == "/usr/local/etc/mc-hub/hub.toml"
    assert (tmp_path / "root/usr/local/var/mc-hub").is_dir()  # the data directory, staged


@pytest.mark.skipif(SYSTEMD_RUNNING, reason="systemd runs here: the error cannot happen")
def test_without_a_running_service_manager_the_error_says_what_to_do(tmp_path: Path) -> None:
    settings = ["--service-user", ACCOUNT.name, "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "PATH": str(tmp_path / "empty")}  # no systemctl, no launchctl
    neither = _cli("mc-hub", "install-service", "--system", *settings, env=env)
    assert neither.returncode == 1, neither.stderr
    assert "neither systemd nor launchd" in neither.stderr and "--dry-run" in neither.stderr
    if shutil.which("systemctl"):
        not_booted = _cli("mc-hub", "install-service", "--system", *settings)
        assert not_booted.returncode == 1 and "--no-start" in not_booted.stderr
    assert not (tmp_path / "data").exists()
