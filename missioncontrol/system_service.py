"""Running mc-hub and mc-sidecar as services: systemd units and launchd plists.

The unit files and plists are the templates in packaging/ (shipped in the wheel as
missioncontrol/packaging); this module fills them in for one install (`render_*`),
decides what to write and which service-manager commands to run (`plan_install`,
`plan_uninstall`: pure), and carries a plan out (`install`, `uninstall`). Each
program's own module (hub/system_service.py, sidecar/system_service.py) turns its settings into a
`ServiceSpec`: who the service runs as, its config file, the paths it may write.

The service always runs `COMMAND run|serve --config FILE`: install-service writes the
settings to FILE, so the unit itself never needs editing and the sandbox's writable
paths come from the same resolved settings the process will use.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape as xml_escape

from missioncontrol.log import get_logger
from missioncontrol.private_files import PRIVATE_DIR_MODE, PUBLIC_FILE_MODE, write_file_atomic
from missioncontrol.settings import Option, SettingsError, resolve

log = get_logger("service.install")

LABEL_PREFIX = "org.missioncontrol."
CONFIG_DIR_MODE = 0o755
USER_FILE_MODE = 0o600
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


class ServiceError(Exception):
    """The service cannot be installed or removed as asked; the message says what to do."""


class Manager(StrEnum):
    SYSTEMD = "systemd"
    LAUNCHD = "launchd"


class Scope(StrEnum):
    SYSTEM = "system"  # started at boot by the system manager, as a named account
    USER = "user"  # the installing user's own manager (systemctl --user, a LaunchAgent)


def label(program: str) -> str:
    return LABEL_PREFIX + program


def started_by_service_manager(program: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether systemd or launchd started this process (its output goes to a log)."""
    # systemd sets INVOCATION_ID for every unit it runs; launchd names the job's label.
    return bool(environ.get("INVOCATION_ID")) or environ.get("XPC_SERVICE_NAME") == label(program)


