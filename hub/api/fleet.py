"""The fleet: gateway labels, fleet join tokens, the inventory, drift, fleet queries,
staged rollouts."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator, model_validator

from hub.api.core import MULTILINE, Api, Call, Page, Query, Strict
from hub.api.deps import HttpDeps, deps
from hub.api.gateways import join_token, label_error, selector_of
from hub.api.schemas import AgentCreate, JoinToken, Ok
from hub.api.streams import sse_response
from hub.fleet import changes as ch
from hub.fleet import query as fq
from hub.fleet import rollouts as ro
from hub.fleet.drift import DriftReport, drift_in
from hub.fleet.driver import Plan, RolloutSpec, RolloutView
from hub.fleet.labels import LabelError, check_key, check_labels, check_value
from hub.fleet.store import RolloutRow, rollouts_in
from hub.gateways import EnrollmentUnavailable
from hub.pki import join_tokens as jt
from hub.store.database import Connection
from hub.store.event_log import add_event
from hub.store.gateways import GatewayRow, gateway_in, labels_in, set_labels_in
from missioncontrol.http import ApiError
from missioncontrol.timefmt import iso
from missioncontrol.version import VERSION, VersionSkewError, check_sidecar_version
from missioncontrol.workspace_files import QUERYABLE_FILES

# ------------------------------------------------------------------------ labels


class LabelsPut(Strict):
    labels: dict[str, str] = Field(description="the gateway's labels from now on (all of them)")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)


class LabelsPatch(Strict):
    labels: dict[str, str | None] = Field(
        description="labels to set; a null value removes that label"
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for key, label in value.items():
            check_key(key)
            if label is not None:
                check_value(key, label)
        return value


class LabelsRead(BaseModel):
    gateway_id: str
    labels: dict[str, str]


# ------------------------------------------------------------------ join tokens


class FleetTokenCreate(Strict):
    """A fleet token: each use enrolls a new gateway, named after its host, with `labels`."""

    ttl_s: float = Field(jt.DEFAULT_TTL_S, gt=0, le=jt.MAX_TTL_S)
    uses: int = Field(100, ge=1, le=jt.MAX_USES)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)


class FleetTokenRead(BaseModel):
    token_id: str  # the public part; the secret is never kept
    labels: dict[str, str]
    uses: int
    max_uses: int
    created_at: str | None
    expires_at: str | None
    active: bool  # unexpired with uses left


class FleetTokenList(BaseModel):
    items: list[FleetTokenRead]


# ------------------------------------------------------------------- inventory


class InventoryQuery(Query):
    selector: str | None = Field(None, max_length=1000)


class InventoryGateway(BaseModel):
    id: str
    name: str
    labels: dict[str, str]
    connected: bool
    last_seen_at: str | None
    sidecar_version: str | None
    sidecar_supported: bool | None  # inside the window the hub accepts (None: never said)
    openclaw_version: str | None
    openclaw_protocol: int | None
    gateway_generation: int
    agents_managed: int
    agents_unmanaged: int
    certificate_expires_at: str | None


class VersionCount(BaseModel):
    version: str | None
    gateways: int


class Inventory(BaseModel):
    total: int
    connected: int
    hub_version: str
    sidecar_versions: list[VersionCount]
    openclaw_versions: list[VersionCount]
    outside_supported_window: list[str]  # gateway ids whose sidecar the hub would refuse
    gateways: list[InventoryGateway]


# -------------------------------------------------------------------- rollouts


class HeartbeatChange(Strict):
    kind: Literal["heartbeat"]
    heartbeat_config: dict[str, Any]


class TemplatesChange(Strict):
    kind: Literal["templates"]
    identity_template: str | None = Field(None, max_length=20_000, json_schema_extra=MULTILINE)
    soul_template: str | None = Field(None, max_length=20_000, json_schema_extra=MULTILINE)


class ReapplyChange(Strict):
    kind: Literal["reapply"]
    overwrite: bool = False
    reset_sessions: bool = False


class FleetAgent(AgentCreate):
    """One agent to create on every gateway: the agent create request, with the board
    named (each gateway has its own) instead of its id, and no gateway."""

    board: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the board of this name on each gateway; null: the gateway's main agent",
    )

    @model_validator(mode="after")
    def _placed_per_gateway(self) -> FleetAgent:
        if self.board_id is not None or self.gateway_id is not None:
            raise ValueError(
                "board_id and gateway_id differ per gateway: name the board with `board` "
                "(null for the gateway's main agent) and choose gateways with the selector"
            )
        if self.status is not None:
            raise ValueError("status is controlled by the lifecycle; leave it out")
        if self.is_gateway_main and self.board is not None:
            raise ValueError("a gateway's main agent has no board: send board null")
        if self.is_board_lead and self.board is None:
            raise ValueError("a lead leads a board: name it with `board`")
        return self

    def entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "board": self.board,
            "is_board_lead": self.is_board_lead,
            "identity_profile": self.identity_profile,
            "heartbeat_config": self.heartbeat_config.config() if self.heartbeat_config else None,
            "identity_template": self.identity_template,
            "soul_template": self.soul_template,
        }


class AgentsChange(Strict):
    kind: Literal["agents"]
    agents: list[FleetAgent] = Field(min_length=1, max_length=ch.MAX_AGENTS)


class RolloutCreate(Strict):
    """One change to the gateways `selector` picks, in waves gated on their health."""

    selector: str = Field("", max_length=1000, description="e.g. env=prod,region!=us")
    change: HeartbeatChange | TemplatesChange | ReapplyChange | AgentsChange = Field(
        discriminator="kind"
    )
    name: str = Field("", max_length=200)
    agents: Literal["main", "all"] = Field(
        "main", description="which agents of each gateway: its main agent, or all of them"
    )
    canary: int = Field(1, ge=0, le=10_000, description="gateways in the first wave")
    waves: list[float] = Field(
        list(ro.DEFAULT_PERCENTAGES),
        min_length=1,
        max_length=20,
        description="cumulative percentages of the gateways after the canary",
    )
    max_fail_percentage: float = Field(0, ge=0, le=100)
    gate_deadline_s: float = Field(ro.DEFAULT_DEADLINE_S, gt=0, le=24 * 3600)
    dry_run: bool = Field(False, description="list the waves and gateways; change nothing")

    def spec(self) -> RolloutSpec:
        if isinstance(self.change, AgentsChange):  # the create request's shape, per gateway
            change: dict[str, Any] = {"agents": [a.entry() for a in self.change.agents]}
        else:
            change = self.change.model_dump(exclude_unset=True)
        change["kind"] = self.change.kind
        return RolloutSpec(
            selector=self.selector,
            change=change,
            name=self.name,
            agents=self.agents,
            canary=self.canary,
            percentages=tuple(self.waves),
            max_fail_percentage=self.max_fail_percentage,
            gate_deadline_s=self.gate_deadline_s,
        )


class RolloutGatewayRead(BaseModel):
    gateway_id: str
    name: str | None
    state: str
    reason: str | None = None
    applied_at: str | None = None
    decided_at: str | None = None
    rolled_back_at: str | None = None
    agents: int = 0
    labels: dict[str, str] | None = None  # in a dry run
    busy_with: str | None = None  # in a dry run: the active rollout already on it


class WaveRead(BaseModel):
    index: int  # from 1
    size: int
    state: str  # pending, running, done, failed
    counts: dict[str, int]
    gateways: list[RolloutGatewayRead]


class RolloutRead(BaseModel):
    id: str | None  # None in a dry run
    name: str
    status: str
    reason: str | None
    selector: str
    agents: str
    change: dict[str, Any]
    canary: int
    percentages: list[float]
    max_fail_percentage: float
    gate_deadline_s: float
    current_wave: int  # from 1
    wave_count: int
    gateways: int
    counts: dict[str, int]
    waves: list[WaveRead]
    created_at: str | None
    updated_at: str | None
    finished_at: str | None


class RolloutSummary(BaseModel):
    id: str
    name: str
    status: str
    reason: str | None
    selector: str
    change: str
    current_wave: int
    wave_count: int
    created_at: str | None
    finished_at: str | None


class RolloutPage(BaseModel):
    items: list[RolloutSummary]
    total: int
    limit: int
    offset: int


class RolloutListQuery(Page):
    status: ro.Status | None = None


def _counts(states: list[str]) -> dict[str, int]:
    counts = {str(s): 0 for s in ro.TargetState}
    for state in states:
        counts[state] += 1
    return counts


def rollout_read(view: RolloutView) -> RolloutRead:
    row = view.rollout
    waves = []
    for index in range(row.wave_count):
        targets = [t for t in view.targets if t.wave == index]
        states = [str(t.state) for t in targets]
        if index > row.current_wave or (
            index == row.current_wave
            and row.status is ro.Status.RUNNING
            and all(s == "pending" for s in states)
        ):
            state = "pending"
        elif index < row.current_wave:
            state = "done"
        elif row.status is ro.Status.HALTED:
            state = "failed"
        elif row.status in (ro.Status.COMPLETED, ro.Status.ROLLED_BACK):
            state = "done"
        else:
            state = "running"
        waves.append(
            WaveRead(
                index=index + 1,
                size=len(targets),
                state=state,
                counts=_counts(states),
                gateways=[
                    RolloutGatewayRead(
                        gateway_id=t.gateway_id,
                        name=view.names.get(t.gateway_id),
                        state=str(t.state),
                        reason=t.reason,
                        applied_at=iso(t.applied_at),
                        decided_at=iso(t.decided_at),
                        rolled_back_at=iso(t.rolled_back_at),
                        agents=len(t.agents),
                    )
                    for t in targets
                ],
            )
        )
    return RolloutRead(
        id=row.id,
        name=row.name,
        status=str(row.status),
        reason=row.reason,
        selector=row.selector,
        agents=row.agents,
        change=row.change,
        canary=int(row.plan.get("canary", 1)),
        percentages=list(row.plan.get("percentages", [])),
        max_fail_percentage=row.max_fail_percentage,
        gate_deadline_s=row.gate_deadline_s,
        current_wave=row.current_wave + 1,
        wave_count=row.wave_count,
        gateways=len(view.targets),
        counts=_counts([str(t.state) for t in view.targets]),
        waves=waves,
        created_at=iso(row.created_at),
        updated_at=iso(row.updated_at),
        finished_at=iso(row.finished_at),
    )


def plan_read(plan: Plan) -> RolloutRead:
    spec = plan.spec
    return RolloutRead(
        id=None,
        name=spec.name,
        status="dry_run",
        reason=None,
        selector=spec.selector,
        agents=spec.agents,
        change=spec.change,
        canary=spec.canary,
        percentages=list(spec.percentages),
        max_fail_percentage=spec.max_fail_percentage,
        gate_deadline_s=spec.gate_deadline_s,
        current_wave=1,
        wave_count=len(plan.waves),
        gateways=sum(len(w) for w in plan.waves),
        counts=_counts(["pending"] * sum(len(w) for w in plan.waves)),
        waves=[
            WaveRead(
                index=i + 1,
                size=len(wave),
                state="pending",
                counts=_counts(["pending"] * len(wave)),
                gateways=[
                    RolloutGatewayRead(
                        gateway_id=g.gateway_id,
                        name=g.name,
                        state="pending",
                        labels=g.labels,
                        busy_with=plan.busy.get(g.gateway_id),
                    )
                    for g in wave
                ],
            )
            for i, wave in enumerate(plan.waves)
        ],
        created_at=None,
        updated_at=None,
        finished_at=None,
    )


def rollout_summary(row: RolloutRow) -> RolloutSummary:
    return RolloutSummary(
        id=row.id,
        name=row.name,
        status=str(row.status),
        reason=row.reason,
        selector=row.selector,
        change=str(row.change.get("kind")),
        current_wave=row.current_wave + 1,
        wave_count=row.wave_count,
        created_at=iso(row.created_at),
        finished_at=iso(row.finished_at),
    )


# ---------------------------------------------------------------------- routes


class DriftedAgent(BaseModel):
    gateway_id: str
    gateway_name: str | None
    agent_id: str
    agent_name: str
    gateway_agent_id: str
    files: list[str]  # files whose bytes on disk differ from what the hub rendered
    entry_missing: bool  # openclaw.json lacks its entry
    reported_at: str | None


class DriftRead(BaseModel):
    gateways: int
    checked: int
    unreported: int  # agents whose sidecar has not reported their files yet
    in_flight: int  # agents with an apply not yet confirmed: not judged
    drifted: list[DriftedAgent]


class DriftHeal(Strict):
    """Re-apply the drifted agents' files, as a rollout (waves and gates)."""

    selector: str = Field("", max_length=1000)
    canary: int = Field(1, ge=0, le=10_000)
    waves: list[float] = Field(list(ro.DEFAULT_PERCENTAGES), min_length=1, max_length=20)
    max_fail_percentage: float = Field(0, ge=0, le=100)
    gate_deadline_s: float = Field(ro.DEFAULT_DEADLINE_S, gt=0, le=24 * 3600)
    dry_run: bool = False


