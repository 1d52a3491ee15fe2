"""The heartbeat governor as pure decisions: steps, the lead cap, never shorter than an
agent's own cadence, when the next step is due, and the settings refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.lifecycle.governor import (
    Cadence,
    GovernorError,
    GovernorPolicy,
    cadence,
    duration_s,
    effective_policy,
    next_step_at,
)

POLICY = GovernorPolicy()  # 30 m, 1 h, 3 h after each quiet hour; leads at most 1 h
HOUR = 3600


@pytest.mark.parametrize(
    ("idle_s", "worker", "lead"),
    [
        (0, Cadence(0, 600), Cadence(0, 600)),
        (HOUR - 1, Cadence(0, 600), Cadence(0, 600)),
        (HOUR, Cadence(1, 1800), Cadence(1, 1800)),
        (2 * HOUR, Cadence(2, 3600), Cadence(2, 3600)),
        (3 * HOUR, Cadence(3, 10800), Cadence(3, 3600)),  # a lead is capped at 1 h
        (300 * HOUR, Cadence(3, 10800), Cadence(3, 3600)),
    ],
)
def test_a_quiet_board_backs_off_step_by_step(idle_s: int, worker: Cadence, lead: Cadence) -> None:
    assert cadence(POLICY, 600, lead=False, idle_s=idle_s) == worker
    assert cadence(POLICY, 600, lead=True, idle_s=idle_s) == lead


def test_never_shorter_than_the_agents_own_cadence_nor_for_what_is_off() -> None:
    assert cadence(POLICY, 7200, lead=False, idle_s=HOUR) == Cadence(0, 7200)
    assert cadence(POLICY, 7200, lead=False, idle_s=3 * HOUR) == Cadence(3, 10800)
    assert cadence(POLICY, 7200, lead=True, idle_s=3 * HOUR) == Cadence(0, 7200)
    assert cadence(POLICY, 0, lead=False, idle_s=10 * HOUR) == Cadence(0, 0)  # no heartbeat
    assert cadence(None, 600, lead=False, idle_s=10 * HOUR) == Cadence(0, 600)
    off = GovernorPolicy(enabled=False)
    assert cadence(off, 600, lead=False, idle_s=10 * HOUR) == Cadence(0, 600)


def test_the_next_step_is_due_once_per_quiet_period_until_the_last() -> None:
    def at(now: float, lead: bool = False) -> float | None:
        return next_step_at(POLICY, 600, lead=lead, quiet_since=0.0, now=now)

    assert [at(0), at(HOUR), at(2 * HOUR), at(3 * HOUR)] == [HOUR, 2 * HOUR, 3 * HOUR, None]
    assert at(2 * HOUR, lead=True) is None  # already at its cap
    assert next_step_at(None, 600, lead=False, quiet_since=0.0, now=0.0) is None


@given(
    base=st.integers(0, 7 * 86400),
    lead=st.booleans(),
    a=st.floats(0, 30 * 86400),
    b=st.floats(0, 30 * 86400),
)
def test_backing_off_only_lengthens_and_grows_with_quiet(
    base: int, lead: bool, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    first = cadence(POLICY, base, lead=lead, idle_s=low)
    later = cadence(POLICY, base, lead=lead, idle_s=high)
    assert base <= first.every_s <= later.every_s
    if lead:
        assert later.every_s <= max(base, POLICY.lead_max_s)
    assert (first.step == 0) == (first.every_s == base)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"steps": []}, "1 to 8"),
        ({"steps": ["1h", "30m"]}, "longer than the one before"),
        ({"steps": ["30m", "30m"]}, "longer than the one before"),
        ({"steps": ["10s"]}, "from 1m to 7d"),
        ({"steps": ["30m"], "lead_max": "30d"}, "from 1m to 7d"),
        ({"idle_after": "5s"}, "idle_after"),
        ({"idle_after": "an hour"}, "not a duration"),
        ({"steps": [True]}, "not a duration"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_it(
    setting: dict[str, object], says: str
) -> None:
    with pytest.raises(GovernorError, match=says):
        GovernorPolicy.from_json(setting)


def test_the_agents_own_setting_wins_over_its_boards() -> None:
    board = json.dumps(POLICY.as_json())
    assert effective_policy(board, None) == POLICY
    assert effective_policy(board, json.dumps({"enabled": False})) is None  # exempt
    own = GovernorPolicy(steps_s=(7200,))
    assert effective_policy(None, json.dumps(own.as_json())) == own
    assert effective_policy(None, None) is None
    assert GovernorPolicy.from_json(POLICY.as_json()) == POLICY
    assert [duration_s(v) for v in ("90", "90s", "2m", "1h", "1d", 45)] == [
        90, 90, 120, 3600, 86400, 45
    ]  # fmt: skip
