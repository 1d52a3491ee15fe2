"""Request and response models of the hub API (they also generate /openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from hub.api.core import Page, Query, Strict

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
    identity_profile: dict[str, str | list[str]] | None = None
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
