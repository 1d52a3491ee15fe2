"""Request and response models of the hub API (they also generate /openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from hub.api.core import MULTILINE, Page, Query, Strict

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


class GatewayCreate(Strict):
    name: str = Name


class JoinTokenCreate(Strict):
    ttl_s: float = Field(1800, gt=0, le=86400)
    uses: int = Field(1, ge=1, le=10_000)


class JoinToken(BaseModel):
    join_token: str
    token_id: str
    expires_at: str | None
    max_uses: int
    enroll_command: str | None


class GatewayRead(BaseModel):
    id: str
    name: str
    connected: bool
    sidecar_version: str | None
    openclaw_version: str | None
    openclaw_protocol: int | None
    gateway_generation: str | None
    gateway_reachable: bool | None
    gateway_unreachable_reason: str | None
    config_valid: bool | None
    config_error: str | None
    workspace_root: str | None
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
    connected: bool  # the sidecar is connected and reaches its gateway
    sidecar_connected: bool
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
    """OpenClaw heartbeat settings of an agent."""

    every: str = Field("10m", pattern=r"^\d{1,6}(s|m|h)?$", description="cadence, e.g. 10m")
    target: str = Field("none", min_length=1, max_length=64)
    includeReasoning: bool = False  # the key Mission Control uses


class AgentCreate(Strict):
    name: str = Name
    board_id: str | None = Field(None, max_length=64)
    gateway_id: str | None = Field(None, max_length=64)
    is_board_lead: bool = False
    is_gateway_main: bool = False
    identity_profile: dict[str, str | list[str]] | None = Field(None, json_schema_extra=MULTILINE)
    heartbeat_config: HeartbeatConfig | None = None


class AgentUpdate(Strict):
    status: str | None = None  # refused: the lifecycle owns it


class AgentFilter(Page):
    board_id: str | None = None
    gateway_id: str | None = None
    # Mission Control's filter; every agent the hub lists is one it manages.
    is_mc_agent: bool | None = None


class GatewayUpdate(Strict):
    name: str = Field(min_length=1, max_length=200)


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
