"""The real hub (`hub.app.Hub`, insecure-dev on loopback) in a process of its own.

The parent talks to it over a pipe: "stats" answers the writer's commit count, its backlog and
the number of open streams; ("template_sync", gateway ids) starts the hub's template sync job
on each of them at once, as its API would, and answers once all are queued; None stops
the hub in its documented order and ends the process.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection as mpc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import SERVER_CORE, Child, pin_to, pipe_inbox, quiet_logs, report_errors

ADMIN_TOKEN = "bench-admin-token-" + "x" * 48
COMMIT_INTERVAL_S = 1.0  # the hub's default (--commit-interval)


@dataclass(frozen=True)
class HubAddress:
    link_port: int
    http_port: int


def start_hub(
    data_dir: Path,
    address: HubAddress,
    *,
    database: str = "",
    name: str = "bench-hub",
    timeout_s: float = 60.0,
) -> Child:
    """Start a hub process (on `database`, a --database URL; default the SQLite file in
    `data_dir`) and wait until it serves; the caller stops it (`Child.stop`)."""
    hub = Child(_main, str(data_dir), address.link_port, address.http_port, database, name=name)
    try:
        hub.recv(timeout_s)
    except BaseException:
        hub.stop()
        raise
    return hub


def hub_stats(hub: Child) -> dict[str, Any]:
    return hub.ask("stats", 30.0)


def start_template_sync(hub: Child, gateway_ids: list[str]) -> dict[str, Any]:
    """Start a template sync job on each gateway, all at once, inside the hub process."""
    return hub.ask(("template_sync", gateway_ids), 300.0)


def _main(
    conn: mpc.Connection, data_dir: str, link_port: int, http_port: int, database: str
) -> None:
    report_errors(
        conn, lambda: asyncio.run(_serve(conn, Path(data_dir), link_port, http_port, database))
    )


async def _serve(
    conn: mpc.Connection, data_dir: Path, link_port: int, http_port: int, database: str
) -> None:
    from hub import collector
    from hub.app import Hub
    from hub.config import HubConfig
    from hub.provisioning.template_sync import SyncOptions
    from missioncontrol.netaddr import HostPort

    pin_to(SERVER_CORE)
    quiet_logs()
    config = HubConfig(
        data_dir=data_dir,
        http_listen=HostPort("127.0.0.1", http_port),
        link_listen=HostPort("127.0.0.1", link_port),
        insecure_dev=True,
        commit_interval_s=COMMIT_INTERVAL_S,
        shutdown_grace_s=2.0,
        log_level="error",
        log_format="json",
        admin_token=ADMIN_TOKEN,
        enroll_listen=HostPort("127.0.0.1", 0),
        database=database,
    )
    collector.tune()  # as `mc-hub serve` runs it (hub/collector.py)
    hub = Hub(config)
    await hub.start()
    collector.settle()
    conn.send({"ready": True, "started_at": time.time()})
    inbox = pipe_inbox(conn)
    try:
        while (request := await inbox.get()) is not None:
            if request == "stats":
                conn.send(
                    {
                        "commits": hub.db.stats.commits,
                        "jobs": hub.db.stats.jobs,
                        "backlog": hub.db.backlog,
                        "streams": len(hub.registry),
                    }
                )
            elif isinstance(request, tuple) and request[0] == "template_sync":
                jobs = await asyncio.gather(
                    *(hub.template_sync.start_job(g, SyncOptions()) for g in request[1])
                )
                conn.send({"jobs": len(jobs)})
    finally:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        await hub.stop()
    conn.send({"stopped": True})
