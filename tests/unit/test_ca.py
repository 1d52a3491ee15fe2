"""The hub CA: files and permissions, client certificates, server certificate, revocation."""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.pki.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    DEFAULT_CLIENT_CERT_LIFETIME,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    CAStateError,
    CertificateAuthority,
    CSRRejectedError,
)
from hub.pki.enrollment import Revocations
from missioncontrol.pki import (
    CertificateIdentityError,
    certificate_identity,
    fingerprint,
    load_certificate,
)
from missioncontrol.private_files import InsecurePermissionsError

NO_REVOCATIONS = Revocations()

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_csr(common_name: str = "requested-name", *, extra_sans: bool = True) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if extra_sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("hub.example.com"),
                    x509.UniformResourceIdentifier("mc://gateway/someone-else"),
                ]
            ),
            critical=False,
        )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


@pytest.fixture
def ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)


# ------------------------------------------------------------ files and permissions


def test_first_start_creates_key_and_certificate_owner_only(ca: CertificateAuthority, ca_dir: Path):
    assert mode_of(ca_dir) == 0o700
    assert mode_of(ca_dir / CA_KEY_FILE) == 0o600
    assert (ca_dir / CA_CERT_FILE).read_bytes() == ca.certificate_pem
    assert list(ca_dir.glob(".*.tmp")) == []


def test_ca_is_ec_p256_and_may_only_sign_leaf_certificates(ca: CertificateAuthority):
    public_key = ca.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0


def test_fingerprint_is_sha256_of_der_and_stable_across_restarts(
    ca: CertificateAuthority, ca_dir: Path
):
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    assert ca.ca_fingerprint() == hashlib.sha256(der).hexdigest()
    reloaded = CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)
    assert reloaded.ca_fingerprint() == ca.ca_fingerprint()
    assert reloaded.certificate_pem == ca.certificate_pem


def test_loading_tightens_a_loose_directory(ca: CertificateAuthority, ca_dir: Path):
    ca_dir.chmod(0o755)
    CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)
    assert mode_of(ca_dir) == 0o700


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_refuses_a_key_file_others_can_read(ca: CertificateAuthority, ca_dir: Path, mode: int):
    (ca_dir / CA_KEY_FILE).chmod(mode)
    with pytest.raises(InsecurePermissionsError) as refused:
        CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)
    message = str(refused.value)
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {ca_dir / CA_KEY_FILE}" in message


def test_certificate_without_its_key_is_an_error_not_a_new_ca(
    ca: CertificateAuthority, ca_dir: Path
):
    (ca_dir / CA_KEY_FILE).unlink()
    with pytest.raises(CAStateError, match="restore the key from backup"):
        CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)


def test_key_without_certificate_gets_a_certificate(ca: CertificateAuthority, ca_dir: Path):
    (ca_dir / CA_CERT_FILE).unlink()
    reloaded = CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)
    assert reloaded.certificate.public_key() == ca.certificate.public_key()


def test_certificate_of_another_key_is_refused(ca_dir: Path, tmp_path: Path):
    CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)
    other = CertificateAuthority.load_or_create(tmp_path / "other", revocations=NO_REVOCATIONS)
    (ca_dir / CA_CERT_FILE).write_bytes(other.certificate_pem)
    with pytest.raises(CAStateError, match="does not belong to"):
        CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)


# ------------------------------------------------------------- client certificates


def test_signed_certificate_names_the_gateway_whatever_the_csr_asked_for(
    ca: CertificateAuthority,
):
    cert = load_certificate(ca.sign_client_csr(make_csr("admin"), "gw-1", now=NOW))
    assert cert.subject.rfc4514_string() == "CN=gw-1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier("mc://gateway/gw-1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    cert.verify_directly_issued_by(ca.certificate)
    assert certificate_identity(cert).gateway_id == "gw-1"


def test_default_lifetime_is_thirty_days_and_configurable(ca: CertificateAuthority):
    default = load_certificate(ca.sign_client_csr(make_csr(), "gw-1", now=NOW))
    assert default.not_valid_after_utc == NOW + DEFAULT_CLIENT_CERT_LIFETIME
    short = load_certificate(ca.sign_client_csr(make_csr(), "gw-1", dt.timedelta(hours=1), now=NOW))
    assert short.not_valid_after_utc == NOW + dt.timedelta(hours=1)
    # Backdated a little so a peer whose clock lags accepts a brand-new certificate.
    assert NOW - dt.timedelta(minutes=10) < short.not_valid_before_utc < NOW


@pytest.mark.parametrize("lifetime", [dt.timedelta(0), dt.timedelta(days=366)])
def test_lifetime_out_of_range_is_refused(ca: CertificateAuthority, lifetime: dt.timedelta):
    with pytest.raises(ValueError, match="lifetime"):
        ca.sign_client_csr(make_csr(), "gw-1", lifetime)


def test_serial_numbers_are_random_and_distinct(ca: CertificateAuthority):
    serials = {
        load_certificate(ca.sign_client_csr(make_csr(), "gw-1")).serial_number for _ in range(20)
    }
    assert len(serials) == 20
    assert all(serial.bit_length() > 100 for serial in serials)


def test_csr_with_a_bad_signature_is_refused(ca: CertificateAuthority):
    der = x509.load_pem_x509_csr(make_csr("tamper-me")).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"tamper-me", b"tamper-mf")
    pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CSRRejectedError, match="signature does not verify"):
        ca.sign_client_csr(pem, "gw-1")


