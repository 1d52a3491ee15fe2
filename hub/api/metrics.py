"""GET /metrics: the hub's Prometheus metrics (admin token required unless --metrics-public)."""

from __future__ import annotations

from aiohttp import web

from hub.api.core import Api, Auth, Call
from hub.api.deps import deps
from missioncontrol.http import ApiError
from missioncontrol.metrics import exposition


def register(api: Api, *, public: bool = False) -> None:
    @api.route(
        "GET",
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        tags=("meta",),
        auth=Auth.NONE if public else Auth.ADMIN,
    )
    async def metrics(call: Call) -> web.Response:
        d = deps(call.request)
        if d.metrics is None:
            raise ApiError(404, "this hub was built without metrics")
        await d.metrics.refresh(d.db, len(d.registry))
        return exposition(d.metrics.registry)
