"""The sidecar identity: key and CSR, storage and permissions, re-enrollment, renewal time."""

from __future__ import annotations

import datetime as dt
import random
import stat
from pathlib import Path

import pytest
from cryptography import x509

from hub.pki.ca import CertificateAuthority
from hub.pki.enrollment import Revocations
from missioncontrol.private_files import InsecurePermissionsError
from sidecar.link.identity import (
    CA_FILE,
    IDENTITY_FILE,
    AlreadyEnrolledError,
    CertificateExpiredError,
    InvalidIdentityError,
    NotEnrolledError,
    check_can_enroll,
    is_enrolled,
    load_identity,
    new_key_request,
    renewal_due_at,
    save_identity,
)

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "hub-ca", revocations=Revocations())


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "sidecar-state"


def enroll(ca: CertificateAuthority, state_dir: Path, gateway_id: str = "gw-1") -> None:
    request = new_key_request("host-1")
    cert = ca.sign_client_csr(request.csr_pem, gateway_id)
    save_identity(state_dir, request.key_pem, cert, ca.certificate_pem)


def test_key_request_is_p256_and_self_signed():
    request = new_key_request("host-1")
    csr = x509.load_pem_x509_csr(request.csr_pem)
    assert csr.is_signature_valid
    assert csr.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert csr.subject.rfc4514_string() == "CN=host-1"
    assert b"PRIVATE KEY" in request.key_pem


def test_saved_identity_is_private_and_loads_back(ca: CertificateAuthority, state_dir: Path):
    enroll(ca, state_dir)
    assert mode_of(state_dir) == 0o700
    assert mode_of(state_dir / IDENTITY_FILE) == 0o600
    assert (state_dir / CA_FILE).read_bytes() == ca.certificate_pem
    assert list(state_dir.glob(".*.tmp")) == []
    identity = load_identity(state_dir)
    assert identity.gateway_id == "gw-1"
    assert identity.ca_bundle_pem == ca.certificate_pem
    assert "PRIVATE KEY" not in repr(identity)
    assert identity.channel_credentials() is not None


def test_renewal_replaces_key_and_certificate_together(ca: CertificateAuthority, state_dir: Path):
    enroll(ca, state_dir)
    before = load_identity(state_dir)
    enroll(ca, state_dir)
    after = load_identity(state_dir)
    assert after.serial != before.serial
    assert after.key_pem != before.key_pem


def test_loading_tightens_the_state_directory(ca: CertificateAuthority, state_dir: Path):
    enroll(ca, state_dir)
    state_dir.chmod(0o755)
    load_identity(state_dir)
    assert mode_of(state_dir) == 0o700


def test_key_file_readable_by_others_is_refused(ca: CertificateAuthority, state_dir: Path):
    enroll(ca, state_dir)
    (state_dir / IDENTITY_FILE).chmod(0o644)
    with pytest.raises(InsecurePermissionsError, match="chmod 600"):
        load_identity(state_dir)


def test_certificate_for_another_key_is_refused(ca: CertificateAuthority, state_dir: Path):
    ours, theirs = new_key_request(), new_key_request()
    cert = ca.sign_client_csr(theirs.csr_pem, "gw-1")
    with pytest.raises(InvalidIdentityError, match="different key"):
        save_identity(state_dir, ours.key_pem, cert, ca.certificate_pem)
    assert not is_enrolled(state_dir)


def test_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, state_dir: Path, tmp_path: Path
):
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca", revocations=Revocations())
    request = new_key_request()
    cert = other.sign_client_csr(request.csr_pem, "gw-1")
    with pytest.raises(InvalidIdentityError, match="not issued by the hub CA"):
        save_identity(state_dir, request.key_pem, cert, ca.certificate_pem)


def test_expired_certificate_is_not_stored(ca: CertificateAuthority, state_dir: Path):
    request = new_key_request()
    cert = ca.sign_client_csr(
        request.csr_pem, "gw-1", dt.timedelta(days=1), now=NOW - dt.timedelta(days=2)
    )
    with pytest.raises(CertificateExpiredError, match="--force"):
        save_identity(state_dir, request.key_pem, cert, ca.certificate_pem, now=NOW)


def test_damaged_identity_file_names_the_fix(ca: CertificateAuthority, state_dir: Path):
    enroll(ca, state_dir)
    (state_dir / IDENTITY_FILE).write_bytes(b"junk")
    with pytest.raises(InvalidIdentityError, match="re-enroll"):
        load_identity(state_dir)


# -------------------------------------------------------------------- re-enrolling


def test_not_enrolled_until_saved(ca: CertificateAuthority, state_dir: Path):
    assert not is_enrolled(state_dir)
    check_can_enroll(state_dir, force=False)
    with pytest.raises(NotEnrolledError, match="mc-sidecar enroll"):
        load_identity(state_dir)
    enroll(ca, state_dir)
    assert is_enrolled(state_dir)


def test_enrolling_again_needs_force(ca: CertificateAuthority, state_dir: Path):
    enroll(ca, state_dir, "gw-7")
    with pytest.raises(AlreadyEnrolledError) as refused:
        check_can_enroll(state_dir, force=False)
    assert "already enrolled as gateway gw-7" in str(refused.value)
    assert "--force" in str(refused.value)
    check_can_enroll(state_dir, force=True)


def test_damaged_identity_still_needs_force_to_replace(ca: CertificateAuthority, state_dir: Path):
    enroll(ca, state_dir)
    (state_dir / IDENTITY_FILE).write_bytes(b"junk")
    with pytest.raises(AlreadyEnrolledError, match="cannot be used"):
        check_can_enroll(state_dir, force=False)
    check_can_enroll(state_dir, force=True)


# ------------------------------------------------------------------------- renewal


def test_renewal_falls_between_70_and_90_percent_of_the_lifetime(ca: CertificateAuthority):
    cert = x509.load_pem_x509_certificate(
        ca.sign_client_csr(new_key_request().csr_pem, "gw-1", now=NOW)
    )
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    lifetime = end - start
    rng = random.Random(7)
    due = [renewal_due_at(cert, rng, now=NOW) for _ in range(500)]
    assert all(start + lifetime * 0.7 <= d <= start + lifetime * 0.9 for d in due)
    # Spread out, so a fleet enrolled together does not renew together.
    assert max(due) - min(due) > lifetime * 0.15


def test_renewal_time_is_reproducible_with_a_seeded_rng(ca: CertificateAuthority):
    pem = ca.sign_client_csr(new_key_request().csr_pem, "gw-1", now=NOW)
    assert renewal_due_at(pem, random.Random(1), now=NOW) == renewal_due_at(
        pem, random.Random(1), now=NOW
    )


def test_renewal_of_an_expired_certificate_says_re_enroll(ca: CertificateAuthority):
    pem = ca.sign_client_csr(new_key_request().csr_pem, "gw-1", dt.timedelta(days=1), now=NOW)
    expired_at = x509.load_pem_x509_certificate(pem).not_valid_after_utc
    with pytest.raises(CertificateExpiredError) as refused:
        renewal_due_at(pem, now=NOW + dt.timedelta(days=2))
    assert str(refused.value) == (
        f"client certificate expired at {expired_at.isoformat()}; "
        "re-enroll with `mc-sidecar enroll --hub HOST:PORT --token T --force`"
    )


def test_renewal_overdue_but_not_expired_is_due_now(ca: CertificateAuthority):
    pem = ca.sign_client_csr(new_key_request().csr_pem, "gw-1", dt.timedelta(days=10), now=NOW)
    late = NOW + dt.timedelta(days=9, hours=23)
    assert renewal_due_at(pem, random.Random(3), now=late) < late
