"""Board webhooks: admin CRUD, stored payloads, and the public ingest endpoint.

Ingest checks, in this order: board (404), webhook (404), enabled (410), declared
size (413), streamed size (413), HMAC signature when the webhook has a secret (403),
then the webhook's own rate limit (429 with Retry-After; per webhook, not per
address). Only then is the payload stored and answered 202 (a replayed signed body:
202 with the first payload's id and `duplicate: true`, nothing stored). Delivery to
the agent is the delivery worker's job (hub/webhooks/delivery.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Self, TypeVar

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from hub.api.core import MULTILINE, OPAQUE, Api, Auth, Call, Page, Strict
from hub.api.deps import deps
from hub.webhooks.rules import HEADER_TOKEN, MAX_PAYLOAD_BYTES
from hub.webhooks.service import WebhookService
from hub.webhooks.store import InvalidWebhook, NotFound, SecretUnreadable, WebhookRow
from missioncontrol.http import ApiError, RateLimiter

T = TypeVar("T")

INGEST_RATE = (1.0, 60)  # payloads per second, burst, per webhook
Description = Field(
    min_length=1,
    max_length=4000,
    description="the instruction shown to the agent",
    json_schema_extra=MULTILINE,
)
SignatureHeader = Field(
    None,
    max_length=100,
    pattern=HEADER_TOKEN.pattern,
    description="read the signature only from this header (an RFC 7230 token); "
    "default: X-Hub-Signature-256, then X-Webhook-Signature",
)
Secret = Field(
    None,
    min_length=8,
    max_length=512,
    description="HMAC-SHA256 key for signed payloads; write-only, never returned",
    json_schema_extra=OPAQUE,
)


class WebhookCreate(Strict):
    description: str = Description
    enabled: bool = True
    agent_id: str | None = Field(
        None, max_length=64, description="an agent of this board; default: the board's lead"
    )
    secret: str | None = Secret
    signature_header: str | None = SignatureHeader


class WebhookUpdate(Strict):
    """Only the fields sent change; null clears agent_id, secret and signature_header."""

    description: str | None = Field(
        None, min_length=1, max_length=4000, json_schema_extra=MULTILINE
    )
    enabled: bool | None = None
    agent_id: str | None = Field(None, max_length=64)
    secret: str | None = Secret
    signature_header: str | None = SignatureHeader

    @model_validator(mode="after")
    def required_fields_are_not_null(self) -> Self:
        for name in ("description", "enabled"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class BoardWebhookRead(BaseModel):
    id: str
    board_id: str
    agent_id: str | None
    description: str
    enabled: bool
    has_secret: bool
    signature_header: str | None
    endpoint_path: str
    created_at: str | None
    updated_at: str | None


class BoardWebhookPage(BaseModel):
    items: list[BoardWebhookRead]
    total: int
    limit: int
    offset: int


class WebhookDeleted(BaseModel):
    ok: bool = True
    payloads_deleted: int


class WebhookPayloadSummary(BaseModel):
    id: str
    webhook_id: str
    board_id: str
    content_type: str
    headers: dict[str, str]
    size_bytes: int
    received_at: str | None
    delivered_at: str | None
    delivery_attempts: int
    next_attempt_at: str | None
    last_error: str | None


class WebhookPayloadRead(WebhookPayloadSummary):
    payload: Any = Field(description="the body: JSON when it parses, else text")


class WebhookPayloadPage(BaseModel):
    items: list[WebhookPayloadSummary]
    total: int
    limit: int
    offset: int


class WebhookIngested(BaseModel):
    ok: bool = True
    board_id: str
    webhook_id: str
    payload_id: str
    duplicate: bool = Field(
        False, description="a replay of a signed payload already received: not stored again"
    )


def webhook_read(row: WebhookRow) -> BoardWebhookRead:
    return BoardWebhookRead(**row.as_json())


def service(call: Call) -> WebhookService:
    found = deps(call.request).webhooks
    if found is None:
        raise ApiError(503, "board webhooks are not enabled on this hub")
    return found


async def guarded(work: Awaitable[T]) -> T:
    """The service's errors as HTTP answers."""
    try:
        return await work
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except InvalidWebhook as exc:
        raise ApiError(422, str(exc)) from None
    except SecretUnreadable as exc:
        raise ApiError(503, str(exc)) from None


