"""The sidecar's Link identity: its key, its client certificate and the hub CA it trusts.

Files in the state directory (kept at 0700):

    link-identity.pem   private key then client certificate, 0600
    link-ca.pem         hub CA certificate(s) the link trusts, 0644

Key and certificate share one file so that a renewal (new key, new certificate)
replaces both with a single atomic rename; a crash can never leave a key next to
somebody else's certificate. The key is made here and never leaves the host: the
hub only sees a CSR.

First contact. The sidecar has no CA yet, only the fingerprint from the join
string, and grpc cannot verify a fingerprint. So `fetch_pinned_ca` makes one plain
TLS handshake to the hub's enrollment port without verification, takes the chain
the hub presents (the hub sends its CA after its own certificate) and keeps the
certificate whose SHA-256 equals the pin. Nothing else from that handshake is
trusted: the Enroll call then runs on a normal grpc TLS channel whose only root is
that CA, so grpc does the real verification (chain, validity, host name). An
interceptor can replay the public CA certificate but cannot answer for it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from missioncontrol.netaddr import HostPort
from missioncontrol.pki import (
    CertificateIdentityError,
    canonical_host,
    certificate_host_names,
    certificate_identity,
    certificate_pem,
    fingerprint,
    load_certificates,
    normalize_fingerprint,
)
from missioncontrol.private_files import (
    PUBLIC_FILE_MODE,
    ensure_private_dir,
    read_private_file,
    write_file_atomic,
)

IDENTITY_FILE = "link-identity.pem"
CA_FILE = "link-ca.pem"

RENEW_AT_LIFETIME_FRACTION = (0.7, 0.9)  # Kubernetes kubelet: spreads a fleet's renewals
DEFAULT_PIN_TIMEOUT_S = 10.0
REENROLL_HINT = "`mc-sidecar enroll --hub HOST:PORT --token T --force`"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)
_SYSTEM_RANDOM = random.SystemRandom()


class IdentityError(Exception):
    """The identity is missing, unusable or cannot be obtained; the message says the fix."""


class NotEnrolledError(IdentityError):
    pass


class AlreadyEnrolledError(IdentityError):
    pass


class CertificateExpiredError(IdentityError):
    pass


class InvalidIdentityError(IdentityError):
    """Certificate and key do not belong together, or the certificate is not from the hub CA."""


class HubPinError(IdentityError):
    """The hub could not be matched to the pinned CA fingerprint."""


class HubUnreachableError(IdentityError):
    pass


@dataclass(frozen=True)
class KeyRequest:
    """A fresh private key and the CSR that asks the hub to certify it."""

    key_pem: bytes
    csr_pem: bytes


@dataclass(frozen=True)
class Identity:
    """A loaded identity: everything the Link channel needs."""

    gateway_id: str
    key_pem: bytes = field(repr=False)
    certificate_pem: bytes
    ca_bundle_pem: bytes
    certificate: x509.Certificate = field(compare=False, repr=False)

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials for Link.Connect: trust only the hub CA, present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_bundle_pem,
            private_key=self.key_pem,
            certificate_chain=self.certificate_pem,
        )


def new_key_request(hostname: str = "") -> KeyRequest:
    """Make an EC P-256 key and a CSR for it. The hub ignores the subject; it is for operators."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, (hostname or socket.gethostname() or "sidecar")[:64]
            )
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyRequest(key_pem=key_pem, csr_pem=csr.public_bytes(serialization.Encoding.PEM))


def save_identity(
    state_dir: Path,
    key_pem: bytes,
    certificate_pem_bytes: bytes,
    ca_bundle_pem: bytes,
    *,
    now: dt.datetime | None = None,
) -> Identity:
    """Check and store an identity from enrollment or renewal; return it loaded.

    The CA bundle is written first: a crash before the identity file is written
    leaves the sidecar "not enrolled", never enrolled against a CA it lacks.
    """
    identity = _build_identity(key_pem, certificate_pem_bytes, ca_bundle_pem)
    now = now or _utcnow()
    if now >= identity.not_after:
        raise CertificateExpiredError(_expired_message(identity.not_after))
    ensure_private_dir(state_dir)
    write_file_atomic(state_dir / CA_FILE, ca_bundle_pem, PUBLIC_FILE_MODE)
    write_file_atomic(state_dir / IDENTITY_FILE, key_pem + certificate_pem_bytes)
    return identity


