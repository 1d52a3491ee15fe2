"""Pure rules of the local agent API: heartbeat body validation, the per-agent bucket and
the rejection log budget."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from hub.api.agent_facing import AgentHeartbeatBody
from missioncontrol.http import TokenBucket
from sidecar.agent_api import (
    AgentApiLimits,
    AgentRateLimiter,
    HeartbeatBody,
    InvalidBody,
    LogBudget,
    parse_heartbeat_body,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", HeartbeatBody()),
        (b"  \n", HeartbeatBody()),
        (b"{}", HeartbeatBody()),
        (b'{"status": "working"}', HeartbeatBody(status="working")),
        (b'{"status": null, "current_task_id": "t-1"}', HeartbeatBody(current_task_id="t-1")),
    ],
)
def test_valid_heartbeat_bodies(body: bytes, expected: HeartbeatBody) -> None:
    assert parse_heartbeat_body(body) == expected


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"mood": "fine"}', "'mood'"),
        (b'{"status": 3}', "'status' must be a string"),
        (b'{"status": "' + b"x" * 65 + b'"}', "'status' is 65 characters"),
        (b'{"current_task_id": "' + b"x" * 129 + b'"}', "'current_task_id' is 129"),
        (b'{"status": ' + b"9" * 5000 + b"}", "a number too long to read"),
        (b'{"status": "\\ud800"}', "'status' is not valid UTF-8"),
    ],
)
def test_invalid_heartbeat_bodies_name_the_cause(body: bytes, phrase: str) -> None:
    with pytest.raises(InvalidBody, match=phrase):
        parse_heartbeat_body(body)


def test_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=20, now=0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(20))
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1) == 0.0
    assert bucket.take(0.1) > 0


def test_rate_limit_is_per_agent() -> None:
    now = [0.0]
    limiter = AgentRateLimiter(AgentApiLimits(rate_per_s=1, burst=2), clock=lambda: now[0])
    assert limiter.retry_after_s("a") == 0.0
    assert limiter.retry_after_s("a") == 0.0
    assert limiter.retry_after_s("a") == pytest.approx(1.0)
    assert limiter.retry_after_s("b") == 0.0  # another agent on the same host is unaffected


def test_idle_agents_are_forgotten_when_many_are_tracked() -> None:
    now = [0.0]
    limits = AgentApiLimits(rate_per_s=1, burst=1, max_tracked_agents=3)
    limiter = AgentRateLimiter(limits, clock=lambda: now[0])
    for agent in "abc":
        limiter.retry_after_s(agent)
    now[0] = 5.0  # everyone's bucket refilled
    limiter.retry_after_s("d")
    assert len(limiter._buckets) == 1


# The hub checks a relayed heartbeat's fields again with its own model; the sidecar
# must accept exactly what the hub accepts, or beats the sidecar took would vanish.
FIELD_TEXT = [
    "working",
    "  working  ",
    "",
    "   ",
    "\ud800",
    "ok \udfff",
    "a\x00b",
    "a\nb",
    "\t",
    "a\tb",
    "\u2028",
    "a\u2028b",
    "a\x85b",
    "\x85",
    "a\x7fb",
    "a\x9bb",
    "é 😀",
    "\u200b",
    "x" * 64,
    " " + "x" * 64 + " ",
    "x" * 65,
    "x" * 128,
    "x" * 129,
]


@pytest.mark.parametrize("field", ["status", "current_task_id"])
@pytest.mark.parametrize("text", FIELD_TEXT)
def test_the_sidecar_takes_exactly_the_heartbeat_text_the_hub_takes(field: str, text: str) -> None:
    body = json.dumps({field: text}).encode()  # ensure_ascii: a lone surrogate is an escape
    try:
        hub_value = getattr(AgentHeartbeatBody.model_validate({field: text}), field)
    except ValidationError:
        hub_value = None
    try:
        sidecar_value = getattr(parse_heartbeat_body(body), field)
    except InvalidBody:
        sidecar_value = None
    assert (sidecar_value is None) == (hub_value is None), (hub_value, sidecar_value)
    if hub_value is not None:
        assert sidecar_value == hub_value


def test_rejection_log_budget_logs_a_burst_then_says_how_many_it_held_back() -> None:
    now = [0.0]
    budget = LogBudget(rate_per_s=1.0, burst=3, clock=lambda: now[0])
    assert [budget.take() for _ in range(10)] == [0, 0, 0] + [None] * 7
    now[0] = 1.0
    assert budget.take() == 7  # the next line carries the count
    assert budget.take() is None
