"""`mc-hub doctor`: the hub's troubleshooting steps as checks, each with cause and fix.

It reads the data directory and the database (read-only) whether or not the hub runs,
and never writes: no admin token is generated, no schema is migrated. The checks that
depend on live state (gateways connected, ports serving) say so when no hub runs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sqlite3
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from hub.config import ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE, MIN_ADMIN_TOKEN_CHARS
from hub.pki.ca import CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE
from hub.store.backup import BackupError, check_database, lock_holder
from hub.store.database import SchemaState, newer_schema_message, schema_state
from hub.store.migrations import MIGRATIONS
from missioncontrol.doctor import Check, Finding, Report, fail, mode_text, ok, run_checks, warn
from missioncontrol.netaddr import HostPort, is_loopback_host
from missioncontrol.private_files import InsecurePermissionsError, check_private_file

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class DoctorPolicy:
    """Where a warning starts and a failure begins. Tests narrow them."""

    disconnected_warn_s: float = 600.0  # a gateway away this long is reported
    stuck_after_s: float = 300.0  # provisioning/updating longer than this
    outbox_warn: int = 100  # unacknowledged commands of one gateway
    outbox_fail: int = 1000
    outbox_age_warn_s: float = 600.0  # the oldest unacknowledged command
    cert_warn_days: float = 7.0  # a sidecar certificate this close to expiry
    ca_warn_days: float = 90.0  # the hub CA
    free_warn_bytes: int = GiB
    free_fail_bytes: int = 100 * MiB
    min_token_distinct_chars: int = 16
    max_listed: int = 20  # findings per check before the rest are summed up


@dataclass(frozen=True)
class HubDoctorInput:
    data_dir: Path
    http_listen: HostPort
    link_listen: HostPort
    enroll_listen: HostPort
    insecure_dev: bool
    cors_origins: tuple[str, ...]
    checkin_deadline_s: float
    environ: Mapping[str, str]

    @property
    def database(self) -> Path:
        return self.data_dir / "hub.sqlite3"

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], environ: Mapping[str, str]) -> HubDoctorInput:
        return cls(
            data_dir=values["data_dir"],
            http_listen=values["http_listen"],
            link_listen=values["link_listen"],
            enroll_listen=values["enroll_listen"],
            insecure_dev=bool(values["insecure_dev"]),
            cors_origins=tuple(values["cors_origins"]),
            checkin_deadline_s=float(values["checkin_deadline"]),
            environ=environ,
        )


class HubDoctor:
    def __init__(
        self, given: HubDoctorInput, policy: DoctorPolicy | None = None, *, now: float | None = None
    ) -> None:
        self.given = given
        self.policy = policy or DoctorPolicy()
        self.now = time.time() if now is None else now
        self.running: str | None = None  # who holds the data directory lock
        self.schema: SchemaState | None = None  # set once the database checks passed

    async def run(self) -> Report:
        checks: list[tuple[str, Check]] = [
            ("hub.running", self.check_running),
            ("files.owner", self.check_owner),
            ("database.integrity", self.check_integrity),
            ("database.schema", self.check_schema),
            ("disk.free", self.check_disk),
            ("files.modes", self.check_modes),
            ("admin_token.strength", self.check_admin_token),
            ("ports", self.check_ports),
            ("cors.origins", self.check_cors),
            ("gateways.disconnected", self.check_disconnected),
            ("agents.stuck", self.check_stuck),
            ("outbox.backlog", self.check_outbox),
            ("certificates.expiring", self.check_certificates),
        ]
        return await run_checks("mc-hub", checks)

    # ------------------------------------------------------------ process and files

    def check_running(self) -> Finding:
        self.running = lock_holder(self.given.data_dir)
        if self.running:
            return ok("hub.running", f"a hub runs on {self.given.data_dir}: {self.running}")
        return ok(
            "hub.running",
            f"no hub runs on {self.given.data_dir} (checks of live state are skipped)",
        )

    def check_owner(self) -> Finding:
        data_dir = self.given.data_dir
        if not data_dir.exists():
            return fail(
                "files.owner",
                f"data directory {data_dir} does not exist",
                "wrong --data-dir (or MC_HUB_DATA_DIR / data_dir in the config file), or the "
                "hub never started",
                "point --data-dir at the hub's data directory (a service keeps it in "
                "/var/lib/mc-hub), or start the hub once: `mc-hub serve`",
            )
        owner = data_dir.stat().st_uid
        if os.geteuid() == 0 and owner != 0:
            return fail(
                "files.owner",
                f"running as root on a data directory owned by uid {owner}",
                "SQLite would create root-owned -wal/-shm files the hub cannot open",
                f"run as the hub's user: `sudo -u \\#{owner} mc-hub doctor --data-dir {data_dir}`",
            )
        return ok("files.owner", f"{data_dir} is owned by uid {owner}")

    def check_integrity(self) -> Finding:
        path = self.given.database
        if not path.exists():
            return warn(
                "database.integrity",
                f"no database at {path}",
                "the hub has not started with this data directory yet",
                "start the hub (`mc-hub serve`), or fix --data-dir",
            )
        try:
            info = check_database(path, integrity=True)
        except BackupError as exc:
            return fail(
                "database.integrity",
                f"{path} is damaged",
                str(exc),
                "stop the hub and restore the newest good backup: `mc-hub restore "
                f"{self.given.data_dir / 'backups'}/hub-….sqlite3 "
                f"--data-dir {self.given.data_dir}`",
            )
        self.schema = info.schema
        return ok("database.integrity", f"{path}: integrity ok, {info.size_bytes} bytes")

    def check_schema(self) -> Finding:
        path = self.given.database
        if not path.exists():
            return ok("database.schema", "no database yet: the first start creates it")
        try:
            conn = _read_only(path)
            try:
                state = schema_state(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return fail(
                "database.schema",
                "cannot read the schema version",
                str(exc),
                "see database.integrity",
            )
        known = len(MIGRATIONS)
        if state.version > known:
            return fail(
                "database.schema",
                f"schema version {state.version} is newer than this mc-hub knows ({known})",
                newer_schema_message(state),
                f"run mc-hub {state.program_version or 'of the version that wrote it'}, or "
                "restore a backup made by this version (`mc-hub restore FILE`)",
                version=state.version,
                known=known,
                written_by=state.program_version,
            )
        if state.version < known:
            return warn(
                "database.schema",
                f"schema version {state.version}; this mc-hub migrates it to {known} at start",
                "the database was written by an older mc-hub",
                "nothing to do: the next `mc-hub serve` backs it up to "
                f"{self.given.data_dir / 'backups'}/pre-migration-… and migrates it",
                version=state.version,
                known=known,
            )
        by = f" (by mc-hub {state.program_version})" if state.program_version else ""
        return ok("database.schema", f"schema version {state.version}{by}", version=state.version)

    def check_disk(self) -> Finding:
        where = self.given.data_dir.absolute()
        while not where.exists():  # a data directory to come: the disk it will be on
            where = where.parent
        usage = shutil.disk_usage(where)
        db_bytes = _size(self.given.database) + _size(_wal(self.given.database))
        free, policy = usage.free, self.policy
        data = {"free_bytes": free, "database_bytes": db_bytes}
        summary = f"{_human(free)} free on the data directory's file system"
        if free < max(policy.free_fail_bytes, db_bytes):
            return fail(
                "disk.free",
                summary,
                f"the database ({_human(db_bytes)}) needs room to grow, checkpoint its WAL and be "
                "backed up; when the disk fills, every write fails and /readyz answers 503",
                f"free space on {self.given.data_dir}'s file system (old backups: "
                f"{self.given.data_dir / 'backups'}; lower --backup-keep), or move the data "
                "directory to a larger disk",
                **data,
            )
        if free < policy.free_warn_bytes:
            return warn(
                "disk.free",
                summary,
                f"less than {_human(policy.free_warn_bytes)} free",
                f"free space on {self.given.data_dir}'s file system, or lower --backup-keep",
                **data,
            )
        return ok("disk.free", summary, **data)

    def check_modes(self) -> list[Finding]:
        data_dir = self.given.data_dir
        findings: list[Finding] = []
        if data_dir.exists():
            mode = stat.S_IMODE(data_dir.stat().st_mode)
            if mode & 0o077:
                findings.append(
                    fail(
                        "files.modes",
                        f"{data_dir} is mode {mode_text(mode)}",
                        "other users can list (or change) the hub's keys and database",
                        f"chmod 700 {data_dir}",
                    )
                )
        secrets = [
            data_dir / "hub.key",
            data_dir / ADMIN_TOKEN_FILE,
            data_dir / "ca" / CA_KEY_FILE,
            data_dir / "ca" / SERVER_KEY_FILE,
        ]
        for path in secrets:
            if not os.path.lexists(path):
                continue
            try:
                check_private_file(path)
            except InsecurePermissionsError as exc:
                findings.append(
                    fail(
                        "files.modes",
                        f"{path} is readable by others",
                        "a key or token other users can read must be treated as leaked",
                        str(exc),
                    )
                )
        if not findings:
            findings.append(ok("files.modes", "the data directory and its keys are private"))
        return findings

    def check_admin_token(self) -> Finding:
        from_env = self.given.environ.get(ADMIN_TOKEN_ENV, "").strip()
        path = self.given.data_dir / ADMIN_TOKEN_FILE
        if from_env:
            token, source = from_env, f"${ADMIN_TOKEN_ENV}"
        elif path.exists():
            try:
                token, source = path.read_text(encoding="utf-8").strip(), str(path)
            except (OSError, UnicodeDecodeError) as exc:
                return fail(
                    "admin_token.strength",
                    f"cannot read {path}",
                    str(exc),
                    f"run doctor as the hub's user, or set ${ADMIN_TOKEN_ENV}",
                )
        else:
            return ok(
                "admin_token.strength",
                f"no admin token yet: the first start generates one into {path}",
            )
        generate = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        if len(token) < MIN_ADMIN_TOKEN_CHARS:
            return fail(
                "admin_token.strength",
                f"the admin token from {source} is {len(token)} characters",
                f"the hub refuses tokens under {MIN_ADMIN_TOKEN_CHARS} characters",
                f"set a new one: {ADMIN_TOKEN_ENV}=$({generate})",
            )
        distinct = len(set(token))
        if distinct < self.policy.min_token_distinct_chars:
            return fail(
                "admin_token.strength",
                f"the admin token from {source} has only {distinct} distinct characters",
                "it looks made by hand (repeated characters), so it is guessable",
                f"replace it: {ADMIN_TOKEN_ENV}=$({generate}) (or delete {path} and restart: "
                "the hub generates a strong one)",
            )
        return ok(
            "admin_token.strength",
            f"admin token from {source}: {len(token)} characters, {distinct} distinct",
        )

    def check_ports(self) -> list[Finding]:
        given = self.given
        ports = [("--http-listen", given.http_listen), ("--link-listen", given.link_listen)]
        if not given.insecure_dev:
            ports.append(("--enroll-listen", given.enroll_listen))
        findings = []
        for flag, address in ports:
            if address.port == 0:
                findings.append(ok("ports", f"{flag} {address}: any free port"))
            elif self.running:
                findings.append(_serving(flag, address))
            else:
                findings.append(_bindable(flag, address))
        return findings

    def check_cors(self) -> list[Finding]:
        if not self.given.cors_origins:
            return [ok("cors.origins", "no browser origins allowed (the API is not for browsers)")]
        findings = []
        for origin in self.given.cors_origins:
            findings.append(_cors_finding(origin))
        return findings

    # ------------------------------------------------------------ the fleet

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = _read_only(self.given.database)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def _fleet_unavailable(self, check: str) -> Finding | None:
        if self.schema is None:
            return ok(check, "skipped: the database cannot be read (see database.integrity)")
        if self.schema.version > len(MIGRATIONS):
            return ok(check, "skipped: the database is newer than this mc-hub")
        return None

    def check_disconnected(self) -> list[Finding]:
        check = "gateways.disconnected"
        if (skip := self._fleet_unavailable(check)) is not None:
            return [skip]
        if not self.running:
            return [ok(check, "skipped: no hub runs, so no gateway is connected")]
        threshold = self.now - self.policy.disconnected_warn_s
        rows = self._query(
            """SELECT g.id, g.name, g.disconnected_at, g.connected_at, g.created_at,
                      (SELECT detail FROM events e WHERE e.gateway_id = g.id
                         AND e.kind = 'gateway.disconnected' ORDER BY e.id DESC LIMIT 1) AS last
               FROM gateways g
               WHERE g.connected = 0 AND COALESCE(g.disconnected_at, g.created_at) < ?
               ORDER BY COALESCE(g.disconnected_at, g.created_at)""",
            (threshold,),
        )
        if not rows:
            return [
                ok(
                    check,
                    "every gateway connected within the last "
                    f"{_duration(self.policy.disconnected_warn_s)}",
                )
            ]
        findings = []
        for row in rows[: self.policy.max_listed]:
            since = row["disconnected_at"] or row["created_at"]
            never = row["connected_at"] is None
            reason = _json_field(row["last"], "reason")
            findings.append(
                warn(
                    check,
                    f"gateway {row['name']} ({row['id']}) "
                    + ("has never connected" if never else "disconnected")
                    + f" {_duration(self.now - since)} ago",
                    (
                        "its sidecar never enrolled or never reached the hub"
                        if never
                        else f"last stream ended: {reason or 'unknown'}"
                    ),
                    "on the gateway host run `mc-sidecar doctor` (it checks the hub address, "
                    "TLS, the certificate and the clock); `systemctl --user status mc-sidecar` "
                    "shows whether the sidecar runs"
                    + (
                        f"; if it never enrolled: `mc-hub gateway join-token {row['id']}`"
                        if never
                        else ""
                    ),
                    gateway_id=row["id"],
                    since=since,
                )
            )
        return findings + _more(check, rows, self.policy.max_listed)

    def check_stuck(self) -> list[Finding]:
        check = "agents.stuck"
        if (skip := self._fleet_unavailable(check)) is not None:
            return [skip]
        rows = self._query(
            """SELECT a.id, a.name, a.status, a.status_reason, a.phase, a.wake_attempts,
                      a.last_provision_error, a.updated_at, a.lifecycle_generation,
                      a.applied_generation, g.name AS gateway, g.id AS gateway_id,
                      g.connected AS connected
               FROM agents a JOIN gateways g ON g.id = a.gateway_id
               WHERE a.status IN ('provisioning', 'updating') AND a.updated_at < ?
               ORDER BY a.updated_at""",
            (self.now - self.policy.stuck_after_s,),
        )
        if not rows:
            return [
                ok(
                    check,
                    "no agent has been provisioning or updating for more than "
                    f"{_duration(self.policy.stuck_after_s)}",
                )
            ]
        findings = []
        for row in rows[: self.policy.max_listed]:
            cause, fix = _stuck_cause_and_fix(row)
            findings.append(
                warn(
                    check,
                    f"agent {row['name']} ({row['id']}) on gateway {row['gateway']} is "
                    f"{row['status']} for {_duration(self.now - row['updated_at'])} "
                    f"(phase {row['phase']}, {row['wake_attempts']} wakes)",
                    cause,
                    fix,
                    agent_id=row["id"],
                    status=row["status"],
                    reason=row["status_reason"],
                    last_provision_error=row["last_provision_error"],
                )
            )
        return findings + _more(check, rows, self.policy.max_listed)

    def check_outbox(self) -> list[Finding]:
        check = "outbox.backlog"
        if (skip := self._fleet_unavailable(check)) is not None:
            return [skip]
        rows = self._query(
            """SELECT g.id, g.name, g.connected, g.next_sequence - 1 - g.acked_sequence AS pending,
                      (SELECT MIN(created_at) FROM commands c
                         WHERE c.gateway_id = g.id AND c.acked_at IS NULL) AS oldest
               FROM gateways g WHERE g.next_sequence - 1 > g.acked_sequence
               ORDER BY pending DESC"""
        )
        policy = self.policy
        findings = []
        for row in rows:
            age = self.now - row["oldest"] if row["oldest"] else 0.0
            pending = int(row["pending"])
            if pending < policy.outbox_warn and age < policy.outbox_age_warn_s:
                continue
            summary = (
                f"gateway {row['name']} ({row['id']}): {pending} commands not acknowledged, "
                f"the oldest queued {_duration(age)} ago"
            )
            cause = (
                "its sidecar is not connected, so nothing is delivered"
                if not row["connected"]
                else "its sidecar is connected but does not acknowledge: a command fails and "
                "blocks the ones behind it (they apply in order)"
            )
            fix = (
                "bring the sidecar back: on the gateway host `mc-sidecar doctor`"
                if not row["connected"]
                else "on the gateway host: `journalctl --user -u mc-sidecar | grep "
                "command.not_applied` shows the failing command and why; `mc-sidecar doctor`"
            )
            make = fail if pending >= policy.outbox_fail else warn
            findings.append(make(check, summary, cause, fix, gateway_id=row["id"], pending=pending))
        if not findings:
            total = sum(int(r["pending"]) for r in rows)
            return [ok(check, f"{total} commands in flight across {len(rows)} gateways")]
        return findings[: policy.max_listed] + _more(check, findings, policy.max_listed)

    def check_certificates(self) -> list[Finding]:
        check = "certificates.expiring"
        findings: list[Finding] = []
        ca_dir = self.given.data_dir / "ca"
        for name, what, days in (
            (CA_CERT_FILE, "the hub CA", self.policy.ca_warn_days),
            (SERVER_CERT_FILE, "the link's server certificate", self.policy.cert_warn_days),
        ):
            path = ca_dir / name
            if not path.exists():
                continue
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError) as exc:
                findings.append(
                    fail(
                        check,
                        f"cannot read {path}",
                        str(exc),
                        f"restore {ca_dir} from a backup of the data directory",
                    )
                )
                continue
            left = cert.not_valid_after_utc.timestamp() - self.now
            if left <= 0:
                findings.append(
                    fail(
                        check,
                        f"{what} ({path}) expired {_duration(-left)} ago",
                        "sidecars refuse the link",
                        "restart the hub (it reissues its server certificate)"
                        if name == SERVER_CERT_FILE
                        else f"a new CA means every sidecar re-enrolls: move {ca_dir} aside, "
                        "restart the hub, then `mc-sidecar enroll … --force` on each host",
                    )
                )
            elif left < days * 86400:
                findings.append(
                    warn(
                        check,
                        f"{what} expires in {_duration(left)}",
                        "after that sidecars refuse the link",
                        "restart the hub before then (it reissues its server certificate)"
                        if name == SERVER_CERT_FILE
                        else "plan a new CA: every sidecar re-enrolls with it",
                    )
                )
        if self.schema is not None and self.schema.version <= len(MIGRATIONS):
            findings += self._sidecar_certificates(check)
        if not findings:
            return [
                ok(
                    check,
                    "no certificate expires within "
                    f"{_duration(self.policy.cert_warn_days * 86400)}",
                )
            ]
        return findings

    def _sidecar_certificates(self, check: str) -> list[Finding]:
        rows = self._query(
            """SELECT g.id, g.name, g.connected, MAX(c.not_after) AS not_after,
                      MAX(c.issued_at) AS issued_at
               FROM certificates c JOIN gateways g ON g.id = c.gateway_id
               WHERE c.revoked_at IS NULL GROUP BY g.id
               HAVING MAX(c.not_after) < ? ORDER BY MAX(c.not_after)""",
            (self.now + self.policy.cert_warn_days * 86400,),
        )
        findings = []
        for row in rows[: self.policy.max_listed]:
            left = row["not_after"] - self.now
            reenroll = (
                f"on the hub: `mc-hub gateway join-token {row['id']}`; on the gateway host: "
                "`mc-sidecar enroll --hub HUB:7444 --token '<token>' --force`, then restart "
                "the sidecar"
            )
            if left <= 0:
                findings.append(
                    fail(
                        check,
                        f"gateway {row['name']} ({row['id']}): its certificate expired "
                        f"{_duration(-left)} ago",
                        "its sidecar cannot open the link until it enrolls again (renewal "
                        "needs a valid certificate)",
                        reenroll,
                        gateway_id=row["id"],
                        not_after=row["not_after"],
                    )
                )
            else:
                findings.append(
                    warn(
                        check,
                        f"gateway {row['name']} ({row['id']}): its certificate expires in "
                        f"{_duration(left)}",
                        "sidecars renew at 70-90 % of the lifetime over the link, so this one "
                        "has not been connected since it was due",
                        "bring its sidecar back (on that host: `mc-sidecar doctor`); if it "
                        f"expires first: {reenroll}",
                        gateway_id=row["id"],
                        not_after=row["not_after"],
                    )
                )
        return findings + _more(check, rows, self.policy.max_listed)


# ------------------------------------------------------------------ helpers


def _read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _json_field(text: str | None, key: str) -> str:
    if not text:
        return ""
    try:
        value = json.loads(text).get(key)
    except (ValueError, AttributeError):
        return ""
    return str(value) if value else ""


def _more(check: str, rows: list[Any], listed: int) -> list[Finding]:
    if len(rows) <= listed:
        return []
    return [
        warn(
            check,
            f"… and {len(rows) - listed} more",
            "only the first ones are listed",
            "fix those first, then run doctor again (or read all of them with --json)",
        )
    ]


def _serving(flag: str, address: HostPort) -> Finding:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
    try:
        with socket.create_connection((host, address.port), timeout=2.0):
            pass
    except OSError as exc:
        return fail(
            "ports",
            f"{flag} {address}: nothing answers",
            f"a hub runs on this data directory but not on this address ({exc.strerror or exc})",
            "run doctor with the settings the hub runs with (`--config /etc/mc-hub/hub.toml`), "
            "or restart the hub with these",
        )
    return ok("ports", f"{flag} {address}: the hub listens")


def _bindable(flag: str, address: HostPort) -> Finding:
    try:
        sock = socket.create_server((address.host, address.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return fail(
                "ports",
                f"{flag} {address}: taken by another program",
                "no hub runs on this data directory, so something else holds the port and the "
                "hub would not start",
                f"find it with `ss -ltnp 'sport = :{address.port}'` and stop it, or choose "
                f"another address with {flag}",
            )
        return fail(
            "ports",
            f"{flag} {address}: cannot listen there",
            exc.strerror or str(exc),
            f"choose an address this host has with {flag}",
        )
    sock.close()
    return ok("ports", f"{flag} {address}: free")


def _cors_finding(origin: str) -> Finding:
    check = "cors.origins"
    if origin == "*":
        return fail(
            check,
            "origin '*' is listed",
            "the hub matches origins exactly; '*' allows nothing, and a wildcard would let any "
            "web page use an admin's browser session",
            "list each dashboard origin, e.g. --cors-origins https://dash.example.org",
        )
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return fail(
            check,
            f"origin {origin!r} is not scheme://host[:port]",
            "a browser sends its Origin as scheme://host[:port]; this never matches",
            "write it like https://dash.example.org (or http://127.0.0.1:5173 in development)",
        )
    if parts.path or parts.query or parts.fragment or origin.endswith("/"):
        exact = f"{parts.scheme}://{parts.netloc}"
        return fail(
            check,
            f"origin {origin!r} has a path or a trailing slash",
            "a browser's Origin has neither, so it never matches and its calls are refused",
            f"use {exact}",
        )
    if origin != origin.lower():
        return fail(
            check,
            f"origin {origin!r} has upper-case letters",
            "browsers send the origin in lower case; this never matches",
            f"use {origin.lower()}",
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        return warn(
            check,
            f"origin {origin} is plain http beyond loopback",
            "the admin token crosses the network readable from that page",
            f"serve the dashboard over https and list https://{parts.netloc}",
        )
    return ok(check, f"origin {origin} is allowed")


def _stuck_cause_and_fix(row: sqlite3.Row) -> tuple[str, str]:
    reason = row["status_reason"] or ""
    error = row["last_provision_error"] or ""
    host = "on the gateway host run `mc-sidecar doctor`"
    if reason == "sidecar_disconnected" or not row["connected"]:
        return (
            "its gateway's sidecar is not connected; the hub waits for it (no wake is counted)",
            f"bring the sidecar back: {host}; nothing needs redoing, it catches up on connect",
        )
    if reason == "gateway_unreachable":
        return (
            "the sidecar cannot reach its OpenClaw gateway" + (f": {error}" if error else ""),
            f"start the gateway (`openclaw gateway run`) or fix what the sidecar says: {host}; "
            "the hub retries with backoff by itself",
        )
    if reason == "wake_failed" or error:
        return (
            f"its wake did not lead to a check-in: {error or 'the wake could not be delivered'}",
            "check the agent's model credentials and runs on the gateway "
            "(`GET /api/v1/gateway/sessions?agent_id=…`); the reconciler retries by itself",
        )
    if row["applied_generation"] < row["lifecycle_generation"]:
        return (
            f"generation {row['lifecycle_generation']} is queued but the sidecar has not "
            "confirmed it",
            f"see outbox.backlog for this gateway; {host}",
        )
    return (
        "waiting for a check-in after its wake",
        "the agent should heartbeat within --checkin-deadline; check its runs on the gateway "
        f"(`GET /api/v1/gateway/sessions?agent_id={row['id']}`)",
    )
