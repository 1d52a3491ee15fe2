"""What admins ask of agents: create, re-apply, rotate a token, delete (an agent or a board).

Each request is one transaction of the reconciler's (`Reconciler.write`): the row
change, the lifecycle step it causes and the commands that step queues commit
together, so a sidecar never receives a command for a change that did not happen.
Deletes go through the sidecar and never fail because a gateway is down.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.adoption import unmanaged_entry, why_not_adoptable
from hub.board_groups import group_agents_in
from hub.boards import BoardAgent, finish_deleting, load_board, set_board_paused_in
from hub.lifecycle import decisions as lc
from hub.lifecycle.reconciler import Reconciler, Transition
from hub.memory import add_memory_in
from hub.messages import check_main_for_board_in, lead_of_in, message_agent_in
from hub.provisioning.agent_tokens import DEFAULT_ROTATION_GRACE_S, TokenKeyring
from hub.provisioning.agents import (
    AgentConflict,
    AgentError,
    AgentPaused,
    AgentRow,
    RenderOptions,
    accepted_tokens,
    agents_of_board_in,
    agents_of_gateway_in,
    check_name_free_in,
    check_override,
    check_worker_cap_in,
    credentials_for,
    gateway_agent_id,
    heartbeat_settings,
    insert_agent_in,
    insert_token_in,
    load_agent_by_gateway_id,
    move_target_in,
    require_agent,
    set_paused_in,
    update_agent_in,
)
from hub.provisioning.rendering import AgentKind, IdentityProfile, token_file
from hub.provisioning.souls import SoulsDirectory
from hub.store.database import Connection
from hub.store.errors import UnknownGateway
from hub.store.event_log import add_event
from hub.store.gateways import (
    GatewayRow,
    gateway_in,
    take_stale_files_in,
    update_gateway_in,
)
from hub.store.outbox import enqueue_command_in
from hub.tasks import unassign_agent_tasks
from missioncontrol.log import get_logger
from protos import link_pb2 as pb

log = get_logger("hub.provisioning")
MAX_ROTATION_GRACE_S = 24 * 3600


@dataclass(frozen=True)
class AgentSpec:
    """What an admin (or a board lead) asks for when creating an agent."""

    name: str
    board_id: str | None = None
    gateway_id: str | None = None  # for a gateway main agent (no board)
    kind: AgentKind = AgentKind.WORKER
    identity_profile: dict[str, Any] | None = None
    heartbeat_config: dict[str, Any] | None = None
    identity_template: str | None = None
    soul_template: str | None = None
    created_by_lead: str | None = None  # the lead agent asking: max_agents applies


def default_lead(board_id: str) -> AgentSpec:
    """The lead a board gets when its main agent messages a lead it does not have yet."""
    return AgentSpec(
        name="Lead Agent",
        board_id=board_id,
        kind=AgentKind.LEAD,
        identity_profile={"role": "Board Lead"},
    )


class Provisioning:
    def __init__(
        self,
        reconciler: Reconciler,
        keyring: TokenKeyring,
        *,
        souls: SoulsDirectory | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.keyring = keyring
        self.souls = souls or SoulsDirectory()

    def _role_soul(self, kind: AgentKind | str, profile: Mapping[str, Any] | None) -> str | None:
        """A worker's role soul from the souls directory (leads and main agents have none,
        as in the reference)."""
        if AgentKind(kind) is not AgentKind.WORKER:
            return None
        return self.souls.for_role(IdentityProfile.from_mapping(profile).role)

    async def create_agent(self, spec: AgentSpec) -> AgentRow:
        """Write the agent's row and token and queue its ApplyAgent, in one transaction.
        Before the gateway's sidecar ever connected (a declared workspace root) the
        command waits in the outbox: the agent shows `sidecar_disconnected`."""
        create = self._creator(spec)
        return await self.reconciler.write(create)

    def create_agent_in(self, tx: Transition, spec: AgentSpec) -> AgentRow:
        """One agent a fleet rollout creates, inside the rollout's transaction for its
        gateway (checked as `create_agent` checks it)."""
        return self._creator(spec)(tx)

    def _creator(self, spec: AgentSpec) -> Callable[[Transition], AgentRow]:
        """What creates the agent inside a transaction (checked and its token minted now)."""
        minted = self.keyring.mint()
        for name, template in (
            ("IDENTITY.md", spec.identity_template),
            ("SOUL.md", spec.soul_template),
        ):
            if template is not None:
                check_override(name, template)
        heartbeat, interval_s = heartbeat_settings(spec.heartbeat_config)
        role_soul = self._role_soul(spec.kind, spec.identity_profile)

        def op(tx: Transition) -> AgentRow:
            conn, now = tx.conn, tx.now
            board_id = spec.board_id
            kind = spec.kind
            if board_id is not None:
                if kind is AgentKind.MAIN:
                    raise AgentError(
                        "a gateway's main agent has no board: send board_id null and the gateway_id"
                    )
                board = conn.execute(
                    "SELECT gateway_id, status, max_agents, paused_at FROM boards WHERE id = ?",
                    (board_id,),
                ).fetchone()
                if board is None:
                    raise AgentError(f"board {board_id} does not exist")
                if board["status"] == "deleting":
                    raise AgentError(f"board {board_id} is being deleted")
                gateway_id = board["gateway_id"]
                if spec.created_by_lead is not None:
                    check_worker_cap_in(conn, board_id, board["max_agents"])
            elif spec.gateway_id:
                kind = AgentKind.MAIN  # Mission Control's {"gateway_id", "board_id": null}
                gateway_id = spec.gateway_id
            else:
                raise AgentError(
                    "an agent needs a board_id, or a gateway_id with board_id null for the "
                    "gateway's main agent"
                )
            try:
                gateway_in(conn, gateway_id)
            except UnknownGateway:
                raise AgentError(f"gateway {gateway_id} does not exist") from None
            check_name_free_in(conn, gateway_id, board_id, spec.name)
            agent_id = str(uuid.uuid4())
            insert_agent_in(
                conn,
                agent_id=agent_id,
                gateway_id=gateway_id,
                board_id=board_id,
                kind=kind,
                gateway_agent_id=gateway_agent_id(kind, agent_id, board_id, gateway_id),
                name=spec.name,
                heartbeat=heartbeat,
                interval_s=interval_s,
                identity_profile=spec.identity_profile,
                identity_template=spec.identity_template,
                soul_template=spec.soul_template,
                role_soul=role_soul if kind is AgentKind.WORKER else None,
                now=now,
            )
            insert_token_in(conn, agent_id, minted, now)
            if board_id is not None and board["paused_at"] is not None:
                set_paused_in(conn, agent_id, "board", now)  # starts paused: not woken
            add_event(
                conn,
                "agent.created",
                gateway_id=gateway_id,
                agent_id=agent_id,
                at=now,
                agent_kind=kind.value,
                name=spec.name,
                created_by=spec.created_by_lead or "admin",
            )
            tx.step(
                agent_id,
                lc.ApplyRequested(generation=1, wake=True),
                RenderOptions(token=minted.raw),
            )
            return require_agent(conn, agent_id)

        return op

    async def adopt_agent(
        self,
        gateway_id: str,
        gateway_agent_id: str,
        *,
        board_id: str,
        name: str | None = None,
        lead: bool = False,
        identity_profile: dict[str, Any] | None = None,
        heartbeat_config: dict[str, Any] | None = None,
    ) -> AgentRow:
        """Make an agent the gateway's openclaw.json already has a managed agent of a board,
        keeping its id, workspace and files (see hub/adoption.py)."""
        minted = self.keyring.mint()
        heartbeat, interval_s = heartbeat_settings(heartbeat_config)
        kind = AgentKind.LEAD if lead else AgentKind.WORKER

        def op(tx: Transition) -> AgentRow:
            conn, now = tx.conn, tx.now
            gateway = gateway_in(conn, gateway_id)
            entry = unmanaged_entry(gateway, gateway_agent_id)
            if entry is None or load_agent_by_gateway_id(conn, gateway_id, gateway_agent_id):
                raise AgentConflict(
                    f"gateway {gateway_id} reported no unmanaged agent {gateway_agent_id!r}; "
                    f"see GET /api/v1/gateways/{gateway_id}/inventory (it lists what its "
                    "sidecar last read from openclaw.json)"
                )
            why = why_not_adoptable(entry, gateway)
            if why is not None:
                raise AgentError(f"agent {gateway_agent_id} cannot be adopted: {why}")
            board = conn.execute(
                "SELECT gateway_id, status FROM boards WHERE id = ?", (board_id,)
            ).fetchone()
            if board is None or board["gateway_id"] != gateway_id:
                raise AgentError(
                    f"board_id: board {board_id} is not a board of gateway {gateway_id}"
                )
            if board["status"] == "deleting":
                raise AgentError(f"board {board_id} is being deleted")
            agent_name = name or entry.get("name") or gateway_agent_id
            check_name_free_in(conn, gateway_id, board_id, agent_name)
            agent_id = str(uuid.uuid4())
            insert_agent_in(
                conn,
                agent_id=agent_id,
                gateway_id=gateway_id,
                board_id=board_id,
                kind=kind,
                gateway_agent_id=gateway_agent_id,
                name=agent_name,
                heartbeat=heartbeat,
                interval_s=interval_s,
                identity_profile=identity_profile,
                workspace_path=entry["workspace"],
                adopted=True,
                now=now,
            )
            insert_token_in(conn, agent_id, minted, now)
            add_event(
                conn,
                "agent.adopted",
                gateway_id=gateway_id,
                agent_id=agent_id,
                at=now,
                gateway_agent_id=gateway_agent_id,
                workspace=entry["workspace"],
                agent_kind=kind.value,
            )
            tx.step(
                agent_id,
                lc.ApplyRequested(generation=1, wake=True),
                RenderOptions(token=minted.raw),
            )
            return require_agent(conn, agent_id)

        return await self.reconciler.write(op)

    async def pause_agent(self, agent_id: str) -> AgentRow:
        """Pause: the heartbeat job goes off on the gateway (an apply in the same
        transaction); from then on the agent is never woken, nor marked offline."""

        def op(tx: Transition) -> AgentRow:
            row = require_agent(tx.conn, agent_id)
            if row.status == lc.Status.DELETING:
                raise AgentConflict(f"agent {agent_id} is being deleted")
            if row.paused_at is None:
                _pause_in(tx, row, "agent")
            return require_agent(tx.conn, agent_id)

        return await self.reconciler.write(op)

    async def resume_agent(self, agent_id: str) -> AgentRow:
        """Resume: the heartbeat job comes back and the agent is woken (a check-in cycle)."""

        def op(tx: Transition) -> AgentRow:
            row = require_agent(tx.conn, agent_id)
            if row.paused_by == "board":
                raise AgentPaused(
                    f"agent {agent_id} is paused with its board {row.board_id}; resume the "
                    f"board (POST /api/v1/boards/{row.board_id}/resume)"
                )
            if row.paused_at is not None:
                _resume_in(tx, row)
            return require_agent(tx.conn, agent_id)

        return await self.reconciler.write(op)

    async def set_board_paused(
        self, board_id: str, paused: bool, *, note: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Pause or resume a board and, with it, its agents (one paused by itself stays
        paused when its board resumes). `note` (content, author): the board-memory note
        that asked for it (Mission Control's "/pause" and "/resume"), kept in the same
        transaction."""

        def op(tx: Transition) -> dict[str, Any]:
            conn, now = tx.conn, tx.now
            board = load_board(conn, board_id)
            if board["status"] == "deleting":
                raise AgentConflict(f"board {board_id} is being deleted")
            if (board["paused_at"] is not None) != paused:
                set_board_paused_in(conn, board_id, now if paused else None, now)
                for row in agents_of_board_in(conn, board_id):
                    if paused and row.paused_at is None:
                        _pause_in(tx, row, "board")
                    elif not paused and row.paused_by == "board":
                        _resume_in(tx, row)
            if note is not None:
                add_memory_in(
                    conn, board_id, content=note[0], author_kind="user", author_id=note[1], now=now
                )
            return load_board(conn, board_id)

        return await self.reconciler.write(op)

    async def message_lead(
        self,
        main: BoardAgent,
        board_id: str,
        *,
        content: str,
        kind: str,
    ) -> tuple[AgentRow, bool]:
        """The gateway's main agent messages a board's lead, creating the lead first when
        the board has none (as the reference does), in one transaction. Returns the lead
        and whether it was created."""
        create = self._creator(default_lead(board_id))

        def op(tx: Transition) -> tuple[AgentRow, bool]:
            check_main_for_board_in(tx.conn, main, board_id)
            lead = lead_of_in(tx.conn, board_id)
            created = lead is None
            if lead is None:
                lead = create(tx)
            message_agent_in(
                tx.conn, lead, sender="the gateway's main agent", body=content, kind=kind,
                now=tx.now,
            )  # fmt: skip
            return lead, created

        return await self.reconciler.write(op)

    async def update_agent(
        self, agent_id: str, changes: Mapping[str, Any], *, force: bool = False
    ) -> AgentRow:
        """Change what Mission Control lets an admin change (name, board of a worker,
        identity, heartbeat, template overrides), render the files again and reapply the
        agent (a new generation, same token, no wake), in the same transaction as the row.
        Nothing changed: nothing happens, unless `force`."""
        return await self.reconciler.write(self._updater(agent_id, changes, force=force))

    def apply_change_in(
        self,
        tx: Transition,
        agent_id: str,
        changes: Mapping[str, Any],
        *,
        wake: bool,
        render: RenderOptions | None = None,
    ) -> AgentRow:
        """One agent's part of a fleet rollout, inside the rollout's transaction for its
        gateway: the fields changed (as `update_agent` takes them) and a new generation
        applied even when none did (a re-apply), woken if `wake` so it checks in."""
        return self._updater(agent_id, changes, force=True, wake=wake, render=render)(tx)

    def _updater(
        self,
        agent_id: str,
        changes: Mapping[str, Any],
        *,
        force: bool = False,
        wake: bool = False,
        render: RenderOptions | None = None,
    ) -> Callable[[Transition], AgentRow]:
        """What updates the agent inside a transaction (its inputs checked now)."""
        changes = dict(changes)
        for name, key in (("IDENTITY.md", "identity_template"), ("SOUL.md", "soul_template")):
            if changes.get(key) is not None:
                check_override(name, changes[key])
        heartbeat = (
            heartbeat_settings(changes["heartbeat_config"])
            if "heartbeat_config" in changes
            else None
        )
        # A new role may have a soul in the directory (the kind is the row's: a worker).
        new_soul = (
            self._role_soul(AgentKind.WORKER, changes["identity_profile"])
            if changes.get("identity_profile") is not None
            else None
        )

        def op(tx: Transition) -> AgentRow:
            conn = tx.conn
            row = require_agent(conn, agent_id)
            if row.status == lc.Status.DELETING:
                raise AgentConflict(f"agent {agent_id} is being deleted")
            main = row.kind == AgentKind.MAIN
            if changes.get("is_gateway_main") not in (None, main):
                raise AgentError(
                    "is_gateway_main: an agent's kind cannot change (its gateway identity "
                    "follows it); create an agent of the other kind and delete this one"
                )
            values: dict[str, Any] = {}
            if "board_id" in changes and changes["board_id"] != row.board_id:
                values["board_id"] = move_target_in(conn, row, changes["board_id"])
            if changes.get("name") is not None and changes["name"] != row.name:
                values["name"] = changes["name"]
            if "name" in values or "board_id" in values:
                check_name_free_in(
                    conn,
                    row.gateway_id,
                    values.get("board_id", row.board_id),
                    values.get("name", row.name),
                    exclude=row.id,
                )
            profile = changes.get("identity_profile")
            if profile is not None and profile != json.loads(row.identity_profile):
                values["identity_profile"] = json.dumps(profile)
                soul = new_soul if row.kind == AgentKind.WORKER else None
                if soul != row.role_soul:
                    values["role_soul"] = soul
            if heartbeat is not None and heartbeat[0] != json.loads(row.heartbeat_config):
                values["heartbeat_config"] = json.dumps(heartbeat[0])
                values["heartbeat_interval_s"] = heartbeat[1]
                values["governor_step"] = 0  # its own cadence; the governor looks again
            for key in ("identity_template", "soul_template"):
                if key in changes and changes[key] != getattr(row, key):
                    values[key] = changes[key]
            if not values and not force:
                return row
            update_agent_in(conn, agent_id, values, tx.now)
            if "board_id" in values:
                unassign_agent_tasks(conn, agent_id, now=tx.now)
            add_event(
                conn,
                "agent.updated",
                gateway_id=row.gateway_id,
                agent_id=agent_id,
                at=tx.now,
                fields=sorted(values),
                force=force,
            )
            tx.step(
                agent_id,
                lc.ApplyRequested(generation=row.lifecycle_generation + 1, wake=wake),
                render,
            )
            return require_agent(conn, agent_id)

        return op

    async def apply_group_heartbeat(
        self, group_id: str, heartbeat_config: Mapping[str, Any], *, include_leads: bool
    ) -> tuple[list[str], list[str]]:
        """Set one heartbeat on every agent of a board group's boards (workers, and leads if
        asked), each reapplied, in one transaction. Returns (updated, failed) agent ids; an
        agent that cannot take it keeps its state, logged."""
        heartbeat_settings(heartbeat_config)  # refuse a bad cadence before anything

        def op(tx: Transition) -> tuple[list[str], list[str]]:
            updated, failed = [], []
            for agent_id in group_agents_in(tx.conn, group_id, include_leads=include_leads):
                tx.conn.execute("SAVEPOINT group_agent")
                try:
                    self._updater(agent_id, {"heartbeat_config": heartbeat_config})(tx)
                except AgentError as exc:
                    tx.conn.execute("ROLLBACK TO group_agent")
                    tx.changed.pop(agent_id, None)
                    failed.append(agent_id)
                    log.warning(
                        "provisioning.group_heartbeat.agent_failed",
                        agent_id=agent_id,
                        error=str(exc),
                    )
                else:
                    updated.append(agent_id)
                finally:
                    tx.conn.execute("RELEASE group_agent")
            add_event(
                tx.conn,
                "board_group.heartbeat.applied",
                at=tx.now,
                board_group_id=group_id,
                every=heartbeat_settings(heartbeat_config)[0]["every"],
                agents=len(updated),
                failed=len(failed),
            )
            return updated, failed

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

        known = await self.reconciler.db.read(lambda conn: require_agent(conn, agent_id))
        soul = self._role_soul(known.kind, json.loads(known.identity_profile))  # as it is now

        def op(tx: Transition) -> AgentRow:
            row = require_agent(tx.conn, agent_id)
            if row.role_soul != soul and row.identity_profile == known.identity_profile:
                update_agent_in(tx.conn, agent_id, {"role_soul": soul}, tx.now)
            generation = row.lifecycle_generation + 1
            tx.step(agent_id, lc.ApplyRequested(generation=generation, wake=False), render)
            return require_agent(tx.conn, agent_id)

        return await self.reconciler.write(op)

    async def update_gateway(
        self, gateway_id: str, *, name: str | None = None, workspace_root: str | None = None
    ) -> GatewayRow:
        """Rename a gateway or declare its workspace root; a new root renders its agents'
        files again (their workspace paths change), in the same transaction."""

        def op(tx: Transition) -> GatewayRow:
            row, moved = update_gateway_in(
                tx.conn, gateway_id, name=name, workspace_root=workspace_root, now=tx.now
            )
            if moved:
                _reapply_gateway_in(tx, gateway_id)
            return row

        return await self.reconciler.write(op)

    async def rerender_stale(self, gateway_id: str) -> int:
        """The sidecar's Hello named another workspace root or agent-API address than the
        agents' files were rendered with: render and apply them again. Returns how many."""

        def op(tx: Transition) -> int:
            if not take_stale_files_in(tx.conn, gateway_id):
                return 0
            return _reapply_gateway_in(tx, gateway_id)

        def stale(conn: Connection) -> bool:
            return gateway_in(conn, gateway_id).files_stale

        if not await self.reconciler.db.read(stale):  # every Hello asks: keep it a read
            return 0
        count = await self.reconciler.write(op)
        if count:
            log.info("provisioning.gateway.rerendered", gateway_id=gateway_id, agents=count)
        return count

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
        """Mark `deleting` and queue RemoveAgent; never fails because a gateway is down.
        An adopted agent's workspace stays on disk (its files were never the hub's)."""
        await self.reconciler.write(
            lambda tx: _delete_in(tx, require_agent(tx.conn, agent_id), delete_files)
        )

    def delete_agent_in(self, tx: Transition, agent_id: str) -> None:
        """A rollout's rollback of an agent it created, inside its gateway's transaction."""
        _delete_in(tx, require_agent(tx.conn, agent_id), True)

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


