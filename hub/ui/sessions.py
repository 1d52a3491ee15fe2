"""Dashboard sessions: the admin token once at login, then a cookie; CSRF tokens for forms.

A session is a random 256-bit id in an `HttpOnly`, `SameSite=Strict` cookie (`Secure`,
and named with the `__Host-` prefix, when the dashboard is served over TLS). The hub
keeps only a digest of the id, with the session's CSRF token, its expiry and the
messages waiting for the next page. Sessions live in the hub's memory: a restart or a
logout ends them, and nothing a browser holds outlives them.

The login form has no session yet; it is protected by a double-submit token (a
random cookie the form must repeat), so another site cannot log a browser in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SESSION_LIFETIME_S = 12 * 3600  # an absolute lifetime: log in again after it
MAX_SESSIONS = 1_000  # past this, the oldest session ends first
LOGIN_CSRF_LIFETIME_S = 3600
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class CookieNames:
    session: str
    login_csrf: str

    @classmethod
    def for_transport(cls, secure: bool) -> CookieNames:
        # `__Host-` cookies must be Secure, Path=/ and host-only: a browser refuses to let
        # a sibling subdomain or plain-HTTP page set or shadow them.
        prefix = "__Host-" if secure else ""
        return cls(session=f"{prefix}mc_session", login_csrf=f"{prefix}mc_login_csrf")


@dataclass
class Flash:
    kind: str  # "ok" or "error"
    text: str
    secret: str | None = None  # shown once (a join token), then forgotten


@dataclass
class Session:
    digest: bytes
    csrf_token: str
    created_at: float
    expires_at: float
    flashes: list[Flash] = field(default_factory=list)

    def flash(
        self, kind: str, text: str, *, secret: str | None = None, first: bool = False
    ) -> None:
        self.flashes.insert(0 if first else len(self.flashes), Flash(kind, text, secret))

    def take_flashes(self) -> list[Flash]:
        flashes, self.flashes = self.flashes, []
        return flashes

    def csrf_ok(self, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(
            str(offered).encode(), self.csrf_token.encode()
        )


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


class Sessions:
    """The live sessions, by the digest of their id."""

    def __init__(
        self,
        *,
        lifetime_s: float = SESSION_LIFETIME_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: dict[bytes, Session] = {}

    def create(self) -> tuple[str, Session]:
        """A new session: (the id for the cookie, the session)."""
        now = self.clock()
        self._sessions = {d: s for d, s in self._sessions.items() if s.expires_at > now}
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: s.created_at)
            del self._sessions[oldest.digest]
        session_id = secrets.token_urlsafe(32)
        session = Session(
            digest=_digest(session_id),
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.lifetime_s,
        )
        self._sessions[session.digest] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session a cookie names, or None (unknown, expired, malformed)."""
        if not session_id or len(session_id) > 128 or not session_id.isascii():
            return None
        session = self._sessions.get(_digest(session_id))
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._sessions[session.digest]
            return None
        return session

    def end(self, session: Session) -> None:
        self._sessions.pop(session.digest, None)

    def __len__(self) -> int:
        return len(self._sessions)


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def login_csrf_ok(cookie: str | None, offered: str | None) -> bool:
    """The login form repeated the token its cookie holds (double submit)."""
    return (
        bool(cookie)
        and bool(offered)
        and hmac.compare_digest(str(cookie).encode(), str(offered).encode())
    )


def token_matches(offered: str, expected: str) -> bool:
    """The admin token check, constant-time; text that is not ASCII never matches."""
    offered = offered.strip()
    return (
        bool(offered)
        and offered.isascii()
        and hmac.compare_digest(offered.encode(), expected.encode())
    )
