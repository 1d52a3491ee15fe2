"""Where an OpenClaw gateway comes from: npm, through the packaged installer, into a cache.

`install_openclaw.sh` (shipped beside this module) installs Node and `openclaw@VERSION`
from the npm registry into `CACHE/VERSION/` and prints the path of a launcher that runs
that OpenClaw with that Node. A finished install is reused without npm; only the first
install of a version needs npm on PATH, and without it `MissingTool` says what to
install for this platform. The demo (`mc-hub demo`) and the interop tests both install
through here.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_VERSION = "2026.9.6"
CACHE_ENV = "OPENCLAW_CACHE_DIR"
VERSION_ENV = "OPENCLAW_VERSION"
INSTALL_SCRIPT = Path(__file__).with_name("install_openclaw.sh")
INSTALL_TIMEOUT_S = 900.0  # a first install downloads Node and openclaw (~200 MB)


class MissingTool(RuntimeError):
    """Something the install needs is not on this machine; the message says what to install."""


def cache_dir(environ: Mapping[str, str], default: Path) -> Path:
    """$OPENCLAW_CACHE_DIR if set, else `default`."""
    given = environ.get(CACHE_ENV, "").strip()
    return Path(given).expanduser() if given else default


def cached_launcher(version: str, cache: Path) -> Path | None:
    """The launcher of a finished install of `version` in `cache`, or None."""
    launcher = cache / version / "bin" / "openclaw"
    if (
        launcher.is_file()
        and os.access(launcher, os.X_OK)
        and (cache / version / ".complete").exists()
    ):
        return launcher
    return None


def installed_version(launcher: Path) -> str:
    """The version of the openclaw package a launcher runs (from its package.json)."""
    import json

    package = launcher.parent.parent / "node_modules" / "openclaw" / "package.json"
    return str(json.loads(package.read_text(encoding="utf-8"))["version"])


def how_to_install_npm() -> str:
    """The exact command that puts npm (and Node) on PATH here."""
    if platform.system() == "Darwin":
        return "brew install node (or the installer from https://nodejs.org/en/download)"
    family = _linux_family()
    if family & {"debian", "ubuntu"}:
        return "sudo apt-get install -y npm (Debian/Ubuntu; it brings nodejs)"
    if family & {"fedora", "rhel", "centos"}:
        return "sudo dnf install -y npm (Fedora/RHEL; it brings nodejs)"
    if "alpine" in family:
        return "sudo apk add npm (Alpine; it brings nodejs)"
    return "Node.js with npm from https://nodejs.org/en/download"


def _linux_family() -> set[str]:
    """ID and ID_LIKE of /etc/os-release (empty when unknown)."""
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    family: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            family.update(value.strip().strip('"').lower().split())
    return family


def install_command(version: str, cache: Path) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that install `version` into `cache` (or find it there).

    Raises MissingTool when the install would need npm or bash and they are missing.
    """
    if cached_launcher(version, cache) is None and shutil.which("npm") is None:
        raise MissingTool(
            f"OpenClaw {version} is not installed in {cache} yet, and installing it needs "
            f"npm, which is not on PATH. Install it: {how_to_install_npm()}. Node itself "
            "is then fetched from npm, at the version OpenClaw needs."
        )
    bash = shutil.which("bash")
    if bash is None:
        raise MissingTool("the OpenClaw installer is a bash script, and bash is not on PATH")
    env = {**os.environ, VERSION_ENV: version, CACHE_ENV: str(cache)}
    return [bash, str(INSTALL_SCRIPT)], env


def launcher_from(stdout: str) -> Path:
    """The launcher path the installer printed as its last line."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("the OpenClaw installer printed no launcher path")
    return Path(lines[-1])


def local_config(port: int, token: str) -> dict[str, Any]:
    """The smallest openclaw.json that boots a gateway on loopback with a shared token, and
    no version check over the network."""
    return {
        "gateway": {
            "mode": "local",
            "bind": "loopback",
            "port": port,
            "auth": {"mode": "token", "token": token},
        },
        "update": {"checkOnStart": False},
    }


def private_env(home: Path, state_dir: Path, tmpdir: Path) -> dict[str, str]:
    """What a gateway with its own home needs in its environment (on top of PATH & co.)."""
    return {
        "HOME": str(home),
        "OPENCLAW_STATE_DIR": str(state_dir),
        "OPENCLAW_DISABLE_BONJOUR": "1",  # no mDNS on the LAN
        "OPENCLAW_NO_AUTO_UPDATE": "1",  # no version check over the network
        # Restart in process (2026.3 restarts on a token change): a detached re-exec
        # would leave its process group and outlive whoever stops it by PID.
        "OPENCLAW_NO_RESPAWN": "1",
        "TMPDIR": str(tmpdir),
    }
