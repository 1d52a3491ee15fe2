"""The reconciler: feeds lifecycle events to `decisions.step` and carries out its actions.

Each event is one store write: load the agent's row, step, save the snapshot and
queue the commands it asked for, in one transaction (shared with whatever else
commits in that group). `write` offers the same to other parts of the hub
(provisioning steps agents inside its own transactions). Deadlines live on the
row and in a `DeadlineSchedule`; a task wakes at the earliest one. Nothing polls
the database on a timer except the presence sweep, which asks only for online
agents whose heartbeats stopped.

On a database several hubs share, a hub judges only the agents of the gateways it owns
(hub/store/ownership.py): a hub that holds no stream for a gateway must not decide its
agents are gone. The owner's presence sweep also takes up the deadlines on its
gateways' rows that came due unjudged (set by another hub, or from before it owned
them), and adopts the gateways of hubs that stopped.

It is also the link's report sink: Hellos, command results, heartbeats, run outcomes
and gateway state from sidecars arrive here and become lifecycle events (through the
pure `result_events`, `confirmation_events` and `run_event`). A Hello is recorded in
the same transaction as what the commands it confirms did, so no outcome is lost
between the two.

Time comes from the injected `clock`, so a test moves time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from hub.boards import finish_deleting
from hub.events import EventBus
from hub.lifecycle import decisions as lc
from hub.lifecycle.deadlines import DeadlineSchedule, Due
from hub.lifecycle.presence import BeatKey, silent_agents_in, touch_steady_in
from hub.live_relay import agents_changed_in
from hub.provisioning.agents import (
    AgentRow,
    RenderOptions,
    RenderSources,
    agent_json,
    build_apply,
    build_wake,
    changes_row,
    last_apply_payload,
    load_agent,
    load_agent_by_gateway_id,
    require_agent,
    save_snapshot,
    save_snapshots_in,
    wake_command,
    with_snapshot,
)
from hub.provisioning.rendering import ApplyAction
from hub.store.coalesce import Coalescer
from hub.store.database import Connection, Database
from hub.store.event_log import EventBatch, add_event, record_run_observed_in
from hub.store.gateways import GatewayStore, Welcome, record_hello_in
from hub.store.outbox import (
    ConfirmedCommand,
    OutboxBatch,
    enqueue_command_in,
    record_command_results_in,
)
from hub.store.ownership import (
    OwnerChange,
    adopt_orphans_in,
    hold_ownership_in,
    hub_alive_in,
    hub_started_in,
    hub_stopped_in,
    owned_in,
)
from hub.tasks import unassign_agent_tasks
from hub.work_state import record_work_states_in
from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived
from protos import link_pb2 as pb
from protos.contract import GatewayErrorKind, epoch_s

T = TypeVar("T")
log = get_logger("hub.lifecycle")
Outcome = pb.CommandResult.Outcome
PRESENCE_SWEEP_S = 5.0
DEADLINE_BATCH = 1000
DEADLINE_BATCHES_IN_FLIGHT = 4
DEADLINE_BATCHES_QUEUED = 2  # of those, waiting for the writer to begin them
# A Hello confirmed a command whose result never arrived; the lifecycle learns its outcome.
CONFIRMED_WITHOUT_RESULT = "lifecycle.command.confirmed_without_result"


@dataclass
class Transition:
    """One write transaction of lifecycle steps. What the steps decide beyond the rows
    (deadlines, log lines, pushed agent views) happens once the transaction commits."""

    reconciler: Reconciler
    conn: Connection
    now: float
    deadlines: list[tuple[str, float | None, int]] = field(default_factory=list)
    logs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # agent id -> its API view (or what makes it: built only if someone watches)
    changed: dict[str, dict[str, Any] | Callable[[], dict[str, Any]]] = field(default_factory=dict)

    def step(
        self,
        agent_id: str,
        event: lc.Event,
        render: RenderOptions | None = None,
        *,
        row: AgentRow | None = None,
    ) -> AgentRow | None:
        """Apply `event` to the agent (its `row`, if this transaction just read it) and
        carry out the actions; None if it does not exist."""
        return self.reconciler._step_in(self, agent_id, event, render or RenderOptions(), row)

    def forget(self, row: AgentRow) -> None:
        """The agent's row is gone: its deadline goes, and watchers see it deleted."""
        self.changed[row.id] = {**agent_json(row), "status": "deleted"}
        self.deadlines.append((row.id, None, 0))

    def _committed(self) -> None:
        self.reconciler._apply_effects(self)


