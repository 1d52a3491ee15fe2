"""The reconciler: feeds lifecycle events to `hub.lifecycle.step` and carries out its actions.

Each event is one store write: load the agent's row, step, save the snapshot and
queue the commands it asked for, in one transaction (shared with whatever else
commits in that group). Deadlines live on the row and in an in-memory heap; a
task wakes at the earliest one. Nothing polls the database on a timer except the
presence sweep, which asks only for online agents whose heartbeats stopped.

It is also the link's report sink: command results, heartbeats, run outcomes and
gateway state from sidecars arrive here and become lifecycle events.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hub import lifecycle as lc
from hub.agents import (
    DEFAULT_HEARTBEAT,
    AgentConflict,
    AgentError,
    AgentRow,
    accepted_tokens,
    agent_json,
    build_apply,
    build_wake,
    credentials_for,
    gateway_agent_id,
    last_apply_payload,
    load_agent,
    load_agent_by_gateway_id,
    parse_every,
    save_snapshot,
)
from hub.boards import finish_deleting, load_board
from hub.database import Database
from hub.events import EventBus
from hub.rendering import AgentKind, ApplyAction, token_file
from hub.store import (
    Store,
    UnknownGateway,
    add_event,
    enqueue_command_in,
    gateway_in,
    record_command_results_in,
    record_run_observed_in,
)
from hub.tasks import unassign_agent_tasks
from hub.tokens import DEFAULT_ROTATION_GRACE_S, TokenKeyring
from missioncontrol.log import get_logger
from protos import link_pb2 as pb
from protos.contract import epoch_s

log = get_logger("hub.reconciler")
Outcome = pb.CommandResult.Outcome
PRESENCE_SWEEP_S = 5.0
DEADLINE_BATCH = 1000
DEADLINE_BATCHES_IN_FLIGHT = 4


@dataclass(frozen=True)
class AgentSpec:
    """What an admin asks for when creating an agent."""

    name: str
    board_id: str | None = None
    gateway_id: str | None = None  # for a gateway main agent (no board)
    kind: AgentKind = AgentKind.WORKER
    identity_profile: dict[str, Any] | None = None
    heartbeat_config: dict[str, Any] | None = None


@dataclass
class _Effects:
    """What to do after the transaction commits: move deadlines, write logs."""

    deadlines: list[tuple[str, float | None, int]]
    logs: list[tuple[str, dict[str, Any]]]
    queued_gateways: set[str]
    changed: dict[str, dict[str, Any]]  # agent id -> its API view after the change

    @classmethod
    def empty(cls) -> _Effects:
        return cls([], [], set(), {})


class Reconciler:
    def __init__(
        self,
        db: Database,
        store: Store,
        keyring: TokenKeyring,
        policy: lc.Policy,
        *,
        on_commands_queued: Callable[[str], None] = lambda gateway_id: None,
        presence_sweep_s: float = PRESENCE_SWEEP_S,
        events: EventBus | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.keyring = keyring
        self.policy = policy
        self.on_commands_queued = on_commands_queued
        self.presence_sweep_s = presence_sweep_s
        self.events = events
        self._link_up_since: dict[str, float] = {}
        self._heap: list[tuple[float, str, int]] = []
        self._scheduled: dict[str, tuple[float, int]] = {}
        self._heap_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT id, checkin_deadline_at, lifecycle_generation FROM agents "
                "WHERE checkin_deadline_at IS NOT NULL"
            ).fetchall()
        )
        for agent_id, at, generation in rows:
            self._schedule(agent_id, at, generation)
        self._tasks = [
            asyncio.create_task(self._deadline_loop(), name="reconciler-deadlines"),
            asyncio.create_task(self._presence_loop(), name="reconciler-presence"),
        ]
        log.info("reconciler.started", deadlines=len(rows))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --------------------------------------------------------- admin actions

    async def create_agent(self, spec: AgentSpec) -> AgentRow:
        minted = self.keyring.mint()

        def op(conn: sqlite3.Connection, effects: _Effects) -> AgentRow:
            now = time.time()
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
            self._step_in(
                conn,
                agent_id,
                lc.ApplyRequested(generation=1, wake=True),
                now,
                effects,
                token=minted.raw,
            )
            row = load_agent(conn, agent_id)
            assert row is not None
            return row

        return await self._write(op)

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

        def op(conn: sqlite3.Connection, effects: _Effects) -> AgentRow:
            row = _require(conn, agent_id)
            self._step_in(
                conn,
                agent_id,
                lc.ApplyRequested(generation=row.lifecycle_generation + 1, wake=False),
                time.time(),
                effects,
                overwrite=overwrite,
                force_bootstrap=force_bootstrap,
                reset_session=reset_session,
            )
            return _require(conn, agent_id)

        return await self._write(op)

    async def rotate_token(
        self, agent_id: str, *, grace_s: float = DEFAULT_ROTATION_GRACE_S
    ) -> AgentRow:
        """A new token, written to the agent's token file; the previous one stays valid for
        `grace_s` (a run that read the old file is not locked out). Nothing else changes:
        no new generation, no wake."""
        if not 0 <= grace_s <= 24 * 3600:
            raise AgentError("grace_s must be between 0 and 86400")
        minted = self.keyring.mint()

        def op(conn: sqlite3.Connection, effects: _Effects) -> AgentRow:
            row = _require(conn, agent_id)
            now = time.time()
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
            effects.queued_gateways.add(row.gateway_id)
            add_event(
                conn,
                "agent.token.rotated",
                gateway_id=row.gateway_id,
                agent_id=agent_id,
                at=now,
                grace_s=grace_s,
            )
            return row

        return await self._write(op)

    async def delete_agent(self, agent_id: str, *, delete_files: bool = True) -> None:
        """Mark `deleting` and queue RemoveAgent; never fails because a gateway is down."""

        def op(conn: sqlite3.Connection, effects: _Effects) -> None:
            self._delete_in(conn, _require(conn, agent_id), delete_files, effects)

        await self._write(op)

    async def delete_board(self, board_id: str) -> bool:
        """Remove the board's agents through their sidecars; the board goes with the last
        one (at once if it has none). Returns True if the board is already gone."""

        def op(conn: sqlite3.Connection, effects: _Effects) -> bool:
            load_board(conn, board_id)
            conn.execute(
                "UPDATE boards SET status = 'deleting', updated_at = ? WHERE id = ?",
                (time.time(), board_id),
            )
            rows = conn.execute(
                "SELECT id FROM agents WHERE board_id = ? AND status != ?",
                (board_id, lc.Status.DELETING.value),
            ).fetchall()
            for (agent_id,) in rows:
                self._delete_in(conn, _require(conn, agent_id), True, effects)
            return finish_deleting(conn, board_id)

        return bool(await self._write(op))

    def _delete_in(
        self, conn: sqlite3.Connection, row: AgentRow, delete_files: bool, effects: _Effects
    ) -> None:
        self._step_in(conn, row.id, lc.DeleteRequested(), time.time(), effects)
        enqueue_command_in(
            conn,
            row.gateway_id,
            pb.Command(
                remove_agent=pb.RemoveAgent(
                    agent_id=row.gateway_agent_id,
                    generation=row.lifecycle_generation,
                    delete_files=delete_files,
                )
            ),
        )
        effects.queued_gateways.add(row.gateway_id)

    # ----------------------------------------------------------- report sink

    async def command_results(self, gateway_id: str, results: list[pb.CommandResult]) -> None:
        def op(conn: sqlite3.Connection, effects: _Effects) -> None:
            record_command_results_in(conn, gateway_id, results)  # the ack and its effects
            now = time.time()
            for result in results:
                self._on_result(conn, gateway_id, result, now, effects)

        await self._write(op)

    async def heartbeats(self, gateway_id: str, batch: pb.HeartbeatBatch) -> None:
        def op(conn: sqlite3.Connection, effects: _Effects) -> None:
            now = time.time()
            seen = {b.agent_id: min(epoch_s(b.observed_at), now) for b in batch.beats}
            # Steady state (online, nothing outstanding): only presence moves, in one
            # statement for the whole batch; observed times never go backwards.
            steady = conn.executemany(
                """UPDATE agents SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?)
                   WHERE gateway_id = ? AND gateway_agent_id = ?
                     AND status = 'online' AND phase = 'idle'""",
                [(at, gateway_id, agent_id) for agent_id, at in seen.items()],
            ).rowcount
            # Everyone else has a lifecycle decision waiting on this check-in.
            ids = list(seen) if steady < len(seen) else []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = conn.execute(
                    f"""SELECT id, gateway_agent_id, last_seen_at FROM agents
                        WHERE gateway_id = ? AND gateway_agent_id IN
                        ({",".join("?" * len(chunk))})
                        AND NOT (status = 'online' AND phase = 'idle')""",
                    (gateway_id, *chunk),
                ).fetchall()
                for agent_id, gw_agent_id, last_seen in rows:
                    at = max(seen[gw_agent_id], last_seen or 0.0)
                    self._step_in(conn, agent_id, lc.CheckIn(at=at), now, effects)
            conn.execute("UPDATE gateways SET last_seen_at = ? WHERE id = ?", (now, gateway_id))

        await self._write(op, urgent=False)  # bulk traffic: rides the paced group commit

    async def run_observed(self, gateway_id: str, run: pb.RunObserved) -> None:
        def op(conn: sqlite3.Connection, effects: _Effects) -> None:
            record_run_observed_in(conn, gateway_id, run)
            row = load_agent_by_gateway_id(conn, gateway_id, run.agent_id)
            if row is None:
                return
            now = time.time()
            event: lc.Event
            if run.outcome == pb.RunObserved.FINAL:
                event = lc.CheckIn(
                    at=min(epoch_s(run.observed_at), now), source=lc.CheckInSource.RUN_FINAL
                )
            else:
                event = lc.RunFailed(generation=run.generation, message=run.message)
            self._step_in(conn, row.id, event, now, effects)

        await self._write(op)

    async def gateway_state(self, gateway_id: str, state: pb.GatewayState) -> None:
        await self.store.record_gateway_state(gateway_id, state)

    async def link_changed(self, gateway_id: str, up: bool) -> None:
        """The gateway's sidecar stream opened or closed."""
        now = time.time()
        if up:
            self._link_up_since[gateway_id] = now
        else:
            self._link_up_since.pop(gateway_id, None)
        event: lc.Event = lc.SidecarReconnected() if up else lc.SidecarDisconnected()

        def op(conn: sqlite3.Connection, effects: _Effects) -> None:
            for (agent_id,) in conn.execute(
                "SELECT id FROM agents WHERE gateway_id = ?", (gateway_id,)
            ).fetchall():
                self._step_in(conn, agent_id, event, now, effects)

        await self._write(op)

    # -------------------------------------------------------------- internals

    def _on_result(
        self,
        conn: sqlite3.Connection,
        gateway_id: str,
        result: pb.CommandResult,
        now: float,
        effects: _Effects,
    ) -> None:
        command = conn.execute(
            "SELECT kind, payload FROM commands WHERE gateway_id = ? AND sequence = ?",
            (gateway_id, result.sequence),
        ).fetchone()
        row = load_agent_by_gateway_id(conn, gateway_id, result.agent_id)
        if command is None or row is None:
            return
        kind = command["kind"]
        if kind == "remove_agent":
            if (
                result.outcome in (Outcome.APPLIED, Outcome.ALREADY_APPLIED)
                and row.status == lc.Status.DELETING
            ):
                unassign_agent_tasks(conn, row.id, now=now)
                conn.execute("DELETE FROM agents WHERE id = ?", (row.id,))
                add_event(conn, "agent.deleted", gateway_id=gateway_id, agent_id=row.id)
                finish_deleting(conn, row.board_id)
                effects.changed[row.id] = {**agent_json(row), "status": "deleted"}
                effects.deadlines.append((row.id, None, 0))
            return
        reason = (
            lc.WaitReason.GATEWAY_UNREACHABLE
            if result.error_code.startswith("gateway")
            else lc.WaitReason.WAKE_FAILED
        )
        generation = result.generation
        observed = min(epoch_s(result.observed_at), now) if result.HasField("observed_at") else now
        events: list[lc.Event] = []
        if kind == "apply_agent":
            wake = bool(pb.Command.FromString(command["payload"]).apply_agent.wake_message)
            if result.outcome in (Outcome.APPLIED, Outcome.ALREADY_APPLIED):
                events.append(lc.ApplyConfirmed(generation=generation))
                if result.wake_delivered:
                    events.append(lc.WakeDelivered(generation=generation, at=observed))
                elif wake and result.outcome == Outcome.APPLIED:
                    events.append(lc.WakeUndeliverable(generation, reason, result.error))
            else:
                events.append(
                    lc.ApplyFailed(
                        generation=generation,
                        reason=reason,
                        message=result.error,
                        permanent=result.outcome == Outcome.REJECTED,
                    )
                )
        elif kind == "wake_agent":
            if result.wake_delivered:
                events.append(lc.WakeDelivered(generation=generation, at=observed))
            elif result.outcome in (Outcome.FAILED, Outcome.REJECTED):
                events.append(lc.WakeUndeliverable(generation, reason, result.error))
        for event in events:
            self._step_in(conn, row.id, event, now, effects)

    def _step_in(
        self,
        conn: sqlite3.Connection,
        agent_id: str,
        event: lc.Event,
        now: float,
        effects: _Effects,
        *,
        token: str | None = None,
        overwrite: bool = False,
        force_bootstrap: bool = False,
        reset_session: bool = False,
    ) -> None:
        row = load_agent(conn, agent_id)
        if row is None:
            return
        before = row.snapshot(self._link_up_since.get(row.gateway_id))
        after, actions = lc.step(before, event, self.policy, now)
        save_snapshot(conn, agent_id, after, now)
        row = _require(conn, agent_id)
        effects.changed[agent_id] = agent_json(row)
        for action in actions:
            if isinstance(action, lc.QueueApply):
                command = build_apply(
                    conn,
                    row,
                    action.generation,
                    wake=action.wake,
                    action=ApplyAction.PROVISION if token else ApplyAction.UPDATE,
                    token=token,
                    overwrite=overwrite,
                    force_bootstrap=force_bootstrap,
                    reset_session=reset_session,
                    now=now,
                )
                enqueue_command_in(conn, row.gateway_id, command)
                effects.queued_gateways.add(row.gateway_id)
            elif isinstance(action, lc.ResendApply):
                payload = last_apply_payload(conn, row, action.generation)
                command = (
                    pb.Command.FromString(payload)
                    if payload
                    else build_apply(
                        conn,
                        row,
                        action.generation,
                        wake=action.wake,
                        action=ApplyAction.UPDATE,
                        now=now,
                    )
                )
                command.ClearField("sequence")
                command.ClearField("issued_at")
                enqueue_command_in(conn, row.gateway_id, command)
                effects.queued_gateways.add(row.gateway_id)
            elif isinstance(action, lc.SendWake):
                enqueue_command_in(
                    conn,
                    row.gateway_id,
                    build_wake(conn, row, action.generation, action.attempt, self.policy.max_wakes),
                )
                effects.queued_gateways.add(row.gateway_id)
            elif isinstance(action, lc.ScheduleDeadline):
                effects.deadlines.append((agent_id, action.at, action.generation))
            elif isinstance(action, lc.CancelDeadline):
                effects.deadlines.append((agent_id, None, 0))
            elif isinstance(action, lc.Log):
                fields = {"agent_id": agent_id, "gateway_id": row.gateway_id, **action.as_dict()}
                effects.logs.append((action.event.value, fields))
                add_event(
                    conn,
                    action.event.value,
                    gateway_id=row.gateway_id,
                    agent_id=agent_id,
                    at=now,
                    **action.as_dict(),
                )

    async def _write(
        self, op: Callable[[sqlite3.Connection, _Effects], Any], *, urgent: bool = True
    ) -> Any:
        effects = _Effects.empty()

        def job(conn: sqlite3.Connection) -> Any:
            effects.deadlines.clear()
            effects.logs.clear()
            effects.queued_gateways.clear()
            effects.changed.clear()
            return op(conn, effects)

        result = await self.db.write(job, urgent=urgent)
        for agent_id, at, generation in effects.deadlines:
            self._schedule(agent_id, at, generation)
        for event, fields in effects.logs:
            log.info(event, **fields)
        for gateway_id in effects.queued_gateways:
            self.on_commands_queued(gateway_id)
        if self.events is not None:
            for view in effects.changed.values():
                self.events.publish(
                    "agent", view, board_id=view["board_id"], gateway_id=view["gateway_id"]
                )
        return result

    def _schedule(self, agent_id: str, at: float | None, generation: int) -> None:
        if at is None:
            self._scheduled.pop(agent_id, None)
            return
        self._scheduled[agent_id] = (at, generation)
        heapq.heappush(self._heap, (at, agent_id, generation))
        self._heap_changed.set()

    async def _deadline_loop(self) -> None:
        # Batches are judged concurrently so one batch's commit does not hold the next.
        in_flight: set[asyncio.Task[None]] = set()
        try:
            await self._deadline_rounds(in_flight)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _deadline_rounds(self, in_flight: set[asyncio.Task[None]]) -> None:
        while True:
            self._heap_changed.clear()
            now = time.time()
            due: list[tuple[str, float, int]] = []
            while self._heap and self._heap[0][0] <= now and len(due) < DEADLINE_BATCH:
                at, agent_id, generation = heapq.heappop(self._heap)
                if self._scheduled.get(agent_id) == (at, generation):  # else: superseded
                    del self._scheduled[agent_id]
                    due.append((agent_id, at, generation))
            if due:
                if len(in_flight) >= DEADLINE_BATCHES_IN_FLIGHT:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(self._deadlines_due(due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                continue
            timeout = self._heap[0][0] - now if self._heap else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._heap_changed.wait()

    async def _deadlines_due(self, due: list[tuple[str, float, int]]) -> None:
        def event(agent_id: str, suspect: bool) -> lc.Event:
            at, generation = deadlines[agent_id]
            return lc.DeadlineDue(deadline_at=at, generation=generation, gateway_suspect=suspect)

        deadlines = {agent_id: (at, generation) for agent_id, at, generation in due}
        try:
            await self._judge(list(deadlines), event)
        except Exception as exc:  # keep the loop alive; the rows still hold the deadlines
            log.error("lifecycle.reconcile.failed", error=str(exc), agents=len(due))
            for agent_id, at, generation in due:
                self._schedule(agent_id, at + self.policy.checkin_deadline_s, generation)

    async def _judge(
        self, agent_ids: list[str], event: Callable[[str, bool], lc.Event], *, urgent: bool = True
    ) -> None:
        """Step each agent with a verdict event that knows whether its gateway is suspect
        (more than half of its agents missing at once: blame the gateway, not the agents)."""

        def op(conn: sqlite3.Connection, effects: _Effects) -> None:
            now = time.time()
            suspects: dict[str, bool] = {}
            for agent_id in agent_ids:
                row = load_agent(conn, agent_id)
                if row is None:
                    continue
                if row.gateway_id not in suspects:
                    suspects[row.gateway_id] = self._gateway_suspect(conn, row.gateway_id, now)
                self._step_in(
                    conn, agent_id, event(agent_id, suspects[row.gateway_id]), now, effects
                )

        await self._write(op, urgent=urgent)

    def _gateway_suspect(self, conn: sqlite3.Connection, gateway_id: str, now: float) -> bool:
        link_up = self._link_up_since.get(gateway_id)
        rows = [
            AgentRow.from_row(r)
            for r in conn.execute(
                "SELECT * FROM agents WHERE gateway_id = ? AND status != 'deleting'", (gateway_id,)
            ).fetchall()
        ]
        missed = sum(lc.is_missing(r.snapshot(link_up), self.policy, now) for r in rows)
        suspect = lc.gateway_suspect(missed, len(rows), self.policy)
        if suspect:
            log.warning(
                "lifecycle.gateway.suspect", gateway_id=gateway_id, missed=missed, agents=len(rows)
            )
        return suspect

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.presence_sweep_s)
            try:
                await self._presence_sweep()
            except Exception as exc:
                log.error("lifecycle.presence.failed", error=str(exc))

    async def _presence_sweep(self) -> None:
        now = time.time()
        factor = self.policy.offline_after_intervals
        stale = await self.db.read(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    """SELECT id FROM agents WHERE status = 'online' AND phase = 'idle'
                   AND heartbeat_interval_s > 0 AND last_seen_at < ? - ? * heartbeat_interval_s""",
                    (now, factor),
                ).fetchall()
            ]
        )
        if stale:
            await self._judge(
                stale,
                lambda agent_id, suspect: lc.PresenceTick(gateway_suspect=suspect),
                urgent=False,
            )


def _require(conn: sqlite3.Connection, agent_id: str) -> AgentRow:
    row = load_agent(conn, agent_id)
    if row is None:
        raise AgentError(f"agent {agent_id} does not exist")
    return row
