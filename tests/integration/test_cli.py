"""The installed commands as a new user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_help_documents_every_flag_with_its_environment_variable_and_file_key() -> None:
    commands = [
        ("hub.cli", "serve"),
        ("sidecar.cli", "run"),
        ("hub.cli", "doctor"),
        ("sidecar.cli", "doctor"),
        ("hub.cli", "backup"),
        ("hub.cli", "restore"),
    ]
    for module, sub in commands:
        out = subprocess.run(
            [sys.executable, "-m", module, sub, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        options = out[out.index("options:") :]
        flags = re.findall(r"^\s+(--[a-z-]+)", options, re.MULTILINE)
        assert len(flags) >= (6 if sub in ("serve", "run", "doctor") else 2)
        for flag in flags:
            if flag in ("--help", "--config", "--json", "--verify"):  # output, not settings
                continue
            key = flag.removeprefix("--").replace("-", "_")
            entry = " ".join(options[options.index(flag) :].split()[:40])
            assert f"file key {key}" in entry and "[env MC_" in entry, flag


def test_serve_prints_where_it_listens_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MC_ADMIN_TOKEN"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "var"),
            "--insecure-dev",
            "--http-listen",
            "127.0.0.1:0",
            "--link-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        banner = "".join(lines)
        http = re.search(r"REST API:\s+http://([\d.]+:\d+)", banner)
        assert http, banner
        token = (tmp_path / "var" / "admin-token").read_text().strip()
        assert token in banner  # generated and shown once
        assert "mc-sidecar run --hub 127.0.0.1:" in banner
        request = urllib.request.Request(
            f"http://{http.group(1)}/api/v1/gateways", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        # The printed dashboard URL leads to the login page.
        dashboard = re.search(r"dashboard:\s+(http://[\d.]+:\d+/)", banner)
        assert dashboard, banner
        with urllib.request.urlopen(dashboard.group(1), timeout=10) as response:
            assert response.status == 200 and "/ui/login" in response.url
            assert "Admin token" in response.read().decode()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_pip_install_from_a_clean_checkout_gives_working_commands(tmp_path: Path) -> None:
    """Not editable: generated gRPC modules must be built by the package build itself."""
    source = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    assert not list((source / "protos").glob("*_pb2*.py"))  # nothing generated was shipped
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(source)], check=True, timeout=600
    )
    for command in ("mc-hub", "mc-sidecar"):
        out = subprocess.run(
            [str(venv / "bin" / command), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=tmp_path,
        ).stdout
        assert "usage:" in out
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import protos.link_pb2_grpc, hub.app, sidecar.app"],
        check=True,
        timeout=60,
        cwd=tmp_path,
    )


def _read_banner(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Ctrl-C" in line:
            break
    return "".join(lines)


def test_readme_enrollment_steps_connect_a_sidecar_over_mutual_tls(tmp_path: Path) -> None:
    """`mc-hub serve` (as `make run` starts it), then the README's three steps."""
    env = {**os.environ, "MC_ADMIN_TOKEN": "a" * 64}
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "var"),
            "--http-listen",
            "127.0.0.1:0",
            "--link-listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    sidecar: subprocess.Popen[str] | None = None
    try:
        banner = _read_banner(hub)
        http = re.search(r"REST API:\s+http://([\d.]+:\d+)", banner).group(1)  # type: ignore[union-attr]
        enroll = re.search(r"enroll:\s+([\d.]+:\d+)", banner).group(1)  # type: ignore[union-attr]
        headers = {"Authorization": "Bearer " + "a" * 64}
        request = urllib.request.Request(
            f"http://{http}/api/v1/gateways",
            method="POST",
            data=b'{"name": "host-1"}',
            headers=headers,
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            created = json.loads(response.read())
        state = tmp_path / "sidecar-state"
        enroll_cmd = [
            sys.executable,
            "-m",
            "sidecar.cli",
            "enroll",
            "--hub",
            enroll,
            "--token",
            created["join_token"],
            "--state-dir",
            str(state),
        ]
        done = subprocess.run(enroll_cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"enrolled as gateway {created['id']}" in done.stdout
        again = subprocess.run(enroll_cmd, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already enrolled" in again.stderr
        sidecar = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar.cli",
                "run",
                "--state-dir",
                str(state),
                "--openclaw-config",
                str(tmp_path / "oc" / "openclaw.json"),
                "--agent-api-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 30
        listed: dict = {}
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                f"http://{http}/api/v1/gateways/{created['id']}", headers=headers
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                listed = json.loads(response.read())
            if listed["connected"]:
                break
            time.sleep(0.2)
        assert listed["connected"] is True
    finally:
        for process in (sidecar, hub):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    assert process.wait(timeout=20) == 0
                finally:
                    if process.poll() is None:
                        process.kill()


def test_sidecar_offline_past_certificate_expiry_is_told_to_re_enroll(tmp_path: Path) -> None:
    import datetime as dt

    from hub.pki.ca import CertificateAuthority
    from hub.pki.enrollment import Revocations
    from sidecar.link.identity import new_key_request, save_identity

    ca = CertificateAuthority.load_or_create(tmp_path / "ca", revocations=Revocations())
    request = new_key_request("t")
    expired = ca.sign_client_csr(
        request.csr_pem,
        "gw-1",
        dt.timedelta(hours=1),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3),
    )
    # Stored while still valid (save_identity refuses an expired one), then time passed.
    save_identity(
        tmp_path / "state",
        request.key_pem,
        expired,
        ca.certificate_pem,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2, minutes=30),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "run",
            "--hub",
            "127.0.0.1:9",
            "--state-dir",
            str(tmp_path / "state"),
            "--openclaw-config",
            str(tmp_path / "oc" / "openclaw.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "expired" in done.stderr and "--force" in done.stderr


@pytest.mark.parametrize("taken", ["--http-listen", "--link-listen", "--enroll-listen"])
def test_a_port_that_is_taken_is_one_clear_line_at_start(tmp_path: Path, taken: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = f"127.0.0.1:{holder.getsockname()[1]}"
        ports = {flag: "127.0.0.1:0" for flag in ("--http-listen", "--link-listen")}
        ports["--enroll-listen"] = "127.0.0.1:0"
        ports[taken] = busy
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hub.cli",
                "serve",
                "--data-dir",
                str(tmp_path / "hub"),
                *(part for flag, value in ports.items() for part in (flag, value)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MC_ADMIN_TOKEN": "t" * 64},
        )
    assert result.returncode == 1
    said = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # not logs
    assert len(said) == 1 and "Traceback" not in result.stderr, result.stderr
    assert said[0].startswith(f"mc-hub: cannot listen on {busy} ({taken})")
    assert "choose another address" in said[0]


def test_join_token_prints_the_enroll_address_the_hub_is_configured_with(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('enroll_listen = "10.1.2.3:7555"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "gateway",
            "join-token",
            "--uses",
            "5",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "hub"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "HUB_HOST" not in result.stdout
    assert re.search(
        r"enroll --hub 10\.1\.2\.3:7555 --token '[a-z0-9]{8}\.[a-z0-9]{32}@sha256:", result.stdout
    )
    assert "5 use(s)" in result.stdout