@pytest.mark.parametrize("garbage", [b"", b"not a csr", b"-----BEGIN CERTIFICATE REQUEST-----\n"])
def test_unparseable_csr_is_refused(ca: CertificateAuthority, garbage: bytes):
    with pytest.raises(CSRRejectedError, match="not a PEM PKCS#10 request"):
        ca.sign_client_csr(garbage, "gw-1")


def test_oversized_csr_is_refused(ca: CertificateAuthority):
    with pytest.raises(CSRRejectedError, match="bytes, more than"):
        ca.sign_client_csr(b"x" * 20_000, "gw-1")


@pytest.mark.parametrize("gateway_id", ["", "a/b", "has.dot", "x" * 65, "-leading"])
def test_gateway_ids_that_cannot_be_named_in_a_certificate_are_refused(
    ca: CertificateAuthority, gateway_id: str
):
    with pytest.raises(ValueError, match="cannot go into a certificate"):
        ca.sign_client_csr(make_csr(), gateway_id)


def test_identity_reads_from_pem_and_der(ca: CertificateAuthority):
    pem = ca.sign_client_csr(make_csr(), "0b7c1f2e-2d3a-4c5b-9e8f-1a2b3c4d5e6f", now=NOW)
    der = load_certificate(pem).public_bytes(serialization.Encoding.DER)
    from_pem, from_der = certificate_identity(pem), certificate_identity(der)
    assert from_pem == from_der
    assert from_pem.gateway_id == "0b7c1f2e-2d3a-4c5b-9e8f-1a2b3c4d5e6f"
    assert from_pem.not_after == NOW + DEFAULT_CLIENT_CERT_LIFETIME


def test_a_server_certificate_names_no_gateway(ca: CertificateAuthority):
    server = ca.server_certificate("127.0.0.1")
    with pytest.raises(CertificateIdentityError, match="mc://gateway/"):
        certificate_identity(server.certificate_pem)


# -------------------------------------------------------------- server certificate


def test_server_certificate_names_listen_host_configured_names_and_loopback(
    ca: CertificateAuthority, ca_dir: Path
):
    server = ca.server_certificate("10.0.0.5", ["hub.example.com", "[fd00::1]"])
    assert server.names == (
        "10.0.0.5",
        "127.0.0.1",
        "::1",
        "fd00::1",
        "hub.example.com",
        "localhost",
    )
    cert = load_certificate(server.certificate_pem)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.chain_pem == server.certificate_pem + ca.certificate_pem
    assert mode_of(ca_dir / SERVER_KEY_FILE) == 0o600
    assert (ca_dir / SERVER_CERT_FILE).exists()


def test_wildcard_listen_host_is_not_a_name(ca: CertificateAuthority):
    assert ca.server_certificate("0.0.0.0").names == ("127.0.0.1", "::1", "localhost")


def test_server_certificate_is_kept_until_names_change(ca: CertificateAuthority, ca_dir: Path):
    first = ca.server_certificate("127.0.0.1", ["hub.example.com"], now=NOW)
    again = ca.server_certificate("127.0.0.1", ["HUB.example.com"], now=NOW)
    after_restart = CertificateAuthority.load_or_create(
        ca_dir, revocations=NO_REVOCATIONS
    ).server_certificate("127.0.0.1", ["hub.example.com"], now=NOW)
    renamed = ca.server_certificate("127.0.0.1", ["hub2.example.com"], now=NOW)
    assert again == first
    assert after_restart.certificate_pem == first.certificate_pem
    assert renamed.certificate_pem != first.certificate_pem
    assert "hub2.example.com" in renamed.names


def test_server_certificate_is_reissued_when_thirty_days_remain(ca: CertificateAuthority):
    first = ca.server_certificate("127.0.0.1", now=NOW)
    assert ca.server_certificate("127.0.0.1", now=NOW + dt.timedelta(days=59)) == first
    renewed = ca.server_certificate("127.0.0.1", now=NOW + dt.timedelta(days=61))
    assert renewed.certificate_pem != first.certificate_pem
    assert renewed.not_after == NOW + dt.timedelta(days=61 + 90)


def test_server_certificate_from_a_previous_ca_is_replaced(ca_dir: Path, tmp_path: Path):
    old = CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)
    old.server_certificate("127.0.0.1")
    (ca_dir / CA_KEY_FILE).unlink()
    (ca_dir / CA_CERT_FILE).unlink()
    new = CertificateAuthority.load_or_create(ca_dir, revocations=NO_REVOCATIONS)
    cert = load_certificate(new.server_certificate("127.0.0.1").certificate_pem)
    cert.verify_directly_issued_by(new.certificate)


# ---------------------------------------------------------------------- revocation


def test_the_store_can_back_revocation(ca_dir: Path):
    class StoreBacked:
        def __init__(self) -> None:
            self.revoked: set[int] = set()

        def is_revoked(self, serial: int) -> bool:
            return serial in self.revoked

    store = StoreBacked()
    ca = CertificateAuthority.load_or_create(ca_dir, revocations=store)
    identity = certificate_identity(ca.sign_client_csr(make_csr(), "gw-1"))
    store.revoked.add(identity.serial)
    assert ca.is_revoked(identity.serial)


def test_fingerprint_helper_agrees_with_the_ca(ca: CertificateAuthority):
    assert fingerprint(ca.certificate_pem) == ca.ca_fingerprint()
