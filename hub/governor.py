"""The heartbeat governor's driver: carries out hub/lifecycle/governor.py's decisions.

A pass reads the governed agents (their own setting or their board's, and any still
backed off whose setting went away), computes each one's cadence from how long its
board has been quiet (`boards.last_activity_at`, kept by the event log), and for every
agent whose cadence changes writes the new `heartbeat_interval_s` and reapplies it (a
new generation: the gateway's heartbeat job follows), in one transaction per pass. A
snap back to a shorter cadence wakes the agent: there is work, and its presence is
judged by the shorter cadence from now. Between passes it sleeps until the next step is
due, or until a committed activity event names a board with backed-off agents: push,
not poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.lifecycle import decisions as lc
from hub.lifecycle.governor import Cadence, GovernorPolicy, cadence, effective_policy, next_step_at
from hub.lifecycle.reconciler import Reconciler, Transition
from hub.provisioning.agents import AgentError, heartbeat_settings, update_agent_in
from hub.store.database import Connection, Database
from hub.store.event_log import BOARD_ACTIVITY, add_event
from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived

log = get_logger("hub.governor")

MAX_SLEEP_S = 3600.0  # look again at least hourly (settings changed by another hub)
ACTIVITY_SETTLE_S = 0.2  # activity comes in bursts: one pass for a burst


@dataclass(frozen=True)
class GovernedAgent:
    id: str
    name: str
    board_id: str | None
    lead: bool
    own_every_s: int  # its heartbeat_config's cadence
    every_s: int  # the cadence the gateway runs now
    step: int
    source: str | None  # "agent", "board", "exempt" (its own setting is off), or None
    policy: GovernorPolicy | None
    quiet_since: float


def _rows_in(conn: Connection, board_ids: Iterable[str] | None) -> list[Mapping[str, Any]]:
    only = sorted(set(board_ids)) if board_ids is not None else None
    where = ""
    args: list[Any] = []
    if only is not None:
        if not only:
            return []
        where = f"AND a.board_id IN ({', '.join('?' * len(only))})"
        args = list(only)
    return conn.execute(
        f"""SELECT a.id, a.name, a.board_id, a.kind, a.heartbeat_config, a.heartbeat_interval_s,
                   a.governor_step, a.heartbeat_governor, a.created_at, a.lifecycle_generation,
                   b.heartbeat_governor AS board_governor, b.created_at AS board_created_at,
                   COALESCE(b.last_activity_at,
                            (SELECT MAX(o.last_activity_at) FROM boards o
                             WHERE o.gateway_id = a.gateway_id)) AS last_activity_at
            FROM agents a LEFT JOIN boards b ON b.id = a.board_id
            WHERE a.status != 'deleting' AND a.paused_at IS NULL
              AND (a.heartbeat_governor IS NOT NULL OR b.heartbeat_governor IS NOT NULL
                   OR a.governor_step > 0) {where}
            ORDER BY a.id""",  # placeholders only
        args,
    ).fetchall()


def governed_in(conn: Connection, board_ids: Iterable[str] | None = None) -> list[GovernedAgent]:
    agents = []
    for row in _rows_in(conn, board_ids):
        own_setting = row["heartbeat_governor"]
        source = None
        if own_setting is not None:
            source = "agent" if json.loads(own_setting).get("enabled", True) else "exempt"
        elif row["board_governor"] is not None:
            source = "board" if json.loads(row["board_governor"]).get("enabled", True) else None
        try:
            own_every_s = heartbeat_settings(json.loads(row["heartbeat_config"]))[1]
            policy = effective_policy(row["board_governor"], own_setting)
        except (AgentError, ValueError) as exc:  # one bad row must not stop the others
            log.error("governor.agent.unreadable", agent_id=row["id"], error=str(exc))
            continue
        quiet_since = max(
            v for v in (row["last_activity_at"], row["board_created_at"], row["created_at"]) if v
        )
        agents.append(
            GovernedAgent(
                id=row["id"],
                name=row["name"],
                board_id=row["board_id"],
                lead=row["kind"] == "lead",
                own_every_s=own_every_s,
                every_s=int(row["heartbeat_interval_s"]),
                step=int(row["governor_step"]),
                source=source,
                policy=policy,
                quiet_since=float(quiet_since),
            )
        )
    return agents


def wanted(agent: GovernedAgent, now: float) -> Cadence:
    return cadence(agent.policy, agent.own_every_s, lead=agent.lead, idle_s=now - agent.quiet_since)


def next_change(agent: GovernedAgent, now: float) -> float | None:
    return next_step_at(
        agent.policy, agent.own_every_s, lead=agent.lead, quiet_since=agent.quiet_since, now=now
    )


class HeartbeatGovernor:
    def __init__(
        self, db: Database, reconciler: Reconciler, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.reconciler = reconciler
        self.clock = clock
        self._backed_off: set[str | None] = set()  # boards (None: no board) with agents stepped
        self._boards: set[str] = set()  # boards whose activity asks for a pass
        self._wakeup = asyncio.Event()
        self._next_at: float | None = None  # when the next step is due (a full pass knows)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = start_long_lived(self._run(), name="heartbeat-governor", log=log)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def event_committed(self, event: Mapping[str, Any]) -> None:
        """The event log's committed rows: activity on a board with backed-off agents
        snaps them back at once."""
        board_id = event.get("board_id")
        if board_id in self._backed_off and str(event.get("kind", "")).startswith(BOARD_ACTIVITY):
            self._boards.add(str(board_id))
            self._wakeup.set()

    def settings_changed(self) -> None:
        self._wakeup.set()

    async def govern(self, board_ids: Iterable[str] | None = None) -> int:
        """One pass (every governed agent, or those of `board_ids`); returns how many agents'
        cadence changed."""

        def op(tx: Transition) -> tuple[int, list[GovernedAgent], float | None]:
            agents = governed_in(tx.conn, board_ids)
            changed = 0
            for agent in agents:
                target = wanted(agent, tx.now)
                if (target.every_s, target.step) == (agent.every_s, agent.step):
                    continue
                self._reapply_in(tx, agent, target)
                changed += 1
            upcoming = [t for a in agents if (t := next_change(a, tx.now)) is not None]
            return changed, agents, min(upcoming, default=None)

        only = None if board_ids is None else set(board_ids)
        changed, agents, next_at = await self.reconciler.write(op, urgent=False)
        now = self.clock()
        stepped = {a.board_id for a in agents if wanted(a, now).step > 0}
        if only is None:
            self._backed_off, self._next_at = stepped, next_at
        else:
            self._backed_off = (self._backed_off - only) | stepped
            if next_at is not None:
                self._next_at = min(next_at, self._next_at or next_at)
        return changed

    def _reapply_in(self, tx: Transition, agent: GovernedAgent, target: Cadence) -> None:
        snap_back = target.every_s < agent.every_s
        update_agent_in(
            tx.conn,
            agent.id,
            {"heartbeat_interval_s": target.every_s, "governor_step": target.step},
            tx.now,
        )
        add_event(
            tx.conn,
            "agent.heartbeat.governed",
            agent_id=agent.id,
            at=tx.now,
            from_s=agent.every_s,
            to_s=target.every_s,
            step=target.step,
        )
        row = tx.conn.execute(
            "SELECT lifecycle_generation FROM agents WHERE id = ?", (agent.id,)
        ).fetchone()
        tx.step(agent.id, lc.ApplyRequested(generation=int(row[0]) + 1, wake=snap_back))
        log.info(
            "governor.cadence.changed",
            agent_id=agent.id,
            from_s=agent.every_s,
            to_s=target.every_s,
            step=target.step,
        )

    async def _run(self) -> None:
        boards: set[str] | None = None  # None: a full pass
        while True:
            self._wakeup.clear()
            try:
                await self.govern(boards)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the rows still say what to do: look again later
                log.error("governor.pass_failed", error=repr(exc))
            sleep_s = MAX_SLEEP_S
            if self._next_at is not None:
                sleep_s = min(sleep_s, max(0.0, self._next_at - self.clock()) + 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sleep_s):
                    await self._wakeup.wait()
            if self._boards:
                await asyncio.sleep(ACTIVITY_SETTLE_S)
                boards, self._boards = set(self._boards), set()
            else:
                boards = None
