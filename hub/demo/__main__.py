"""`python -m hub.demo model --port N`: the scripted model as a process (the demo's child).
`python -m hub.demo hubs`: three hubs on one PostgreSQL on this machine (`make hubs`).

It follows check-in instructions (`Behaviour.CHECK_IN`): a wake or heartbeat turn whose
text carries the check-in `curl` line gets that command run through the exec tool, so
the agents' heartbeats are real. It runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from hub.demo.scripted_model import Behaviour, ScriptedModel
from missioncontrol.signals import until_stopped


async def _serve(port: int) -> None:
    async with ScriptedModel(port, behaviour=Behaviour.CHECK_IN):
        print(f"scripted model listening on 127.0.0.1:{port}", flush=True)
        await until_stopped()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.demo")
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="serve the scripted model on 127.0.0.1:PORT")
    model.add_argument("--port", type=int, required=True)
    hubs = commands.add_parser("hubs", help="three hubs on one PostgreSQL on loopback")
    hubs.add_argument("--state-dir", default="var/hubs", type=Path, help="[var/hubs]")
    hubs.add_argument(
        "--base-port",
        type=int,
        default=8101,
        help="hub i listens on BASE+i (HTTP), BASE+100+i (link), BASE+200+i (enroll) [8101]",
    )
    hubs.add_argument("--count", type=int, default=3, help="how many hubs [3]")
    hubs.add_argument("--postgres-port", type=int, default=0, help="[a free port]")
    args = parser.parse_args(argv)
    if args.command == "hubs":
        from hub.demo.hubs import run

        return run(args.state_dir, args.base_port, args.count, args.postgres_port)
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
