"""What hub and sidecar must agree on about certificates and join strings.

Identity scheme. A client certificate names exactly one gateway twice: subject
CN=<gateway id> (what `openssl x509 -text` and grpc's `x509_common_name` show) and
the URI SAN `mc://gateway/<gateway id>`, which is authoritative. The hub CA only
issues certificates in this shape, with the clientAuth EKU; its own link server
certificate carries serverAuth and DNS/IP SANs, so neither can stand in for the other.

Fingerprints are SHA-256 of a certificate's DER encoding, written as 64 lowercase
hex digits; `sha256:` prefixes, colons and upper case are accepted on input.

Join string. The hub prints `<token id>.<token secret>@sha256:<CA fingerprint>`.
The part before `@` is the join token that authenticates the sidecar (Kubernetes
bootstrap-token shape); the suffix pins the hub's CA so the sidecar can trust the
hub on first contact. A bare `id.secret` is accepted too, with the fingerprint
then given separately.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

GATEWAY_URI_PREFIX = "mc://gateway/"

# Gateway ids go into a CN (at most 64 characters) and a URI path. No dots, so a
# gateway certificate's CN can never look like a DNS name the hub answers to.
_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

TOKEN_ID_LENGTH = 8
TOKEN_SECRET_LENGTH = 32
TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN = re.compile(rf"([a-z0-9]{{{TOKEN_ID_LENGTH}}})\.([a-z0-9]{{{TOKEN_SECRET_LENGTH}}})")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class CertificateIdentityError(ValueError):
    """A certificate does not name a gateway in the Mission Control scheme."""


class MalformedJoinStringError(ValueError):
    """A join token or join string does not have the documented shape."""


def validate_gateway_id(gateway_id: str) -> str:
    if not _GATEWAY_ID.fullmatch(gateway_id):
        raise ValueError(
            f"gateway id {gateway_id!r} cannot go into a certificate: use 1-64 letters, digits, "
            "'-' or '_', starting with a letter or digit (a UUID fits)"
        )
    return gateway_id


def gateway_uri(gateway_id: str) -> str:
    return GATEWAY_URI_PREFIX + validate_gateway_id(gateway_id)


@dataclass(frozen=True)
class CertIdentity:
    """Who a client certificate speaks for, and the facts needed to accept or refuse it."""

    gateway_id: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.not_after


def load_certificate(data: bytes | str | x509.Certificate) -> x509.Certificate:
    """Accept a parsed certificate, PEM text/bytes or DER bytes."""
    if isinstance(data, x509.Certificate):
        return data
    raw = data.encode() if isinstance(data, str) else data
    if raw.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(raw)
    return x509.load_der_x509_certificate(raw)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order."""
    return x509.load_pem_x509_certificates(pem)


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_identity(data: bytes | str | x509.Certificate) -> CertIdentity:
    """Read (gateway id, serial, validity) from a gateway client certificate."""
    cert = load_certificate(data)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateIdentityError(
            "certificate has no subject alternative name, so it names no gateway; "
            "only certificates issued by the hub at enrollment are accepted"
        ) from None
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    gateway_ids = [u[len(GATEWAY_URI_PREFIX) :] for u in uris if u.startswith(GATEWAY_URI_PREFIX)]
    if len(gateway_ids) != 1 or not _GATEWAY_ID.fullmatch(gateway_ids[0]):
        raise CertificateIdentityError(
            f"certificate must name exactly one gateway as {GATEWAY_URI_PREFIX}<id>, "
            f"it has URIs {uris}; only certificates issued by the hub at enrollment are accepted"
        )
    return CertIdentity(
        gateway_id=gateway_ids[0],
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def canonical_host(name: str) -> str:
    """A host name or address as certificates and comparisons use it (lower case, IPs canonical)."""
    bare = name.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare


def certificate_host_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS and IP subject alternative names of a server certificate, canonical and sorted."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
    names += sans.get_values_for_type(x509.DNSName)
    return tuple(sorted({canonical_host(n) for n in names}))


def fingerprint(cert: bytes | str | x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, 64 lowercase hex digits."""
    der = load_certificate(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept `sha256:AB:CD...`, `abcd...` and similar; return 64 lowercase hex digits."""
    value = text.strip().lower()
    value = value.removeprefix("sha256:").replace(":", "")
    if not _FINGERPRINT.fullmatch(value):
        raise MalformedJoinStringError(
            f"{text!r} is not a SHA-256 fingerprint; expected 64 hex digits, as printed after "
            "'@sha256:' in the join string"
        )
    return value


def split_join_token(token: str) -> tuple[str, str]:
    """Split `id.secret` into its public id and its secret."""
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise MalformedJoinStringError(
            f"join token is malformed: expected {TOKEN_ID_LENGTH} and {TOKEN_SECRET_LENGTH} "
            "lowercase letters or digits joined by '.'; copy it again from "
            "`mc-hub gateway join-token GATEWAY`"
        )
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class JoinString:
    """A join token plus, optionally, the hub CA fingerprint to pin on first contact."""

    token: str
    ca_fingerprint: str | None = None

    @classmethod
    def parse(cls, text: str) -> JoinString:
        token, sep, pin = text.strip().partition("@")
        split_join_token(token)
        if not sep:
            return cls(token=token)
        if not pin.lower().startswith("sha256:"):
            raise MalformedJoinStringError(
                "join string must end in '@sha256:<64 hex digits>' after the token; "
                "copy it again from `mc-hub gateway join-token GATEWAY`"
            )
        return cls(token=token, ca_fingerprint=normalize_fingerprint(pin))

    def __str__(self) -> str:
        if self.ca_fingerprint is None:
            return self.token
        return f"{self.token}@sha256:{normalize_fingerprint(self.ca_fingerprint)}"