def load_identity(state_dir: Path) -> Identity:
    """Load the stored identity; refuses a key file that group or others can read.

    An expired certificate still loads (`renewal_due_at` reports it with the fix).
    """
    if not is_enrolled(state_dir):
        raise NotEnrolledError(
            f"this sidecar is not enrolled (no {IDENTITY_FILE} and {CA_FILE} in {state_dir}); "
            "enroll with `mc-sidecar enroll --hub HOST:PORT --token T`"
        )
    ensure_private_dir(state_dir)
    combined = read_private_file(state_dir / IDENTITY_FILE)
    blocks = _PEM_BLOCK.findall(combined)
    keys = [m.group(0) for m in _PEM_BLOCK.finditer(combined) if m.group(1) == b"PRIVATE KEY"]
    certs = [m.group(0) for m in _PEM_BLOCK.finditer(combined) if m.group(1) == b"CERTIFICATE"]
    if len(keys) != 1 or not certs:
        raise InvalidIdentityError(
            f"{state_dir / IDENTITY_FILE} should hold one PRIVATE KEY and a CERTIFICATE, found "
            f"{[b.decode() for b in blocks]}; re-enroll with {REENROLL_HINT}"
        )
    ca_bundle = (state_dir / CA_FILE).read_bytes()
    return _build_identity(keys[0], b"".join(certs), ca_bundle)


def is_enrolled(state_dir: Path) -> bool:
    """Whether an identity is stored (valid or not: see `load_identity`)."""
    return (state_dir / IDENTITY_FILE).exists() and (state_dir / CA_FILE).exists()


def check_can_enroll(state_dir: Path, *, force: bool) -> None:
    """Refuse to replace an existing identity unless `force`; the CLI calls this first."""
    if force or not is_enrolled(state_dir):
        return
    try:
        identity = load_identity(state_dir)
    except IdentityError as exc:
        raise AlreadyEnrolledError(
            f"{state_dir} already holds a sidecar identity, which cannot be used ({exc}); "
            f"replace it with {REENROLL_HINT}"
        ) from None
    raise AlreadyEnrolledError(
        f"this sidecar is already enrolled as gateway {identity.gateway_id} (certificate valid "
        f"until {identity.not_after.isoformat()}); to replace that identity run {REENROLL_HINT}"
    )


def renewal_due_at(
    cert: x509.Certificate | bytes,
    rng: random.Random | None = None,
    *,
    now: dt.datetime | None = None,
) -> dt.datetime:
    """When to renew: a random point in 70-90 % of the certificate's lifetime.

    Raises CertificateExpiredError when the certificate has already expired: renewal
    needs a valid certificate on the Link, so only re-enrolling helps then. A due
    time in the past (but before expiry) means "renew now".
    """
    certificate = cert if isinstance(cert, x509.Certificate) else load_certificates(cert)[0]
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if (now or _utcnow()) >= not_after:
        raise CertificateExpiredError(_expired_message(not_after))
    low, high = RENEW_AT_LIFETIME_FRACTION
    fraction = (rng or _SYSTEM_RANDOM).uniform(low, high)
    return not_before + (not_after - not_before) * fraction


