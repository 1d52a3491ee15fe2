"""The dashboard's pages (GET): read the page's model in one go, render it.

Every page is complete HTML that reads without JavaScript; live.js only refreshes the
parts marked `data-live` when the hub's event stream says something changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import web

from hub.api.gateway_live import live_status
from hub.api.gateways import gateway_read
from hub.link.queries import TargetError, live_target_in
from hub.provisioning.agents import agent_json, agent_names_in
from hub.store.database import Connection
from hub.store.gateways import GATEWAY_STATES
from hub.ui import charts, reads, seams
from hub.ui.context import (
    PAGE_ROWS,
    UiContext,
    choice,
    offset_of,
    text_param,
    with_query,
)
from hub.ui.trends import DAY_S

CHART_STATES = (
    ("online", "chart-online"),
    ("offline", "chart-offline"),
    ("provisioning", "chart-provisioning"),
)
T = TypeVar("T")
GATEWAY_CHOICES = 200  # a form's gateway list; beyond this the id is typed


class Pages:
    def __init__(self, ui: UiContext) -> None:
        self.ui = ui

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.overview),
            web.get("/fleet", self.fleet),
            web.get("/gateways/{gateway_id}", self.gateway),
            web.get("/gateways/{gateway_id}/live", self.gateway_live),
            web.get("/gateways/{gateway_id}/sync/{job_id}", self.sync_job),
            web.get("/boards", self.boards),
            web.get("/boards/{board_id}", self.board),
            web.get("/agents", self.agents),
            web.get("/agents/{agent_id}", self.agent),
            web.get("/activity", self.activity),
            web.get("/rollouts", self.rollouts),
            web.get("/{kind:agents|boards|gateways}/{id}/delete", self.confirm_delete),
        ]

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            return await self.ui.deps.db.read(fn)
        except reads.NotFound as exc:
            raise web.HTTPNotFound(reason=str(exc)) from None

    # ------------------------------------------------------------------ overview

    async def overview(self, request: web.Request) -> web.Response:
        now = self.ui.clock()
        page = await self._read(lambda conn: reads.overview_page_in(conn, now))
        labels = [
            datetime.fromtimestamp(at, UTC).strftime("%H:%M") if i % 16 == 0 else ""
            for i, (at, _) in enumerate(page.samples)
        ]
        states_chart = charts.line_chart(
            "agent-states",
            "Agents by status, last 24 hours",
            [
                charts.Series(name, [c.get(f"agents.{name}", 0) for _, c in page.samples], css)
                for name, css in CHART_STATES
            ],
            labels,
        )
        days = [
            datetime.fromtimestamp(page.throughput_since + i * DAY_S, UTC).strftime("%d %b")
            for i in range(len(page.throughput))
        ]
        throughput_chart = charts.bar_chart(
            "throughput",
            "Tasks done per day, last 14 days",
            page.throughput,
            [d if i % 2 == 0 else "" for i, d in enumerate(days)],
            "chart-done",
        )
        return self.ui.render(
            request,
            "overview.html",
            title="Overview",
            nav="overview",
            live_scope="all",
            page=page,
            states_chart=states_chart,
            throughput_chart=throughput_chart,
            throughput_days=days,
        )

    # --------------------------------------------------------------------- fleet

    async def fleet(self, request: web.Request) -> web.Response:
        state = choice(request, "state", GATEWAY_STATES)
        search = text_param(request, "q")
        label = text_param(request, "label") if seams.LABEL_FILTER else None
        offset = offset_of(request)
        now = self.ui.clock()
        page = await self._read(
            lambda conn: reads.fleet_page_in(
                conn, state=state, search=search, limit=PAGE_ROWS, offset=offset, now=now
            )
        )
        registry = self.ui.deps.registry
        return self.ui.render(
            request,
            "fleet.html",
            title="Fleet",
            nav="fleet",
            live_scope="all",
            page=page,
            views={g.id: gateway_read(g, registry) for g in page.gateways},
            labels={g.id: seams.gateway_labels(g) for g in page.gateways},
            label_filter=seams.LABEL_FILTER,
            state=state or "",
            search=search or "",
            label=label or "",
            states=GATEWAY_STATES,
            page_url=lambda offset: with_query(
                "/ui/fleet", {"state": state, "q": search, "label": label, "offset": offset}
            ),
        )

    async def gateway(self, request: web.Request) -> web.Response:
        gateway_id = request.match_info["gateway_id"]
        now = self.ui.clock()
        page = await self._read(lambda conn: reads.gateway_page_in(conn, gateway_id, now))
        session = self.ui.deps.registry.get(gateway_id)
        return self.ui.render(
            request,
            "gateway.html",
            title=f"Gateway {page.gateway.name}",
            nav="fleet",
            live_scope=f"gateway:{gateway_id}",
            page=page,
            view=gateway_read(page.gateway, self.ui.deps.registry),
            labels=seams.gateway_labels(page.gateway),
            link_certificate_expires_at=session.certificate_expires_at if session else None,
            insecure_dev=self.ui.deps.enroll_address is None,
        )

    async def gateway_live(self, request: web.Request) -> web.Response:
        """The gateway's live status through its sidecar: a page of its own (linked from
        the gateway page, which loads it in place when scripts run)."""
        gateway_id = request.match_info["gateway_id"]
        d = self.ui.deps
        try:
            target = await d.db.read(
                lambda conn: live_target_in(
                    conn, gateway_id=gateway_id, board_id=None, agent_id=None
                )
            )
        except TargetError:
            raise web.HTTPNotFound(reason=f"gateway {gateway_id} does not exist") from None
        started = time.monotonic()
        status = await live_status(d, target)
        return self.ui.render(
            request,
            "gateway_live.html",
            title=f"Live status of {target.gateway.name}",
            nav="fleet",
            gateway=target.gateway,
            live=status,
            asked_ms=round((time.monotonic() - started) * 1000),
        )

    async def sync_job(self, request: web.Request) -> web.Response:
        gateway_id = request.match_info["gateway_id"]
        sync = self.ui.deps.template_sync
        job = await sync.job(request.match_info["job_id"])
        if job is None or job.gateway_id != gateway_id:
            raise web.HTTPNotFound(reason="sync job not found (jobs are kept for 7 days)")
        status = await sync.status(job)
        return self.ui.render(
            request,
            "sync_job.html",
            title="Template sync",
            nav="fleet",
            live_scope=f"gateway:{gateway_id}",
            gateway_id=gateway_id,
            job=status,
        )

    # -------------------------------------------------------------------- boards

    async def boards(self, request: web.Request) -> web.Response:
        gateway_id = text_param(request, "gateway_id", 64)
        offset = offset_of(request)
        page = await self._read(
            lambda conn: reads.boards_page_in(
                conn, gateway_id=gateway_id, limit=PAGE_ROWS, offset=offset
            )
        )
        choices, choices_total = await self._read(
            lambda conn: reads.gateway_choices_in(conn, GATEWAY_CHOICES)
        )
        return self.ui.render(
            request,
            "boards.html",
            title="Boards",
            nav="boards",
            live_scope="all",
            page=page,
            gateway_id=gateway_id or "",
            choices=choices if choices_total <= GATEWAY_CHOICES else None,
            page_url=lambda offset: with_query(
                "/ui/boards", {"gateway_id": gateway_id, "offset": offset}
            ),
        )

    async def board(self, request: web.Request) -> web.Response:
        board_id = request.match_info["board_id"]
        page = await self._read(lambda conn: reads.board_page_in(conn, board_id))
        return self.ui.render(
            request,
            "board.html",
            title=f"Board {page.board['name']}",
            nav="boards",
            live_scope=f"board:{board_id}",
            page=page,
            pause=seams.pause_state(page.board),
        )

    # -------------------------------------------------------------------- agents

    async def agents(self, request: web.Request) -> web.Response:
        status = choice(request, "status", reads.AGENT_STATUSES)
        gateway_id = text_param(request, "gateway_id", 64)
        board_id = text_param(request, "board_id", 64)
        offset = offset_of(request)
        page = await self._read(
            lambda conn: reads.agents_page_in(
                conn,
                status=status,
                gateway_id=gateway_id,
                board_id=board_id,
                limit=PAGE_ROWS,
                offset=offset,
            )
        )
        return self.ui.render(
            request,
            "agents.html",
            title="Agents",
            nav="agents",
            live_scope=f"board:{board_id}" if board_id else "all",
            page=page,
            status_filter=status or "",
            gateway_id=gateway_id or "",
            board_id=board_id or "",
            statuses=reads.AGENT_STATUSES,
            page_url=lambda offset: with_query(
                "/ui/agents",
                {
                    "status": status,
                    "gateway_id": gateway_id,
                    "board_id": board_id,
                    "offset": offset,
                },
            ),
        )

    async def agent(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        everything = request.query.get("all") == "1"
        try:
            before_id = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            before_id = None
        page = await self._read(
            lambda conn: reads.agent_page_in(
                conn, agent_id, before_id=before_id, everything=everything
            )
        )
        view = agent_json(page.agent)
        return self.ui.render(
            request,
            "agent.html",
            title=f"Agent {page.agent.name}",
            nav="agents",
            live_scope=f"agent:{agent_id}",
            page=page,
            agent=view,
            pause=seams.pause_state(view),
            everything=everything,
            before_id=before_id,
        )

    # ----------------------------------------------------------- seams for later

    async def activity(self, request: web.Request) -> web.Response:
        items = await self._read(lambda conn: seams.activity_in(conn, before_id=None, limit=50))
        return self.ui.render(
            request, "activity.html", title="Activity", nav="activity", items=items
        )

    async def rollouts(self, request: web.Request) -> web.Response:
        items = await self._read(lambda conn: seams.rollouts_in(conn, limit=50))
        return self.ui.render(
            request,
            "rollouts.html",
            title="Rollouts",
            nav="rollouts",
            live_scope="all",
            items=items,
        )

    # ------------------------------------------------------------------- confirm

    async def confirm_delete(self, request: web.Request) -> web.Response:
        """Deleting asks first: this page, then its form's POST."""
        kind, item_id = request.match_info["kind"], request.match_info["id"]
        d = self.ui.deps
        if kind == "agents":
            names = await self._read(lambda conn: agent_names_in(conn, [item_id]))
            if item_id not in names:
                raise web.HTTPNotFound(reason=f"agent {item_id} does not exist")
            name, back = names[item_id], f"/ui/agents/{item_id}"
            consequence = (
                "Its sidecar removes its gateway entry and workspace files; the row goes "
                "when the sidecar confirms (a disconnected gateway is handled when it "
                "reconnects)."
            )
        elif kind == "boards":
            board = await self._read(lambda conn: reads.board_page_in(conn, item_id))
            name, back = board.board["name"], f"/ui/boards/{item_id}"
            consequence = (
                f"Its {board.agents_total} agent(s) are removed through their sidecars "
                "first; the board and its tasks go with the last of them."
            )
        else:
            row = await d.store.get_gateway(item_id)
            if row is None:
                raise web.HTTPNotFound(reason=f"gateway {item_id} does not exist")
            name, back = row.name, f"/ui/gateways/{item_id}"
            consequence = (
                "Its certificates are revoked and its sidecar is disconnected at once. "
                "A gateway with boards cannot be deleted: delete its boards first."
            )
        return self.ui.render(
            request,
            "confirm_delete.html",
            title=f"Delete {name}?",
            nav={"agents": "agents", "boards": "boards"}.get(kind, "fleet"),
            what=kind[:-1],
            name=name,
            action=f"/ui/{kind}/{item_id}/delete",
            back=back,
            consequence=consequence,
        )
