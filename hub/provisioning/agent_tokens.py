"""Agent tokens: minting, parsing, keyed digests, rotation windows.

Shape: `<token_id>.<secret>`, 56 ASCII characters. `token_id` is 12 characters of
[a-z0-9] (62 random bits): the public lookup key, indexed by the store, so finding
the agent is one index hit. `secret` is 32 random bytes in unpadded URL-safe
base64 (43 characters, 256 bits).

The hub stores only HMAC-SHA256(token key, raw token), where the token key is
derived from the hub's secret key. A copy of the database therefore yields no
usable token, and checking one costs one HMAC and a constant-time compare (a few
microseconds). A slow KDF buys nothing for 256-bit random secrets and would put
tens of milliseconds on every agent request (the reference's PBKDF2 scan).

The sidecar verifies agent calls locally without the hub key: it gets
`sidecar_verifier(raw)` = sha256(raw token) in `AgentCredential.sha256`. A plain
hash is enough there for the same reason: nobody can search a 256-bit space.

The raw token exists only when minted: it goes once into the agent's
`.mc-agent-token` file (through the ApplyAgent or SetAgentCredentials command)
and is never stored by the hub.

Times are Unix seconds, as in the store.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from missioncontrol.agent_token import (  # the format, shared with the sidecar
    TOKEN_ID_CHARS,
    MalformedTokenError,
    parse_token_id,
    sidecar_verifier,
)
from missioncontrol.private_files import load_or_create_secret

TOKEN_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SECRET_BYTES = 32
HUB_KEY_BYTES = 32
DEFAULT_ROTATION_GRACE_S = 10 * 60

# Domain separation: the hub key also keys join tokens (hub/pki/join_tokens.py); an
# agent token digest must never be valid as anything else.
_TOKEN_KEY_LABEL = b"mission-control agent token v1"


@dataclass(frozen=True)
class StoredToken:
    """What the hub keeps for one token; never the raw token."""

    token_id: str
    digest: bytes  # HMAC-SHA256(token key, raw), for the hub's own check
    sidecar_sha256: bytes  # sha256(raw), sent to the sidecar in AgentCredential.sha256
    not_after: float | None = None  # None: the current token; set: end of its rotation grace

    def valid_at(self, now: float) -> bool:
        return self.not_after is None or now < self.not_after


@dataclass(frozen=True)
class MintedToken:
    """A fresh token. `raw` goes into the agent's token file once, then is dropped."""

    raw: str = dataclasses.field(repr=False)  # kept out of reprs so it cannot reach a log
    token_id: str
    digest: bytes

    @property
    def sidecar_sha256(self) -> bytes:
        return sidecar_verifier(self.raw)

    def stored(self) -> StoredToken:
        return StoredToken(self.token_id, self.digest, self.sidecar_sha256)


@dataclass(frozen=True)
class AgentTokens:
    """An agent's accepted tokens: the current one and, during a rotation, the previous one.

    Rotation keeps the previous token valid until its grace ends, so an agent that
    still holds it (a run that read the file before the new one was written) is not
    locked out. Only one previous token is kept: rotating twice within a grace
    window revokes the oldest immediately.
    """

    current: StoredToken
    previous: StoredToken | None = None

    def rotated(
        self, new: MintedToken, *, now: float, grace_s: float = DEFAULT_ROTATION_GRACE_S
    ) -> AgentTokens:
        """The token set after `new` replaces the current token at `now`."""
        if grace_s < 0:
            raise ValueError(f"rotation grace {grace_s} s must be >= 0")
        if new.token_id == self.current.token_id:
            raise ValueError("the new token has the current token's id; mint a new one")
        ending = dataclasses.replace(self.current, not_after=now + grace_s)
        return AgentTokens(current=new.stored(), previous=ending if grace_s > 0 else None)

    def accepted(self, now: float) -> tuple[StoredToken, ...]:
        """Tokens valid at `now`: what the sidecar gets as AgentCredentials, and what the
        hub's token-id index must hold for this agent."""
        if self.previous is not None and self.previous.valid_at(now):
            return (self.current, self.previous)
        return (self.current,)

    def find(self, token_id: str, now: float) -> StoredToken | None:
        """The accepted token with this id, if any."""
        for token in self.accepted(now):
            if token.token_id == token_id:
                return token
        return None

    def pruned(self, now: float) -> AgentTokens:
        """The same set without a previous token whose grace has ended."""
        if self.previous is not None and not self.previous.valid_at(now):
            return AgentTokens(current=self.current)
        return self


class TokenKeyring:
    """Mints agent tokens and checks them against stored digests, keyed by the hub key."""

    def __init__(self, hub_key: bytes) -> None:
        if len(hub_key) < HUB_KEY_BYTES:
            raise ValueError(
                f"hub key is {len(hub_key)} bytes, fewer than {HUB_KEY_BYTES}; "
                "load it with TokenKeyring.from_file"
            )
        self._key = hmac.digest(hub_key, _TOKEN_KEY_LABEL, "sha256")

    @classmethod
    def from_file(cls, path: Path) -> TokenKeyring:
        """Keyring over the hub key in `path`, created (32 random bytes, 0600) if missing."""
        return cls(load_or_create_secret(path, HUB_KEY_BYTES))

    def mint(self) -> MintedToken:
        token_id = "".join(secrets.choice(TOKEN_ID_ALPHABET) for _ in range(TOKEN_ID_CHARS))
        raw = f"{token_id}.{secrets.token_urlsafe(SECRET_BYTES)}"
        return MintedToken(raw=raw, token_id=token_id, digest=self.digest(raw))

    def digest(self, raw: str) -> bytes:
        """HMAC-SHA256 of the whole raw token (the id is bound into the MAC)."""
        parse_token_id(raw)
        return hmac.digest(self._key, raw.encode("ascii"), "sha256")

    def parse(self, raw: str) -> str:
        """The token's public id; raises MalformedTokenError."""
        return parse_token_id(raw)

    def verify(self, raw: str, stored_digest: bytes) -> bool:
        """Whether `raw` is the token behind `stored_digest`. False for malformed input."""
        try:
            candidate = self.digest(raw)
        except MalformedTokenError:
            return False
        return hmac.compare_digest(candidate, stored_digest)

    def authenticate(self, raw: str, tokens: AgentTokens, now: float) -> StoredToken | None:
        """The accepted token `raw` matches in an agent's set, or None."""
        try:
            token = tokens.find(parse_token_id(raw), now)
        except MalformedTokenError:
            return None
        if token is None or not self.verify(raw, token.digest):
            return None
        return token
