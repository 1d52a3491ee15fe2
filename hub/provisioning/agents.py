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

import hashlib
import json
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from hub.boards import board_profile, board_profiles_in
from hub.lifecycle.decisions import (
    AgentLifecycle,
    CheckInSource,
    Phase,
    Recovery,
    Status,
    WaitReason,
)
from hub.provisioning.agent_tokens import MintedToken, StoredToken
from hub.provisioning.rendering import (
    AgentContext,
    AgentKind,
    ApplyAction,
    BoardProfile,
    IdentityProfile,
    RenderError,
    UserProfile,
    check_override_template,
    profile_values,
    render_file_set,
    render_wake_message,
)
from hub.store.engines import IntegrityError
from hub.store.errors import Refusal, StoreError, UnknownGateway
from hub.store.gateways import GatewayRow, gateway_in, gateways_in
from hub.users import user_profile
from missioncontrol.agent_api import DEFAULT_AGENT_API_URL
from missioncontrol.timefmt import iso
from protos import link_pb2 as pb
from protos.contract import GatewayGeneration

DEFAULT_HEARTBEAT = {"every": "10m", "target": "none"}
MAX_HEARTBEAT_S = 7 * 24 * 3600
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")


class AgentError(StoreError):
    """An agent request that cannot be carried out; the message says why."""


class AgentConflict(AgentError):
    """The request clashes with an existing agent (one lead per board, one main agent, a
    name taken on the board, the board's worker cap)."""

    refusal = Refusal.CONFLICT


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


def heartbeat_settings(config: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    """A heartbeat_config in either shape people send, as the stored config and its
    interval in seconds (0: no heartbeat job).

    Mission Control's `{enabled, intervalSeconds}` and OpenClaw's `{every, target,
    includeReasoning}` both work, mixed too; `enabled: false` switches the heartbeat off
    whatever the cadence. The stored config carries both shapes, so a client of either
    reads back what it understands. Raises AgentError naming the field at fault.
    """
    given = dict(config or {})
    every = given.get("every")
    interval = given.get("intervalSeconds")
    if every is not None and interval is not None and parse_every(every) != interval:
        raise AgentError(
            f"heartbeat_config: every {every!r} and intervalSeconds {interval} disagree; "
            "send one of them"
        )
    if interval is not None:
        if not 0 <= int(interval) <= MAX_HEARTBEAT_S:
            raise AgentError(f"heartbeat_config: intervalSeconds must be 0 to {MAX_HEARTBEAT_S}")
        seconds = int(interval)
    else:
        seconds = parse_every(every if every is not None else DEFAULT_HEARTBEAT["every"])
    enabled = given.get("enabled", True) is not False and seconds > 0
    seconds = seconds if enabled else 0
    stored = {
        "every": every_text(seconds),
        "target": given.get("target") or DEFAULT_HEARTBEAT["target"],
        "includeReasoning": bool(given.get("includeReasoning", False)),
        "enabled": enabled,
        "intervalSeconds": seconds,
    }
    return stored, seconds


def every_text(seconds: int) -> str:
    """OpenClaw's cadence text for `seconds` ("0m": off)."""
    if seconds <= 0:
        return "0m"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
    work_state: str | None = None  # what the agent last said it is doing (active, idle, ...)
    reported_status: str | None = None  # the status word it sent, as sent
    current_task_id: str | None = None
    work_state_at: float | None = None
    workspace_path: str | None = None  # set for an adopted agent; else derived from the root
    adopted: bool = False  # found in openclaw.json and adopted: its files are its own
    role_soul: str | None = None  # from the souls directory (hub/provisioning/souls.py)
    paused_at: float | None = None  # paused: heartbeat job off, never woken or judged silent
    paused_by: str | None = None  # "agent" (paused itself) or "board" (with its board)
    recovery: str | None = None  # the recovery ladder's rung (hub/lifecycle/decisions.py)
    heartbeat_governor: str | None = None  # its own governor setting (JSON), over its board's
    governor_step: int = 0  # how far the governor backed its cadence off (0: its own)
    last_checkin_source: str | None = None  # "heartbeat", "runtime" or "wake"
    cause_code: str | None = None  # what its sidecar found keeps it from running, if anything
    cause: str | None = None
    cause_since: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AgentRow:
        return cls(**{k: v for k, v in zip(row.keys(), row, strict=True) if k in _ROW_FIELDS})

    @classmethod
    def from_rows(cls, rows: list[Any]) -> list[AgentRow]:
        """`from_row` for a query's rows (their columns are looked up once)."""
        if not rows:
            return []
        index = {k: i for i, k in enumerate(rows[0].keys())}
        if all(name in index for name in _ROW_ORDER):  # every field: build by position
            at = [index[name] for name in _ROW_ORDER]
            return [cls(*[row[i] for i in at]) for row in rows]
        columns = [(i, k) for k, i in index.items() if k in _ROW_FIELDS]
        return [cls(**{k: row[i] for i, k in columns}) for row in rows]

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
            paused=self.paused_at is not None,
            recovery=Recovery(self.recovery) if self.recovery else None,
            last_checkin_source=(
                CheckInSource(self.last_checkin_source) if self.last_checkin_source else None
            ),
            cause=self.cause,
        )


