"""Sealing small secrets at rest: AES-256-GCM under a key derived from the hub key.

Secrets the hub must read back later (a board webhook's HMAC secret) cannot be
stored as a keyed hash the way agent tokens are. They are sealed instead:

    sealed = version (1 byte) || nonce (12 bytes) || AES-GCM(key, nonce, secret, aad)

The key is HKDF-SHA256 of the hub key with a per-purpose label, so a sealing key
never equals the hub key or any other key derived from it. The associated data
binds a sealed value to the row it belongs to (the webhook's id): a blob copied
into another row does not open. A copy of the database alone yields no secret.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
MIN_HUB_KEY_BYTES = 32
_VERSION = b"\x01"
_LABEL = b"mission-control secret box v1: "


class SecretBoxError(ValueError):
    """A sealed value that does not open: damaged, from another row, or another hub key."""


class SecretBox:
    """Seals and opens small secrets with one derived key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"secret box key is {len(key)} bytes; it must be {KEY_BYTES}")
        self._aead = AESGCM(key)

    @classmethod
    def from_hub_key(cls, hub_key: bytes, purpose: str) -> SecretBox:
        """The box for one purpose (e.g. "webhook-secrets"), keyed from the hub key."""
        if len(hub_key) < MIN_HUB_KEY_BYTES:
            raise ValueError(
                f"hub key is {len(hub_key)} bytes, fewer than {MIN_HUB_KEY_BYTES}; "
                "it is damaged: restore hub.key from backup"
            )
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=None,
            info=_LABEL + purpose.encode(),
        )
        return cls(hkdf.derive(hub_key))

    def seal(self, secret: bytes, *, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret, context)

    def open(self, sealed: bytes, *, context: bytes) -> bytes:
        if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != _VERSION:
            raise SecretBoxError("sealed secret is damaged or of an unknown version")
        nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, context)
        except InvalidTag:
            raise SecretBoxError(
                "sealed secret does not open: it was sealed for another row or under another "
                "hub key (was hub.key replaced?); set the secret again"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
