"""The OpenClaw gateway's WebSocket protocol: frames, the hello, and errors.

Pure functions and types only; `sidecar/gateway/openclaw.py` does the I/O. Keeping the
decisions here (which generation is this? what does this error mean and how is it
fixed?) lets them be tested without a gateway.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from missioncontrol.text import encodable
from protos.contract import GatewayErrorKind, GatewayGeneration
from sidecar.gateway import (
    AgentRuntime,
    GatewayError,
    GatewayRuntime,
    GatewayUnavailable,
    ProviderAuth,
    RunOutcome,
    RunState,
    SessionInfo,
    SessionPage,
    SessionTokens,
)

# Protocol 4 is current; 2026.3 gateways speak only 3. Both accept a 3..4 offer and
# answer with the one they speak.
MIN_PROTOCOL = 3
MAX_PROTOCOL = 4
REQUIRED_SCOPE = "operator.admin"
# Only this identity (or cli/cli) keeps its scopes on a device-less loopback connection.
BACKEND_CLIENT_ID = "gateway-client"
BACKEND_CLIENT_MODE = "backend"
# Methods only the current generation has; their presence identifies it.
CURRENT_ONLY_METHODS = frozenset({"cron.scratch.set"})
DEFAULT_TICK_INTERVAL_MS = 30_000
# The gateway closes shared-token sockets with this code when gateway.auth.token changes.
CLOSE_TOKEN_ROTATED = 4001
# How the gateway words a run that failed before the model replied.
FAILED_BEFORE_REPLY = "⚠️ Agent failed before reply:"
# The gateway's own notices in a run's text (failures, a missing workspace) start with this;
# they are not model output.
GATEWAY_NOTICE_PREFIX = "⚠️"


@dataclass(frozen=True)
class ClientIdentity:
    """Who the sidecar says it is in `connect`. Only tests change the defaults."""

    client_id: str = BACKEND_CLIENT_ID
    mode: str = BACKEND_CLIENT_MODE
    display_name: str = "mc-sidecar"
    origin: str | None = None  # an Origin header makes the gateway clear scopes


@dataclass(frozen=True)
class Hello:
    """What `hello-ok` told the sidecar about the gateway."""

    protocol: int
    version: str
    methods: frozenset[str] = field(repr=False)
    scopes: tuple[str, ...] | None  # None: the gateway sends no auth.scopes (2026.3)
    tick_interval_ms: int
    config_path: str = ""
    generation: GatewayGeneration = GatewayGeneration.UNKNOWN


def detect_generation(protocol: int, methods: frozenset[str]) -> GatewayGeneration:
    """The one place that tells gateway generations apart, by capability, not version text."""
    if protocol >= 4 or methods & CURRENT_ONLY_METHODS:
        return GatewayGeneration.CURRENT
    if protocol == 3:
        return GatewayGeneration.LEGACY_2026_3
    return GatewayGeneration.UNKNOWN


# Params each generation's agent methods take (their schemas reject unknown keys).
# 2026.3: no `model` on create and no `emoji` on update; the hub renders IDENTITY.md.
_AGENT_FIELDS: Mapping[tuple[str, GatewayGeneration], frozenset[str]] = {
    ("agents.create", GatewayGeneration.CURRENT): frozenset(
        {"name", "workspace", "model", "emoji"}
    ),
    ("agents.create", GatewayGeneration.LEGACY_2026_3): frozenset({"name", "workspace", "emoji"}),
    ("agents.update", GatewayGeneration.CURRENT): frozenset(
        {"name", "workspace", "model", "emoji"}
    ),
    ("agents.update", GatewayGeneration.LEGACY_2026_3): frozenset({"name", "workspace", "model"}),
}


def agent_fields(method: str, generation: GatewayGeneration) -> frozenset[str]:
    """Which of name/workspace/model/emoji `method` accepts on this generation."""
    if generation is GatewayGeneration.UNKNOWN:
        generation = GatewayGeneration.CURRENT
    return _AGENT_FIELDS[(method, generation)]


def parse_hello(payload: Mapping[str, Any]) -> Hello:
    protocol = payload.get("protocol")
    server = _mapping(payload.get("server"))
    features = _mapping(payload.get("features"))
    auth = _mapping(payload.get("auth"))
    policy = _mapping(payload.get("policy"))
    snapshot = _mapping(payload.get("snapshot"))
    methods = frozenset(m for m in features.get("methods") or () if isinstance(m, str))
    raw_scopes = auth.get("scopes")
    scopes = (
        tuple(s for s in raw_scopes if isinstance(s, str)) if isinstance(raw_scopes, list) else None
    )
    tick = policy.get("tickIntervalMs")
    proto = protocol if isinstance(protocol, int) else 0
    return Hello(
        protocol=proto,
        version=str(server.get("version") or ""),
        methods=methods,
        scopes=scopes,
        tick_interval_ms=tick if isinstance(tick, int) and tick > 0 else DEFAULT_TICK_INTERVAL_MS,
        config_path=str(snapshot.get("configPath") or ""),
        generation=detect_generation(proto, methods),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def connect_params(
    token: str,
    identity: ClientIdentity,
    client_version: str,
    platform: str,
    *,
    min_protocol: int = MIN_PROTOCOL,
    max_protocol: int = MAX_PROTOCOL,
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "minProtocol": min_protocol,
        "maxProtocol": max_protocol,
        "client": {
            "id": identity.client_id,
            "displayName": identity.display_name,
            "version": client_version,
            "platform": platform,
            "mode": identity.mode,
            "instanceId": str(uuid.uuid4()),
        },
        "role": "operator",
        "scopes": [REQUIRED_SCOPE],
        "caps": [],
        "userAgent": f"mc-sidecar/{client_version}",
    }
    if token:
        params["auth"] = {"token": token}
    return params


# A JSON escape of a UTF-16 surrogate; only through one can a lone surrogate get in.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def decode_frame(data: str) -> Any:
    """A frame's JSON, with any lone surrogate in its text replaced by U+FFFD.

    Such text (a JSON escape like \\ud800 that no second half follows) cannot be encoded
    as UTF-8, so neither a protobuf message for the hub nor a log line could carry it;
    it is made harmless here, where gateway text comes in, instead of at every use.
    Raises ValueError (or RecursionError) for what is not JSON."""
    value = json.loads(data)
    if _ESCAPED_SURROGATE.search(data):
        value = _encodable(value)
    return value


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {encodable(k): _encodable(v) for k, v in value.items()}
    return value


def request_frame(request_id: str, method: str, params: Mapping[str, Any] | None) -> str:
    return json.dumps({"type": "req", "id": request_id, "method": method, "params": params or {}})


# ---------------------------------------------------------------- errors


class GatewayRequestError(GatewayError):
    """The gateway answered a request with `ok: false`."""

    code = "gateway_request_failed"

    def __init__(
        self,
        method: str,
        gateway_code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        *,
        kind: GatewayErrorKind | None = None,
        retry_after_s: float = 0.0,
    ) -> None:
        super().__init__(
            f"{method}: {gateway_code}: {message}",
            kind=kind if kind is not None else classify_error(gateway_code, message, details),
            retry_after_s=retry_after_s,
        )
        self.method = method
        self.gateway_code = gateway_code
        self.gateway_message = message
        self.details: Mapping[str, Any] = details or {}

    @property
    def detail_code(self) -> str:
        code = self.details.get("code")
        return code if isinstance(code, str) else ""


class GatewayTimeout(GatewayError):
    """The gateway did not answer, or a condition did not come true, within the bound."""

    code = "gateway_timeout"


class GatewayConnectRefused(GatewayUnavailable):
    """The gateway refused the sidecar in a way only a configuration fix changes.

    Still retryable for commands (they succeed once the fix is in), but waiting for a
    connection gives up at once instead of running out its timeout.
    """

    code = "gateway_connect_refused"


class GatewayTokenMismatch(GatewayConnectRefused):
    code = "gateway_token_mismatch"


class GatewayProtocolMismatch(GatewayConnectRefused):
    code = "gateway_protocol_mismatch"


class GatewayNotPaired(GatewayConnectRefused):
    code = "gateway_not_paired"


class GatewayScopesCleared(GatewayConnectRefused):
    code = "gateway_scopes_cleared"


class GatewayHandshakeError(GatewayUnavailable):
    """The handshake broke in a way that has no specific fix (unexpected frame, timeout)."""

    code = "gateway_handshake_failed"


def handshake_error(
    error: Mapping[str, Any], *, config_path: str, protocols: tuple[int, int]
) -> GatewayUnavailable:
    """Turn a refused `connect` into an error that names the cause and the fix."""
    gateway_code = str(error.get("code") or "")
    message = str(error.get("message") or "")
    details = _mapping(error.get("details"))
    detail_code = str(details.get("code") or "")
    if detail_code == "AUTH_TOKEN_MISMATCH":
        return GatewayTokenMismatch(
            "the gateway refused the shared token (AUTH_TOKEN_MISMATCH: "
            f"{message}). The sidecar reads gateway.auth.token from {config_path} on every "
            "connect; the running gateway uses a different one. If the token was just "
            "rotated the sidecar retries on its own; otherwise make gateway.auth.token in "
            "that file the token the gateway runs with (or restart the gateway if it was "
            "started with --token / OPENCLAW_GATEWAY_TOKEN)."
        )
    if detail_code == "PROTOCOL_MISMATCH":
        expected = details.get("expectedProtocol")
        return GatewayProtocolMismatch(
            f"the gateway speaks WebSocket protocol {expected} and the sidecar offered "
            f"{protocols[0]}..{protocols[1]} (PROTOCOL_MISMATCH). Upgrade the sidecar to a "
            "release that supports this OpenClaw version, or run a supported OpenClaw "
            "(2026.3 speaks 3, current releases 4)."
        )
    if gateway_code == "NOT_PAIRED" or detail_code == "DEVICE_IDENTITY_REQUIRED":
        return GatewayNotPaired(
            f"the gateway wants a paired device identity (NOT_PAIRED: {message}). A "
            "device-less backend connection is only accepted on loopback with the shared "
            f"token: set gateway.auth.mode to token with gateway.auth.token in {config_path}, "
            "and run the sidecar on the gateway host."
        )
    cause = " ".join(c for c in (gateway_code, detail_code) if c) or "no code"
    return GatewayHandshakeError(f"the gateway refused the connection ({cause}: {message})")


def scopes_cleared_error(granted: Sequence[str], identity: ClientIdentity) -> GatewayScopesCleared:
    who = f"client {identity.client_id}/{identity.mode}"
    if identity.origin:
        who += f" with Origin header {identity.origin!r}"
    return GatewayScopesCleared(
        f"the gateway accepted the connection but cleared its scopes (granted {list(granted)}, "
        f"asked for [{REQUIRED_SCOPE!r}]). It does that silently for a device-less "
        f"connection with the wrong client identity ({who}) or with an Origin header. "
        f"Fix: connect as {BACKEND_CLIENT_ID}/{BACKEND_CLIENT_MODE} over loopback with the "
        "shared token and no Origin header, which is what the sidecar does by default."
    )


def check_scopes(hello: Hello, identity: ClientIdentity) -> GatewayScopesCleared | None:
    """2026.3 sends no auth.scopes (fine); an empty or admin-less list is not."""
    if hello.scopes is None or REQUIRED_SCOPE in hello.scopes:
        return None
    return scopes_cleared_error(hello.scopes, identity)


# Codes whose errors pass by themselves: the gateway is busy, restarting or reloading.
_RETRY_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "TIMEOUT", "AGENT_TIMEOUT"})
# Codes and detail codes that refuse the sidecar itself: nothing it sends works until an
# operator fixes the pairing, the token or the scopes (the cause the agent waits on).
_REFUSED_CODES = frozenset({"NOT_PAIRED", "FORBIDDEN"})
_REFUSED_DETAILS = frozenset(
    {"MISSING_SCOPE", "DEVICE_IDENTITY_REQUIRED", "AUTH_TOKEN_MISMATCH", "PAIRING_REQUIRED"}
)
# How both generations word an answer that asking again can change, whatever its code
# (2026.9 answers INVALID_REQUEST for a session or config that changed under the request,
# and for an agent that is being reloaded: "no longer exists in configuration").
_RETRY_WORDING = (
    "retry",
    "try again",
    "no longer exists in configuration",
    "superseded",
    "still active",
    "still shutting down",
    "is busy",
    "rate limit",
)


def classify_error(
    gateway_code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    retryable: bool | None = None,
) -> GatewayErrorKind:
    """What a gateway error means, from what the gateway says: the one place this is decided.

    An explicit `retryable` flag in the error wins. Then the code: UNAVAILABLE and its kin
    pass (RETRY); NOT_PAIRED, FORBIDDEN and their detail codes refuse the sidecar itself
    (UNREACHABLE: it can do nothing on this gateway until an operator fixes it). Then the
    wording: "retry", "try again", "no longer exists in configuration" (an agent being
    reloaded) and their kin say asking again can succeed. Anything else is PERMANENT: the
    same request would be refused the same way.
    """
    if retryable is not None:
        return GatewayErrorKind.RETRY if retryable else GatewayErrorKind.PERMANENT
    detail_code = str(_mapping(details).get("code") or "")
    if gateway_code in _REFUSED_CODES or detail_code in _REFUSED_DETAILS:
        return GatewayErrorKind.UNREACHABLE
    if gateway_code in _RETRY_CODES:
        return GatewayErrorKind.RETRY
    text = message.lower()
    if any(words in text for words in _RETRY_WORDING):
        return GatewayErrorKind.RETRY
    return GatewayErrorKind.PERMANENT


def request_error(method: str, error: Mapping[str, Any]) -> GatewayRequestError:
    """A `res` frame's error as a GatewayRequestError, classified (see classify_error)."""
    gateway_code = str(error.get("code") or "UNKNOWN")
    message = str(error.get("message") or "")
    details = _mapping(error.get("details"))
    flag = error.get("retryable")
    retry_after_ms = error.get("retryAfterMs")
    return GatewayRequestError(
        method,
        gateway_code,
        message,
        details,
        kind=classify_error(
            gateway_code, message, details, retryable=flag if isinstance(flag, bool) else None
        ),
        retry_after_s=retry_after_ms / 1000 if isinstance(retry_after_ms, int | float) else 0.0,
    )