_ROW_ORDER = tuple(f.name for f in fields(AgentRow))
_ROW_FIELDS = frozenset(_ROW_ORDER)


class AgentPaused(AgentError):
    """The agent (or its board) is paused, and what was asked would wake it."""

    refusal = Refusal.CONFLICT


def set_paused_in(
    conn: sqlite3.Connection, agent_id: str, paused_by: str | None, now: float
) -> None:
    """Pause (`paused_by` "agent" or "board") or resume (None) an agent's row."""
    conn.execute(
        "UPDATE agents SET paused_at = ?, paused_by = ?, updated_at = ? WHERE id = ?",
        (now if paused_by else None, paused_by, now, agent_id),
    )


def check_override(name: str, template: str) -> None:
    """Refuse an IDENTITY.md / SOUL.md override the hub would not render."""
    field_name = "identity_template" if name == "IDENTITY.md" else "soul_template"
    try:
        check_override_template(name, template)
    except RenderError as exc:
        raise AgentError(f"{field_name}: {exc}") from None


def check_name_free_in(
    conn: sqlite3.Connection,
    gateway_id: str,
    board_id: str | None,
    name: str,
    *,
    exclude: str | None = None,
) -> None:
    """Names are unique per board (a gateway's main agent: among its board-less agents),
    whatever the case; AgentConflict naming the agent that holds the name otherwise."""
    wanted = name.casefold()
    rows = conn.execute(
        "SELECT id, name FROM agents WHERE gateway_id = ? AND board_id IS ? "
        "AND status != 'deleting'",
        (gateway_id, board_id),
    ).fetchall()
    for row in rows:
        if row["id"] != exclude and row["name"].casefold() == wanted:
            where = f"board {board_id}" if board_id else f"gateway {gateway_id}"
            raise AgentConflict(
                f"{where} already has an agent named {row['name']!r} (agent {row['id']}); "
                f"choose another name, or change that agent with PATCH /api/v1/agents/{row['id']}"
            )


def check_worker_cap_in(conn: sqlite3.Connection, board_id: str, max_agents: int) -> None:
    """The board rule `max_agents`: how many workers its lead may have (the lead excluded)."""
    workers = conn.execute(
        "SELECT COUNT(*) FROM agents WHERE board_id = ? AND kind = 'worker' "
        "AND status != 'deleting'",
        (board_id,),
    ).fetchone()[0]
    if workers >= max_agents:
        raise AgentConflict(
            f"board {board_id} allows {max_agents} worker agent(s) (its max_agents rule) and "
            f"has {workers}; delete a worker first, or ask an admin to raise max_agents "
            f"(PATCH /api/v1/boards/{board_id})"
        )


