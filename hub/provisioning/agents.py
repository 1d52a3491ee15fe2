"""Agents in the store: rows, identities, and the commands that provision them.

Everything here runs inside a store transaction (`conn`), so a row change and the
command it causes commit together. Identities follow the system we replace:

| kind   | gateway agent id           | session key                     |
|--------|----------------------------|---------------------------------|
| worker | `mc-<agent uuid>`          | `agent:mc-<agent uuid>:main`    |
| lead   | `lead-<board uuid>`        | `agent:lead-<board uuid>:main`  |
| main   | `mc-gateway-<gateway uuid>`| `agent:mc-gateway-<uuid>:main`  |

and the workspace is `<workspace root>/workspace-<gateway agent id>`.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field, fields
from typing import Any

from hub.boards import board_profile
from hub.lifecycle.decisions import AgentLifecycle, Phase, Status, WaitReason
from hub.provisioning.agent_tokens import StoredToken
from hub.provisioning.rendering import (
    AgentContext,
    AgentKind,
    ApplyAction,
    IdentityProfile,
    RenderError,
    render_file_set,
    render_wake_message,
)
from hub.store.errors import StoreError
from hub.store.gateways import gateway_in
from hub.users import user_profile
from missioncontrol.timefmt import iso
from protos import link_pb2 as pb
from protos.contract import GatewayGeneration

DEFAULT_HEARTBEAT = {"every": "10m", "target": "none"}
MAX_HEARTBEAT_S = 7 * 24 * 3600
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")


class AgentError(StoreError):
    """An agent request that cannot be carried out; the message says why."""


class AgentConflict(AgentError):
    """The request clashes with an existing agent (one lead per board, one main agent)."""


def parse_every(every: str) -> int:
    """OpenClaw heartbeat cadence ("30s", "10m", "1h", "0m") in seconds."""
    match = _DURATION.match(str(every))
    if not match:
        raise AgentError(f"heartbeat every {every!r} is not a duration like 30s, 10m or 1h")
    value, unit = int(match.group(1)), match.group(2) or "s"
    seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds > MAX_HEARTBEAT_S:
        raise AgentError(f"heartbeat every {every!r} is longer than 7 days")
    return seconds


def gateway_agent_id(kind: AgentKind, agent_id: str, board_id: str | None, gateway_id: str) -> str:
    if kind is AgentKind.LEAD:
        return f"lead-{board_id}"
    if kind is AgentKind.MAIN:
        return f"mc-gateway-{gateway_id}"
    return f"mc-{agent_id}"


def workspace_path(workspace_root: str, gateway_agent_id: str) -> str:
    return f"{workspace_root.rstrip('/')}/workspace-{gateway_agent_id}"


@dataclass(frozen=True)
class AgentRow:
    id: str
    gateway_id: str
    board_id: str | None
    kind: str
    gateway_agent_id: str
    name: str
    status: str
    status_reason: str | None
    lifecycle_generation: int
    wake_attempts: int
    checkin_deadline_at: float | None
    last_wake_sent_at: float | None
    last_seen_at: float | None
    last_provision_error: str | None
    applied_generation: int
    heartbeat_config: str
    identity_profile: str
    created_at: float
    updated_at: float
    phase: str
    delivery_failures: int
    heartbeat_interval_s: int
    identity_template: str | None
    soul_template: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AgentRow:
        names = {f.name for f in fields(cls)}
        return cls(**{k: row[k] for k in row.keys() if k in names})  # noqa: SIM118

    def snapshot(
        self,
        link_up_since: float | None,
        *,
        gateway_reachable: bool = True,
        gateway_up_since: float | None = None,
    ) -> AgentLifecycle:
        """The lifecycle fields, with what only the reconciler knows (not persisted): when
        the sidecar's link came up, and what the sidecar last said of its gateway."""
        return AgentLifecycle(
            status=Status(self.status),
            reason=WaitReason(self.status_reason) if self.status_reason else None,
            lifecycle_generation=self.lifecycle_generation,
            applied_generation=self.applied_generation,
            wake_attempts=self.wake_attempts,
            checkin_deadline_at=self.checkin_deadline_at,
            last_wake_sent_at=self.last_wake_sent_at,
            last_seen_at=self.last_seen_at,
            last_provision_error=self.last_provision_error,
            heartbeat_interval_s=self.heartbeat_interval_s,
            phase=Phase(self.phase),
            delivery_failures=self.delivery_failures,
            link_up_since=link_up_since,
            gateway_reachable=gateway_reachable,
            gateway_up_since=gateway_up_since,
        )


def load_agent(conn: sqlite3.Connection, agent_id: str) -> AgentRow | None:
    row = conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
    return AgentRow.from_row(row) if row else None


