"""mc-hub command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from hub import collector
from hub.config import ADMIN_TOKEN_ENV, HubConfig, add_serve_arguments, build_config
from hub.fleet_cli import COMMANDS as FLEET_COMMANDS
from hub.fleet_cli import add_fleet_parsers, fleet_main
from hub.operations import COMMANDS as OPERATIONS
from hub.operations import add_operations_parsers, operations_main
from hub.store.engines import engine_for
from hub.system_service import COMMANDS as SERVICE_COMMANDS
from hub.system_service import add_service_parsers, service_main
from missioncontrol import log as logs
from missioncontrol.netaddr import HostPort
from missioncontrol.sd_notify import supervised
from missioncontrol.settings import SettingsError
from missioncontrol.signals import until_stopped
from missioncontrol.system_service import started_by_service_manager
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
    gateway = commands.add_parser("gateway", help="gateway administration")
    gateway_commands = gateway.add_subparsers(
        dest="gateway_command", metavar="COMMAND", required=True
    )
    token = gateway_commands.add_parser(
        "join-token",
        help="make a join token a sidecar enrolls with",
        description="Make a join token. With GATEWAY, it enrolls that gateway; without, it is "
        "a fleet token: each use enrolls a new gateway named after the host. Works whether "
        "or not the hub is running (it writes to the hub's database).",
    )
    token.add_argument("gateway", nargs="?", metavar="GATEWAY", help="gateway id")
    token.add_argument("--uses", type=int, default=1, help="how many hosts may use it [1]")
    token.add_argument(
        "--ttl-minutes", type=float, default=30.0, help="minutes until it expires [30]"
    )
    token.add_argument(
        "--labels",
        default="",
        metavar="K=V,...",
        help="labels every gateway it enrolls gets, e.g. env=prod,region=eu",
    )
    token.add_argument(
        "--config",
        metavar="FILE",
        help="the hub's TOML config file, for its data directory and enrollment address "
        "[env MC_HUB_CONFIG]",
    )
    token.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="the hub's data directory [env MC_HUB_DATA_DIR, default var/hub]",
    )
    token.add_argument(
        "--enroll-address",
        default=None,
        metavar="HOST:PORT",
        help="address sidecars enroll at, for the printed command",
    )
    demo = commands.add_parser(
        "demo",
        help="the whole system on this machine: hub, a real OpenClaw gateway, a sidecar and "
        "a scripted model, with a board, a lead and a worker; Ctrl-C stops it all",
        description="Start, on loopback: a scripted model, a real OpenClaw gateway (installed "
        "from npm into a cache on first use), the hub, and a sidecar enrolled over mutual TLS "
        "with a join token; create a board with a lead and a worker, wait until both are "
        "online, and print the dashboard URL and what to try next. Ctrl-C stops every process "
        "it started, by PID. The state directory is cleared at each start.",
    )
    demo.add_argument(
        "--state-dir", default="var/demo", metavar="DIR", help="where it all lives [var/demo]"
    )
    demo.add_argument(
        "--openclaw-cache",
        default=None,
        metavar="DIR",
        help="where OpenClaw installs are cached "
        "[env OPENCLAW_CACHE_DIR, default var/cache/openclaw]",
    )
    demo.add_argument(
        "--openclaw-version",
        default=None,
        metavar="VERSION",
        help="the OpenClaw release to run [env OPENCLAW_VERSION, default 2026.9.6]",
    )
    for flag, default in (
        ("--http-listen", "127.0.0.1:8000"),
        ("--link-listen", "127.0.0.1:7443"),
        ("--enroll-listen", "127.0.0.1:7444"),
    ):
        demo.add_argument(
            flag, default=default, metavar="HOST:PORT", help=f"the hub's address [{default}]"
        )
    demo.add_argument(
        "--online-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for both agents to come online [300]",
    )
    demo.add_argument(
        "--stop-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long each process may take to stop before it is killed [10]",
    )
    add_operations_parsers(commands)
    add_service_parsers(commands)
    add_fleet_parsers(commands)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from hub.demo import openclaw_install
    from hub.demo.runner import DemoConfig, run

    try:
        config = DemoConfig(
            state_dir=Path(args.state_dir).expanduser(),
            cache_dir=Path(args.openclaw_cache).expanduser()
            if args.openclaw_cache
            else openclaw_install.cache_dir(os.environ, Path("var/cache/openclaw")),
            openclaw_version=args.openclaw_version
            or os.environ.get(openclaw_install.VERSION_ENV, "").strip()
            or openclaw_install.DEFAULT_VERSION,
            http_listen=HostPort.parse(args.http_listen),
            link_listen=HostPort.parse(args.link_listen),
            enroll_listen=HostPort.parse(args.enroll_listen),
            online_timeout_s=args.online_timeout,
            stop_grace_s=args.stop_grace,
        )
    except ValueError as exc:
        print(f"mc-hub demo: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(config))


async def _join_token(args: argparse.Namespace) -> int:
    from hub.app import Hub
    from hub.config import ENV_PREFIX, SERVE_OPTIONS
    from hub.fleet.labels import LabelError, format_labels, parse_labels
    from hub.store.errors import StoreError
    from missioncontrol.settings import config_path_from, load_config_file, resolve

    # The hub's own settings (flags it was served with live in its env or config file)
    # say where its data is and where sidecars enroll.
    try:
        labels = parse_labels(args.labels)
    except LabelError as exc:
        print(f"mc-hub gateway join-token: --labels: {exc}", file=sys.stderr)
        return 2
    served = argparse.Namespace(**{o.key: None for o in SERVE_OPTIONS})
    served.data_dir = args.data_dir
    file_path = config_path_from(args, os.environ, ENV_PREFIX + "CONFIG")
    try:
        values = resolve(
            SERVE_OPTIONS, served, os.environ, ENV_PREFIX, load_config_file(file_path), file_path
        )
    except SettingsError as exc:
        print(f"mc-hub gateway join-token: {exc}", file=sys.stderr)
        return 2
    config = HubConfig(
        data_dir=values["data_dir"],
        http_listen=values["http_listen"],
        link_listen=values["link_listen"],
        insecure_dev=False,
        commit_interval_s=0.05,
        shutdown_grace_s=0,
        log_level="warning",
        log_format="auto",
        admin_token="unused-by-this-command" * 3,
        enroll_listen=values["enroll_listen"],
    )
    hub = Hub(config)  # no listeners: only the database, CA and issuer
    hub.db.open()
    try:
        issued = await hub.gateways.join_token(
            args.gateway, ttl_s=args.ttl_minutes * 60, uses=args.uses, labels=labels
        )
    except (StoreError, ValueError) as exc:
        print(f"mc-hub gateway join-token: {exc}", file=sys.stderr)
        return 1
    finally:
        await hub.db.close()
    where = args.enroll_address or str(_dialable(config.enroll_listen))
    labelled = f", labels {format_labels(labels)}" if labels else ""
    print(
        f"{issued.join_string}\n\nexpires in {args.ttl_minutes:g} min, {issued.max_uses} "
        f"use(s){labelled}. On the gateway host run:\n"
        f"    mc-sidecar enroll --hub {where} --token '{issued.join_string}'"
    )
    return 0


def _dialable(address: HostPort) -> HostPort:
    """An address a sidecar on another host can dial: a wildcard listener by this host's name."""
    if address.host in ("", "0.0.0.0", "::"):
        return HostPort(socket.getfqdn(), address.port)
    return address


