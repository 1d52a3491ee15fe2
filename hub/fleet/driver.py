"""The rollout driver: creates rollouts, takes operators' commands, and carries out
what `hub/fleet/rollouts.py` decides.

Everything a rollout is lives in its rows, so the driver holds no state a restart could
lose: each pass reads every active rollout, asks `decide` what to do, and does it. A
gateway's change is one transaction of the reconciler's, through the provisioning
service: every selected agent's row and new generation, the ApplyAgent commands on the
gateway's own outbox sequence, and the target marked applied, commit together. So a
gateway is applied once, even across a restart mid-wave. Progress is logged as
`rollout.*` events, which the activity trail and its live stream carry.

Every hub on a shared database runs a driver. Each write that moves a rollout on first
takes the rollout's advisory lock (hub/store/claims.py) and checks its state again
under it: a hub that finds the lock taken leaves that step to the hub that has it, and
a step already taken is seen as taken. So a wave starts once and a gateway is applied
once, whichever hubs decide it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hub.fleet import changes as ch
from hub.fleet import rollouts as ro
from hub.fleet.labels import parse_selector
from hub.fleet.store import (
    RolloutConflict,
    RolloutRow,
    TargetRow,
    active_rollout_ids_in,
    busy_gateways_in,
    gateway_facts_in,
    insert_rollout_in,
    rollout_in,
    set_status_in,
    target_in,
    targets_in,
    update_target_in,
)
from hub.lifecycle.reconciler import Reconciler, Transition
from hub.provisioning.agents import AgentError, AgentRow, RenderOptions, agents_of_gateway_in
from hub.provisioning.rendering import AgentKind
from hub.provisioning.service import AgentSpec, Provisioning
from hub.store.claims import Singleton, singleton_in
from hub.store.database import Connection, Database
from hub.store.errors import Refusal, StoreError
from hub.store.event_log import add_event
from hub.store.gateways import labels_in
from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived

log = get_logger("hub.fleet.driver")
TICK_S = 1.0  # how often gates are looked at when nothing nudges the driver


class RolloutRefused(StoreError):
    """The rollout cannot be made as asked; the message names the field and the fix."""

    refusal = Refusal.INVALID

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RolloutSpec:
    selector: str
    change: dict[str, Any]
    name: str = ""
    agents: str = "main"  # which agents of each gateway: "main" or "all"
    canary: int = 1
    percentages: tuple[float, ...] = ro.DEFAULT_PERCENTAGES
    max_fail_percentage: float = 0.0
    gate_deadline_s: float = ro.DEFAULT_DEADLINE_S
    gateway_ids: tuple[str, ...] | None = None  # only these of the selected (drift's)


@dataclass(frozen=True)
class PlannedGateway:
    gateway_id: str
    name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Plan:
    spec: RolloutSpec
    waves: list[list[PlannedGateway]]
    busy: dict[str, str] = field(default_factory=dict)  # gateway -> the active rollout on it


@dataclass(frozen=True)
class RolloutView:
    rollout: RolloutRow
    targets: list[TargetRow]
    names: dict[str, str]  # gateway id -> name


def agent_spec(agent: dict[str, Any], gateway_id: str, board_id: str | None) -> AgentSpec:
    """What creates one of an `agents` change's agents on a gateway (as the API's create)."""
    kind = (
        AgentKind.MAIN
        if board_id is None
        else AgentKind.LEAD
        if agent.get("is_board_lead")
        else AgentKind.WORKER
    )
    return AgentSpec(
        name=agent["name"],
        board_id=board_id,
        gateway_id=gateway_id if board_id is None else None,
        kind=kind,
        **{k: agent.get(k) for k in ch.AGENT_FIELDS},
    )


class RolloutService:
    def __init__(
        self,
        db: Database,
        reconciler: Reconciler,
        provisioning: Provisioning,
        *,
        clock: Callable[[], float] = time.time,
        tick_s: float = TICK_S,
        link_grace_s: float = ro.LINK_GRACE_S,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`on_progress(fields)` hears of every step a rollout takes, once it committed
        (the dashboard's live pages)."""
        self.db = db
        self.on_progress = on_progress
        self.reconciler = reconciler
        self.provisioning = provisioning
        self.clock = clock
        self.tick_s = tick_s
        self.link_grace_s = link_grace_s
        self.watching_since = clock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self.watching_since = self.clock()  # gates restart their clocks from here
            self._task = start_long_lived(self._run(), name="rollout-driver", log=log)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def nudge(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------- creating

    async def plan(self, spec: RolloutSpec) -> Plan:
        """The waves and gateways `spec` would touch (a dry run writes nothing)."""
        return await self.db.read(lambda conn: self._plan_in(conn, spec))

    def _plan_in(self, conn: Connection, spec: RolloutSpec) -> Plan:
        try:
            selector = parse_selector(spec.selector)
        except ValueError as exc:
            raise RolloutRefused(str(exc), "selector") from None
        try:
            change = ch.check_change(spec.change)
        except ch.ChangeError as exc:
            raise RolloutRefused(str(exc), "change") from None
        if spec.agents not in ch.AGENT_SCOPES:
            raise RolloutRefused(f"agents must be one of {', '.join(ch.AGENT_SCOPES)}", "agents")
        rows = conn.execute("SELECT id, name FROM gateways ORDER BY name, id").fetchall()
        labels = labels_in(conn)
        chosen = selector.select((r[0], labels.get(r[0], {})) for r in rows)
        if spec.gateway_ids is not None:
            only = set(spec.gateway_ids)
            chosen = [g for g in chosen if g in only]
        if not chosen:
            raise RolloutRefused(
                f"selector {spec.selector!r} picks no gateway; see which labels gateways have "
                "with GET /api/v1/fleet/inventory",
                "selector",
            )
        try:
            waves = ro.plan_waves(chosen, canary=spec.canary, percentages=spec.percentages)
        except ValueError as exc:
            raise RolloutRefused(str(exc), "waves") from None
        names = {r[0]: r[1] for r in rows}
        return Plan(
            spec=dataclasses.replace(spec, change=change),
            waves=[[PlannedGateway(g, names[g], labels.get(g, {})) for g in w] for w in waves],
            busy=busy_gateways_in(conn, chosen),
        )

    async def create(self, spec: RolloutSpec) -> RolloutRow:
        rollout_id = str(uuid.uuid4())

        def op(conn: Connection) -> RolloutRow:
            plan = self._plan_in(conn, spec)
            if plan.busy:
                gateway, other = next(iter(plan.busy.items()))
                raise RolloutConflict(
                    f"{len(plan.busy)} of the selected gateways (e.g. {gateway}) are in active "
                    f"rollout {other}; wait for it, abort it, or narrow the selector"
                )
            now = self.clock()
            final = plan.spec
            insert_rollout_in(
                conn,
                rollout_id=rollout_id,
                name=final.name,
                selector=str(parse_selector(final.selector)),
                agents=final.agents,
                change=final.change,
                plan={"canary": final.canary, "percentages": list(final.percentages)},
                waves=[[g.gateway_id for g in w] for w in plan.waves],
                max_fail_percentage=final.max_fail_percentage,
                gate_deadline_s=final.gate_deadline_s,
                now=now,
            )
            add_event(
                conn,
                "rollout.created",
                at=now,
                rollout_id=rollout_id,
                change=final.change["kind"],
                selector=final.selector,
                gateways=sum(len(w) for w in plan.waves),
                waves=[len(w) for w in plan.waves],
            )
            return rollout_in(conn, rollout_id)

        row = await self.db.write(op)
        log.info("rollout.created", rollout_id=rollout_id, waves=row.wave_count)
        self.nudge()
        return row

    # ------------------------------------------------------------ commands

    async def pause(self, rollout_id: str) -> RolloutRow:
        return await self._command(
            rollout_id, ro.Status.PAUSED, (ro.Status.RUNNING,), "rollout.paused", "resume it"
        )

    async def resume(self, rollout_id: str) -> RolloutRow:
        return await self._command(
            rollout_id,
            ro.Status.RUNNING,
            (ro.Status.PAUSED,),
            "rollout.resumed",
            "only a paused rollout resumes; a halted one is rolled back or aborted",
        )

    async def abort(self, rollout_id: str) -> RolloutRow:
        return await self._command(
            rollout_id,
            ro.Status.ABORTED,
            (ro.Status.RUNNING, ro.Status.PAUSED, ro.Status.HALTED),
            "rollout.aborted",
            "a finished rollout cannot be aborted",
        )

    async def rollback(self, rollout_id: str) -> RolloutRow:
        row = await self.read(rollout_id)
        if not ch.can_roll_back(row.rollout.change):
            raise RolloutConflict(
                f"rollout {rollout_id} re-applied the files the hub renders; it replaced no "
                "value the hub keeps, so there is no previous generation to restore. Start a "
                "rollout of the change you want back instead"
            )
        return await self._command(
            rollout_id,
            ro.Status.ROLLING_BACK,
            (
                ro.Status.RUNNING,
                ro.Status.PAUSED,
                ro.Status.HALTED,
                ro.Status.ABORTED,
                ro.Status.COMPLETED,
            ),
            "rollout.rollback.started",
            "it is already rolled back or rolling back",
        )

    async def _command(
        self,
        rollout_id: str,
        status: ro.Status,
        expect: Sequence[ro.Status],
        event: str,
        fix: str,
    ) -> RolloutRow:
        def op(conn: Connection) -> RolloutRow:
            before = rollout_in(conn, rollout_id)
            now = self.clock()
            if not set_status_in(conn, rollout_id, status, now=now, expect=expect):
                raise RolloutConflict(f"rollout {rollout_id} is {before.status}; {fix}")
            add_event(conn, event, at=now, rollout_id=rollout_id, previous=str(before.status))
            return rollout_in(conn, rollout_id)

        row = await self.db.write(op)
        log.info(event, rollout_id=rollout_id)
        self._progress(rollout_id, event)
        self.nudge()
        return row

    def _progress(self, rollout_id: str, step: str, gateway_id: str | None = None) -> None:
        if self.on_progress is not None:
            self.on_progress({"rollout_id": rollout_id, "step": step, "gateway_id": gateway_id})

    async def read(self, rollout_id: str) -> RolloutView:
        def op(conn: Connection) -> RolloutView:
            row = rollout_in(conn, rollout_id)
            targets = targets_in(conn, rollout_id)
            ids = [t.gateway_id for t in targets]
            names: dict[str, str] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                names.update(
                    conn.execute(
                        f"SELECT id, name FROM gateways WHERE id IN ({marks})", chunk
                    ).fetchall()
                )
            return RolloutView(row, targets, names)

        return await self.db.read(op)

    # --------------------------------------------------------------- driving

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            again = False
            try:
                ids = await self.db.read(active_rollout_ids_in)
            except Exception as exc:  # the rows still say what to do: look again later
                log.error("rollout.driver.pass_failed", error=str(exc))
                ids = []
            for rollout_id in ids:
                try:
                    again = await self.advance(rollout_id) or again
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one bad rollout must not stop the others
                    log.error("rollout.advance_failed", rollout_id=rollout_id, error=repr(exc))
            if again:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    await self._wakeup.wait()

    async def advance(self, rollout_id: str) -> bool:
        """One decision for the rollout, carried out; whether to decide again at once."""

        def read(conn: Connection) -> tuple[RolloutRow, list[TargetRow], dict[str, Any]]:
            row = rollout_in(conn, rollout_id)
            targets = targets_in(conn, rollout_id)
            watched = [
                t
                for t in targets
                if t.wave == row.current_wave and t.state is ro.TargetState.APPLIED
            ]
            return row, targets, gateway_facts_in(conn, watched)

        row, targets, facts = await self.db.read(read)
        actions = ro.decide(
            row.decision_view(self.link_grace_s),
            [t.decision_view() for t in targets],
            facts,
            self.clock(),
            watching_since=self.watching_since,
        )
        again = False
        # The pass's verdicts commit in one write: one paced group commit per gateway,
        # awaited in turn, would hold a wave of n gateways for n commit intervals.
        # `decide` lists them before anything that depends on them.
        marks = [a for a in actions if isinstance(a, ro.MarkGateway)]
        if marks:
            await self.db.write(lambda conn: self._mark_all_in(conn, row, marks))
            for mark in marks:
                self._progress(row.id, type(mark).__name__, mark.gateway_id)
            again = True  # the wave may be decided now
        for action in actions:
            if isinstance(action, ro.MarkGateway):
                continue
            again = await self._carry_out(row, action) or again
            self._progress(row.id, type(action).__name__, getattr(action, "gateway_id", None))
        return again

    async def _carry_out(self, row: RolloutRow, action: ro.Action) -> bool:
        match action:
            case ro.ApplyGateway(gateway_id):
                await self.reconciler.write(lambda tx: self._apply_in(tx, row.id, gateway_id))
                return False
            case ro.RollbackGateway(gateway_id):
                await self.reconciler.write(lambda tx: self._roll_back_in(tx, row.id, gateway_id))
                return True
            case ro.StartWave(wave):
                return await self._move(row, ro.Status.RUNNING, "rollout.wave.started", wave=wave)
            case ro.Halt(wave, reason):
                return await self._move(row, ro.Status.HALTED, "rollout.halted", reason=reason)
            case ro.Complete():
                return await self._move(row, ro.Status.COMPLETED, "rollout.completed")
            case ro.FinishRollback():
                return await self._move(row, ro.Status.ROLLED_BACK, "rollout.rolled_back")
        return False

    async def _move(
        self,
        row: RolloutRow,
        status: ro.Status,
        event: str,
        *,
        wave: int | None = None,
        reason: str | None = None,
    ) -> bool:
        expect = (
            (ro.Status.ROLLING_BACK,) if status is ro.Status.ROLLED_BACK else (ro.Status.RUNNING,)
        )

        def op(conn: Connection) -> bool:
            if not singleton_in(conn, Singleton.ROLLOUT, row.id):
                return False
            now = self.clock()
            moved = set_status_in(
                conn, row.id, status, now=now, reason=reason, expect=expect, wave=wave
            )
            if moved:
                detail: dict[str, Any] = {"rollout_id": row.id}
                if wave is not None:
                    detail["wave"] = wave + 1
                if reason is not None:
                    detail["reason"] = reason
                add_event(conn, event, at=now, **detail)
            return moved

        moved = await self.db.write(op)
        if moved:
            level = log.warning if status is ro.Status.HALTED else log.info
            level(event, rollout_id=row.id, wave=None if wave is None else wave + 1, reason=reason)
        return moved and status is ro.Status.RUNNING  # a new wave: apply it now

    def _mark_all_in(
        self, conn: Connection, row: RolloutRow, marks: Sequence[ro.MarkGateway]
    ) -> None:
        if not singleton_in(conn, Singleton.ROLLOUT, row.id):
            return
        now = self.clock()
        for mark in marks:
            self._mark_in(conn, row, mark.gateway_id, mark.state, mark.reason, now)

    def _mark_in(
        self,
        conn: Connection,
        row: RolloutRow,
        gateway_id: str,
        state: ro.TargetState,
        reason: str | None,
        now: float,
    ) -> None:
        target = target_in(conn, row.id, gateway_id)
        if target is None or target.state is not ro.TargetState.APPLIED:
            return
        update_target_in(conn, row.id, gateway_id, state=state, reason=reason, decided_at=now)
        add_event(
            conn,
            f"rollout.gateway.{state}",
            gateway_id=gateway_id,
            at=now,
            rollout_id=row.id,
            wave=target.wave + 1,
            reason=reason,
        )

    def _apply_in(self, tx: Transition, rollout_id: str, gateway_id: str) -> None:
        """The rollout's change on one gateway: every selected agent, one transaction."""
        conn = tx.conn
        if not singleton_in(conn, Singleton.ROLLOUT, rollout_id):
            return  # another hub is moving this rollout on
        row = rollout_in(conn, rollout_id)
        target = target_in(conn, rollout_id, gateway_id)
        if (
            row.status is not ro.Status.RUNNING
            or target is None
            or target.state is not ro.TargetState.PENDING
            or target.wave != row.current_wave
        ):
            return  # paused, aborted or applied meanwhile
        change = row.change
        if change["kind"] == "agents":
            self._create_agents_in(tx, row, target)
            return
        agents = [
            a for a in agents_of_gateway_in(conn, gateway_id) if ch.selects(a, row.agents, change)
        ]
        records: list[dict[str, Any]] = []
        errors: list[str] = []
        for agent in agents:
            previous = ch.previous_values(agent, change)
            applied, error = self._agent_in(
                tx,
                agent.id,
                ch.field_changes(change),
                wake=True,  # so the gate sees it check in within its deadline
                render=ch.render_options(change),
            )
            if applied is None:
                errors.append(f"{agent.name}: {error}")
                continue
            records.append(
                {
                    "agent_id": agent.id,
                    "name": agent.name,
                    "generation": applied.lifecycle_generation,
                    "previous": previous,
                }
            )
        if errors:
            state = ro.TargetState.FAILED
            reason: str | None = (
                f"{len(errors)} agent(s) refused the change: {'; '.join(errors[:3])}"
            )
        elif not agents:
            state, reason = ro.TargetState.SKIPPED, f"no {row.agents} agent to change"
        else:
            state, reason = ro.TargetState.APPLIED, None
        self._applied_in(tx, rollout_id, target, state, reason, records)

    def _applied_in(
        self,
        tx: Transition,
        rollout_id: str,
        target: TargetRow,
        state: ro.TargetState,
        reason: str | None,
        records: list[dict[str, Any]],
    ) -> None:
        update_target_in(
            tx.conn,
            rollout_id,
            target.gateway_id,
            state=state,
            reason=reason,
            applied_at=tx.now,
            decided_at=None if state is ro.TargetState.APPLIED else tx.now,
            agents=records,
        )
        add_event(
            tx.conn,
            f"rollout.gateway.{state}",
            gateway_id=target.gateway_id,
            at=tx.now,
            rollout_id=rollout_id,
            wave=target.wave + 1,
            agents=len(records),
            reason=reason,
        )

    def _create_agents_in(self, tx: Transition, row: RolloutRow, target: TargetRow) -> None:
        """An `agents` change on one gateway: all of its new agents or, on a conflict,
        none (the gateway fails; those already there are left alone either way)."""
        conn, gateway_id = tx.conn, target.gateway_id
        existing = [
            ch.Existing(a.id, a.name, a.board_id, str(a.kind))
            for a in agents_of_gateway_in(conn, gateway_id)
        ]
        boards: dict[str, str] = {}
        for board_id, name in conn.execute(
            "SELECT id, name FROM boards WHERE gateway_id = ? AND status != 'deleting' "
            "ORDER BY created_at, id",
            (gateway_id,),
        ).fetchall():
            boards.setdefault(str(name).casefold(), str(board_id))  # the oldest of a name
        plan = ch.plan_agents(row.change["agents"], existing, boards)
        records: list[dict[str, Any]] = []
        errors = list(plan.conflicts)
        if not errors:
            conn.execute("SAVEPOINT rollout_agents")
            try:
                for agent, board_id in plan.create:
                    created = self.provisioning.create_agent_in(
                        tx, agent_spec(agent, gateway_id, board_id)
                    )
                    records.append(
                        {
                            "agent_id": created.id,
                            "name": created.name,
                            "generation": created.lifecycle_generation,
                            "created": True,
                        }
                    )
            except (AgentError, StoreError) as exc:  # a name taken meanwhile, a bad render
                conn.execute("ROLLBACK TO rollout_agents")
                for record in records:
                    tx.changed.pop(record["agent_id"], None)
                errors.append(f"{agent['name']}: {exc}")
                records = []
            finally:
                conn.execute("RELEASE rollout_agents")
        if errors:
            state = ro.TargetState.FAILED
            reason: str | None = (
                f"{len(errors)} agent(s) cannot be created: {'; '.join(errors[:3])}"
            )
        elif not records:
            state = ro.TargetState.SKIPPED
            reason = f"all {len(plan.present)} agent(s) are already there"
        else:
            state, reason = ro.TargetState.APPLIED, None
        self._applied_in(tx, row.id, target, state, reason, records)

    def _agent_in(
        self,
        tx: Transition,
        agent_id: str,
        changes: dict[str, Any],
        *,
        wake: bool,
        render: RenderOptions | None = None,
    ) -> tuple[AgentRow | None, str | None]:
        """One agent's change under its own savepoint: its row, or (None, why) with the
        agent as it was (the gateway's other agents still go on)."""
        tx.conn.execute("SAVEPOINT rollout_agent")
        try:
            row = self.provisioning.apply_change_in(tx, agent_id, changes, wake=wake, render=render)
        except AgentError as exc:
            tx.conn.execute("ROLLBACK TO rollout_agent")
            tx.changed.pop(agent_id, None)
            return None, str(exc)
        finally:
            tx.conn.execute("RELEASE rollout_agent")
        return row, None

    def _roll_back_in(self, tx: Transition, rollout_id: str, gateway_id: str) -> None:
        """The values the rollout replaced on one gateway, re-applied: one transaction."""
        conn = tx.conn
        if not singleton_in(conn, Singleton.ROLLOUT, rollout_id):
            return  # another hub is moving this rollout on
        row = rollout_in(conn, rollout_id)
        target = target_in(conn, rollout_id, gateway_id)
        if (
            row.status is not ro.Status.ROLLING_BACK
            or target is None
            or target.state not in ro.APPLIED_STATES
        ):
            return
        errors: list[str] = []
        alive = {a.id for a in agents_of_gateway_in(conn, gateway_id)}
        for record in target.agents:
            if record.get("created"):  # an `agents` rollout's: removed (unless gone already)
                if record["agent_id"] in alive:
                    self.provisioning.delete_agent_in(tx, record["agent_id"])
                continue
            # An agent deleted meanwhile has nothing to restore: the others go on.
            restored, error = self._agent_in(tx, record["agent_id"], record["previous"], wake=False)
            if restored is None:
                errors.append(f"{record['name']}: {error}")
        reason = f"not restored: {'; '.join(errors[:3])}" if errors else target.reason
        update_target_in(
            conn,
            rollout_id,
            gateway_id,
            state=ro.TargetState.ROLLED_BACK,
            rolled_back_at=tx.now,
            reason=reason,
        )
        add_event(
            conn,
            "rollout.gateway.rolled_back",
            gateway_id=gateway_id,
            at=tx.now,
            rollout_id=rollout_id,
            agents=len(target.agents) - len(errors),
            errors=len(errors),
        )
