"""Alert rules with outbound webhooks, and their delivery history.

A rule names a kind (what it watches), a URL and a secret; optional filters narrow
it to a board or a gateway. Alerts are JSON POSTs signed like inbound webhooks
(`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`), retried with
backoff, recorded one row per attempt, and held back per rule and subject by the
rule's cooldown. The watching and sending is hub/alerts/.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from hub.alerts.rules import MAX_URL_CHARS, AlertKind, url_problem
from hub.alerts.service import AlertService
from hub.api.core import OPAQUE, Api, Call, Page, Strict
from hub.api.deps import deps
from missioncontrol.http import ApiError

MAX_ID_CHARS = 64
MAX_COOLDOWN_S = 7 * 86400
DeliveryState = Literal["pending", "delivered", "failed"]

Name = Field(min_length=1, max_length=200, description="what the receiver and operators see")
Url = Field(
    min_length=1,
    max_length=MAX_URL_CHARS,
    description="where alerts are POSTed: http:// or https://; redirects are not followed",
)
SECRET_DOC = "HMAC-SHA256 key the payload is signed with; write-only, never returned"
COOLDOWN_DOC = (
    "after an alert, further ones for the same subject (agent, gateway, rollout) are held "
    "back this long and counted in the next one's suppressed_since_last"
)
DisconnectedFor = Field(
    None, ge=1, le=30 * 86400, description="gateway_disconnected: seconds away before it fires"
)
ExpiringWithin = Field(
    None, gt=0, le=365, description="certificate_expiring: days before the certificate ends"
)
BoardFilter = Field(None, max_length=MAX_ID_CHARS, description="only events of this board")
GatewayFilter = Field(None, max_length=MAX_ID_CHARS, description="only this gateway")


class _RuleFields(Strict):
    """What creating and updating a rule check alike: the URL's scheme, host and form."""

    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and (problem := url_problem(value)) is not None:
            raise ValueError(f"url {problem}")
        return value


class AlertRuleCreate(_RuleFields):
    name: str = Name
    kind: AlertKind = Field(description="what the rule watches")
    url: str = Url
    secret: str = Field(
        min_length=16, max_length=512, description=SECRET_DOC, json_schema_extra=OPAQUE
    )
    enabled: bool = True
    board_id: str | None = BoardFilter
    gateway_id: str | None = GatewayFilter
    disconnected_for_s: float | None = DisconnectedFor
    expiring_within_days: float | None = ExpiringWithin
    cooldown_s: float = Field(900.0, ge=0, le=MAX_COOLDOWN_S, description=COOLDOWN_DOC)


