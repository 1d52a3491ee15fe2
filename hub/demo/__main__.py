"""`python -m hub.demo model --port N`: the scripted model as a process (the demo's child).

It follows check-in instructions (`Behaviour.CHECK_IN`): a wake or heartbeat turn whose
text carries the check-in `curl` line gets that command run through the exec tool, so
the agents' heartbeats are real. It runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

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
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
