"""The activity trail's pure parts: one line per event, and one filter in two forms."""

from __future__ import annotations

import itertools
import json
import sqlite3

import pytest

from hub.activity import INTERNAL_KINDS, ActivityFilter, activity_after_in, summary

TRAIL = {
    "agent.created": {"name": "DevOps", "agent_kind": "worker"},
    "command.acked": {"command": "apply_agent", "outcome": "APPLIED", "generation": 2},
    "lifecycle.wake.delivered": {"attempt": 1},
    "lifecycle.checkin.accepted": {"source": "heartbeat"},
    "lifecycle.presence.offline": {"silent_s": 1200, "interval_s": 600},
    "lifecycle.reconcile.max_attempts_reached": {"attempts": 3},
    "gateway.drift": {"drift": "RESTORED", "detail": "entry put back"},
    "agent.token.rotated": {"grace_s": 600},
    "task.moved": {"title": "T", "from": "review", "to": "done"},
    "approval.resolved": {"action_type": "deploy", "status": "approved"},
    "webhook.delivery.queued": {},
}


@pytest.mark.parametrize("kind", sorted(TRAIL))
def test_every_trail_event_reads_as_a_sentence(kind: str) -> None:
    line = summary(kind, TRAIL[kind])
    assert line and line != kind and "None" not in line


def test_offline_says_why_and_a_failed_command_says_its_error() -> None:
    assert "1200 s" in summary("lifecycle.presence.offline", TRAIL["lifecycle.presence.offline"])
    failed = summary(
        "command.acked", {"command": "wake_agent", "outcome": "FAILED", "error": "down"}
    )
    assert failed == "wake agent failed: down"
    assert summary("some.new.kind", {}) == "some.new.kind"


ROWS = [
    {
        "id": i + 1,
        "at": 1000.0 + i,
        "kind": kind,
        "gateway_id": gateway,
        "agent_id": agent,
        "board_id": board,
        "detail": "{}",
    }
    for i, (kind, gateway, agent, board) in enumerate(
        itertools.product(
            ["task.moved", "lifecycle.wake.delivered", "command.queued", "gateway.connected"],
            ["gw-1", "gw-2"],
            [None, "a-1", "mc-a-1"],
            [None, "b-1"],
        )
    )
]
FILTERS = [
    ActivityFilter(),
    ActivityFilter(include_internal=True),
    ActivityFilter(board_id="b-1"),
    ActivityFilter(agent_ids=("a-1", "mc-a-1")),
    ActivityFilter(gateway_id="gw-2", kind="lifecycle."),
    ActivityFilter(kind="command.queued"),
    ActivityFilter(kind="task.moved", since=1010.0),
]


@pytest.mark.parametrize("where", FILTERS)
def test_the_live_filter_is_the_sql_filter(where: ActivityFilter) -> None:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL, kind TEXT, gateway_id TEXT, "
        "agent_id TEXT, board_id TEXT, detail TEXT)"
    )
    conn.executemany(
        "INSERT INTO events VALUES (:id, :at, :kind, :gateway_id, :agent_id, :board_id, :detail)",
        ROWS,
    )
    in_sql = [r["id"] for r in activity_after_in(conn, where, 0, 1000)]
    live = [r["id"] for r in ROWS if where.matches({**r, "detail": json.loads(r["detail"])})]
    assert in_sql == live
    if not where.include_internal and where.kind not in INTERNAL_KINDS:
        assert all(r["kind"] not in INTERNAL_KINDS for r in ROWS if r["id"] in live)
