"""What the gateway does for the managed agents: its runs as check-ins, and the
conditions that keep an agent from running, as causes.

Presence must not hang on the model remembering to call the agent API. Every run of a
managed agent that ends with a model turn (a heartbeat job's run, a chat run from a
channel or another client) is a check-in with source `runtime`, taken by the heartbeat
relay like any beat, so it is coalesced, batched and acknowledged the same way. Wake runs
are not taken here: they are reported with the command that woke them (commands.py).

Conditions are found on a cadence and at once on a change (an agent's heartbeat job added
or removed, the gateway back, openclaw.json rewritten):
- `heartbeat_missing`: the hub set a cadence, the gateway runs no heartbeat for the
  agent (its heartbeat block removed by hand, the job gone); `heartbeat_changed`: it runs
  one at another cadence (the block changed, or removed where the gateway's default then
  applies to every agent). With the restore policy (`--restore-removed-entries`, as for
  a removed entry) it is put back.
- `model_auth`: the gateway says a model provider's sign-in expired or is missing
  (`models.authStatus`, where the gateway has it).
- `runs_failing`: the agent's last runs, of any kind, failed; the last error says why.
- `gateway_unreachable`: the sidecar cannot reach its gateway (down, restarting).
The whole set goes to the hub in the GatewayState whenever it changes; the hub names it
as the cause when an agent goes quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived
from missioncontrol.text import displayable
from protos import link_pb2 as pb
from protos.contract import timestamp
from sidecar.gateway import (
    GatewayClient,
    GatewayError,
    HeartbeatJobChanged,
    HeartbeatSpec,
    ProviderAuth,
    RunEnded,
    RunKind,
    RunState,
    RuntimeEvent,
)
from sidecar.link.heartbeats import HeartbeatRelay
from sidecar.reports import OwnChanges
from sidecar.state import LocalState

log = get_logger("sidecar.runtime_watch")

CHECK_INTERVAL_S = 60.0
SETTLE_S = 0.5  # a change comes in bursts (an apply adds and removes jobs): look once after
# A hand edit of openclaw.json reaches the gateway's runtime about a second later.
HOT_RELOAD_S = 2.0
RUNS_FAILING_AFTER = 2  # consecutive failed runs before they are a condition
MAX_DETAIL_CHARS = 1024

HEARTBEAT_MISSING = "heartbeat_missing"
HEARTBEAT_CHANGED = "heartbeat_changed"
MODEL_AUTH = "model_auth"
RUNS_FAILING = "runs_failing"
GATEWAY_UNREACHABLE = "gateway_unreachable"


@dataclass(frozen=True)
class Condition:
    agent_id: str  # "": every agent of the gateway
    code: str
    detail: str
    since: float  # Unix seconds, when first found


@dataclass
class _Failures:
    count: int
    last_error: str
    since: float


class RuntimeWatch:
    def __init__(
        self,
        gateway: GatewayClient,
        relay: HeartbeatRelay,
        state: LocalState,
        own_changes: OwnChanges,
        on_change: Callable[[], None],
        *,
        restore: bool = True,
        being_removed: Callable[[str], bool] = lambda agent_id: False,
        check_interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway = gateway
        self.relay = relay
        self.state = state
        self.own_changes = own_changes
        self.on_change = on_change
        self.restore = restore
        # A removal under way takes the heartbeat job away first: that is no condition,
        # and putting the heartbeat back would bring the entry back with it.
        self.being_removed = being_removed
        self.check_interval_s = check_interval_s
        self.clock = clock
        self._found: dict[tuple[str, str], Condition] = {}  # from the last check
        self._failures: dict[str, _Failures] = {}
        self._unreachable_since: float | None = None
        self._reported: frozenset[tuple[str, str, str]] = frozenset()
        self._wakeup = asyncio.Event()
        gateway.on_runtime_event(self.on_event)

    # ------------------------------------------------------------ events

    def on_event(self, event: RuntimeEvent) -> None:
        if isinstance(event, HeartbeatJobChanged):
            if self.state.agent(event.agent_id) is not None:
                self.poke()
            return
        self._run_ended(event)

    def _run_ended(self, run: RunEnded) -> None:
        if self.state.agent(run.agent_id) is None:
            return  # not an agent of ours (the gateway's main agent, a hand-made one)
        outcome = run.outcome
        if outcome.state is RunState.FINAL and outcome.model_turn:
            self._failures.pop(run.agent_id, None)
            if run.kind is not RunKind.WAKE:
                self.relay.record_runtime(run.agent_id)
        elif outcome.state is RunState.ERROR:
            failures = self._failures.get(run.agent_id)
            if failures is None:
                failures = self._failures[run.agent_id] = _Failures(0, "", self.clock())
            failures.count += 1
            failures.last_error = displayable(outcome.message, max_chars=MAX_DETAIL_CHARS)
            log.info(
                "agent.run.failed",
                agent_id=run.agent_id,
                kind=run.kind.value,
                run_id=outcome.run_id,
                consecutive=failures.count,
                error=failures.last_error,
            )
        self._changed()

    def poke(self, after_s: float = 0.0) -> None:
        """Check again soon (something changed), or once `after_s` has passed."""
        if after_s > 0:
            asyncio.get_running_loop().call_later(after_s, self._wakeup.set)
        else:
            self._wakeup.set()

    # ------------------------------------------------------------ the set

    def conditions(self) -> list[Condition]:
        """Every condition found now; what it returns is what the hub was told."""
        out = self._compute()
        self._reported = _keys(out)
        return out

    def count(self) -> int:
        """How many conditions hold now (for metrics: reads, tells no one)."""
        return len(self._compute())

    def report(self) -> list[pb.AgentCondition]:
        """The conditions as the GatewayState carries them."""
        return [
            pb.AgentCondition(
                agent_id=c.agent_id, code=c.code, detail=c.detail, since=timestamp(c.since)
            )
            for c in self.conditions()
        ]

    def _compute(self) -> list[Condition]:
        out = list(self._found.values())
        for agent_id, failures in self._failures.items():
            if failures.count >= RUNS_FAILING_AFTER:
                # No count in the words: they change only when the error does.
                detail = (
                    f"its runs keep failing ({RUNS_FAILING_AFTER} or more in a row); "
                    f"the last: {failures.last_error}"
                )
                out.append(Condition(agent_id, RUNS_FAILING, detail, failures.since))
        info = self.gateway.info
        if info.reachable:
            self._unreachable_since = None
        else:
            if self._unreachable_since is None:
                self._unreachable_since = self.clock()
            reason = info.unreachable_reason or "no connection to the gateway"
            out.append(Condition("", GATEWAY_UNREACHABLE, reason, self._unreachable_since))
        return out

    def _changed(self) -> None:
        keys = _keys(self._compute())
        if keys != self._reported:
            self._reported = keys
            self.on_change()  # which reports them (`report`)

    # ------------------------------------------------------------ checks

    def start(self) -> asyncio.Task[None]:
        return start_long_lived(self._run(), name="sidecar-runtime-watch", log=log)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval_s):
                    await self._wakeup.wait()
                await asyncio.sleep(SETTLE_S)
            self._wakeup.clear()
            try:
                await self.check()
            except Exception:  # one bad pass must not end the checks
                log.exception("runtime_watch.check.failed")

    async def check(self) -> None:
        """One pass: what keeps managed agents from running, and put back what may be."""
        if not self.gateway.info.reachable:
            return  # nothing can be read; `gateway_unreachable` says so
        try:
            runtime = await self.gateway.runtime_status()
        except GatewayError as exc:
            log.info("runtime_watch.check.unavailable", read="status", error=str(exc))
            return
        found: dict[tuple[str, str], Condition] = {}
        # The sign-in read is its own: a gateway that cannot answer it now (its model
        # catalog loading, a slow usage refresh) must not cost the heartbeat check.
        providers: list[ProviderAuth] | None = None
        try:
            providers = await self.gateway.model_auth()
        except GatewayError as exc:
            log.info("runtime_watch.check.unavailable", read="model_auth", error=str(exc))
            if before := self._found.get(("", MODEL_AUTH)):
                found[("", MODEL_AUTH)] = before  # what was found stands
        running = {a.agent_id: a.heartbeat_every_s for a in runtime.agents if a.heartbeat_enabled}
        managed = {a.agent_id for a in self.state.agents()}
        # Agents no longer managed here take their failures with them.
        self._failures = {a: f for a, f in self._failures.items() if a in managed}
        for agent_id, spec in sorted(self.state.heartbeats().items()):
            runs_every = running.get(agent_id)
            if agent_id not in managed or not spec.every_s or runs_every == spec.every_s:
                continue
            if self.being_removed(agent_id):  # asked here, after the reads above awaited
                continue
            code = HEARTBEAT_MISSING if runs_every is None else HEARTBEAT_CHANGED
            if self.own_changes.recent(agent_id):
                # The sidecar just changed it and the gateway may not show it yet: what
                # was found stands until a look after the change has settled.
                if before := self._found.get((agent_id, code)):
                    found[(agent_id, code)] = before
                self.poke(after_s=self.own_changes.window_s)
                continue
            restored = self.restore and await self._restore(agent_id, spec)
            detail = _heartbeat_detail(spec, runs_every, restored=restored)
            found[(agent_id, code)] = self._condition(agent_id, code, detail)
            if restored:
                self.poke(after_s=self.own_changes.window_s)  # is it back?
        failing = [p for p in providers or () if p.failing]
        if failing:
            found[("", MODEL_AUTH)] = self._condition("", MODEL_AUTH, _auth_detail(failing))
        self._found = found
        self._changed()

    def _condition(self, agent_id: str, code: str, detail: str) -> Condition:
        before = self._found.get((agent_id, code))
        since = before.since if before is not None else self.clock()
        return Condition(agent_id, code, displayable(detail, max_chars=MAX_DETAIL_CHARS), since)

    async def _restore(self, agent_id: str, spec: HeartbeatSpec) -> bool:
        try:
            await self.gateway.set_heartbeat(agent_id, spec)
        except GatewayError as exc:
            log.warning("agent.heartbeat.restore_failed", agent_id=agent_id, error=str(exc))
            return False
        self.own_changes.changed(agent_id)
        log.warning("agent.heartbeat.restored", agent_id=agent_id, every_s=spec.every_s)
        return True


def _keys(conditions: list[Condition]) -> frozenset[tuple[str, str, str]]:
    return frozenset((c.agent_id, c.code, c.detail) for c in conditions)


def _heartbeat_detail(spec: HeartbeatSpec, runs_every: int | None, *, restored: bool) -> str:
    if runs_every is None:
        found = (
            f"the gateway runs no heartbeat for this agent (the hub set one every "
            f"{spec.every_s} s): its heartbeat block was removed from openclaw.json or its "
            "heartbeat job is gone"
        )
    else:
        found = (
            f"the gateway runs this agent's heartbeat every {runs_every} s, not the "
            f"{spec.every_s} s the hub set (its heartbeat block was changed or removed in "
            "openclaw.json, leaving the gateway's default)"
        )
    if restored:
        return found + "; the sidecar put it back"
    return found + (
        "; re-apply the agent from the hub, or run the sidecar with --restore-removed-entries "
        "to have it put back"
    )


def _auth_detail(failing: list[ProviderAuth]) -> str:
    names = ", ".join(f"{p.provider} ({p.status})" for p in failing)
    return (
        f"the gateway's sign-in to model provider {names} is not usable: runs using it fail; "
        "sign in again on the gateway host (`openclaw models auth login`), or set an API key"
    )
