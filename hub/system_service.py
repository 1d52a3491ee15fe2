"""`mc-hub install-service` / `uninstall-service`: the hub as a systemd or launchd service.

A system install runs the hub as its own account (`mc-hub`, created on Linux if
missing) with its data in /var/lib/mc-hub; a user install runs it in the installing
user's manager with its data in ~/.local/share/mc-hub. Either way the settings are
resolved exactly as `mc-hub serve` resolves them, written to the service's TOML file,
and the unit runs `mc-hub serve --config FILE`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hub.config import (
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE,
    ENV_PREFIX,
    SERVE_OPTIONS,
    add_serve_arguments,
    build_config,
    load_admin_token,
)
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
    data_home,
    describe,
    describe_uninstall,
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

PROGRAM = "mc-hub"
SYSTEM_ACCOUNT = "mc-hub"
COMMANDS = ("install-service", "uninstall-service")
# Stands in for the admin token while settings are only being checked: the real one
# is created in the service's data directory by the install (not in this shell's).
_TOKEN_PLACEHOLDER = "install-service-checks-settings-only-" + "x" * 32


def add_service_parsers(commands: argparse._SubParsersAction) -> None:
    install_parser = commands.add_parser(
        "install-service",
        help="install the hub as a systemd or launchd service and start it",
        description="Resolve the settings below exactly as `serve` does, write them to the "
        "service's config file (/etc/mc-hub/hub.toml, or ~/.config/mc-hub/hub.toml with "
        "--user), write a systemd unit (Linux) or LaunchDaemon (macOS) that runs `mc-hub serve "
        "--config FILE`, then reload, enable and start it. Re-running is safe: it starts from "
        "the settings it wrote before, and restarts the hub only if a file changed.",
    )
    add_serve_arguments(install_parser)
    add_service_arguments(install_parser, installing=True)
    install_parser.add_argument(
        "--service-user",
        metavar="USER",
        help=f"account a system service runs as [{SYSTEM_ACCOUNT}, created if missing; on "
        "macOS: the user who ran sudo]",
    )
    uninstall_parser = commands.add_parser(
        "uninstall-service",
        help="stop and remove the hub's service (its data directory stays)",
        description="Stop and disable the service, remove its unit or plist and its config "
        "file. The data directory (database, CA, keys, admin token) is left in place.",
    )
    add_service_arguments(uninstall_parser, installing=False)


def service_main(args: argparse.Namespace) -> int:
    return run_service_command("mc-hub", args, install=_install, uninstall=_uninstall)


def _account(args: argparse.Namespace, manager: Manager, scope: Scope, data_dir: Path) -> Account:
    if scope is Scope.USER:
        if manager is Manager.LAUNCHD:
            raise ServiceError(
                "on macOS the hub is a LaunchDaemon: run `sudo mc-hub install-service --system`"
            )
        account = Account.current()
        if account.uid == 0:
            raise ServiceError(
                "a --user service of root would run the hub as root; use --system, which runs "
                f"it as the {SYSTEM_ACCOUNT} account"
            )
        return account
    name = getattr(args, "service_user", None)
    if not name and manager is Manager.LAUNCHD:
        name = os.environ.get("SUDO_USER")
        if not name:
            raise ServiceError(
                "pass --service-user USER: the account the hub's LaunchDaemon runs as (not root)"
            )
    name = name or SYSTEM_ACCOUNT
    try:
        account = Account.lookup(name)
    except ServiceError:
        if manager is Manager.LAUNCHD or name != SYSTEM_ACCOUNT:
            raise ServiceError(
                f"there is no user {name!r} on this host; create it first, or leave out "
                f"--service-user to use the {SYSTEM_ACCOUNT} account"
            ) from None
        return Account(name, name, data_dir, uid=None)  # created by the install
    if account.uid == 0:
        raise ServiceError(
            "the hub does not run as root; pass --service-user with an unprivileged account "
            f"(or leave it out for {SYSTEM_ACCOUNT})"
        )
    return account


def default_data_dir(manager: Manager, scope: Scope) -> Path:
    if scope is Scope.USER:
        return data_home(Account.current()) / PROGRAM
    if manager is Manager.LAUNCHD:
        return Path("/usr/local/var") / PROGRAM
    return Path("/var/lib") / PROGRAM


def _located(manager: Manager, scope: Scope) -> Target:
    """Enough of a target to find its files (they do not depend on the service's account)."""
    account = Account.current()
    return Target(PROGRAM, manager, scope, account, config_home(account))


def _install(args: argparse.Namespace) -> int:
    manager, scope = chosen_manager(args), chosen_scope(args)
    staging = args.root is not None
    if scope is Scope.SYSTEM and os.geteuid() != 0 and not (args.dry_run or staging):
        raise ServiceError("a system service is installed as root: run it with sudo")
    start_from_installed_config(args, _located(manager, scope), args.root, ENV_PREFIX + "CONFIG")
    environ = dict(os.environ)
    environ[ADMIN_TOKEN_ENV] = _TOKEN_PLACEHOLDER
    file_path = config_path_from(args, environ, ENV_PREFIX + "CONFIG")
    file_values = load_config_file(file_path)
    data_env = ENV_PREFIX + "DATA_DIR"
    if args.data_dir is None and data_env not in environ and "data_dir" not in file_values:
        # serve's default (var/hub) is relative to where it starts; a service needs its own.
        environ[data_env] = str(default_data_dir(manager, scope))
    config = build_config(args, environ)  # every check `serve` makes
    values = resolve(SERVE_OPTIONS, args, environ, ENV_PREFIX, file_values, file_path)
    data_dir = config.data_dir.absolute()
    account = _account(args, manager, scope, data_dir)
    target = Target(PROGRAM, manager, scope, account, config_home(account))
    settings = settings_to_write(SERVE_OPTIONS, values, ENV_PREFIX, {"data_dir": data_dir})
    spec = ServiceSpec(
        target=target,
        subcommand="serve",
        command=installed_command(PROGRAM),
        settings_toml=toml_text(
            f"{PROGRAM} settings of the {scope} service, written by `{PROGRAM} install-service`.\n"
            f"The service runs `{PROGRAM} serve --config` this file. Re-run install-service with\n"
            "flags to change it (it starts from this file), or edit it and restart the service.",
            settings,
        ),
        read_write_paths=(data_dir,),
        create_account=account.uid is None,
    )
    problem = None if staging else unreachable_command(account, spec.command)
    if problem and not args.dry_run:
        raise ServiceError(problem)
    plan = plan_install(spec)
    if args.dry_run:
        describe(plan, sys.stdout)
        return 0

    def admin_token() -> list[str]:
        token_file = data_dir / ADMIN_TOKEN_FILE
        if staging:
            return [f"admin token: generated at first start into {token_file}"]
        _, generated = load_admin_token(data_dir, {})
        current = Account.lookup(account.name)
        if generated and current.uid is not None and current.uid != os.geteuid():
            os.chown(token_file, current.uid, os.stat(data_dir).st_gid)
        lines = [f"admin token: {'generated into' if generated else 'kept'} {token_file} (0600)"]
        if os.environ.get(ADMIN_TOKEN_ENV):
            lines.append(
                f"note: ${ADMIN_TOKEN_ENV} of this shell is not passed to the service; it uses "
                f"{token_file} (put that token there to keep it)"
            )
        return lines

    print(f"{PROGRAM}: {manager} {scope} service, runs as {account.name}", flush=True)
    install(plan, sys.stdout, root=args.root, start=args.manage, before_start=admin_token)
    print(target.status_hint())
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    target = _located(chosen_manager(args, installing=False), chosen_scope(args))
    if target.scope is Scope.SYSTEM and os.geteuid() != 0 and not (args.dry_run or args.root):
        raise ServiceError("a system service is removed as root: run it with sudo")
    plan = plan_uninstall(target)
    if args.dry_run:
        describe_uninstall(plan, sys.stdout)
        return 0
    if uninstall(plan, sys.stdout, root=args.root, stop=args.manage):
        print(f"{PROGRAM}: service removed; the data directory was left in place")
    return 0
