"""`mc-sidecar doctor` against a real OpenClaw gateway: reachable, its version, the
scopes it grants, and a config stamped by a newer OpenClaw than the one running."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from missioncontrol.doctor import Report, Verdict
from missioncontrol.netaddr import HostPort
from sidecar.doctor import DoctorPolicy, SidecarDoctor, SidecarDoctorInput
from sidecar.gateway.protocol import ClientIdentity
from sidecar.openclaw_config import write_atomic
from tests.interop.conftest import RunningGateway

pytestmark = pytest.mark.interop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def given(
    tmp_path: Path, config: Path, gateway: RunningGateway, identity: ClientIdentity | None = None
) -> SidecarDoctorInput:
    return SidecarDoctorInput(
        hub=HostPort("127.0.0.1", free_port()),
        state_dir=tmp_path / "state",
        openclaw_config=config,
        workspace_root=tmp_path / "workspaces",
        agent_api_listen=HostPort("127.0.0.1", free_port()),
        insecure_dev=True,
        environ={"PATH": str(gateway.launcher.parent)},
        identity=identity or ClientIdentity(),
    )


async def run(doctor_input: SidecarDoctorInput) -> Report:
    return await SidecarDoctor(doctor_input, DoctorPolicy(gateway_timeout_s=10)).run()


def text(report: Report, check: str) -> str:
    return "\n".join(f"{f.summary} | {f.cause} | {f.fix}" for f in report.by_check(check))


async def test_a_running_gateway_is_reachable_supported_and_keeps_its_scopes(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    report = await run(given(tmp_path, gateway.config_path, gateway))
    assert report.verdict("gateway.reachable") is Verdict.OK, text(report, "gateway.reachable")
    assert report.verdict("gateway.scopes") is Verdict.OK
    assert report.verdict("gateway.version") is Verdict.OK
    assert gateway.version in text(report, "gateway.reachable")
    assert report.verdict("openclaw.last_touched_version") is Verdict.OK


async def test_cleared_scopes_fail_with_the_missing_scope_explained(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    if gateway.generation_is_legacy:
        pytest.skip("2026.3 sends no auth.scopes in hello-ok")
    # An Origin header is one of the ways the gateway silently clears a backend's scopes.
    identity = ClientIdentity(origin=f"http://127.0.0.1:{gateway.port}")
    report = await run(given(tmp_path, gateway.config_path, gateway, identity))
    assert report.verdict("gateway.scopes") is Verdict.FAIL
    explained = text(report, "gateway.scopes")
    assert "missing scope: operator.read" in explained
    assert "gateway-client/backend" in explained and "Origin" in explained


async def test_a_config_stamped_by_a_newer_openclaw_fails_naming_both_versions(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    # The same gateway address and token, in a copy whose stamp a newer OpenClaw wrote.
    document = gateway.read_config()
    document.setdefault("meta", {})["lastTouchedVersion"] = "2099.1.1"
    copy = tmp_path / "openclaw.json"
    write_atomic(copy, json.dumps(document, indent=2))
    report = await run(given(tmp_path, copy, gateway))
    assert report.verdict("gateway.reachable") is Verdict.OK
    assert report.verdict("openclaw.last_touched_version") is Verdict.FAIL
    explained = text(report, "openclaw.last_touched_version")
    assert "2099.1.1" in explained and gateway.version in explained
    assert "npm install -g openclaw@2099.1.1" in explained


async def test_a_wrong_token_fails_with_the_token_fix(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    document = gateway.read_config()
    document["gateway"]["auth"]["token"] = "not-the-token-" + "x" * 20
    copy = tmp_path / "openclaw.json"
    write_atomic(copy, json.dumps(document, indent=2))
    report = await run(given(tmp_path, copy, gateway))
    assert report.verdict("gateway.reachable") is Verdict.FAIL
    assert "gateway.auth.token" in text(report, "gateway.reachable")
