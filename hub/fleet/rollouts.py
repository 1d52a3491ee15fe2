"""Staged rollouts as pure decisions: the waves, the health gate, what to do next.

`decide(rollout, targets, facts, now)` takes a rollout's row, its gateways' rows (one
per gateway it targets, each in one wave) and what the hub knows of those gateways and
their agents, and returns the actions the driver carries out (hub/fleet/driver.py).
Nothing here reads a clock or does I/O; times are Unix seconds, as in the store.

The rules (Ansible's `serial` and `max_fail_percentage`, Rancher Fleet's partitions):

- The gateways are cut into waves when the rollout is made: a canary of N, then
  growing cumulative percentages of all targets (default 1, 10 %, 50 %, 100 %). The
  last wave always ends at 100 %; an empty wave is dropped.
- A running rollout applies every pending gateway of its current wave (one
  transaction per gateway, which also marks it applied: it is never applied twice).
- An applied gateway passes the gate once every affected agent has applied the new
  generation and checked in since it was queued. It fails when its link is down for
  longer than `link_grace_s`, when an agent goes offline, or when the gate's deadline
  passes first. The deadline runs from the apply, or from when this hub started
  watching (a hub restart: check-ins could not be seen while it was down).
- A wave whose failed gateways are more than `max_fail_percentage` of it halts the
  rollout at once; no later wave is touched. Otherwise, once every gateway of the wave
  has passed or failed, the next wave starts, and after the last the rollout completes.
- Paused: verdicts are still recorded, nothing is applied and no wave starts.
- Rolling back: every gateway the rollout applied gets the values it replaced, then
  the rollout is rolled back. Halted, aborted, completed, rolled back: nothing happens.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_PERCENTAGES = (10.0, 50.0, 100.0)
DEFAULT_DEADLINE_S = 120.0
LINK_GRACE_S = 15.0  # the link's keepalive notices a dead peer within this


class Status(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"  # a wave failed its gate
    ABORTED = "aborted"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


ACTIVE = (Status.RUNNING, Status.PAUSED, Status.ROLLING_BACK)  # the driver watches these


class TargetState(enum.StrEnum):
    PENDING = "pending"  # its wave has not reached it
    APPLIED = "applied"  # the change is queued; the gate is watching
    HEALTHY = "healthy"
    FAILED = "failed"
    SKIPPED = "skipped"  # nothing on it to change (no agent the rollout selects)
    ROLLED_BACK = "rolled_back"


APPLIED_STATES = (TargetState.APPLIED, TargetState.HEALTHY, TargetState.FAILED)


@dataclass(frozen=True)
class Gate:
    max_fail_percentage: float = 0.0
    deadline_s: float = DEFAULT_DEADLINE_S
    link_grace_s: float = LINK_GRACE_S


@dataclass(frozen=True)
class Rollout:
    id: str
    status: Status
    wave: int  # the current wave, from 0
    wave_count: int
    gate: Gate


@dataclass(frozen=True)
class Target:
    gateway_id: str
    wave: int
    state: TargetState
    applied_at: float | None = None


@dataclass(frozen=True)
class AgentFacts:
    agent_id: str
    generation: int  # the generation the rollout applied
    applied_generation: int
    last_seen_at: float | None
    status: str
    error: str | None = None
    exists: bool = True


@dataclass(frozen=True)
class GatewayFacts:
    connected: bool
    disconnected_at: float | None
    agents: tuple[AgentFacts, ...] = ()
    exists: bool = True


# ------------------------------------------------------------------- actions


@dataclass(frozen=True)
class ApplyGateway:
    gateway_id: str


@dataclass(frozen=True)
class MarkGateway:
    gateway_id: str
    state: TargetState
    reason: str | None = None


@dataclass(frozen=True)
class StartWave:
    wave: int


@dataclass(frozen=True)
class Halt:
    wave: int
    reason: str


@dataclass(frozen=True)
class Complete:
    pass


@dataclass(frozen=True)
class RollbackGateway:
    gateway_id: str


@dataclass(frozen=True)
class FinishRollback:
    pass


Action = ApplyGateway | MarkGateway | StartWave | Halt | Complete | RollbackGateway | FinishRollback


# --------------------------------------------------------------------- waves


def plan_waves(
    gateway_ids: Sequence[str],
    *,
    canary: int = 1,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
) -> list[list[str]]:
    """The gateways cut into waves: `canary` first, then up to each cumulative
    percentage of all of them; the last wave ends at 100 %. No wave is empty."""
    if canary < 0:
        raise ValueError("canary must be 0 or more gateways")
    if any(not 0 < p <= 100 for p in percentages):
        raise ValueError("wave percentages must be above 0 and at most 100")
    if list(percentages) != sorted(percentages):
        raise ValueError("wave percentages must grow (e.g. 10, 50, 100)")
    total = len(gateway_ids)
    ends = [min(canary, total)]
    ends += [math.ceil(total * p / 100) for p in percentages]
    ends.append(total)
    waves: list[list[str]] = []
    start = 0
    for end in ends:
        if end > start:
            waves.append(list(gateway_ids[start:end]))
            start = end
    return waves


# ---------------------------------------------------------------------- gate


def gate_verdict(
    target: Target, facts: GatewayFacts | None, gate: Gate, now: float, watching_since: float
) -> tuple[TargetState, str | None] | None:
    """An applied gateway's verdict (HEALTHY or FAILED with why), or None: not yet."""
    applied_at = target.applied_at if target.applied_at is not None else now
    start = max(applied_at, watching_since)
    if facts is None or not facts.exists:
        return TargetState.FAILED, "the gateway was deleted during the rollout"
    if not facts.connected:
        down_since = max(facts.disconnected_at or applied_at, start)
        if now - down_since >= gate.link_grace_s:
            return (
                TargetState.FAILED,
                f"its sidecar's link is down (for {now - down_since:.0f} s, more than "
                f"{gate.link_grace_s:.0f} s)",
            )
    agents = [a for a in facts.agents if a.exists]
    for agent in agents:
        if agent.status == "offline":
            why = f": {agent.error}" if agent.error else ""
            return TargetState.FAILED, f"agent {agent.agent_id} went offline{why}"
    waiting = [a for a in agents if not _answered(a, applied_at)]
    if not waiting:
        return TargetState.HEALTHY, None
    if now >= start + gate.deadline_s:
        names = ", ".join(a.agent_id for a in waiting[:5])
        more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        errors = sorted({a.error for a in waiting if a.error})
        why = f" (last error: {errors[0]})" if errors else ""
        return (
            TargetState.FAILED,
            f"{len(waiting)} of {len(agents)} agent(s) did not apply and check in within "
            f"{gate.deadline_s:.0f} s: {names}{more}{why}",
        )
    return None


