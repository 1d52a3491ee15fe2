"""`mc-hub rollout ...` and `mc-hub fleet ...`: the fleet from a terminal.

They call the running hub's REST API (a rollout is driven by the hub, not by the
command), found from the same settings `serve` reads: its HTTP address, and its admin
token from $MC_ADMIN_TOKEN or the data directory. `--hub-url` points elsewhere. With a
terminal, `--watch` draws a progress bar; otherwise it prints one plain line per change.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from hub.config import ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE, ENV_PREFIX, SERVE_OPTIONS
from missioncontrol.settings import SettingsError, add_options

COMMANDS = ("rollout", "fleet")
FINISHED = ("halted", "aborted", "completed", "rolled_back")
HTTP_TIMEOUT_S = 30.0


class CliError(Exception):
    """What the command could not do; the message says the fix."""


def add_fleet_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="staged rollouts across the fleet (through the running hub)",
        description="Start and steer staged rollouts: one change to the gateways a label "
        "selector picks, in waves (a canary, then growing percentages), each gated on the "
        "health the hub sees. The running hub drives them; these commands call its API.",
    )
    verbs = rollout.add_subparsers(dest="rollout_command", metavar="COMMAND", required=True)
    start = verbs.add_parser("start", help="start a rollout (or --dry-run to see its waves)")
    start.add_argument("--selector", default="", help="gateways by label: env=prod,region!=us")
    change = start.add_mutually_exclusive_group(required=True)
    change.add_argument("--heartbeat-every", metavar="EVERY", help="a heartbeat cadence, e.g. 15m")
    change.add_argument("--soul-template", metavar="FILE", help="a SOUL.md template to use")
    change.add_argument("--identity-template", metavar="FILE", help="an IDENTITY.md template")
    change.add_argument(
        "--reapply", action="store_true", help="render and apply the agents' files again"
    )
    change.add_argument(
        "--create-agents",
        metavar="FILE",
        help="a JSON list of agents to create on every gateway (as POST /api/v1/agents "
        "takes them, with `board` naming the board on each gateway, or none for its main)",
    )
    start.add_argument("--agents", choices=("main", "all"), default="main")
    start.add_argument("--canary", type=int, default=1, help="gateways in the first wave [1]")
    start.add_argument(
        "--waves", default="10,50,100", help="cumulative percentages after the canary [10,50,100]"
    )
    start.add_argument("--max-fail-percentage", type=float, default=0.0)
    start.add_argument("--gate-deadline", type=float, default=120.0, metavar="SECONDS")
    start.add_argument("--name", default="")
    start.add_argument("--dry-run", action="store_true", help="list the waves; change nothing")
    start.add_argument("--watch", action="store_true", help="follow it until it finishes")
    _client_options(start)
    status = verbs.add_parser("status", help="a rollout's waves and gateways (or list them)")
    status.add_argument("rollout_id", nargs="?", metavar="ID")
    status.add_argument("--watch", action="store_true", help="follow it until it finishes")
    _client_options(status)
    for verb, text in (
        ("pause", "stop applying (gates are still judged)"),
        ("resume", "go on with a paused rollout"),
        ("abort", "apply nothing more; applied gateways keep the change"),
        ("rollback", "re-apply the previous values on every gateway it changed"),
    ):
        command = verbs.add_parser(verb, help=text)
        command.add_argument("rollout_id", metavar="ID")
        _client_options(command)

    fleet = commands.add_parser("fleet", help="the fleet's inventory (through the running hub)")
    views = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    versions = views.add_parser("versions", help="sidecar and OpenClaw versions, and skew")
    versions.add_argument("--selector", default="")
    _client_options(versions)
    inventory = views.add_parser("inventory", help="every gateway: versions, labels, link")
    inventory.add_argument("--selector", default="")
    _client_options(inventory)
    drift = views.add_parser("drift", help="agents whose files differ from what was rendered")
    drift.add_argument("--selector", default="")
    drift.add_argument(
        "--reapply", action="store_true", help="heal them: re-apply in a rollout (waves, gates)"
    )
    _client_options(drift)
    query = views.add_parser(
        "query", help="ask every selected sidecar one question; answers as they arrive"
    )
    query.add_argument("question", choices=("status", "heartbeats", "file"))
    query.add_argument("--file", help="the workspace file, for `file` (e.g. SOUL.md)")
    query.add_argument("--selector", default="")
    query.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="the deadline [10]"
    )
    _client_options(query)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hub-url", default=None, help="the hub's API, e.g. https://hub:8080 [from its settings]"
    )
    parser.add_argument("--cacert", default=None, help="CA file for an https hub [its own CA]")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument(
        "--config", metavar="FILE", help=f"the hub's TOML settings [env {ENV_PREFIX}CONFIG]"
    )
    add_options(
        parser, [o for o in SERVE_OPTIONS if o.name in ("data-dir", "http-listen")], ENV_PREFIX
    )


def fleet_main(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    name = f"mc-hub {args.command}"
    try:
        client = HubClient.from_args(args, environ)
        if args.command == "fleet":
            return _fleet(client, args)
        return _rollout(client, args)
    except (CliError, SettingsError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class HubClient:
    def __init__(self, url: str, token: str, context: ssl.SSLContext | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.context = context

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> HubClient:
        from hub.config import resolve_settings

        values = resolve_settings(args, environ)
        data_dir: Path = values["data_dir"]
        token = environ.get(ADMIN_TOKEN_ENV, "").strip()
        if not token:
            path = data_dir / ADMIN_TOKEN_FILE
            try:
                token = path.read_text().strip()
            except OSError:
                raise CliError(
                    f"no admin token: set ${ADMIN_TOKEN_ENV}, or run where the hub's data "
                    f"directory is (--data-dir; {path} is not readable)"
                ) from None
        listen = values["http_listen"]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
        tls = values["http_tls"] == "on" or (
            values["http_tls"] == "auto" and not listen.is_loopback
        )
        url = args.hub_url or f"{'https' if tls else 'http'}://{host}:{listen.port}"
        context = None
        if url.startswith("https"):
            cafile = args.cacert or (data_dir / "ca" / "ca.crt")
            context = ssl.create_default_context(
                cafile=str(cafile) if Path(cafile).exists() else None
            )
        return cls(url, token, context)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            return json.loads(response.read() or b"null")

    def events(
        self, method: str, path: str, body: Any = None, *, quiet_s: float = HTTP_TIMEOUT_S
    ) -> Iterator[tuple[str, Any]]:
        """A server-sent event stream's (event, data) pairs, each as it arrives; `quiet_s`
        is how long the stream may stay silent."""
        with self._open(method, path, body, "text/event-stream", quiet_s) as response:
            name = "message"
            for raw in response:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event:"):
                    name = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    yield name, json.loads(line.removeprefix("data:"))
                elif not line:
                    name = "message"

    def _open(
        self,
        method: str,
        path: str,
        body: Any,
        accept: str = "application/json",
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": accept,
            },
        )
        try:
            return urllib.request.urlopen(request, timeout=timeout_s, context=self.context)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail")
            except (ValueError, AttributeError):
                detail = exc.reason
            raise CliError(f"{method} {path}: {exc.code}: {_detail(detail)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the hub at {self.url} ({reason}); is `mc-hub serve` running? "
                "point at it with --hub-url"
            ) from None


def _detail(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail)


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def rollout_body(args: argparse.Namespace) -> dict[str, Any]:
    change: dict[str, Any]
    if args.heartbeat_every:
        change = {"kind": "heartbeat", "heartbeat_config": {"every": args.heartbeat_every}}
    elif args.soul_template:
        change = {"kind": "templates", "soul_template": _read_file(args.soul_template)}
    elif args.identity_template:
        change = {"kind": "templates", "identity_template": _read_file(args.identity_template)}
    elif args.create_agents:
        try:
            agents = json.loads(_read_file(args.create_agents))
        except ValueError as exc:
            raise CliError(f"--create-agents {args.create_agents}: not JSON ({exc})") from None
        change = {"kind": "agents", "agents": agents}
    else:
        change = {"kind": "reapply"}
    try:
        waves = [float(p) for p in args.waves.split(",") if p.strip()]
    except ValueError:
        raise CliError(f"--waves {args.waves!r}: give percentages, e.g. 10,50,100") from None
    return {
        "selector": args.selector,
        "change": change,
        "name": args.name,
        "agents": args.agents,
        "canary": args.canary,
        "waves": waves,
        "max_fail_percentage": args.max_fail_percentage,
        "gate_deadline_s": args.gate_deadline,
        "dry_run": args.dry_run,
    }


def _rollout(client: HubClient, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    verb = args.rollout_command
    if verb == "start":
        body = client.call("POST", "/api/v1/rollouts", rollout_body(args))
    elif verb == "status" and not args.rollout_id:
        page = client.call("GET", "/api/v1/rollouts?limit=50")
        if args.json:
            print(json.dumps(page, indent=2), file=out)
            return 0
        for item in page["items"]:
            print(
                f"{item['id']}  {item['status']:<12} wave {item['current_wave']}/"
                f"{item['wave_count']}  {item['change']:<10} {item['selector'] or '(all)'}",
                file=out,
            )
        return 0
    elif verb == "status":
        body = client.call("GET", f"/api/v1/rollouts/{args.rollout_id}")
    else:
        body = client.call("POST", f"/api/v1/rollouts/{args.rollout_id}/{verb}")
    if args.json:
        print(json.dumps(body, indent=2), file=out)
    else:
        print(describe(body), file=out)
    if getattr(args, "watch", False) and body.get("id"):
        body = watch(client, body["id"], out)
    return 0 if body.get("status") not in ("halted", "aborted") else 3


def describe(rollout: Mapping[str, Any]) -> str:
    """A rollout in lines: its state, then each wave and its gateways."""
    head = rollout["id"] or "dry run"
    lines = [
        f"rollout {head}: {rollout['status']}, wave {rollout['current_wave']}/"
        f"{rollout['wave_count']}, {rollout['gateways']} gateway(s), change "
        f"{rollout['change'].get('kind')}, selector {rollout['selector'] or '(all)'}"
    ]
    if rollout.get("reason"):
        lines.append(f"  reason: {rollout['reason']}")
    for wave in rollout["waves"]:
        counts = ", ".join(f"{n} {s}" for s, n in wave["counts"].items() if n)
        lines.append(f"  wave {wave['index']} ({wave['size']}): {wave['state']}; {counts}")
        for gateway in wave["gateways"][:20]:
            why = f"  {gateway['reason']}" if gateway.get("reason") else ""
            busy = f"  (in rollout {gateway['busy_with']})" if gateway.get("busy_with") else ""
            lines.append(
                f"    {gateway['name'] or gateway['gateway_id']}: {gateway['state']}{why}{busy}"
            )
        if len(wave["gateways"]) > 20:
            lines.append(f"    ... and {len(wave['gateways']) - 20} more")
    return "\n".join(lines)


def progress_line(rollout: Mapping[str, Any], width: int = 30) -> str:
    counts = rollout["counts"]
    total = max(rollout["gateways"], 1)
    done = counts.get("healthy", 0) + counts.get("skipped", 0) + counts.get("rolled_back", 0)
    failed = counts.get("failed", 0)
    filled = round(width * done / total)
    marked = min(width - filled, round(width * failed / total))
    bar = "#" * filled + "x" * marked + "." * (width - filled - marked)
    return (
        f"[{bar}] {done}/{rollout['gateways']} done, {failed} failed, "
        f"{counts.get('applied', 0)} at the gate; wave {rollout['current_wave']}/"
        f"{rollout['wave_count']} {rollout['status']}"
    )


def watch(client: HubClient, rollout_id: str, out: TextIO, interval_s: float = 1.0) -> Any:
    """Follow the rollout until it finishes: a bar redrawn in place on a terminal, a plain
    line per change otherwise."""
    terminal = out.isatty()
    last = ""
    while True:
        body = client.call("GET", f"/api/v1/rollouts/{rollout_id}")
        line = progress_line(body)
        if terminal:
            print("\r" + line.ljust(len(last)), end="", file=out, flush=True)
        elif line != last:
            print(line, file=out, flush=True)
        last = line
        if body["status"] in FINISHED:
            if terminal:
                print(file=out)
            if body.get("reason"):
                print(f"reason: {body['reason']}", file=out)
            return body
        time.sleep(interval_s)


def _drift(client: HubClient, args: argparse.Namespace, out: TextIO) -> int:
    from urllib.parse import quote

    if args.reapply:
        body = client.call("POST", "/api/v1/fleet/drift/reapply", {"selector": args.selector})
        print(json.dumps(body, indent=2) if args.json else describe(body), file=out)
        return 0
    query = f"?selector={quote(args.selector)}" if args.selector else ""
    report = client.call("GET", "/api/v1/fleet/drift" + query)
    if args.json:
        print(json.dumps(report, indent=2), file=out)
        return 0
    print(
        f"{len(report['drifted'])} drifted agent(s); {report['checked']} checked on "
        f"{report['gateways']} gateway(s), {report['in_flight']} with an apply in flight, "
        f"{report['unreported']} not reported yet",
        file=out,
    )
    for agent in report["drifted"]:
        what = ", ".join(agent["files"])
        if agent["entry_missing"]:
            what = (what + ", " if what else "") + "openclaw.json entry missing"
        print(f"  {agent['gateway_name']}/{agent['agent_name']}: {what}", file=out)
    return 3 if report["drifted"] else 0


def _query(client: HubClient, args: argparse.Namespace, out: TextIO) -> int:
    """One line per answer as it arrives (--json: one JSON object per line); exit 3 unless
    every selected gateway answered."""
    body: dict[str, Any] = {
        "selector": args.selector,
        "question": args.question,
        "timeout_s": args.timeout,
    }
    if args.file is not None:
        body["file"] = args.file
    summary: Any = None
    quiet_s = max(HTTP_TIMEOUT_S, args.timeout + 10)  # answers may all come at the deadline
    for event, data in client.events("POST", "/api/v1/fleet/query", body, quiet_s=quiet_s):
        if args.json:
            print(json.dumps({"event": event, **data}), file=out, flush=True)
        elif event == "query":
            print(f"asking {data['selected']} gateway(s): {data['question']}", file=out, flush=True)
        elif event == "answer":
            print(answer_line(data), file=out, flush=True)
        if event == "done":
            summary = data
    if summary is None:
        raise CliError("the hub ended the query's stream before its summary; ask again")
    if not args.json:
        print(
            f"{summary['answered']} answered, {summary['failed']} failed, "
            f"{summary['no_answer']} no answer, {summary['disconnected']} disconnected "
            f"in {summary['elapsed_ms'] / 1000:.1f} s",
            file=out,
        )
    return 0 if summary["answered"] == summary["selected"] else 3


def answer_line(answer: Mapping[str, Any]) -> str:
    head = f"{answer['gateway_name']:<24} {answer['outcome']:<12}"
    if answer["outcome"] != "answered":
        return f"{head} {answer['error_code']}: {answer['error']}"
    data = answer["data"]
    if "files" in data:
        parts = [
            f"{f['name'] or f['gateway_agent_id']}/{f['file']} "
            + (f["problem"] or f["sha256"][:12])
            + {True: " (as rendered)", False: " (DIFFERS)", None: ""}[f["matches_rendered"]]
            for f in data["files"]
        ]
        return f"{head} " + ("; ".join(parts) or "no managed agent")
    if isinstance(data.get("agents"), list):
        parts = [
            f"{a['name'] or a['gateway_agent_id']} "
            + (f"every {a['heartbeat_every_s']} s" if a["heartbeat_enabled"] else "off")
            for a in data["agents"]
        ]
        return f"{head} " + ("; ".join(parts) or "no heartbeat job")
    reach = "reachable" if data["gateway_reachable"] else "UNREACHABLE"
    return (
        f"{head} openclaw {data['openclaw_version'] or '-'} {reach}, "
        f"{data['agents']} agent(s), {data['sessions']} session(s)"
    )


def _fleet(client: HubClient, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from urllib.parse import quote

    if args.fleet_command == "drift":
        return _drift(client, args, out)
    if args.fleet_command == "query":
        return _query(client, args, out)
    path = "/api/v1/fleet/inventory" + (
        f"?selector={quote(args.selector)}" if args.selector else ""
    )
    inventory = client.call("GET", path)
    if args.json:
        print(json.dumps(inventory, indent=2), file=out)
        return 0
    if args.fleet_command == "versions":
        print(
            f"{inventory['total']} gateway(s), {inventory['connected']} connected; "
            f"hub {inventory['hub_version']}",
            file=out,
        )
        print("sidecar versions:", file=out)
        for row in inventory["sidecar_versions"]:
            print(f"  {row['version'] or '(never connected)'}: {row['gateways']}", file=out)
        print("OpenClaw versions:", file=out)
        for row in inventory["openclaw_versions"]:
            print(f"  {row['version'] or '(unknown)'}: {row['gateways']}", file=out)
        outside = inventory["outside_supported_window"]
        if outside:
            print(f"outside the supported window ({len(outside)}): {', '.join(outside)}", file=out)
            return 3
        return 0
    for g in inventory["gateways"]:
        labels = ",".join(f"{k}={v}" for k, v in g["labels"].items()) or "-"
        link = "connected" if g["connected"] else "disconnected"
        print(
            f"{g['name']:<24} {link:<12} sidecar {g['sidecar_version'] or '-':<10} "
            f"openclaw {g['openclaw_version'] or '-':<10} agents {g['agents_managed']}"
            f"+{g['agents_unmanaged']}  {labels}",
            file=out,
        )
    return 0