def is_superseded_run(message: str) -> bool:
    """A run that failed because the gateway replaced its runtime under it (2026.9, on
    a reload of its config: "prepared model runtime plugin generation was superseded").
    The model never saw the run's message; sending it again succeeds."""
    return "was superseded" in message.lower()


def is_agent_not_loaded(exc: GatewayRequestError) -> bool:
    """chat.send for an agent the runtime does not have (yet, or any more)."""
    return "no longer exists in configuration" in exc.gateway_message.lower()


def is_not_found(exc: GatewayRequestError) -> bool:
    return "not found" in exc.gateway_message.lower()


def is_already_exists(exc: GatewayRequestError) -> bool:
    return "already exists" in exc.gateway_message.lower()


def is_config_conflict(exc: GatewayRequestError) -> bool:
    """config.patch with a stale baseHash: re-run config.get and retry."""
    return "changed since last load" in exc.gateway_message.lower()


def heartbeat_every(every_s: int) -> str:
    """Seconds to the gateway's duration text: 0 -> "0m", 1800 -> "30m", 45 -> "45s"."""
    if every_s <= 0:
        return "0m"
    if every_s % 3600 == 0:
        return f"{every_s // 3600}h"
    if every_s % 60 == 0:
        return f"{every_s // 60}m"
    return f"{every_s}s"


