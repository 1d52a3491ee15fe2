"""The chaos run: seeded rounds of crashes and partitions during churn, then a storm.

Setup: a real OpenClaw gateway (from the npm cache, as tests/interop boots it) whose
only model is the scripted one (hub/demo/scripted_model.py), so a wake is a real
agent run with a real model turn; `mc-hub serve` with mTLS enrollment; `mc-sidecar`
enrolled with `mc-sidecar enroll` and run beside the gateway. Ports stay fixed across
restarts, as under a service manager.

Each round (its plan drawn from `random.Random(f"{seed}:{round}")`):
1. churn: 4-10 admin writes (create/patch/delete of boards and agents), spaced at random;
2. during it, one strike, the kinds taking turns: kill -9 of the hub or of the sidecar
   (restarted after 0-3 s), or SIGSTOP of the hub or of the sidecar for 1-20 s, then
   SIGCONT (a partition: the other side sees silence, not a closed socket);
3. settle: every agent online or offline with nothing outstanding, within a bound;
4. invariants (invariants.py), then the model takes what unanswered writes did.

Then the storm: 200 more sidecars (storm.py: real link clients over mTLS, no gateway),
the hub killed and restarted under them, every one back within a bound; the round's
invariants once more. Figures are printed, never asserted as durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos import invariants
from tests.chaos.procs import (
    HubPorts,
    Program,
    enroll_sidecar,
    fleet_join_token,
    free_port,
    hub_program,
    sidecar_program,
    wait_hub_ready,
)
from tests.chaos.world import NoAnswer, World

KINDS = ("kill_hub", "kill_sidecar", "pause_hub", "pause_sidecar")
ADMIN_TOKEN = "chaos-admin-token-" + "c" * 48
CHECKIN_DEADLINE_S = 5.0  # short check-in windows: a lost wake is retried within seconds
SETTLE_BOUND_S = 180.0  # 3 wakes x 5 s, restart grace, the gateway's own run time, slack
LINK_BOUND_S = 120.0
STORM_BOUND_S = 240.0


def seed_from_env(default: int | None = None) -> int:
    text = os.environ.get("CHAOS_SEED", "")
    if text.strip():
        return int(text)
    return default if default is not None else random.SystemRandom().randrange(1, 2**31)


@dataclass(frozen=True)
class ChaosSettings:
    seed: int
    rounds: int
    root: Path
    storm_sidecars: int = 200
    writes_per_round: tuple[int, int] = (4, 10)
    max_pause_s: float = 20.0
    say: Callable[[str], None] = print

    @classmethod
    def short(cls, seed: int, root: Path, rounds: int = 4, storm: int = 100) -> ChaosSettings:
        """The version `make test` runs: one round of each strike, less churn, short
        partitions (still past the link's keepalive timeout), a storm of 100."""
        return cls(seed, rounds, root, storm, writes_per_round=(2, 4), max_pause_s=12.0)


@dataclass(frozen=True)
class Violation:
    round: int  # 0-based; -1 for the storm
    kind: str
    invariant: str
    detail: str

    def __str__(self) -> str:
        where = "storm" if self.round < 0 else f"round {self.round + 1} ({self.kind})"
        return f"{where}: {self.invariant}: {self.detail}"


@dataclass
class Figures:
    relink_after_hub_s: list[float] = field(default_factory=list)
    relink_after_sidecar_s: list[float] = field(default_factory=list)
    storm_reconnect_s: list[float] = field(default_factory=list)
    settle_s: list[float] = field(default_factory=list)
    strikes: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    seed: int
    rounds_run: int
    violations: list[Violation]
    figures: Figures
    acked: int
    unanswered: int
    refused: int
    elapsed_s: float

    def text(self) -> str:
        f = self.figures
        lines = [
            f"chaos: seed {self.seed}, {self.rounds_run} round(s) in {self.elapsed_s:.0f} s; "
            f"strikes {dict(sorted(f.strikes.items()))}",
            f"  writes: {self.acked} acknowledged, {self.unanswered} unanswered, "
            f"{self.refused} refused (4xx)",
            _figure("sidecar relinked after hub ready", f.relink_after_hub_s),
            _figure("sidecar relinked after its restart", f.relink_after_sidecar_s),
            _figure(
                f"storm: sidecars back after hub ready (n={len(f.storm_reconnect_s)})",
                f.storm_reconnect_s,
            ),
            _figure("time to settle after the strike healed", f.settle_s),
        ]
        if self.violations:
            lines.append(f"  {len(self.violations)} invariant violation(s):")
            lines += [f"    {v}" for v in self.violations]
            lines.append(
                f"  replay: CHAOS_SEED={self.seed} CHAOS_ROUNDS={self.rounds_run} make chaos"
            )
        else:
            lines.append("  every invariant held")
        return "\n".join(lines)


def _figure(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name}: (none)"
    return (
        f"  {name}: p50 {statistics.median(values):.2f} s, max {max(values):.2f} s "
        f"(n={len(values)})"
    )


class _Factory:
    """What the interop gateway helper needs of pytest's tmp_path_factory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=False)
        return path


@contextlib.contextmanager
def _gateway(root: Path, model_port: int) -> Iterator[Any]:
    """The interop suite's gateway (OPENCLAW_VERSION, default the current generation)."""
    from tests.interop.conftest import DEFAULT_VERSIONS
    from tests.interop.conftest import _booted as booted_gateway

    version = os.environ.get("OPENCLAW_VERSION", "").strip() or DEFAULT_VERSIONS[0]
    with booted_gateway(_Factory(root), version, model_port) as gateway:  # type: ignore[arg-type]
        yield gateway


class ChaosRun:
    def __init__(self, settings: ChaosSettings) -> None:
        self.s = settings
        self._t0 = time.monotonic()
        self.root = settings.root
        self.ports = HubPorts.pick()
        self.hub_dir = self.root / "hub" / "data"
        self.sidecar_state = self.root / "sidecar" / "state"
        self.figures = Figures()
        self.violations: list[Violation] = []
        self.hub: Program | None = None
        self.sidecar: Program | None = None
        self.gateway: Any = None
        self.world: World | None = None

    def _say(self, line: str) -> None:
        self.s.say(f"[{time.monotonic() - self._t0:6.1f} s] {line}")

    @property
    def hub_db(self) -> Path:
        return self.hub_dir / "hub.sqlite3"

    # --------------------------------------------------------------- run

    async def run(self) -> Report:
        from hub.demo.scripted_model import ScriptedModel

        started = time.monotonic()
        self._say(
            f"chaos: seed {self.s.seed}, {self.s.rounds} round(s), storm of "
            f"{self.s.storm_sidecars} (replay with --seed {self.s.seed} or CHAOS_SEED)"
        )
        model_port = free_port()
        rounds_run = 0
        try:
            self._start_hub()  # it starts while the gateway boots
            async with ScriptedModel(model_port):
                with _gateway(self.root / "gateway", model_port) as gateway:
                    self.gateway = gateway
                    try:
                        async with aiohttp.ClientSession() as session:
                            await self._setup(session)
                            for index in range(self.s.rounds):
                                rounds_run = index + 1
                                if not await self._round(session, index):
                                    break
                            else:
                                if self.s.storm_sidecars > 0:
                                    await self._storm(session)
                    finally:
                        self._stop_all()
        finally:
            self._stop_all()  # if the gateway never booted
        world = self.world
        return Report(
            seed=self.s.seed,
            rounds_run=rounds_run,
            violations=self.violations,
            figures=self.figures,
            acked=world.acked if world else 0,
            unanswered=world.unanswered if world else 0,
            refused=world.refused if world else 0,
            elapsed_s=time.monotonic() - started,
        )

    def _stop_all(self) -> None:
        for program in (self.sidecar, self.hub):
            if program is not None and program.running:
                code = program.stop()
                if code not in (0, None):
                    self.violations.append(
                        Violation(
                            -1, "stop", "clean stop", f"{program.name} exited {code} on SIGTERM"
                        )
                    )

    def _start_hub(self) -> None:
        self.hub_dir.parent.mkdir(parents=True)
        self.hub = hub_program(
            self.hub_dir, self.ports, ADMIN_TOKEN, checkin_deadline_s=CHECKIN_DEADLINE_S
        )
        self.hub.start()

    async def _setup(self, session: aiohttp.ClientSession) -> None:
        assert self.hub is not None
        self.sidecar_state.parent.mkdir(parents=True)
        await asyncio.to_thread(wait_hub_ready, self.hub, self.ports)
        world = World("", self.ports.http, ADMIN_TOKEN)
        status, created = await world.call(session, "POST", "/api/v1/gateways", {"name": "chaos"})
        if status != 201:
            raise RuntimeError(f"creating the gateway answered {status}: {created}")
        world.gateway_id = created["id"]
        self.world = world
        await asyncio.to_thread(
            enroll_sidecar, self.ports.enroll, created["join_token"], self.sidecar_state
        )
        self.sidecar = sidecar_program(
            self.sidecar_state,
            self.gateway.config_path,
            self.gateway.workspace_root,
            free_port(),
        )
        self.sidecar.start()
        await self._linked(session, "the sidecar's first link")
        self._say(f"set up: openclaw {self.gateway.version}, mc-hub, mc-sidecar linked over mTLS")

    async def _linked(self, session: aiohttp.ClientSession, what: str) -> float:
        """Seconds until the hub shows the sidecar connected (bounded)."""
        assert self.world is not None
        started = time.monotonic()
        while time.monotonic() - started < LINK_BOUND_S:
            with contextlib.suppress(NoAnswer):
                status, row = await self.world.call(
                    session, "GET", f"/api/v1/gateways/{self.world.gateway_id}"
                )
                if status == 200 and row.get("connected"):
                    return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise RuntimeError(
            f"{what}: not connected within {LINK_BOUND_S:.0f} s\nsidecar:\n"
            f"{self.sidecar.log_tail() if self.sidecar else ''}"
        )

    # ------------------------------------------------------------- round

    async def _round(self, session: aiohttp.ClientSession, index: int) -> bool:
        assert self.world is not None and self.hub is not None and self.sidecar is not None
        plan = random.Random(f"{self.s.seed}:{index}")
        kind = KINDS[(self.s.seed + index) % len(KINDS)]
        ops = plan.randint(*self.s.writes_per_round)
        strike_at_s = plan.uniform(0.0, 3.0)
        kill_down_s = plan.uniform(0.0, 3.0)
        pause_s = plan.uniform(1.0, self.s.max_pause_s)
        churn_rng = random.Random(plan.random())
        self.figures.strikes[kind] = self.figures.strikes.get(kind, 0) + 1
        outcomes: list[str] = []
        churn = asyncio.create_task(self._churn(session, churn_rng, ops, outcomes))
        await asyncio.sleep(strike_at_s)
        healed_at = await self._strike(session, kind, kill_down_s, pause_s)
        await churn
        settle_s, waiting = await self._settle(healed_at)
        found = [("no agent stuck", waiting)] if waiting else []
        if not waiting:
            self.figures.settle_s.append(settle_s)
        found += await self._check(session)
        for invariant, details in found:
            self.violations += [Violation(index, kind, invariant, d) for d in details]
        acked = sum(1 for o in outcomes if o.endswith(("200", "201", "202")))
        self._say(
            f"round {index + 1}/{self.s.rounds} {kind:<13} {ops} writes ({acked} acked), "
            + (f"settled in {settle_s:.1f} s" if not waiting else "NOT settled")
            + (f", {sum(len(d) for _, d in found)} violation(s)" if found else ", ok")
        )
        if found:
            for invariant, details in found:
                for detail in details[:10]:
                    self._say(f"    {invariant}: {detail}")
            return False
        with contextlib.suppress(NoAnswer):
            await self.world.resync(session)
        return True

    async def _churn(
        self, session: aiohttp.ClientSession, rng: random.Random, ops: int, out: list[str]
    ) -> None:
        assert self.world is not None
        for _ in range(ops):
            out.append(await self.world.operate(session, rng))
            await asyncio.sleep(rng.uniform(0.0, 0.6))

    async def _strike(
        self, session: aiohttp.ClientSession, kind: str, down_s: float, pause_s: float
    ) -> float:
        """Do it; returns when it healed (monotonic)."""
        assert self.hub is not None and self.sidecar is not None
        if kind == "kill_hub":
            self.hub.kill()
            await asyncio.sleep(down_s)
            self.hub.start()
            await asyncio.to_thread(wait_hub_ready, self.hub, self.ports)
            healed = time.monotonic()
            self.figures.relink_after_hub_s.append(await self._linked(session, "after hub restart"))
            return healed
        if kind == "kill_sidecar":
            self.sidecar.kill()
            await asyncio.sleep(down_s)
            self.sidecar.start()
            healed = time.monotonic()
            self.figures.relink_after_sidecar_s.append(
                await self._linked(session, "after sidecar restart")
            )
            return healed
        program = self.hub if kind == "pause_hub" else self.sidecar
        program.pause()
        await asyncio.sleep(pause_s)
        program.resume()
        return time.monotonic()

    async def _settle(self, healed_at: float) -> tuple[float, list[str]]:
        """Seconds from the heal until settled twice in a row 1 s apart, or what still waits."""
        assert self.world is not None
        waiting: list[str] = []
        settled_since: float | None = None
        await asyncio.sleep(1.0)  # a request a paused hub held is answered by now
        while time.monotonic() - healed_at < SETTLE_BOUND_S:
            waiting = await asyncio.to_thread(
                invariants.unsettled, self.hub_db, self.world.gateway_id
            )
            if waiting:
                settled_since = None
            elif settled_since is None:
                settled_since = time.monotonic()
            elif time.monotonic() - settled_since >= 1.0:
                return settled_since - healed_at, []
            await asyncio.sleep(0.5)
        return SETTLE_BOUND_S, waiting

    async def _check(self, session: aiohttp.ClientSession) -> list[tuple[str, list[str]]]:
        assert self.world is not None and self.sidecar is not None
        world = self.world
        found: list[tuple[str, list[str]]] = []

        def add(name: str, details: list[str]) -> None:
            if details:
                found.append((name, details))

        try:
            add("no acknowledged write lost", await world.lost_writes(session))
        except NoAnswer as exc:
            add("no acknowledged write lost", [f"the hub did not answer the read-back: {exc}"])
        add("no 5xx answer", list(world.errors))
        world.errors.clear()

        def on_disk() -> list[tuple[str, list[str]]]:
            hub = invariants.hub_agents(self.hub_db, world.gateway_id)
            held = invariants.sidecar_agents(self.sidecar_state / "state.sqlite3")
            roster = self.gateway.roster()
            return [
                ("hub and sidecar agree", invariants.agreement(hub, held, roster)),
                (
                    "every file matches its last command",
                    invariants.workspace_files(
                        invariants.last_applies(self.hub_db, world.gateway_id), held
                    ),
                ),
                ("no command applied twice", invariants.applied_twice(self.sidecar.log_path)),
                (
                    "no temp file left",
                    invariants.temp_files(
                        [self.gateway.workspace_root, self.sidecar_state, self.hub_dir]
                    ),
                ),
                (
                    "integrity_check clean",
                    invariants.integrity(self.hub_db)
                    + invariants.integrity(self.sidecar_state / "state.sqlite3"),
                ),
            ]

        for name, details in await asyncio.to_thread(on_disk):
            add(name, details)
        return found

    # ------------------------------------------------------------- storm

    async def _storm(self, session: aiohttp.ClientSession) -> None:
        from bench.harness import Child
        from tests.chaos.storm import storm_main

        assert self.world is not None and self.hub is not None
        n = self.s.storm_sidecars
        join = await asyncio.to_thread(fleet_join_token, self.hub_dir, n)
        state_dirs = [str(self.root / "storm" / f"s{i}") for i in range(n)]
        sim = Child(storm_main, f"127.0.0.1:{self.ports.enroll}", join, state_dirs, name="storm")
        try:
            ready = await asyncio.to_thread(sim.recv, 600.0)
            self._say(f"storm: {n} sidecars enrolled over mTLS in {ready['enroll_s']:.1f} s")
            await self._storm_wait(sim, None)
            before = (await asyncio.to_thread(sim.ask, "status", 60.0))["opened"]
            self.hub.kill()
            await asyncio.sleep(random.Random(f"{self.s.seed}:storm").uniform(0.0, 3.0))
            self.hub.start()
            await asyncio.to_thread(wait_hub_ready, self.hub, self.ports)
            ready_at = time.time()
            status = await self._storm_wait(sim, before)
            if status is None:
                return
            back = [max(0.0, at - ready_at) for at in status["welcomed_at"]]
            self.figures.storm_reconnect_s += back
            self._say(f"storm: all {n} back {max(back):.1f} s after the hub was ready")
            self.figures.relink_after_hub_s.append(await self._linked(session, "after the storm"))
            _, waiting = await self._settle(time.monotonic())
            found = [("no agent stuck", waiting)] if waiting else []
            found += await self._check(session)
            for invariant, details in found:
                self.violations += [Violation(-1, "storm", invariant, d) for d in details]
        finally:
            await asyncio.to_thread(sim.stop)

    async def _storm_wait(self, sim: Any, before: list[int] | None) -> dict[str, Any] | None:
        n = self.s.storm_sidecars
        started = time.monotonic()
        status: dict[str, Any] = {}
        while time.monotonic() - started < STORM_BOUND_S:
            status = await asyncio.to_thread(sim.ask, "status", 60.0)
            renewed = before is None or all(
                now > then for now, then in zip(status["opened"], before, strict=True)
            )
            if renewed and status["connected"] == n:
                return status
            await asyncio.sleep(0.2)
        self.violations.append(
            Violation(
                -1,
                "storm",
                "every sidecar reconnects",
                f"{status.get('connected')} of {n} connected after {STORM_BOUND_S:.0f} s; "
                f"errors {status.get('errors')}",
            )
        )
        return None
