"""Simulated fleet: N sidecars x M agents against one hub process.

The hub (`hub.app.Hub`, insecure-dev on loopback, its own process on core 0) holds a
database with N gateways and N x M online agents. Fleet processes on core 1 run the
sidecars: a real `LinkClient` each (default backoff, random first delay), agents beating
at their interval, coalesced and relayed at most once a second. Figures: hub CPU and
RSS (from /proc) and commits/s in steady state; then the hub is restarted and we time
until every sidecar has a new stream, and count agents marked offline.

BASELINE for CPU and RSS: the bare grpc.aio Link server (bench/linkproc.py) holding the
same sidecars at the same message rate.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    Child,
    Figure,
    Section,
    Sizes,
    Target,
    cpu_percent,
    free_port,
    proc_sample,
)
from bench.hubproc import COMMIT_INTERVAL_S, HubAddress, hub_stats, start_hub
from bench.linkproc import start_link_server
from bench.seed import count_offline, seed
from bench.sidecars import fleet_main

BEAT_INTERVAL_S = 60  # six times the product default (10 m): a busier fleet than usual
SIDECARS_PER_PROCESS = 2_500
SETTLE_TIMEOUT_S = 300.0
SETTLED_BACKLOG = 16  # write jobs queued: steady traffic leaves a few
PRESENCE_SWEEP_WAIT_S = 6.0  # one presence sweep (5 s) after the reconnect
MIB = 1024 * 1024


def run(sizes: Sizes) -> Section:
    n, m = sizes.fleet_sidecars, sizes.fleet_agents
    section = Section("fleet", "Simulated fleet")
    cpu = Figure(
        f"hub CPU, {n:,} sidecars x {m} agents",
        "% of a core",
        [],
        "bare grpc.aio",
        target=Target("<=", 2.5, on="ratio"),
    )
    rss = Figure("hub RSS", "MiB", [], "bare grpc.aio", target=Target("<=", 500.0))
    commits = Figure("hub group commits", "commits/s", [], target=Target("<=", 1.1))
    ack = Figure("beat batch sent -> acked durable, p99", "s", [], target=Target("<=", 1.2))
    ack_connect = Figure("beat batch sent in the connect or its link-up -> acked, p99", "s", [])
    connect = Figure("initial connect, all sidecars", "s", [])
    settled = Figure("their link-up work committed, after the connect", "s", [])
    reconnect = Figure("all reconnected after hub restart", "s", [], target=Target("<=", 45.0))
    offline = Figure("agents marked offline after restart", "agents", [], target=Target("<=", 0))
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        data_dir = Path(tmp) / "hub"
        data_dir.mkdir()
        database = data_dir / "hub.sqlite3"
        agents = seed(
            database, gateways=n, agents_per_gateway=m, heartbeat_interval_s=BEAT_INTERVAL_S
        )
        fleet: dict[str, list[str]] = {}
        for agent in agents:
            fleet.setdefault(agent.gateway_id, []).append(agent.gateway_agent_id)
        members = list(fleet.items())
        address = HubAddress(free_port(), free_port())
        hub = start_hub(data_dir, address)
        sims: list[Child] = []
        try:
            sims = start_fleet(f"127.0.0.1:{address.link_port}", members)
            connect.runs.append(wait_all(sims, n, 300.0))
            settled.runs.append(settle([hub]))
            _steady(
                hub.pid,
                sims,
                sizes,
                cpu.runs,
                rss.runs,
                ack.runs,
                lambda: hub_stats(hub),
                commits.runs,
            )
            ack_connect.runs.append(max(s["ack_p99_before_reset_s"] for s in sim_statuses(sims)))
            for _ in range(sizes.runs):
                opened = [status["opened"] for status in sim_statuses(sims)]
                hub.stop()
                hub = start_hub(data_dir, address)
                reconnect.runs.append(wait_all(sims, n, 300.0, opened))
                time.sleep(PRESENCE_SWEEP_WAIT_S)
                offline.runs.append(float(count_offline(database)))
        finally:
            for sim in sims:
                sim.stop()
            hub.stop()
        port = free_port()
        bare = start_link_server("bare", port)
        sims = []
        try:
            sims = start_fleet(f"127.0.0.1:{port}", members)
            wait_all(sims, n, 300.0)
            _steady(bare.pid, sims, sizes, cpu.baseline_runs, rss.baseline_runs, [], None, [])
        finally:
            for sim in sims:
                sim.stop()
            bare.stop()
    section.figures += [cpu, rss, commits, ack, ack_connect, connect, settled, reconnect, offline]
    section.notes.append(
        f"agents beat every {BEAT_INTERVAL_S} s; steady window {sizes.fleet_window_s:g} s; "
        f"{sizes.runs} hub restarts"
    )
    return section


PROGRESS_EVERY_S = 30.0


def start_fleet(target: str, members: list[tuple[str, list[str]]]) -> list[Child]:
    sims: list[Child] = []
    try:
        for start in range(0, len(members), SIDECARS_PER_PROCESS):
            chunk = members[start : start + SIDECARS_PER_PROCESS]
            sims.append(
                Child(
                    fleet_main, target, chunk, float(BEAT_INTERVAL_S), name=f"bench-fleet-{start}"
                )
            )
        for sim in sims:
            sim.recv(120.0)
    except BaseException:
        for sim in sims:
            sim.stop()
        raise
    return sims


def sim_statuses(sims: list[Child]) -> list[dict[str, Any]]:
    return [sim.ask("status", 60.0) for sim in sims]


def wait_all(
    sims: list[Child], total: int, timeout_s: float, opened_before: list[list[int]] | None = None
) -> float:
    """Seconds until every sidecar reports a live stream (a new one, if `opened_before`)."""
    started = reported = time.monotonic()
    while True:
        statuses = sim_statuses(sims)
        if time.monotonic() - reported >= PROGRESS_EVERY_S:  # a long connect shows its pace
            reported = time.monotonic()
            connected = sum(s["connected"] for s in statuses)
            reasons: Counter[str] = sum((Counter(s["down_because"]) for s in statuses), Counter())
            print(
                f"bench:   {connected:,} of {total:,} sidecars connected after "
                f"{reported - started:.0f} s; the others: {dict(reasons.most_common(3))}",
                file=sys.stderr,
                flush=True,
            )
        renewed = opened_before is None or all(
            now > then
            for status, before in zip(statuses, opened_before, strict=True)
            for now, then in zip(status["opened"], before, strict=True)
        )
        if renewed and sum(s["connected"] for s in statuses) >= total:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            connected = sum(s["connected"] for s in statuses)
            raise TimeoutError(f"{connected} of {total} sidecars connected after {timeout_s:.0f} s")
        time.sleep(0.2)


def settle(hubs: list[Child]) -> float:
    """Seconds until every hub's writer has caught up with the connect's link-up work
    (its backlog down to what steady traffic leaves, twice in a row): the steady window
    starts there."""
    started = time.monotonic()
    calm = 0
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        calm = calm + 1 if all(hub_stats(h)["backlog"] <= SETTLED_BACKLOG for h in hubs) else 0
        if calm == 2:
            return time.monotonic() - started
        time.sleep(COMMIT_INTERVAL_S / 2)
    raise TimeoutError(f"the hubs' writers were still busy {SETTLE_TIMEOUT_S:.0f} s after")


def _steady(
    pid: int,
    sims: list[Child],
    sizes: Sizes,
    cpu: list[float],
    rss: list[float],
    ack: list[float],
    stats: Callable[[], dict[str, Any]] | None,
    commits: list[float],
) -> None:
    for sim in sims:
        sim.ask("reset", 30.0)
    window_s = sizes.fleet_window_s / sizes.runs
    for _ in range(sizes.runs):
        before = proc_sample(pid)
        committed = stats()["commits"] if stats else 0
        time.sleep(window_s)
        after = proc_sample(pid)
        cpu.append(cpu_percent(before, after))
        rss.append(after.rss_bytes / MIB)
        if stats:
            commits.append((stats()["commits"] - committed) / (after.at - before.at))
    if stats:
        ack.append(max(s["ack_p99_s"] for s in sim_statuses(sims)))