class FleetQueryCreate(Strict):
    selector: str = Field("", max_length=1024, description="gateways to ask; empty: every one")
    question: Literal["status", "heartbeats", "file"] = Field(
        description="status: reachability, versions, pid, memory, agents and sessions counted; "
        "heartbeats: each agent's heartbeat job as the gateway runs it; "
        "file: sha256 of one workspace file of every managed agent, beside what the hub rendered"
    )
    file: str | None = Field(None, description="the workspace file, for question=file")
    timeout_s: float = Field(10.0, ge=0.5, le=60.0, description="the whole query's deadline")

    @model_validator(mode="after")
    def _file_with_its_question(self) -> FleetQueryCreate:
        if self.question != "file":
            if self.file is not None:
                raise ValueError("file is only asked with question=file")
        elif self.file not in QUERYABLE_FILES:
            raise ValueError(
                f"question=file needs file, one of {', '.join(sorted(QUERYABLE_FILES))}"
            )
        return self


class FleetAnswer(BaseModel):
    gateway_id: str
    gateway_name: str
    outcome: Literal["answered", "failed", "no_answer", "disconnected"]
    elapsed_ms: int
    error_code: str | None
    error: str | None
    data: dict[str, Any]


class FleetQuerySummary(BaseModel):
    question: str
    selector: str
    selected: int
    answered: int
    failed: int
    no_answer: int
    disconnected: int
    elapsed_ms: int


