"""Gateways: list, read, create (with a join token), delete (revoke), join tokens."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from hub.adoption import inventory_in
from hub.api.agents import agent_read
from hub.api.core import MULTILINE, Api, Call, Page, Strict
from hub.api.deps import HttpDeps, deps
from hub.api.schemas import (
    AgentRead,
    GatewayCreate,
    GatewayCreated,
    GatewayPage,
    GatewayRead,
    GatewayUpdate,
    HeartbeatConfig,
    Identity,
    JoinToken,
    JoinTokenCreate,
    Ok,
)
from hub.fleet.labels import LabelError, Selector, parse_selector
from hub.gateways import EnrollmentUnavailable
from hub.link.server import SessionRegistry
from hub.pki.enrollment import IssuedToken
from hub.provisioning.agents import list_agents_in
from hub.store.database import Connection
from hub.store.errors import UnknownGateway
from hub.store.gateways import GatewayInUse, GatewayRow, gateway_in, labels_in
from hub.workspace_root import workspace_root_problem
from missioncontrol.http import ApiError
from missioncontrol.timefmt import iso
from protos.contract import GatewayGeneration


class GatewayListQuery(Page):
    selector: str | None = Field(
        None, max_length=1000, description="labels to match: env=prod,region!=us,canary,!retired"
    )


def label_error(field: str, exc: LabelError) -> ApiError:
    return ApiError(422, [{"loc": [field], "msg": str(exc), "type": "value_error"}])


def selector_of(text: str | None) -> Selector:
    """A query's selector, or a 422 naming what is wrong with it."""
    try:
        return parse_selector(text or "")
    except LabelError as exc:
        raise label_error("selector", exc) from None


def gateway_read(
    row: GatewayRow, registry: SessionRegistry, labels: dict[str, str] | None = None
) -> GatewayRead:
    session = registry.get(row.id)
    connected = registry.connected(row.id, row.connected)
    return GatewayRead(
        id=row.id,
        name=row.name,
        labels=labels or {},
        connected=connected,
        sidecar_version=row.sidecar_version,
        openclaw_version=row.openclaw_version,
        openclaw_protocol=row.openclaw_protocol,
        gateway_generation=GatewayGeneration.of(row.gateway_generation).label,
        gateway_reachable=row.reachable,
        gateway_unreachable_reason=row.unreachable_reason,
        config_valid=row.config_valid,
        config_error=row.config_error,
        workspace_root=row.workspace_root,
        workspace_root_reported=row.reported_workspace_root,
        workspace_root_problem=workspace_root_problem(
            row.declared_workspace_root,
            row.reported_workspace_root,
            row.follows_hub_workspace_root,
            connected_once=row.connected_at is not None,
        ),
        agent_api_url=row.agent_api_url,
        hostname=row.hostname,
        last_seen_at=iso(session.last_message_at if session else row.last_seen_at),
        connected_at=iso(row.connected_at) if connected else None,
        disconnected_at=iso(row.disconnected_at),
        command_sequence=row.next_sequence - 1,
        acked_sequence=row.acked_sequence,
        created_at=iso(row.created_at),
        updated_at=iso(row.updated_at),
    )


def join_token(token: IssuedToken, d: HttpDeps) -> JoinToken:
    command = (
        f"mc-sidecar enroll --hub {d.enroll_address} --token '{token.join_string}'"
        if d.enroll_address
        else None
    )
    return JoinToken(
        join_token=token.join_string,
        token_id=token.token_id,
        expires_at=iso(token.expires_at),
        max_uses=token.max_uses,
        enroll_command=command,
        labels=dict(token.labels),
    )


