"""Gateway administration: create (with a join token), new join tokens, delete (revoke)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from hub.link.server import SessionRegistry
from hub.pki.enrollment import CertificateIssuer, IssuedToken, Revocations
from hub.store.gateways import GatewayRow, GatewayStore
from missioncontrol.log import get_logger

log = get_logger("hub.gateways")


class EnrollmentUnavailable(Exception):
    """Join tokens need the hub's mutual-TLS mode (it is running with --insecure-dev)."""


@dataclass(frozen=True)
class CreatedGateway:
    gateway: GatewayRow
    token: IssuedToken | None  # None in --insecure-dev mode


class GatewayService:
    def __init__(
        self,
        store: GatewayStore,
        registry: SessionRegistry,
        revocations: Revocations,
        issuer: CertificateIssuer | None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.revocations = revocations
        self.issuer = issuer
        self._reloads: set[asyncio.Task[None]] = set()

    async def create(self, name: str, *, workspace_root: str | None = None) -> CreatedGateway:
        gateway = await self.store.create_gateway(
            str(uuid.uuid4()), name, workspace_root=workspace_root
        )
        token = await self.issuer.mint_join_token(gateway.id) if self.issuer else None
        return CreatedGateway(gateway, token)

    async def join_token(
        self,
        gateway_id: str | None,
        *,
        ttl_s: float,
        uses: int,
        labels: Mapping[str, str] | None = None,
    ) -> IssuedToken:
        if self.issuer is None:
            raise EnrollmentUnavailable(
                "join tokens need mutual TLS; this hub runs with --insecure-dev, where a "
                "sidecar connects with `mc-sidecar run --insecure-dev --gateway-id ID`"
            )
        return await self.issuer.mint_join_token(gateway_id, ttl_s=ttl_s, uses=uses, labels=labels)

    async def delete(self, gateway_id: str) -> None:
        """Delete the gateway, revoke its certificates and close its stream at once (on
        whichever hub holds it: `gateway_deleted` runs on every hub once it commits)."""
        serials = await self.store.delete_gateway(gateway_id)
        self.revocations.add(serials)
        log.info("gateway.deleted", gateway_id=gateway_id, revoked=len(serials))

    def gateway_deleted(self, gateway_id: str) -> None:
        """A GATEWAY_DELETED notice (from any hub): the stream this hub holds for the
        gateway, if any, ends, and the revoked serials are read again (its certificates
        are refused here too)."""
        task = asyncio.create_task(self.revocations.load(self.store), name="revocations-load")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        session = self.registry.get(gateway_id)
        if session is not None:
            session.close(
                "gateway deleted on the hub; its certificate is revoked",
                grpc.StatusCode.UNAUTHENTICATED,
            )