def fetch_pinned_ca(
    hub: HostPort, ca_fingerprint: str, *, timeout_s: float = DEFAULT_PIN_TIMEOUT_S
) -> bytes:
    """Return (as PEM) the hub CA certificate whose SHA-256 equals `ca_fingerprint`.

    Blocking (one TCP connection and TLS handshake); from async code use
    `enroll_channel_credentials`. Dial the hub's enrollment port.
    """
    pin = normalize_fingerprint(ca_fingerprint)
    ders = _presented_chain(hub, timeout_s)
    try:
        certs = [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError as exc:
        raise HubPinError(
            f"the hub at {hub} presented a certificate that cannot be parsed ({exc}); "
            "check that this address is the hub's enrollment port"
        ) from None
    pinned = next((c for c in certs if fingerprint(c) == pin), None)
    if pinned is None:
        presented = ", ".join(
            f"{c.subject.rfc4514_string()} sha256:{fingerprint(c)}" for c in certs
        )
        raise HubPinError(
            f"the hub at {hub} presented no certificate with fingerprint sha256:{pin} "
            f"(it presented: {presented or 'nothing'}); either the join string belongs to another "
            "hub or the connection is intercepted. Copy the join string again from the hub"
        )
    try:
        certs[0].verify_directly_issued_by(pinned)
    except (ValueError, TypeError, InvalidSignature):
        raise HubPinError(
            f"the hub at {hub} presented the pinned CA but a certificate it did not issue; "
            "the connection is probably intercepted. Check the network path to the hub"
        ) from None
    names = certificate_host_names(certs[0])
    if canonical_host(hub.host) not in names:
        raise HubPinError(
            f"the hub's certificate is valid for {', '.join(names)}, not {hub.host}; dial one of "
            f"those names, or add {hub.host} to the hub's link names and restart the hub"
        )
    return certificate_pem(pinned)


async def enroll_channel_credentials(
    hub: HostPort, ca_fingerprint: str, *, timeout_s: float = DEFAULT_PIN_TIMEOUT_S
) -> tuple[grpc.ChannelCredentials, bytes]:
    """Server-authenticated TLS credentials for the Enroll call, trusting only the pinned CA.

    Returns the credentials and the CA PEM (to store with the identity afterwards).
    """
    ca_pem = await asyncio.to_thread(fetch_pinned_ca, hub, ca_fingerprint, timeout_s=timeout_s)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem), ca_pem


# ---------------------------------------------------------------------- helpers


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _expired_message(not_after: dt.datetime) -> str:
    return f"client certificate expired at {not_after.isoformat()}; re-enroll with {REENROLL_HINT}"


def _build_identity(key_pem: bytes, cert_pem: bytes, ca_bundle_pem: bytes) -> Identity:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        chain = load_certificates(cert_pem)
        cas = load_certificates(ca_bundle_pem)
    except ValueError as exc:
        raise InvalidIdentityError(
            f"identity files are not valid PEM ({exc}); re-enroll with {REENROLL_HINT}"
        ) from None
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise InvalidIdentityError(
            "the client certificate is for a different key than ours; re-enroll with "
            f"{REENROLL_HINT}"
        )
    if not any(_issued_by(leaf, ca) for ca in cas):
        raise InvalidIdentityError(
            "the client certificate was not issued by the hub CA we trust; re-enroll with "
            f"{REENROLL_HINT}"
        )
    try:
        gateway_id = certificate_identity(leaf).gateway_id
    except CertificateIdentityError as exc:
        raise InvalidIdentityError(f"{exc}; re-enroll with {REENROLL_HINT}") from None
    return Identity(
        gateway_id=gateway_id,
        key_pem=key_pem,
        certificate_pem=cert_pem,
        ca_bundle_pem=ca_bundle_pem,
        certificate=leaf,
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _presented_chain(hub: HostPort, timeout_s: float) -> list[bytes]:
    """DER certificates the server sends in its handshake, leaf first, unverified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Deliberately unverified: the only thing taken from this handshake is a
    # certificate compared byte for byte (by hash) with the pin.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # grpc servers expect HTTP/2
    server_hostname = None if _is_ip(hub.host) else hub.host
    try:
        with (
            socket.create_connection((hub.host, hub.port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            return _unverified_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise HubUnreachableError(
            f"cannot make a TLS connection to the hub at {hub} ({exc}); check the address, that "
            "the hub is running, and that this is its enrollment port"
        ) from None


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    # Python 3.13 made get_unverified_chain public (returning DER bytes); 3.10-3.12
    # have it on the underlying _ssl object, returning Certificate objects.
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        leaf = tls.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    chain = getter() or []
    # Certificate.public_bytes() defaults to PEM text; convert with the public helper.
    return [
        c if isinstance(c, bytes) else ssl.PEM_cert_to_DER_cert(c.public_bytes()) for c in chain
    ]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
