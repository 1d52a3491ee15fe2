"""Gateways: list, read, create (with a join token), delete (revoke), join tokens."""

from __future__ import annotations

from hub.api.core import Api, Call
from hub.api.deps import HttpDeps, deps
from hub.api.schemas import (
    GatewayCreate,
    GatewayCreated,
    GatewayPage,
    GatewayRead,
    GatewayUpdate,
    JoinToken,
    JoinTokenCreate,
    Ok,
    Page,
)
from hub.gateways import EnrollmentUnavailable
from hub.link.server import SessionRegistry
from hub.pki.enrollment import IssuedToken
from hub.store.errors import UnknownGateway
from hub.store.gateways import GatewayInUse, GatewayRow
from hub.workspace_root import workspace_root_problem
from missioncontrol.http import ApiError
from missioncontrol.timefmt import iso
from protos.contract import GatewayGeneration


def gateway_read(row: GatewayRow, registry: SessionRegistry) -> GatewayRead:
    session = registry.get(row.id)
    return GatewayRead(
        id=row.id,
        name=row.name,
        connected=session is not None,
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
        connected_at=iso(row.connected_at) if session else None,
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
    )


def register(api: Api) -> None:
    tags = ("gateways",)

    @api.route(
        "GET",
        "/api/v1/gateways",
        summary="List gateways",
        tags=tags,
        query=Page,
        response=GatewayPage,
    )
    async def list_gateways(call: Call) -> GatewayPage:
        d = deps(call.request)
        rows, total = await d.store.list_gateways(call.query.limit, call.query.offset)
        return GatewayPage(
            items=[gateway_read(r, d.registry) for r in rows],
            total=total,
            limit=call.query.limit,
            offset=call.query.offset,
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
        row = await d.store.get_gateway(call.request.match_info["gateway_id"])
        if row is None:
            raise ApiError(404, "gateway not found")
        return gateway_read(row, d.registry)

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
                gateway_id, ttl_s=call.body.ttl_s, uses=call.body.uses
            )
        except EnrollmentUnavailable as exc:
            raise ApiError(409, str(exc)) from None
        return join_token(token, d)
