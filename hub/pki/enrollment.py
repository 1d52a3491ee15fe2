"""Enrollment and certificates for the mutual-TLS link.

A join token (`id.secret`, only a keyed hash stored) buys one client
certificate naming one gateway. The Enrollment service runs on its own
server-TLS port (a sidecar has no certificate yet); renewal rides the
established Link. Revocation is a set of serials kept in memory, loaded from
the store and extended when a gateway is deleted, so the per-stream check costs
a set lookup.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from hub.link.bounds import bound
from hub.pki import join_tokens as join_tokens
from hub.pki.ca import CertificateAuthority, CSRRejectedError
from hub.store.errors import StoreError
from hub.store.gateways import GatewayStore
from missioncontrol.log import get_logger
from missioncontrol.pki import certificate_identity
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc

log = get_logger("hub.pki.enrollment")


class Revocations:
    """Revoked certificate serials (the CA's RevocationList), backed by the store."""

    def __init__(self) -> None:
        self._serials: set[int] = set()

    async def load(self, store: GatewayStore) -> None:
        self._serials = await store.revoked_serials()

    def is_revoked(self, serial: int) -> bool:
        return serial in self._serials

    def add(self, serials: list[int]) -> None:
        self._serials.update(serials)


@dataclass(frozen=True)
class IssuedToken:
    join_string: str  # what the operator copies: id.secret@sha256:<CA fingerprint>
    token_id: str
    expires_at: float
    max_uses: int
    labels: Mapping[str, str] = field(default_factory=dict)  # what it gives each gateway


class CertificateIssuer:
    """Signs sidecar CSRs and records what it issued."""

    def __init__(
        self, store: GatewayStore, ca: CertificateAuthority, hub_key: bytes, lifetime: dt.timedelta
    ) -> None:
        self.store = store
        self.ca = ca
        self.hub_key = hub_key
        self.lifetime = lifetime

    async def mint_join_token(
        self,
        gateway_id: str | None,
        *,
        ttl_s: float = join_tokens.DEFAULT_TTL_S,
        uses: int = 1,
        labels: Mapping[str, str] | None = None,
    ) -> IssuedToken:
        raw, record = join_tokens.mint(
            self.hub_key, gateway_id, ttl_s=ttl_s, uses=uses, labels=labels, now=time.time()
        )
        await self.store.add_join_token(record)
        return IssuedToken(
            join_tokens.join_string(raw, self.ca.ca_fingerprint()),
            record.token_id,
            record.expires_at,
            record.max_uses,
            dict(record.labels),
        )

    async def enroll(self, request: pb.EnrollRequest) -> tuple[str, bytes]:
        """Check the token, sign the CSR, spend the token: (gateway id, certificate PEM)."""
        raw = request.join_token.split("@", 1)[0].strip()
        record = await self.store.join_token(join_tokens.token_id_of(raw))
        grant = join_tokens.check(
            self.hub_key, raw, record, now=time.time(), gateway_id=request.gateway_id or None
        )
        create_name: str | None = None
        gateway_id = grant.gateway_id
        if not grant.bound:
            if gateway_id is not None and await self.store.get_gateway(gateway_id) is not None:
                raise join_tokens.JoinTokenWrongGatewayError(
                    f"a fleet join token cannot take over existing gateway {gateway_id}; "
                    f"create a token for it with `mc-hub gateway join-token {gateway_id}`"
                )
            gateway_id = gateway_id or str(uuid.uuid4())
            create_name = request.hostname or gateway_id
        assert gateway_id is not None
        # Sign before writing: a bad CSR leaves the token unspent and no gateway row.
        certificate = self.ca.sign_client_csr(request.csr_pem, gateway_id, self.lifetime)
        identity = certificate_identity(certificate)
        await self.store.enroll(
            grant.token_id,
            gateway_id,
            create_name=create_name,
            serial=identity.serial,
            not_after=identity.not_after.timestamp(),
        )
        log.info(
            "gateway.enrolled",
            gateway_id=gateway_id,
            token_id=grant.token_id,
            hostname=request.hostname,
            created=create_name is not None,
        )
        return gateway_id, certificate

    async def renew(self, gateway_id: str, csr_pem: bytes) -> bytes:
        certificate = self.ca.sign_client_csr(csr_pem, gateway_id, self.lifetime)
        identity = certificate_identity(certificate)
        await self.store.record_certificate(
            gateway_id, identity.serial, identity.not_after.timestamp()
        )
        log.info(
            "gateway.certificate.renewed",
            gateway_id=gateway_id,
            serial=f"{identity.serial:x}",
            not_after=identity.not_after.isoformat(),
        )
        return certificate


class EnrollmentService(pb_grpc.EnrollmentServicer):
    def __init__(self, issuer: CertificateIssuer, *, link_port: int) -> None:
        self.issuer = issuer
        self.link_port = link_port

    async def Enroll(  # gRPC method name
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnrollResponse:
        bound(request)  # the host name becomes the new gateway's name
        try:
            gateway_id, certificate = await self.issuer.enroll(request)
        except join_tokens.JoinTokenError as exc:
            log.warning("gateway.enroll.refused", error=str(exc), peer=context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except (CSRRejectedError, ValueError, StoreError) as exc:
            log.warning("gateway.enroll.refused", error=str(exc), peer=context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.EnrollResponse(
            gateway_id=gateway_id,
            certificate_pem=certificate,
            ca_bundle_pem=self.issuer.ca.certificate_pem,
            link_port=self.link_port,
        )
