"""Alert rules as pure decisions: matching, filters, cooldowns, payload bounds, URLs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.alerts.rules import (
    EVENT_KINDS,
    MAX_DETAIL_BYTES,
    MAX_SUBJECT_CHARS,
    MAX_SUMMARY_CHARS,
    AlertKind,
    Rule,
    SubjectState,
    Verdict,
    alert_body,
    alert_for_event,
    certificate_alert,
    cooldown_verdict,
    disconnected_alert,
    rule_problem,
    url_problem,
)
from hub.lifecycle.decisions import LogEvent


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": fields.pop("id", 7),
        "at": 1000.0,
        "kind": kind,
        "gateway_id": fields.pop("gateway_id", "gw-1"),
        "board_id": fields.pop("board_id", "b-1"),
        "agent_id": fields.pop("agent_id", "a-1"),
        "detail": fields,
    }


def rule(kind: AlertKind, **fields: Any) -> Rule:
    return Rule(id="r", name="r", kind=kind, **fields)


@pytest.mark.parametrize(
    ("kind", "fires"),
    [
        (LogEvent.MAX_ATTEMPTS_REACHED.value, True),
        (LogEvent.WENT_OFFLINE.value, True),
        (LogEvent.RETRIGGERED.value, False),
        (LogEvent.CHECKED_IN.value, False),
    ],
)
def test_agent_offline_fires_on_the_offline_verdicts_only(kind: str, fires: bool) -> None:
    alert = alert_for_event(rule(AlertKind.AGENT_OFFLINE), event(kind))
    assert (alert is not None) is fires
    if alert is not None:
        assert alert.subject == "agent:a-1" and alert.event_id == 7


def test_a_refused_apply_is_an_offline_verdict_only_when_permanent() -> None:
    offline = rule(AlertKind.AGENT_OFFLINE)
    assert alert_for_event(offline, event(LogEvent.APPLY_FAILED.value, permanent=False)) is None
    alert = alert_for_event(offline, event(LogEvent.APPLY_FAILED.value, permanent=True))
    assert alert is not None and "apply_refused" in alert.summary


@given(
    kind=st.sampled_from(sorted(EVENT_KINDS)),
    board=st.sampled_from([None, "b-1", "b-2"]),
    gateway=st.sampled_from([None, "gw-1", "gw-2"]),
)
def test_filters_admit_exactly_what_they_name(
    kind: AlertKind, board: str | None, gateway: str | None
) -> None:
    matching = next(iter(EVENT_KINDS[kind]))
    alert = alert_for_event(
        rule(kind, board_id=board, gateway_id=gateway), event(matching, permanent=True)
    )
    expected = board in (None, "b-1") and gateway in (None, "gw-1")
    assert (alert is not None) is expected


def test_no_rule_fires_on_another_kinds_events() -> None:
    every = set().union(*EVENT_KINDS.values()) | {"gateway.connected", "task.created"}
    for kind in AlertKind:
        for name in every - EVENT_KINDS.get(kind, frozenset()):
            assert alert_for_event(rule(kind), event(name, permanent=True)) is None, (kind, name)


def test_a_rollout_is_its_own_subject_and_says_why_it_halted() -> None:
    alert = alert_for_event(
        rule(AlertKind.ROLLOUT_HALTED), event("rollout.halted", rollout_id="ro-9", reason="canary")
    )
    assert alert is not None and alert.subject == "rollout:ro-9" and "canary" in alert.summary


def test_a_disconnect_fires_past_its_threshold_once_per_episode() -> None:
    away = rule(AlertKind.GATEWAY_DISCONNECTED, disconnected_for_s=60)
    assert disconnected_alert(away, "gw-1", "one", 1000.0, 1059.0) is None
    first = disconnected_alert(away, "gw-1", "one", 1000.0, 1060.0)
    later = disconnected_alert(away, "gw-1", "one", 1000.0, 5000.0)
    next_episode = disconnected_alert(away, "gw-1", "one", 6000.0, 7000.0)
    assert first is not None and later is not None and next_episode is not None
    assert first.occurrence == later.occurrence != next_episode.occurrence
    assert first.subject == next_episode.subject == "gateway:gw-1"


def test_a_certificate_fires_within_its_window_and_a_renewal_is_a_new_episode() -> None:
    ending = rule(AlertKind.CERTIFICATE_EXPIRING, expiring_within_days=7)
    now = 1_000_000.0
    assert certificate_alert(ending, "gw-1", "one", now + 8 * 86400, now) is None
    soon = certificate_alert(ending, "gw-1", "one", now + 6 * 86400, now)
    gone = certificate_alert(ending, "gw-1", "one", now - 1, now)
    assert soon is not None and "expires in 6.0 days" in soon.summary
    assert gone is not None and "has expired" in gone.summary


@given(
    last_fired=st.one_of(st.none(), st.floats(0, 2000)),
    cooldown=st.floats(0, 1000),
    now=st.floats(0, 4000),
)
def test_cooldown_fires_only_outside_the_window_and_an_occurrence_goes_out_once(
    last_fired: float | None, cooldown: float, now: float
) -> None:
    sent = SubjectState(last_fired, fired_occurrence="x", last_occurrence="x")
    assert cooldown_verdict(sent, "x", cooldown, now) is Verdict.SEEN
    verdict = cooldown_verdict(sent, "y", cooldown, now)
    inside = last_fired is not None and now - last_fired < cooldown
    assert verdict is (Verdict.SUPPRESS if inside else Verdict.FIRE)


def test_a_condition_held_back_is_counted_once_and_sent_when_the_cooldown_ends() -> None:
    held = SubjectState(1000.0, fired_occurrence="away:1", last_occurrence="away:2", suppressed=1)
    assert cooldown_verdict(held, "away:2", 600, 1300.0) is Verdict.SEEN  # not counted again
    assert cooldown_verdict(held, "away:3", 600, 1300.0) is Verdict.SUPPRESS
    assert cooldown_verdict(held, "away:2", 600, 1600.0) is Verdict.FIRE  # still away


def test_the_payload_is_bounded_by_replacing_a_large_detail() -> None:
    alert = alert_for_event(rule(AlertKind.DRIFT_FOUND), event("gateway.drift", big="x" * 100_000))
    assert alert is not None
    body = alert_body(
        rule(AlertKind.DRIFT_FOUND), alert, delivery_id="d", fired_at=1.0, suppressed=0
    )
    assert len(body) < MAX_DETAIL_BYTES
    assert json.loads(body)["detail"] == {"truncated": True, "size_bytes": 100_010}


def test_subject_and_summary_are_bounded_whatever_a_rollout_wrote() -> None:
    alert = alert_for_event(
        rule(AlertKind.ROLLOUT_HALTED), event("rollout.halted", rollout_id="r" * 5000, reason="x")
    )
    assert alert is not None
    assert len(alert.subject) == MAX_SUBJECT_CHARS and len(alert.summary) == MAX_SUMMARY_CHARS


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://alerts.example.com/hook", None),
        ("http://127.0.0.1:8080/x?y=1", None),
        ("ftp://example.com/", "http:// or https://"),
        ("example.com/hook", "no scheme"),
        ("https:///nohost", "names no host"),
        ("https://a:b@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("http://[::1/", "not a URL"),
        ("http://example.com:0/", "port 0"),
    ],
)
def test_url_problems_name_the_fix(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize("kind", list(AlertKind))
def test_each_kind_takes_exactly_its_threshold(kind: AlertKind) -> None:
    wanted = {
        AlertKind.GATEWAY_DISCONNECTED: "disconnected_for_s",
        AlertKind.CERTIFICATE_EXPIRING: "expiring_within_days",
    }.get(kind)
    for given_field in (None, "disconnected_for_s", "expiring_within_days"):
        fields: dict[str, Any] = {"disconnected_for_s": None, "expiring_within_days": None}
        if given_field is not None:
            fields[given_field] = 5.0
        problem = rule_problem(kind, board_id=None, **fields)
        assert (problem is None) is (given_field == wanted)
