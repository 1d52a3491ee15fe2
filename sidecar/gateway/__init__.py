"""The sidecar's view of its OpenClaw gateway: a small interface and its types.

Command handlers and the link talk to the gateway only through `GatewayClient`.
The real implementation speaks the gateway's loopback WebSocket protocol; tests of
pure sidecar logic may pass a simple in-memory one. The package:

protocol.py    the WebSocket protocol's frames, hello and errors (pure)
connection.py  one live connection: handshake, requests by id, events, reconnect
openclaw.py    `OpenClawGatewayClient`, the operations written over the connection
queries.py     the hub's live reads of the gateway (GatewayQuery), answered once
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protos.contract import GatewayErrorKind, GatewayGeneration


@dataclass(frozen=True)
class GatewayInfo:
    """What the sidecar currently knows about its gateway."""

    reachable: bool
    version: str = ""
    protocol: int = 0
    generation: GatewayGeneration = GatewayGeneration.UNKNOWN
    unreachable_reason: str = ""

    @property
    def removes_concurrently(self) -> bool:
        """Whether removals may be sent at once: the current generation takes concurrent
        `agents.delete` calls one after another on its side, each seen through; 2026.3
        answers ok to concurrent ones and loses all but a few of their config writes (and
        removes one in about 70 ms anyway)."""
        return self.reachable and self.generation is GatewayGeneration.CURRENT


@dataclass(frozen=True)
class AgentEntry:
    """The gateway entry the sidecar wants for one managed agent."""

    agent_id: str
    name: str
    workspace: Path
    emoji: str = ""
    model: str = ""


@dataclass(frozen=True)
class HeartbeatSpec:
    every_s: int
    target: str = "none"
    checklist: str = ""


class RunState(enum.StrEnum):
    FINAL = "final"
    ERROR = "error"
    ABORTED = "aborted"


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended. `model_turn`: the model really ran in it (assistant output, or usage
    the gateway reported for the run); a FINAL without a turn is no evidence of the agent."""

    run_id: str
    state: RunState
    message: str = ""
    model_turn: bool = False


class RunKind(enum.StrEnum):
    WAKE = "wake"  # started by this sidecar's wake (reported with its command)
    CHAT = "chat"  # a chat run from anywhere else: a channel, the control UI, another client
    HEARTBEAT = "heartbeat"  # a run the gateway started itself: its heartbeat, its cron


@dataclass(frozen=True)
class RunEnded:
    """A run of some agent reached its end on the gateway, whoever started it."""

    agent_id: str
    kind: RunKind
    outcome: RunOutcome


@dataclass(frozen=True)
class HeartbeatJobChanged:
    """The gateway added or removed an agent's heartbeat cron job."""

    agent_id: str
    present: bool


RuntimeEvent = RunEnded | HeartbeatJobChanged


@dataclass(frozen=True)
class ProviderAuth:
    """A model provider's sign-in as the gateway sees it (`models.authStatus`)."""

    provider: str
    status: str  # "ok", "static", "expiring", "expired", "missing"
    expires_in_s: int | None = None

    @property
    def failing(self) -> bool:
        return self.status in ("expired", "missing")


@dataclass(frozen=True)
class AgentRuntime:
    agent_id: str
    heartbeat_enabled: bool
    heartbeat_every_s: int = 0


@dataclass(frozen=True)
class GatewayRuntime:
    """A live status read of the gateway."""

    sessions_count: int
    agents: tuple[AgentRuntime, ...] = ()
    pid: int = 0
    rss_bytes: int = 0


@dataclass(frozen=True)
class SessionInfo:
    key: str
    agent_id: str
    kind: str = ""
    is_main: bool = False
    status: str = ""
    has_active_run: bool = False
    updated_at_ms: int = 0
    last_run_error: str = ""
    model: str = ""
    total_tokens: int = 0


@dataclass(frozen=True)
class SessionPage:
    sessions: tuple[SessionInfo, ...]
    total: int


@dataclass(frozen=True)
class SessionTokens:
    """One session's tokens on one UTC day, as the gateway counts them from the session's
    transcript (`sessions.usage`): the day's whole count so far, never an increment.
    (`SessionInfo.total_tokens` is not this: both generations report there the size of the
    last prompt, which falls when the context is compacted.)"""

    key: str
    session_id: str
    day: str  # "YYYY-MM-DD", UTC
    total: int
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0


class GatewayError(Exception):
    """A gateway call failed. `code` is stable and machine-readable; the message says the fix.

    `kind` says what asking again can do (protos.contract.GatewayErrorKind): RETRY (the
    default: the gateway works and may answer differently soon), PERMANENT, or
    UNREACHABLE (no working connection). `retry_after_s`: the gateway named a wait.
    """

    code = "gateway_error"
    kind: GatewayErrorKind = GatewayErrorKind.RETRY
    retry_after_s: float = 0.0

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        kind: GatewayErrorKind | None = None,
        retry_after_s: float = 0.0,
    ):
        super().__init__(message)
        if code is not None:
            self.code = code
        if kind is not None:
            self.kind = kind
        elif retryable is not None and not retryable:
            self.kind = GatewayErrorKind.PERMANENT
        self.retry_after_s = max(0.0, retry_after_s)

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


class GatewayUnavailable(GatewayError):
    """No working connection to the gateway right now (down, token mismatch, scopes cleared)."""

    code = "gateway_unreachable"
    kind = GatewayErrorKind.UNREACHABLE


class GatewayClient(Protocol):
    """What command handlers need from the gateway."""

    @property
    def info(self) -> GatewayInfo: ...

    async def start(self) -> None:
        """Begin connecting (in the background); calls fail with GatewayUnavailable until up."""

    async def stop(self) -> None: ...

    def on_info_change(self, callback: Callable[[GatewayInfo], None]) -> None:
        """Call `callback` whenever reachability, version, protocol or generation change."""

    def on_runtime_event(self, callback: Callable[[RuntimeEvent], None]) -> None:
        """Call `callback` for every run that ends (whoever started it) and every change of
        an agent's heartbeat job, as the gateway reports them."""

    async def ensure_agent(self, entry: AgentEntry) -> None:
        """Create or update the entry; return once the gateway lists the agent as usable."""

    async def remove_agent(self, agent_id: str, *, delete_files: bool) -> None:
        """Remove the entry; an agent already absent is not an error."""

    async def set_heartbeat(self, agent_id: str, heartbeat: HeartbeatSpec) -> None:
        """Apply cadence/target, and the checklist where the generation keeps it off-disk."""

    async def wake(self, agent_id: str, message: str, idempotency_key: str) -> str:
        """Start a run in the agent's main session; return the run id. Same key, same run."""

    async def wait_run(self, run_id: str, timeout_s: float) -> RunOutcome:
        """Wait for a run started by `wake` to end (final, error or aborted)."""

    async def reset_session(self, agent_id: str) -> None:
        """Start the agent's main session afresh (the next run reads its files anew)."""

    async def runtime_status(self) -> GatewayRuntime:
        """The gateway's live status: version, per-agent heartbeat, session count."""

    async def model_auth(self) -> list[ProviderAuth] | None:
        """The model providers' sign-in status; None where the gateway cannot tell."""

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        """Sessions, most recently updated first; only `agent_id`'s when given."""

    async def session_tokens(self, key: str, day: str) -> SessionTokens | None:
        """The tokens session `key` used on UTC day `day` ("YYYY-MM-DD"); None when the
        gateway has no transcript for it."""
