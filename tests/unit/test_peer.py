"""Accepting a Link peer: certificate identity against the Hello, expiry and revocation."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from hub.link.peer import PeerRejectedError, authorize_peer
from missioncontrol.pki import CertIdentity

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
IDENTITY = CertIdentity(
    gateway_id="gw-a",
    serial=0xABC,
    not_before=NOW - dt.timedelta(days=1),
    not_after=NOW + dt.timedelta(days=29),
)


def never_revoked(serial: int) -> bool:
    return False


def test_matching_valid_unrevoked_certificate_is_accepted():
    assert authorize_peer(IDENTITY, "gw-a", is_revoked=never_revoked, now=NOW) == IDENTITY


def test_hello_for_another_gateway_is_refused():
    with pytest.raises(PeerRejectedError) as refused:
        authorize_peer(IDENTITY, "gw-b", is_revoked=never_revoked, now=NOW)
    assert refused.value.code == "peer_gateway_mismatch"
    assert refused.value.grpc_status == grpc.StatusCode.PERMISSION_DENIED
    assert "Hello says gateway 'gw-b' but the client certificate names gateway 'gw-a'" in str(
        refused.value
    )


def test_connection_without_certificate_is_unauthenticated():
    with pytest.raises(PeerRejectedError) as refused:
        authorize_peer(None, "gw-a", is_revoked=never_revoked, now=NOW)
    assert refused.value.grpc_status == grpc.StatusCode.UNAUTHENTICATED
    assert "mc-sidecar enroll" in str(refused.value)


def test_certificate_that_expired_during_the_stream_is_refused():
    with pytest.raises(PeerRejectedError, match="expired at") as refused:
        authorize_peer(IDENTITY, "gw-a", is_revoked=never_revoked, now=IDENTITY.not_after)
    assert refused.value.code == "peer_certificate_expired"


def test_revoked_certificate_is_refused():
    with pytest.raises(PeerRejectedError, match="abc of gateway gw-a was revoked") as refused:
        authorize_peer(IDENTITY, "gw-a", is_revoked={0xABC}.__contains__, now=NOW)
    assert refused.value.code == "peer_certificate_revoked"


def test_a_revoked_sidecar_is_told_to_create_its_gateway_again_not_to_reuse_it():
    with pytest.raises(PeerRejectedError) as refused:
        authorize_peer(IDENTITY, "gw-a", is_revoked={0xABC}.__contains__, now=NOW)
    message = str(refused.value)
    assert "deleted on the hub" in message and "create a gateway again" in message
    assert "join-token gw-a" not in message  # that gateway no longer exists
