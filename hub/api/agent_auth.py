"""Agent authentication for the hub's agent-facing API, in O(1).

An agent sends its raw token (the content of its `.mc-agent-token` file) as
`X-Agent-Token: <token>` or `Authorization: Bearer <token>`. The token's public id
part finds the one stored digest by primary key (joined with the agent row), and a
constant-time HMAC compare decides: a few microseconds, whatever the fleet size.
A previous token is accepted until its rotation grace (`not_after`) ends.

Every failure is the same 401 with the usual error shape; the detail never echoes the
token, and the log names only the token's public id.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web

from hub.link.agent_calls import VIA_GATEWAY_HEADER
from hub.provisioning.agent_tokens import TokenKeyring
from hub.store.database import Database
from missioncontrol.agent_api import TOKEN_FILE_NAME, TOKEN_HEADER, token_from_headers
from missioncontrol.agent_token import MalformedTokenError
from missioncontrol.http import REQUEST_ID, ApiError
from missioncontrol.log import get_logger

log = get_logger("hub.api.agent_auth")

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agent"'}
MISSING = (
    f"missing agent token: send {TOKEN_HEADER}: <the content of the agent's {TOKEN_FILE_NAME} file>"
)
INVALID = f"invalid agent token: send the current content of the agent's {TOKEN_FILE_NAME} file"


@dataclass(frozen=True)
class AgentPrincipal:
    """The agent an agent-facing request acts as."""

    id: str
    gateway_id: str
    board_id: str | None  # None: the gateway's main agent
    kind: str  # worker, lead, main
    gateway_agent_id: str

    @property
    def is_board_lead(self) -> bool:
        return self.kind == "lead"

    @property
    def is_gateway_main(self) -> bool:
        return self.kind == "main"


def _lookup(conn: sqlite3.Connection, token_id: str) -> sqlite3.Row | None:
    return conn.execute(
        """SELECT t.digest, t.not_after, a.id, a.gateway_id, a.board_id, a.kind,
                  a.gateway_agent_id, a.status
           FROM agent_tokens t JOIN agents a ON a.id = t.agent_id
           WHERE t.token_id = ?""",
        (token_id,),
    ).fetchone()


class AgentAuthenticator:
    """`await authenticator(request)` -> AgentPrincipal, or ApiError(401)."""

    def __init__(self, db: Database, keyring: TokenKeyring) -> None:
        self.db = db
        self.keyring = keyring

    async def __call__(self, request: web.Request) -> AgentPrincipal:
        raw = token_from_headers(request.headers)
        if raw is None:
            raise ApiError(401, MISSING, CHALLENGE)
        try:
            token_id = self.keyring.parse(raw)
        except MalformedTokenError:
            self._refuse(request, "malformed", None)
        row = await self.db.read(lambda conn: _lookup(conn, token_id))
        # Verify even when the id is unknown, so both paths cost the same HMAC.
        digest = row["digest"] if row is not None else b"\0" * 32
        matches = self.keyring.verify(raw, digest)
        if row is None or not matches:
            self._refuse(request, "unknown" if row is None else "mismatch", token_id)
        if row["not_after"] is not None and row["not_after"] <= time.time():
            self._refuse(request, "expired", token_id)
        if row["status"] == "deleting":
            self._refuse(request, "agent_deleting", token_id)
        via = request.headers.get(VIA_GATEWAY_HEADER)
        if via is not None and via != row["gateway_id"]:
            # A sidecar forwarded a token of an agent that is not on its gateway.
            self._refuse(request, "wrong_gateway", token_id)
        return AgentPrincipal(
            id=row["id"],
            gateway_id=row["gateway_id"],
            board_id=row["board_id"],
            kind=row["kind"],
            gateway_agent_id=row["gateway_agent_id"],
        )

    @staticmethod
    def _refuse(request: web.Request, reason: str, token_id: str | None) -> NoReturn:
        log.info(
            "agent.auth.failed",
            reason=reason,
            token_id=token_id,
            path=request.path,
            request_id=request.get(REQUEST_ID),
        )
        raise ApiError(401, INVALID, CHALLENGE)
