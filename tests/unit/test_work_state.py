"""The heartbeat status vocabulary: what each word an agent sends means."""

from __future__ import annotations

import pytest

from hub.work_state import WorkState, work_state_for


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("active", WorkState.ACTIVE),
        ("Active", WorkState.ACTIVE),
        ("in-progress", WorkState.ACTIVE),
        ("idle", WorkState.IDLE),
        ("ready", WorkState.IDLE),
        ("blocked", WorkState.BLOCKED),
        ("paused", WorkState.PAUSED),
        ("reviewing the docs", WorkState.OTHER),
        ("healthy", None),
        ("", None),
        ("   ", None),
    ],
)
def test_each_word_has_one_meaning(word: str, state: WorkState | None) -> None:
    assert work_state_for(word) == state


def test_mission_controls_states_all_have_a_meaning_or_are_the_lifecycles() -> None:
    # provisioning and deleted are lifecycle states; the rest are work the agent reports.
    assert work_state_for("ready") is WorkState.IDLE
    assert work_state_for("active") is WorkState.ACTIVE
    assert work_state_for("idle") is WorkState.IDLE
    assert work_state_for("paused") is WorkState.PAUSED
