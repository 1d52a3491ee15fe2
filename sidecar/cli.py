"""mc-sidecar command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from missioncontrol import log as logs
from missioncontrol.sd_notify import supervised
from missioncontrol.settings import SettingsError
from missioncontrol.signals import until_stopped
from missioncontrol.version import VERSION
from sidecar.config import SidecarConfig, add_run_arguments, build_config
from sidecar.system_service import COMMANDS as SERVICE_COMMANDS
from sidecar.system_service import add_service_parsers, service_main


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
    enroll = commands.add_parser(
        "enroll",
        help="enroll this host with the hub: get a client certificate for the link",
        description="Make a key and certificate request locally, pin the hub by its CA "
        "fingerprint, and exchange a join token for a client certificate naming this "
        "gateway. Refuses to replace an existing identity unless --force.",
    )
    enroll.add_argument(
        "--hub",
        required=True,
        metavar="HOST:PORT",
        help="the hub's enrollment address (mc-hub --enroll-listen)",
    )
    enroll.add_argument(
        "--token",
        required=True,
        metavar="JOIN",
        help="join string from the hub (id.secret@sha256:FINGERPRINT)",
    )
    enroll.add_argument(
        "--ca-fingerprint",
        metavar="SHA256",
        help="hub CA fingerprint, if the token does not carry it",
    )
    enroll.add_argument(
        "--state-dir",
        default="~/.mc-sidecar",
        metavar="DIR",
        help="where the identity is stored (same as `run --state-dir`)",
    )
    enroll.add_argument(
        "--gateway-id",
        metavar="ID",
        help="with a fleet token: the gateway to enroll as (default: a new one)",
    )
    enroll.add_argument("--force", action="store_true", help="replace an existing identity")
    doctor = commands.add_parser(
        "doctor",
        help="check openclaw.json, the gateway, the files, the certificate and the hub link; "
        "print each cause and fix",
        description="Run every check of the troubleshooting guide on this host: openclaw.json "
        "(JSON5), the gateway on loopback (handshake scopes, version), OpenClaw installs on "
        "PATH, meta.lastTouchedVersion, the workspace root, file modes, the link certificate, "
        "the hub (TCP, TLS with the pinned CA), clock skew, the agent API port and the managed "
        "entries. Exit code 1 when a check fails. Takes the settings `run` takes.",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    add_run_arguments(doctor)
    add_service_parsers(commands)
    return parser


def _enroll(args: argparse.Namespace) -> int:
    from missioncontrol.netaddr import HostPort
    from missioncontrol.settings import expand_path
    from sidecar.link.enrollment import EnrollmentError, enroll

    state_dir = expand_path(args.state_dir).absolute()
    try:
        done = asyncio.run(
            enroll(
                HostPort.parse(args.hub),
                args.token,
                state_dir,
                ca_fingerprint=args.ca_fingerprint,
                gateway_id=args.gateway_id,
                force=args.force,
            )
        )
    except (EnrollmentError, ValueError) as exc:
        print(f"mc-sidecar enroll: {exc}", file=sys.stderr)
        return 1
    print(
        f"enrolled as gateway {done.gateway_id}; certificate valid until "
        f"{done.not_after.isoformat()}\nstart the sidecar with:\n"
        f"    mc-sidecar run --state-dir {state_dir}"
    )
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import os

    from sidecar.config import resolve_settings
    from sidecar.doctor import SidecarDoctor, SidecarDoctorInput

    try:
        values = resolve_settings(args)
    except SettingsError as exc:
        print(f"mc-sidecar doctor: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(SidecarDoctor(SidecarDoctorInput.from_settings(values, os.environ)).run())
    print(report.as_json() if args.json else report.as_text())
    return report.exit_code


async def _run(config: SidecarConfig) -> None:
    from sidecar.app import Sidecar

    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        await asyncio.sleep(0)  # let the link task take its first step before READY
        # The agent API listens and the link runs: READY=1 now, STOPPING=1 before the stop.
        async with supervised(f"agent API {sidecar.agent_api_url}, link to {config.hub}"):
            await until_stopped()
    finally:
        await sidecar.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "enroll":
        logs.configure("warning", "auto")
        return _enroll(args)
    if args.command in SERVICE_COMMANDS:
        logs.configure("warning", "auto")
        return service_main(args)
    if args.command == "doctor":
        logs.configure("error", "auto")
        return _doctor(args)
    try:
        config = build_config(args)
    except SettingsError as exc:
        print(f"mc-sidecar: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    from sidecar.agent_api import AgentApiError
    from sidecar.link.identity import IdentityError
    from sidecar.metrics import MetricsServerError

    try:
        asyncio.run(_run(config))
    except (IdentityError, AgentApiError, MetricsServerError) as exc:
        print(f"mc-sidecar: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
