"""Request and response models of the hub API (they also generate /openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from hub.api.core import MULTILINE, Page, Query, Strict
from hub.fleet.labels import check_labels
from hub.provisioning.agents import MAX_HEARTBEAT_S
from hub.provisioning.rendering import MAX_OVERRIDE_TEMPLATE_CHARS
from hub.workspace_root import MAX_WORKSPACE_ROOT_CHARS, normalize_workspace_root

Name = Field(min_length=1, max_length=200)


class Health(BaseModel):
    ok: bool
    status: str


class ReadyCheck(BaseModel):
    check: str
    detail: str


class Ready(BaseModel):
    ready: bool
    failing: list[ReadyCheck]


_REFUSED_GATEWAY_FIELDS = {
    "url": "the hub never dials a gateway: the sidecar beside it dials out to the hub. "
    "Leave url out and enroll that sidecar with the join token this call returns "
    "(`mc-sidecar enroll --token ...`)",
    "token": "the gateway's token never leaves its host: the sidecar reads it from "
    "openclaw.json there. Leave token out",
    "allow_insecure_tls": "the sidecar reaches its gateway on loopback, and the hub link is "
    "mutual TLS. Leave allow_insecure_tls out",
    "disable_device_pairing": "the sidecar connects to its gateway as the local backend "
    "client, which needs no device pairing. Leave disable_device_pairing out",
}


def _refused(name: str, max_length: int | None = None) -> Any:
    return Field(
        None,
        max_length=max_length,
        description=f"Mission Control's field, refused (422): {_REFUSED_GATEWAY_FIELDS[name]}",
        json_schema_extra={"deprecated": True},
    )


def _workspace_root(value: str | None) -> str | None:
    return None if value is None else normalize_workspace_root(value)


class _GatewayFields(Strict):
    workspace_root: str | None = Field(
        None,
        max_length=MAX_WORKSPACE_ROOT_CHARS,
        description="absolute directory on the gateway host under which agent workspaces "
        "live; with it, boards and agents can be created before the sidecar first connects",
        examples=["/srv/openclaw"],
    )
    url: str | None = _refused("url", 4096)
    token: str | None = _refused("token", 4096)
    allow_insecure_tls: bool | None = _refused("allow_insecure_tls")
    disable_device_pairing: bool | None = _refused("disable_device_pairing")

    @field_validator("url", "token", "allow_insecure_tls", "disable_device_pairing")
    @classmethod
    def _refuse(cls, value: Any, info: ValidationInfo) -> Any:
        if value in (None, "", False):
            return value  # an empty value asks for nothing
        raise ValueError(
            f"{info.field_name} has no meaning here: "
            + _REFUSED_GATEWAY_FIELDS[str(info.field_name)]
        )

    @field_validator("workspace_root")
    @classmethod
    def _root(cls, value: str | None) -> str | None:
        return _workspace_root(value)


class GatewayCreate(_GatewayFields):
    name: str = Name


class JoinTokenCreate(Strict):
    ttl_s: float = Field(1800, gt=0, le=86400)
    uses: int = Field(1, ge=1, le=10_000)
    labels: dict[str, str] = Field(
        default_factory=dict, description="labels every gateway it enrolls gets (env=prod)"
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)


class JoinToken(BaseModel):
    join_token: str
    token_id: str
    expires_at: str | None
    max_uses: int
    enroll_command: str | None
    labels: dict[str, str] = {}


class GatewayRead(BaseModel):
    id: str
    name: str
    labels: dict[str, str] = {}
    connected: bool
    sidecar_version: str | None
    openclaw_version: str | None
    openclaw_protocol: int | None
    gateway_generation: str | None
    gateway_reachable: bool | None
    gateway_unreachable_reason: str | None
    config_valid: bool | None
    config_error: str | None
    workspace_root: str | None  # where the hub renders workspace paths: declared, else reported
    workspace_root_reported: str | None  # the sidecar's, from its last Hello
    workspace_root_problem: str | None  # why the sidecar cannot write there, with the fix
    agent_api_url: str | None
    hostname: str | None
    last_seen_at: str | None
    connected_at: str | None
    disconnected_at: str | None
    command_sequence: int
    acked_sequence: int
    created_at: str | None
    updated_at: str | None


class GatewaySessionRead(BaseModel):
    key: str
    gateway_agent_id: str
    agent_id: str | None  # the hub's agent id, when Mission Control manages the agent
    board_id: str | None
    kind: str | None
    is_main: bool
    status: str | None  # the last run's status as the gateway reports it
    has_active_run: bool
    updated_at: str | None
    last_run_error: str | None
    model: str | None
    total_tokens: int


class GatewayAgentRuntime(BaseModel):
    gateway_agent_id: str
    agent_id: str | None
    heartbeat_enabled: bool
    heartbeat_every_s: int | None


class GatewayStatusRead(BaseModel):
    gateway_id: str
    gateway_name: str
    connected: bool  # the sidecar's link to the hub is up (as in GET /api/v1/gateways)
    live_read: bool  # the sidecar asked its gateway now and the gateway answered
    gateway_reachable: bool | None
    gateway_unreachable_reason: str | None
    sidecar_version: str | None
    openclaw_version: str | None
    openclaw_protocol: int | None
    gateway_generation: str | None
    config_valid: bool | None
    config_error: str | None
    pid: int | None
    rss_bytes: int | None
    agents: list[GatewayAgentRuntime]
    sessions_count: int | None
    sessions: list[GatewaySessionRead]
    main_session: GatewaySessionRead | None
    main_session_error: str | None
    error: str | None  # why the live part is missing, with the fix
    error_code: str | None
    observed_at: str | None  # when the sidecar answered; null: stored values only


class GatewaySessionsRead(BaseModel):
    gateway_id: str
    sessions: list[GatewaySessionRead]
    total: int  # sessions the gateway has (sessions may list fewer: limit, board filter)
    main_session: GatewaySessionRead | None


class GatewayCreated(GatewayRead):
    join_token: str | None = None
    token_id: str | None = None
    expires_at: str | None = None
    max_uses: int | None = None
    enroll_command: str | None = None


class GatewayPage(BaseModel):
    items: list[GatewayRead]
    total: int
    limit: int
    offset: int


class Ok(BaseModel):
    ok: bool = True


class HeartbeatConfig(Strict):
    """An agent's heartbeat, in either shape: Mission Control's `{enabled, intervalSeconds}`
    or OpenClaw's `{every, target, includeReasoning}` (mixed is fine if they agree).
    `enabled: false` (or a cadence of 0) means no heartbeat job on the gateway."""

    enabled: bool | None = Field(None, description="false: no heartbeat job")
    intervalSeconds: int | None = Field(None, ge=0, le=MAX_HEARTBEAT_S)
    every: str | None = Field(
        None, pattern=r"^\d{1,6}(s|m|h)?$", description="cadence, e.g. 10m (OpenClaw's key)"
    )
    target: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9:._-]+$")
    includeReasoning: bool | None = None  # the key Mission Control uses

    def config(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


IDENTITY_KEYS = 32
IDENTITY_VALUE_CHARS = 4000
IDENTITY_LIST_ITEMS = 50


def _identity(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if len(value) > IDENTITY_KEYS:
        raise ValueError(f"at most {IDENTITY_KEYS} keys")
    for key, item in value.items():
        if not 1 <= len(key) <= 64:
            raise ValueError("keys are 1 to 64 characters")
        items = item if isinstance(item, list) else [item]
        if len(items) > IDENTITY_LIST_ITEMS:
            raise ValueError(f"{key}: at most {IDENTITY_LIST_ITEMS} items")
        if sum(len(part) for part in items) > IDENTITY_VALUE_CHARS:
            raise ValueError(f"{key}: at most {IDENTITY_VALUE_CHARS} characters")
    return value


Identity = dict[str, str | list[str]]


def _template(description: str) -> Any:
    return Field(
        None,
        max_length=MAX_OVERRIDE_TEMPLATE_CHARS,
        json_schema_extra=MULTILINE,
        description=description,
    )


class AgentCreate(Strict):
    """Mission Control's AgentCreate. A gateway's main agent: `gateway_id` with
    `board_id` null (or `is_gateway_main`)."""

    name: str = Name
    board_id: str | None = Field(None, max_length=64)
    gateway_id: str | None = Field(None, max_length=64)
    is_board_lead: bool = False
    is_gateway_main: bool = False
    identity_profile: Identity | None = Field(
        None,
        json_schema_extra=MULTILINE,
        description="role, expertise, tone, communication_style, emoji, purpose, ...",
    )
    heartbeat_config: HeartbeatConfig | None = None
    identity_template: str | None = _template("replaces the IDENTITY.md template")
    soul_template: str | None = _template("replaces the SOUL.md template")
    status: str | None = Field(
        None, max_length=64, description="refused unless provisioning: the lifecycle owns it"
    )

    _check_identity = field_validator("identity_profile")(_identity)


class AgentUpdate(Strict):
    """Only the fields sent change; a change renders the files again and reapplies the
    agent (a new generation), `?force=true` even without one. `status` is refused (403)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    board_id: str | None = Field(None, max_length=64, description="move a worker to a board")
    is_gateway_main: bool | None = None
    identity_profile: Identity | None = Field(None, json_schema_extra=MULTILINE)
    heartbeat_config: HeartbeatConfig | None = None
    identity_template: str | None = _template("null: back to the IDENTITY.md default")
    soul_template: str | None = _template("null: back to the SOUL.md default")
    status: str | None = Field(None, max_length=64, description="refused (403)")

    _check_identity = field_validator("identity_profile")(_identity)


