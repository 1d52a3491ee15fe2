"""The `agents` rollout change: what is refused before any wave, and what each gateway
gets (created, already there, or a conflict that fails it)."""

from __future__ import annotations

from typing import Any

import pytest

from hub.fleet.changes import ChangeError, Existing, can_roll_back, check_change, plan_agents


def change(*agents: dict[str, Any]) -> dict[str, Any]:
    return check_change({"kind": "agents", "agents": list(agents)})


def test_a_checked_change_keeps_the_fields_the_create_request_takes() -> None:
    checked = change(
        {"name": "main", "heartbeat_config": {"every": "10m"}},
        {"name": "worker", "board": "Ops", "identity_profile": {"role": "Researcher"}},
    )
    assert checked == {
        "kind": "agents",
        "agents": [
            {
                "name": "main",
                "board": None,
                "is_board_lead": False,
                "heartbeat_config": {"every": "10m"},
            },
            {
                "name": "worker",
                "board": "Ops",
                "is_board_lead": False,
                "identity_profile": {"role": "Researcher"},
            },
        ],
    }
    assert can_roll_back(checked)


@pytest.mark.parametrize(
    ("agents", "names"),
    [
        ([], "change.agents"),
        ([{"name": ""}], "change.agents[0].name"),
        ([{"name": "a", "board": "B"}, {"name": "A", "board": "b"}], "asked for twice"),
        ([{"name": "a"}, {"name": "b"}], "one main agent"),
        ([{"name": "lead", "is_board_lead": True}], "a lead needs a board"),
        (
            [
                {"name": "x", "board": "B", "is_board_lead": True},
                {"name": "y", "board": "b", "is_board_lead": True},
            ],
            "a board has one lead",
        ),
        ([{"name": "a", "heartbeat_config": {"every": "soon"}}], "change.agents[0]."),
        ([{"name": "a", "soul_template": "{{ broken"}], "change.agents[0]."),
    ],
)
def test_bad_agents_are_refused_naming_the_field(agents: list[Any], names: str) -> None:
    with pytest.raises(ChangeError, match=names.replace("[", r"\[").replace("]", r"\]")):
        check_change({"kind": "agents", "agents": agents})


WANTED = change(
    {"name": "Main"},
    {"name": "Worker", "board": "ops"},
    {"name": "Lead", "board": "Ops", "is_board_lead": True},
)["agents"]
BOARDS = {"ops": "b1"}


def test_a_bare_gateway_gets_every_agent_on_its_own_board() -> None:
    plan = plan_agents(WANTED, [], BOARDS)
    assert [(a["name"], board) for a, board in plan.create] == [
        ("Main", None),
        ("Worker", "b1"),
        ("Lead", "b1"),
    ]
    assert plan.present == [] and plan.conflicts == []


def test_agents_already_there_are_left_alone_so_a_rerun_creates_none() -> None:
    existing = [
        Existing("m", "main", None, "main"),  # names match whatever the case
        Existing("w", "WORKER", "b1", "worker"),
        Existing("l", "Lead", "b1", "lead"),
    ]
    plan = plan_agents(WANTED, existing, BOARDS)
    assert plan.create == [] and plan.conflicts == []
    assert plan.present == ["m", "w", "l"]


def test_a_name_on_another_board_is_no_conflict() -> None:
    plan = plan_agents(WANTED[1:2], [Existing("w", "Worker", "b2", "worker")], BOARDS)
    assert [board for _, board in plan.create] == ["b1"]


@pytest.mark.parametrize(
    ("existing", "boards", "says"),
    [
        ([], {}, "no board named 'ops'"),
        ([Existing("w", "Worker", "b1", "lead")], BOARDS, "taken by lead agent w"),
        ([Existing("m", "Gateway Agent", None, "main")], BOARDS, "already a main agent"),
        ([Existing("l", "Boss", "b1", "lead")], BOARDS, "already a lead agent, 'Boss'"),
    ],
)
def test_conflicts_name_what_holds_the_place(
    existing: list[Existing], boards: dict[str, str], says: str
) -> None:
    plan = plan_agents(WANTED, existing, boards)
    assert any(says in c for c in plan.conflicts), plan.conflicts
