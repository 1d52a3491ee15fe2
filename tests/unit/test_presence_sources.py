"""Where a check-in came from, and what the hub makes of a sidecar's conditions."""

from __future__ import annotations

import dataclasses

import pytest

from hub.lifecycle.causes import PRIORITY, causes_by_agent
from hub.lifecycle.decisions import (
    CheckIn,
    CheckInSource,
    DeadlineDue,
    LogEvent,
    Status,
    WakeDelivered,
)
from protos import link_pb2 as pb
from protos.contract import timestamp
from tests.unit.test_lifecycle import NOW, fresh, logs, provisioned_and_woken, run

AT = 1_800_000_000.0


@pytest.mark.parametrize("source", list(CheckInSource))
def test_a_check_in_records_its_source(source: CheckInSource) -> None:
    s, _ = run(provisioned_and_woken(), [(NOW + 5, CheckIn(NOW + 5, source))])
    assert s.status is Status.ONLINE and s.last_checkin_source is source
    assert s.checkin_deadline_at is None  # any source answers the wake


def test_an_older_check_in_leaves_the_latest_source() -> None:
    s = fresh(status=Status.ONLINE, last_seen_at=NOW, last_checkin_source=CheckInSource.HEARTBEAT)
    s, _ = run(s, [(NOW + 10, CheckIn(NOW - 30, CheckInSource.RUNTIME))])  # buffered, older
    assert (s.last_seen_at, s.last_checkin_source) == (NOW, CheckInSource.HEARTBEAT)
    s, _ = run(s, [(NOW + 20, CheckIn(NOW + 20, CheckInSource.RUNTIME))])
    assert (s.last_seen_at, s.last_checkin_source) == (NOW + 20, CheckInSource.RUNTIME)


def test_the_last_of_its_wakes_going_unanswered_names_the_reported_cause() -> None:
    s = provisioned_and_woken()
    s = dataclasses.replace(s, cause="runs_failing: its last 3 runs failed; the last: 401")
    for _ in range(3):
        due = s.checkin_deadline_at or NOW
        s, actions = run(s, [(due, DeadlineDue(due, s.lifecycle_generation))])
        if s.status is Status.OFFLINE:
            break
        s, _ = run(s, [(due + 1, WakeDelivered(s.lifecycle_generation, due + 1))])
    assert s.status is Status.OFFLINE
    assert LogEvent.MAX_ATTEMPTS_REACHED in logs(actions)
    assert (s.last_provision_error or "").endswith(
        "cause: runs_failing: its last 3 runs failed; the last: 401"
    )


def _condition(agent_id: str, code: str, detail: str, since: float = AT) -> pb.AgentCondition:
    return pb.AgentCondition(agent_id=agent_id, code=code, detail=detail, since=timestamp(since))


def test_gateway_wide_conditions_count_for_every_agent_most_telling_first() -> None:
    causes = causes_by_agent(
        [
            _condition("a", "heartbeat_missing", "no heartbeat job", AT - 50),
            _condition("", "model_auth", "openai (expired)", AT - 10),
            _condition("b", "runs_failing", "its last 2 runs failed"),
            _condition("z", "runs_failing", "not one of the gateway's agents"),
        ],
        ["a", "b", "c"],
        AT + 5,
    )
    assert set(causes) == {"a", "b", "c"}
    assert causes["a"].code == "model_auth"
    assert causes["a"].text == "model_auth: openai (expired); heartbeat_missing: no heartbeat job"
    assert causes["a"].since == AT - 50  # since the first of them
    assert causes["b"].text == "model_auth: openai (expired); runs_failing: its last 2 runs failed"
    assert causes["c"].text == "model_auth: openai (expired)"
    assert [c for c in PRIORITY if c in {"model_auth", "runs_failing"}] == [
        "model_auth",
        "runs_failing",
    ]


def test_none_reported_is_no_cause() -> None:
    assert causes_by_agent([], ["a"], AT) == {}


@pytest.mark.parametrize(
    ("code", "detail", "kept_code", "kept_detail"),
    [
        ("Bad Code!", "x", "other", "x"),
        ("", "x", "other", "x"),
        ("a" * 41, "x", "other", "x"),
        ("runs_failing", "line\x00one\x1b[31m", "runs_failing", "line\ufffdone\ufffd[31m"),
        ("runs_failing", "", "runs_failing", "runs_failing"),
    ],
)
def test_what_a_sidecar_sends_is_kept_in_a_safe_shape(
    code: str, detail: str, kept_code: str, kept_detail: str
) -> None:
    condition = pb.AgentCondition(agent_id="a", code=code, detail=detail)
    (cause,) = causes_by_agent([condition], ["a"], AT).values()
    assert cause.code == kept_code
    assert cause.text == f"{kept_code}: {kept_detail}"
    assert cause.since == AT  # no time given: when it arrived


def test_a_long_detail_is_bounded() -> None:
    (cause,) = causes_by_agent([_condition("a", "runs_failing", "x" * 10_000)], ["a"], AT).values()
    assert len(cause.text) < 1100


def test_a_since_in_the_future_is_clamped_to_arrival() -> None:
    (cause,) = causes_by_agent([_condition("a", "runs_failing", "x", AT + 999)], ["a"], AT).values()
    assert cause.since == AT