class FleetQueryRead(BaseModel):
    summary: FleetQuerySummary
    answers: list[FleetAnswer]


def register(api: Api) -> None:
    _register_labels(api)
    _register_tokens(api)
    _register_inventory(api)
    _register_drift(api)
    _register_query(api)
    _register_rollouts(api)


def _register_query(api: Api) -> None:
    @api.route(
        "POST",
        "/api/v1/fleet/query",
        summary="Ask every selected sidecar one question; answers as they arrive "
        "(Accept: text/event-stream: events query, answer, done; else JSON at the end)",
        tags=("fleet",),
        body=FleetQueryCreate,
        response=FleetQueryRead,
    )
    async def fleet_query(call: Call) -> Any:
        body: FleetQueryCreate = call.body
        d = deps(call.request)
        selector = selector_of(body.selector)
        file = body.file or ""
        targets = await d.db.read(
            lambda conn: fq.targets_in(conn, fq.selected_in(conn, selector), file)
        )
        answers = fq.ask_fleet(
            d.queries, targets, body.question, file=file, timeout_s=body.timeout_s
        )
        started = time.monotonic()
        got: list[FleetAnswer] = []

        def summary() -> FleetQuerySummary:
            outcomes = [a.outcome for a in got]
            return FleetQuerySummary(
                question=body.question,
                selector=str(selector),
                selected=len(targets),
                answered=outcomes.count("answered"),
                failed=outcomes.count("failed"),
                no_answer=outcomes.count("no_answer"),
                disconnected=outcomes.count("disconnected"),
                elapsed_ms=round((time.monotonic() - started) * 1000),
            )

        if "text/event-stream" not in call.request.headers.get("Accept", ""):
            async for answer in answers:
                got.append(_answer_read(answer))
            return FleetQueryRead(summary=summary(), answers=got)
        response = sse_response(call)
        await response.prepare(call.request)
        try:
            start = {"question": body.question, "selector": str(selector), "selected": len(targets)}
            await response.write(_event("query", start | {"timeout_s": body.timeout_s}))
            async for answer in answers:
                got.append(_answer_read(answer))
                await response.write(_event("answer", got[-1].model_dump(mode="json")))
            await response.write(_event("done", summary().model_dump(mode="json")))
        except ConnectionResetError:
            pass  # the caller left; the generator's close stops the questions still out
        finally:
            await answers.aclose()
        return response


