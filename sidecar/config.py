"""SidecarConfig: every setting of mc-sidecar, built once from flags, environment and a file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from missioncontrol.agent_api import DEFAULT_AGENT_API_LISTEN
from missioncontrol.netaddr import HostPort
from missioncontrol.settings import (
    LOG_OPTIONS,
    Option,
    SettingsError,
    add_options,
    config_path_from,
    expand_path,
    load_config_file,
    resolve,
)

ENV_PREFIX = "MC_SIDECAR_"

RUN_OPTIONS = (
    Option(
        "hub",
        "address of the hub's link listener; several, comma-separated, for hubs sharing one "
        "database (the link moves to the next after a failure)",
        None,
        lambda text: tuple(
            HostPort.parse(part.strip()) for part in text.split(",") if part.strip()
        ),
        metavar="HOST:PORT[,HOST:PORT...]",
    ),
    Option(
        "state-dir",
        "directory for local state, identity and queued heartbeats",
        "~/.mc-sidecar",
        expand_path,
        metavar="DIR",
    ),
    Option(
        "openclaw-config",
        "the gateway's openclaw.json",
        "~/.openclaw/openclaw.json",
        expand_path,
        metavar="FILE",
    ),
    Option(
        "workspace-root",
        "directory agent workspaces are created in (default: the directory of --openclaw-config)",
        None,
        expand_path,
        metavar="DIR",
    ),
    Option(
        "agent-api-listen",
        "loopback address of the local agent API",
        DEFAULT_AGENT_API_LISTEN,
        HostPort.parse,
        metavar="HOST:PORT",
    ),
    Option(
        "metrics-listen",
        "address of GET /metrics (Prometheus), or off; it has no authentication, so keep it "
        "on loopback unless a firewall guards it",
        "127.0.0.1:18791",
        lambda text: None if text.strip().lower() in ("off", "") else HostPort.parse(text),
        metavar="HOST:PORT|off",
    ),
    Option(
        "gateway-id",
        "gateway id to present in --insecure-dev mode (default: generated "
        "once into the state directory)",
        None,
        metavar="ID",
    ),
    Option(
        "insecure-dev",
        "connect to the hub without TLS; loopback hub addresses only",
        False,
        switch=True,
    ),
    Option(
        "restore-removed-entries",
        "put back managed agent entries removed from openclaw.json by hand",
        True,
        switch=True,
    ),
    *LOG_OPTIONS,
)


@dataclass(frozen=True)
class SidecarConfig:
    hub: HostPort
    state_dir: Path
    openclaw_config: Path
    workspace_root: Path
    agent_api_listen: HostPort
    gateway_id: str | None
    insecure_dev: bool
    restore_removed_entries: bool
    log_level: str
    log_format: str
    # No --workspace-root was given: use the root the hub declares for this gateway.
    follows_hub_workspace_root: bool = False
    metrics_listen: HostPort | None = None  # None: no /metrics listener
    more_hubs: tuple[HostPort, ...] = ()  # after `hub`, tried in turn after a failure

    @property
    def hubs(self) -> tuple[HostPort, ...]:
        return (self.hub, *self.more_hubs)

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.sqlite3"

    def validate(self) -> None:
        for hub in self.hubs:
            if self.insecure_dev and not hub.is_loopback:
                raise SettingsError(
                    f"--insecure-dev refuses hub address {hub}: without TLS the link may only "
                    "go to a loopback address (127.0.0.1 or [::1])"
                )
        if not self.agent_api_listen.is_loopback:
            raise SettingsError(
                f"--agent-api-listen {self.agent_api_listen}: the local agent API only listens "
                "on loopback (agents call it from the same host)"
            )
        if not self.workspace_root.is_absolute():
            raise SettingsError(f"--workspace-root {self.workspace_root} must be absolute")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file with any of the keys below [env {ENV_PREFIX}CONFIG]",
    )
    add_options(parser, RUN_OPTIONS, ENV_PREFIX)


def resolve_settings(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """Every run setting from flags, environment and the config file."""
    file_path = config_path_from(args, environ, ENV_PREFIX + "CONFIG")
    return resolve(RUN_OPTIONS, args, environ, ENV_PREFIX, load_config_file(file_path), file_path)


def saved_hub(state_dir: Path) -> HostPort | None:
    """The hub address `mc-sidecar enroll` saved, if any."""
    hub_file = state_dir / "hub-link"
    return HostPort.parse(hub_file.read_text()) if hub_file.exists() else None


def build_config(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> SidecarConfig:
    values = resolve_settings(args, environ)
    hubs: tuple[HostPort, ...] = values["hub"] or ()
    if not hubs and not values["insecure_dev"]:
        saved = saved_hub(values["state_dir"])
        hubs = () if saved is None else (saved,)
    if not hubs:
        raise SettingsError(
            f"--hub HOST:PORT is required (or {ENV_PREFIX}HUB, or file key hub), unless this "
            "sidecar was enrolled with `mc-sidecar enroll`"
        )
    openclaw_config: Path = values["openclaw_config"].absolute()
    config = SidecarConfig(
        hub=hubs[0],
        more_hubs=hubs[1:],
        state_dir=values["state_dir"].absolute(),
        openclaw_config=openclaw_config,
        workspace_root=(values["workspace_root"] or openclaw_config.parent).absolute(),
        agent_api_listen=values["agent_api_listen"],
        gateway_id=values["gateway_id"],
        insecure_dev=values["insecure_dev"],
        restore_removed_entries=values["restore_removed_entries"],
        log_level=values["log_level"],
        log_format=values["log_format"],
        follows_hub_workspace_root=values["workspace_root"] is None,
        metrics_listen=values["metrics_listen"],
    )
    config.validate()
    return config
