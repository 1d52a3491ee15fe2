"""`mc-sidecar doctor`: the gateway host's troubleshooting steps as checks, with cause and fix.

It reads what `run` reads (flags, MC_SIDECAR_* variables, the TOML file), connects to
the gateway once as the sidecar does, and dials the hub's link port with the pinned CA;
it changes nothing and never opens a Link stream (that would replace the running
sidecar's). The clock offset to the hub is the one the running sidecar measured at its
last Welcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import os
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from missioncontrol.agent_api import HEALTHZ_PATH, TOKEN_FILE_NAME
from missioncontrol.doctor import Check, Finding, Report, fail, mode_text, ok, run_checks, warn
from missioncontrol.netaddr import HostPort
from missioncontrol.private_files import InsecurePermissionsError, check_private_file
from protos.contract import GatewayGeneration
from sidecar.config import saved_hub
from sidecar.gateway import GatewayUnavailable
from sidecar.gateway.connection import ConnectionPolicy, GatewayConnection
from sidecar.gateway.protocol import (
    ClientIdentity,
    GatewayConnectRefused,
    GatewayScopesCleared,
    Hello,
)
from sidecar.link.identity import (
    CA_FILE,
    IDENTITY_FILE,
    REENROLL_HINT,
    IdentityError,
    NotEnrolledError,
    load_identity,
)
from sidecar.openclaw_config import (
    ConfigInvalid,
    InvalidKind,
    OpenClawConfig,
    is_newer,
    read_config,
)
from sidecar.state import LocalState

# OpenClaw releases the interop suite runs against (README: OpenClaw versions).
TESTED_OPENCLAW = ("2026.9", "2026.3")


@dataclass(frozen=True)
class DoctorPolicy:
    gateway_timeout_s: float = 5.0
    hub_timeout_s: float = 5.0
    cert_warn_days: float = 7.0
    skew_warn_s: float = 5.0
    skew_fail_s: float = 60.0


@dataclass(frozen=True)
class SidecarDoctorInput:
    hub: HostPort | None
    state_dir: Path
    openclaw_config: Path
    workspace_root: Path
    agent_api_listen: HostPort
    insecure_dev: bool
    environ: Mapping[str, str] = field(default_factory=dict)
    identity: ClientIdentity = field(default_factory=ClientIdentity)  # tests change it

    @classmethod
    def from_settings(
        cls, values: Mapping[str, Any], environ: Mapping[str, str]
    ) -> SidecarDoctorInput:
        state_dir: Path = values["state_dir"].absolute()
        openclaw: Path = values["openclaw_config"].absolute()
        given = values["hub"] or ()  # several: the first is checked
        hub = given[0] if given else (None if values["insecure_dev"] else saved_hub(state_dir))
        return cls(
            hub=hub,
            state_dir=state_dir,
            openclaw_config=openclaw,
            workspace_root=(values["workspace_root"] or openclaw.parent).absolute(),
            agent_api_listen=values["agent_api_listen"],
            insecure_dev=bool(values["insecure_dev"]),
            environ=environ,
        )


class SidecarDoctor:
    def __init__(self, given: SidecarDoctorInput, policy: DoctorPolicy | None = None) -> None:
        self.given = given
        self.policy = policy or DoctorPolicy()
        self.config: OpenClawConfig | None = None
        self.hello: Hello | None = None
        self.installs: list[tuple[Path, str]] = []

    async def run(self) -> Report:
        checks: list[tuple[str, Check]] = [
            ("openclaw.config", self.check_config),
            ("openclaw.installs", self.check_installs),
            ("gateway.reachable", self.check_gateway),
            ("openclaw.last_touched_version", self.check_stamp),
            ("workspace.root", self.check_workspace_root),
            ("files.modes", self.check_modes),
            ("link.certificate", self.check_certificate),
            ("hub.reachable", self.check_hub),
            ("hub.clock_skew", self.check_skew),
            ("agent_api.port", self.check_agent_api),
            ("openclaw.managed_entries", self.check_managed_entries),
        ]
        return await run_checks("mc-sidecar", checks)

    # ------------------------------------------------------------ openclaw.json

    def check_config(self) -> Finding:
        path = self.given.openclaw_config
        parsed = read_config(path)
        if isinstance(parsed, ConfigInvalid):
            return fail(
                "openclaw.config", f"{path} cannot be used", parsed.message, _config_fix(parsed)
            )
        self.config = parsed
        if not parsed.token:
            return fail(
                "openclaw.config",
                f"{path} has no gateway.auth.token",
                "the sidecar connects with the gateway's shared token, read from this file",
                'set gateway.auth = {"mode": "token", "token": "<a long random secret>"} and '
                "restart the gateway",
            )
        return ok(
            "openclaw.config",
            f"{path}: valid, {len(parsed.managed_entries())} managed entries, gateway port "
            f"{parsed.port}",
        )

    def check_installs(self) -> Finding:
        self.installs = openclaw_installs(
            self.given.environ.get("PATH", os.environ.get("PATH", ""))
        )
        if not self.installs:
            return warn(
                "openclaw.installs",
                "no `openclaw` on PATH",
                "the gateway may run from elsewhere (a service with its own PATH); doctor "
                "cannot tell which version the next restart runs",
                "put the OpenClaw the gateway runs with first on PATH, or ignore this when "
                "the service names it by absolute path",
            )
        if len(self.installs) > 1:
            listed = ", ".join(f"{p} ({v or 'version unknown'})" for p, v in self.installs)
            return warn(
                "openclaw.installs",
                f"{len(self.installs)} OpenClaw installs on PATH: {listed}",
                "a shell and the gateway service can run different versions; the newer one "
                "stamps meta.lastTouchedVersion and the older one then refuses to start",
                f"remove the ones you do not run (`npm uninstall -g openclaw` for a global "
                f"install) so only {self.installs[0][0]} remains, or make the service use it",
            )
        path, version = self.installs[0]
        return ok("openclaw.installs", f"one OpenClaw on PATH: {path} ({version or 'unknown'})")

    async def check_gateway(self) -> list[Finding]:
        if self.config is None:
            return [ok("gateway.reachable", "skipped: openclaw.json cannot be used")]
        connection = GatewayConnection(
            self.given.openclaw_config,
            ConnectionPolicy(connect_timeout_s=self.policy.gateway_timeout_s),
            identity=self.given.identity,
        )
        await connection.start()
        try:
            try:
                info = await connection.wait_ready(self.policy.gateway_timeout_s)
            except GatewayScopesCleared as exc:
                return [
                    ok("gateway.reachable", "the gateway answers and accepts the token"),
                    fail(
                        "gateway.scopes",
                        "the gateway cleared the connection's scopes: every call would fail "
                        "with `missing scope: operator.read`",
                        str(exc),
                        "keep the sidecar's default identity (gateway-client/backend, no Origin "
                        "header) and dial loopback; do not put a proxy in front of the "
                        "gateway's port, and do not set dangerouslyDisableDeviceAuth",
                    ),
                ]
            except GatewayConnectRefused as exc:
                return [
                    fail(
                        "gateway.reachable",
                        f"the gateway on port {self.config.port} refused the sidecar ({exc.code})",
                        str(exc),
                        _refusal_fix(exc, self.given.openclaw_config),
                    )
                ]
            except GatewayUnavailable as exc:
                return [
                    fail(
                        "gateway.reachable",
                        f"no gateway answers on {self.config.connect_host}:{self.config.port}",
                        str(exc),
                        "start it (`openclaw gateway run`, or `systemctl --user start "
                        "openclaw-gateway` for a service) and check that gateway.port in "
                        f"{self.given.openclaw_config} is the port it listens on",
                    )
                ]
            self.hello = connection.hello
        finally:
            await connection.stop()
        findings = [
            ok(
                "gateway.reachable",
                f"gateway {info.version} on port {self.config.port}, protocol {info.protocol}",
                version=info.version,
                protocol=info.protocol,
            ),
            ok("gateway.scopes", "the handshake kept operator.admin"),
        ]
        findings.append(_version_finding(info.version, info.generation))
        return findings

    def check_stamp(self) -> Finding:
        check = "openclaw.last_touched_version"
        if self.config is None:
            return ok(check, "skipped: openclaw.json cannot be used")
        stamp = self.config.last_touched_version
        if not stamp:
            return ok(check, "meta.lastTouchedVersion is not set (no gateway wrote the file yet)")
        running = self.hello.version if self.hello else ""
        installed = self.installs[0][1] if self.installs else ""
        if running:
            against, what = running, "the running gateway"
        else:
            against, what = installed, "the OpenClaw on PATH"
        if not against:
            return ok(check, f"meta.lastTouchedVersion {stamp} (no gateway version to compare)")
        if is_newer(stamp, against):
            return fail(
                check,
                f"meta.lastTouchedVersion {stamp} is newer than {what} ({against})",
                f"OpenClaw {stamp} wrote this file; OpenClaw {against} refuses to start on it "
                '("Refusing to run automatic gateway startup migrations because this OpenClaw '
                'binary is older than the config last written by …"), so the next restart '
                "of the gateway fails",
                f"run OpenClaw {stamp} or newer (`npm install -g openclaw@{stamp}`, then "
                "restart the gateway); if that version touched the file by mistake, set "
                f'meta.lastTouchedVersion to "{against}" in {self.given.openclaw_config}',
                stamp=stamp,
                gateway=against,
            )
        return ok(check, f"meta.lastTouchedVersion {stamp}, not newer than {what} ({against})")

    # ------------------------------------------------------------ files

    def check_workspace_root(self) -> Finding:
        root = self.given.workspace_root
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".mc-doctor-"):
                pass
        except OSError as exc:
            return fail(
                "workspace.root",
                f"cannot write in the workspace root {root}",
                exc.strerror or str(exc),
                f"make {root} a directory the sidecar's user owns (`mkdir -p {root} && chown "
                f"$(id -un) {root}`), or choose another with --workspace-root",
            )
        return ok("workspace.root", f"{root} is writable")

    def check_modes(self) -> list[Finding]:
        findings: list[Finding] = []
        state_dir = self.given.state_dir
        if state_dir.is_dir():
            mode = stat.S_IMODE(state_dir.stat().st_mode)
            if mode & 0o077:
                findings.append(
                    warn(
                        "files.modes",
                        f"{state_dir} is mode {mode_text(mode)}",
                        "it holds the link key and the agents' token verifiers",
                        f"chmod 700 {state_dir} (the sidecar also tightens it at start)",
                    )
                )
        secrets = [state_dir / IDENTITY_FILE]
        for agent in self._state_agents():
            secrets.append(Path(agent.workspace) / TOKEN_FILE_NAME)
        for path in secrets:
            if not path.exists():
                continue
            try:
                check_private_file(path)
            except InsecurePermissionsError as exc:
                findings.append(
                    fail(
                        "files.modes",
                        f"{path} is readable by others",
                        "a key or agent token other users can read must be treated as leaked",
                        str(exc),
                    )
                )
        config = self.given.openclaw_config
        if config.exists():
            mode = stat.S_IMODE(config.stat().st_mode)
            if mode & 0o077:
                findings.append(
                    warn(
                        "files.modes",
                        f"{config} is mode {mode_text(mode)}",
                        "it holds the gateway's shared token (the gateway writes it 0600)",
                        f"chmod 600 {config}",
                    )
                )
        if not findings:
            findings.append(ok("files.modes", "keys, token files and openclaw.json are private"))
        return findings

    # ------------------------------------------------------------ the hub

    def check_certificate(self) -> Finding:
        check = "link.certificate"
        if self.given.insecure_dev:
            return warn(
                check,
                "insecure-dev: the link has no TLS",
                "any local process can act as any gateway",
                "for anything but development enroll with `mc-sidecar enroll --hub HOST:7444 "
                "--token T` and run without --insecure-dev",
            )
        try:
            identity = load_identity(self.given.state_dir)
        except NotEnrolledError as exc:
            return fail(
                check,
                "this sidecar is not enrolled",
                str(exc),
                "on the hub: `mc-hub gateway join-token GATEWAY` (or POST /api/v1/gateways); "
                "here: `mc-sidecar enroll --hub HUB:7444 --token '<join token>'`",
            )
        except IdentityError as exc:
            return fail(
                check, "no usable link identity", str(exc), f"enroll again: {REENROLL_HINT}"
            )
        left = identity.not_after - dt.datetime.now(dt.UTC)
        days = left.total_seconds() / 86400
        if days <= 0:
            return fail(
                check,
                f"the certificate for gateway {identity.gateway_id} expired {-days:.1f} days ago",
                "renewal happens over the link and needs a valid certificate, so the hub "
                "refuses this sidecar until it enrolls again",
                f"on the hub: `mc-hub gateway join-token {identity.gateway_id}`; here: "
                f"{REENROLL_HINT}",
                days_left=round(days, 2),
            )
        if days < self.policy.cert_warn_days:
            return warn(
                check,
                f"the certificate for gateway {identity.gateway_id} expires in {days:.1f} days",
                "it is renewed over the link at 70-90 % of its lifetime; this close to the end "
                "the sidecar has not been connected when it was due",
                "keep the sidecar connected (see hub.reachable); if it expires first: "
                f"{REENROLL_HINT}",
                days_left=round(days, 2),
            )
        return ok(
            check,
            f"certificate for gateway {identity.gateway_id} valid for {days:.1f} more days",
            days_left=round(days, 2),
            gateway_id=identity.gateway_id,
        )

    async def check_hub(self) -> Finding:
        check = "hub.reachable"
        hub = self.given.hub
        if hub is None:
            return fail(
                check,
                "no hub address",
                "neither --hub (MC_SIDECAR_HUB, file key hub) nor an enrollment names one",
                "enroll (`mc-sidecar enroll --hub HOST:7444 --token T`) or pass --hub HOST:7443",
            )
        try:
            await asyncio.to_thread(
                _probe_hub,
                hub,
                self.given.state_dir,
                not self.given.insecure_dev,
                self.policy.hub_timeout_s,
            )
        except HubProbeError as exc:
            return fail(
                check, f"the hub's link at {hub} is not usable ({exc.stage})", exc.cause, exc.fix
            )
        how = "TCP" if self.given.insecure_dev else "TCP and mutual TLS with the pinned CA"
        return ok(check, f"the hub's link at {hub} answers ({how})")

    def check_skew(self) -> Finding:
        check = "hub.clock_skew"
        measured = None
        with contextlib.suppress(Exception):
            if self.given.state_dir.joinpath("state.sqlite3").exists():
                state = LocalState(self.given.state_dir / "state.sqlite3")
                try:
                    measured = state.hub_clock()
                finally:
                    state.close()
        if measured is None:
            return warn(
                check,
                "not measured yet",
                "the sidecar measures the hub's clock at each connect and has not connected",
                "start the sidecar (`mc-sidecar run`) and see hub.reachable",
            )
        skew, at = measured
        age = time.time() - at
        summary = f"the hub's clock is {skew:+.1f} s from this host's (measured {age:.0f} s ago)"
        fix = (
            "turn on time sync on both hosts: `timedatectl set-ntp true` (systemd-timesyncd) "
            "or chrony/ntpd; check with `timedatectl status`"
        )
        if abs(skew) >= self.policy.skew_fail_s:
            return fail(
                check,
                summary,
                "certificates look not yet valid or expired to one side, and heartbeat times "
                "are clamped to the hub's clock, which skews presence",
                fix,
                skew_s=skew,
            )
        if abs(skew) >= self.policy.skew_warn_s:
            return warn(
                check, summary, "heartbeat and run times drift against the hub's", fix, skew_s=skew
            )
        return ok(check, summary, skew_s=skew)

    # ------------------------------------------------------------ local

    async def check_agent_api(self) -> Finding:
        check = "agent_api.port"
        address = self.given.agent_api_listen
        url = f"http://{address}{HEALTHZ_PATH}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
                session.get(url) as response,
            ):
                body = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return _free_or_taken(address)
        if response.status == 401 and "request_id" in body:
            return ok(check, f"the sidecar's agent API answers on {address}")
        return fail(
            check,
            f"something else answers on {address} (HTTP {response.status})",
            "the port agents heartbeat to is held by another program, so their heartbeats "
            "never reach the sidecar",
            f"stop that program (`ss -ltnp 'sport = :{address.port}'` names it) or move the "
            "sidecar with --agent-api-listen (agents learn the new port from their files)",
        )

    def check_managed_entries(self) -> Finding:
        check = "openclaw.managed_entries"
        if self.config is None:
            return ok(check, "skipped: openclaw.json cannot be used")
        agents = self._state_agents()
        present = self.config.entries
        missing = sorted(a.agent_id for a in agents if a.agent_id not in present)
        if missing:
            return fail(
                check,
                f"{len(missing)} of {len(agents)} managed agents have no entry in "
                f"{self.given.openclaw_config}: {', '.join(missing[:10])}",
                "the gateway does not run them: an entry was removed by hand, or the file was "
                "replaced (a restore of openclaw.json, another tool)",
                "a running sidecar puts them back (unless --no-restore-removed-entries); "
                'otherwise re-apply from the hub: `curl -X POST -H "Authorization: Bearer '
                '$TOKEN" "$API/gateways/GATEWAY/templates/sync"`',
                missing=missing,
            )
        return ok(check, f"all {len(agents)} managed agents have their entry")

    def _state_agents(self) -> list[Any]:
        path = self.given.state_dir / "state.sqlite3"
        if not path.exists():
            return []
        state = LocalState(path)
        try:
            return state.agents()
        finally:
            state.close()


# ------------------------------------------------------------------ helpers


def openclaw_installs(path_env: str) -> list[tuple[Path, str]]:
    """Every distinct `openclaw` executable on PATH, in PATH order, with its version."""
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for directory in path_env.split(os.pathsep):
        if not directory:
            continue
        candidate = Path(directory) / "openclaw"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        real = candidate.resolve()
        if real in seen:
            continue
        seen.add(real)
        found.append((candidate, _package_version(real)))
    return found


def _package_version(real: Path) -> str:
    """The version in the package.json above an install's entry point, if any."""
    for parent in list(real.parents)[:6]:
        for package in (parent / "package.json", parent / "node_modules/openclaw/package.json"):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                data = json.loads(package.read_text(encoding="utf-8"))
                if data.get("name") == "openclaw":
                    return str(data.get("version") or "")
    return ""