def main_session_key(agent_id: str) -> str:
    return f"agent:{agent_id}:main"


# ---------------------------------------------------------------- status and sessions
# Both payloads are large and grow with each release; read only the fields the hub
# shows, and tolerate any of them missing (2026.3 has fewer).


def parse_status(payload: Mapping[str, Any]) -> GatewayRuntime:
    """The `status` method's payload as a GatewayRuntime."""
    heartbeat = _mapping(payload.get("heartbeat"))
    agents = tuple(
        AgentRuntime(
            agent_id=str(a["agentId"]),
            heartbeat_enabled=bool(a.get("enabled")),
            heartbeat_every_s=_int(a.get("everyMs")) // 1000,
        )
        for a in _list(heartbeat.get("agents"))
        if isinstance(a, Mapping) and a.get("agentId")
    )
    return GatewayRuntime(
        sessions_count=_int(_mapping(payload.get("sessions")).get("count")),
        agents=agents,
        pid=_int(payload.get("pid")),
        rss_bytes=_int(_mapping(payload.get("processMemory")).get("rssBytes")),
    )


def parse_sessions(payload: Mapping[str, Any]) -> SessionPage:
    """The `sessions.list` payload, most recently updated first."""
    sessions = [
        SessionInfo(
            key=str(row["key"]),
            agent_id=str(row.get("agentId") or _agent_of_key(str(row["key"]))),
            kind=str(row.get("kind") or ""),
            is_main=bool(row.get("isMain", str(row["key"]).endswith(":main"))),
            status=str(row.get("status") or ""),
            has_active_run=bool(row.get("hasActiveRun")),
            updated_at_ms=_int(row.get("updatedAt")),
            last_run_error=str(row.get("lastRunError") or ""),
            model=str(row.get("model") or ""),
            total_tokens=_int(row.get("totalTokens")),
        )
        for row in _list(payload.get("sessions"))
        if isinstance(row, Mapping) and row.get("key")
    ]
    sessions.sort(key=lambda s: s.updated_at_ms, reverse=True)
    total = _int(payload.get("totalCount", payload.get("count", len(sessions))))
    return SessionPage(tuple(sessions), max(total, len(sessions)))