def _answer_read(answer: fq.Answer) -> FleetAnswer:
    return FleetAnswer(
        gateway_id=answer.gateway_id,
        gateway_name=answer.gateway_name,
        outcome=answer.outcome.value,
        elapsed_ms=answer.elapsed_ms,
        error_code=answer.error_code,
        error=answer.error,
        data=answer.data,
    )


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _drift(call: Call, selector_text: str | None) -> tuple[DriftReport, dict[str, str]]:
    selector = selector_of(selector_text)

    def op(conn: Connection) -> tuple[DriftReport, dict[str, str]]:
        labels = labels_in(conn)
        names = dict(conn.execute("SELECT id, name FROM gateways").fetchall())
        chosen = selector.select((g, labels.get(g, {})) for g in sorted(names))
        return drift_in(conn, chosen), {g: names[g] for g in chosen}

    return await deps(call.request).db.read(op)


async def _start(d: HttpDeps, spec: RolloutSpec, *, dry_run: bool) -> Any:
    """The rollout started (201), or with `dry_run` its plan only (200)."""
    if dry_run:
        plan = await d.rollouts.plan(spec)
        return web.json_response(plan_read(plan).model_dump(mode="json"), status=200)
    row = await d.rollouts.create(spec)
    return rollout_read(await d.rollouts.read(row.id))


