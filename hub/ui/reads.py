"""What each dashboard page shows, read in one go on the store's reader.

Each `*_page_in(conn, ...)` composes the domain modules' own `*_in(conn)` reads (no
SQL here) into the page's model; a view runs it with one `db.read` and renders it.
Every list is one page of at most `limit` rows, so a page costs the same with ten
gateways or ten thousand.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from hub.boards import RULES, BoardNotFound, board_names_in, list_boards_in, load_board
from hub.pki.join_tokens import JoinTokenRecord
from hub.provisioning.agents import (
    AgentRow,
    agent_counts_by_in,
    agent_names_in,
    agent_status_counts_in,
    agents_needing_attention_in,
    list_agents_in,
    load_agent,
    load_agent_by_gateway_id,
    rendered_files_in,
)
from hub.store.errors import UnknownGateway
from hub.store.event_log import (
    agent_events_in,
    count_events_in,
    event_counts_by_gateway_in,
    latest_agent_event_in,
    recent_events_in,
)
from hub.store.gateways import (
    CertificateRecord,
    GatewayRow,
    certificates_expiring_in,
    certificates_in,
    disconnected_gateways_in,
    gateway_in,
    gateway_names_in,
    join_tokens_in,
    list_gateways_in,
    unhealthy_gateways_in,
)
from hub.tasks import STATUSES as TASK_STATUSES
from hub.tasks import TaskRow, list_tasks, task_status_counts_in, tasks_done_between_in
from hub.ui import seams
from hub.ui.files import FileCheck, compare
from hub.ui.timeline import TimelineEntry, entries
from hub.ui.trends import (
    DAY_S,
    Counts,
    Trend,
    fleet_counts_in,
    sample_near_in,
    samples_in,
    trend,
)
from hub.webhooks.store import WebhookRow, list_webhooks_in

AGENT_STATUSES = ("provisioning", "updating", "online", "offline", "deleting")
# A wake that failed: not delivered, or delivered and not answered by a check-in.
FAILED_WAKES = (
    "lifecycle.wake.undeliverable",
    "lifecycle.reconcile.max_attempts_reached",
    "lifecycle.reconcile.retriggered",  # counted by the overview only with an attempt
)
CERTIFICATE_WARNING_S = 7 * DAY_S
ATTENTION_ROWS = 10
TIMELINE_ROWS = 100


class NotFound(LookupError):
    """The page names something the store does not have."""


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int
    total: int

    @property
    def previous(self) -> int | None:
        return max(self.offset - self.limit, 0) if self.offset > 0 else None

    @property
    def next(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None

    @property
    def first(self) -> int:
        return min(self.offset + 1, self.total)

    @property
    def last(self) -> int:
        return min(self.offset + self.limit, self.total)


# ----------------------------------------------------------------------- overview


@dataclass(frozen=True)
class Attention:
    agents: list[AgentRow]
    agents_total: int
    disconnected: list[GatewayRow]
    disconnected_total: int
    unhealthy: list[GatewayRow]
    drift: list[dict[str, Any]]  # gateway.drift entries, with "agent_name" when known
    expiring: list[tuple[str, float]]  # (gateway id, certificate expiry)
    names: dict[str, str]  # gateway id -> name

    @property
    def empty(self) -> bool:
        return not (
            self.agents or self.disconnected or self.unhealthy or self.drift or self.expiring
        )


@dataclass(frozen=True)
class Overview:
    counts: Counts
    trends: dict[str, Trend]
    failed_wakes: Trend
    attention: Attention
    samples: list[tuple[float, Counts]]
    throughput: list[int]  # tasks done per day, oldest first
    throughput_since: float


def failed_wakes_in(conn: sqlite3.Connection, since: float, until: float) -> int:
    # A retrigger without an attempt is a retry of an undelivered wake (already counted).
    undelivered_or_last = count_events_in(conn, FAILED_WAKES[:2], since, until)
    missed = count_events_in(conn, FAILED_WAKES[2:], since, until, having_key="attempt")
    return undelivered_or_last + missed


def overview_page_in(conn: sqlite3.Connection, now: float) -> Overview:
    counts = fleet_counts_in(conn)
    then = sample_near_in(conn, now - DAY_S)
    then_counts = then[1] if then else None
    keys = (
        "agents.online",
        "agents.offline",
        "agents.provisioning",
        "agents.updating",
        "tasks.in_progress",
        "gateways.connected",
        "gateways.total",
    )
    agents, agents_total = agents_needing_attention_in(conn, ATTENTION_ROWS)
    disconnected, disconnected_total = disconnected_gateways_in(conn, ATTENTION_ROWS)
    unhealthy = unhealthy_gateways_in(conn, ATTENTION_ROWS)
    drift = recent_events_in(conn, ("gateway.drift",), now - DAY_S, ATTENTION_ROWS)
    for event in drift:
        agent = load_agent_by_gateway_id(conn, event["gateway_id"], event["agent_id"] or "")
        event["agent"] = agent
    expiring = certificates_expiring_in(conn, now + CERTIFICATE_WARNING_S, ATTENTION_ROWS)
    gateway_ids = {a.gateway_id for a in agents} | {g for g, _ in expiring}
    gateway_ids |= {e["gateway_id"] for e in drift if e["gateway_id"]}
    since = now - 14 * DAY_S
    return Overview(
        counts=counts,
        trends={key: trend(counts, then_counts, key) for key in keys},
        failed_wakes=Trend(
            failed_wakes_in(conn, now - DAY_S, now + 1),
            failed_wakes_in(conn, now - 2 * DAY_S, now - DAY_S),
        ),
        attention=Attention(
            agents=agents,
            agents_total=agents_total,
            disconnected=disconnected,
            disconnected_total=disconnected_total,
            unhealthy=unhealthy,
            drift=drift,
            expiring=expiring,
            names=gateway_names_in(conn, sorted(gateway_ids)),
        ),
        samples=samples_in(conn, now - DAY_S, now, 96),
        throughput=tasks_done_between_in(conn, since, now, DAY_S),
        throughput_since=since,
    )


# -------------------------------------------------------------------------- fleet


@dataclass(frozen=True)
class FleetPage:
    gateways: list[GatewayRow]
    paging: Paging
    agents: dict[str, dict[str, int]]  # gateway id -> status -> count
    drift: dict[str, int]  # gateway id -> drift entries in the last day


def fleet_page_in(
    conn: sqlite3.Connection,
    *,
    state: str | None,
    search: str | None,
    limit: int,
    offset: int,
    now: float,
) -> FleetPage:
    rows, total = list_gateways_in(conn, state=state, search=search, limit=limit, offset=offset)
    ids = [r.id for r in rows]
    return FleetPage(
        gateways=rows,
        paging=Paging(limit, offset, total),
        agents=agent_counts_by_in(conn, "gateway_id", ids),
        drift=event_counts_by_gateway_in(conn, "gateway.drift", ids, now - DAY_S),
    )


@dataclass(frozen=True)
class GatewayPage:
    gateway: GatewayRow
    agent_counts: dict[str, int]
    agents: list[AgentRow]
    agents_total: int
    boards: list[dict[str, Any]]
    boards_total: int
    board_names: dict[str, str]
    join_tokens: list[JoinTokenRecord]
    certificates: list[CertificateRecord]
    drift: list[dict[str, Any]]


def gateway_page_in(conn: sqlite3.Connection, gateway_id: str, now: float) -> GatewayPage:
    gateway = _gateway(conn, gateway_id)
    agents, agents_total = list_agents_in(
        conn, board_id=None, gateway_id=gateway_id, managed=True, limit=50, offset=0
    )
    boards, boards_total = list_boards_in(conn, gateway_id, 50, 0)
    return GatewayPage(
        gateway=gateway,
        agent_counts=agent_status_counts_in(conn, gateway_id=gateway_id),
        agents=agents,
        agents_total=agents_total,
        boards=boards,
        boards_total=boards_total,
        board_names=board_names_in(conn, sorted({a.board_id for a in agents if a.board_id})),
        join_tokens=join_tokens_in(conn, gateway_id),
        certificates=certificates_in(conn, gateway_id),
        drift=recent_events_in(
            conn, ("gateway.drift",), now - 7 * DAY_S, 20, gateway_id=gateway_id
        ),
    )


def _gateway(conn: sqlite3.Connection, gateway_id: str) -> GatewayRow:
    try:
        return gateway_in(conn, gateway_id)
    except UnknownGateway:
        raise NotFound(f"gateway {gateway_id} does not exist") from None


def gateway_choices_in(conn: sqlite3.Connection, limit: int) -> tuple[list[GatewayRow], int]:
    """Gateways to choose from in a form (the first `limit` by name)."""
    return list_gateways_in(conn, limit=limit, offset=0)


# ------------------------------------------------------------------------- boards


@dataclass(frozen=True)
class BoardsPage:
    boards: list[dict[str, Any]]
    paging: Paging
    agents: dict[str, dict[str, int]]
    tasks: dict[str, dict[str, int]]
    gateway_names: dict[str, str]


def boards_page_in(
    conn: sqlite3.Connection, *, gateway_id: str | None, limit: int, offset: int
) -> BoardsPage:
    boards, total = list_boards_in(conn, gateway_id, limit, offset)
    ids = [b["id"] for b in boards]
    return BoardsPage(
        boards=boards,
        paging=Paging(limit, offset, total),
        agents=agent_counts_by_in(conn, "board_id", ids),
        tasks=task_status_counts_in(conn, ids),
        gateway_names=gateway_names_in(conn, sorted({b["gateway_id"] for b in boards})),
    )


@dataclass(frozen=True)
class BoardPage:
    board: dict[str, Any]
    gateway_name: str
    lead: AgentRow | None
    workers: list[AgentRow]
    agents_total: int
    task_counts: dict[str, int]
    tasks: dict[str, list[TaskRow]]  # status -> the first tasks
    agent_names: dict[str, str]
    webhooks: list[WebhookRow]
    webhooks_total: int
    rules: dict[str, Any]
    approvals: list[seams.Approval] | None  # None: approvals are not there yet


TASKS_PER_STATUS = 20


def board_page_in(conn: sqlite3.Connection, board_id: str) -> BoardPage:
    try:
        board = load_board(conn, board_id)
    except BoardNotFound:
        raise NotFound(f"board {board_id} does not exist") from None
    agents, agents_total = list_agents_in(
        conn, board_id=board_id, gateway_id=None, managed=True, limit=200, offset=0
    )
    tasks = {
        status: list_tasks(conn, board_id, status=status, limit=TASKS_PER_STATUS, offset=0)[0]
        for status in TASK_STATUSES
    }
    assignees = sorted(
        {t.assigned_agent_id for ts in tasks.values() for t in ts if t.assigned_agent_id}
    )
    webhooks, webhooks_total = list_webhooks_in(conn, board_id, 50, 0)
    return BoardPage(
        board=board,
        gateway_name=gateway_names_in(conn, [board["gateway_id"]]).get(board["gateway_id"], ""),
        lead=next((a for a in agents if a.kind == "lead"), None),
        workers=[a for a in agents if a.kind != "lead"],
        agents_total=agents_total,
        task_counts=task_status_counts_in(conn, [board_id]).get(board_id, {}),
        tasks=tasks,
        agent_names=agent_names_in(conn, assignees),
        webhooks=webhooks,
        webhooks_total=webhooks_total,
        rules={key: board[key] for key in (*RULES, "max_agents")},
        approvals=seams.approvals_waiting_in(conn, board_id),
    )


# ------------------------------------------------------------------------- agents


@dataclass(frozen=True)
class AgentsPage:
    agents: list[AgentRow]
    paging: Paging
    counts: dict[str, int]
    gateway_names: dict[str, str]
    board_names: dict[str, str]


def agents_page_in(
    conn: sqlite3.Connection,
    *,
    status: str | None,
    gateway_id: str | None,
    board_id: str | None,
    limit: int,
    offset: int,
) -> AgentsPage:
    agents, total = list_agents_in(
        conn,
        board_id=board_id,
        gateway_id=gateway_id,
        managed=True,
        limit=limit,
        offset=offset,
        status=status,
    )
    return AgentsPage(
        agents=agents,
        paging=Paging(limit, offset, total),
        counts=agent_status_counts_in(conn, gateway_id=gateway_id, board_id=board_id),
        gateway_names=gateway_names_in(conn, sorted({a.gateway_id for a in agents})),
        board_names=board_names_in(conn, sorted({a.board_id for a in agents if a.board_id})),
    )


@dataclass(frozen=True)
class AgentPage:
    agent: AgentRow
    gateway: GatewayRow
    board_name: str | None
    timeline: list[TimelineEntry]
    timeline_more: int | None  # the id to page on from, when there is more
    rendered_generation: int | None
    files: list[FileCheck]
    files_reported_at: float | None
    tasks: list[TaskRow] = field(default_factory=list)


def agent_page_in(
    conn: sqlite3.Connection, agent_id: str, *, before_id: int | None, everything: bool
) -> AgentPage:
    agent = load_agent(conn, agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id} does not exist")
    names = (agent.id, agent.gateway_agent_id)
    events = agent_events_in(
        conn, agent.gateway_id, names, before_id=before_id, limit=TIMELINE_ROWS + 1
    )
    more = events[TIMELINE_ROWS - 1]["id"] if len(events) > TIMELINE_ROWS else None
    rendered = rendered_files_in(conn, agent)
    reported = latest_agent_event_in(conn, agent.gateway_id, names, "command.acked", "file_sha256")
    board_name = None
    tasks: list[TaskRow] = []
    if agent.board_id:
        board_name = board_names_in(conn, [agent.board_id]).get(agent.board_id)
        tasks = list_tasks(conn, agent.board_id, assigned_agent_id=agent.id, limit=50, offset=0)[0]
    return AgentPage(
        agent=agent,
        gateway=_gateway(conn, agent.gateway_id),
        board_name=board_name,
        timeline=entries(events[:TIMELINE_ROWS], quiet=everything),
        timeline_more=more,
        rendered_generation=rendered[0] if rendered else None,
        files=compare(rendered[1], reported["detail"]["file_sha256"] if reported else None)
        if rendered
        else [],
        files_reported_at=reported["at"] if reported else None,
        tasks=tasks,
    )
