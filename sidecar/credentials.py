"""Agent token verification on the sidecar: an in-memory index of token verifiers.

The hub sends, per agent, the sha256 of each accepted raw token (AgentCredential);
LocalState keeps them. This index holds them by the token's public id, so checking
a call is one dict hit, one sha256 and one constant-time compare: microseconds, and
bounded work for junk input because the shape is checked before anything else.

Token shape (the hub mints them, hub/provisioning/agent_tokens.py): `<token_id>.<secret>`, where
token_id is 12 characters of [a-z0-9] and secret 43 characters of unpadded
URL-safe base64. tests/unit/test_credentials.py pins that both ends agree.

Error messages never contain the token; a token id is public and may be logged.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from missioncontrol.agent_token import MALFORMED, MalformedTokenError, parse_token_id
from sidecar.state import Credential

# Keys of failed checks that are not charged to a known token id (see failure_key).
UNKNOWN_TOKENS = "unknown"
MALFORMED_TOKENS = "malformed"


class CredentialError(Exception):
    """A token that does not authenticate an agent. Every kind answers HTTP 401."""

    reason = "invalid"


class MalformedToken(CredentialError):
    reason = "malformed"

    def __init__(self) -> None:
        super().__init__(MALFORMED)


class UnknownToken(CredentialError):
    reason = "unknown"

    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        super().__init__(
            f"agent token {token_id} is not valid on this gateway: it was never issued here, "
            "was replaced, or its agent was removed; read the agent's .mc-agent-token again"
        )


class ExpiredToken(CredentialError):
    reason = "expired"

    def __init__(self, token_id: str, ago_s: float) -> None:
        self.token_id = token_id
        super().__init__(
            f"agent token {token_id} was rotated and its grace window ended {ago_s:.0f} s ago; "
            "read the agent's .mc-agent-token again for the current token"
        )


@dataclass(frozen=True)
class _Verifier:
    agent_id: str
    sha256: bytes
    not_after: float | None  # None: valid until replaced; set: end of a rotated token's grace


def token_id_of(raw: str) -> str:
    """The public id of a raw token; raises MalformedToken. O(1) for any input length."""
    try:
        return parse_token_id(raw)
    except MalformedTokenError:
        raise MalformedToken() from None


class CredentialSource(Protocol):
    """Where verifiers live (LocalState): all of them, or one agent's."""

    def credentials(self, agent_id: str | None = None) -> list[Credential]: ...


class CredentialIndex:
    """token_id -> (agent_id, sha256 of the raw token, not_after), built from local state."""

    def __init__(self, source: CredentialSource, *, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock
        self._by_id: dict[str, _Verifier] = {}
        self._ids_by_agent: dict[str, set[str]] = {}

    def reload(self) -> int:
        """Rebuild from local state (at start); returns the number of verifiers."""
        by_id: dict[str, _Verifier] = {}
        ids_by_agent: dict[str, set[str]] = {}
        for c in self._source.credentials():
            by_id[c.token_id] = _Verifier(c.agent_id, bytes(c.sha256), c.not_after)
            ids_by_agent.setdefault(c.agent_id, set()).add(c.token_id)
        # Swapped in whole: a request never sees a half-built index.
        self._by_id, self._ids_by_agent = by_id, ids_by_agent
        return len(by_id)

    def reload_agent(self, agent_id: str) -> int:
        """Re-read one agent's verifiers (after a command for it); returns how many it has.

        A command replaces an agent's whole set (or removes it), so this is exact, and
        costs one indexed query instead of re-reading every agent's."""
        fresh = self._source.credentials(agent_id)
        for token_id in self._ids_by_agent.pop(agent_id, set()):
            self._by_id.pop(token_id, None)
        for c in fresh:
            self._by_id[c.token_id] = _Verifier(c.agent_id, bytes(c.sha256), c.not_after)
        if fresh:
            self._ids_by_agent[agent_id] = {c.token_id for c in fresh}
        return len(fresh)

    def accept(self, agent_id: str, creds: list[Credential]) -> None:
        """Accept `creds` for `agent_id` besides what it has, until its next reload.

        Called before a command writes the agent's token file: the agent may read the
        file and call at once, before the command is recorded and its set replaces
        the old one, and must not be refused the token it was just given."""
        for c in creds:
            self._by_id[c.token_id] = _Verifier(agent_id, bytes(c.sha256), c.not_after)
            self._ids_by_agent.setdefault(agent_id, set()).add(c.token_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def agents(self) -> frozenset[str]:
        return frozenset(self._ids_by_agent)

    def failure_key(self, raw: str) -> str:
        """Who a failed check with `raw` is charged to (sidecar/agent_api.py): its token id
        if that id is known here, else "unknown", or "malformed" for what is no token."""
        try:
            token_id = token_id_of(raw)
        except MalformedToken:
            return MALFORMED_TOKENS
        return token_id if token_id in self._by_id else UNKNOWN_TOKENS

    def verify(self, raw: str) -> str:
        """The agent `raw` authenticates; raises MalformedToken, UnknownToken or ExpiredToken."""
        token_id = token_id_of(raw)
        verifier = self._by_id.get(token_id)
        # Hash even for an unknown id, so timing does not tell which ids exist.
        digest = hashlib.sha256(raw.encode("ascii")).digest()
        if verifier is None or not hmac.compare_digest(digest, verifier.sha256):
            raise UnknownToken(token_id)
        if verifier.not_after is not None:
            now = self._clock()
            if now >= verifier.not_after:
                raise ExpiredToken(token_id, now - verifier.not_after)
        return verifier.agent_id
