"""Template sync as a job: 202 with a job id, then progress and per-agent results."""

from __future__ import annotations

from typing import Any

from hub.api.core import Api, Call, Query
from hub.api.deps import deps
from hub.provisioning.template_sync import SyncOptions
from missioncontrol.http import ApiError


class SyncQuery(Query):
    """The HTTP face of SyncOptions (same fields)."""

    include_main: bool = True
    lead_only: bool = False
    reset_sessions: bool = False
    rotate_tokens: bool = False
    force_bootstrap: bool = False
    overwrite: bool = False
    board_id: str | None = None


def register(api: Api) -> None:
    tags = ("gateways",)
    path = "/api/v1/gateways/{gateway_id}/templates/sync"

    @api.route(
        "POST",
        path,
        summary="Re-render and re-apply the gateway's agents as a job "
        "(202 with a job id; never blocks)",
        tags=tags,
        query=SyncQuery,
        status=202,
    )
    async def start_template_sync(call: Call) -> dict[str, Any]:
        d = deps(call.request)
        gateway_id = call.request.match_info["gateway_id"]
        if await d.store.get_gateway(gateway_id) is None:
            raise ApiError(404, "gateway not found")
        sync = deps(call.request).template_sync
        job = await sync.start_job(gateway_id, SyncOptions(**call.query.model_dump()))
        return await sync.status(job)

    @api.route(
        "GET",
        path + "/{job_id}",
        summary="A template sync job's progress and per-agent results",
        tags=tags,
    )
    async def get_template_sync(call: Call) -> dict[str, Any]:
        sync = deps(call.request).template_sync
        job = await sync.job(call.request.match_info["job_id"])
        if job is None or job.gateway_id != call.request.match_info["gateway_id"]:
            raise ApiError(404, "sync job not found (jobs are kept for 7 days)")
        return await sync.status(job)
