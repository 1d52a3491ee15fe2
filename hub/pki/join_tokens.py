"""Join tokens: what a sidecar shows once to buy its first client certificate.

Shape (Kubernetes bootstrap-token style, see `missioncontrol.pki`): `id.secret`,
8 + 32 characters of [a-z0-9]. The id is the public lookup key (indexed, O(1));
the secret carries 165 random bits. The hub stores only HMAC-SHA256(hub key,
"id.secret"), so a copy of the database does not yield usable tokens, and the
check is one HMAC and a constant-time compare: no slow KDF on a path every
enrolling sidecar takes. What the operator copies is the join string
`id.secret@sha256:<CA fingerprint>` (`join_string`), which also pins the hub.

A token is single-use by default and lives 30 minutes. `uses=N` makes a fleet
token for rolling one string out to many hosts. A token minted for a gateway
enrolls only that gateway; an unbound token enrolls the gateway the sidecar
names, or a new one (the enrollment handler decides which, see `JoinGrant`).

This module is pure logic: the store persists `JoinTokenRecord`s and must count
a use atomically (`UPDATE ... SET uses = uses + 1 WHERE id = ? AND uses < max_uses`),
so two sidecars racing for the last use cannot both win. Times are Unix seconds,
as in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from missioncontrol.pki import (
    TOKEN_ALPHABET,
    TOKEN_ID_LENGTH,
    TOKEN_SECRET_LENGTH,
    JoinString,
    MalformedJoinStringError,
    split_join_token,
    validate_gateway_id,
)

DEFAULT_TTL_S = 30 * 60
MAX_TTL_S = 24 * 60 * 60  # kubeadm's default token lifetime; fleet rollouts fit in a day
MAX_USES = 10_000
MIN_HUB_KEY_BYTES = 32

JOIN_TOKEN_COMMAND = "mc-hub gateway join-token"


class JoinTokenError(Exception):
    """A join token was refused. `code` is stable and machine-readable; the message says the fix."""

    code = "join_token_invalid"


class JoinTokenMalformedError(JoinTokenError):
    code = "join_token_malformed"


class JoinTokenUnknownError(JoinTokenError):
    """No such token, or the secret does not match (one error, so neither is revealed)."""

    code = "join_token_unknown"


class JoinTokenExpiredError(JoinTokenError):
    code = "join_token_expired"


class JoinTokenUsedError(JoinTokenError):
    code = "join_token_used"


class JoinTokenWrongGatewayError(JoinTokenError):
    code = "join_token_wrong_gateway"


@dataclass(frozen=True)
class JoinTokenRecord:
    """What the hub stores for one join token. Never holds the secret itself."""

    token_id: str
    secret_hmac: bytes  # HMAC-SHA256(hub key, "id.secret")
    gateway_id: str | None  # None: unbound (fleet) token
    created_at: float
    expires_at: float
    max_uses: int
    uses: int = 0
    # Labels every gateway it enrolls gets (fleetdm's team secret): a fleet token made
    # with `--labels env=prod` puts each host it enrolls in env=prod.
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JoinTokenRecord:
        values = dict(row)
        values["labels"] = json.loads(values.get("labels") or "{}")
        return cls(**values)

    @property
    def uses_left(self) -> int:
        return max(self.max_uses - self.uses, 0)

    def used_once(self) -> JoinTokenRecord:
        """The record after one more successful use (the store persists it atomically)."""
        return dataclasses.replace(self, uses=self.uses + 1)


@dataclass(frozen=True)
class JoinGrant:
    """What an accepted token allows.

    `gateway_id` is the gateway to enroll: the token's own gateway for a bound
    token, otherwise the one the sidecar asked for, or None meaning "create a new
    gateway". For an unbound token naming an existing gateway the enrollment
    handler must decide whether the token may take that identity over (for
    example only while that gateway has never enrolled).
    """

    token_id: str
    gateway_id: str | None
    bound: bool
    uses_left_after: int


def token_id_of(raw: str) -> str:
    """The public lookup key of a raw token or join string; raises JoinTokenMalformedError."""
    return _split(raw)[0]


def hash_token(hub_key: bytes, raw: str) -> bytes:
    """HMAC-SHA256 of the whole `id.secret` (the id is bound into the MAC)."""
    token_id, secret = _split(raw)
    return hmac.new(hub_key, f"{token_id}.{secret}".encode(), hashlib.sha256).digest()


def mint(
    hub_key: bytes,
    gateway_id: str | None = None,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    uses: int = 1,
    labels: Mapping[str, str] | None = None,
    now: float,
) -> tuple[str, JoinTokenRecord]:
    """Make a new token; return the raw `id.secret` (show it once) and the record to store."""
    _check_hub_key(hub_key)
    if gateway_id is not None:
        validate_gateway_id(gateway_id)
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"join token ttl {ttl_s:g} s is out of range; use 1 s to {MAX_TTL_S} s")
    if not 1 <= uses <= MAX_USES:
        raise ValueError(f"join token uses {uses} is out of range; use 1 to {MAX_USES}")
    token_id = _random_text(TOKEN_ID_LENGTH)
    raw = f"{token_id}.{_random_text(TOKEN_SECRET_LENGTH)}"
    record = JoinTokenRecord(
        token_id=token_id,
        secret_hmac=hash_token(hub_key, raw),
        gateway_id=gateway_id,
        created_at=now,
        expires_at=now + ttl_s,
        max_uses=uses,
        labels=dict(labels or {}),
    )
    return raw, record


def join_string(raw: str, ca_fingerprint: str) -> str:
    """What the operator copies to the host: `id.secret@sha256:<CA fingerprint>`."""
    return str(JoinString(token=raw, ca_fingerprint=ca_fingerprint))


def check(
    hub_key: bytes,
    raw: str,
    record: JoinTokenRecord | None,
    *,
    now: float,
    gateway_id: str | None = None,
) -> JoinGrant:
    """Accept `raw` against its stored `record` (None when the id was not found).

    `gateway_id` is the gateway the sidecar asks to enroll as, if any. Raises a
    JoinTokenError subclass naming the cause and the fix. The secret is checked
    before anything else is revealed about the token.
    """
    _check_hub_key(hub_key)
    token_id, _ = _split(raw)
    if record is None or record.token_id != token_id:
        raise JoinTokenUnknownError(_unknown_message())
    if not hmac.compare_digest(hash_token(hub_key, raw), record.secret_hmac):
        raise JoinTokenUnknownError(_unknown_message())
    fix = f"create a new one with `{JOIN_TOKEN_COMMAND} {record.gateway_id or 'GATEWAY'}`"
    if now >= record.expires_at:
        raise JoinTokenExpiredError(
            f"join token {token_id} expired {_ago(now - record.expires_at)} ago; {fix}"
        )
    if record.uses >= record.max_uses:
        what = "already used" if record.max_uses == 1 else f"used up (all {record.max_uses} uses)"
        raise JoinTokenUsedError(f"join token {token_id} {what}; {fix}")
    if gateway_id:
        try:
            validate_gateway_id(gateway_id)
        except ValueError as exc:
            raise JoinTokenMalformedError(str(exc)) from None
    if record.gateway_id is not None:
        if gateway_id and gateway_id != record.gateway_id:
            raise JoinTokenWrongGatewayError(
                f"join token {token_id} is for gateway {record.gateway_id}, not {gateway_id}; "
                f"enroll without naming a gateway, or create a token for {gateway_id} with "
                f"`{JOIN_TOKEN_COMMAND} {gateway_id}`"
            )
        return JoinGrant(token_id, record.gateway_id, True, record.uses_left - 1)
    return JoinGrant(token_id, gateway_id or None, False, record.uses_left - 1)


# ---------------------------------------------------------------------- helpers


def _split(raw: str) -> tuple[str, str]:
    # Accept a full join string as well: operators paste what they were given.
    token = raw.strip().partition("@")[0]
    try:
        return split_join_token(token)
    except MalformedJoinStringError as exc:
        raise JoinTokenMalformedError(str(exc)) from None


def _random_text(length: int) -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def _check_hub_key(hub_key: bytes) -> None:
    if len(hub_key) < MIN_HUB_KEY_BYTES:
        raise ValueError(
            f"hub key is {len(hub_key)} bytes, fewer than {MIN_HUB_KEY_BYTES}; "
            "load it with missioncontrol.private_files.load_or_create_secret"
        )


def _unknown_message() -> str:
    return (
        "join token not recognised (never issued, deleted, or mistyped); copy it again or "
        f"create a new one with `{JOIN_TOKEN_COMMAND} GATEWAY`"
    )


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"
