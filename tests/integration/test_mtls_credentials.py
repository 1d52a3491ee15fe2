"""The Link's TLS building blocks end to end: a real grpc.aio server and clients on loopback.

The server here stands in for the hub: one grpc.aio server with a mutual-TLS port
(Link) and a server-TLS port (Enrollment), as `hub.ca` prescribes, serving two tiny
methods with raw-bytes payloads instead of the project's protos:

    Whoami(hello gateway id or empty) -> "<gateway id> <serial hex>" | "none"
    Enroll(join token "\\n" CSR PEM)   -> client certificate PEM
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from hub.link.peer import PeerRejectedError, authorize_peer, peer_identity
from hub.pki import join_tokens as join_tokens
from hub.pki.ca import CertificateAuthority
from hub.pki.enrollment import Revocations
from hub.pki.join_tokens import JoinTokenError, JoinTokenRecord
from missioncontrol.netaddr import HostPort
from missioncontrol.pki import JoinString, certificate_identity, load_certificate
from sidecar.link.identity import (
    HubPinError,
    HubUnreachableError,
    Identity,
    check_can_enroll,
    enroll_channel_credentials,
    load_identity,
    new_key_request,
    save_identity,
)

SERVICE = "mc.test.Probe"
WHOAMI = f"/{SERVICE}/Whoami"
ENROLL = f"/{SERVICE}/Enroll"
HUB_KEY = b"h" * 32
CALL_TIMEOUT_S = 5.0
# A fresh connection per channel, even for identical targets and options.
FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class FakeHub:
    ca: CertificateAuthority
    link: HostPort
    enrollment: HostPort
    insecure: HostPort
    server: grpc.aio.Server
    tokens: dict[str, JoinTokenRecord] = field(default_factory=dict)
    enroll_calls: int = 0
    peers: set[str] = field(default_factory=set)

    def mint(self, gateway_id: str | None) -> str:
        raw, record = join_tokens.mint(HUB_KEY, gateway_id, now=time.time())
        self.tokens[record.token_id] = record
        return join_tokens.join_string(raw, self.ca.ca_fingerprint())


async def start_hub(
    ca_dir: Path,
    bind_host: str = "127.0.0.1",
    cert_host: str = "127.0.0.1",
    clock: Callable[[], dt.datetime] | None = None,
) -> FakeHub:
    ca = CertificateAuthority.load_or_create(ca_dir, revocations=Revocations())
    server = grpc.aio.server()
    started: FakeHub

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started.peers.add(context.peer())
        identity = peer_identity(context)
        if request:  # stands in for a Hello naming a gateway
            try:
                authorize_peer(identity, request.decode(), is_revoked=ca.is_revoked)
            except PeerRejectedError as exc:
                await context.abort(exc.grpc_status, str(exc))
        if identity is None:
            return b"none"
        return f"{identity.gateway_id} {identity.serial:x}".encode()

    async def enroll(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started.enroll_calls += 1
        token, _, csr_pem = request.partition(b"\n")
        try:
            record = started.tokens.get(join_tokens.token_id_of(token.decode()))
            grant = join_tokens.check(HUB_KEY, token.decode(), record, now=time.time())
        except JoinTokenError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        assert record is not None and grant.gateway_id is not None
        started.tokens[record.token_id] = record.used_once()
        return ca.sign_client_csr(csr_pem, grant.gateway_id)

    handlers = {
        "Whoami": grpc.unary_unary_rpc_method_handler(whoami),
        "Enroll": grpc.unary_unary_rpc_method_handler(enroll),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    link_port = server.add_secure_port(
        f"{bind_host}:0", ca.link_server_credentials(cert_host, clock=clock)
    )
    enroll_port = server.add_secure_port(
        f"{bind_host}:0", ca.enrollment_server_credentials(cert_host, clock=clock)
    )
    insecure_port = server.add_insecure_port(f"{bind_host}:0")
    await server.start()
    started = FakeHub(
        ca=ca,
        link=HostPort(bind_host, link_port),
        enrollment=HostPort(bind_host, enroll_port),
        insecure=HostPort(bind_host, insecure_port),
        server=server,
    )
    return started


@pytest.fixture
async def fake_hub(tmp_path: Path) -> AsyncIterator[FakeHub]:
    started = await start_hub(tmp_path / "hub-ca")
    yield started
    await started.server.stop(None)


@pytest.fixture
def identity(fake_hub: FakeHub, tmp_path: Path) -> Identity:
    request = new_key_request("host-1")
    cert = fake_hub.ca.sign_client_csr(request.csr_pem, "gw-1")
    return save_identity(tmp_path / "sidecar", request.key_pem, cert, fake_hub.ca.certificate_pem)


def presented_leaf(target: HostPort) -> str:
    return ssl.get_server_certificate((target.host, target.port), timeout=CALL_TIMEOUT_S)


async def call(
    target: HostPort,
    credentials: grpc.ChannelCredentials | None,
    method: str = WHOAMI,
    payload: bytes = b"",
) -> bytes:
    if credentials is None:
        channel = grpc.aio.insecure_channel(str(target), options=FRESH_CONNECTION)
    else:
        channel = grpc.aio.secure_channel(str(target), credentials, options=FRESH_CONNECTION)
    async with channel:
        return await channel.unary_unary(method)(payload, timeout=CALL_TIMEOUT_S)


async def refused_code(
    target: HostPort, credentials: grpc.ChannelCredentials, payload: bytes = b""
) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(target, credentials, WHOAMI, payload)
    return refused.value.code()


# ------------------------------------------------------------------ the mTLS port


async def test_client_with_a_ca_signed_certificate_is_accepted_and_identified(
    fake_hub: FakeHub, identity: Identity
):
    answer = await call(fake_hub.link, identity.channel_credentials(), payload=b"gw-1")
    assert answer == f"gw-1 {identity.serial:x}".encode()


async def test_client_without_a_certificate_is_refused(fake_hub: FakeHub):
    server_only = grpc.ssl_channel_credentials(root_certificates=fake_hub.ca.certificate_pem)
    assert await refused_code(fake_hub.link, server_only) == grpc.StatusCode.UNAVAILABLE


async def test_client_with_a_certificate_from_another_ca_is_refused(
    fake_hub: FakeHub, tmp_path: Path
):
    stranger = CertificateAuthority.load_or_create(
        tmp_path / "stranger-ca", revocations=Revocations()
    )
    request = new_key_request()
    cert = stranger.sign_client_csr(request.csr_pem, "gw-1")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=fake_hub.ca.certificate_pem,  # trusts the real hub
        private_key=request.key_pem,
        certificate_chain=cert,
    )
    assert await refused_code(fake_hub.link, credentials) == grpc.StatusCode.UNAVAILABLE


async def test_client_with_an_expired_certificate_is_refused(fake_hub: FakeHub):
    request = new_key_request()
    last_month = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
    cert = fake_hub.ca.sign_client_csr(
        request.csr_pem, "gw-1", dt.timedelta(days=30), now=last_month
    )
    assert certificate_identity(cert).not_after < dt.datetime.now(dt.UTC)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=fake_hub.ca.certificate_pem,
        private_key=request.key_pem,
        certificate_chain=cert,
    )
    assert await refused_code(fake_hub.link, credentials) == grpc.StatusCode.UNAVAILABLE


async def test_hello_for_another_gateway_is_refused(fake_hub: FakeHub, identity: Identity):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(fake_hub.link, identity.channel_credentials(), payload=b"gw-2")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate names gateway 'gw-1'" in (refused.value.details() or "")


async def test_revoked_certificate_is_refused_at_hello(fake_hub: FakeHub, identity: Identity):
    assert isinstance(fake_hub.ca.revocations, Revocations)
    fake_hub.ca.revocations.add([certificate_identity(identity.certificate).serial])
    code = await refused_code(fake_hub.link, identity.channel_credentials(), b"gw-1")
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_link_served_on_the_enrollment_port_sees_no_identity(
    fake_hub: FakeHub, identity: Identity
):
    # The same server answers on both ports; without a client certificate the Hello
    # check refuses, so mounting Link there too would not open a hole.
    server_only = grpc.ssl_channel_credentials(root_certificates=fake_hub.ca.certificate_pem)
    assert await call(fake_hub.enrollment, server_only) == b"none"
    assert (
        await refused_code(fake_hub.enrollment, server_only, b"gw-1")
        == grpc.StatusCode.UNAUTHENTICATED
    )


async def test_hub_certificate_is_checked_by_the_client(fake_hub: FakeHub, tmp_path: Path):
    stranger = CertificateAuthority.load_or_create(
        tmp_path / "stranger-ca", revocations=Revocations()
    )
    trusting_another_hub = grpc.ssl_channel_credentials(root_certificates=stranger.certificate_pem)
    assert (
        await refused_code(fake_hub.enrollment, trusting_another_hub) == grpc.StatusCode.UNAVAILABLE
    )


# -------------------------------------------------- enrollment with a pinned hub CA


async def test_enroll_over_pinned_tls_then_connect_over_mtls(fake_hub: FakeHub, tmp_path: Path):
    join = JoinString.parse(fake_hub.mint("gw-9"))
    state_dir = tmp_path / "sidecar"
    check_can_enroll(state_dir, force=False)
    assert join.ca_fingerprint is not None

    credentials, ca_pem = await enroll_channel_credentials(fake_hub.enrollment, join.ca_fingerprint)
    assert ca_pem == fake_hub.ca.certificate_pem
    request = new_key_request("host-9")
    cert = await call(
        fake_hub.enrollment, credentials, ENROLL, join.token.encode() + b"\n" + request.csr_pem
    )
    save_identity(state_dir, request.key_pem, cert, ca_pem)

    identity = load_identity(state_dir)
    assert identity.gateway_id == "gw-9"
    answer = await call(fake_hub.link, identity.channel_credentials(), payload=b"gw-9")
    assert answer.split()[0] == b"gw-9"


async def test_join_token_is_single_use_over_the_wire(fake_hub: FakeHub):
    join = JoinString.parse(fake_hub.mint("gw-9"))
    assert join.ca_fingerprint is not None
    credentials, _ = await enroll_channel_credentials(fake_hub.enrollment, join.ca_fingerprint)
    payload = join.token.encode() + b"\n" + new_key_request().csr_pem
    await call(fake_hub.enrollment, credentials, ENROLL, payload)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(fake_hub.enrollment, credentials, ENROLL, payload)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "already used" in (refused.value.details() or "")


async def test_wrong_pin_is_refused_before_the_token_is_sent(fake_hub: FakeHub, tmp_path: Path):
    other_hub = CertificateAuthority.load_or_create(
        tmp_path / "other-hub-ca", revocations=Revocations()
    )
    with pytest.raises(HubPinError, match="presented no certificate with fingerprint"):
        await enroll_channel_credentials(fake_hub.enrollment, other_hub.ca_fingerprint())
    assert fake_hub.enroll_calls == 0


async def test_pin_names_the_fix_when_the_dialed_name_is_not_in_the_certificate(tmp_path: Path):
    # 127.0.0.2 is loopback too, but the certificate was issued for 127.0.0.1 only.
    try:
        probe = socket.create_server(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not usable on this host")
    probe.close()
    other = await start_hub(tmp_path / "ca", bind_host="127.0.0.2", cert_host="127.0.0.1")
    try:
        with pytest.raises(
            HubPinError, match=r"valid for 127\.0\.0\.1, ::1, localhost, not 127\.0\.0\.2"
        ):
            await enroll_channel_credentials(other.enrollment, other.ca.ca_fingerprint())
    finally:
        await other.server.stop(None)


async def test_unreachable_hub_is_reported_as_such(fake_hub: FakeHub):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]
    with pytest.raises(HubUnreachableError, match="cannot make a TLS connection"):
        await enroll_channel_credentials(
            HostPort("127.0.0.1", closed_port), fake_hub.ca.ca_fingerprint(), timeout_s=2
        )


async def test_reissued_server_certificate_is_served_without_a_restart(tmp_path: Path):
    now = [dt.datetime.now(dt.UTC)]
    rotating = await start_hub(tmp_path / "ca", clock=lambda: now[0])
    try:
        first = presented_leaf(rotating.enrollment)
        now[0] += dt.timedelta(days=61)  # less than 30 of its 90 days left
        second = presented_leaf(rotating.enrollment)
        assert second != first
        assert presented_leaf(rotating.enrollment) == second
        # Issued by the same CA, so clients that pin or trust the CA notice nothing.
        renewed = load_certificate(second.encode())
        renewed.verify_directly_issued_by(rotating.ca.certificate)
        assert renewed.not_valid_after_utc > now[0] + dt.timedelta(days=89)
    finally:
        await rotating.server.stop(None)


# ------------------------------------------------------------------------ the cost


async def test_cost_of_accepting_new_mtls_connections(
    fake_hub: FakeHub, identity: Identity, capsys: pytest.CaptureFixture[str]
):
    """New connection + handshake + first call, client and server in this one process."""
    connections = 200

    async def measure(
        target: HostPort, credentials: grpc.ChannelCredentials | None
    ) -> tuple[list[float], float]:
        await call(target, credentials)  # warm up code paths, not connections
        fake_hub.peers.clear()
        timings = []
        cpu_started = time.process_time()
        for _ in range(connections):
            started = time.perf_counter()
            await call(target, credentials)
            timings.append(time.perf_counter() - started)
        cpu_per_connection = (time.process_time() - cpu_started) / connections
        assert len(fake_hub.peers) == connections  # every call really came on a new connection
        return timings, cpu_per_connection

    mtls, mtls_cpu = await measure(fake_hub.link, identity.channel_credentials())
    plain, plain_cpu = await measure(fake_hub.insecure, None)

    def summary(timings: list[float], cpu: float) -> str:
        ms = sorted(t * 1000 for t in timings)
        return (
            f"mean {statistics.fmean(ms):.2f} ms, p50 {ms[len(ms) // 2]:.2f} ms, "
            f"p95 {ms[int(len(ms) * 0.95)]:.2f} ms, CPU (both sides) {cpu * 1000:.2f} ms"
        )

    with capsys.disabled():
        print(
            f"\n[mtls-accept] {connections} new connections + first unary call on loopback:"
            f"\n[mtls-accept]   mutual TLS (EC P-256, TLS 1.3): {summary(mtls, mtls_cpu)}"
            f"\n[mtls-accept]   insecure baseline:              {summary(plain, plain_cpu)}"
            f"\n[mtls-accept]   ratio mTLS / insecure (mean):   "
            f"{statistics.fmean(mtls) / statistics.fmean(plain):.1f}x"
        )
