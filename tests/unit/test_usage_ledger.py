"""The hub's token arithmetic: per session and UTC day the highest figure heard is kept.

On both engines, with the real store: a repeated report adds nothing, a late (out of
order) one lowers nothing, a reset session counts in its own row beside the old one,
a sidecar's resend after a restart changes nothing, and a gateway agent the hub does not
know is counted for its gateway and named once it is known.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest

from hub.store.database import Connection, Database
from hub.usage import UsageFilter, UsageLedger, UsageRangeError, usage_filter
from protos import link_pb2 as pb
from protos.contract import timestamp

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC).timestamp()
TODAY = "2026-11-30"
YESTERDAY = "2026-11-29"
DAYS = UsageFilter(since="2026-11-01", until="2026-11-30")


def figure(
    total: int,
    *,
    agent: str = "mc-a",
    session_id: str = "s1",
    day: str = TODAY,
    observed_at: float = NOW,
) -> pb.SessionUsage:
    return pb.SessionUsage(
        agent_id=agent,
        session_key=f"agent:{agent}:main",
        session_id=session_id,
        day=day,
        total_tokens=total,
        input_tokens=total - total // 4,
        output_tokens=total // 4,
        observed_at=timestamp(observed_at),
    )


def report(*figures: pb.SessionUsage) -> pb.UsageReport:
    return pb.UsageReport(sessions=list(figures))


def seed(conn: Connection) -> None:
    conn.execute(
        "INSERT INTO gateways (id, name, created_at, updated_at) VALUES ('gw', 'gw', 0, 0)"
    )
    conn.execute(
        "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at) "
        "VALUES ('b1', 'gw', 'Board', 'board', 0, 0)"
    )
    conn.execute(
        "INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name, "
        "created_at, updated_at) VALUES ('ag-a', 'gw', 'b1', 'worker', 'mc-a', 'Ada', 0, 0)"
    )


@pytest.fixture
async def ledger(open_database: Callable[..., Database]) -> AsyncIterator[UsageLedger]:
    db = open_database(commit_interval_s=0.01)
    await db.write(seed)
    yield UsageLedger(db, clock=lambda: NOW)
    await db.close()


async def totals(ledger: UsageLedger, f: UsageFilter = DAYS) -> dict[tuple[str, str], int]:
    summary = await ledger.summary(f)
    return {(a.day, a.gateway_agent_id): a.tokens.total_tokens for a in summary.agents}


async def test_a_repeated_report_adds_nothing(ledger: UsageLedger) -> None:
    growth = [(await ledger.record("gw", report(figure(1200)))).growth for _ in range(3)]
    assert growth == [1200, 0, 0]
    assert await totals(ledger) == {(TODAY, "mc-a"): 1200}
    # The same session and day twice in one report: the higher figure counts, once.
    both = await ledger.record("gw", report(figure(1500), figure(1300)))
    assert (both.taken, both.growth) == (1, 300)
    assert await totals(ledger) == {(TODAY, "mc-a"): 1500}


async def test_a_growing_figure_replaces_and_a_late_smaller_one_lowers_nothing(
    ledger: UsageLedger,
) -> None:
    await ledger.record("gw", report(figure(1000, observed_at=NOW - 60)))
    assert (await ledger.record("gw", report(figure(3000, observed_at=NOW)))).growth == 2000
    late = await ledger.record("gw", report(figure(2000, observed_at=NOW - 30)))
    assert late.growth == 0
    summary = await ledger.summary(DAYS)
    [agent] = summary.agents
    assert agent.tokens.total_tokens == 3000
    assert (agent.tokens.input_tokens, agent.tokens.output_tokens) == (2250, 750)
    assert summary.total.total_tokens == 3000


async def test_a_reset_session_counts_beside_the_old_one(ledger: UsageLedger) -> None:
    await ledger.record("gw", report(figure(5000, session_id="s1")))
    # The session was reset: the same key, a new transcript that counts from zero.
    await ledger.record("gw", report(figure(300, session_id="s2")))
    await ledger.record("gw", report(figure(800, session_id="s2")))
    summary = await ledger.summary(DAYS)
    [agent] = summary.agents
    assert (agent.tokens.total_tokens, agent.sessions) == (5800, 2)


async def test_a_sidecar_resending_everything_after_a_restart_changes_nothing(
    ledger: UsageLedger,
) -> None:
    held = [figure(900, day=YESTERDAY), figure(400), figure(70, session_id="s9")]
    await ledger.record("gw", report(*held))
    before = await ledger.summary(DAYS)
    await ledger.record("gw", report(*held))
    after = await ledger.summary(DAYS)
    assert after == before
    assert await totals(ledger) == {(YESTERDAY, "mc-a"): 900, (TODAY, "mc-a"): 470}


async def test_days_are_counted_apart_and_boards_sum_their_agents(ledger: UsageLedger) -> None:
    await ledger.record(
        "gw",
        report(
            figure(100, day=YESTERDAY),
            figure(250),
            figure(40, agent="mc-b", session_id="sb"),  # unknown to the hub
        ),
    )
    summary = await ledger.summary(DAYS)
    boards = {(b.day, b.board_id): (b.tokens.total_tokens, b.agents) for b in summary.boards}
    assert boards == {(YESTERDAY, "b1"): (100, 1), (TODAY, "b1"): (250, 1), (TODAY, None): (40, 1)}
    assert summary.total.total_tokens == 390
    only_today = await ledger.summary(UsageFilter(since=TODAY, until=TODAY, board_id="b1"))
    assert [(a.day, a.agent_id, a.agent_name) for a in only_today.agents] == [
        (TODAY, "ag-a", "Ada")
    ]


async def test_an_unknown_agent_counts_for_its_gateway_and_is_named_once_known(
    ledger: UsageLedger,
) -> None:
    await ledger.record("gw", report(figure(600, agent="mc-new", session_id="sn")))
    [unknown] = (await ledger.summary(DAYS)).agents
    assert (unknown.gateway_agent_id, unknown.agent_id, unknown.board_id) == ("mc-new", None, None)

    def adopt(conn: Connection) -> None:
        conn.execute(
            "INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name, "
            "created_at, updated_at) VALUES ('ag-new', 'gw', 'b1', 'worker', 'mc-new', 'New', 0, 0)"
        )

    await ledger.db.write(adopt)
    await ledger.record("gw", report(figure(600, agent="mc-new", session_id="sn")))  # same figure
    [known] = (await ledger.summary(DAYS)).agents
    assert (known.agent_id, known.board_id, known.tokens.total_tokens) == ("ag-new", "b1", 600)
    mine = await ledger.summary(UsageFilter(since=TODAY, until=TODAY, gateway_id="other"))
    assert mine.agents == [] and mine.total.total_tokens == 0


async def test_figures_that_cannot_be_kept_are_skipped_and_the_rest_kept(
    ledger: UsageLedger,
) -> None:
    recorded = await ledger.record(
        "gw",
        report(
            figure(10, day="2026-13-01"),  # no such day
            figure(10, day="2025-01-01"),  # far older than any sidecar holds
            figure(10, day="2026-12-05"),  # days ahead of the hub's clock
            pb.SessionUsage(agent_id="mc-a", day=TODAY, total_tokens=5),  # no session
            figure(2**64 - 1, day=YESTERDAY),  # beyond what the column holds: capped
            figure(77),
        ),
    )
    assert (recorded.taken, recorded.growth) == (2, 2**63 - 1 + 77)
    assert await totals(ledger) == {(YESTERDAY, "mc-a"): 2**63 - 1, (TODAY, "mc-a"): 77}


def test_the_days_asked_for_default_to_the_last_seven_and_bad_ones_name_the_fix() -> None:
    f = usage_filter(NOW)
    assert (f.since, f.until) == ("2026-11-24", TODAY)
    assert usage_filter(NOW, since=TODAY, until=TODAY).since == TODAY
    with pytest.raises(UsageRangeError, match="YYYY-MM-DD"):
        usage_filter(NOW, since="30/11/2026")
    with pytest.raises(UsageRangeError, match="swap"):
        usage_filter(NOW, since=TODAY, until=YESTERDAY)
    with pytest.raises(UsageRangeError, match="shorter"):
        usage_filter(NOW, since="2020-01-01", until=TODAY)
