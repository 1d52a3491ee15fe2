"""`mc-hub doctor` and `mc-sidecar doctor` against failures provoked for real: damaged and
newer databases, loose file modes, weak tokens, taken ports, bad origins, gateways away,
stuck agents, a full outbox, expired certificates, broken configs, a stopped gateway and
hub, clock skew. Each verdict and its fix text is checked. (Checks that need a real
OpenClaw gateway are in tests/interop/test_doctor_gateway.py.)"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from hub.app import Hub
from hub.doctor import DoctorPolicy, HubDoctor, HubDoctorInput
from hub.pki.ca import CertificateAuthority
from hub.pki.enrollment import Revocations
from hub.store.migrations import MIGRATIONS
from missioncontrol.doctor import Report, Verdict
from missioncontrol.netaddr import HostPort
from missioncontrol.private_files import write_file_atomic
from protos import link_pb2 as pb
from sidecar.doctor import DoctorPolicy as SidecarPolicy
from sidecar.doctor import SidecarDoctor, SidecarDoctorInput
from sidecar.link.identity import CA_FILE, IDENTITY_FILE, new_key_request
from sidecar.state import AgentState, LocalState
from tests.support import api, connected_sidecar, hub_config, running_hub, wait_for

STRONG_TOKEN = secrets.token_urlsafe(48)
NOW_POLICY = DoctorPolicy(disconnected_warn_s=0, stuck_after_s=0, outbox_warn=5, outbox_fail=20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hub_input(hub_or_dir: Hub | Path, **changes: object) -> HubDoctorInput:
    if isinstance(hub_or_dir, Hub):
        config = hub_or_dir.config
        assert hub_or_dir.addresses is not None
        given = HubDoctorInput(
            data_dir=config.data_dir,
            http_listen=hub_or_dir.addresses.http,
            link_listen=hub_or_dir.addresses.link,
            enroll_listen=HostPort("127.0.0.1", 0),
            insecure_dev=True,
            cors_origins=(),
            checkin_deadline_s=30.0,
            environ={"MC_ADMIN_TOKEN": STRONG_TOKEN},
        )
    else:
        given = HubDoctorInput(
            data_dir=hub_or_dir,
            http_listen=HostPort("127.0.0.1", 0),
            link_listen=HostPort("127.0.0.1", 0),
            enroll_listen=HostPort("127.0.0.1", 0),
            insecure_dev=True,
            cors_origins=(),
            checkin_deadline_s=30.0,
            environ={"MC_ADMIN_TOKEN": STRONG_TOKEN},
        )
    return dataclasses.replace(given, **changes)  # type: ignore[arg-type]


async def hub_report(given: HubDoctorInput, policy: DoctorPolicy = NOW_POLICY) -> Report:
    return await HubDoctor(given, policy).run()


def only(report: Report, check: str) -> str:
    """The text of a check's findings (summary, cause, fix), for assertions."""
    return "\n".join(f"{f.summary} | {f.cause} | {f.fix}" for f in report.by_check(check))


# ------------------------------------------------------------------ mc-hub doctor


async def test_a_healthy_hub_passes_every_check(tmp_path: Path) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        report = await hub_report(hub_input(hub))
    assert not report.failed, report.as_text()
    assert report.exit_code == 0
    assert report.verdict("database.integrity") is Verdict.OK
    assert report.verdict("ports") is Verdict.OK


async def test_a_damaged_database_fails_integrity_with_the_restore_command(tmp_path: Path) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        for i in range(300):
            await hub.store.create_gateway(f"gw-{i}", "x" * 200)
    path = tmp_path / "hub" / "hub.sqlite3"
    with path.open("r+b") as handle:  # overwrite pages in the middle with garbage
        handle.seek(4096 * 3)
        handle.write(os.urandom(4096 * 4))
    report = await hub_report(hub_input(tmp_path / "hub"))
    assert report.verdict("database.integrity") is Verdict.FAIL
    assert "mc-hub restore" in only(report, "database.integrity")