def sibling_command(name: str) -> str:
    """How to run another of this package's commands from here: its bare name when it is
    on PATH, else its path beside the running command (e.g. `.venv/bin/mc-sidecar`)."""
    if shutil.which(name):
        return name
    beside = Path(sys.argv[0]).resolve().parent / name
    if not beside.exists():
        return name
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def banner(
    config: HubConfig, http: str, link: str, enroll: str | None, *, show_token: bool = True
) -> str:
    token_file = config.data_dir / "admin-token"
    from_env = bool(os.environ.get(ADMIN_TOKEN_ENV))
    if from_env:
        token_line = f"admin token: from ${ADMIN_TOKEN_ENV}"
        bearer = f"Authorization: Bearer ${ADMIN_TOKEN_ENV}"
    elif config.admin_token_generated and show_token:
        # Shown this once, when it is made; later starts name the file, never the secret.
        token_line = f"admin token (generated, saved in {token_file}):\n    {config.admin_token}"
        bearer = f"Authorization: Bearer $(cat {shlex.quote(str(token_file))})"
    else:
        token_line = f"admin token: in {token_file}"
        bearer = f"Authorization: Bearer $(cat {shlex.quote(str(token_file))})"
    sidecar = sibling_command("mc-sidecar")
    # The hub CA's own certificate: curl must be told to trust it.
    ca_cert = config.data_dir / "ca" / "ca.crt"
    own_cert = config.http_tls_cert is not None
    cacert = (
        f" --cacert {shlex.quote(str(ca_cert))}"
        if http.startswith("https") and not own_cert
        else ""
    )
    if enroll:
        connect = [
            f"  enroll:    {enroll}   (mutual TLS; sidecars need a join token)",
            "  connect a sidecar:",
            "    1. create the gateway; the answer has a one-time join token and the command:",
            f'       curl{cacert} -X POST -H "{bearer}" '
            f'-d \'{{"name": "host-1"}}\' {http}/api/v1/gateways',
            f"    2. on the gateway host: {sidecar} enroll --hub {enroll} --token '<join token>'",
            f"    3. then:               {sidecar} run --openclaw-config ~/.openclaw/openclaw.json",
        ]
    else:
        connect = [
            "  connect a sidecar on this host (development, no TLS):",
            f"    {sidecar} run --hub {link} --insecure-dev \\",
            "      --state-dir ~/.mc-sidecar --openclaw-config ~/.openclaw/openclaw.json",
        ]
    insecure = "  [insecure-dev: no TLS, loopback only]" if config.insecure_dev else ""
    return "\n".join(
        [
            f"mc-hub {VERSION} is running",
            f"  dashboard: {http}/   (log in with the admin token)",
            f"  REST API:  {http}/api/v1   (health: {http}/healthz)",
            f"  link:      {link}{insecure}",
            f"  database:  {engine_for(config.database_url).describe}",
            f"  {token_line}",
            "",
            f'  try:       curl{cacert} -H "{bearer}" {http}/api/v1/gateways',
            *connect,
            "  Ctrl-C stops the hub.",
            "",
        ]
    )