def _config_fix(invalid: ConfigInvalid) -> str:
    path = invalid.path
    if invalid.kind is InvalidKind.UNREADABLE:
        return (
            f"check --openclaw-config (now {path}) and that this user can read it; the gateway "
            "writes it under its state directory (~/.openclaw/openclaw.json by default)"
        )
    if invalid.kind is InvalidKind.SYNTAX:
        return (
            f"fix the syntax at the place named above in {path} (it is JSON5: comments and "
            "trailing commas are fine, a missing quote, comma or brace is not); until then the "
            f"gateway ignores every edit and keeps its last good config ({path.name}.last-good "
            "beside it)"
        )
    return (
        f"fix the structure named above in {path}; `openclaw doctor` explains the gateway's "
        "own rules, and the last good copy is beside it (.last-good)"
    )


def _refusal_fix(exc: GatewayConnectRefused, config: Path) -> str:
    if exc.code == "gateway_token_mismatch":
        return (
            f"make gateway.auth.token in {config} the token the gateway runs with (or restart "
            "a gateway started with --token / OPENCLAW_GATEWAY_TOKEN)"
        )
    if exc.code == "gateway_protocol_mismatch":
        return "run a supported OpenClaw (2026.3 or 2026.9), or upgrade the sidecar"
    if exc.code == "gateway_not_paired":
        return f'set gateway.auth = {{"mode": "token", "token": …}} in {config}'
    return "see the cause; the sidecar's log (`gateway.handshake.failed`) has the same text"