def session_usage_params(key: str, day: str) -> dict[str, Any]:
    """`sessions.usage` params for one session on one UTC day (both generations)."""
    return {"key": key, "startDate": day, "endDate": day, "mode": "utc", "limit": 1}


def parse_session_tokens(payload: Mapping[str, Any], key: str, day: str) -> SessionTokens | None:
    """The `sessions.usage` answer for one session and day; None without a transcript.

    Both generations count from the transcript's per-message usage; the totals are the
    sum of input, output and cache reads and writes unless the gateway gives its own."""
    for row in _list(payload.get("sessions")):
        if not isinstance(row, Mapping) or row.get("key") != key:
            continue
        usage = row.get("usage")
        if not isinstance(usage, Mapping):
            return None
        parts = [
            max(0, _int(usage.get(name))) for name in ("input", "output", "cacheRead", "cacheWrite")
        ]
        total = max(0, _int(usage.get("totalTokens"))) or sum(parts)
        return SessionTokens(
            key=key,
            session_id=str(row.get("sessionId") or ""),
            day=day,
            total=total,
            input=parts[0],
            output=parts[1],
            cache_read=parts[2],
            cache_write=parts[3],
        )
    return None


def _agent_of_key(key: str) -> str:
    """ "agent:<id>:<name>" -> "<id>" (older rows carry no agentId)."""
    parts = key.split(":")
    return parts[1] if len(parts) >= 3 and parts[0] == "agent" else ""