async def read_raw_body(request: web.Request, max_bytes: int) -> bytes:
    """The raw body, refused (413) past `max_bytes` whether declared or streamed."""
    too_large = f"payload is over {max_bytes} bytes"
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def register(api: Api) -> None:
    tags = ("webhooks",)
    base = "/api/v1/boards/{board_id}/webhooks"
    one = base + "/{webhook_id}"
    ingest_limit = RateLimiter(*INGEST_RATE)  # one per mounted app: per-hub state

    def ids(call: Call) -> tuple[str, str]:
        return call.request.match_info["board_id"], call.request.match_info["webhook_id"]

    @api.route(
        "GET",
        base,
        summary="List a board's webhooks",
        tags=tags,
        query=Page,
        response=BoardWebhookPage,
    )
    async def list_board_webhooks(call: Call) -> BoardWebhookPage:
        q = call.query
        board_id = call.request.match_info["board_id"]
        rows, total = await guarded(service(call).list_webhooks(board_id, q.limit, q.offset))
        return BoardWebhookPage(
            items=[webhook_read(r) for r in rows], total=total, limit=q.limit, offset=q.offset
        )

    @api.route(
        "POST",
        base,
        summary="Create a board webhook (its secret is write-only)",
        tags=tags,
        body=WebhookCreate,
        response=BoardWebhookRead,
        status=201,
    )
    async def create_board_webhook(call: Call) -> BoardWebhookRead:
        body: WebhookCreate = call.body
        row = await guarded(
            service(call).create_webhook(
                call.request.match_info["board_id"],
                description=body.description,
                enabled=body.enabled,
                agent_id=body.agent_id,
                secret=body.secret,
                signature_header=body.signature_header,
            )
        )
        return webhook_read(row)

    @api.route("GET", one, summary="Read a board webhook", tags=tags, response=BoardWebhookRead)
    async def get_board_webhook(call: Call) -> BoardWebhookRead:
        return webhook_read(await guarded(service(call).get_webhook(*ids(call))))

    @api.route(
        "PATCH",
        one,
        summary="Update a board webhook",
        tags=tags,
        body=WebhookUpdate,
        response=BoardWebhookRead,
    )
    async def patch_board_webhook(call: Call) -> BoardWebhookRead:
        body: WebhookUpdate = call.body
        changes = {name: getattr(body, name) for name in body.model_fields_set}
        return webhook_read(await guarded(service(call).update_webhook(*ids(call), changes)))

    @api.route(
        "DELETE",
        one,
        summary="Delete a board webhook and its stored payloads",
        tags=tags,
        response=WebhookDeleted,
    )
    async def delete_board_webhook(call: Call) -> WebhookDeleted:
        payloads = await guarded(service(call).delete_webhook(*ids(call)))
        return WebhookDeleted(payloads_deleted=payloads)

    @api.route(
        "GET",
        one + "/payloads",
        summary="List a webhook's stored payloads, newest first (without bodies)",
        tags=tags,
        query=Page,
        response=WebhookPayloadPage,
    )
    async def list_webhook_payloads(call: Call) -> WebhookPayloadPage:
        q = call.query
        items, total = await guarded(service(call).list_payloads(*ids(call), q.limit, q.offset))
        return WebhookPayloadPage(
            items=[WebhookPayloadSummary(**item) for item in items],
            total=total,
            limit=q.limit,
            offset=q.offset,
        )

    @api.route(
        "GET",
        one + "/payloads/{payload_id}",
        summary="Read one stored payload with its body and delivery state",
        tags=tags,
        response=WebhookPayloadRead,
    )
    async def get_webhook_payload(call: Call) -> WebhookPayloadRead:
        payload_id = call.request.match_info["payload_id"]
        item = await guarded(service(call).get_payload(*ids(call), payload_id))
        return WebhookPayloadRead(**item)

    @api.route(
        "POST",
        one,
        summary="Receive a payload (public; HMAC-SHA256 signed when the webhook has a secret)",
        tags=tags,
        auth=Auth.NONE,
        response=WebhookIngested,
        status=202,
        requestBody={
            "required": False,
            "content": {"application/json": {"schema": {}}},
        },
    )
    async def ingest_webhook_payload(call: Call) -> WebhookIngested:
        webhooks = service(call)
        request = call.request
        webhook = await guarded(webhooks.get_webhook(*ids(call)))
        if not webhook.enabled:
            raise ApiError(410, "this webhook is disabled")
        body = await read_raw_body(request, MAX_PAYLOAD_BYTES)
        try:
            signed = webhooks.signature_ok(webhook, body, request.headers)
        except SecretUnreadable as exc:
            raise ApiError(503, str(exc)) from None
        if not signed:
            raise ApiError(
                403,
                "missing or invalid signature: send the hex HMAC-SHA256 of the raw body, keyed "
                "by the webhook's secret, in "
                + (webhook.signature_header or "X-Hub-Signature-256 or X-Webhook-Signature"),
            )
        ingest_limit.check(webhook.id, "this webhook")
        payload_id, duplicate = await guarded(
            webhooks.store_payload(
                webhook, body, request.headers.get("Content-Type", ""), request.headers
            )
        )
        return WebhookIngested(
            duplicate=duplicate,
            board_id=webhook.board_id,
            webhook_id=webhook.id,
            payload_id=payload_id,
        )
