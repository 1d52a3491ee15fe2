"""mc-hub command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from hub.config import ADMIN_TOKEN_ENV, HubConfig, add_serve_arguments, build_config
from missioncontrol import log as logs
from missioncontrol.settings import SettingsError
from missioncontrol.version import VERSION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mc-hub",
        description="Mission Control hub: boards, agents and gateways in SQLite, the admin "
        "REST API, the gRPC link sidecars connect to, and check-in reconciliation.",
    )
    parser.add_argument("--version", action="version", version=f"mc-hub {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the hub (HTTP API + link server) until SIGINT/SIGTERM",
        description="Run the hub. Settings come from flags, then environment variables, then "
        f"the TOML config file. The admin token comes from ${ADMIN_TOKEN_ENV}; if unset, one "
        "is generated once into the data directory and printed.",
    )
    add_serve_arguments(serve)
    return parser


def banner(config: HubConfig, http: str, link: str) -> str:
    if config.admin_token_generated:
        token_line = (
            f"admin token (generated, saved in {config.data_dir / 'admin-token'}):\n"
            f"    {config.admin_token}"
        )
    elif ADMIN_TOKEN_ENV in __import__("os").environ:
        token_line = f"admin token: from ${ADMIN_TOKEN_ENV}"
    else:
        token_line = f"admin token: {config.admin_token}  (from {config.data_dir / 'admin-token'})"
    return "\n".join(
        [
            f"mc-hub {VERSION} is running",
            f"  REST API:  http://{http}/api/v1   (health: http://{http}/healthz)",
            f"  link:      {link}"
            + ("  [insecure-dev: no TLS, loopback only]" if config.insecure_dev else ""),
            f"  database:  {config.database_path}",
            f"  {token_line}",
            "",
            "  try:     curl -H 'Authorization: Bearer <admin token>' "
            f"http://{http}/api/v1/gateways",
            "  connect a sidecar on this host (development, no TLS):",
            f"    mc-sidecar run --hub {link} --insecure-dev \\",
            "      --state-dir ~/.mc-sidecar --openclaw-config ~/.openclaw/openclaw.json",
            "  Ctrl-C stops the hub.",
            "",
        ]
    )


async def _serve(config: HubConfig) -> None:
    from hub.app import Hub

    hub = Hub(config)
    addresses = await hub.start()
    print(banner(config, str(addresses.http), str(addresses.link)), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await hub.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = build_config(args)
    except SettingsError as exc:
        print(f"mc-hub: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    if args.command == "serve":
        asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
