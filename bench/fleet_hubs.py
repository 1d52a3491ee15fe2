"""Simulated fleet across two hubs on one PostgreSQL: the "Past one machine" shape.

The same fleet as bench/fleet.py (N sidecars x M agents, beating every 60 s), half of its
sidecars linked to each of two hub processes that share one PostgreSQL database (the
tests' server on loopback). Each hub owns the gateways whose streams it holds, judges
their agents and commits their beats. Figures: each hub's CPU and group commits per
second, the database server's CPU (all its processes), the sidecars' beat batch sent ->
acked durable p99, and the initial connect.

BASELINE for each hub's CPU: the bare grpc.aio Link server (bench/linkproc.py) holding
one hub's share of the sidecars at the same message rate, on the same core.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.fleet import BEAT_INTERVAL_S, settle, sim_statuses, start_fleet, wait_all
from bench.harness import (
    SERVER_CORE,
    Child,
    Figure,
    ProcSample,
    Section,
    Sizes,
    Target,
    cpu_percent,
    free_port,
    proc_sample,
)
from bench.hubproc import HubAddress, hub_stats, start_hub
from bench.linkproc import start_link_server
from bench.seed import seed
from hub.demo.postgres_server import PostgresServer, PostgresUnavailable

HUBS = 2
CONNECT_TIMEOUT_S = 300.0


def run(sizes: Sizes) -> Section:
    n, m = sizes.fleet_sidecars, sizes.fleet_agents
    section = Section("fleet_hubs", f"Simulated fleet, {HUBS} hubs on one PostgreSQL")
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        return Section(section.name, section.title, available=False, reason=str(exc))
    cpu = [
        Figure(
            f"hub {i + 1} CPU, {n // HUBS:,} of {n:,} sidecars x {m} agents",
            "% of a core",
            [],
            "bare grpc.aio, one hub's share",
        )
        for i in range(HUBS)
    ]
    commits = [
        Figure(f"hub {i + 1} group commits", "commits/s", [], target=Target("<=", 1.1))
        for i in range(HUBS)
    ]
    database_cpu = Figure("PostgreSQL CPU, all its processes", "% of a core", [])
    ack = Figure("beat batch sent -> acked durable, p99", "s", [], target=Target("<=", 1.2))
    ack_connect = Figure("beat batch sent in the connect or its link-up -> acked, p99", "s", [])
    connect = Figure("initial connect, all sidecars", "s", [])
    settled = Figure("their link-up work committed, after the connect", "s", [])
    hubs: list[Child] = []
    sims: list[Child] = []
    try:
        postmaster = _postmaster(server)
        url = server.url(server.create_database())
        agents = seed(
            Path(),
            gateways=n,
            agents_per_gateway=m,
            heartbeat_interval_s=BEAT_INTERVAL_S,
            database=url,
        )
        fleet: dict[str, list[str]] = {}
        for agent in agents:
            fleet.setdefault(agent.gateway_id, []).append(agent.gateway_agent_id)
        members = list(fleet.items())
        with tempfile.TemporaryDirectory(prefix="bench-fleet-hubs-") as tmp:
            addresses = [HubAddress(free_port(), free_port()) for _ in range(HUBS)]
            for index, address in enumerate(addresses):
                data_dir = Path(tmp) / f"hub-{index}"
                data_dir.mkdir()
                if index:  # the hubs share the hub key (hub.key): one is copied to the others
                    shutil.copy2(Path(tmp) / "hub-0" / "hub.key", data_dir / "hub.key")
                hubs.append(start_hub(data_dir, address, database=url, name=f"bench-hub-{index}"))
            share = -(-len(members) // HUBS)
            for index, address in enumerate(addresses):
                own = members[index * share : (index + 1) * share]
                sims += start_fleet(f"127.0.0.1:{address.link_port}", own)
            connect.runs.append(wait_all(sims, n, CONNECT_TIMEOUT_S))
            settled.runs.append(settle(hubs))
            for sim in sims:
                sim.ask("reset", 30.0)
            window_s = sizes.fleet_window_s / sizes.runs
            for _ in range(sizes.runs):
                before = [proc_sample(h.pid) for h in hubs]
                db_before = _tree_sample(postmaster)
                committed = [hub_stats(h)["commits"] for h in hubs]
                time.sleep(window_s)
                after = [proc_sample(h.pid) for h in hubs]
                db_after = _tree_sample(postmaster)
                for i, hub in enumerate(hubs):
                    cpu[i].runs.append(cpu_percent(before[i], after[i]))
                    seconds = after[i].at - before[i].at
                    commits[i].runs.append((hub_stats(hub)["commits"] - committed[i]) / seconds)
                database_cpu.runs.append(cpu_percent(db_before, db_after))
            ack.runs.append(max(s["ack_p99_s"] for s in sim_statuses(sims)))
            ack_connect.runs.append(max(s["ack_p99_before_reset_s"] for s in sim_statuses(sims)))
        for child in (*sims, *hubs):
            child.stop()
        sims, hubs = [], []
        bare = _bare_cpu(members[:share], sizes)
        for figure in cpu:
            figure.baseline_runs += bare
    finally:
        for child in (*sims, *hubs):
            child.stop()
        server.stop()
    section.figures += [*cpu, *commits, database_cpu, ack, ack_connect, connect, settled]
    section.notes.append(
        f"agents beat every {BEAT_INTERVAL_S} s; steady window {sizes.fleet_window_s:g} s; "
        "the hubs share core 0 with PostgreSQL (the tests' server: fsync off), the sidecars "
        "run on core 1"
    )
    return section


def _bare_cpu(members: list[tuple[str, list[str]]], sizes: Sizes) -> list[float]:
    """CPU of the bare Link server holding `members`' sidecars, per steady window."""
    port = free_port()
    bare = start_link_server("bare", port)
    sims: list[Child] = []
    try:
        sims = start_fleet(f"127.0.0.1:{port}", members)
        wait_all(sims, len(members), CONNECT_TIMEOUT_S)
        runs = []
        for _ in range(sizes.runs):
            before = proc_sample(bare.pid)
            time.sleep(sizes.fleet_window_s / sizes.runs)
            runs.append(cpu_percent(before, proc_sample(bare.pid)))
        return runs
    finally:
        for sim in sims:
            sim.stop()
        bare.stop()


def _postmaster(server: PostgresServer) -> int:
    """The server's first process, kept on the hubs' core (its backends, forked from it
    later, stay there too)."""
    pid = int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(pid, {SERVER_CORE})
    return pid


def _tree_sample(root: int) -> ProcSample:
    """CPU seconds of a process and its children now living (the database's backends)."""
    pids = [root]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == root:
                pids.append(int(entry))
    cpu_s = 0.0
    for pid in pids:
        try:
            cpu_s += proc_sample(pid).cpu_s
        except OSError:  # ended meanwhile
            continue
    return ProcSample(cpu_s, 0, time.monotonic())
