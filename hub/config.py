"""HubConfig: every setting of mc-hub, built once from flags, environment and a file."""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.store.engines import check_database_url, sqlite_path, sqlite_url
from missioncontrol.netaddr import HostPort
from missioncontrol.private_files import InsecurePermissionsError, read_private_file
from missioncontrol.settings import (
    LOG_OPTIONS,
    Option,
    SettingsError,
    add_options,
    config_path_from,
    expand_path,
    load_config_file,
    non_negative_float,
    one_of,
    positive_float,
    positive_int,
    resolve,
)

ENV_PREFIX = "MC_HUB_"
ADMIN_TOKEN_ENV = "MC_ADMIN_TOKEN"
ADMIN_TOKEN_FILE = "admin-token"
MIN_ADMIN_TOKEN_CHARS = 50


SERVE_OPTIONS = (
    Option(
        "data-dir",
        "directory for the SQLite database, keys and the generated admin token",
        "var/hub",
        expand_path,
        metavar="DIR",
    ),
    Option(
        "http-listen",
        "address of the admin/agent REST API and dashboard",
        "127.0.0.1:8000",
        HostPort.parse,
        metavar="HOST:PORT",
    ),
    Option(
        "link-listen",
        "address of the gRPC link sidecars connect to",
        "127.0.0.1:7443",
        HostPort.parse,
        metavar="HOST:PORT",
    ),
    Option(
        "enroll-listen",
        "address of the server-TLS enrollment listener (sidecars without a certificate yet)",
        "127.0.0.1:7444",
        HostPort.parse,
        metavar="HOST:PORT",
    ),
    Option(
        "link-names",
        "comma-separated host names/addresses sidecars dial, for the hub's TLS certificate",
        "",
        lambda text: tuple(n.strip() for n in text.split(",") if n.strip()),
        metavar="NAMES",
    ),
    Option(
        "cert-lifetime-days",
        "lifetime of sidecar client certificates (renewed at a random 70-90 %)",
        30.0,
        positive_float,
        metavar="DAYS",
    ),
    Option(
        "http-tls",
        "REST API TLS: auto (on beyond loopback, certificate from the hub's CA), on, off "
        "(loopback only), proxy (plain, behind a TLS proxy)",
        "auto",
        one_of("auto", "on", "off", "proxy"),
        metavar="MODE",
    ),
    Option(
        "http-tls-cert",
        "certificate chain (PEM) for the REST API instead of one from the hub's CA",
        None,
        expand_path,
        metavar="FILE",
    ),
    Option(
        "http-tls-key",
        "private key (PEM) of --http-tls-cert",
        None,
        expand_path,
        metavar="FILE",
    ),
    Option(
        "cors-origins",
        "comma-separated browser origins allowed to call the API (e.g. a dashboard)",
        "",
        lambda text: tuple(o.strip() for o in text.split(",") if o.strip()),
        metavar="ORIGINS",
    ),
    Option(
        "souls-dir",
        "directory of role souls: <role-slug>.md becomes the role section of SOUL.md for "
        "workers of that role (read locally; nothing is fetched)",
        None,
        expand_path,
        metavar="DIR",
    ),
    Option(
        "checkin-deadline",
        "seconds an agent has to check in after a delivered wake (3 wakes, then offline)",
        30.0,
        positive_float,
        metavar="SECONDS",
    ),
    Option(
        "insecure-dev",
        "serve the link without TLS; loopback addresses only, for development",
        False,
        switch=True,
    ),
    Option(
        "commit-interval",
        "seconds between group commits under load",
        1.0,
        positive_float,
        metavar="SECONDS",
    ),
    Option(
        "database",
        "where the hub keeps its rows: sqlite:// and a path (default: DATA_DIR/hub.sqlite3) "
        "or postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        "",
        lambda text: check_database_url(text) if text else "",
        metavar="URL",
    ),
    Option(
        "backup-interval",
        "seconds between scheduled online backups of the database (0: none)",
        0.0,
        non_negative_float,
        metavar="SECONDS",
    ),
    Option(
        "backup-keep",
        "how many scheduled backups to keep (older ones are deleted)",
        "7",
        positive_int,
        metavar="N",
    ),
    Option(
        "backup-dir",
        "directory for scheduled and pre-migration backups (default: DATA_DIR/backups)",
        None,
        expand_path,
        metavar="DIR",
    ),
    Option(
        "metrics-public",
        "serve /metrics on the REST API port without the admin token (for a scraper that "
        "cannot send one)",
        False,
        switch=True,
    ),
    Option(
        "shutdown-grace",
        "seconds to drain open streams and requests on shutdown",
        5.0,
        non_negative_float,
        metavar="SECONDS",
    ),
    *LOG_OPTIONS,
)


