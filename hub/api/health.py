"""Liveness, readiness, and the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from hub.api.core import Api, Auth, Call
from hub.api.deps import deps
from hub.api.schemas import Health, Ready, ReadyCheck


def register(api: Api) -> None:
    @api.route(
        "GET", "/healthz", summary="Liveness", tags=("health",), auth=Auth.NONE, response=Health
    )
    async def healthz(call: Call) -> Health:
        return Health(ok=True, status="live")

    api.route(
        "GET",
        "/health",
        summary="Liveness (alias)",
        tags=("health",),
        auth=Auth.NONE,
        response=Health,
    )(healthz)

    @api.route(
        "GET",
        "/readyz",
        summary="Readiness: database writable, link serving",
        tags=("health",),
        auth=Auth.NONE,
        response=Ready,
    )
    async def readyz(call: Call) -> web.Response:
        d = deps(call.request)
        failing: list[ReadyCheck] = []
        try:
            async with asyncio.timeout(2.0):
                await asyncio.to_thread(d.db.probe_writable, 1.0)
        except TimeoutError:
            failing.append(ReadyCheck(check="database", detail="write probe timed out after 2 s"))
        except Exception as exc:
            failing.append(ReadyCheck(check="database", detail=f"database is not writable: {exc}"))
        if d.db.stats.last_error:
            failing.append(
                ReadyCheck(
                    check="database_writer",
                    detail=f"last group commit failed: {d.db.stats.last_error}",
                )
            )
        if not d.link_serving():
            failing.append(ReadyCheck(check="link", detail="the gRPC link server is not serving"))
        body = Ready(ready=not failing, failing=failing).model_dump()
        return web.json_response(body, status=200 if not failing else 503)

    @api.route(
        "GET", "/openapi.json", summary="This API, described", tags=("meta",), auth=Auth.NONE
    )
    async def openapi(call: Call) -> dict[str, Any]:
        return api.openapi()
