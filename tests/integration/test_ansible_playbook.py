"""packaging/ansible's playbook for real: ansible-playbook (ansible-core) against several
"hosts" that are this machine over a local connection, each with its own prefix, state,
openclaw.json directory and service root, enrolling with one labelled fleet token of a
real hub; then each service's own command runs and connects. A second run changes
nothing. This machine's service manager is never touched (the units go below a root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_install_script import (
    _gateway_user,
    _system_python,
    serving_hub,
    shared_dir,  # noqa: F401 (a fixture)
    wheel,  # noqa: F401 (a fixture)
)

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "packaging" / "ansible" / "playbook.yml"
ADMIN_TOKEN = "a" * 64
HOSTS = ("host-a", "host-b", "host-c")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def ansible_playbook() -> str:
    found = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("ansible-core is not installed: `make install` (it is in the dev extras)")
    return found


def call(http: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://{http}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def fleet_hub(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real hub over mutual TLS: (HTTP address, enroll address)."""
    with serving_hub(tmp_path / "hub", ADMIN_TOKEN) as addresses:
        yield addresses


def inventory(shared: Path, user: str) -> dict[str, Any]:
    hosts = {}
    for name in HOSTS:
        home = shared / name
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "mc_sidecar_prefix": str(home / "prefix"),
            "mc_sidecar_bin_dir": str(home / "bin"),
            "mc_sidecar_state_dir": str(home / "state"),
            "mc_sidecar_stage_dir": str(home / "stage"),
            "mc_sidecar_service_root": str(home / "root"),
            "mc_sidecar_openclaw_config": str(home / "openclaw" / "openclaw.json"),
            "mc_sidecar_settings": [
                "--agent-api-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            "mc_sidecar_no_start": True,
            "mc_sidecar_no_log": False,
        }
        if os.geteuid() == 0:
            hosts[name]["mc_sidecar_gateway_user"] = user
    return {"gateways": {"hosts": hosts}}


def run_playbook(
    playbook: str, inventory_file: Path, extra: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [playbook, "-i", str(inventory_file), str(PLAYBOOK), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "0"},
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counts per host."""
    found = {}
    for line in output[output.rindex("PLAY RECAP") :].splitlines()[1:]:
        parts = line.split(":", 1)
        if len(parts) == 2 and parts[0].strip() in HOSTS:
            found[parts[0].strip()] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", parts[1])}
    return found


def test_the_playbook_installs_enrolls_and_labels_hosts_in_batches_and_reruns_clean(
    wheel: Path,  # noqa: F811
    shared_dir: Path,  # noqa: F811
    fleet_hub: tuple[str, str],
) -> None:
    playbook = ansible_playbook()
    http, enroll = fleet_hub
    user = _gateway_user()
    python = _system_python()
    for name in HOSTS:
        home = shared_dir / name
        home.mkdir(mode=0o755)
        os.chown(home, user.pw_uid, user.pw_gid)
    token = call(
        http,
        "POST",
        "/api/v1/fleet/join-tokens",
        {"uses": len(HOSTS), "labels": {"env": "prod", "installed": "ansible"}},
    )["join_token"]
    hosts = inventory(shared_dir, user.pw_name)
    if python:
        for values in hosts["gateways"]["hosts"].values():
            values["mc_sidecar_python"] = python[1]
    inventory_file = shared_dir / "inventory.json"
    inventory_file.write_text(json.dumps(hosts))
    extra = {"mc_sidecar_wheel": str(wheel), "mc_sidecar_hub": enroll, "mc_sidecar_token": token}

    check = subprocess.run(
        [playbook, "--syntax-check", "-i", str(inventory_file), str(PLAYBOOK)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr

    first = run_playbook(playbook, inventory_file, extra)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    # In batches: one host alone first, then the others (serial 1, 10 %, 50 %, 100 %).
    assert first.stdout.count("PLAY [Install and enroll Mission Control sidecars]") >= 2
    counts = recap(first.stdout)
    assert set(counts) == set(HOSTS)
    assert all(c["changed"] >= 1 and c["failed"] == 0 for c in counts.values()), counts

    # Every host enrolled with the token's labels; each service's own command connects.
    listed = call(http, "GET", "/api/v1/fleet/inventory?selector=installed=ansible")
    assert listed["total"] == len(HOSTS)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for name in HOSTS:
            root = shared_dir / name / "root"
            units = list(root.rglob("mc-sidecar.service"))
            assert units, f"no unit below {root}"
            exec_start = next(
                line.removeprefix("ExecStart=")
                for line in units[0].read_text().splitlines()
                if line.startswith("ExecStart=")
            ).split()
            config = Path(exec_start[-1])
            staged_config = root / config.relative_to("/") if not config.exists() else config
            command = [*exec_start[:-1], str(staged_config)]
            if os.geteuid() == 0:
                command = ["runuser", "-u", user.pw_name, "--", *command]
            log = (shared_dir / name / "sidecar.log").open("wb")
            started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        deadline = time.monotonic() + 60
        while True:
            listed = call(http, "GET", "/api/v1/fleet/inventory?selector=env=prod")
            if listed["connected"] == len(HOSTS) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        logs = {n: (shared_dir / n / "sidecar.log").read_text()[-1500:] for n in HOSTS}
        assert listed["connected"] == len(HOSTS), (listed, logs)
        assert {g["labels"]["installed"] for g in listed["gateways"]} == {"ansible"}
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

    second = run_playbook(playbook, inventory_file, extra)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    counts = recap(second.stdout)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts
    tokens = call(http, "GET", "/api/v1/fleet/join-tokens")["items"]
    assert [t["uses"] for t in tokens] == [len(HOSTS)]  # the re-run enrolled nobody again
