"""`make hubs`: PostgreSQL and three `mc-hub serve` processes on loopback sharing one
database, key, CA and admin token; every process stopped by PID at the end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.demo.hubs import HubPorts, Hubs
from hub.demo.postgres_server import PostgresUnavailable
from tests.support import free_ports


def call(url: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


def test_three_hubs_answer_readyz_and_share_one_database(tmp_path: Path) -> None:
    ports = free_ports(9)
    hubs = Hubs(tmp_path / "hubs", [HubPorts(*ports[i : i + 3]) for i in (0, 3, 6)])
    try:
        try:
            hubs.start()
        except PostgresUnavailable as exc:
            pytest.skip(f"no PostgreSQL server here: {exc}")
        assert len(hubs.hubs) == 3
        token = hubs.admin_token_file.read_text().strip()
        for hub in hubs.hubs:
            with urllib.request.urlopen(f"{hub.http_url}/readyz", timeout=5) as answer:
                assert answer.status == 200
        first, _, third = hubs.hubs
        keys = {(hub.data_dir / "hub.key").read_bytes() for hub in hubs.hubs}
        cas = {(hub.data_dir / "ca" / "ca.crt").read_bytes() for hub in hubs.hubs}
        assert len(keys) == 1 and len(cas) == 1
        status, gateway = call(
            f"{first.http_url}/api/v1/gateways",
            token,
            "POST",
            {"name": "host-1", "workspace_root": "/srv/openclaw"},
        )
        assert status == 201, gateway
        status, seen = call(f"{third.http_url}/api/v1/gateways/{gateway['id']}", token)
        assert status == 200 and seen["name"] == "host-1"
        text = hubs.describe()
        assert all(f"127.0.0.1:{hub.ports.link}" in text for hub in hubs.hubs)
        assert "mc-sidecar enroll" in text and "mc-sidecar run" in text
        processes = [hub.process for hub in hubs.hubs]
    finally:
        hubs.stop()
    assert all(process.poll() is not None for process in processes)


def _free_base() -> int:
    """A port p with p, p+100 and p+200 free now (one hub's HTTP, link, enroll)."""
    for candidate in free_ports(20):
        if candidate + 200 > 65535:
            continue
        try:
            for port in (candidate + 100, candidate + 200):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return candidate
    raise AssertionError("no free ports for a hub")


def test_the_script_prints_the_hubs_and_stops_them_all_on_ctrl_c(tmp_path: Path) -> None:
    base = _free_base()
    argv = [
        sys.executable, "-m", "hub.demo", "hubs", "--state-dir", str(tmp_path / "hubs"),
        "--count", "1", "--base-port", str(base),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        printed: list[str] = []
        for line in process.stdout:
            printed.append(line)
            if "Ctrl-C stops them all." in line:
                break
        else:
            stderr = process.stderr.read() if process.stderr else ""
            if "PostgreSQL" in stderr and "install" in stderr:
                pytest.skip(f"no PostgreSQL server here: {stderr}")
            raise AssertionError(f"the script ended early: {''.join(printed)}{stderr}")
        text = "".join(printed)
        assert f"http://127.0.0.1:{base}" in text and f"link 127.0.0.1:{base + 100}" in text
        pid = int(text.split("(pid ", 1)[1].split(",", 1)[0])
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(ProcessLookupError):  # the hub it started is gone too
        os.kill(pid, 0)