def _register_drift(api: Api) -> None:
    tags = ("fleet",)

    @api.route(
        "GET",
        "/api/v1/fleet/drift",
        summary="Agents whose files or openclaw.json entry differ from what the hub rendered",
        tags=tags,
        query=InventoryQuery,
        response=DriftRead,
    )
    async def fleet_drift(call: Call) -> DriftRead:
        report, names = await _drift(call, call.query.selector)
        return DriftRead(
            gateways=len(names),
            checked=report.checked,
            unreported=report.unreported,
            in_flight=report.in_flight,
            drifted=[
                DriftedAgent(
                    gateway_id=d.gateway_id,
                    gateway_name=names.get(d.gateway_id),
                    agent_id=d.agent_id,
                    agent_name=d.agent_name,
                    gateway_agent_id=d.gateway_agent_id,
                    files=list(d.files),
                    entry_missing=d.entry_missing,
                    reported_at=iso(d.reported_at),
                )
                for d in report.drifted
            ],
        )

    @api.route(
        "POST",
        "/api/v1/fleet/drift/reapply",
        summary="Heal drift: re-apply the drifted agents in a rollout (waves, health gates)",
        tags=tags,
        body=DriftHeal,
        response=RolloutRead,
        status=201,
    )
    async def heal_drift(call: Call) -> Any:
        body: DriftHeal = call.body
        d = deps(call.request)
        report, _ = await _drift(call, body.selector)
        if not report.drifted:
            raise ApiError(
                409,
                f"no drifted agent among the gateways selector {body.selector!r} picks "
                f"({report.checked} checked, {report.in_flight} with an apply in flight); "
                "nothing to re-apply",
            )
        spec = RolloutSpec(
            selector=body.selector,
            change={"kind": "reapply", "agent_ids": sorted({a.agent_id for a in report.drifted})},
            name="drift re-apply",
            agents="all",
            canary=body.canary,
            percentages=tuple(body.waves),
            max_fail_percentage=body.max_fail_percentage,
            gate_deadline_s=body.gate_deadline_s,
            gateway_ids=tuple(sorted({a.gateway_id for a in report.drifted})),
        )
        return await _start(d, spec, dry_run=body.dry_run)


def _register_labels(api: Api) -> None:
    tags = ("fleet",)

    async def change_labels(call: Call, labels: dict[str, str | None], replace: bool) -> LabelsRead:
        gateway_id = call.request.match_info["gateway_id"]

        def op(conn: Connection) -> dict[str, str]:
            gateway_in(conn, gateway_id)
            before = labels_in(conn, [gateway_id]).get(gateway_id, {})
            kept = {} if replace else dict(before)
            for key, value in labels.items():
                if value is None:
                    kept.pop(key, None)
                else:
                    kept[key] = value
            try:
                after = check_labels(kept)
            except LabelError as exc:
                raise label_error("labels", exc) from None
            after = set_labels_in(conn, gateway_id, after, replace=True)
            if after != before:
                add_event(
                    conn, "gateway.labels.changed", gateway_id=gateway_id, labels=after,
                    previous=before,
                )  # fmt: skip
            return after

        after = await deps(call.request).db.write(op)
        return LabelsRead(gateway_id=gateway_id, labels=after)

    @api.route(
        "PUT",
        "/api/v1/gateways/{gateway_id}/labels",
        summary="Set a gateway's labels (all of them; selectors pick gateways by them)",
        tags=tags,
        body=LabelsPut,
        response=LabelsRead,
    )
    async def put_gateway_labels(call: Call) -> LabelsRead:
        return await change_labels(call, dict(call.body.labels), replace=True)

    @api.route(
        "PATCH",
        "/api/v1/gateways/{gateway_id}/labels",
        summary="Set some of a gateway's labels; a null value removes one",
        tags=tags,
        body=LabelsPatch,
        response=LabelsRead,
    )
    async def patch_gateway_labels(call: Call) -> LabelsRead:
        return await change_labels(call, dict(call.body.labels), replace=False)