def register(api: Api) -> None:
    tags = ("gateways",)

    @api.route(
        "GET",
        "/api/v1/gateways",
        summary="List gateways",
        tags=tags,
        query=GatewayListQuery,
        response=GatewayPage,
    )
    async def list_gateways(call: Call) -> GatewayPage:
        d = deps(call.request)
        q: GatewayListQuery = call.query
        selector = selector_of(q.selector)

        def op(conn: Connection) -> tuple[list[tuple[GatewayRow, dict[str, str]]], int]:
            labels = labels_in(conn)
            rows = [
                GatewayRow.from_row(r)
                for r in conn.execute("SELECT * FROM gateways ORDER BY created_at, id")
            ]
            chosen = [
                (r, labels.get(r.id, {})) for r in rows if selector.matches(labels.get(r.id, {}))
            ]
            return chosen[q.offset : q.offset + q.limit], len(chosen)

        page, total = await d.db.read(op)
        return GatewayPage(
            items=[gateway_read(r, d.registry, labels) for r, labels in page],
            total=total,
            limit=q.limit,
            offset=q.offset,
        )

    @api.route(
        "POST",
        "/api/v1/gateways",
        summary="Create a gateway; returns a one-time join token",
        tags=tags,
        body=GatewayCreate,
        response=GatewayCreated,
        status=201,
    )
    async def create_gateway(call: Call) -> GatewayCreated:
        d = deps(call.request)
        created = await d.gateways.create(call.body.name, workspace_root=call.body.workspace_root)
        result = GatewayCreated(**gateway_read(created.gateway, d.registry).model_dump())
        if created.token is not None:
            for key, value in join_token(created.token, d).model_dump().items():
                setattr(result, key, value)
        else:
            result.enroll_command = (
                f"mc-sidecar run --hub {d.link_address} --insecure-dev "
                f"--gateway-id {created.gateway.id}"
            )
        return result

    @api.route(
        "GET",
        "/api/v1/gateways/{gateway_id}",
        summary="Read a gateway",
        tags=tags,
        response=GatewayRead,
    )
    async def get_gateway(call: Call) -> GatewayRead:
        d = deps(call.request)
        gateway_id = call.request.match_info["gateway_id"]
        row = await d.store.get_gateway(gateway_id)
        if row is None:
            raise ApiError(404, "gateway not found")
        labels = await d.db.read(lambda conn: labels_in(conn, [gateway_id]))
        return gateway_read(row, d.registry, labels.get(gateway_id))

    @api.route(
        "PATCH",
        "/api/v1/gateways/{gateway_id}",
        summary="Rename a gateway, or declare its workspace root (before agents were applied)",
        tags=tags,
        body=GatewayUpdate,
        response=GatewayRead,
    )
    async def patch_gateway(call: Call) -> GatewayRead:
        d = deps(call.request)
        try:
            row = await d.provisioning.update_gateway(
                call.request.match_info["gateway_id"],
                name=call.body.name,
                workspace_root=call.body.workspace_root,
            )
        except UnknownGateway:
            raise ApiError(404, "gateway not found") from None
        return gateway_read(row, d.registry)

    @api.route(
        "DELETE",
        "/api/v1/gateways/{gateway_id}",
        summary="Delete a gateway (revokes its certificates, closes its stream)",
        tags=tags,
        response=Ok,
    )
    async def delete_gateway(call: Call) -> Ok:
        try:
            await deps(call.request).gateways.delete(call.request.match_info["gateway_id"])
        except UnknownGateway:
            raise ApiError(404, "gateway not found") from None
        except GatewayInUse as exc:
            raise ApiError(409, str(exc)) from None
        return Ok()

    @api.route(
        "POST",
        "/api/v1/gateways/{gateway_id}/join-tokens",
        summary="Make another join token",
        tags=tags,
        body=JoinTokenCreate,
        response=JoinToken,
        status=201,
    )
    async def create_join_token(call: Call) -> JoinToken:
        d = deps(call.request)
        gateway_id = call.request.match_info["gateway_id"]
        if await d.store.get_gateway(gateway_id) is None:
            raise ApiError(404, "gateway not found")
        try:
            token = await d.gateways.join_token(
                gateway_id, ttl_s=call.body.ttl_s, uses=call.body.uses, labels=call.body.labels
            )
        except EnrollmentUnavailable as exc:
            raise ApiError(409, str(exc)) from None
        return join_token(token, d)


class UnmanagedAgentRead(BaseModel):
    gateway_agent_id: str  # its id in openclaw.json
    name: str
    workspace: str | None
    adoptable: bool
    why_not: str | None  # what to change first, when it cannot be adopted as it is


class GatewayInventory(BaseModel):
    gateway_id: str
    managed: list[AgentRead]  # the hub's agents on this gateway
    unmanaged: list[UnmanagedAgentRead]  # openclaw.json's others, as the sidecar last read it


class AgentAdopt(Strict):
    """Adopt an unmanaged agent into a board: its id, workspace and files stay its own."""

    gateway_agent_id: str = Field(min_length=1, max_length=200)
    board_id: str = Field(min_length=1, max_length=64)
    name: str | None = Field(None, min_length=1, max_length=200, description="default: its own")
    is_board_lead: bool = False
    identity_profile: Identity | None = Field(None, json_schema_extra=MULTILINE)
    heartbeat_config: HeartbeatConfig | None = None


def register_inventory(api: Api) -> None:
    tags = ("gateways",)

    @api.route(
        "GET",
        "/api/v1/gateways/{gateway_id}/inventory",
        summary="The gateway's agents: managed ones, and openclaw.json's others (adoptable)",
        tags=tags,
        response=GatewayInventory,
    )
    async def gateway_inventory(call: Call) -> GatewayInventory:
        gateway_id = call.request.match_info["gateway_id"]

        def op(conn: Connection) -> dict[str, Any]:
            gateway = gateway_in(conn, gateway_id)
            managed, _ = list_agents_in(
                conn, board_id=None, gateway_id=gateway_id, managed=True, limit=10_000, offset=0
            )
            return inventory_in(conn, gateway, managed)

        found = await deps(call.request).db.read(op)
        return GatewayInventory(
            gateway_id=gateway_id,
            managed=[agent_read(a) for a in found["managed"]],
            unmanaged=[UnmanagedAgentRead(**u) for u in found["unmanaged"]],
        )

    @api.route(
        "POST",
        "/api/v1/gateways/{gateway_id}/agents/adopt",
        summary="Adopt an agent openclaw.json already has into a board, keeping its files",
        tags=tags,
        body=AgentAdopt,
        response=AgentRead,
        status=201,
    )
    async def adopt_gateway_agent(call: Call) -> AgentRead:
        gateway_id = call.request.match_info["gateway_id"]
        body: AgentAdopt = call.body
        d = deps(call.request)
        if await d.store.get_gateway(gateway_id) is None:
            raise ApiError(404, "gateway not found")
        agent = await d.provisioning.adopt_agent(
            gateway_id,
            body.gateway_agent_id,
            board_id=body.board_id,
            name=body.name,
            lead=body.is_board_lead,
            identity_profile=body.identity_profile,
            heartbeat_config=body.heartbeat_config.config() if body.heartbeat_config else None,
        )
        return agent_read(agent)