async def test_a_newer_schema_fails_naming_the_version_to_run(tmp_path: Path) -> None:
    async with running_hub(tmp_path / "hub"):
        pass
    conn = sqlite3.connect(tmp_path / "hub" / "hub.sqlite3")
    conn.execute(
        "INSERT INTO schema_version (version, applied_at, program_version) VALUES (?, 0, '4.0.2')",
        (len(MIGRATIONS) + 1,),
    )
    conn.commit()
    conn.close()
    report = await hub_report(hub_input(tmp_path / "hub"))
    assert report.verdict("database.schema") is Verdict.FAIL
    assert "run mc-hub 4.0.2" in only(report, "database.schema")


async def test_loose_key_modes_a_weak_token_a_taken_port_and_bad_origins_fail(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path / "hub"):
        pass
    (tmp_path / "hub" / "hub.key").chmod(0o644)
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        report = await hub_report(
            hub_input(
                tmp_path / "hub",
                http_listen=HostPort("127.0.0.1", port),
                environ={"MC_ADMIN_TOKEN": "ab" * 30},
                cors_origins=("https://dash.example.org/", "*", "https://ok.example.org"),
            )
        )
    finally:
        taken.close()
    assert report.verdict("files.modes") is Verdict.FAIL
    assert "chmod 600" in only(report, "files.modes")
    assert report.verdict("admin_token.strength") is Verdict.FAIL
    assert "secrets.token_urlsafe" in only(report, "admin_token.strength")
    assert report.verdict("ports") is Verdict.FAIL
    assert f"sport = :{port}" in only(report, "ports")
    cors = report.by_check("cors.origins")
    assert [f.verdict for f in cors] == [Verdict.FAIL, Verdict.FAIL, Verdict.OK]
    assert "use https://dash.example.org" in cors[0].fix
    assert report.exit_code == 1