def _register_tokens(api: Api) -> None:
    tags = ("fleet",)

    @api.route(
        "POST",
        "/api/v1/fleet/join-tokens",
        summary="Make a fleet join token: each use enrolls a new gateway with its labels",
        tags=tags,
        body=FleetTokenCreate,
        response=JoinToken,
        status=201,
    )
    async def create_fleet_token(call: Call) -> JoinToken:
        d = deps(call.request)
        body: FleetTokenCreate = call.body
        try:
            token = await d.gateways.join_token(
                None, ttl_s=body.ttl_s, uses=body.uses, labels=body.labels
            )
        except EnrollmentUnavailable as exc:
            raise ApiError(409, str(exc)) from None
        return join_token(token, d)

    @api.route(
        "GET",
        "/api/v1/fleet/join-tokens",
        summary="The fleet join tokens (several may be active; no secret is shown)",
        tags=tags,
        response=FleetTokenList,
    )
    async def list_fleet_tokens(call: Call) -> FleetTokenList:
        def op(conn: Connection) -> list[jt.JoinTokenRecord]:
            rows = conn.execute(
                "SELECT * FROM join_tokens WHERE gateway_id IS NULL ORDER BY created_at DESC "
                "LIMIT 500"
            ).fetchall()
            return [jt.JoinTokenRecord.from_row(r) for r in rows]

        now = time.time()
        records = await deps(call.request).db.read(op)
        return FleetTokenList(
            items=[
                FleetTokenRead(
                    token_id=r.token_id,
                    labels=dict(r.labels),
                    uses=r.uses,
                    max_uses=r.max_uses,
                    created_at=iso(r.created_at),
                    expires_at=iso(r.expires_at),
                    active=r.expires_at > now and r.uses_left > 0,
                )
                for r in records
            ]
        )

    @api.route(
        "DELETE",
        "/api/v1/fleet/join-tokens/{token_id}",
        summary="Delete a fleet join token (gateways it enrolled stay enrolled)",
        tags=tags,
        response=Ok,
    )
    async def delete_fleet_token(call: Call) -> Ok:
        token_id = call.request.match_info["token_id"]

        def op(conn: Connection) -> int:
            deleted = conn.execute(
                "DELETE FROM join_tokens WHERE token_id = ? AND gateway_id IS NULL", (token_id,)
            ).rowcount
            if deleted:
                add_event(conn, "gateway.join_token.deleted", token_id=token_id)
            return int(deleted)

        if not await deps(call.request).db.write(op):
            raise ApiError(
                404, "fleet join token not found; list them with GET /api/v1/fleet/join-tokens"
            )
        return Ok()


