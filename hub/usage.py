"""Token usage: what sidecars relay of their agents' sessions, kept per session and UTC day.

A SessionUsage figure is the gateway's whole count for one session on one day so far
(counted from the session's transcript), never an increment. So the arithmetic is one
rule, the same on both engines: per (gateway, session id, day) the highest figure heard
is kept. A repeated report, one that arrives late (out of order) or a sidecar that
resends everything after a restart adds nothing; a reset session has a new session id
and counts from zero in its own row, the old row keeping what it used; the tokens of a
day are the sum of that day's rows. A figure for a gateway agent the hub does not know
is kept too (counted in the gateway's totals, with no hub agent); once the agent is
known, its next figure names it.

One report is one write (batched, on the paced group commit). Reads sum the rows per
agent and day and per board and day, with totals.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hub.store.database import Connection, Database
from missioncontrol.log import get_logger
from protos import link_pb2 as pb
from protos.contract import MAX_USAGE_SESSIONS, epoch_s

log = get_logger("hub.usage")

DAY_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_PAST_DAYS = 40  # a figure for an older day is refused (a sidecar's clock gone wrong)
MAX_TOKENS = 2**63 - 1  # what an INTEGER column holds
FIELDS = (
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
)

_UPSERT = f"""
    INSERT INTO token_usage (gateway_id, session_id, day, gateway_agent_id, session_key,
        agent_id, board_id, {", ".join(FIELDS)}, observed_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (gateway_id, session_id, day) DO UPDATE SET
        agent_id = COALESCE(token_usage.agent_id, excluded.agent_id),
        board_id = COALESCE(token_usage.board_id, excluded.board_id),
        {
    ", ".join(
        f"{name} = CASE WHEN excluded.total_tokens > token_usage.total_tokens "
        f"THEN excluded.{name} ELSE token_usage.{name} END"
        for name in (*FIELDS, "observed_at", "updated_at")
    )
}
    WHERE excluded.total_tokens > token_usage.total_tokens
        OR (token_usage.agent_id IS NULL AND excluded.agent_id IS NOT NULL)
"""


class UsageRangeError(ValueError):
    """A usage query's days cannot be read (format, order, or a range too long)."""


def utc_day(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d")


def parse_day(text: str) -> dt.date | None:
    if not DAY_FORMAT.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def acceptable_day(text: str, now: float) -> bool:
    """A day a sidecar may report for: a real date, not after tomorrow (clocks and time
    zones differ a little), not more than MAX_PAST_DAYS before today."""
    day = parse_day(text)
    if day is None:
        return False
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return today - dt.timedelta(days=MAX_PAST_DAYS) <= day <= today + dt.timedelta(days=1)


@dataclass(frozen=True)
class Recorded:
    taken: int  # figures kept (the others could not be: no session, a bad day)
    growth: int  # tokens the kept figures added to what the hub held before


def record_usage_in(
    conn: Connection, gateway_id: str, report: pb.UsageReport, now: float
) -> Recorded:
    """Keep the report's figures (the highest per session and day). Figures that cannot
    be kept (no session, a bad day) are skipped."""
    items = list(report.sessions)[:MAX_USAGE_SESSIONS]
    if len(report.sessions) > MAX_USAGE_SESSIONS:
        log.warning("usage.report.truncated", gateway_id=gateway_id, sessions=len(report.sessions))
    agents = _hub_agents(conn, gateway_id, {i.agent_id for i in items if i.agent_id})
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}  # (session id, day) -> row
    for item in items:
        session_id = item.session_id or item.session_key
        if not session_id or not item.agent_id or not acceptable_day(item.day, now):
            log.warning(
                "usage.figure.refused",
                gateway_id=gateway_id,
                session_key=item.session_key,
                day=item.day,
                reason="no session or agent id, or a day outside the accepted range",
            )
            continue
        agent_id, board_id = agents.get(item.agent_id, (None, None))
        observed = min(epoch_s(item.observed_at), now) if item.HasField("observed_at") else now
        held = rows.get((session_id, item.day))
        if held is not None and held[7] >= min(item.total_tokens, MAX_TOKENS):
            continue  # the same session and day twice in one report: the higher counts
        rows[(session_id, item.day)] = (
            gateway_id,
            session_id,
            item.day,
            item.agent_id,
            item.session_key,
            agent_id,
            board_id,
            *(min(getattr(item, name), MAX_TOKENS) for name in FIELDS),
            observed,
            now,
        )
    if not rows:
        return Recorded(0, 0)
    before = _held_totals(conn, gateway_id, set(rows))
    conn.executemany(_UPSERT, list(rows.values()))
    growth = sum(max(0, row[7] - before.get(key, 0)) for key, row in rows.items())
    return Recorded(len(rows), growth)


def _held_totals(
    conn: Connection, gateway_id: str, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The totals the hub holds for these (session id, day) of one gateway."""
    sessions = sorted({session for session, _ in keys})
    days = sorted({day for _, day in keys})
    found = conn.execute(
        f"""SELECT session_id, day, total_tokens FROM token_usage
            WHERE gateway_id = ? AND session_id IN ({",".join("?" * len(sessions))})
              AND day IN ({",".join("?" * len(days))})""",
        (gateway_id, *sessions, *days),
    ).fetchall()
    return {(row[0], row[1]): int(row[2]) for row in found if (row[0], row[1]) in keys}


def _hub_agents(
    conn: Connection, gateway_id: str, gateway_agent_ids: set[str]
) -> dict[str, tuple[str, str | None]]:
    if not gateway_agent_ids:
        return {}
    ids = sorted(gateway_agent_ids)
    rows = conn.execute(
        f"""SELECT gateway_agent_id, id, board_id FROM agents
            WHERE gateway_id = ? AND gateway_agent_id IN ({",".join("?" * len(ids))})""",
        (gateway_id, *ids),
    ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


# ---------------------------------------------------------------- reads


@dataclass
class Tokens:
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def add(self, values: tuple[Any, ...]) -> None:
        for name, value in zip(FIELDS, values, strict=True):
            setattr(self, name, getattr(self, name) + int(value or 0))


@dataclass
class AgentDay:
    day: str
    gateway_id: str
    gateway_agent_id: str
    agent_id: str | None
    board_id: str | None
    agent_name: str | None
    sessions: int
    tokens: Tokens


@dataclass
class BoardDay:
    day: str
    board_id: str | None  # None: agents on no board, or not known to the hub
    agents: int
    tokens: Tokens


@dataclass
class UsageSummary:
    since: str
    until: str
    agents: list[AgentDay] = field(default_factory=list)
    boards: list[BoardDay] = field(default_factory=list)
    total: Tokens = field(default_factory=Tokens)


@dataclass(frozen=True)
class UsageFilter:
    since: str
    until: str
    board_id: str | None = None
    agent_id: str | None = None
    gateway_id: str | None = None


MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 7


def usage_filter(
    now: float,
    *,
    since: str | None = None,
    until: str | None = None,
    board_id: str | None = None,
    agent_id: str | None = None,
    gateway_id: str | None = None,
) -> UsageFilter:
    """The days asked for (UTC, both included): until defaults to today, since to six days
    before until. Raises UsageRangeError naming the fix."""
    last = parse_day(until) if until else dt.datetime.fromtimestamp(now, dt.UTC).date()
    if last is None:
        raise UsageRangeError(f"until {until!r} is not a day: write YYYY-MM-DD (UTC)")
    first = parse_day(since) if since else last - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if first is None:
        raise UsageRangeError(f"since {since!r} is not a day: write YYYY-MM-DD (UTC)")
    if first > last:
        raise UsageRangeError(f"since {first} is after until {last}: swap them")
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise UsageRangeError(
            f"{first}..{last} spans more than {MAX_RANGE_DAYS} days: ask for a shorter range"
        )
    return UsageFilter(first.isoformat(), last.isoformat(), board_id, agent_id, gateway_id)


def usage_in(conn: Connection, f: UsageFilter) -> UsageSummary:
    where = ["u.day >= ?", "u.day <= ?"]
    params: list[Any] = [f.since, f.until]
    for column, value in (
        ("u.board_id", f.board_id),
        ("u.agent_id", f.agent_id),
        ("u.gateway_id", f.gateway_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sums = ", ".join(f"SUM(u.{name})" for name in FIELDS)
    rows = conn.execute(
        f"""SELECT u.day, u.gateway_id, u.gateway_agent_id, MAX(u.agent_id), MAX(u.board_id),
                   MAX(a.name), COUNT(*), {sums}
            FROM token_usage u LEFT JOIN agents a ON a.id = u.agent_id
            WHERE {" AND ".join(where)}
            GROUP BY u.day, u.gateway_id, u.gateway_agent_id
            ORDER BY u.day, u.gateway_id, u.gateway_agent_id""",
        params,
    ).fetchall()
    summary = UsageSummary(f.since, f.until)
    boards: dict[tuple[str, str | None], BoardDay] = {}
    for row in rows:
        tokens = Tokens()
        tokens.add(tuple(row[7:]))
        day, board_id = row[0], row[4]
        summary.agents.append(
            AgentDay(day, row[1], row[2], row[3], board_id, row[5], int(row[6]), tokens)
        )
        board = boards.setdefault((day, board_id), BoardDay(day, board_id, 0, Tokens()))
        board.agents += 1
        board.tokens.add(tuple(row[7:]))
        summary.total.add(tuple(row[7:]))
    summary.boards = sorted(boards.values(), key=lambda b: (b.day, b.board_id or ""))
    return summary


class UsageLedger:
    """The hub's token usage: the link records reports here, the API reads it."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        on_growth: Callable[[int], None] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.on_growth = on_growth  # tokens added, once committed (the hub's metric)

    async def record(self, gateway_id: str, report: pb.UsageReport) -> Recorded:
        now = self.clock()
        # Bulk traffic: rides the paced group commit, one transaction per report.
        recorded = await self.db.write(lambda conn: record_usage_in(conn, gateway_id, report, now))
        if recorded.growth and self.on_growth is not None:
            self.on_growth(recorded.growth)
        return recorded

    async def summary(self, f: UsageFilter) -> UsageSummary:
        return await self.db.read(lambda conn: usage_in(conn, f))