def _pause_in(tx: Transition, row: AgentRow, by: str) -> None:
    set_paused_in(tx.conn, row.id, by, tx.now)
    add_event(tx.conn, "agent.paused", gateway_id=row.gateway_id, agent_id=row.id, at=tx.now, by=by)
    tx.step(row.id, lc.ApplyRequested(generation=row.lifecycle_generation + 1, wake=False))


def _resume_in(tx: Transition, row: AgentRow) -> None:
    set_paused_in(tx.conn, row.id, None, tx.now)
    add_event(tx.conn, "agent.resumed", gateway_id=row.gateway_id, agent_id=row.id, at=tx.now)
    tx.step(row.id, lc.ApplyRequested(generation=row.lifecycle_generation + 1, wake=True))


def _reapply_gateway_in(tx: Transition, gateway_id: str) -> int:
    """A new generation for every agent of the gateway (files rendered afresh, no wake).
    An agent whose files cannot be rendered keeps its state (logged); the others go on."""
    applied = 0
    for row in agents_of_gateway_in(tx.conn, gateway_id):
        tx.conn.execute("SAVEPOINT reapply_agent")
        try:
            tx.step(row.id, lc.ApplyRequested(generation=row.lifecycle_generation + 1, wake=False))
        except AgentError as exc:
            tx.conn.execute("ROLLBACK TO reapply_agent")
            tx.changed.pop(row.id, None)
            log.warning(
                "provisioning.agent.reapply_failed",
                agent_id=row.id,
                gateway_id=gateway_id,
                error=str(exc),
            )
        else:
            applied += 1
        finally:
            tx.conn.execute("RELEASE reapply_agent")
    return applied


def _delete_in(tx: Transition, row: AgentRow, delete_files: bool) -> None:
    delete_files = delete_files and not row.adopted
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