def _holder_in(
    conn: sqlite3.Connection, kind: AgentKind, board_id: str | None, gateway_id: str
) -> sqlite3.Row | None:
    if kind is AgentKind.LEAD:
        return conn.execute(
            "SELECT id, name FROM agents WHERE board_id = ? AND kind = 'lead'", (board_id,)
        ).fetchone()
    if kind is AgentKind.MAIN:
        return conn.execute(
            "SELECT id, name FROM agents WHERE gateway_id = ? AND kind = 'main'", (gateway_id,)
        ).fetchone()
    return None


def insert_agent_in(
    conn: sqlite3.Connection,
    *,
    agent_id: str,
    gateway_id: str,
    board_id: str | None,
    kind: AgentKind,
    gateway_agent_id: str,
    name: str,
    heartbeat: Mapping[str, Any],
    interval_s: int,
    identity_profile: Mapping[str, Any] | None,
    identity_template: str | None = None,
    soul_template: str | None = None,
    workspace_path: str | None = None,
    adopted: bool = False,
    role_soul: str | None = None,
    now: float,
) -> None:
    """Insert an agent row; AgentConflict naming the holder when the board already has a
    lead, or the gateway a main agent (database constraints, too) or that gateway id."""
    holder = _holder_in(conn, kind, board_id, gateway_id)
    if holder is not None:
        what = "a lead" if kind is AgentKind.LEAD else "a main agent"
        where = f"board {board_id}" if kind is AgentKind.LEAD else f"gateway {gateway_id}"
        raise AgentConflict(
            f"{where} already has {what}: {holder['name']!r} (agent {holder['id']}); change "
            f"that one with PATCH /api/v1/agents/{holder['id']}, or delete it first"
        )
    try:
        conn.execute(
            """INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name,
                   heartbeat_config, identity_profile, heartbeat_interval_s, identity_template,
                   soul_template, workspace_path, adopted, role_soul, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                agent_id,
                gateway_id,
                board_id,
                kind.value,
                gateway_agent_id,
                name,
                json.dumps(dict(heartbeat)),
                json.dumps(dict(identity_profile or {})),
                interval_s,
                identity_template,
                soul_template,
                workspace_path,
                int(adopted),
                role_soul,
                now,
                now,
            ),
        )
    except IntegrityError:
        raise AgentConflict(
            f"gateway {gateway_id} already has an agent with the gateway id {gateway_agent_id}"
        ) from None


_UPDATABLE_COLUMNS = frozenset(
    {
        "name",
        "board_id",
        "identity_profile",
        "heartbeat_config",
        "heartbeat_interval_s",
        "heartbeat_governor",
        "governor_step",
        "identity_template",
        "soul_template",
        "role_soul",
    }
)


def update_agent_in(
    conn: sqlite3.Connection, agent_id: str, values: Mapping[str, Any], now: float
) -> None:
    """Write changed columns of an agent's row (JSON columns given as text)."""
    unknown = set(values) - _UPDATABLE_COLUMNS
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not values:
        return
    assignments = ", ".join(f"{column} = ?" for column in values)  # whitelisted above
    conn.execute(
        f"UPDATE agents SET {assignments}, updated_at = ? WHERE id = ?",
        (*values.values(), now, agent_id),
    )


def move_target_in(conn: sqlite3.Connection, agent: AgentRow, board_id: str | None) -> str:
    """The board a worker may move to (same gateway, not being deleted); AgentError saying
    why not otherwise."""
    if agent.kind != AgentKind.WORKER:
        identity = "lead-<board>" if agent.kind == AgentKind.LEAD else "mc-gateway-<gateway>"
        raise AgentError(
            f"board_id: a {agent.kind} agent cannot change boards (its gateway identity is "
            f"{identity}); create a {agent.kind} for the other board instead"
        )
    if board_id is None:
        raise AgentError(
            "board_id: a worker belongs to a board; a gateway has one main agent, created "
            'with {"gateway_id": ..., "board_id": null}'
        )
    board = conn.execute(
        "SELECT gateway_id, status FROM boards WHERE id = ?", (board_id,)
    ).fetchone()
    if board is None:
        raise AgentError(f"board_id: board {board_id} does not exist")
    if board["status"] == "deleting":
        raise AgentError(f"board_id: board {board_id} is being deleted")
    if board["gateway_id"] != agent.gateway_id:
        raise AgentError(
            f"board_id: board {board_id} is on gateway {board['gateway_id']}, and an agent "
            f"stays on its gateway ({agent.gateway_id}); create an agent on that board and "
            "delete this one"
        )
    return board_id


def insert_token_in(
    conn: sqlite3.Connection, agent_id: str, minted: MintedToken, now: float
) -> None:
    conn.execute(
        "INSERT INTO agent_tokens (token_id, agent_id, digest, sidecar_sha256, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (minted.token_id, agent_id, minted.digest, minted.sidecar_sha256, now),
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
    status: str | None = None,
) -> tuple[list[AgentRow], int]:
    """One page of agents, oldest first, optionally of one status. Every agent the hub
    holds is one it manages, so `managed=False` (Mission Control's is_mc_agent=false)
    lists none."""
    where = (
        "WHERE (? IS NULL OR board_id = ?) AND (? IS NULL OR gateway_id = ?) AND ? "
        "AND (? IS NULL OR status = ?)"
    )
    args = (board_id, board_id, gateway_id, gateway_id, managed, status, status)
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


def agents_of_gateway_in(conn: sqlite3.Connection, gateway_id: str) -> list[AgentRow]:
    """The gateway's agents that are not being deleted, oldest first."""
    rows = conn.execute(
        "SELECT * FROM agents WHERE gateway_id = ? AND status != 'deleting' "
        "ORDER BY created_at, id",
        (gateway_id,),
    ).fetchall()
    return [AgentRow.from_row(r) for r in rows]


def agents_of_board_in(conn: sqlite3.Connection, board_id: str) -> list[AgentRow]:
    """The board's agents that are not being deleted, oldest first."""
    rows = conn.execute(
        "SELECT * FROM agents WHERE board_id = ? AND status != 'deleting' ORDER BY created_at, id",
        (board_id,),
    ).fetchall()
    return [AgentRow.from_row(r) for r in rows]


def load_agent_by_gateway_id(
    conn: sqlite3.Connection, gateway_id: str, gateway_agent_id: str
) -> AgentRow | None:
    row = conn.execute(
        "SELECT * FROM agents WHERE gateway_id = ? AND gateway_agent_id = ?",
        (gateway_id, gateway_agent_id),
    ).fetchone()
    return AgentRow.from_row(row) if row else None


# The agent columns a lifecycle snapshot writes (`_snapshot_values` gives them, in order).
_SNAPSHOT_COLUMNS = (
    "status",
    "status_reason",
    "lifecycle_generation",
    "applied_generation",
    "wake_attempts",
    "checkin_deadline_at",
    "last_wake_sent_at",
    "last_seen_at",
    "last_provision_error",
    "phase",
    "delivery_failures",
    "recovery",
    "last_checkin_source",
    "updated_at",
)
_SAVE_SNAPSHOT = (
    f"UPDATE agents SET {', '.join(f'{c} = ?' for c in _SNAPSHOT_COLUMNS)} WHERE id = ?"
)


def _snapshot_values(s: AgentLifecycle, now: float) -> tuple[Any, ...]:
    return (
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
        s.recovery.value if s.recovery else None,
        s.last_checkin_source.value if s.last_checkin_source else None,
        now,
    )


def changes_row(before: AgentLifecycle, after: AgentLifecycle) -> bool:
    """Whether saving `after` over the row `before` was read from would change it (what
    is not kept, such as since when the gateway's link is up, does not count)."""
    return _snapshot_values(before, 0.0) != _snapshot_values(after, 0.0)


def save_snapshot(conn: sqlite3.Connection, agent_id: str, s: AgentLifecycle, now: float) -> None:
    conn.execute(_SAVE_SNAPSHOT, (*_snapshot_values(s, now), agent_id))


def save_snapshots_in(
    conn: sqlite3.Connection, snapshots: list[tuple[str, AgentLifecycle]], now: float
) -> None:
    """`save_snapshot` for many agents, in one statement."""
    if snapshots:
        conn.executemany(
            _SAVE_SNAPSHOT, [(*_snapshot_values(s, now), agent_id) for agent_id, s in snapshots]
        )


def with_snapshot(row: AgentRow, s: AgentLifecycle, now: float) -> AgentRow:
    """The row as `save_snapshot(conn, row.id, s, now)` leaves it, without reading it back."""
    return replace(row, **dict(zip(_SNAPSHOT_COLUMNS, _snapshot_values(s, now), strict=True)))


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
    main = conn.execute(
        "SELECT gateway_agent_id FROM agents WHERE gateway_id = ? AND kind = 'main'",
        (agent.gateway_id,),
    ).fetchone()
    return _context_of(
        agent,
        gateway_in(conn, agent.gateway_id),
        board_profile(conn, agent.board_id) if agent.board_id else None,
        user_profile(conn),
        main[0] if main else None,
    )


@dataclass(frozen=True)
class RenderSources:
    """What `render_context` reads from the store, for many agents at once: their
    gateways, boards, the user's profile and each gateway's main agent."""

    gateways: dict[str, GatewayRow]
    boards: dict[str, BoardProfile]
    user: UserProfile
    mains: dict[str, str]  # gateway id -> its main agent's gateway agent id
    # Worked out once per batch: agents with the same profile share what it renders to.
    _identities: dict[str, IdentityProfile] = field(default_factory=dict, repr=False)
    _profiles: dict[tuple[str, str | None, str], Mapping[str, str]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def load(cls, conn: sqlite3.Connection, agents: list[AgentRow]) -> RenderSources:
        """Four queries, however many agents (none for none)."""
        if not agents:
            return cls({}, {}, UserProfile(), {})
        gateway_ids = sorted({a.gateway_id for a in agents})
        mains = conn.execute(
            "SELECT gateway_id, gateway_agent_id FROM agents WHERE kind = 'main' "
            "AND gateway_id IN (SELECT value FROM json_each(?))",
            (json.dumps(gateway_ids),),
        ).fetchall()
        return cls(
            gateways_in(conn, gateway_ids),
            board_profiles_in(conn, sorted({a.board_id for a in agents if a.board_id})),
            user_profile(conn),
            {row[0]: row[1] for row in mains},
        )

    def context(self, agent: AgentRow) -> tuple[AgentContext, GatewayGeneration]:
        """`render_context(conn, agent)`, from what was loaded."""
        gateway = self.gateways.get(agent.gateway_id)
        if gateway is None:
            raise UnknownGateway(f"gateway {agent.gateway_id} does not exist")
        board = self.boards.get(agent.board_id) if agent.board_id else None
        identity = self._identities.get(agent.identity_profile)
        if identity is None:
            identity = IdentityProfile.from_mapping(json.loads(agent.identity_profile))
            self._identities[agent.identity_profile] = identity
        soul = (agent.role_soul or "") if AgentKind(agent.kind) is AgentKind.WORKER else ""
        key = (agent.identity_profile, agent.board_id, soul)
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = profile_values(identity, self.user, board, soul)
        return _context_of(
            agent,
            gateway,
            board,
            self.user,
            self.mains.get(agent.gateway_id),
            identity=identity,
            profile=profile,
        )


def _context_of(
    agent: AgentRow,
    gateway: GatewayRow,
    board: BoardProfile | None,
    user: UserProfile,
    main_agent: str | None,
    *,
    identity: IdentityProfile | None = None,
    profile: Mapping[str, str] | None = None,
) -> tuple[AgentContext, GatewayGeneration]:
    if not gateway.workspace_root:
        raise AgentError(
            f"gateway {gateway.id} has no workspace root yet: declare one "
            f'(PATCH /api/v1/gateways/{gateway.id} with {{"workspace_root": "/srv/openclaw"}}) '
            "or start its sidecar, then retry"
        )
    # Before the sidecar says where it listens, its default address; a Hello naming
    # another one renders the files again (Provisioning.rerender_stale).
    base_url = gateway.agent_api_url or DEFAULT_AGENT_API_URL
    generation = GatewayGeneration.of(gateway.gateway_generation)
    if generation is GatewayGeneration.UNKNOWN:
        generation = GatewayGeneration.CURRENT
    session_key = f"agent:{agent.gateway_agent_id}:main"
    # Named only when the gateway has a main agent: a session that does not exist would
    # send the agent looking for it.
    main_key = f"agent:{main_agent}:main" if main_agent else ""
    try:
        context = AgentContext(
            agent_name=agent.name,
            agent_id=agent.gateway_agent_id,
            session_key=session_key,
            main_session_key=main_key,
            kind=AgentKind(agent.kind),
            base_url=base_url,
            workspace_root=gateway.workspace_root,
            workspace_path=agent.workspace_path
            or workspace_path(gateway.workspace_root, agent.gateway_agent_id),
            heartbeat_interval_s=agent.heartbeat_interval_s,
            identity=identity
            if identity is not None
            else IdentityProfile.from_mapping(json.loads(agent.identity_profile)),
            user=user,
            board=board,
            role_soul=agent.role_soul or "",
            profile=profile,
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
        hub_agent_id=agent.id,
        generation=generation,
        display_name=agent.name,
        emoji=identity.emoji if not identity.emoji.startswith(":") else "",
        workspace_path=context.workspace_path,
        files=[
            pb.WorkspaceFile(
                name=f.name,
                content=f.content,
                secret=f.secret,
                # An adopted agent's files are its own: written only where missing, unless
                # a template sync asks to overwrite.
                preserve_if_present=f.preserve_if_present
                or (bool(agent.adopted) and not f.secret and not render.overwrite),
            )
            for f in rendered.files
        ],
        # Paused: the heartbeat job is turned off on the gateway (no cadence, no checklist).
        heartbeat=pb.HeartbeatSettings(
            every_s=0 if agent.paused_at is not None else agent.heartbeat_interval_s,
            target=heartbeat.get("target", "none"),
            checklist="" if agent.paused_at is not None else rendered.heartbeat_checklist,
        ),
        credentials=credentials_for(accepted_tokens(conn, agent.id, now)),
        rendered_for=gateway_generation.proto,
        reset_session=render.reset_session,
    )
    if wake:
        apply.wake_message = render_wake_message(gateway_generation, context, action=action)
    return pb.Command(apply_agent=apply)


def build_wake(
    conn: sqlite3.Connection,
    agent: AgentRow,
    generation: int,
    attempt: int,
    max_wakes: int,
    recovery: Recovery | None = None,
) -> pb.Command:
    """A WakeAgent; on the recovery ladder's last rung, into a fresh session."""
    context, gateway_generation = render_context(conn, agent)
    return wake_command(
        agent, context, gateway_generation, generation, attempt, max_wakes, recovery
    )


def wake_command(
    agent: AgentRow,
    context: AgentContext,
    gateway_generation: GatewayGeneration,
    generation: int,
    attempt: int,
    max_wakes: int,
    recovery: Recovery | None = None,
) -> pb.Command:
    """`build_wake` from the agent's render context (`RenderSources.context`)."""
    message = render_wake_message(
        gateway_generation,
        context,
        action=ApplyAction.UPDATE,
        attempt=attempt,
        max_wakes=max_wakes,
        recovery=recovery.value if recovery else "",
    )
    return pb.Command(
        wake_agent=pb.WakeAgent(
            agent_id=agent.gateway_agent_id,
            generation=generation,
            message=message,
            attempt=attempt,
            fresh_session=recovery is Recovery.FRESH_SESSION,
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
        "identity_template": agent.identity_template,
        "soul_template": agent.soul_template,
        "work_state": agent.work_state,
        "reported_status": agent.reported_status,
        "current_task_id": agent.current_task_id,
        "work_state_at": iso(agent.work_state_at),
        "adopted": bool(agent.adopted),
        "paused": agent.paused_at is not None,
        "paused_at": iso(agent.paused_at),
        "paused_by": agent.paused_by,
        "recovery": agent.recovery,
        "heartbeat_every_s": agent.heartbeat_interval_s,
        "heartbeat_governor_step": agent.governor_step,
        "last_checkin_source": agent.last_checkin_source,
        "cause_code": agent.cause_code,
        "cause": agent.cause,
        "cause_since": iso(agent.cause_since),
        "created_at": iso(agent.created_at),
        "updated_at": iso(agent.updated_at),
    }


# ------------------------------------------------------------------ reads (dashboard)


def agent_status_counts_in(
    conn: sqlite3.Connection, *, gateway_id: str | None = None, board_id: str | None = None
) -> dict[str, int]:
    """Agents per status, fleet-wide or on one gateway or board."""
    rows = conn.execute(
        """SELECT status, COUNT(*) FROM agents
           WHERE (? IS NULL OR gateway_id = ?) AND (? IS NULL OR board_id = ?)
           GROUP BY status""",
        (gateway_id, gateway_id, board_id, board_id),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def agent_counts_by_in(
    conn: sqlite3.Connection, column: str, ids: list[str]
) -> dict[str, dict[str, int]]:
    """For each gateway (`column="gateway_id"`) or board (`"board_id"`) named: its agents
    per status."""
    if column not in ("gateway_id", "board_id"):
        raise ValueError(f"agents are counted by gateway_id or board_id, not {column!r}")
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = conn.execute(
        f"SELECT {column}, status, COUNT(*) FROM agents WHERE {column} IN ({marks}) "
        f"GROUP BY {column}, status",
        ids,
    ).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for owner, status, count in rows:
        counts.setdefault(owner, {})[status] = int(count)
    return counts


def agents_needing_attention_in(conn: sqlite3.Connection, limit: int) -> tuple[list[AgentRow], int]:
    """Offline agents and agents waiting on something (status_reason), latest change first."""
    where = "WHERE status = 'offline' OR status_reason IS NOT NULL"
    total = conn.execute(f"SELECT COUNT(*) FROM agents {where}").fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM agents {where} ORDER BY updated_at DESC, id LIMIT ?", (limit,)
    ).fetchall()
    return [AgentRow.from_row(r) for r in rows], int(total)


def agent_names_in(conn: sqlite3.Connection, agent_ids: list[str]) -> dict[str, str]:
    if not agent_ids:
        return {}
    marks = ", ".join("?" for _ in agent_ids)
    rows = conn.execute(f"SELECT id, name FROM agents WHERE id IN ({marks})", agent_ids)
    return {r[0]: r[1] for r in rows}


@dataclass(frozen=True)
class RenderedFileDigest:
    name: str
    sha256: str | None  # None for a secret file: nothing derived from it is shown
    secret: bool
    preserve_if_present: bool


def rendered_files_in(
    conn: sqlite3.Connection, agent: AgentRow
) -> tuple[int, list[RenderedFileDigest]] | None:
    """The files the hub last rendered for the agent (its latest ApplyAgent in the outbox):
    (generation, digests), or None if none is kept."""
    row = conn.execute(
        """SELECT generation, payload FROM commands WHERE gateway_id = ? AND agent_id = ?
               AND kind = 'apply_agent' ORDER BY sequence DESC LIMIT 1""",
        (agent.gateway_id, agent.gateway_agent_id),
    ).fetchone()
    if row is None:
        return None
    apply = pb.Command.FromString(row["payload"]).apply_agent
    return int(row["generation"]), [
        RenderedFileDigest(
            name=f.name,
            sha256=None if f.secret else hashlib.sha256(f.content).hexdigest(),
            secret=f.secret,
            preserve_if_present=f.preserve_if_present,
        )
        for f in apply.files
    ]