def _register_inventory(api: Api) -> None:
    @api.route(
        "GET",
        "/api/v1/fleet/inventory",
        summary="Every gateway's versions, labels, link, agents and certificate; version skew",
        tags=("fleet",),
        query=InventoryQuery,
        response=Inventory,
    )
    async def fleet_inventory(call: Call) -> Inventory:
        d = deps(call.request)
        selector = selector_of(call.query.selector)

        def op(
            conn: Connection,
        ) -> tuple[list[GatewayRow], dict[str, Any], dict[str, Any], dict[str, Any]]:
            rows = [
                GatewayRow.from_row(r)
                for r in conn.execute("SELECT * FROM gateways ORDER BY name, id")
            ]
            managed = dict(
                conn.execute(
                    "SELECT gateway_id, COUNT(*) FROM agents WHERE status != 'deleting' "
                    "GROUP BY gateway_id"
                ).fetchall()
            )
            certificates = dict(
                conn.execute(
                    "SELECT gateway_id, MAX(not_after) FROM certificates "
                    "WHERE revoked_at IS NULL GROUP BY gateway_id"
                ).fetchall()
            )
            return rows, labels_in(conn), managed, certificates

        rows, labels, managed, certificates = await d.db.read(op)
        items = []
        for row in rows:
            own = labels.get(row.id, {})
            if not selector.matches(own):
                continue
            items.append(
                InventoryGateway(
                    id=row.id,
                    name=row.name,
                    labels=own,
                    connected=d.registry.connected(row.id, row.connected),
                    last_seen_at=iso(row.last_seen_at),
                    sidecar_version=row.sidecar_version,
                    sidecar_supported=_supported(row.sidecar_version),
                    openclaw_version=row.openclaw_version,
                    openclaw_protocol=row.openclaw_protocol,
                    gateway_generation=row.gateway_generation,
                    agents_managed=int(managed.get(row.id, 0)),
                    agents_unmanaged=len(json.loads(row.unmanaged_agents or "[]")),
                    certificate_expires_at=iso(certificates.get(row.id)),
                )
            )
        return Inventory(
            total=len(items),
            connected=sum(1 for i in items if i.connected),
            hub_version=VERSION,
            sidecar_versions=_versions(i.sidecar_version for i in items),
            openclaw_versions=_versions(i.openclaw_version for i in items),
            outside_supported_window=[i.id for i in items if i.sidecar_supported is False],
            gateways=items,
        )


def _supported(version: str | None) -> bool | None:
    if not version:
        return None
    try:
        check_sidecar_version(version)
    except VersionSkewError:
        return False
    return True


def _versions(versions: Any) -> list[VersionCount]:
    counts: dict[str | None, int] = {}
    for version in versions:
        counts[version] = counts.get(version, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] or ""))
    return [VersionCount(version=v, gateways=n) for v, n in ordered]


def _register_rollouts(api: Api) -> None:
    tags = ("rollouts",)

    @api.route(
        "POST",
        "/api/v1/rollouts",
        summary="Start a staged rollout (with dry_run: list its waves and gateways only)",
        tags=tags,
        body=RolloutCreate,
        response=RolloutRead,
        status=201,
    )
    async def create_rollout(call: Call) -> Any:
        d = deps(call.request)
        body: RolloutCreate = call.body
        return await _start(d, body.spec(), dry_run=body.dry_run)

    @api.route(
        "GET",
        "/api/v1/rollouts",
        summary="Rollouts, newest first (progress live: GET /api/v1/activity/stream?kind=rollout.)",
        tags=tags,
        query=RolloutListQuery,
        response=RolloutPage,
    )
    async def list_rollouts(call: Call) -> RolloutPage:
        q: RolloutListQuery = call.query
        status = str(q.status) if q.status else None
        rows, total = await deps(call.request).db.read(
            lambda conn: rollouts_in(conn, status=status, limit=q.limit, offset=q.offset)
        )
        return RolloutPage(
            items=[rollout_summary(r) for r in rows], total=total, limit=q.limit, offset=q.offset
        )

    @api.route(
        "GET",
        "/api/v1/rollouts/{rollout_id}",
        summary="A rollout with each wave's and each gateway's state",
        tags=tags,
        response=RolloutRead,
    )
    async def get_rollout(call: Call) -> RolloutRead:
        d = deps(call.request)
        return rollout_read(await d.rollouts.read(call.request.match_info["rollout_id"]))

    for verb, summary in (
        ("pause", "Pause a rollout: gates are still judged, no gateway is applied"),
        ("resume", "Resume a paused rollout"),
        ("abort", "Abort a rollout: nothing more is applied; applied gateways keep the change"),
        (
            "rollback",
            "Roll back: re-apply the values the rollout replaced on every gateway it applied",
        ),
    ):
        _register_command(api, verb, summary, tags)


def _register_command(api: Api, verb: str, summary: str, tags: tuple[str, ...]) -> None:
    async def command(call: Call) -> RolloutRead:
        d = deps(call.request)
        rollout_id = call.request.match_info["rollout_id"]
        await getattr(d.rollouts, verb)(rollout_id)
        return rollout_read(await d.rollouts.read(rollout_id))

    command.__name__ = f"{verb}_rollout"
    api.route(
        "POST",
        f"/api/v1/rollouts/{{rollout_id}}/{verb}",
        summary=summary,
        tags=tags,
        response=RolloutRead,
    )(command)
