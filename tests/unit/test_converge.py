"""What a restored hub queues for a sidecar that is ahead of it (pure decision)."""

from __future__ import annotations

from hub.provisioning.converge import HubAgent, Plan, plan


def agent(agent_id: str, status: str = "online", generation: int = 1) -> HubAgent:
    return HubAgent(agent_id, f"mc-{agent_id}", status, generation)


def test_agents_the_hub_never_had_are_removed_keeping_their_files() -> None:
    decided = plan([agent("a")], {"mc-a": 1, "mc-late": 3})
    assert decided.remove == (("mc-late", 3),)
    assert decided.reapply == () and decided.reprovision == ()


def test_an_agent_applied_past_the_hubs_generation_is_applied_again_beyond_it() -> None:
    decided = plan([agent("a", generation=2)], {"mc-a": 5})
    assert decided.reapply == (("a", 6),)


def test_an_agent_the_sidecar_lost_is_provisioned_again() -> None:
    decided = plan([agent("a", generation=4)], {})
    assert decided.reprovision == (("a", 5),)


def test_agents_being_deleted_get_their_removal_again_whether_present_or_not() -> None:
    decided = plan([agent("a", "deleting"), agent("b", "deleting")], {"mc-a": 1})
    assert decided.reremove == ("a", "b")
    assert decided.remove == ()


def test_agents_the_sidecar_holds_as_the_hub_does_are_left_alone() -> None:
    decided = plan([agent("a", generation=3), agent("b", "updating", 2)], {"mc-a": 3, "mc-b": 1})
    assert not decided
    assert decided == Plan()