async def _serve(config: HubConfig) -> None:
    from hub.app import Hub

    hub = Hub(config)
    addresses = await hub.start()
    collector.settle()
    print(
        banner(
            config,
            addresses.http_url,
            str(addresses.link),
            str(addresses.enroll) if addresses.enroll else None,
            show_token=not started_by_service_manager("mc-hub"),
        ),
        flush=True,
    )
    status = f"API {addresses.http_url}, link {addresses.link}"
    if addresses.enroll:
        status += f", enroll {addresses.enroll}"
    try:
        # Ports bound and database open: READY=1 now, STOPPING=1 before the stop begins.
        async with supervised(status):
            await until_stopped()
    finally:
        await hub.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gateway":
        logs.configure("warning", "auto")
        return asyncio.run(_join_token(args))
    if args.command == "demo":
        logs.configure("warning", "auto")
        return _demo(args)
    if args.command in SERVICE_COMMANDS:
        logs.configure("warning", "auto")
        return service_main(args)
    if args.command in OPERATIONS:
        logs.configure("warning", "auto")
        return operations_main(args)
    if args.command in FLEET_COMMANDS:
        logs.configure("warning", "auto")
        return fleet_main(args)
    try:
        config = build_config(args)
    except SettingsError as exc:
        print(f"mc-hub: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    from hub.app import HubStartError
    from hub.pki.ca import CAError
    from missioncontrol.private_files import InsecurePermissionsError

    collector.tune()
    try:
        asyncio.run(_serve(config))
    except (HubStartError, CAError, InsecurePermissionsError) as exc:
        # The cause and the fix in one line; a traceback would only bury them.
        print(f"mc-hub: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
