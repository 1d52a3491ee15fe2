"""The dashboard's pure parts: timeline sentences, file verdicts, charts, trends, sessions."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET

import pytest

from hub.events import EventBus
from hub.provisioning.agents import RenderedFileDigest
from hub.store.database import migrate
from hub.ui import charts, files, timeline
from hub.ui.context import safe_next
from hub.ui.rendering import ago
from hub.ui.sessions import CookieNames, Sessions, login_csrf_ok, token_matches
from hub.ui.trends import record_sample_in, sample_near_in, samples_in, trend


def event(kind: str, **detail: object) -> dict[str, object]:
    return {"id": 1, "at": 100.0, "kind": kind, "detail": detail}


@pytest.mark.parametrize(
    ("kind", "detail", "title", "tone"),
    [
        ("agent.created", {"agent_kind": "worker"}, "Provisioned", timeline.INFO),
        ("lifecycle.wake.delivered", {"attempt": 1}, "Wake sent (attempt 1)", timeline.INFO),
        ("lifecycle.checkin.accepted", {"source": "heartbeat"}, "Checked in", timeline.OK),
        (
            "lifecycle.reconcile.retriggered",
            {"attempt": 2},
            "Missed check-in; woken again (attempt 2)",
            timeline.WARN,
        ),
        ("lifecycle.reconcile.max_attempts_reached", {"attempts": 3}, "Offline", timeline.BAD),
        (
            "lifecycle.presence.offline",
            {"silent_s": 1300, "interval_s": 600},
            "Offline",
            timeline.BAD,
        ),
        (
            "gateway.drift",
            {"drift": "REMOVED"},
            "Entry removed from openclaw.json by hand",
            timeline.WARN,
        ),
        ("gateway.drift", {"drift": "RESTORED"}, "Entry restored by the sidecar", timeline.OK),
        ("agent.token.rotated", {"grace_s": 600}, "Token rotated", timeline.INFO),
        (
            "lifecycle.wake.undeliverable",
            {"error": "gateway down"},
            "Wake not delivered",
            timeline.WARN,
        ),
        ("lifecycle.reconcile.deferred", {"why": "sidecar disconnected"}, "Waiting", timeline.WARN),
        ("lifecycle.reconcile.deferred", {"why": "not due yet"}, "Waiting", timeline.QUIET),
        (
            "command.acked",
            {"outcome": "FAILED", "error": "disk full"},
            "Sidecar answered failed",
            timeline.BAD,
        ),
    ],
)
def test_timeline_says_what_happened(kind: str, detail: dict, title: str, tone: str) -> None:
    entry = timeline.entry(event(kind, **detail))
    assert (entry.title, entry.tone) == (title, tone)


def test_offline_entries_say_why() -> None:
    assert (
        "after 3 wakes"
        in timeline.entry(event("lifecycle.reconcile.max_attempts_reached", attempts=3)).detail
    )
    assert (
        "1300 s"
        in timeline.entry(event("lifecycle.presence.offline", silent_s=1300, interval_s=600)).detail
    )


def test_an_unknown_kind_is_shown_by_its_name_not_hidden() -> None:
    entry = timeline.entry(event("something.new", x=1))
    assert entry.title == "something.new" and "x=1" in entry.detail


def test_milestones_leave_out_only_the_quiet_entries() -> None:
    events = [event("command.queued", sequence=1), event("lifecycle.checkin.accepted")]
    assert [e.kind for e in timeline.entries(events, quiet=False)] == ["lifecycle.checkin.accepted"]
    assert len(timeline.entries(events)) == 2


def digest(
    name: str, sha: str | None, *, secret: bool = False, kept: bool = False
) -> RenderedFileDigest:
    return RenderedFileDigest(name, sha, secret, kept)


def test_file_verdicts() -> None:
    rendered = [
        digest("AGENTS.md", "aa"),
        digest("SOUL.md", "bb"),
        digest("IDENTITY.md", "cc"),
        digest("USER.md", "dd", kept=True),
        digest(".mc-agent-token", None, secret=True),
    ]
    reported = {
        "AGENTS.md": "aa",
        "SOUL.md": "XX",
        "USER.md": "ee",
        "EXTRA.md": "ff",
        ".mc-agent-token": "zz",
    }
    verdicts = {c.name: c.verdict for c in files.compare(rendered, reported)}
    assert verdicts == {
        "AGENTS.md": files.SAME,
        "SOUL.md": files.DIFFERENT,
        "IDENTITY.md": files.MISSING,
        "USER.md": files.KEPT,
        ".mc-agent-token": files.SECRET,
        "EXTRA.md": files.UNRENDERED,
    }
    checks = files.compare(rendered, reported)
    assert all(c.reported_sha256 is None for c in checks if c.verdict == files.SECRET)
    assert [c.name for c in checks if c.drifted] == ["SOUL.md"]


def test_charts_are_valid_svg_and_escape_their_text() -> None:
    hostile = '<script>alert(1)</script>"'
    line = charts.line_chart(
        "c1", hostile, [charts.Series(hostile, [1, 5, 3], "chart-online")], ["a", hostile, ""]
    )
    bars = charts.bar_chart("c2", hostile, [0, 4, 2], [hostile, "b", "c"], "chart-done")
    for svg in (line, bars):
        root = ET.fromstring(str(svg))  # well-formed: nothing unescaped broke it
        assert root.get("role") == "img"
        assert "<script>" not in str(svg)
    assert "latest: " in str(line) and "No samples yet" in str(charts.line_chart("c3", "t", [], []))


def test_trends_need_a_sample_near_the_moment() -> None:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    migrate(conn)
    record_sample_in(conn, 1000.0, {"agents.online": 4})
    record_sample_in(conn, 1300.0, {"agents.online": 6})
    assert sample_near_in(conn, 1290.0) == (1300.0, {"agents.online": 6})
    assert sample_near_in(conn, 1000.0 + 4 * 3600) is None
    assert trend({"agents.online": 9}, {"agents.online": 6}, "agents.online").change == 3
    assert trend({"agents.online": 9}, None, "agents.online").change is None
    for at in range(0, 10_000, 10):
        record_sample_in(conn, 2000.0 + at, {"agents.online": at})
    kept = samples_in(conn, 2000.0, 12_000.0, 50)
    assert len(kept) <= 50 and kept[-1][1]["agents.online"] == 9990


def test_sessions_expire_end_and_check_csrf() -> None:
    now = [1000.0]
    sessions = Sessions(lifetime_s=60, max_sessions=2, clock=lambda: now[0])
    first_id, first = sessions.create()
    assert sessions.get(first_id) is first and first.csrf_ok(first.csrf_token)
    assert not first.csrf_ok("forged") and not first.csrf_ok(None)
    assert sessions.get("x" * 500) is None and sessions.get("é") is None
    second_id, _ = sessions.create()
    sessions.create()  # the oldest ends to make room
    assert sessions.get(first_id) is None and sessions.get(second_id) is not None
    now[0] += 61
    assert sessions.get(second_id) is None


def test_tokens_and_names() -> None:
    assert token_matches(" abc ", "abc") and not token_matches("abd", "abc")
    assert not token_matches("ãbc", "abc") and not token_matches("", "")
    assert login_csrf_ok("t", "t") and not login_csrf_ok(None, "t") and not login_csrf_ok("t", "u")
    assert CookieNames.for_transport(True).session == "__Host-mc_session"
    assert CookieNames.for_transport(False).session == "mc_session"
    for bad in ("https://x.example/", "//x.example", "/\\x", "/api/v1", "", None):
        assert safe_next(bad) == "/ui/"
    assert safe_next("/ui/agents?status=offline") == "/ui/agents?status=offline"


def test_relative_times() -> None:
    assert ago(None, 100) == "never"
    assert ago(40.0, 100.0) == "1 min ago"
    assert ago(130.0, 100.0) == "in 30 s"
    assert ago("1970-01-01T00:01:40Z", 100.0) == "just now"


async def test_a_subscription_gets_only_its_kinds() -> None:
    bus = EventBus()
    agents_only = bus.subscribe(None, frozenset({"agent"}))
    everything = bus.subscribe(None)
    bus.publish("gateway", {"id": "g"}, board_id=None, gateway_id="g")
    bus.publish("agent", {"id": "a"}, board_id="b", gateway_id="g")
    first = await agents_only.next(1.0)
    assert first is not None and first.kind == "agent"
    assert [(await everything.next(1.0)).kind for _ in range(2)] == ["gateway", "agent"]  # type: ignore[union-attr]
    assert [e.kind for e in bus.since(0, None, frozenset({"agent"}))] == ["agent"]