INT64_MAX = 2**63 - 1


def _int(value: Any) -> int:
    """A count or size the gateway reported, as a protobuf int64 can hold it (0 if none)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(-INT64_MAX, min(int(value), INT64_MAX))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------- runs


@dataclass(frozen=True)
class TurnEvidence:
    """What one event shows of a model turn in its run."""

    run_id: str
    output_chars: int = 0  # assistant text the model streamed (not a gateway notice)
    usage_tokens: int = 0  # tokens the gateway's usage report counted


def turn_evidence(event: str, payload: Any) -> TurnEvidence | None:
    """The evidence of a model turn an event carries, or None.

    Both generations stream the model's output as `agent` events (stream `assistant`,
    `data.text`/`data.delta`) and `chat` deltas; 2026.9 adds a `usage` stream with token
    counts. A run that never reached the model has none of these: a wake folded into a
    run already going ends `final` at once with no message, and a model endpoint that
    refuses connections gives empty `assistant` events between retries.
    """
    if not isinstance(payload, Mapping):
        return None
    run_id = payload.get("runId")
    if not isinstance(run_id, str) or not run_id:
        return None
    if event == "agent":
        data = _mapping(payload.get("data"))
        stream = payload.get("stream")
        if stream == "assistant":
            text = data.get("text") or data.get("delta")
            chars = _output_chars(text if isinstance(text, str) else "")
            return TurnEvidence(run_id, output_chars=chars) if chars else None
        if stream == "usage":
            tokens = sum(
                value
                for key, value in data.items()
                if "token" in key.lower() and isinstance(value, int) and value > 0
            )
            return TurnEvidence(run_id, usage_tokens=tokens) if tokens else None
        return None
    if event == "chat" and payload.get("state") == "delta":
        delta = payload.get("deltaText")
        text = delta if isinstance(delta, str) else _message_text(payload.get("message"))
        chars = _output_chars(text)
        return TurnEvidence(run_id, output_chars=chars) if chars else None
    return None


def _output_chars(text: str) -> int:
    text = text.strip()
    return 0 if not text or text.startswith(GATEWAY_NOTICE_PREFIX) else len(text)


def run_outcome(payload: Mapping[str, Any], *, model_turn: bool = False) -> RunOutcome | None:
    """A terminal `chat` event as a RunOutcome; None for status and delta events.

    `model_turn` is whether the run's events showed a model turn (`turn_evidence`); the
    final message alone is not evidence (the gateway writes its own notices there).
    """
    run_id = str(payload.get("runId"))
    state = payload.get("state")
    if state == "final":
        text = _message_text(payload.get("message"))
        if text.startswith(FAILED_BEFORE_REPLY):
            # 2026.3 ends a run that never reached the model (no credentials, ...) as a
            # "final" whose only text is this warning; it is a failure, not a check-in.
            return RunOutcome(run_id, RunState.ERROR, text.removeprefix("⚠️").strip())
        return RunOutcome(run_id, RunState.FINAL, text, model_turn=model_turn)
    if state == "error":
        text = payload.get("errorMessage") or payload.get("error") or "run failed"
        return RunOutcome(run_id, RunState.ERROR, str(text))
    if state == "aborted":
        return RunOutcome(run_id, RunState.ABORTED, str(payload.get("reason") or "run aborted"))
    return None


def _message_text(message: Any) -> str:
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def run_agent(payload: Mapping[str, Any]) -> str:
    """The agent a `chat` event's run belongs to (2026.3 names only the session key)."""
    agent_id = payload.get("agentId")
    if isinstance(agent_id, str) and agent_id:
        return agent_id
    key = payload.get("sessionKey")
    return _agent_of_key(key) if isinstance(key, str) else ""


