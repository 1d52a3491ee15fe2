"""Enrollment and the mutual-TLS link, for real: CA, join tokens, gRPC over TLS on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hub.app import Hub
from hub.pki.ca import CertificateAuthority
from hub.pki.enrollment import Revocations
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc
from protos.contract import LINK_PROTOCOL
from sidecar.app import Sidecar
from sidecar.link.enrollment import EnrollmentError, enroll, read_hub_link
from sidecar.link.identity import load_identity, new_key_request, save_identity
from tests.support import RecordingGateway, api, fast_backoff, hub_config, sidecar_config, wait_for


@pytest.fixture
async def tls_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    config = dataclasses.replace(hub_config(tmp_path / "hub"), insecure_dev=False)
    hub = Hub(config)
    await hub.start()
    yield hub
    await hub.stop()


async def new_gateway(hub: Hub, name: str = "host-1") -> dict[str, Any]:
    status, body = await api(hub, "POST", "/api/v1/gateways", {"name": name})
    assert status == 201, body
    assert body["join_token"].count("@sha256:") == 1
    assert body["enroll_command"].startswith("mc-sidecar enroll --hub 127.0.0.1:")
    return body


def enroll_address(hub: Hub):
    assert hub.addresses is not None and hub.addresses.enroll is not None
    return hub.addresses.enroll


def tls_sidecar(tmp_path: Path, state_dir: Path, gateway: RecordingGateway) -> Sidecar:
    link = read_hub_link(state_dir)
    assert link is not None
    config = dataclasses.replace(
        sidecar_config(state_dir, link), insecure_dev=False, workspace_root=tmp_path / "workspaces"
    )
    sidecar = Sidecar(config, gateway=gateway, link_backoff=fast_backoff())
    return sidecar


def state_files(state_dir: Path) -> list[str]:
    return sorted(p.name for p in state_dir.iterdir()) if state_dir.exists() else []


async def test_enroll_then_connect_over_mutual_tls(tls_hub: Hub, tmp_path: Path) -> None:
    created = await new_gateway(tls_hub)
    state = tmp_path / "sc"
    started = time.perf_counter()
    done = await enroll(enroll_address(tls_hub), created["join_token"], state)
    print(f"enrollment took {(time.perf_counter() - started) * 1000:.0f} ms")
    assert done.gateway_id == created["id"]
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "link-identity.pem").stat().st_mode & 0o777 == 0o600  # the private key
    for name in state_files(state):
        assert (state / name).stat().st_mode & 0o022 == 0, name  # nothing writable by others

    sidecar = tls_sidecar(tmp_path, state, RecordingGateway())
    await sidecar.start()
    try:
        await wait_for(lambda: tls_hub.registry.get(created["id"]), what="mTLS stream open")
        status, listed = await api(tls_hub, "GET", f"/api/v1/gateways/{created['id']}")
        assert status == 200 and listed["connected"] is True
        assert "join_token" not in listed  # secrets are never read back
    finally:
        await sidecar.stop()


async def test_rerunning_enroll_on_an_enrolled_host_does_nothing_unless_forced(
    tls_hub: Hub, tmp_path: Path
) -> None:
    state = tmp_path / "sc"
    await enroll(enroll_address(tls_hub), (await new_gateway(tls_hub))["join_token"], state)
    before = load_identity(state).certificate_pem
    second = await new_gateway(tls_hub, "host-2")
    with pytest.raises(EnrollmentError, match="already enrolled"):
        await enroll(enroll_address(tls_hub), second["join_token"], state)
    assert load_identity(state).certificate_pem == before
    done = await enroll(enroll_address(tls_hub), second["join_token"], state, force=True)
    assert done.gateway_id == second["id"]


@pytest.mark.parametrize(
    "case", ["expired", "reused", "other_gateway", "wrong_secret", "wrong_pin"]
)
async def test_bad_join_tokens_are_refused_and_leave_nothing_behind(
    tls_hub: Hub, tmp_path: Path, case: str
) -> None:
    a = await new_gateway(tls_hub, "a")
    b = await new_gateway(tls_hub, "b")
    join = a["join_token"]
    kwargs: dict[str, Any] = {}
    phrase = {
        "expired": "expired",
        "reused": "already used",
        "other_gateway": "is for gateway",
        "wrong_secret": "not recognised",
        "wrong_pin": "fingerprint",
    }[case]
    if case == "expired":
        status, token = await api(
            tls_hub, "POST", f"/api/v1/gateways/{a['id']}/join-tokens", {"ttl_s": 0.05}
        )
        assert status == 201
        join = token["join_token"]
        await asyncio.sleep(0.1)
    elif case == "reused":
        await enroll(enroll_address(tls_hub), join, tmp_path / "first")
    elif case == "other_gateway":
        kwargs["gateway_id"] = b["id"]
    elif case == "wrong_secret":
        token_id, rest = join.split(".", 1)
        join = f"{token_id}.{'x' * 32}@{rest.split('@', 1)[1]}"
    elif case == "wrong_pin":
        join = join.split("@", 1)[0] + "@sha256:" + "0" * 64
    gateways_before = await tls_hub.store.list_gateways()
    state = tmp_path / "sc"
    with pytest.raises(EnrollmentError) as refused:
        await enroll(enroll_address(tls_hub), join, state, **kwargs)
    assert phrase in str(refused.value)
    assert state_files(state) == []  # no key, no certificate, no hub address
    gateways_after = await tls_hub.store.list_gateways()
    assert [(g.id, g.connected) for g in gateways_after[0]] == [
        (g.id, g.connected) for g in gateways_before[0]
    ]


async def _raw_tls_stream(
    hub: Hub, credentials: grpc.ChannelCredentials, hello: pb.Hello
) -> tuple[grpc.StatusCode, str]:
    assert hub.addresses is not None
    async with grpc.aio.secure_channel(str(hub.addresses.link), credentials) as channel:
        call = pb_grpc.LinkStub(channel).Connect()
        try:
            await call.write(pb.SidecarMessage(hello=hello))
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return await call.code(), await call.details()


def _hello(gateway_id: str) -> pb.Hello:
    return pb.Hello(gateway_id=gateway_id, link_protocol=LINK_PROTOCOL, sidecar_version=VERSION)


def _credentials(hub: Hub, key_pem: bytes, cert_pem: bytes) -> grpc.ChannelCredentials:
    assert hub.ca is not None
    return grpc.ssl_channel_credentials(
        root_certificates=hub.ca.certificate_pem, private_key=key_pem, certificate_chain=cert_pem
    )


async def test_hello_naming_another_gateway_is_refused(tls_hub: Hub, tmp_path: Path) -> None:
    a = await new_gateway(tls_hub, "a")
    b = await new_gateway(tls_hub, "b")
    state = tmp_path / "sc"
    await enroll(enroll_address(tls_hub), a["join_token"], state)
    identity = load_identity(state)
    code, details = await _raw_tls_stream(
        tls_hub, _credentials(tls_hub, identity.key_pem, identity.certificate_pem), _hello(b["id"])
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert f"client certificate names gateway {a['id']!r}" in details
    row = await tls_hub.store.get_gateway(b["id"])
    assert row is not None and row.sidecar_version is None  # b untouched


@pytest.mark.parametrize("case", ["other_ca", "expired", "none"])
async def test_certificates_the_hub_did_not_issue_or_that_expired_cannot_connect(
    tls_hub: Hub, tmp_path: Path, case: str
) -> None:
    a = await new_gateway(tls_hub, "a")
    request = new_key_request("test")
    if case == "other_ca":
        other = CertificateAuthority.load_or_create(
            tmp_path / "other-ca", revocations=Revocations()
        )
        cert = other.sign_client_csr(request.csr_pem, a["id"])
    elif case == "expired":
        assert tls_hub.ca is not None
        cert = tls_hub.ca.sign_client_csr(
            request.csr_pem,
            a["id"],
            dt.timedelta(hours=1),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2),
        )
    if case == "none":
        assert tls_hub.ca is not None
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_hub.ca.certificate_pem)
    else:
        credentials = _credentials(tls_hub, request.key_pem, cert)
    code, _ = await _raw_tls_stream(tls_hub, credentials, _hello(a["id"]))
    # Refused in the TLS handshake: the client sees the connection fail.
    assert code == grpc.StatusCode.UNAVAILABLE
    row = await tls_hub.store.get_gateway(a["id"])
    assert row is not None and row.sidecar_version is None and not row.connected


async def test_deleting_a_gateway_revokes_its_certificate_and_closes_its_stream(
    tls_hub: Hub, tmp_path: Path
) -> None:
    created = await new_gateway(tls_hub)
    state = tmp_path / "sc"
    await enroll(enroll_address(tls_hub), created["join_token"], state)
    sidecar = tls_sidecar(tmp_path, state, RecordingGateway())
    await sidecar.start()
    try:
        await wait_for(lambda: tls_hub.registry.get(created["id"]), what="connected")
        status, _ = await api(tls_hub, "DELETE", f"/api/v1/gateways/{created['id']}")
        assert status == 200
        await wait_for(lambda: not sidecar.link.status.connected, what="stream closed at once")
        identity = load_identity(state)
        assert tls_hub.revocations.is_revoked(identity.serial)
        code, details = await _raw_tls_stream(
            tls_hub,
            _credentials(tls_hub, identity.key_pem, identity.certificate_pem),
            _hello(created["id"]),
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in details
        assert "revoked" in sidecar.link.status.last_error  # the sidecar was told why
        await wait_for(
            lambda: tls_hub.registry.get(created["id"]) is None, what="session forgotten"
        )
    finally:
        await sidecar.stop()


async def test_certificate_is_renewed_on_the_live_stream_without_reconnecting(
    tmp_path: Path,
) -> None:
    lifetime_s = 6.0
    config = dataclasses.replace(
        hub_config(tmp_path / "hub"), insecure_dev=False, cert_lifetime_days=lifetime_s / 86400
    )
    hub = Hub(config)
    await hub.start()
    try:
        created = await new_gateway(hub)
        state = tmp_path / "sc"
        await enroll(enroll_address(hub), created["join_token"], state)
        first = load_identity(state)
        sidecar = tls_sidecar(tmp_path, state, RecordingGateway())
        assert sidecar.renewal is not None
        sidecar.renewal.min_interval_s = 1.0
        await sidecar.start()
        try:
            await wait_for(lambda: hub.registry.get(created["id"]), what="connected")
            renewed = await wait_for(
                lambda: load_identity(state).serial != first.serial and load_identity(state),
                timeout_s=lifetime_s,
                interval_s=0.1,
                what="certificate renewed",
            )
            assert renewed.not_after >= first.not_after
            await asyncio.sleep(max(0.0, first.not_after.timestamp() - time.time()) + 0.5)
            # Past the first certificate's expiry the same stream is still open.
            assert sidecar.link.streams_opened == 1 and sidecar.link.status.connected
            sequence = await hub.store.enqueue_command(
                created["id"],
                pb.Command(wake_agent=pb.WakeAgent(agent_id="mc-x", generation=1, message="hi")),
            )
            await wait_for(lambda: _acked(hub, created["id"], sequence), what="still served")
        finally:
            await sidecar.stop()
    finally:
        await hub.stop()


async def _acked(hub: Hub, gateway_id: str, sequence: int) -> bool:
    row = await hub.store.command_status(gateway_id, sequence)
    return bool(row and row["acked_at"])


def test_saved_identity_files_are_private(tmp_path: Path) -> None:
    request = new_key_request("t")
    other = CertificateAuthority.load_or_create(tmp_path / "ca", revocations=Revocations())
    cert = other.sign_client_csr(request.csr_pem, "gw-1")
    save_identity(tmp_path / "state", request.key_pem, cert, other.certificate_pem)
    assert (tmp_path / "state" / "link-identity.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
