"""Who is on the other end of a Link stream, and whether the hub accepts them.

With `require_client_auth=True`, grpc has already checked during the handshake
that the client certificate chains to the hub CA and is within its validity
window. What grpc cannot know is the rest, checked here in one place: the
certificate must name a gateway in the `mc://gateway/<id>` scheme, that gateway
must be the one the Hello claims, the serial must not be revoked, and (for a
stream that outlives its certificate) it must not have expired since.

grpc.aio exposes the verified peer through `context.auth_context()`, a mapping
of bytes lists; `x509_pem_cert` holds the leaf certificate as PEM.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import grpc

from missioncontrol.pki import CertIdentity, CertificateIdentityError, certificate_identity


class PeerRejectedError(Exception):
    """The peer may not use the Link. `code` is machine-readable; abort with `grpc_status`."""

    code = "peer_rejected"
    grpc_status = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, message: str, *, code: str, unauthenticated: bool = False) -> None:
        super().__init__(message)
        self.code = code
        if unauthenticated:
            self.grpc_status = grpc.StatusCode.UNAUTHENTICATED


def peer_identity(context: grpc.aio.ServicerContext) -> CertIdentity | None:
    """The gateway identity of the verified client certificate, or None when there is none.

    None means the connection carried no client certificate (an insecure or
    server-only TLS port) or one outside the Mission Control identity scheme.
    """
    pems = list(context.auth_context().get("x509_pem_cert") or ())
    if not pems:
        return None
    try:
        return certificate_identity(pems[0])
    except (CertificateIdentityError, ValueError):
        return None


def authorize_peer(
    identity: CertIdentity | None,
    hello_gateway_id: str,
    *,
    is_revoked: Callable[[int], bool],
    now: dt.datetime | None = None,
) -> CertIdentity:
    """Accept the peer for `hello_gateway_id` or raise PeerRejectedError saying why and the fix."""
    now = now or dt.datetime.now(dt.UTC)
    if identity is None:
        raise PeerRejectedError(
            "no gateway client certificate on this connection; enroll the sidecar with "
            "`mc-sidecar enroll --hub HOST:PORT --token T` and connect with its certificate",
            code="peer_no_certificate",
            unauthenticated=True,
        )
    if identity.gateway_id != hello_gateway_id:
        raise PeerRejectedError(
            f"Hello says gateway {hello_gateway_id!r} but the client certificate names gateway "
            f"{identity.gateway_id!r}; fix the sidecar's configured gateway id, or re-enroll with "
            "`mc-sidecar enroll --hub HOST:PORT --token T --force`",
            code="peer_gateway_mismatch",
        )
    if identity.expired(now):
        raise PeerRejectedError(
            f"client certificate {identity.serial:x} of gateway {identity.gateway_id} expired at "
            f"{identity.not_after.isoformat()}; re-enroll with "
            "`mc-sidecar enroll --hub HOST:PORT --token T --force`",
            code="peer_certificate_expired",
            unauthenticated=True,
        )
    if is_revoked(identity.serial):
        raise PeerRejectedError(
            # The hub revokes certificates only when their gateway is deleted.
            f"client certificate {identity.serial:x} of gateway {identity.gateway_id} was revoked "
            "when the gateway was deleted on the hub; to bring this host back, create a gateway "
            "again (POST /api/v1/gateways, or `mc-hub gateway join-token` for a fleet token) and "
            "enroll with its join token: `mc-sidecar enroll --hub HOST:PORT --token T --force`",
            code="peer_certificate_revoked",
            unauthenticated=True,
        )
    return identity