@dataclass(frozen=True)
class HubConfig:
    data_dir: Path
    http_listen: HostPort
    link_listen: HostPort
    insecure_dev: bool
    commit_interval_s: float
    shutdown_grace_s: float
    log_level: str
    log_format: str
    admin_token: str
    enroll_listen: HostPort
    link_names: tuple[str, ...] = ()
    cert_lifetime_days: float = 30.0
    checkin_deadline_s: float = 30.0
    cors_origins: tuple[str, ...] = ()
    admin_token_generated: bool = False
    http_tls: str = "auto"
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    souls_dir: Path | None = None  # <role-slug>.md files: role souls for workers
    backup_interval_s: float = 0.0
    backup_keep: int = 7
    backup_dir_setting: Path | None = None  # None: DATA_DIR/backups
    metrics_public: bool = False
    database: str = ""  # a --database URL; "" is the SQLite file in the data directory

    @property
    def database_url(self) -> str:
        return self.database or sqlite_url(self.data_dir / "hub.sqlite3")

    @property
    def on_sqlite(self) -> bool:
        return sqlite_path(self.database_url) is not None

    @property
    def backup_dir(self) -> Path:
        return self.backup_dir_setting or self.data_dir / "backups"

    @property
    def http_uses_tls(self) -> bool:
        """Whether the REST API is served over TLS (see --http-tls)."""
        if self.http_tls == "on" or self.http_tls_cert is not None:
            return True
        return self.http_tls == "auto" and not self.http_listen.is_loopback

    @property
    def database_path(self) -> Path:
        """The SQLite file (backups, doctor); with PostgreSQL, where it would be."""
        return sqlite_path(self.database_url) or self.data_dir / "hub.sqlite3"

    def validate(self) -> None:
        if self.backup_interval_s > 0 and not self.on_sqlite:
            raise SettingsError(
                "--backup-interval copies the SQLite file; a PostgreSQL store is backed up "
                "with PostgreSQL's own tools (pg_dump, or base backups with WAL archiving): "
                "drop --backup-interval or use an sqlite:/// database"
            )
        if self.insecure_dev and not self.link_listen.is_loopback:
            raise SettingsError(
                f"--insecure-dev refuses to serve the link on {self.link_listen}: without TLS "
                "the link may only listen on a loopback address (127.0.0.1 or [::1])"
            )
        if (
            not self.insecure_dev
            and self.enroll_listen == self.link_listen
            and self.link_listen.port != 0
        ):
            raise SettingsError(
                "--enroll-listen and --link-listen must differ: enrollment is server-only TLS, "
                "the link requires a client certificate"
            )
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            raise SettingsError("--http-tls-cert and --http-tls-key go together: give both")
        if self.http_tls_cert is not None and self.http_tls in ("off", "proxy"):
            raise SettingsError(
                f"--http-tls {self.http_tls} with --http-tls-cert: drop the certificate, or use "
                "--http-tls on"
            )
        if self.http_tls == "off" and not self.http_listen.is_loopback:
            raise SettingsError(
                f"--http-tls off refuses to serve the REST API on {self.http_listen} in plain "
                "HTTP: admin and agent tokens would cross the network readable. Use --http-tls "
                "auto (TLS from the hub's CA, or --http-tls-cert), or --http-tls proxy when a "
                "TLS-terminating proxy stands in front"
            )
        if self.http_uses_tls and self.insecure_dev and self.http_tls_cert is None:
            raise SettingsError(
                f"the REST API on {self.http_listen} needs TLS, and --insecure-dev has no CA to "
                "issue a certificate: listen on loopback, give --http-tls-cert/--http-tls-key, "
                "or use --http-tls proxy behind a TLS proxy"
            )
        if self.souls_dir is not None and not self.souls_dir.is_dir():
            raise SettingsError(
                f"--souls-dir {self.souls_dir} is not a directory; point it at a directory of "
                "<role-slug>.md files, or leave it out"
            )
        if len(self.admin_token) < MIN_ADMIN_TOKEN_CHARS:
            raise SettingsError(
                f"{ADMIN_TOKEN_ENV} is {len(self.admin_token)} characters; it must be at least "
                f"{MIN_ADMIN_TOKEN_CHARS} (generate one with: python3 -c "
                "'import secrets; print(secrets.token_urlsafe(48))')"
            )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file with any of the keys below [env {ENV_PREFIX}CONFIG]",
    )
    add_options(parser, SERVE_OPTIONS, ENV_PREFIX)


def load_admin_token(data_dir: Path, environ: Mapping[str, str]) -> tuple[str, bool]:
    """The admin token from the environment, else from (or newly into) the data directory."""
    from_env = environ.get(ADMIN_TOKEN_ENV, "").strip()
    if from_env:
        return from_env, False
    path = data_dir / ADMIN_TOKEN_FILE
    if os.path.lexists(path):
        try:
            # A secret others could read is treated as leaked, like the hub's key files.
            return read_private_file(path).decode("utf-8").strip(), False
        except (InsecurePermissionsError, UnicodeDecodeError) as exc:
            raise SettingsError(f"admin token file: {exc}") from None
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(48)  # 64 characters, 384 bits
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, True


def resolve_settings(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """Every serve setting from flags, environment and the config file (the commands that
    take only some flags, such as backup, read the same file)."""
    file_path = config_path_from(args, environ, ENV_PREFIX + "CONFIG")
    return resolve(SERVE_OPTIONS, args, environ, ENV_PREFIX, load_config_file(file_path), file_path)


def build_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> HubConfig:
    values = resolve_settings(args, environ)
    data_dir: Path = values["data_dir"]
    token, generated = load_admin_token(data_dir, environ)
    config = HubConfig(
        data_dir=data_dir,
        http_listen=values["http_listen"],
        link_listen=values["link_listen"],
        insecure_dev=values["insecure_dev"],
        commit_interval_s=values["commit_interval"],
        shutdown_grace_s=values["shutdown_grace"],
        log_level=values["log_level"],
        log_format=values["log_format"],
        admin_token=token,
        admin_token_generated=generated,
        enroll_listen=values["enroll_listen"],
        link_names=values["link_names"],
        cert_lifetime_days=values["cert_lifetime_days"],
        checkin_deadline_s=values["checkin_deadline"],
        cors_origins=values["cors_origins"],
        http_tls=values["http_tls"],
        http_tls_cert=values["http_tls_cert"],
        http_tls_key=values["http_tls_key"],
        souls_dir=values["souls_dir"],
        backup_interval_s=values["backup_interval"],
        backup_keep=values["backup_keep"],
        backup_dir_setting=values["backup_dir"],
        metrics_public=values["metrics_public"],
        database=values["database"],
    )
    config.validate()
    return config
