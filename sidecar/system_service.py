"""`mc-sidecar install-service` / `uninstall-service`: the sidecar as a service.

The sidecar always runs as the OpenClaw gateway's OS user, never as root: it writes
that user's workspaces and openclaw.json. `--user` (the default when not root) puts it
in that user's own manager (systemctl --user, a LaunchAgent); `--system` (Linux, as
root) makes a system unit with `User=` the gateway's user. The settings are resolved
as `mc-sidecar run` resolves them, with `~` meaning the gateway user's home, written to
the service's TOML file, and the unit runs `mc-sidecar run --config FILE`. The unit may
write exactly the state directory, the workspace root and openclaw.json's directory.
"""

from __future__ import annotations

import argparse
import os
import sys

from missioncontrol.settings import config_path_from, load_config_file, resolve
from missioncontrol.system_service import (
    Account,
    Manager,
    Scope,
    ServiceError,
    ServiceSpec,
    Target,
    add_service_arguments,
    chosen_manager,
    chosen_scope,
    config_home,
    describe,
    describe_uninstall,
    home_of,
    install,
    installed_command,
    plan_install,
    plan_uninstall,
    run_service_command,
    settings_to_write,
    start_from_installed_config,
    toml_text,
    uninstall,
    unreachable_command,
)
from sidecar.config import ENV_PREFIX, RUN_OPTIONS, add_run_arguments, build_config
from sidecar.link.identity import is_enrolled

PROGRAM = "mc-sidecar"
COMMANDS = ("install-service", "uninstall-service")


def add_service_parsers(commands: argparse._SubParsersAction) -> None:
    install_parser = commands.add_parser(
        "install-service",
        help="install the sidecar as a systemd or launchd service and start it",
        description="Resolve the settings below exactly as `run` does (for the gateway's "
        "user), write them to the service's config file (~/.config/mc-sidecar/sidecar.toml, "
        "or /etc/mc-sidecar/sidecar.toml with --system), write a systemd unit (Linux) or "
        "LaunchAgent (macOS) that runs `mc-sidecar run --config FILE` as the gateway's user, "
        "then reload, enable and start it. Enroll first (`mc-sidecar enroll`). Re-running is "
        "safe: it starts from the settings it wrote before, and restarts the sidecar only if a "
        "file changed.",
    )
    add_run_arguments(install_parser)
    add_service_arguments(install_parser, installing=True)
    install_parser.add_argument(
        "--gateway-user",
        metavar="USER",
        help="with --system: the OS user the OpenClaw gateway runs as; the sidecar runs as "
        "this user [the user who ran sudo]",
    )
    uninstall_parser = commands.add_parser(
        "uninstall-service",
        help="stop and remove the sidecar's service (state and workspaces stay)",
        description="Stop and disable the service, remove its unit or plist and its config "
        "file. The state directory, the enrollment and the agent workspaces stay.",
    )
    add_service_arguments(uninstall_parser, installing=False)


def service_main(args: argparse.Namespace) -> int:
    return run_service_command("mc-sidecar", args, install=_install, uninstall=_uninstall)


NOT_ROOT = (
    "the sidecar runs as the OpenClaw gateway's OS user, never as root (it writes that "
    "user's workspaces and openclaw.json)"
)


def gateway_account(args: argparse.Namespace, manager: Manager, scope: Scope) -> Account:
    if scope is Scope.USER:
        account = Account.current()
        if account.uid == 0:
            raise ServiceError(
                f"{NOT_ROOT}: run install-service as that user, or as root with "
                "`--system --gateway-user USER`"
            )
        return account
    if manager is Manager.LAUNCHD:
        raise ServiceError(
            "on macOS the sidecar is a LaunchAgent of the gateway's user: run "
            "`mc-sidecar install-service` as that user, without sudo"
        )
    name = getattr(args, "gateway_user", None) or os.environ.get("SUDO_USER")
    if not name:
        raise ServiceError(f"{NOT_ROOT}: pass --gateway-user USER (the user running the gateway)")
    account = Account.lookup(name)
    if account.uid == 0:
        raise ServiceError(f"{NOT_ROOT}: --gateway-user {name} is root; name the gateway's user")
    return account


def _install(args: argparse.Namespace) -> int:
    manager, scope = chosen_manager(args), chosen_scope(args)
    staging = args.root is not None
    if scope is Scope.SYSTEM and os.geteuid() != 0 and not (args.dry_run or staging):
        raise ServiceError("a system service is installed as root: run it with sudo")
    account = gateway_account(args, manager, scope)
    target = Target(PROGRAM, manager, scope, account, config_home(account))
    start_from_installed_config(args, target, args.root, ENV_PREFIX + "CONFIG")
    with home_of(account):  # `~` in any setting is the gateway user's home
        config = build_config(args)  # every check `run` makes
        file_path = config_path_from(args, os.environ, ENV_PREFIX + "CONFIG")
        values = resolve(
            RUN_OPTIONS, args, os.environ, ENV_PREFIX, load_config_file(file_path), file_path
        )
    if not config.insecure_dev and not staging and not is_enrolled(config.state_dir):
        raise ServiceError(
            f"this sidecar is not enrolled (no identity in {config.state_dir}); as "
            f"{account.name}, run `mc-sidecar enroll --hub HOST:PORT --token T` first"
        )
    pinned = {
        "state_dir": config.state_dir,
        "openclaw_config": config.openclaw_config,
        "workspace_root": config.workspace_root,
    }
    writable = (config.state_dir, config.workspace_root, config.openclaw_config.parent)
    spec = ServiceSpec(
        target=target,
        subcommand="run",
        command=installed_command(PROGRAM),
        settings_toml=toml_text(
            f"{PROGRAM} settings of the {scope} service, written by `{PROGRAM} install-service`.\n"
            f"The service runs `{PROGRAM} run --config` this file. Re-run install-service with\n"
            "flags to change it (it starts from this file), or edit it and restart the service.",
            settings_to_write(RUN_OPTIONS, values, ENV_PREFIX, pinned),
        ),
        read_write_paths=tuple(dict.fromkeys(writable)),  # in order, without repeats
    )
    problem = None if staging else unreachable_command(account, spec.command)
    if problem and not args.dry_run:
        raise ServiceError(problem)
    plan = plan_install(spec)
    if args.dry_run:
        describe(plan, sys.stdout)
        return 0
    print(f"{PROGRAM}: {manager} {scope} service, runs as {account.name}", flush=True)
    install(plan, sys.stdout, root=args.root, start=args.manage)
    print(target.status_hint())
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    manager, scope = chosen_manager(args, installing=False), chosen_scope(args)
    if scope is Scope.SYSTEM and os.geteuid() != 0 and not (args.dry_run or args.root):
        raise ServiceError("a system service is removed as root: run it with sudo")
    account = Account.current()
    target = Target(PROGRAM, manager, scope, account, config_home(account))
    plan = plan_uninstall(target)
    if args.dry_run:
        describe_uninstall(plan, sys.stdout)
        return 0
    if uninstall(plan, sys.stdout, root=args.root, stop=args.manage):
        print(f"{PROGRAM}: service removed; the state directory and workspaces were left in place")
    return 0
