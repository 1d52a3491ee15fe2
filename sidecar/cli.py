"""mc-sidecar command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from missioncontrol import log as logs
from missioncontrol.settings import SettingsError
from missioncontrol.version import VERSION
from sidecar.config import SidecarConfig, add_run_arguments, build_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mc-sidecar",
        description="Mission Control sidecar: runs beside one OpenClaw gateway, writes agent "
        "workspaces, watches openclaw.json, serves the local agent API and keeps one "
        "outbound link to the hub.",
    )
    parser.add_argument("--version", action="version", version=f"mc-sidecar {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run the sidecar until SIGINT/SIGTERM",
        description="Run the sidecar. Settings come from flags, then environment variables, "
        "then the TOML config file.",
    )
    add_run_arguments(run)
    return parser


async def _run(config: SidecarConfig) -> None:
    from sidecar.app import Sidecar

    sidecar = Sidecar(config)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sidecar.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = build_config(args)
    except SettingsError as exc:
        print(f"mc-sidecar: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    if args.command == "run":
        asyncio.run(_run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