def _answered(agent: AgentFacts, applied_at: float) -> bool:
    return (
        agent.applied_generation >= agent.generation
        and agent.last_seen_at is not None
        and agent.last_seen_at >= applied_at
    )


def wave_failed(states: Sequence[TargetState], gate: Gate) -> bool:
    """Whether a wave's failures are over its threshold (skipped gateways do not count)."""
    counted = [s for s in states if s is not TargetState.SKIPPED]
    failed = sum(1 for s in counted if s is TargetState.FAILED)
    return bool(counted) and failed * 100 > gate.max_fail_percentage * len(counted)


# -------------------------------------------------------------------- decide


def decide(
    rollout: Rollout,
    targets: Sequence[Target],
    facts: Mapping[str, GatewayFacts],
    now: float,
    *,
    watching_since: float,
) -> list[Action]:
    """What to do next for `rollout`, in order."""
    if rollout.status is Status.ROLLING_BACK:
        undo: list[Action] = [
            RollbackGateway(t.gateway_id) for t in targets if t.state in APPLIED_STATES
        ]
        return undo or [FinishRollback()]
    if rollout.status not in (Status.RUNNING, Status.PAUSED):
        return []
    actions: list[Action] = []
    wave = [t for t in targets if t.wave == rollout.wave]
    states: dict[str, TargetState] = {}
    for target in wave:
        state = target.state
        if state is TargetState.APPLIED:
            verdict = gate_verdict(
                target, facts.get(target.gateway_id), rollout.gate, now, watching_since
            )
            if verdict is not None:
                state = verdict[0]
                actions.append(MarkGateway(target.gateway_id, *verdict))
        states[target.gateway_id] = state
    if rollout.status is Status.PAUSED:
        return actions
    if wave_failed(list(states.values()), rollout.gate):
        failed = sum(1 for s in states.values() if s is TargetState.FAILED)
        counted = sum(1 for s in states.values() if s is not TargetState.SKIPPED)
        actions.append(
            Halt(
                rollout.wave,
                f"wave {rollout.wave + 1} failed its health gate: {failed} of {counted} "
                f"gateway(s) failed, more than max_fail_percentage "
                f"{rollout.gate.max_fail_percentage:g} %",
            )
        )
        return actions
    pending = [g for g, s in states.items() if s is TargetState.PENDING]
    if pending:
        actions.extend(ApplyGateway(g) for g in pending)
        return actions
    if any(s is TargetState.APPLIED for s in states.values()):
        return actions  # the gate is still watching
    if rollout.wave + 1 < rollout.wave_count:
        actions.append(StartWave(rollout.wave + 1))
    else:
        actions.append(Complete())
    return actions
