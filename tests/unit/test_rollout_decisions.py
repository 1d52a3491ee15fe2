"""Rollout decisions, rule by rule: waves, the health gate, halting, pausing, rolling back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.fleet import rollouts as ro
from hub.fleet.rollouts import (
    AgentFacts,
    ApplyGateway,
    Complete,
    FinishRollback,
    Gate,
    GatewayFacts,
    Halt,
    MarkGateway,
    RollbackGateway,
    Rollout,
    StartWave,
    Status,
    Target,
    TargetState,
    decide,
    gate_verdict,
    plan_waves,
)

T0 = 1_800_000_000.0
GATE = Gate(max_fail_percentage=0, deadline_s=60, link_grace_s=15)


def ids(n: int) -> list[str]:
    return [f"g{i:03d}" for i in range(n)]


# ------------------------------------------------------------------- waves


def test_default_waves_are_one_canary_then_ten_fifty_hundred_percent() -> None:
    waves = plan_waves(ids(100))
    assert [len(w) for w in waves] == [1, 9, 40, 50]
    assert [g for w in waves for g in w] == ids(100)  # every gateway once, in order


def test_small_fleets_drop_empty_waves_and_a_canary_larger_than_the_fleet_is_all_of_it() -> None:
    assert [len(w) for w in plan_waves(ids(3))] == [1, 1, 1]
    assert [len(w) for w in plan_waves(ids(1))] == [1]
    assert [len(w) for w in plan_waves(ids(4), canary=10)] == [4]
    assert [len(w) for w in plan_waves(ids(10), canary=3, percentages=[100])] == [3, 7]


def test_the_last_wave_always_ends_at_every_gateway() -> None:
    assert [len(w) for w in plan_waves(ids(10), canary=0, percentages=[20])] == [2, 8]


@pytest.mark.parametrize(
    ("canary", "percentages", "fragment"),
    [(-1, [10], "canary"), (1, [0], "above 0"), (1, [101], "at most 100"), (1, [50, 10], "grow")],
)
def test_bad_wave_plans_are_refused(canary: int, percentages: list[float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        plan_waves(ids(10), canary=canary, percentages=percentages)


@given(
    st.integers(0, 300),
    st.integers(0, 20),
    st.lists(st.floats(0.5, 100), max_size=5).map(sorted),
)
def test_waves_cover_every_gateway_once_in_order_none_empty(
    total: int, canary: int, percentages: list[float]
) -> None:
    waves = plan_waves(ids(total), canary=canary, percentages=percentages)
    assert [g for w in waves for g in w] == ids(total)
    assert all(waves)


# -------------------------------------------------------------------- gate


def agent(**fields: object) -> AgentFacts:
    values: dict[str, object] = {
        "agent_id": "a1",
        "generation": 2,
        "applied_generation": 2,
        "last_seen_at": T0 + 5,
        "status": "online",
    }
    values.update(fields)
    return AgentFacts(**values)  # type: ignore[arg-type]


def applied(gateway_id: str = "g1", wave: int = 0, at: float = T0) -> Target:
    return Target(gateway_id, wave, TargetState.APPLIED, at)


def up(*agents: AgentFacts) -> GatewayFacts:
    return GatewayFacts(connected=True, disconnected_at=None, agents=agents or (agent(),))


def verdict(facts: GatewayFacts | None, now: float, watching_since: float = T0 - 100):
    return gate_verdict(applied(), facts, GATE, now, watching_since)


def test_healthy_once_every_agent_applied_the_generation_and_checked_in_since() -> None:
    assert verdict(up(agent(), agent(agent_id="a2")), T0 + 6) == (TargetState.HEALTHY, None)


def test_waiting_while_an_agent_has_not_applied_or_not_checked_in_since_the_apply() -> None:
    assert verdict(up(agent(applied_generation=1)), T0 + 10) is None
    assert verdict(up(agent(last_seen_at=T0 - 1)), T0 + 10) is None  # seen before the apply
    assert verdict(up(agent(last_seen_at=None)), T0 + 10) is None


def test_the_deadline_fails_it_naming_the_agents_and_their_error() -> None:
    state, why = verdict(up(agent(last_seen_at=None, error="wake run failed: boom")), T0 + 60)
    assert state is TargetState.FAILED
    assert "1 of 1 agent(s) did not apply and check in within 60 s: a1" in why
    assert "wake run failed: boom" in why


def test_an_agent_gone_offline_fails_it_at_once() -> None:
    state, why = verdict(up(agent(status="offline", error="no check-in")), T0 + 1)
    assert state is TargetState.FAILED and "a1 went offline: no check-in" in why


def test_a_link_down_longer_than_the_grace_fails_it_a_shorter_blip_does_not() -> None:
    down = GatewayFacts(
        connected=False, disconnected_at=T0 + 10, agents=(agent(last_seen_at=None),)
    )
    assert verdict(down, T0 + 20) is None
    state, why = verdict(down, T0 + 26)
    assert state is TargetState.FAILED and "link is down" in why


def test_a_deleted_gateway_fails() -> None:
    assert verdict(None, T0)[0] is TargetState.FAILED
    assert verdict(GatewayFacts(False, None, exists=False), T0)[0] is TargetState.FAILED


def test_agents_deleted_meanwhile_do_not_count() -> None:
    facts = up(agent(), agent(agent_id="gone", exists=False, last_seen_at=None))
    assert verdict(facts, T0 + 6) == (TargetState.HEALTHY, None)


def test_after_a_hub_restart_the_deadline_and_link_grace_run_from_the_restart() -> None:
    restarted = T0 + 100
    waiting = up(agent(last_seen_at=None))
    assert verdict(waiting, restarted + 30, watching_since=restarted) is None  # not T0 + 60
    assert verdict(waiting, restarted + 60, watching_since=restarted)[0] is TargetState.FAILED
    down = GatewayFacts(False, restarted, (agent(last_seen_at=None),))  # marked at the start
    assert verdict(down, restarted + 5, watching_since=restarted) is None


# ------------------------------------------------------------------ decide


def rollout(status: Status = Status.RUNNING, wave: int = 0, waves: int = 3, gate: Gate = GATE):
    return Rollout("r1", status, wave, waves, gate)


def targets(*states_by_wave: list[TargetState]) -> list[Target]:
    out = []
    for wave, states in enumerate(states_by_wave):
        for i, state in enumerate(states):
            at = T0 if state is not TargetState.PENDING else None
            out.append(Target(f"w{wave}g{i}", wave, state, at))
    return out


P, A, H, F, S = (
    TargetState.PENDING,
    TargetState.APPLIED,
    TargetState.HEALTHY,
    TargetState.FAILED,
    TargetState.SKIPPED,
)


def run(r: Rollout, ts: list[Target], facts: dict[str, GatewayFacts] | None = None, now=T0 + 1):
    return decide(r, ts, facts or {}, now, watching_since=T0 - 100)


def test_a_running_wave_applies_its_pending_gateways_and_touches_no_other_wave() -> None:
    actions = run(rollout(), targets([P], [P, P]))
    assert actions == [ApplyGateway("w0g0")]


def test_the_gate_watches_applied_gateways_then_starts_the_next_wave() -> None:
    ts = targets([A], [P, P])
    assert run(rollout(), ts, {"w0g0": up(agent(last_seen_at=None))}) == []
    assert run(rollout(), ts, {"w0g0": up()}, now=T0 + 6) == [
        MarkGateway("w0g0", H, None),
        StartWave(1),
    ]


def test_the_last_wave_done_completes_it() -> None:
    assert run(rollout(wave=1, waves=2), targets([H], [H, S])) == [Complete()]


def test_a_failed_canary_halts_before_any_later_gateway_is_applied() -> None:
    ts = targets([A], [P, P])
    actions = run(rollout(), ts, {"w0g0": up(agent(last_seen_at=None))}, now=T0 + 61)
    assert [type(a) for a in actions] == [MarkGateway, Halt]
    assert actions[0].state is F
    assert "wave 1 failed its health gate: 1 of 1" in actions[1].reason
    assert not any(isinstance(a, ApplyGateway) for a in actions)


def test_failures_within_max_fail_percentage_let_the_rollout_go_on() -> None:
    lenient = rollout(gate=Gate(max_fail_percentage=50, deadline_s=60))
    assert run(lenient, targets([H, F], [P])) == [StartWave(1)]
    assert isinstance(run(lenient, targets([F, F, H], [P]))[-1], Halt)  # 67 % > 50 %


def test_a_wave_over_its_threshold_halts_without_waiting_for_the_rest() -> None:
    actions = run(rollout(), targets([F, A, P], [P]), {"w0g1": up(agent(last_seen_at=None))})
    assert [type(a) for a in actions] == [Halt]


def test_skipped_gateways_neither_fail_nor_block_a_wave() -> None:
    assert run(rollout(), targets([S, S], [P])) == [StartWave(1)]
    assert run(rollout(), targets([S, H], [P])) == [StartWave(1)]


def test_paused_records_verdicts_but_applies_and_advances_nothing() -> None:
    ts = targets([A, P], [P])
    actions = run(rollout(Status.PAUSED), ts, {"w0g0": up()}, now=T0 + 6)
    assert actions == [MarkGateway("w0g0", H, None)]


@pytest.mark.parametrize(
    "status", [Status.HALTED, Status.ABORTED, Status.COMPLETED, Status.ROLLED_BACK]
)
def test_a_stopped_rollout_does_nothing(status: Status) -> None:
    assert run(rollout(status), targets([A, P], [P]), {"w0g0": up()}) == []


def test_rolling_back_undoes_every_applied_gateway_in_any_wave_then_finishes() -> None:
    ts = targets([H, F], [A, P], [P])
    actions = run(rollout(Status.ROLLING_BACK, wave=1), ts)
    assert actions == [
        RollbackGateway("w0g0"),
        RollbackGateway("w0g1"),
        RollbackGateway("w1g0"),
    ]
    done = targets([TargetState.ROLLED_BACK, S], [P])
    assert run(rollout(Status.ROLLING_BACK), done) == [FinishRollback()]


def test_every_status_and_state_has_a_way_out_or_is_terminal() -> None:
    """No active rollout is stuck: whatever its targets, a decision either acts, or waits on
    an applied gateway (which the deadline decides)."""
    for status in ro.ACTIVE:
        for states in ([P], [A], [H], [F], [S], [H, P], [A, H]):
            r = rollout(status, waves=2)
            ts = targets(states, [P])
            actions = run(r, ts, {t.gateway_id: up(agent(last_seen_at=None)) for t in ts}, T0 + 61)
            waiting = status is Status.PAUSED
            assert actions or waiting, (status, states)
