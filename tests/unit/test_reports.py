"""What the sidecar reports: the Hello, the GatewayState, and not its own changes as drift."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config_watch import ConfigReport, RosterEntry, roster_of
from sidecar.openclaw_config import Drift, DriftKind
from sidecar.reports import OWN_CHANGE_WINDOW_S, OwnChanges, Reports
from sidecar.state import AgentState, LocalState
from sidecar.workspace import WorkspaceWriter
from tests.support import RecordingGateway

A = "mc-aaaa"
B = "lead-bbbb"


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def changed(agent_id: str) -> Drift:
    return Drift(agent_id, DriftKind.CHANGED, "heartbeat")


def test_changed_drift_of_an_agent_the_sidecar_just_changed_is_dropped() -> None:
    clock = Clock()
    own = OwnChanges(clock=clock)
    own.changed(A)
    clock.now_s += OWN_CHANGE_WINDOW_S - 0.1
    assert own.reportable([changed(A)]) == []


def test_changed_drift_after_the_window_is_reported() -> None:
    clock = Clock()
    own = OwnChanges(clock=clock)
    own.changed(A)
    clock.now_s += OWN_CHANGE_WINDOW_S
    assert own.reportable([changed(A)]) == [changed(A)]


def test_other_kinds_are_reported_even_inside_the_window() -> None:
    clock = Clock()
    own = OwnChanges(clock=clock)
    own.changed(A)
    others = [
        Drift(A, DriftKind.REMOVED, "entry removed"),
        Drift(A, DriftKind.RESTORED, "entry written back"),
        Drift(A, DriftKind.ADDED, "entry added"),
    ]
    assert own.reportable(others) == others


def test_other_agents_are_unaffected() -> None:
    clock = Clock()
    own = OwnChanges(clock=clock)
    own.changed(A)
    assert own.reportable([changed(A), changed(B)]) == [changed(B)]


def test_a_new_change_opens_the_window_again() -> None:
    clock = Clock()
    own = OwnChanges(clock=clock)
    own.changed(A)
    clock.now_s += OWN_CHANGE_WINDOW_S + 1
    own.changed(A)
    clock.now_s += 1
    assert own.reportable([changed(A)]) == []


def test_nothing_changed_yet_reports_everything() -> None:
    drift = [changed(A), Drift(B, DriftKind.REMOVED)]
    assert OwnChanges(clock=Clock()).reportable(drift) == drift


@pytest.fixture
def state(tmp_path: Path) -> Iterator[LocalState]:
    local = LocalState(tmp_path / "state.db")
    local.record_applied(3, upsert=[AgentState(A, 2, f"workspace-{A}")])
    yield local
    local.close()


def reports(tmp_path: Path, state: LocalState, gateway: RecordingGateway) -> Reports:
    return Reports(
        gateway_id="gw-1",
        workspace_root=tmp_path,
        state=state,
        writer=WorkspaceWriter(tmp_path),
        gateway=gateway,
        agent_api_url=lambda: "http://127.0.0.1:18790",
    )


async def test_hello_inventory_says_whether_the_entry_is_in_openclaw_json(
    tmp_path: Path, state: LocalState
) -> None:
    built = reports(tmp_path, state, RecordingGateway())
    hello = await built.hello()
    assert (hello.gateway_id, hello.last_applied_sequence) == ("gw-1", 3)
    assert hello.agent_api_url == "http://127.0.0.1:18790"
    # Before the watcher's first pass nothing says an entry is missing.
    assert [(a.agent_id, a.applied_generation, a.present_in_config) for a in hello.inventory] == [
        (A, 2, True)
    ]
    built.config = ConfigReport(valid=True, present=frozenset({B}))
    assert [a.present_in_config for a in (await built.hello()).inventory] == [False]


def test_gateway_state_carries_the_config_and_the_drift_given(
    tmp_path: Path, state: LocalState
) -> None:
    built = reports(tmp_path, state, RecordingGateway(reachable=False))
    reported = built.gateway_state()
    assert not reported.reachable and reported.unreachable_reason
    assert reported.config_valid and not reported.drift
    built.config = ConfigReport(valid=False, error="syntax error", last_touched_version="2026.9.6")
    reported = built.gateway_state([changed(A)])
    assert (reported.config_valid, reported.config_error, reported.last_touched_version) == (
        False,
        "syntax error",
        "2026.9.6",
    )
    assert [(d.agent_id, d.kind) for d in reported.drift] == [(A, DriftKind.CHANGED)]


async def test_unmanaged_entries_are_reported_once_openclaw_json_was_read(
    tmp_path: Path, state: LocalState
) -> None:
    built = reports(tmp_path, state, RecordingGateway())
    assert not (await built.hello()).unmanaged_reported  # not read yet: the hub keeps its list
    built.config = ConfigReport(
        valid=True,
        present=frozenset({A}),
        roster=(
            RosterEntry(A, "managed", f"workspace-{A}"),
            RosterEntry("research", "Research", "/srv/openclaw/research"),
            RosterEntry("main"),
        ),
    )
    for message in (await built.hello(), built.gateway_state()):
        assert message.unmanaged_reported
        assert [(u.agent_id, u.name, u.workspace) for u in message.unmanaged] == [
            ("research", "Research", "/srv/openclaw/research"),
            ("main", "", ""),
        ]
    built.config = ConfigReport(valid=False, error="syntax error")
    assert not built.gateway_state().unmanaged_reported


def test_the_roster_reads_names_from_either_place() -> None:
    assert roster_of(
        {
            "b": {"identity": {"name": "From identity"}, "workspace": "/w/b"},
            "a": {"name": "Named", "workspace": 7},
        }
    ) == (RosterEntry("a", "Named", ""), RosterEntry("b", "From identity", "/w/b"))