def list_agents_in(
    conn: sqlite3.Connection,
    *,
    board_id: str | None,
    gateway_id: str | None,
    managed: bool,
    limit: int,
    offset: int,
) -> tuple[list[AgentRow], int]:
    """One page of agents, oldest first. Every agent the hub holds is one it manages, so
    `managed=False` (Mission Control's is_mc_agent=false) lists none."""
    where = "WHERE (? IS NULL OR board_id = ?) AND (? IS NULL OR gateway_id = ?) AND ?"
    args = (board_id, board_id, gateway_id, gateway_id, managed)
    total = conn.execute(f"SELECT COUNT(*) FROM agents {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM agents {where} ORDER BY created_at, id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [AgentRow.from_row(r) for r in rows], total


def require_agent(conn: sqlite3.Connection, agent_id: str) -> AgentRow:
    row = load_agent(conn, agent_id)
    if row is None:
        raise AgentError(f"agent {agent_id} does not exist")
    return row


def load_agent_by_gateway_id(
    conn: sqlite3.Connection, gateway_id: str, gateway_agent_id: str
) -> AgentRow | None:
    row = conn.execute(
        "SELECT * FROM agents WHERE gateway_id = ? AND gateway_agent_id = ?",
        (gateway_id, gateway_agent_id),
    ).fetchone()
    return AgentRow.from_row(row) if row else None


def save_snapshot(conn: sqlite3.Connection, agent_id: str, s: AgentLifecycle, now: float) -> None:
    conn.execute(
        """UPDATE agents SET status = ?, status_reason = ?, lifecycle_generation = ?,
               applied_generation = ?, wake_attempts = ?, checkin_deadline_at = ?,
               last_wake_sent_at = ?, last_seen_at = ?, last_provision_error = ?,
               phase = ?, delivery_failures = ?, updated_at = ?
           WHERE id = ?""",
        (
            s.status.value,
            s.reason.value if s.reason else None,
            s.lifecycle_generation,
            s.applied_generation,
            s.wake_attempts,
            s.checkin_deadline_at,
            s.last_wake_sent_at,
            s.last_seen_at,
            s.last_provision_error,
            s.phase.value,
            s.delivery_failures,
            now,
            agent_id,
        ),
    )


def accepted_tokens(conn: sqlite3.Connection, agent_id: str, now: float) -> list[StoredToken]:
    rows = conn.execute(
        "SELECT token_id, digest, sidecar_sha256, not_after FROM agent_tokens "
        "WHERE agent_id = ? AND (not_after IS NULL OR not_after > ?)",
        (agent_id, now),
    ).fetchall()
    return [StoredToken(r[0], r[1], r[2], r[3]) for r in rows]


def credentials_for(tokens: list[StoredToken]) -> list[pb.AgentCredential]:
    out = []
    for token in tokens:
        credential = pb.AgentCredential(token_id=token.token_id, sha256=token.sidecar_sha256)
        if token.not_after is not None:
            credential.not_after.FromNanoseconds(int(token.not_after * 1e9))
        out.append(credential)
    return out


def render_context(
    conn: sqlite3.Connection, agent: AgentRow
) -> tuple[AgentContext, GatewayGeneration]:
    """The template context for an agent, from its gateway, board and profile."""
    gateway = gateway_in(conn, agent.gateway_id)
    if not gateway.workspace_root or not gateway.agent_api_url:
        raise AgentError(
            f"gateway {gateway.id} has not connected yet: its workspace root and local agent "
            "API are unknown. Start its sidecar, then retry"
        )
    generation = GatewayGeneration.of(gateway.gateway_generation)
    if generation is GatewayGeneration.UNKNOWN:
        generation = GatewayGeneration.CURRENT
    board = board_profile(conn, agent.board_id) if agent.board_id else None
    session_key = f"agent:{agent.gateway_agent_id}:main"
    main_key = f"agent:mc-gateway-{gateway.id}:main"
    try:
        context = AgentContext(
            agent_name=agent.name,
            agent_id=agent.gateway_agent_id,
            session_key=session_key,
            main_session_key=main_key,
            kind=AgentKind(agent.kind),
            base_url=gateway.agent_api_url,
            workspace_root=gateway.workspace_root,
            workspace_path=workspace_path(gateway.workspace_root, agent.gateway_agent_id),
            heartbeat_interval_s=agent.heartbeat_interval_s,
            identity=IdentityProfile.from_mapping(json.loads(agent.identity_profile)),
            user=user_profile(conn),
            board=board,
        )
    except RenderError as exc:
        raise AgentError(f"cannot render the agent's files: {exc}") from None
    return context, generation


@dataclass(frozen=True)
class RenderOptions:
    """How an apply renders the agent's files (template sync and PATCH ?force choose)."""

    token: str | None = field(default=None, repr=False)  # a just-minted raw token: its file
    overwrite: bool = False  # rewrite USER.md / MEMORY.md too
    force_bootstrap: bool = False  # BOOTSTRAP.md again (2026.3-era gateways)
    reset_session: bool = False  # start the main session afresh once the files are in place


def build_apply(
    conn: sqlite3.Connection,
    agent: AgentRow,
    generation: int,
    *,
    wake: bool,
    action: ApplyAction,
    render: RenderOptions,
    now: float,
) -> pb.Command:
    """Render an agent's files and its ApplyAgent command (with a wake message if `wake`)."""
    context, gateway_generation = render_context(conn, agent)
    try:
        rendered = render_file_set(
            gateway_generation,
            context,
            action=action,
            overwrite=render.overwrite,
            force_bootstrap=render.force_bootstrap,
            token=render.token,
            identity_template=agent.identity_template,
            soul_template=agent.soul_template,
        )
    except RenderError as exc:
        raise AgentError(f"cannot render the agent's files: {exc}") from None
    heartbeat = json.loads(agent.heartbeat_config) or DEFAULT_HEARTBEAT
    identity = IdentityProfile.from_mapping(json.loads(agent.identity_profile))
    apply = pb.ApplyAgent(
        agent_id=agent.gateway_agent_id,
        generation=generation,
        display_name=agent.name,
        emoji=identity.emoji if not identity.emoji.startswith(":") else "",
        workspace_path=context.workspace_path,
        files=[
            pb.WorkspaceFile(
                name=f.name,
                content=f.content,
                secret=f.secret,
                preserve_if_present=f.preserve_if_present,
            )
            for f in rendered.files
        ],
        heartbeat=pb.HeartbeatSettings(
            every_s=agent.heartbeat_interval_s,
            target=heartbeat.get("target", "none"),
            checklist=rendered.heartbeat_checklist,
        ),
        credentials=credentials_for(accepted_tokens(conn, agent.id, now)),
        rendered_for=gateway_generation.proto,
        reset_session=render.reset_session,
    )
    if wake:
        apply.wake_message = render_wake_message(gateway_generation, context, action=action)
    return pb.Command(apply_agent=apply)


def build_wake(
    conn: sqlite3.Connection, agent: AgentRow, generation: int, attempt: int, max_wakes: int
) -> pb.Command:
    context, gateway_generation = render_context(conn, agent)
    message = render_wake_message(
        gateway_generation, context, action=ApplyAction.UPDATE, attempt=attempt, max_wakes=max_wakes
    )
    return pb.Command(
        wake_agent=pb.WakeAgent(
            agent_id=agent.gateway_agent_id, generation=generation, message=message, attempt=attempt
        )
    )


def last_apply_payload(conn: sqlite3.Connection, agent: AgentRow, generation: int) -> bytes | None:
    row = conn.execute(
        """SELECT payload FROM commands WHERE gateway_id = ? AND agent_id = ?
               AND kind = 'apply_agent' AND generation = ? ORDER BY sequence DESC LIMIT 1""",
        (agent.gateway_id, agent.gateway_agent_id, generation),
    ).fetchone()
    return row[0] if row else None


def agent_json(agent: AgentRow) -> dict[str, Any]:
    """The API shape: Mission Control's AgentRead plus every lifecycle field."""
    return {
        "id": agent.id,
        "name": agent.name,
        "board_id": agent.board_id,
        "gateway_id": agent.gateway_id,
        "is_board_lead": agent.kind == AgentKind.LEAD,
        "is_gateway_main": agent.kind == AgentKind.MAIN,
        "openclaw_session_id": f"agent:{agent.gateway_agent_id}:main",
        "gateway_agent_id": agent.gateway_agent_id,
        "status": agent.status,
        "status_reason": agent.status_reason,
        "lifecycle_generation": agent.lifecycle_generation,
        "applied_generation": agent.applied_generation,
        "wake_attempts": agent.wake_attempts,
        "checkin_deadline_at": iso(agent.checkin_deadline_at),
        "last_wake_sent_at": iso(agent.last_wake_sent_at),
        "last_seen_at": iso(agent.last_seen_at),
        "last_provision_error": agent.last_provision_error,
        "heartbeat_config": json.loads(agent.heartbeat_config) or DEFAULT_HEARTBEAT,
        "identity_profile": json.loads(agent.identity_profile),
        "created_at": iso(agent.created_at),
        "updated_at": iso(agent.updated_at),
    }