def _version_finding(version: str, generation: GatewayGeneration) -> Finding:
    if generation is GatewayGeneration.UNKNOWN:
        return fail(
            "gateway.version",
            f"OpenClaw {version or '(no version)'} speaks a protocol this sidecar does not know",
            "the sidecar tells generations apart by protocol and methods; this is neither the "
            "2026.3 nor the current generation",
            "run OpenClaw 2026.9.x (or 2026.3.x), or upgrade mc-sidecar",
        )
    if not version.startswith(tuple(v + "." for v in TESTED_OPENCLAW)):
        return warn(
            "gateway.version",
            f"OpenClaw {version} is not a release the sidecar is tested with "
            f"({', '.join(v + '.x' for v in TESTED_OPENCLAW)})",
            "its config schema or methods may differ",
            "prefer a tested release (`npm install -g openclaw@2026.9.6`); report what fails",
        )
    return ok("gateway.version", f"OpenClaw {version} is supported ({generation.name})")


def _free_or_taken(address: HostPort) -> Finding:
    check = "agent_api.port"
    try:
        sock = socket.create_server((address.host, address.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return fail(
                check,
                f"{address} is taken by a program that does not speak HTTP",
                "agents cannot reach the sidecar there, and the sidecar cannot start",
                f"stop that program (`ss -ltnp 'sport = :{address.port}'` names it) or choose "
                "another address with --agent-api-listen",
            )
        return fail(
            check,
            f"cannot listen on {address}",
            exc.strerror or str(exc),
            "choose a loopback address with --agent-api-listen",
        )
    sock.close()
    return warn(
        check,
        f"nothing listens on {address}: the sidecar is not running",
        "agents' heartbeats fail until it runs",
        "start it: `systemctl --user start mc-sidecar` (or `mc-sidecar run`)",
    )


class HubProbeError(Exception):
    def __init__(self, stage: str, cause: str, fix: str) -> None:
        super().__init__(cause)
        self.stage = stage
        self.cause = cause
        self.fix = fix


def _probe_hub(hub: HostPort, state_dir: Path, tls: bool, timeout_s: float) -> None:
    """TCP, then (mTLS) a TLS handshake trusting only the pinned CA, presenting our cert."""
    try:
        raw = socket.create_connection((hub.host, hub.port), timeout=timeout_s)
    except OSError as exc:
        raise HubProbeError(
            "TCP",
            f"cannot connect to {hub}: {exc.strerror or exc}",
            "check that mc-hub runs there and listens on that address (--link-listen; "
            "0.0.0.0 to accept other hosts), and that no firewall drops the port",
        ) from None
    if not tls:
        raw.close()
        return
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(state_dir / CA_FILE))
    context.set_alpn_protocols(["h2"])
    identity_file = state_dir / IDENTITY_FILE
    with contextlib.suppress(OSError, ssl.SSLError):
        context.load_cert_chain(str(identity_file))
    try:
        with context.wrap_socket(raw, server_hostname=hub.host) as tls_socket:
            tls_socket.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            raise HubProbeError(
                "TLS",
                f"the hub's certificate does not name {hub.host} ({reason})",
                f"on the hub add it: `--link-names {hub.host}` (and restart the hub), or dial "
                "a name the certificate has",
            ) from None
        raise HubProbeError(
            "TLS",
            f"the hub's certificate is not signed by the CA this sidecar pinned at enrollment "
            f"({reason})",
            "the hub's CA changed (a new data directory, or another hub answers there): "
            f"enroll again with {REENROLL_HINT}",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise HubProbeError(
            "TLS",
            f"the TLS handshake with {hub} failed: {exc}",
            "check that the address is the hub's --link-listen (not its REST API), and that "
            "this sidecar's certificate is valid (see link.certificate)",
        ) from None
