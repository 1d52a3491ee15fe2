"""The hub's certificate authority for the Link: its own key, gateway certificates, revocation.

One EC P-256 CA per hub, created on first start in the hub's CA directory:

    ca.key           CA private key, 0600; never leaves this directory
    ca.crt           CA certificate: what sidecars trust and pin (see `ca_fingerprint`)
    link-server.key  key of the link listener's certificate, 0600
    link-server.crt  link listener certificate, issued by the CA

Revoked serials are the store's (the hub's `Revocations`); the CA only asks them.

The directory is kept at 0700 (tightened if looser); a key file that group or others
can read is refused rather than used, because it must be assumed copied.

Client certificates follow the identity scheme in `missioncontrol.pki`: whatever
subject a CSR asks for, the certificate names the gateway the join token (or the
renewing peer) was authorised for, and nothing else.

Lifetimes. Client certificates default to 30 days and sidecars renew at a random
70-90 % of that, so a hub outage of 3 days (worst case) to 9 days is ridden out
without re-enrolling; a longer outage than that needs a longer lifetime. The link
server certificate lives 90 days and is reissued once less than 30 days remain or
when the names it must carry change; sidecars pin the CA, not this certificate,
so reissuing it is invisible to them. The CA lives 10 years.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from missioncontrol.log import get_logger
from missioncontrol.pki import (
    canonical_host,
    certificate_host_names,
    certificate_pem,
    fingerprint,
    gateway_uri,
    validate_gateway_id,
)
from missioncontrol.private_files import (
    PUBLIC_FILE_MODE,
    ensure_private_dir,
    read_private_file,
    write_file_atomic,
)

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
SERVER_KEY_FILE = "link-server.key"
SERVER_CERT_FILE = "link-server.crt"

CA_LIFETIME = dt.timedelta(days=3650)
DEFAULT_CLIENT_CERT_LIFETIME = dt.timedelta(days=30)
MAX_CLIENT_CERT_LIFETIME = dt.timedelta(days=365)
SERVER_CERT_LIFETIME = dt.timedelta(days=90)
SERVER_CERT_RENEW_BEFORE = dt.timedelta(days=30)
# Certificates start a little in the past so a peer whose clock lags still accepts them.
BACKDATE = dt.timedelta(minutes=5)
MAX_CSR_BYTES = 16 * 1024

_log = get_logger("hub.pki.ca")

# Listen hosts that mean "every interface": they name no host a client could dial.
_WILDCARD_HOSTS = frozenset({"", "*", "0.0.0.0", "::"})
_ALWAYS_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


class CAError(Exception):
    """The CA cannot do what was asked; the message names the cause and the fix."""


class CAStateError(CAError):
    """The CA directory is incomplete or damaged."""


class CSRRejectedError(CAError):
    """A certificate signing request was refused (unparseable, bad signature, weak key)."""


class RevocationList(Protocol):
    """Answers whether a client certificate serial was revoked (the hub's store does)."""

    def is_revoked(self, serial: int) -> bool: ...


@dataclass(frozen=True)
class ServerCertificate:
    """The link listener's key and certificate chain (leaf then CA)."""

    key_pem: bytes
    certificate_pem: bytes
    chain_pem: bytes
    names: tuple[str, ...]
    not_after: dt.datetime


class CertificateAuthority:
    """The hub CA. Build it with `load_or_create`."""

    def __init__(
        self,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        revocations: RevocationList,
    ) -> None:
        self.directory = directory
        self._key = key
        self.certificate = certificate
        self.certificate_pem = certificate_pem(certificate)
        self.revocations = revocations
        self._server: ServerCertificate | None = None
        self._server_lock = threading.Lock()

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        revocations: RevocationList,
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """Load the CA from `directory`, creating key and certificate on first start."""
        ensure_private_dir(directory)
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        if cert_path.exists() and not key_path.exists():
            raise CAStateError(
                f"{cert_path} exists but {key_path} does not; restore the key from backup. "
                f"Deleting {cert_path} too creates a new CA, after which every sidecar must "
                "re-enroll"
            )
        if key_path.exists():
            key = _load_private_key(key_path)
            if not cert_path.exists():
                # A crash between writing the key and the certificate: nobody can have
                # pinned a certificate that was never written, so issue it now.
                cert = _self_signed_ca(key, now or _utcnow())
                write_file_atomic(cert_path, certificate_pem(cert), PUBLIC_FILE_MODE)
            else:
                cert = _load_certificate_file(cert_path)
                if cert.public_key() != key.public_key():
                    raise CAStateError(
                        f"{cert_path} does not belong to {key_path}; restore the matching pair "
                        "from backup"
                    )
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_file_atomic(key_path, _private_key_pem(key))
            cert = _self_signed_ca(key, now or _utcnow())
            write_file_atomic(cert_path, certificate_pem(cert), PUBLIC_FILE_MODE)
        return cls(directory, key, cert, revocations)

    def ca_fingerprint(self) -> str:
        """SHA-256 of the CA certificate DER, 64 hex digits: what sidecars pin."""
        return fingerprint(self.certificate)

    def is_revoked(self, serial: int) -> bool:
        return self.revocations.is_revoked(serial)

    def sign_client_csr(
        self,
        csr_pem: bytes,
        gateway_id: str,
        lifetime: dt.timedelta = DEFAULT_CLIENT_CERT_LIFETIME,
        *,
        now: dt.datetime | None = None,
    ) -> bytes:
        """Issue a client certificate for `gateway_id` to the key in `csr_pem`.

        Only the CSR's public key is used, and only after its signature proves the
        requester holds the private key; the requested subject and extensions are
        ignored, so a sidecar cannot ask for a name it was not authorised for.
        """
        validate_gateway_id(gateway_id)
        if not dt.timedelta(0) < lifetime <= MAX_CLIENT_CERT_LIFETIME:
            raise ValueError(
                f"client certificate lifetime {lifetime} is out of range; "
                f"use more than 0 and at most {MAX_CLIENT_CERT_LIFETIME.days} days"
            )
        public_key = _verified_csr_public_key(csr_pem)
        now = now or _utcnow()
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
        builder = (
            self._leaf_builder(subject, public_key, now, not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(gateway_uri(gateway_id))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        return certificate_pem(builder.sign(self._key, hashes.SHA256()))

    def server_certificate(
        self, listen_host: str, names: Iterable[str] = (), *, now: dt.datetime | None = None
    ) -> ServerCertificate:
        """The link listener certificate, reissued when its names change or it nears expiry.

        Names: the listen host unless it is a wildcard, `names` (the host names and
        addresses sidecars dial), and always localhost, 127.0.0.1 and ::1. Cheap to
        call often: the current certificate is cached in memory.
        """
        now = now or _utcnow()
        wanted = server_names(listen_host, names)
        with self._server_lock:
            if self._server is None:
                self._server = self._load_server_certificate()
            current = self._server
            if (
                current is not None
                and current.names == wanted
                and now < current.not_after - SERVER_CERT_RENEW_BEFORE
            ):
                return current
            self._server = self._issue_server_certificate(wanted, now)
            return self._server

    def server_certificate_files(self) -> tuple[Path, Path]:
        """Where the current server certificate and its key are (after server_certificate)."""
        return self.directory / SERVER_CERT_FILE, self.directory / SERVER_KEY_FILE

    def link_server_credentials(
        self,
        listen_host: str,
        names: Iterable[str] = (),
        *,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> grpc.ServerCredentials:
        """Mutual TLS for Link.Connect: a client certificate issued by this CA is required.

        The listener certificate is the one from `server_certificate(listen_host,
        names)`; grpc asks before every new connection whether it changed, so a
        reissued certificate is served without a restart.
        """
        return self._server_credentials(listen_host, tuple(names), clock, require_client_auth=True)

    def enrollment_server_credentials(
        self,
        listen_host: str,
        names: Iterable[str] = (),
        *,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> grpc.ServerCredentials:
        """Server-only TLS for Enrollment, whose callers have no client certificate yet.

        grpc Python can either require a client certificate or not request one at
        all, never "request, verify if sent", so Enrollment cannot share the mTLS
        port: serve it on a second port of the same grpc.aio server. Pass the same
        listen host and names as for the link port: both present one certificate.
        """
        return self._server_credentials(listen_host, tuple(names), clock, require_client_auth=False)

    # ------------------------------------------------------------------ internals

    def _server_credentials(
        self,
        listen_host: str,
        names: tuple[str, ...],
        clock: Callable[[], dt.datetime] | None,
        *,
        require_client_auth: bool,
    ) -> grpc.ServerCredentials:
        now = clock or _utcnow
        client_roots = self.certificate_pem if require_client_auth else None
        served = [self.server_certificate(listen_host, names, now=now())]
        lock = threading.Lock()

        def configuration(server: ServerCertificate) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(server.key_pem, server.chain_pem)], root_certificates=client_roots
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by grpc before each new connection; a cached comparison on the
            # common path. A failure keeps the current certificate rather than
            # refusing the connection.
            try:
                latest = self.server_certificate(listen_host, names, now=now())
            except Exception as exc:
                _log.error("link.tls.server_certificate.reissue_failed", error=str(exc))
                return None
            with lock:
                if latest is served[0]:
                    return None
                served[0] = latest
            _log.info(
                "link.tls.server_certificate.reissued", not_after=latest.not_after.isoformat()
            )
            return configuration(latest)

        # grpc takes None from `fetch` as "unchanged"; its type stub does not say so.
        fetch_typed = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
        return grpc.dynamic_ssl_server_credentials(
            configuration(served[0]), fetch_typed, require_client_authentication=require_client_auth
        )

    def _leaf_builder(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        now: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def _issue_server_certificate(
        self, names: tuple[str, ...], now: dt.datetime
    ) -> ServerCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            address = _ip_or_none(name)
            sans.append(x509.IPAddress(address) if address else x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mission Control hub link")])
        not_after = min(now + SERVER_CERT_LIFETIME, self.certificate.not_valid_after_utc)
        cert = (
            self._leaf_builder(subject, key.public_key(), now, not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = _private_key_pem(key)
        # Key first: a crash before the certificate is written leaves a pair that does
        # not match, which the next load detects and reissues.
        write_file_atomic(self.directory / SERVER_KEY_FILE, key_pem)
        write_file_atomic(
            self.directory / SERVER_CERT_FILE, certificate_pem(cert), PUBLIC_FILE_MODE
        )
        return self._server_from(key, cert)

    def _load_server_certificate(self) -> ServerCertificate | None:
        key_path = self.directory / SERVER_KEY_FILE
        cert_path = self.directory / SERVER_CERT_FILE
        if not (key_path.exists() and cert_path.exists()):
            return None
        key = _load_private_key(key_path)
        try:
            cert = _load_certificate_file(cert_path)
            cert.verify_directly_issued_by(self.certificate)
        except (CAStateError, ValueError, TypeError, InvalidSignature):
            return None  # damaged or from an earlier CA: simply issue a new one
        if cert.public_key() != key.public_key():
            return None
        return self._server_from(key, cert)

    def _server_from(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> ServerCertificate:
        leaf_pem = certificate_pem(cert)
        return ServerCertificate(
            key_pem=_private_key_pem(key),
            certificate_pem=leaf_pem,
            # The CA goes into the chain so a sidecar can see it on first contact and
            # compare it with the fingerprint it was given.
            chain_pem=leaf_pem + self.certificate_pem,
            names=certificate_host_names(cert),
            not_after=cert.not_valid_after_utc,
        )


def server_names(listen_host: str, names: Iterable[str] = ()) -> tuple[str, ...]:
    """The canonical, sorted set of names a link server certificate must carry."""
    wanted: set[str] = set()
    for raw in (listen_host, *names, *_ALWAYS_SERVER_NAMES):
        name = canonical_host(raw)
        if name in _WILDCARD_HOSTS:
            continue
        if _ip_or_none(name) is None:
            try:
                x509.DNSName(name)
            except ValueError:
                raise ValueError(f"{raw!r} is not a host name or IP address") from None
        wanted.add(name)
    return tuple(sorted(wanted))


# ---------------------------------------------------------------------- helpers


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ip_or_none(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _self_signed_ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # A per-hub suffix makes "issued by another hub's CA" readable in error output.
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Mission Control hub CA {key_id.digest.hex()[:8]}"
            )
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(key_id, critical=False)
        .sign(key, hashes.SHA256())
    )


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = read_private_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CAStateError(
            f"{path} is not a readable PEM private key ({exc}); restore it from backup"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAStateError(
            f"{path} is not an EC private key; restore the hub's own key from backup"
        )
    return key


def _load_certificate_file(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise CAStateError(
            f"{path} is not a PEM certificate ({exc}); restore it from backup"
        ) from None


def _verified_csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CSRRejectedError(
            f"CSR is {len(csr_pem)} bytes, more than {MAX_CSR_BYTES}; send a PEM PKCS#10 request "
            "for one EC P-256 key"
        )
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CSRRejectedError(
            f"CSR is not a PEM PKCS#10 request ({exc}); send the request made by "
            "`mc-sidecar enroll`"
        ) from None
    try:
        signature_valid = csr.is_signature_valid
    except ValueError:  # a signature algorithm the library cannot check
        signature_valid = False
    if not signature_valid:
        raise CSRRejectedError(
            "CSR signature does not verify, so the requester has not proven it holds the key; "
            "make a new key and CSR and send them unmodified"
        )
    try:
        public_key = csr.public_key()
    except ValueError:
        public_key = None
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in {
        "secp256r1",
        "secp384r1",
    }:
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= 2048:
        return public_key
    raise CSRRejectedError(
        f"CSR key type {type(public_key).__name__} is not accepted; use an EC P-256 "
        "(or P-384) key, or RSA of at least 2048 bits"
    )