class Reconciler:
    def __init__(
        self,
        db: Database,
        store: GatewayStore,
        policy: lc.Policy,
        *,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        presence_sweep_s: float = PRESENCE_SWEEP_S,
        on_log: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        """`on_log(event, fields)` sees every lifecycle log event after its commit (metrics)."""
        self.db = db
        self.store = store
        self.policy = policy
        self.events = events
        self.clock = clock
        self.presence_sweep_s = presence_sweep_s
        self.on_log = on_log
        self.schedule = DeadlineSchedule()
        self._link_up_since: dict[str, float] = {}
        # What each connected sidecar last said of its gateway: down, or up again since.
        self._gateway_down: set[str] = set()
        self._gateway_up_since: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._beats: Coalescer[tuple[str, pb.HeartbeatBatch], Transition] = Coalescer(
            # Paced, and first: one job however many beats, so it delays the rest little,
            # and behind a backlog (a fleet's link-up work) every beat's ack would wait.
            "heartbeats",
            lambda job: self.write(job, urgent=False, first=True),
            self._write_beats,
        )
        self._gateway_steps: Coalescer[tuple[str, lc.Event], Transition] = Coalescer(
            "gateway steps", self.write, self._write_gateway_steps
        )

    @property
    def hub_id(self) -> str:
        return self.store.hub_id

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.db.shared:
            started = time.time()  # hubs judge each other's liveness by wall time
            await self.db.write(lambda conn: hub_started_in(conn, self.hub_id, started))
            await self.keep_ownership()
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT id, checkin_deadline_at, lifecycle_generation FROM agents "
                "WHERE checkin_deadline_at IS NOT NULL"
            ).fetchall()
        )
        self.schedule.load((agent_id, at, generation) for agent_id, at, generation in rows)
        self._tasks = [
            start_long_lived(self._deadline_loop(), name="reconciler-deadlines", log=log),
            start_long_lived(self._presence_loop(), name="reconciler-presence", log=log),
        ]
        log.info("reconciler.started", deadlines=len(rows))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.db.shared and self._tasks:
            # Another hub may adopt this one's gateways at once, not after HUB_DEAD_AFTER_S.
            stopped = time.time()
            try:
                await self.db.write(lambda conn: hub_stopped_in(conn, self.hub_id, stopped))
            except Exception as exc:  # stopping goes on; the others wait out the silence
                log.warning("lifecycle.hub.stop_unrecorded", error=str(exc))

    async def write(
        self,
        op: Callable[[Transition], T],
        *,
        urgent: bool = True,
        first: bool = False,
        abandonable: bool = False,
    ) -> T:
        """Run `op` in a store transaction in which it may step agents (`urgent`,
        `first`, `abandonable`: as Database.write's)."""

        def job(conn: Connection) -> T:
            transition = Transition(self, conn, self.clock())
            result = op(transition)
            conn.after_commit(transition._committed)
            agents_changed_in(conn, transition.changed)  # the other hubs' streams
            return result

        return await self.db.write(job, urgent=urgent, first=first, abandonable=abandonable)

    # ----------------------------------------------------------- report sink

    async def record_hello(self, hello: pb.Hello, *, auto_register: bool) -> Welcome:
        """A sidecar's Hello: record it, and learn what the commands it confirms did
        from its inventory (their results never arrived: a hub or sidecar restart)."""
        gateway_id = hello.gateway_id
        inventory = {a.agent_id: int(a.applied_generation) for a in hello.inventory}

        def op(tx: Transition) -> Welcome:
            welcome, confirmed = record_hello_in(
                tx.conn, hello, auto_register=auto_register, at=tx.now, hub_id=self.hub_id
            )
            for command in confirmed:
                self._on_confirmed(tx, gateway_id, command, inventory)
            return welcome

        welcome = await self.write(op, abandonable=True)  # nothing, if the sidecar gave up
        if hello.HasField("gateway_state"):
            await self._gateway_reachability(gateway_id, hello.gateway_state.reachable)
        return welcome

    async def command_results(
        self, gateway_id: str, results: list[pb.CommandResult], *, epoch: int | None = None
    ) -> None:
        """Acks from the gateway's stream; with the session's `epoch`, only while that
        session still owns the gateway (else Superseded, and nothing is written)."""

        def op(tx: Transition) -> None:
            if epoch is not None:
                hold_ownership_in(tx.conn, gateway_id, self.hub_id, epoch)
            record_command_results_in(tx.conn, gateway_id, results)  # the ack and its effects
            for result in results:
                self._on_result(tx, gateway_id, result)

        await self.write(op)

    def heartbeats(self, gateway_id: str, batch: pb.HeartbeatBatch) -> asyncio.Future[None]:
        """A beat batch from a gateway's stream (or the agent API); the future is done
        once it is durable. Bulk traffic: every batch that arrives before the next paced
        group commit rides in it as one job, a few statements for all of them. A future,
        not a coroutine: a fleet's streams send thousands a second, and the link answers
        each in a callback rather than a task of its own."""
        return self._beats.offer((gateway_id, batch))

    def _write_beats(self, tx: Transition, batches: list[tuple[str, pb.HeartbeatBatch]]) -> None:
        conn, now = tx.conn, tx.now
        seen: dict[BeatKey, float] = {}  # an agent's latest beat counts, with its source
        runtime: set[BeatKey] = set()
        beats: list[tuple[str, pb.AgentHeartbeat]] = []
        for gateway_id, batch in batches:
            for beat in batch.beats:
                key, at = (gateway_id, beat.agent_id), min(epoch_s(beat.observed_at), now)
                if at >= seen.get(key, at):
                    seen[key] = at
                    if beat.source == pb.BEAT_SOURCE_RUNTIME:
                        runtime.add(key)
                    else:
                        runtime.discard(key)
                beats.append((gateway_id, beat))
        # Steady state (online, nothing outstanding): only presence moves.
        unsettled = touch_steady_in(conn, seen, runtime)
        # Everyone else has a lifecycle decision waiting on this check-in.
        waiting: dict[str, list[str]] = {}
        for gateway_id, agent in seen:
            if (gateway_id, agent) in unsettled:
                waiting.setdefault(gateway_id, []).append(agent)
        for gateway_id, agents in waiting.items():
            rows = conn.execute(
                """SELECT id, gateway_agent_id, last_seen_at FROM agents
                   WHERE gateway_id = ? AND gateway_agent_id IN (SELECT value FROM json_each(?))
                     AND NOT (status = 'online' AND phase = 'idle')""",
                (gateway_id, json.dumps(agents)),
            ).fetchall()
            for agent_id, gw_agent_id, last_seen in rows:
                key = (gateway_id, gw_agent_id)
                source = lc.CheckInSource.RUNTIME if key in runtime else lc.CheckInSource.HEARTBEAT
                at = max(seen[key], last_seen or 0.0)
                tx.step(agent_id, lc.CheckIn(at=at, source=source))
        gateways = list(dict.fromkeys(gateway_id for gateway_id, _ in batches))
        conn.execute(
            "UPDATE gateways SET last_seen_at = ? WHERE id IN (SELECT value FROM json_each(?))",
            (now, json.dumps(gateways)),
        )
        record_work_states_in(conn, beats, seen)  # what agents say they do

    async def run_observed(
        self, gateway_id: str, run: pb.RunObserved, *, epoch: int | None = None
    ) -> None:
        def op(tx: Transition) -> None:
            if epoch is not None:
                hold_ownership_in(tx.conn, gateway_id, self.hub_id, epoch)
            record_run_observed_in(tx.conn, gateway_id, run)
            row = load_agent_by_gateway_id(tx.conn, gateway_id, run.agent_id)
            if row is None:
                return
            # A later wake of the agent that was delivered: this run answers an older one.
            newer_wake = tx.conn.execute(
                """SELECT 1 FROM commands WHERE gateway_id = ? AND agent_id = ?
                       AND sequence > ? AND run_id IS NOT NULL LIMIT 1""",
                (gateway_id, run.agent_id, run.command_sequence),
            ).fetchone()
            # A run ends after the command that woke it was queued (the hub's clock),
            # whatever the sidecar's clock says: clamped to [queued, now].
            queued = tx.conn.execute(
                "SELECT created_at FROM commands WHERE gateway_id = ? AND sequence = ?",
                (gateway_id, run.command_sequence),
            ).fetchone()
            at = min(max(epoch_s(run.observed_at), queued[0] if queued else 0.0), tx.now)
            event = lc.run_event(
                final=run.outcome == pb.RunObserved.FINAL,
                model_turn=run.model_turn,
                generation=run.generation,
                message=run.message,
                at=at,
                latest=newer_wake is None,
            )
            tx.step(row.id, event)

        await self.write(op)

    async def gateway_state(self, gateway_id: str, state: pb.GatewayState) -> None:
        await self.store.record_gateway_state(gateway_id, state)
        await self._gateway_reachability(gateway_id, state.reachable)

    async def link_changed(self, gateway_id: str, up: bool) -> None:
        """The gateway's sidecar stream opened or closed."""
        if up:
            self._link_up_since[gateway_id] = self.clock()
        else:
            # Reachability is unknown until the next Hello says; the disconnect is what
            # agents wait on.
            self._forget_link(gateway_id)
        await self._step_gateway(
            gateway_id, lc.SidecarReconnected() if up else lc.SidecarDisconnected()
        )

    def owner_changed(self, payload: str) -> None:
        """An OWNERSHIP notice: a gateway another hub took is not this hub's to judge, so
        what this hub knew of its link is forgotten (were it adopted back, its link is
        down until a Hello here). Its agents hear nothing: their new owner has the link."""
        change = OwnerChange.parse(payload)
        if change.hub_id != self.hub_id:
            self._forget_link(change.gateway_id)

    def _forget_link(self, gateway_id: str) -> None:
        """What this hub knew of the gateway's link and reachability (not persisted)."""
        self._link_up_since.pop(gateway_id, None)
        self._gateway_down.discard(gateway_id)
        self._gateway_up_since.pop(gateway_id, None)

    async def _gateway_reachability(self, gateway_id: str, reachable: bool) -> None:
        """The sidecar said whether its gateway is reachable; agents hear of a change."""
        if reachable == (gateway_id not in self._gateway_down):
            return
        if reachable:
            self._gateway_down.discard(gateway_id)
            self._gateway_up_since[gateway_id] = self.clock()
        else:
            self._gateway_down.add(gateway_id)
        log.info("lifecycle.gateway.reachability", gateway_id=gateway_id, reachable=reachable)
        await self._step_gateway(
            gateway_id, lc.GatewayReachable() if reachable else lc.GatewayUnreachable()
        )

    async def _step_gateway(self, gateway_id: str, event: lc.Event) -> None:
        """Step every agent of the gateway with `event`. Coalesced: a reconnect storm's
        thousands of link changes are one job per commit, their agents read at once."""
        await self._gateway_steps.submit((gateway_id, event))

    def _write_gateway_steps(self, tx: Transition, steps: list[tuple[str, lc.Event]]) -> None:
        gateway_ids = list(dict.fromkeys(gateway_id for gateway_id, _ in steps))
        agents: dict[str, list[AgentRow]] = {}
        for found in tx.conn.execute(
            "SELECT * FROM agents WHERE gateway_id IN (SELECT value FROM json_each(?))",
            (json.dumps(gateway_ids),),
        ).fetchall():
            row = AgentRow.from_row(found)
            agents.setdefault(row.gateway_id, []).append(row)
        stepped: set[str] = set()
        for gateway_id, event in steps:
            for row in agents.get(gateway_id, ()):
                # A gateway's second change in the job steps its agents as the first left
                # them (read again), not as they were read.
                tx.step(row.id, event, row=None if gateway_id in stepped else row)
            stepped.add(gateway_id)

    # ------------------------------------------------------------ verdicts

    async def reconcile_due(self) -> int:
        """Judge every deadline due now (by the clock), in batches; return how many."""
        judged = 0
        while due := self.schedule.pop_due(self.clock(), DEADLINE_BATCH):
            await self._deadlines_due(due)
            judged += len(due)
        return judged

    async def keep_ownership(self) -> None:
        """On a shared database, at each presence sweep (every PRESENCE_SWEEP_S, well
        within HUB_DEAD_AFTER_S): say this hub is alive, adopt the gateways no live hub
        owns, and schedule the deadlines on its gateways' rows that are overdue (set by
        another hub, or before this one owned the gateway; the row is the truth)."""
        now = self.clock()

        def op(conn: Connection) -> list[str]:
            alive = time.time()  # hubs judge each other's liveness by wall time
            hub_alive_in(conn, self.hub_id, alive)
            return adopt_orphans_in(conn, self.hub_id, alive)

        # Not urgent: the next paced commit is soon enough for a 30 s silence, and an
        # extra commit each sweep would cost every hub's database a fifth more commits.
        adopted = await self.db.write(op, first=True)
        for gateway_id in adopted:  # no stream survived its hub: the link is down
            self._forget_link(gateway_id)
        if adopted:
            log.info("lifecycle.gateways.adopted", hub_id=self.hub_id, gateways=len(adopted))
        overdue = await self.db.read(
            lambda conn: conn.execute(
                """SELECT a.id, a.checkin_deadline_at, a.lifecycle_generation FROM agents a
                   JOIN gateways g ON g.id = a.gateway_id
                   WHERE a.checkin_deadline_at IS NOT NULL AND a.checkin_deadline_at <= ?
                     AND g.owner_hub = ?""",
                (now - self.presence_sweep_s, self.hub_id),
            ).fetchall()
        )
        for agent_id, at, generation in overdue:
            if self.schedule.get(agent_id) is None:
                self.schedule.set(agent_id, at, generation)

    async def sweep_presence(self) -> None:
        """Judge the online agents whose heartbeats stopped (the presence rule)."""
        now = self.clock()
        silent = await self.db.read(lambda conn: silent_agents_in(conn, now, self.policy))
        if silent:
            await self._judge(
                silent,
                lambda agent_id, suspect: lc.PresenceTick(gateway_suspect=suspect),
                urgent=False,
            )

    # -------------------------------------------------------------- internals

    def _on_result(self, tx: Transition, gateway_id: str, result: pb.CommandResult) -> None:
        conn = tx.conn
        command = conn.execute(
            """SELECT kind, generation, payload, created_at FROM commands
               WHERE gateway_id = ? AND sequence = ?""",
            (gateway_id, result.sequence),
        ).fetchone()
        row = load_agent_by_gateway_id(conn, gateway_id, result.agent_id)
        if command is None or row is None:
            return
        # The sidecar's clock, clamped to [queued, now] by the hub's: a result cannot
        # precede its command, whatever the sidecar's clock says.
        observed = tx.now
        if result.HasField("observed_at"):
            observed = min(max(epoch_s(result.observed_at), command["created_at"]), tx.now)
        facts = lc.ResultFacts(
            outcome=lc.ResultOutcome(Outcome.Name(result.outcome))
            if result.outcome
            else lc.ResultOutcome.FAILED,
            wake_delivered=result.wake_delivered,
            error_kind=GatewayErrorKind.of(result.error_kind),
            error_code=result.error_code,
            error=result.error,
            observed_at=observed,
        )
        for event in lc.result_events(_command_facts(command), facts):
            tx.step(row.id, event)

    def _on_confirmed(
        self,
        tx: Transition,
        gateway_id: str,
        command: ConfirmedCommand,
        inventory: dict[str, int],
    ) -> None:
        if command.agent_id is None:
            return
        row = load_agent_by_gateway_id(tx.conn, gateway_id, command.agent_id)
        if row is None:
            return
        facts = _command_facts(
            {
                "kind": command.kind,
                "generation": command.generation,
                "payload": command.payload,
                "created_at": command.created_at,
            }
        )
        events = lc.confirmation_events(facts, inventory.get(command.agent_id))
        fields: dict[str, Any] = {"sequence": command.sequence, "command": command.kind}
        tx.logs.append((CONFIRMED_WITHOUT_RESULT, {"agent_id": row.id, **fields}))
        add_event(
            tx.conn,
            CONFIRMED_WITHOUT_RESULT,
            gateway_id=gateway_id,
            agent_id=row.id,
            at=tx.now,
            **fields,
        )
        for event in events:
            tx.step(row.id, event)

    def _step_in(
        self,
        tx: Transition,
        agent_id: str,
        event: lc.Event,
        render: RenderOptions,
        row: AgentRow | None = None,
    ) -> AgentRow | None:
        conn, now = tx.conn, tx.now
        row = row or load_agent(conn, agent_id)
        if row is None:
            return None
        before = self._snapshot(row)
        after, actions = lc.step(before, event, self.policy, now)
        if not actions and not changes_row(before, after):
            return row  # nothing to write, and no one to tell (a link's time is not kept)
        save_snapshot(conn, agent_id, after, now)
        row = require_agent(conn, agent_id)
        tx.changed[agent_id] = functools.partial(agent_json, row)
        forget: lc.ForgetAgent | None = None
        for action in actions:
            if isinstance(action, lc.QueueApply):
                action_kind = ApplyAction.PROVISION if render.token else ApplyAction.UPDATE
                command = build_apply(
                    conn, row, action.generation, wake=action.wake, action=action_kind,
                    render=render, now=now,
                )  # fmt: skip
                enqueue_command_in(conn, row.gateway_id, command, now=now)
            elif isinstance(action, lc.ResendApply):
                payload = last_apply_payload(conn, row, action.generation)
                if payload:
                    command = pb.Command.FromString(payload)
                    command.ClearField("sequence")
                    command.ClearField("issued_at")
                else:
                    command = build_apply(
                        conn, row, action.generation, wake=action.wake,
                        action=ApplyAction.UPDATE, render=RenderOptions(), now=now,
                    )  # fmt: skip
                enqueue_command_in(conn, row.gateway_id, command, now=now)
            elif isinstance(action, lc.SendWake):
                enqueue_command_in(
                    conn,
                    row.gateway_id,
                    build_wake(
                        conn,
                        row,
                        action.generation,
                        action.attempt,
                        self.policy.max_wakes,
                        action.recovery,
                    ),
                    now=now,
                )
            elif isinstance(action, lc.ScheduleDeadline):
                tx.deadlines.append((agent_id, action.at, action.generation))
            elif isinstance(action, lc.CancelDeadline):
                tx.deadlines.append((agent_id, None, 0))
            elif isinstance(action, lc.ForgetAgent):
                forget = action
            elif isinstance(action, lc.Log):
                fields = {"agent_id": agent_id, "gateway_id": row.gateway_id, **action.as_dict()}
                tx.logs.append((action.event.value, fields))
                add_event(
                    conn,
                    action.event.value,
                    gateway_id=row.gateway_id,
                    agent_id=agent_id,
                    at=now,
                    **action.as_dict(),
                )
        if forget is not None:
            _forget_in(tx, row, forget.refused)
            return None
        return row

    def _snapshot(self, row: AgentRow) -> lc.AgentLifecycle:
        return row.snapshot(
            self._link_up_since.get(row.gateway_id),
            gateway_reachable=row.gateway_id not in self._gateway_down,
            gateway_up_since=self._gateway_up_since.get(row.gateway_id),
        )

    def _apply_effects(self, tx: Transition) -> None:
        for agent_id, at, generation in tx.deadlines:
            self.schedule.set(agent_id, at, generation)
        for event, fields in tx.logs:
            log.info(event, **fields)
            if self.on_log is not None:
                self.on_log(event, fields)
        if self.events is not None:
            for changed in tx.changed.values():
                view = changed if isinstance(changed, dict) else changed()
                self.events.publish(
                    "agent", view, board_id=view["board_id"], gateway_id=view["gateway_id"]
                )

    async def _deadline_loop(self) -> None:
        # Batches are judged concurrently so one batch's commit does not hold the next:
        # the next is queued while the writer judges this one, so the writer does not
        # wait while the loop carries out a commit's effects. Only DEADLINE_BATCHES_QUEUED
        # wait for the writer at once: a group commit takes every waiting job, and
        # batches committed together all finish, and leave the writer idle, together.
        loop = asyncio.get_running_loop()
        in_flight: dict[asyncio.Task[None], asyncio.Event] = {}  # -> set once it began
        changed = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            in_flight.pop(task, None)
            changed.set()

        try:
            while True:
                due = self.schedule.pop_due(self.clock(), DEADLINE_BATCH)
                if not due:
                    await self.schedule.wait(self.clock)
                    continue
                while len(in_flight) >= DEADLINE_BATCHES_IN_FLIGHT or (
                    sum(not b.is_set() for b in in_flight.values()) >= DEADLINE_BATCHES_QUEUED
                ):
                    changed.clear()
                    await changed.wait()
                began = asyncio.Event()

                def begin(began: asyncio.Event = began) -> None:  # on the writer's thread
                    loop.call_soon_threadsafe(began.set)
                    loop.call_soon_threadsafe(changed.set)

                task = asyncio.create_task(self._deadlines_due(due, begin))
                in_flight[task] = began
                task.add_done_callback(finished)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _deadlines_due(self, due: list[Due], begin: Callable[[], None] | None = None) -> None:
        deadlines = {d.agent_id: d for d in due}

        def event(agent_id: str, suspect: bool) -> lc.Event:
            d = deadlines[agent_id]
            return lc.DeadlineDue(
                deadline_at=d.at, generation=d.generation, gateway_suspect=suspect
            )

        try:
            await self._judge(list(deadlines), event, begin=begin)
        except Exception as exc:  # keep the loop alive; the rows still hold the deadlines
            log.error("lifecycle.reconcile.failed", error=str(exc), agents=len(due))
            for d in due:
                self.schedule.set(d.agent_id, d.at + self.policy.checkin_deadline_s, d.generation)

    async def _judge(
        self,
        agent_ids: list[str],
        event: Callable[[str, bool], lc.Event],
        *,
        urgent: bool = True,
        begin: Callable[[], None] | None = None,
    ) -> None:
        """`judge_in` in a write; `begin()` is called (on the writer) when it starts."""

        def op(tx: Transition) -> None:
            if begin is not None:
                begin()
            self.judge_in(tx, agent_ids, event)

        await self.write(op, urgent=urgent)

    def judge_in(
        self, tx: Transition, agent_ids: list[str], event: Callable[[str, bool], lc.Event]
    ) -> None:
        """Step each agent with a verdict event that knows whether its gateway is suspect
        (more than half of its agents missing at once: blame the gateway, not the agents).

        Set-based, as a due batch can hold thousands: one query loads the agents with
        everyone on their gateways, each is decided in memory (`lc.step`, as `tx.step`
        would), and the outcomes are written a statement per kind (`_write_verdicts`).
        What it writes is what stepping them one by one in `agent_ids` order writes
        (tests/integration/test_reconciler_batch.py)."""
        rows = AgentRow.from_rows(
            tx.conn.execute(
                """SELECT * FROM agents WHERE gateway_id IN (SELECT gateway_id FROM agents
                       WHERE id IN (SELECT value FROM json_each(?)))""",
                (json.dumps(agent_ids),),
            ).fetchall()
        )
        if self.db.shared:
            # Only the gateway's owner judges (it holds the stream, or adopted the
            # gateway); the owner's sweep takes up the deadlines skipped here.
            owned = owned_in(tx.conn, sorted({r.gateway_id for r in rows}), self.hub_id)
            rows = [row for row in rows if row.gateway_id in owned]
        by_id = {row.id: row for row in rows}
        peers: dict[str, list[AgentRow]] = {}
        for row in rows:
            if row.status != "deleting":
                peers.setdefault(row.gateway_id, []).append(row)
        suspects: dict[str, bool] = {}
        verdicts: list[_Verdict] = []
        for agent_id in agent_ids:
            found = by_id.get(agent_id)
            if found is None:
                continue
            gateway_id = found.gateway_id
            if gateway_id not in suspects:
                suspects[gateway_id] = self._gateway_suspect(
                    gateway_id, peers.get(gateway_id, []), tx.now
                )
            verdict = event(agent_id, suspects[gateway_id])
            after, actions = lc.step(self._snapshot(found), verdict, self.policy, tx.now)
            verdicts.append(_Verdict(found, verdict, after, actions))
        self._write_verdicts(tx, verdicts)

    def _write_verdicts(self, tx: Transition, verdicts: list[_Verdict]) -> None:
        """Carry out decided steps as `_step_in` does, a statement per kind for them all.
        A step asking for more than a wake, log lines and its deadline (an apply, a
        removal) is rare here; it goes through `tx.step` after the others."""
        conn, now = tx.conn, tx.now
        bulk: list[_Verdict] = []
        rest: list[_Verdict] = []
        for v in verdicts:
            (bulk if all(isinstance(a, _BULK_ACTIONS) for a in v.actions) else rest).append(v)
        # A wake renders from the agent's gateway, board and profile: none of that is in
        # the snapshot, so the row as loaded renders it as the saved one would.
        sources = RenderSources.load(
            conn, [v.row for v in bulk if any(isinstance(a, lc.SendWake) for a in v.actions)]
        )
        events = EventBatch(conn)
        outbox = OutboxBatch(conn, events, now=now)
        for v in bulk:
            row, agent_id = v.row, v.row.id
            tx.changed[agent_id] = functools.partial(_view_after, row, v.after, now)
            for action in v.actions:
                if isinstance(action, lc.SendWake):
                    context, generation = sources.context(row)
                    outbox.add(
                        row.gateway_id,
                        wake_command(
                            row,
                            context,
                            generation,
                            action.generation,
                            action.attempt,
                            self.policy.max_wakes,
                            action.recovery,
                        ),
                        board_id=row.board_id,
                    )
                elif isinstance(action, lc.ScheduleDeadline):
                    tx.deadlines.append((agent_id, action.at, action.generation))
                elif isinstance(action, lc.CancelDeadline):
                    tx.deadlines.append((agent_id, None, 0))
                elif isinstance(action, lc.Log):
                    detail = action.as_dict()
                    tx.logs.append(
                        (
                            action.event.value,
                            {"agent_id": agent_id, "gateway_id": row.gateway_id, **detail},
                        )
                    )
                    events.add(
                        action.event.value,
                        gateway_id=row.gateway_id,
                        agent_id=agent_id,
                        board_id=row.board_id,  # what add_event would look up
                        at=now,
                        **detail,
                    )
        save_snapshots_in(conn, [(v.row.id, v.after) for v in bulk], now)
        outbox.flush()
        events.flush()
        for v in rest:
            tx.step(v.row.id, v.event)

    def _gateway_suspect(self, gateway_id: str, rows: list[AgentRow], now: float) -> bool:
        """`rows`: the gateway's agents that are not being deleted."""
        if not lc.may_be_suspect(len(rows), self.policy):
            return False
        link_up = self._link_up_since.get(gateway_id)
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
                if self.db.shared:
                    await self.keep_ownership()
                await self.sweep_presence()
            except Exception as exc:
                log.error("lifecycle.presence.failed", error=str(exc))


