"""The sidecar's usage relay: which sessions it reads, what it sends, and what it survives."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from protos import link_pb2 as pb
from sidecar.gateway import SessionTokens
from sidecar.gateway.protocol import parse_session_tokens, session_usage_params
from sidecar.usage import UsagePolicy, UsageRelay, utc_day
from tests.support import RecordingGateway

# ---------------------------------------------------------------- the gateway's answer

# sessions.usage for one key, as 2026.3.8 answers it (2026.9 adds fields around these).
LEGACY_ANSWER = {
    "updatedAt": 1_795_000_000_000,
    "startDate": "2026-11-30",
    "endDate": "2026-11-30",
    "sessions": [
        {
            "key": "agent:mc-a:main",
            "sessionId": "7f0c",
            "agentId": "mc-a",
            "usage": {
                "input": 1000,
                "output": 200,
                "cacheRead": 300,
                "cacheWrite": 0,
                "totalTokens": 1500,
                "totalCost": 0,
                "dailyBreakdown": [{"date": "2026-11-30", "tokens": 1500, "cost": 0}],
            },
        }
    ],
    "totals": {"totalTokens": 1500},
}


def test_the_answer_for_one_session_and_day_is_its_whole_count() -> None:
    figures = parse_session_tokens(LEGACY_ANSWER, "agent:mc-a:main", "2026-11-30")
    assert figures == SessionTokens(
        "agent:mc-a:main", "7f0c", "2026-11-30", 1500, 1000, 200, 300, 0
    )
    assert session_usage_params("agent:mc-a:main", "2026-11-30") == {
        "key": "agent:mc-a:main",
        "startDate": "2026-11-30",
        "endDate": "2026-11-30",
        "mode": "utc",
        "limit": 1,
    }


def test_no_transcript_or_a_strange_answer_is_no_figure() -> None:
    key = "agent:mc-a:main"
    assert parse_session_tokens({"sessions": []}, key, "2026-11-30") is None
    assert parse_session_tokens({"sessions": [{"key": key, "usage": None}]}, key, "d") is None
    assert parse_session_tokens({"sessions": "x"}, key, "d") is None
    odd = {"sessions": [{"key": key, "usage": {"input": -5, "output": 7.9, "cacheRead": "9"}}]}
    figures = parse_session_tokens(odd, key, "d")
    assert figures is not None and (figures.total, figures.input, figures.output) == (7, 0, 7)


# ---------------------------------------------------------------- the relay


@dataclass
class Clock:
    now: float = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Sent:
    messages: list[pb.SidecarMessage] = field(default_factory=list)

    def __call__(self, message: pb.SidecarMessage) -> None:
        self.messages.append(message)

    def figures(self) -> list[tuple[str, str, int]]:
        return [
            (s.agent_id, s.session_id, s.total_tokens)
            for m in self.messages
            for s in m.usage.sessions
        ]


def woken(*agents: str) -> RecordingGateway:
    gateway = RecordingGateway()
    for agent in agents:
        gateway.calls.append(("wake", agent, "k"))  # a woken agent has a main session
    return gateway


def relay_for(
    gateway: RecordingGateway, managed: set[str], *, connected: bool = True
) -> tuple[UsageRelay, Sent, Clock]:
    sent, clock = Sent(), Clock()
    state = {"connected": connected}
    relay = UsageRelay(
        gateway,
        sent,
        lambda: managed,
        lambda: state["connected"],
        policy=UsagePolicy(settle_s=45.0),
        clock=clock,
    )
    relay.state = state  # type: ignore[attr-defined]
    return relay, sent, clock


async def test_only_managed_sessions_that_changed_are_read_and_sent_once() -> None:
    gateway = woken("mc-a", "mc-b", "hand-made")
    gateway.tokens = {"mc-a": 1200, "mc-b": 60, "hand-made": 999}
    relay, sent, clock = relay_for(gateway, {"mc-a", "mc-b"})
    assert await relay.read_once() == 2
    assert sorted(sent.figures()) == [("mc-a", "session-mc-a", 1200), ("mc-b", "session-mc-b", 60)]
    [message] = sent.messages
    assert {s.day for s in message.usage.sessions} == {utc_day(clock.now)}

    clock.now += 120  # settled, unchanged: nothing read, nothing sent
    assert await relay.read_once() == 0
    gateway.tokens["mc-a"] = 1500  # a run: more tokens, a newer updatedAt
    clock.now += 60
    assert await relay.read_once() == 1
    assert sent.figures()[-1] == ("mc-a", "session-mc-a", 1500)


async def test_a_session_read_just_after_it_changed_is_read_again_once_settled() -> None:
    gateway = woken("mc-a")
    gateway.tokens = {"mc-a": 100}
    relay, sent, clock = relay_for(gateway, {"mc-a"})
    # The session changed "now" (updatedAt is the test's fixed epoch, so pin the clock to it).
    updated_s = gateway._sessions()[0].updated_at_ms / 1000
    gateway.tokens_day = utc_day(updated_s)
    clock.now = updated_s + 1
    assert await relay.read_once() == 1
    # The gateway's figure was still a cached one: it catches up without a new updatedAt...
    calls: list[str] = []
    original = gateway.session_tokens

    async def counted(key: str, day: str) -> SessionTokens | None:
        calls.append(key)
        figures = await original(key, day)
        return None if figures is None else SessionTokens(key, figures.session_id, day, 180)

    gateway.session_tokens = counted  # type: ignore[method-assign]
    clock.now = updated_s + 30
    assert await relay.read_once() == 1  # ...read again while not settled
    clock.now = updated_s + 100
    assert await relay.read_once() == 0  # read once more (no change), now settled
    clock.now = updated_s + 200
    assert await relay.read_once() == 0  # and no more
    assert len(calls) == 2
    assert [f[2] for f in sent.figures()] == [100, 180]


async def test_figures_wait_for_the_link_and_are_all_sent_again_on_a_new_stream() -> None:
    gateway = woken("mc-a")
    gateway.tokens = {"mc-a": 500}
    relay, sent, clock = relay_for(gateway, {"mc-a"}, connected=False)
    assert await relay.read_once() == 0
    relay.state["connected"] = True  # type: ignore[attr-defined]
    clock.now += 120
    assert await relay.read_once() == 1  # held, not read again: sent now
    relay.link_changed(True)  # a new stream: what was queued on the old one may be lost
    clock.now += 120
    assert await relay.read_once() == 1
    assert sent.figures() == [("mc-a", "session-mc-a", 500)] * 2


async def test_one_session_whose_read_fails_does_not_stop_the_others() -> None:
    gateway = woken("mc-a", "mc-b")
    gateway.tokens = {"mc-a": 10, "mc-b": 20}
    original = gateway.session_tokens

    async def broken_for_a(key: str, day: str) -> SessionTokens | None:
        if "mc-a" in key:
            raise ValueError("the gateway answered something unreadable")
        return await original(key, day)

    gateway.session_tokens = broken_for_a  # type: ignore[method-assign]
    relay, sent, _clock = relay_for(gateway, {"mc-a", "mc-b"})
    assert await relay.read_once() == 1
    assert sent.figures() == [("mc-b", "session-mc-b", 20)]


async def test_a_reset_session_is_sent_under_its_new_id() -> None:
    gateway = woken("mc-a")
    gateway.tokens = {"mc-a": 900}
    relay, sent, clock = relay_for(gateway, {"mc-a"})
    await relay.read_once()
    gateway.session_ids["mc-a"] = "fresh"
    gateway.tokens["mc-a"] = 40
    clock.now += 120
    await relay.read_once()
    assert sent.figures() == [("mc-a", "session-mc-a", 900), ("mc-a", "fresh", 40)]


async def test_an_unreachable_gateway_is_not_asked() -> None:
    gateway = woken("mc-a")
    gateway.tokens = {"mc-a": 1}
    gateway.reachable = False
    relay, sent, _clock = relay_for(gateway, {"mc-a"})
    assert await relay.read_once() == 0
    assert sent.messages == []