HEARTBEAT_JOB_PREFIX = "heartbeat:"


def heartbeat_job_agent(payload: Mapping[str, Any]) -> str:
    """The agent whose heartbeat cron job a `cron` event is about; "" for other jobs."""
    job = _mapping(payload.get("job"))
    key = job.get("declarationKey")
    if not isinstance(key, str) or not key.startswith(HEARTBEAT_JOB_PREFIX):
        return ""
    agent_id = job.get("agentId")
    if isinstance(agent_id, str) and agent_id:
        return agent_id
    return key.removeprefix(HEARTBEAT_JOB_PREFIX)


def heartbeat_run_outcome(payload: Mapping[str, Any], detail: str = "") -> RunOutcome | None:
    """A heartbeat job's `cron` event `finished` as a RunOutcome; None for other actions.

    Heartbeat runs broadcast no `chat` or `agent` events, so this is the only end there
    is. `ok` means the model ran (a run whose model fails ends `error`); `skipped` means
    it never reached the model (no delivery route), so it is no turn. `detail`: the
    `heartbeat` event's preview, which says why a failed run failed (the cron event
    only says "agent-runner-failure")."""
    if payload.get("action") != "finished":
        return None
    run_id = str(payload.get("runId") or "")
    status = payload.get("status")
    if status == "ok":
        return RunOutcome(run_id, RunState.FINAL, str(payload.get("summary") or ""), True)
    if status == "error":
        text = detail or str(payload.get("error") or "heartbeat run failed")
        return RunOutcome(run_id, RunState.ERROR, text.removeprefix("⚠️").strip())
    return RunOutcome(run_id, RunState.FINAL, str(payload.get("error") or status or ""))


def parse_model_auth(payload: Mapping[str, Any]) -> list[ProviderAuth]:
    """`models.authStatus`: one entry per provider the gateway knows credentials for."""
    out = []
    for row in _list(payload.get("providers")):
        if not isinstance(row, Mapping) or not row.get("provider"):
            continue
        expiry = _mapping(row.get("expiry"))
        remaining = expiry.get("remainingMs")
        out.append(
            ProviderAuth(
                provider=str(row["provider"]),
                status=str(row.get("status") or "static"),
                expires_in_s=_int(remaining) // 1000 if remaining is not None else None,
            )
        )
    return out