class AlertRuleUpdate(_RuleFields):
    """Only the fields sent change; null clears a filter. The kind does not change:
    create another rule for another kind."""

    name: str | None = Field(None, min_length=1, max_length=200)
    url: str | None = Field(None, min_length=1, max_length=MAX_URL_CHARS)
    secret: str | None = Field(
        None, min_length=16, max_length=512, description=SECRET_DOC, json_schema_extra=OPAQUE
    )
    enabled: bool | None = None
    board_id: str | None = BoardFilter
    gateway_id: str | None = GatewayFilter
    disconnected_for_s: float | None = DisconnectedFor
    expiring_within_days: float | None = ExpiringWithin
    cooldown_s: float | None = Field(None, ge=0, le=MAX_COOLDOWN_S, description=COOLDOWN_DOC)

    @model_validator(mode="after")
    def required_fields_are_not_null(self) -> Self:
        for name in ("name", "url", "secret", "enabled", "cooldown_s"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class AlertRuleRead(BaseModel):
    id: str
    name: str
    kind: AlertKind
    url: str
    enabled: bool
    board_id: str | None
    gateway_id: str | None
    disconnected_for_s: float | None
    expiring_within_days: float | None
    cooldown_s: float
    created_at: str | None
    updated_at: str | None


class AlertRulePage(BaseModel):
    items: list[AlertRuleRead]
    total: int
    limit: int
    offset: int


class AlertRuleQuery(Page):
    kind: AlertKind | None = None


class AlertRuleDeleted(BaseModel):
    ok: bool = True
    deliveries_deleted: int


class AlertDeliverySummary(BaseModel):
    id: str = Field(description="the alert's id, also sent as X-MC-Alert-Id (dedupe by it)")
    rule_id: str
    subject: str
    summary: str
    event_id: int | None
    state: DeliveryState
    attempts: int
    created_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
    last_error: str | None


class AlertAttempt(BaseModel):
    attempt: int
    at: str | None
    status: int | None = Field(description="the receiver's HTTP status; null: no answer")
    error: str | None
    response_excerpt: str
    duration_ms: float | None


class AlertDeliveryRead(AlertDeliverySummary):
    payload: dict[str, object] = Field(description="the body sent, as signed")
    attempt_log: list[AlertAttempt]


class AlertDeliveryPage(BaseModel):
    items: list[AlertDeliverySummary]
    total: int
    limit: int
    offset: int


class AlertDeliveryQuery(Page):
    state: DeliveryState | None = None


def service(call: Call) -> AlertService:
    found = deps(call.request).alerts
    if found is None:
        raise ApiError(503, "alerts are not enabled on this hub")
    return found


def register(api: Api) -> None:
    tags = ("alerts",)
    base = "/api/v1/alerts"
    one = base + "/{rule_id}"

    def rule_id(call: Call) -> str:
        return call.request.match_info["rule_id"]

    @api.route(
        "GET", base, summary="List alert rules", tags=tags, query=AlertRuleQuery,
        response=AlertRulePage,
    )  # fmt: skip
    async def list_alert_rules(call: Call) -> AlertRulePage:
        q: AlertRuleQuery = call.query
        kind = q.kind.value if q.kind else None
        rows, total = await service(call).list_rules(kind, q.limit, q.offset)
        return AlertRulePage(
            items=[AlertRuleRead(**r.as_json()) for r in rows],
            total=total,
            limit=q.limit,
            offset=q.offset,
        )

    @api.route(
        "POST",
        base,
        summary="Create an alert rule (its secret is write-only)",
        tags=tags,
        body=AlertRuleCreate,
        response=AlertRuleRead,
        status=201,
    )
    async def create_alert_rule(call: Call) -> AlertRuleRead:
        body: AlertRuleCreate = call.body
        row = await service(call).create_rule(body.model_dump())
        return AlertRuleRead(**row.as_json())

    @api.route("GET", one, summary="Read an alert rule", tags=tags, response=AlertRuleRead)
    async def get_alert_rule(call: Call) -> AlertRuleRead:
        return AlertRuleRead(**(await service(call).get_rule(rule_id(call))).as_json())

    @api.route(
        "PATCH",
        one,
        summary="Update an alert rule",
        tags=tags,
        body=AlertRuleUpdate,
        response=AlertRuleRead,
    )
    async def patch_alert_rule(call: Call) -> AlertRuleRead:
        body: AlertRuleUpdate = call.body
        changes = {name: getattr(body, name) for name in body.model_fields_set}
        row = await service(call).update_rule(rule_id(call), changes)
        return AlertRuleRead(**row.as_json())

    @api.route(
        "DELETE",
        one,
        summary="Delete an alert rule and its delivery history",
        tags=tags,
        response=AlertRuleDeleted,
    )
    async def delete_alert_rule(call: Call) -> AlertRuleDeleted:
        return AlertRuleDeleted(deliveries_deleted=await service(call).delete_rule(rule_id(call)))

    @api.route(
        "POST",
        one + "/test",
        summary="Send a test alert now (past the cooldown), to try the receiver and its "
        "signature check",
        tags=tags,
        response=AlertDeliverySummary,
        status=202,
    )
    async def test_alert_rule(call: Call) -> AlertDeliverySummary:
        return AlertDeliverySummary(**await service(call).send_test(rule_id(call)))

    @api.route(
        "GET",
        one + "/deliveries",
        summary="List a rule's alerts and their delivery state, newest first",
        tags=tags,
        query=AlertDeliveryQuery,
        response=AlertDeliveryPage,
    )
    async def list_alert_deliveries(call: Call) -> AlertDeliveryPage:
        q: AlertDeliveryQuery = call.query
        items, total = await service(call).list_deliveries(
            rule_id(call), q.state, q.limit, q.offset
        )
        return AlertDeliveryPage(
            items=[AlertDeliverySummary(**i) for i in items],
            total=total,
            limit=q.limit,
            offset=q.offset,
        )

    @api.route(
        "GET",
        one + "/deliveries/{delivery_id}",
        summary="Read one alert: the payload sent and every attempt",
        tags=tags,
        response=AlertDeliveryRead,
    )
    async def get_alert_delivery(call: Call) -> AlertDeliveryRead:
        delivery_id = call.request.match_info["delivery_id"]
        return AlertDeliveryRead(**await service(call).get_delivery(rule_id(call), delivery_id))