# ---- where things go ---------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """The OS user a service runs as."""

    name: str
    group: str
    home: Path
    uid: int | None  # None: does not exist yet (a system account the install creates)
    gid: int | None = None

    @classmethod
    def lookup(cls, name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ServiceError(f"there is no user {name!r} on this host") from None
        try:
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            group = str(entry.pw_gid)
        return cls(name, group, Path(entry.pw_dir), entry.pw_uid, entry.pw_gid)

    def can_enter(self, directory: Path) -> bool:
        """Whether this account may search `directory` (the execute bit that applies)."""
        info = directory.stat()
        if self.uid is not None and info.st_uid == self.uid:
            return bool(info.st_mode & 0o100)
        if self.gid is not None and info.st_gid == self.gid:
            return bool(info.st_mode & 0o010)
        return bool(info.st_mode & 0o001)

    @classmethod
    def current(cls) -> Account:
        return cls.lookup(pwd.getpwuid(os.geteuid()).pw_name)


@dataclass(frozen=True)
class Target:
    """One program's service in one manager and scope: enough to find and remove it."""

    program: str  # "mc-hub" or "mc-sidecar"
    manager: Manager
    scope: Scope
    account: Account
    config_home: Path  # $XDG_CONFIG_HOME of the account (user scope)

    @property
    def label(self) -> str:
        return label(self.program)

    @property
    def unit_name(self) -> str:
        return f"{self.program}.service"

    @property
    def service_file(self) -> Path:
        """Where the unit or plist goes."""
        if self.manager is Manager.SYSTEMD:
            if self.scope is Scope.SYSTEM:
                return Path("/etc/systemd/system") / self.unit_name
            return self.config_home / "systemd" / "user" / self.unit_name
        if self.scope is Scope.SYSTEM:
            return Path("/Library/LaunchDaemons") / f"{self.label}.plist"
        return self.account.home / "Library" / "LaunchAgents" / f"{self.label}.plist"

    @property
    def config_file(self) -> Path:
        """The TOML file the service reads its settings from."""
        name = f"{self.program.removeprefix('mc-')}.toml"
        if self.scope is Scope.USER:
            return self.config_home / self.program / name
        if self.manager is Manager.LAUNCHD:
            return Path("/usr/local/etc") / self.program / name
        return Path("/etc") / self.program / name

    @property
    def log_file(self) -> Path | None:
        """launchd writes the service's output here; systemd sends it to the journal."""
        if self.manager is Manager.SYSTEMD:
            return None
        base = (
            Path("/Library/Logs")
            if self.scope is Scope.SYSTEM
            else self.account.home / "Library/Logs"
        )
        return base / self.program / f"{self.program}.log"

    @property
    def launchd_domain(self) -> str:
        return "system" if self.scope is Scope.SYSTEM else f"gui/{self.account.uid}"

    def status_hint(self) -> str:
        if self.manager is Manager.SYSTEMD:
            user = " --user" if self.scope is Scope.USER else ""
            journal = f"journalctl{user} -u {self.unit_name} -f"
            return f"status: systemctl{user} status {self.unit_name}\nlogs:   {journal}"
        return (
            f"status: launchctl print {self.launchd_domain}/{self.label}\n"
            f"logs:   tail -f {shlex.quote(str(self.log_file))}"
        )


def config_home(account: Account, environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME for the installing user, ~/.config for anyone else."""
    raw = environ.get("XDG_CONFIG_HOME", "")
    if raw and account.uid == os.geteuid() and Path(raw).is_absolute():
        return Path(raw)
    return account.home / ".config"


def data_home(account: Account, environ: Mapping[str, str] = os.environ) -> Path:
    raw = environ.get("XDG_DATA_HOME", "")
    if raw and account.uid == os.geteuid() and Path(raw).is_absolute():
        return Path(raw)
    return account.home / ".local" / "share"


@dataclass(frozen=True)
class ServiceSpec:
    """Everything one install writes: the target, the command, the settings, the sandbox."""

    target: Target
    subcommand: str  # "serve" (hub) or "run" (sidecar)
    command: Path  # the installed console script
    settings_toml: str
    read_write_paths: tuple[Path, ...]
    create_account: bool = False  # a system account the install creates first

    @property
    def exec_args(self) -> tuple[str, ...]:
        return (str(self.command), self.subcommand, "--config", str(self.target.config_file))


def installed_command(program: str) -> Path:
    """The real path of `program` as installed beside this Python (a venv's bin/)."""
    beside = Path(sys.executable).parent / program
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which(program)
    if found:
        return Path(found).resolve()
    raise ServiceError(
        f"cannot find the installed {program} command (looked beside {sys.executable} and on "
        f"PATH); install the package (`pip install mission-control-sidecar`, or "
        "packaging/install.sh) and run install-service with that installation's command"
    )


def manager_running(manager: Manager, platform: str = sys.platform) -> bool:
    if manager is Manager.LAUNCHD:
        return platform == "darwin"
    return Path("/run/systemd/system").is_dir()  # sd_booted(): systemd is PID 1


def unreachable_command(account: Account, command: Path) -> str | None:
    """Why `account` cannot run the service's command (or its Python), or None if it can.

    A venv made from a Python under /root (pyenv, say) works for root and fails for
    the service's account with 203/EXEC at every start; say so at install time.
    """
    if account.uid == os.geteuid():
        return None
    for path in (command, Path(os.path.realpath(sys.executable))):
        for directory in Path(os.path.realpath(path)).parents:
            if not account.can_enter(directory):
                return (
                    f"{account.name} cannot enter {directory}, so the service cannot run "
                    f"{path}; install the package with a Python outside it (e.g. "
                    "packaging/install.sh --python /usr/bin/python3) and run install-service "
                    "with that installation's command"
                )
    return None


def detect_manager(*, writing_only: bool, platform: str = sys.platform) -> Manager:
    """The service manager of this host; `writing_only` when nothing is started now."""
    if platform == "darwin":
        return Manager.LAUNCHD
    if manager_running(Manager.SYSTEMD):
        return Manager.SYSTEMD
    if shutil.which("systemctl") and writing_only:
        return Manager.SYSTEMD
    if shutil.which("systemctl"):
        raise ServiceError(
            "systemd is installed here but is not the running service manager (no "
            "/run/systemd/system: a container or chroot?); add --no-start to only write the "
            "unit for a later boot, or run the program in the foreground under this host's "
            "supervisor with the command shown by --dry-run"
        )
    raise ServiceError(
        "this host has neither systemd nor launchd; run the program in the foreground under "
        "this host's own supervisor (runit, s6, OpenRC, a container's init) with the command "
        "and config file shown by --dry-run, or pass --manager systemd|launchd with --dry-run "
        "or --root DIR to produce the files for another host"
    )


# ---- rendering ---------------------------------------------------------------------


def packaging_dir() -> Path:
    """packaging/ in a checkout, missioncontrol/packaging/ in an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "packaging", here.parent / "packaging"):
        if (candidate / "systemd").is_dir() and (candidate / "launchd").is_dir():
            return candidate
    raise ServiceError(
        f"the unit and plist templates are missing (no packaging/ beside {here}); "
        "reinstall the package"
    )


def template_path(target: Target) -> Path:
    if target.manager is Manager.SYSTEMD:
        return packaging_dir() / "systemd" / target.scope.value / f"{target.unit_name}.in"
    return packaging_dir() / "launchd" / f"{target.label}.plist.in"


def fill(template: str, values: Mapping[str, str], name: str) -> str:
    """Replace every {{NAME}}; a placeholder without a value, or the reverse, is a bug."""
    used = set(_PLACEHOLDER.findall(template))
    missing, unused = used - set(values), set(values) - used
    if missing or unused:
        raise ServiceError(
            f"template {name} and the installer disagree (no value for {sorted(missing)}, "
            f"no placeholder for {sorted(unused)}); reinstall the package"
        )
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def systemd_quote(word: str, *, exec_line: bool) -> str:
    """One word of a unit-file setting, quoted so systemd reads back exactly `word`."""
    # % starts a specifier everywhere; $ starts a variable only on Exec lines.
    word = word.replace("%", "%%")
    if exec_line:
        word = word.replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(spec: ServiceSpec) -> str:
    target = spec.target
    values = {
        "EXEC_START": " ".join(systemd_quote(arg, exec_line=True) for arg in spec.exec_args),
        "READ_WRITE_PATHS": " ".join(
            systemd_quote(str(path), exec_line=False) for path in spec.read_write_paths
        ),
    }
    if target.scope is Scope.SYSTEM:
        values |= {"USER": target.account.name, "GROUP": target.account.group}
    path = template_path(target)
    return fill(path.read_text(), values, path.name)


def render_plist(spec: ServiceSpec) -> str:
    target = spec.target
    values = {
        "COMMAND": str(spec.command),
        "CONFIG_FILE": str(target.config_file),
        "LOG_FILE": str(target.log_file),
    }
    if target.scope is Scope.SYSTEM:
        values |= {"USER": target.account.name, "GROUP": target.account.group}
    path = template_path(target)
    return fill(path.read_text(), {k: xml_escape(v) for k, v in values.items()}, path.name)


def render_service_file(spec: ServiceSpec) -> str:
    return render_unit(spec) if spec.target.manager is Manager.SYSTEMD else render_plist(spec)


def toml_text(header: str, values: Mapping[str, Any]) -> str:
    """A TOML document of flat settings (strings, booleans, numbers), in the given order."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = json.dumps(str(value), ensure_ascii=False)  # a valid TOML basic string
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def setting_text(value: Any) -> Any:
    """A resolved setting as it is written in a config file (what its converter reads)."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    return str(value)


def settings_to_write(
    options: Sequence[Option],
    values: Mapping[str, Any],
    env_prefix: str,
    pinned: Mapping[str, Any],
) -> dict[str, Any]:
    """The service's config file: the `pinned` settings, and every other one not at its default.

    Pinned are the paths the unit's sandbox names, so file and unit cannot disagree when
    a default changes; anything left at its default keeps following the program's.
    """
    defaults = resolve(options, argparse.Namespace(), {}, env_prefix, {})
    written: dict[str, Any] = {}
    for option in options:
        value = pinned.get(option.key, values[option.key])
        if value is None and defaults[option.key] is not None:
            written[option.key] = "off"  # turned off (e.g. --metrics-listen off): say so
        elif option.key in pinned or (value is not None and value != defaults[option.key]):
            written[option.key] = setting_text(value)
    return written


# ---- plans -------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    must_succeed: bool = True

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class WriteFile:
    path: Path
    content: str
    mode: int


@dataclass(frozen=True)
class InstallPlan:
    spec: ServiceSpec
    prepare: tuple[Command, ...]  # before anything is written (create the account)
    directories: tuple[Path, ...]  # the service's writable paths: 0700, the account's
    files: tuple[WriteFile, ...]
    activate: tuple[Command, ...]  # after writing: reload, enable
    start: tuple[Command, ...]  # when nothing changed (a no-op if it already runs)
    restart: tuple[Command, ...]  # when a file changed


@dataclass(frozen=True)
class UninstallPlan:
    target: Target
    deactivate: tuple[Command, ...]  # before removing files
    remove: tuple[Path, ...]
    reload: tuple[Command, ...]  # after removing files


def _systemctl(target: Target, *args: str, must_succeed: bool = True) -> Command:
    scope = ("--user",) if target.scope is Scope.USER else ()
    return Command(("systemctl", *scope, *args), must_succeed)


def plan_install(spec: ServiceSpec) -> InstallPlan:
    target = spec.target
    files_mode = PUBLIC_FILE_MODE if target.scope is Scope.SYSTEM else USER_FILE_MODE
    files = (
        WriteFile(target.config_file, spec.settings_toml, files_mode),
        WriteFile(target.service_file, render_service_file(spec), files_mode),
    )
    prepare: tuple[Command, ...] = ()
    if spec.create_account:
        prepare = (
            Command(
                (
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    str(spec.read_write_paths[0]),
                    "--shell",
                    "/usr/sbin/nologin",
                    target.account.name,
                )
            ),
        )
    if target.manager is Manager.SYSTEMD:
        activate = [
            _systemctl(target, "daemon-reload"),
            _systemctl(target, "enable", target.unit_name),
        ]
        if target.scope is Scope.USER:
            # Without lingering a user's services stop at logout and do not start at boot.
            activate.insert(
                0, Command(("loginctl", "enable-linger", target.account.name), must_succeed=False)
            )
        return InstallPlan(
            spec,
            prepare,
            spec.read_write_paths,
            files,
            tuple(activate),
            start=(_systemctl(target, "start", target.unit_name),),
            restart=(_systemctl(target, "restart", target.unit_name),),
        )
    service = f"{target.launchd_domain}/{target.label}"
    # bootstrap is the only way to load a (changed) plist, and it refuses a loaded one:
    # bootout first, which fails harmlessly when it is not loaded.
    reload = (
        Command(("launchctl", "bootout", service), must_succeed=False),
        Command(("launchctl", "bootstrap", target.launchd_domain, str(target.service_file))),
    )
    return InstallPlan(
        spec,
        prepare,
        spec.read_write_paths,
        files,
        # A disabled label refuses to bootstrap; enabling is remembered across reboots.
        (Command(("launchctl", "enable", service)),),
        start=reload,
        restart=reload,
    )


def plan_uninstall(target: Target) -> UninstallPlan:
    remove = (target.service_file, target.config_file)
    if target.manager is Manager.SYSTEMD:
        return UninstallPlan(
            target,
            (_systemctl(target, "disable", "--now", target.unit_name, must_succeed=False),),
            remove,
            (_systemctl(target, "daemon-reload"),),
        )
    service = f"{target.launchd_domain}/{target.label}"
    return UninstallPlan(
        target, (Command(("launchctl", "bootout", service), must_succeed=False),), remove, ()
    )


# ---- carrying a plan out -----------------------------------------------------------


def under(root: Path | None, path: Path) -> Path:
    return path if root is None else root / path.relative_to(path.anchor)


def _run(command: Command, out: TextIO) -> None:
    print(f"  run    {command}", file=out)
    try:
        done = subprocess.run(command.argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ServiceError(
            f"`{command.argv[0]}` is not installed here; {command} could not run"
        ) from None
    if done.returncode == 0:
        log.info("service.command.ran", command=str(command))
        return
    detail = (done.stderr or done.stdout).strip()
    log.warning("service.command.failed", command=str(command), rc=done.returncode, output=detail)
    if command.must_succeed:
        raise ServiceError(f"`{command}` failed (exit {done.returncode}): {detail}")
    print(f"         (ignored: {detail or f'exit {done.returncode}'})", file=out)


def _ensure_directory(path: Path, account: Account, *, chown: bool) -> None:
    if not path.exists():
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        if chown and account.uid is not None and account.uid != os.geteuid():
            uid = account.uid
            gid = pwd.getpwuid(uid).pw_gid
            os.chown(path, uid, gid)
        return
    if not path.is_dir():
        raise ServiceError(f"{path} should be a directory the service writes; move it away")
    owner = path.stat().st_uid
    if chown and account.uid is not None and owner != account.uid:
        raise ServiceError(
            f"{path} belongs to uid {owner}, but the service runs as {account.name} "
            f"(uid {account.uid}) and must write it; `chown -R {account.name}: {path}` "
            "or choose another directory"
        )


def _write_if_changed(path: Path, content: str, mode: int) -> bool:
    data = content.encode()
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)
    write_file_atomic(path, data, mode)
    return True


def describe(plan: InstallPlan, out: TextIO) -> None:
    """--dry-run: every file with its content, every directory and command, nothing done."""
    spec = plan.spec
    print(
        f"{spec.target.program}: {spec.target.manager} {spec.target.scope} service, "
        f"runs as {spec.target.account.name}; would:",
        file=out,
    )
    for command in plan.prepare:
        print(f"  run    {command}", file=out)
    for directory in plan.directories:
        print(
            f"  mkdir  {directory}  (0700, owner {spec.target.account.name}, if missing)", file=out
        )
    for item in plan.files:
        print(f"  write  {item.path}  ({item.mode:04o}):", file=out)
        for line in item.content.splitlines():
            print(f"           {line}", file=out)
    for command in plan.activate:
        print(f"  run    {command}", file=out)
    for command in plan.restart:
        print(f"  run    {command}", file=out)
    if plan.restart != plan.start:
        print(f"         (or, if no file changed: {'; '.join(map(str, plan.start))})", file=out)
    problem = unreachable_command(spec.target.account, spec.command)
    if problem:
        print(f"  but the service would not start: {problem}", file=out)


def describe_uninstall(plan: UninstallPlan, out: TextIO) -> None:
    target = plan.target
    print(f"{target.program}: {target.manager} {target.scope} service; would:", file=out)
    for command in plan.deactivate:
        print(f"  run    {command}", file=out)
    for path in plan.remove:
        print(f"  remove {path}  (if present)", file=out)
    for command in plan.reload:
        print(f"  run    {command}", file=out)


def install(
    plan: InstallPlan,
    out: TextIO,
    *,
    root: Path | None = None,
    start: bool = True,
    before_start: Callable[[], Iterable[str]] | None = None,
) -> bool:
    """Write the plan's files and start the service; True if a file changed.

    With `root`, files and directories go below it (an image being built) and neither
    accounts, ownership nor the service manager are touched. `before_start` runs once
    the files are written, before the service starts; it returns lines to print.
    """
    spec, target = plan.spec, plan.spec.target
    staging = root is not None
    if not staging:
        for command in plan.prepare:
            _run(command, out)
    account = target.account if staging else _refresh(target.account)
    for directory in plan.directories:
        _ensure_directory(under(root, directory), account, chown=not staging)
    changed = False
    for item in plan.files:
        path = under(root, item.path)
        wrote = _write_if_changed(path, item.content, item.mode)
        changed |= wrote
        print(f"  {'wrote ' if wrote else 'same  '} {path}", file=out)
        log.info("service.file.written" if wrote else "service.file.unchanged", path=str(path))
    if target.log_file is not None:
        _ensure_directory(under(root, target.log_file.parent), account, chown=not staging)
    for line in before_start() if before_start else ():
        print(f"  {line}", file=out)
    if staging or not start:
        print("  not started; to start it:", file=out)
        for command in (*plan.activate, *plan.restart):
            print(f"    {command}", file=out)
        return changed
    for command in (*plan.activate, *(plan.restart if changed else plan.start)):
        _run(command, out)
    log.info(
        "service.installed",
        program=target.program,
        manager=target.manager,
        scope=target.scope,
        changed=changed,
        command=str(spec.command),
    )
    return changed


def uninstall(
    plan: UninstallPlan, out: TextIO, *, root: Path | None = None, stop: bool = True
) -> bool:
    """Stop the service and remove its unit/plist and config file; data stays. True if removed."""
    present = [path for path in plan.remove if under(root, path).exists()]
    if not present:
        print(
            f"  {plan.target.program}: no {plan.target.scope} service installed; nothing to do",
            file=out,
        )
        return False
    running = manager_running(plan.target.manager)
    if root is None and stop and not running:
        print(f"  {plan.target.manager} is not running here: nothing to stop", file=out)
    stop = root is None and stop and running
    if stop:
        for command in plan.deactivate:
            _run(command, out)
    for path in present:
        under(root, path).unlink()
        print(f"  removed {under(root, path)}", file=out)
        log.info("service.file.removed", path=str(under(root, path)))
    if stop:
        for command in plan.reload:
            _run(command, out)
    return True


def _refresh(account: Account) -> Account:
    """The account as it is now (one the plan's `prepare` created has a uid only now)."""
    try:
        return Account.lookup(account.name)
    except ServiceError:
        return account


@contextlib.contextmanager
def home_of(account: Account) -> Iterator[None]:
    """Resolve settings as `account` would: `~` and $HOME name that account's home."""
    previous = os.environ.get("HOME")
    os.environ["HOME"] = str(account.home)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = previous


def start_from_installed_config(
    args: argparse.Namespace, target: Target, root: Path | None, config_env: str
) -> None:
    """Without --config, read the file a previous install wrote: a re-run keeps settings."""
    if getattr(args, "config", None) or os.environ.get(config_env):
        return
    installed = under(root, target.config_file)
    if installed.is_file():
        args.config = str(installed)


# ---- the command line --------------------------------------------------------------


def add_service_arguments(parser: argparse.ArgumentParser, *, installing: bool) -> None:
    """Flags both programs' install-service and uninstall-service share."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--system",
        dest="scope",
        action="store_const",
        const=Scope.SYSTEM,
        help="a system service started at boot (as root; the default when run as root)",
    )
    scope.add_argument(
        "--user",
        dest="scope",
        action="store_const",
        const=Scope.USER,
        help="a service of your own user's manager (the default when not root)",
    )
    verb = "write" if installing else "remove"
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"print what would be written and run, {verb} nothing",
    )
    parser.add_argument(
        f"--no-{'start' if installing else 'stop'}",
        dest="manage",
        action="store_false",
        help=f"{verb} the files but leave systemctl/launchctl alone "
        "(an image build, a container where systemd is not running yet)",
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        type=Path,
        help=f"{verb} the files below DIR (an image or chroot being built); paths inside "
        "them stay as they will be seen from DIR; no accounts, owners or service manager",
    )
    parser.add_argument(
        "--manager",
        choices=[m.value for m in Manager],
        help="the service manager to write for [detected: systemd on Linux, launchd on macOS]",
    )


def chosen_manager(args: argparse.Namespace, *, installing: bool = True) -> Manager:
    if args.manager:
        return Manager(args.manager)
    # Removing needs only the kind of manager: uninstall() stops nothing if it is not running.
    quiet = args.dry_run or args.root is not None or not args.manage or not installing
    return detect_manager(writing_only=quiet)


def chosen_scope(args: argparse.Namespace) -> Scope:
    if args.scope is not None:
        return Scope(args.scope)
    return Scope.SYSTEM if os.geteuid() == 0 else Scope.USER


def run_service_command(
    program: str,
    args: argparse.Namespace,
    *,
    install: Callable[[argparse.Namespace], int],
    uninstall: Callable[[argparse.Namespace], int],
) -> int:
    """`install-service` / `uninstall-service`: their errors as one line and an exit code
    (2: a setting is wrong, 1: the service could not be installed or removed)."""
    try:
        return install(args) if args.command == "install-service" else uninstall(args)
    except SettingsError as exc:
        print(f"{program} {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ServiceError, OSError) as exc:
        print(f"{program} {args.command}: {exc}", file=sys.stderr)
        return 1
