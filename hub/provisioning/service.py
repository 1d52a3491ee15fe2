"""What admins ask of agents: create, re-apply, rotate a token, delete (an agent or a board).

Each request is one transaction of the reconciler's (`Reconciler.write`): the row
change, the lifecycle step it causes and the commands that step queues commit
together, so a sidecar never receives a command for a change that did not happen.
Deletes go through the sidecar and never fail because a gateway is down.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from hub.boards import finish_deleting, load_board
from hub.lifecycle import decisions as lc
from hub.lifecycle.reconciler import Reconciler, Transition
from hub.provisioning.agent_tokens import DEFAULT_ROTATION_GRACE_S, TokenKeyring
from hub.provisioning.agents import (
    DEFAULT_HEARTBEAT,
    AgentConflict,
    AgentError,
    AgentRow,
    RenderOptions,
    accepted_tokens,
    credentials_for,
    gateway_agent_id,
    parse_every,
    require_agent,
)
from hub.provisioning.rendering import AgentKind, token_file
from hub.store.errors import UnknownGateway
from hub.store.event_log import add_event
from hub.store.gateways import gateway_in
from hub.store.outbox import enqueue_command_in
from protos import link_pb2 as pb

MAX_ROTATION_GRACE_S = 24 * 3600


@dataclass(frozen=True)
class AgentSpec:
    """What an admin asks for when creating an agent."""

    name: str
    board_id: str | None = None
    gateway_id: str | None = None  # for a gateway main agent (no board)
    kind: AgentKind = AgentKind.WORKER
    identity_profile: dict[str, Any] | None = None
    heartbeat_config: dict[str, Any] | None = None


class Provisioning:
    def __init__(self, reconciler: Reconciler, keyring: TokenKeyring) -> None:
        self.reconciler = reconciler
        self.keyring = keyring

    async def create_agent(self, spec: AgentSpec) -> AgentRow:
        minted = self.keyring.mint()

        def op(tx: Transition) -> AgentRow:
            conn, now = tx.conn, tx.now
            board_id = spec.board_id
            if board_id is not None:
                board = conn.execute(
                    "SELECT gateway_id, status FROM boards WHERE id = ?", (board_id,)
                ).fetchone()
                if board is None:
                    raise AgentError(f"board {board_id} does not exist")
                if board["status"] == "deleting":
                    raise AgentError(f"board {board_id} is being deleted")
                gateway_id = board["gateway_id"]
            elif spec.kind is AgentKind.MAIN and spec.gateway_id:
                gateway_id = spec.gateway_id
            else:
                raise AgentError("an agent needs a board_id (or is a gateway's main agent)")
            try:
                gateway_in(conn, gateway_id)
            except UnknownGateway:
                raise AgentError(f"gateway {gateway_id} does not exist") from None
            heartbeat = {**DEFAULT_HEARTBEAT, **(spec.heartbeat_config or {})}
            interval_s = parse_every(heartbeat["every"])
            agent_id = str(uuid.uuid4())
            gw_agent_id = gateway_agent_id(spec.kind, agent_id, board_id, gateway_id)
            try:
                conn.execute(
                    """INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name,
                           heartbeat_config, identity_profile, heartbeat_interval_s,
                           created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        agent_id,
                        gateway_id,
                        board_id,
                        spec.kind.value,
                        gw_agent_id,
                        spec.name,
                        json.dumps(heartbeat),
                        json.dumps(spec.identity_profile or {}),
                        interval_s,
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError:
                what = "a lead" if spec.kind is AgentKind.LEAD else "a main agent"
                raise AgentConflict(
                    f"this {'board' if board_id else 'gateway'} already has {what}"
                ) from None
            conn.execute(
                "INSERT INTO agent_tokens (token_id, agent_id, digest, sidecar_sha256, "
                "created_at) VALUES (?, ?, ?, ?, ?)",
                (minted.token_id, agent_id, minted.digest, minted.sidecar_sha256, now),
            )
            add_event(
                conn,
                "agent.created",
                gateway_id=gateway_id,
                agent_id=agent_id,
                at=now,
                agent_kind=spec.kind.value,
            )
            tx.step(
                agent_id,
                lc.ApplyRequested(generation=1, wake=True),
                RenderOptions(token=minted.raw),
            )
            return require_agent(conn, agent_id)

        return await self.reconciler.write(op)

    async def reapply(
        self,
        agent_id: str,
        *,
        overwrite: bool = False,
        force_bootstrap: bool = False,
        reset_session: bool = False,
    ) -> AgentRow:
        """Re-render and re-apply (PATCH ?force, template sync): a new generation, same token;
        `reset_session` starts the agent's main session afresh once the files are in place."""
        render = RenderOptions(
            overwrite=overwrite, force_bootstrap=force_bootstrap, reset_session=reset_session
        )

        def op(tx: Transition) -> AgentRow:
            row = require_agent(tx.conn, agent_id)
            generation = row.lifecycle_generation + 1
            tx.step(agent_id, lc.ApplyRequested(generation=generation, wake=False), render)
            return require_agent(tx.conn, agent_id)

        return await self.reconciler.write(op)

    async def rotate_token(
        self, agent_id: str, *, grace_s: float = DEFAULT_ROTATION_GRACE_S
    ) -> AgentRow:
        """A new token, written to the agent's token file; the previous one stays valid for
        `grace_s` (a run that read the old file is not locked out). Nothing else changes:
        no new generation, no wake."""
        if not 0 <= grace_s <= MAX_ROTATION_GRACE_S:
            raise AgentError(f"grace_s must be between 0 and {MAX_ROTATION_GRACE_S}")
        minted = self.keyring.mint()

        def op(tx: Transition) -> AgentRow:
            conn, now = tx.conn, tx.now
            row = require_agent(conn, agent_id)
            # Only one previous token is kept: an older one still in grace ends now.
            conn.execute(
                "DELETE FROM agent_tokens WHERE agent_id = ? AND not_after IS NOT NULL", (agent_id,)
            )
            conn.execute(
                "UPDATE agent_tokens SET not_after = ? WHERE agent_id = ?",
                (now + grace_s, agent_id),
            )
            conn.execute(
                "INSERT INTO agent_tokens (token_id, agent_id, digest, sidecar_sha256, "
                "created_at) VALUES (?, ?, ?, ?, ?)",
                (minted.token_id, agent_id, minted.digest, minted.sidecar_sha256, now),
            )
            secret = token_file(minted.raw)
            enqueue_command_in(
                conn,
                row.gateway_id,
                pb.Command(
                    set_credentials=pb.SetAgentCredentials(
                        agent_id=row.gateway_agent_id,
                        credentials=credentials_for(accepted_tokens(conn, agent_id, now)),
                        token_file=pb.WorkspaceFile(
                            name=secret.name, content=secret.content, secret=True
                        ),
                    )
                ),
            )
            add_event(
                conn,
                "agent.token.rotated",
                gateway_id=row.gateway_id,
                agent_id=agent_id,
                at=now,
                grace_s=grace_s,
            )
            return row

        return await self.reconciler.write(op)

    async def delete_agent(self, agent_id: str, *, delete_files: bool = True) -> None:
        """Mark `deleting` and queue RemoveAgent; never fails because a gateway is down."""
        await self.reconciler.write(
            lambda tx: _delete_in(tx, require_agent(tx.conn, agent_id), delete_files)
        )

    async def delete_board(self, board_id: str) -> bool:
        """Remove the board's agents through their sidecars; the board goes with the last
        one (at once if it has none). Returns True if the board is already gone."""

        def op(tx: Transition) -> bool:
            conn = tx.conn
            load_board(conn, board_id)
            conn.execute(
                "UPDATE boards SET status = 'deleting', updated_at = ? WHERE id = ?",
                (tx.now, board_id),
            )
            rows = conn.execute(
                "SELECT id FROM agents WHERE board_id = ? AND status != ?",
                (board_id, lc.Status.DELETING.value),
            ).fetchall()
            for (agent_id,) in rows:
                _delete_in(tx, require_agent(conn, agent_id), True)
            return finish_deleting(conn, board_id)

        return bool(await self.reconciler.write(op))


def _delete_in(tx: Transition, row: AgentRow, delete_files: bool) -> None:
    tx.step(row.id, lc.DeleteRequested())
    enqueue_command_in(
        tx.conn,
        row.gateway_id,
        pb.Command(
            remove_agent=pb.RemoveAgent(
                agent_id=row.gateway_agent_id,
                generation=row.lifecycle_generation,
                delete_files=delete_files,
            )
        ),
        now=tx.now,
    )
