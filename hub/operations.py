"""`mc-hub backup`, `mc-hub restore` and `mc-hub doctor`: the operator's commands.

They read the same settings as `serve` (flags, MC_HUB_* variables, the TOML file of
`--config`), so `mc-hub doctor --config /etc/mc-hub/hub.toml` checks what the service
runs with. The work itself lives in hub/store/backup.py and hub/doctor.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hub.config import ENV_PREFIX, SERVE_OPTIONS, add_serve_arguments, resolve_settings
from missioncontrol.settings import Option, SettingsError, add_options, expand_path

COMMANDS = ("backup", "restore", "doctor")


def _options(*names: str) -> list[Option]:
    return [o for o in SERVE_OPTIONS if o.name in names]


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file with the hub's settings (as `serve` takes) [env {ENV_PREFIX}CONFIG]",
    )


def add_operations_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = commands.add_parser(
        "backup",
        help="take a consistent copy of the database, while the hub runs or not",
        description="Copy the live database with SQLite's online backup API (one consistent "
        "snapshot; the hub keeps serving). DEST is a file, or a directory to put "
        "hub-<time>.sqlite3 in (default: the backup directory). Keep hub.key and ca/ of the "
        "data directory with your backups: the database is only usable next to them.",
    )
    backup.add_argument("dest", nargs="?", metavar="DEST", help="file or directory to write")
    backup.add_argument(
        "--verify", action="store_true", help="check the copy's integrity and schema too"
    )
    _add_config(backup)
    add_options(backup, _options("data-dir", "backup-dir"), ENV_PREFIX)

    restore = commands.add_parser(
        "restore",
        help="put a backup in place of the database (the hub must be stopped)",
        description="Check the backup (integrity, a schema this mc-hub knows) and put it in "
        "place of the database; the replaced one is kept as hub.sqlite3.before-restore-<time>. "
        "Refused while a hub runs on the data directory. Sidecars that applied commands the "
        "backup never had are reset by the hub when they reconnect.",
    )
    restore.add_argument("source", metavar="SRC", help="a file made by `mc-hub backup`")
    _add_config(restore)
    add_options(restore, _options("data-dir"), ENV_PREFIX)

    doctor = commands.add_parser(
        "doctor",
        help="check the hub's data, files, settings and fleet; print each cause and fix",
        description="Run every check of the troubleshooting guide: database integrity and "
        "schema, free disk, key and token file modes, admin token strength, ports, CORS "
        "origins, gateways disconnected for long, agents stuck provisioning or updating, "
        "outbox backlogs and expiring certificates. Exit code 1 when a check fails. Takes "
        "the settings `serve` takes, so point it at the same config file.",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    add_serve_arguments(doctor)


def operations_main(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    try:
        values = resolve_settings(args, environ)
    except SettingsError as exc:
        print(f"mc-hub {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "backup":
        return _backup(args, values)
    if args.command == "restore":
        return _restore(args, values)
    return _doctor(args, values, environ)


def _backup(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from hub.store.backup import BackupError, take_backup

    data_dir: Path = values["data_dir"]
    dest = expand_path(args.dest) if args.dest else values["backup_dir"] or data_dir / "backups"
    if not args.dest:
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        info = take_backup(data_dir / "hub.sqlite3", dest, verify=args.verify)
    except BackupError as exc:
        print(f"mc-hub backup: {exc}", file=sys.stderr)
        return 1
    print(f"backup written: {info.describe()}")
    return 0


def _restore(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from hub.store.backup import BackupError, restore_backup

    data_dir: Path = values["data_dir"]
    try:
        done = restore_backup(expand_path(args.source), data_dir, data_dir / "hub.sqlite3")
    except BackupError as exc:
        print(f"mc-hub restore: {exc}", file=sys.stderr)
        return 1
    kept = f"; the replaced database is kept as {done.previous}" if done.previous else ""
    print(
        f"restored {done.backup.describe()} to {done.database}{kept}.\n"
        "Start the hub: sidecars that applied commands this backup never had are brought "
        "back in line when they reconnect."
    )
    return 0


def _doctor(args: argparse.Namespace, values: dict[str, Any], environ: Mapping[str, str]) -> int:
    from hub.doctor import HubDoctor, HubDoctorInput

    report = asyncio.run(HubDoctor(HubDoctorInput.from_settings(values, environ)).run())
    print(report.as_json() if args.json else report.as_text())
    return report.exit_code