class AgentFilter(Page):
    board_id: str | None = None
    gateway_id: str | None = None
    # Mission Control's filter; every agent the hub lists is one it manages.
    is_mc_agent: bool | None = None


class GatewayUpdate(_GatewayFields):
    name: str | None = Field(None, min_length=1, max_length=200)


class AdminHeartbeat(Strict):
    status: str | None = Field(None, max_length=64)


class ForceQuery(Query):
    force: bool = False


class TokenRotate(Strict):
    grace_s: float = Field(600, ge=0, le=86400)


class AgentRead(BaseModel):
    id: str
    name: str
    board_id: str | None
    gateway_id: str
    is_board_lead: bool
    is_gateway_main: bool
    openclaw_session_id: str
    gateway_agent_id: str
    status: str
    status_reason: str | None
    lifecycle_generation: int
    applied_generation: int
    wake_attempts: int
    checkin_deadline_at: str | None
    last_wake_sent_at: str | None
    last_seen_at: str | None
    last_provision_error: str | None
    heartbeat_config: dict[str, Any]
    identity_profile: dict[str, Any]
    identity_template: str | None
    soul_template: str | None
    work_state: str | None  # what the agent says it is doing (see the README's status table)
    reported_status: str | None  # the status it sent with its last heartbeat, as sent
    current_task_id: str | None
    work_state_at: str | None
    adopted: bool  # an existing gateway agent adopted without overwriting its files
    paused: bool  # Mission Control's "paused": heartbeat job off, never woken or marked offline
    paused_at: str | None
    paused_by: str | None  # "agent" (POST /agents/{id}/pause) or "board" (with its board)
    recovery: str | None  # went quiet: "nudged", then "fresh_session", before offline
    heartbeat_every_s: int  # the cadence the gateway runs now (0: off; the governor may stretch it)
    heartbeat_governor_step: int  # 0: its own cadence; n: backed off n steps (a quiet board)
    last_checkin_source: str | None  # "heartbeat" (the agent API), "runtime" (a run), "wake"
    cause_code: str | None  # what its sidecar finds keeps it from running: "heartbeat_missing",
    cause: str | None  # "model_auth", "runs_failing", "gateway_unreachable"; with the fix
    cause_since: str | None
    created_at: str | None
    updated_at: str | None


class AgentPage(BaseModel):
    items: list[AgentRead]
    total: int
    limit: int
    offset: int


class Accepted(BaseModel):
    ok: bool = True
    status: str


__all__ = [name for name in dir() if name[0].isupper()] + ["Page"]