async def test_a_gateway_away_a_stuck_agent_and_a_full_outbox_are_explained(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        async with connected_sidecar(hub, tmp_path, "gw-away"):
            status, board = await api(
                hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": "gw-away"}
            )
            assert status == 201, board
        # The sidecar is gone: the agent waits for it, and its outbox fills up.
        await wait_for(lambda: hub.registry.get("gw-away") is None, what="stream closed")
        status, agent = await api(
            hub, "POST", "/api/v1/agents", {"name": "W", "board_id": board["id"]}
        )
        assert status == 201, agent
        for _ in range(25):
            await hub.store.enqueue_command(
                "gw-away",
                pb.Command(
                    wake_agent=pb.WakeAgent(agent_id=agent["gateway_agent_id"], message="hi")
                ),
            )
        report = await hub_report(hub_input(hub))
    assert report.verdict("gateways.disconnected") is Verdict.WARN
    assert "mc-sidecar doctor" in only(report, "gateways.disconnected")
    stuck = only(report, "agents.stuck")
    assert report.verdict("agents.stuck") is Verdict.WARN
    assert agent["id"] in stuck and "sidecar is not connected" in stuck
    assert report.verdict("outbox.backlog") is Verdict.FAIL
    assert "26 commands not acknowledged" in only(report, "outbox.backlog")


async def test_expired_and_expiring_sidecar_certificates_are_reported_with_the_fix(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        for gateway_id in ("gw-old", "gw-soon", "gw-fine"):
            await hub.store.create_gateway(gateway_id, gateway_id)
        now = time.time()
        await hub.store.record_certificate("gw-old", 1, now - 3600)
        await hub.store.record_certificate("gw-soon", 2, now + 86400)
        await hub.store.record_certificate("gw-fine", 3, now + 20 * 86400)
        report = await hub_report(hub_input(hub))
    found = report.by_check("certificates.expiring")
    by_gateway = {f.data.get("gateway_id"): f for f in found}
    assert by_gateway["gw-old"].verdict is Verdict.FAIL
    assert "mc-hub gateway join-token gw-old" in by_gateway["gw-old"].fix
    assert by_gateway["gw-soon"].verdict is Verdict.WARN
    assert "gw-fine" not in by_gateway


def test_the_cli_prints_json_and_exits_1_on_a_failure(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    data.mkdir(mode=0o700)
    env = {**os.environ, "MC_ADMIN_TOKEN": "short"}
    out = subprocess.run(
        [sys.executable, "-m", "hub.cli", "doctor", "--json", "--data-dir", str(data),
         "--http-listen", "127.0.0.1:0", "--link-listen", "127.0.0.1:0",
         "--enroll-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    document = json.loads(out.stdout)
    assert document["ok"] is False
    failed = [f for f in document["findings"] if f["verdict"] == "fail"]
    assert [f["check"] for f in failed] == ["admin_token.strength"]
    assert failed[0]["fix"] and failed[0]["cause"]


# ------------------------------------------------------------------ mc-sidecar doctor


def sidecar_input(tmp_path: Path, **changes: object) -> SidecarDoctorInput:
    given = SidecarDoctorInput(
        hub=HostPort("127.0.0.1", free_port()),
        state_dir=tmp_path / "state",
        openclaw_config=tmp_path / "openclaw" / "openclaw.json",
        workspace_root=tmp_path / "workspaces",
        agent_api_listen=HostPort("127.0.0.1", free_port()),
        insecure_dev=False,
        environ={"PATH": str(tmp_path / "no-bin")},
    )
    return dataclasses.replace(given, **changes)  # type: ignore[arg-type]


def write_openclaw(path: Path, text: str | None = None, *, port: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "gateway": {"mode": "local", "port": port or free_port(),
                    "auth": {"mode": "token", "token": "t" * 32}},
    }  # fmt: skip
    write_atomic_text = text if text is not None else json.dumps(document)
    write_file_atomic(path, write_atomic_text.encode())


async def sidecar_report(given: SidecarDoctorInput) -> Report:
    return await SidecarDoctor(given, SidecarPolicy(gateway_timeout_s=2, hub_timeout_s=2)).run()


async def test_a_broken_config_file_fails_with_the_json5_fix(tmp_path: Path) -> None:
    given = sidecar_input(tmp_path)
    write_openclaw(given.openclaw_config, '{\n  "gateway": {"port": 18789,,\n}')
    report = await sidecar_report(given)
    assert report.verdict("openclaw.config") is Verdict.FAIL
    text = only(report, "openclaw.config")
    assert "JSON5" in text and "last-good" in text


async def test_a_stopped_gateway_and_a_stopped_hub_fail_with_what_to_start(tmp_path: Path) -> None:
    given = sidecar_input(tmp_path)
    write_openclaw(given.openclaw_config)  # a port where no gateway listens
    report = await sidecar_report(given)
    assert report.verdict("gateway.reachable") is Verdict.FAIL
    assert "openclaw gateway run" in only(report, "gateway.reachable")
    assert report.verdict("hub.reachable") is Verdict.FAIL
    assert "mc-hub runs there" in only(report, "hub.reachable")
    assert report.verdict("agent_api.port") is Verdict.WARN  # the sidecar is not running
    assert report.exit_code == 1


async def test_an_enrolled_sidecar_reaches_its_hub_over_mtls_and_the_clock_is_checked(
    tmp_path: Path,
) -> None:
    from sidecar.link.enrollment import enroll

    config = dataclasses.replace(
        hub_config(tmp_path / "hub"), insecure_dev=False, enroll_listen=HostPort("127.0.0.1", 0)
    )
    hub = Hub(config)
    addresses = await hub.start()
    try:
        assert addresses.enroll is not None
        issued = await hub.gateways.join_token(None, ttl_s=600, uses=1)
        state = tmp_path / "state"
        await enroll(addresses.enroll, issued.join_string, state)
        given = sidecar_input(tmp_path, hub=addresses.link)
        write_openclaw(given.openclaw_config)
        report = await sidecar_report(given)
        assert report.verdict("link.certificate") is Verdict.OK
        assert report.verdict("hub.reachable") is Verdict.OK, only(report, "hub.reachable")
        assert report.verdict("hub.clock_skew") is Verdict.WARN  # never connected yet
        local = LocalState(state / "state.sqlite3")
        local.record_hub_clock(-130.0, time.time())
        local.close()
        report = await sidecar_report(given)
        assert report.verdict("hub.clock_skew") is Verdict.FAIL
        assert "timedatectl set-ntp true" in only(report, "hub.clock_skew")
    finally:
        await hub.stop()


async def test_an_expired_certificate_and_loose_modes_fail(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", revocations=Revocations())
    request = new_key_request()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    cert = ca.sign_client_csr(request.csr_pem, "gw-exp", dt.timedelta(days=30), now=past)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    write_file_atomic(state / CA_FILE, ca.certificate_pem, 0o644)
    write_file_atomic(state / IDENTITY_FILE, request.key_pem + cert)
    workspace = tmp_path / "workspaces" / "workspace-mc-a"
    workspace.mkdir(parents=True)
    (workspace / ".mc-agent-token").write_text("secret\n")
    (workspace / ".mc-agent-token").chmod(0o644)
    local = LocalState(state / "state.sqlite3")
    local.record_applied(1, upsert=[AgentState("mc-a", 1, str(workspace), {})])
    local.close()
    given = sidecar_input(tmp_path)
    write_openclaw(given.openclaw_config)
    report = await sidecar_report(given)
    assert report.verdict("link.certificate") is Verdict.FAIL
    assert "expired" in only(report, "link.certificate")
    assert "mc-hub gateway join-token gw-exp" in only(report, "link.certificate")
    assert report.verdict("files.modes") is Verdict.FAIL
    assert "chmod 600" in only(report, "files.modes")
    # The managed agent has no entry in openclaw.json.
    assert report.verdict("openclaw.managed_entries") is Verdict.FAIL
    assert "mc-a" in only(report, "openclaw.managed_entries")


async def test_an_unwritable_workspace_root_a_taken_api_port_and_two_installs(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the workspace root's parent should be")
    bins = []
    for name in ("a", "b"):
        directory = tmp_path / name / "bin"
        directory.mkdir(parents=True)
        exe = directory / "openclaw"
        exe.write_text("#!/bin/sh\necho OpenClaw\n")
        exe.chmod(0o755)
        bins.append(str(directory))
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        given = sidecar_input(
            tmp_path,
            workspace_root=blocker / "workspaces",
            agent_api_listen=HostPort("127.0.0.1", taken.getsockname()[1]),
            environ={"PATH": os.pathsep.join(bins)},
        )
        write_openclaw(given.openclaw_config)
        report = await sidecar_report(given)
    finally:
        taken.close()
    assert report.verdict("workspace.root") is Verdict.FAIL
    assert "--workspace-root" in only(report, "workspace.root")
    assert report.verdict("agent_api.port") is Verdict.FAIL
    assert "--agent-api-listen" in only(report, "agent_api.port")
    assert report.verdict("openclaw.installs") is Verdict.WARN
    assert all(b in only(report, "openclaw.installs") for b in bins)


def test_the_sidecar_cli_runs_doctor_and_exits_1_on_a_failure(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "doctor", "--json", "--state-dir",
         str(tmp_path / "s"), "--openclaw-config", str(tmp_path / "missing.json"),
         "--hub", f"127.0.0.1:{free_port()}", "--agent-api-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    document = json.loads(out.stdout)
    checks = {f["check"]: f["verdict"] for f in document["findings"]}
    assert checks["openclaw.config"] == "fail"