# What `_write_verdicts` carries out a statement per kind; any other action, one by one.
_BULK_ACTIONS = (lc.SendWake, lc.ScheduleDeadline, lc.CancelDeadline, lc.Log)


class _Verdict(NamedTuple):
    row: AgentRow  # as loaded, before the step
    event: lc.Event
    after: lc.AgentLifecycle
    actions: tuple[lc.Action, ...]


def _view_after(row: AgentRow, after: lc.AgentLifecycle, now: float) -> dict[str, Any]:
    """The API view of `row` once `after` is saved."""
    return agent_json(with_snapshot(row, after, now))


def _command_facts(command: Any) -> lc.CommandFacts:
    """A commands row (kind, generation, payload, created_at) as the lifecycle sees it."""
    kind = lc.CommandKind.of(command["kind"])
    wakes = kind is lc.CommandKind.APPLY and bool(
        pb.Command.FromString(command["payload"]).apply_agent.wake_message
    )
    return lc.CommandFacts(
        kind=kind,
        generation=int(command["generation"] or 0),
        wakes=wakes,
        queued_at=float(command["created_at"] or 0.0),
    )


def _forget_in(tx: Transition, row: AgentRow, refused: str) -> None:
    """The agent is gone from its gateway (or will never be): its row goes, its tasks are
    unassigned, and a board that waits for its last agent is deleted with it."""
    conn = tx.conn
    unassign_agent_tasks(conn, row.id, now=tx.now)
    conn.execute("DELETE FROM agents WHERE id = ?", (row.id,))
    fields: dict[str, Any] = {"refused": refused} if refused else {}
    add_event(conn, "agent.deleted", gateway_id=row.gateway_id, agent_id=row.id, **fields)
    finish_deleting(conn, row.board_id)
    tx.forget(row)
