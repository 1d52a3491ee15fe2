"""Heartbeat relay end to end: agent API -> coalescing relay -> real gRPC link -> hub SQLite,
across hub outages and sidecar restarts."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from hub.app import Hub
from protos import link_pb2 as pb
from sidecar.link.client import LinkStatus
from sidecar.link.heartbeats import HeartbeatRelay
from sidecar.state import LocalState, PendingBeat
from tests.integration.agent_setup import (
    GATEWAY,
    agent_env,
    all_commands_acked,
    last_seen,
    provision,
)
from tests.support import hub_config, make_sidecar, wait_for


def persisted_beats(state_db: Path) -> dict[str, float]:
    """What a crashed sidecar would find on disk: read with a separate connection."""
    with sqlite3.connect(state_db) as conn:
        rows = conn.execute("SELECT agent_id, observed_at FROM pending_beats").fetchall()
    return dict(rows)


async def seen_exactly(hub: Hub, expected: dict[str, float]) -> bool:
    seen = await last_seen(hub)
    return all(
        seen.get(agent) is not None and abs(seen[agent] - at) < 1e-6  # type: ignore[operator]
        for agent, at in expected.items()
    )


async def test_200_beats_from_50_agents_in_one_second_go_out_in_at_most_two_batches(
    hub: Hub, tmp_path: Path
) -> None:
    async with agent_env(tmp_path, hub, agents=50) as env:
        relay = env.sidecar.relay
        started = time.monotonic()
        results = await asyncio.gather(
            *(env.beat(agent, {"status": f"beat-{i}"}) for i in range(4) for agent in env.agents)
        )
        # However long the beats took to send, at most one batch goes out per flush interval.
        windows = 2 + int((time.monotonic() - started) / relay.flush_interval_s)
        assert [status for status, _, _ in results] == [202] * 200
        latest = {agent: beat.observed_at for agent, beat in relay.unacked().items()}
        assert len(latest) == 50
        await wait_for(lambda: seen_exactly(hub, latest), what="all 50 agents seen by the hub")
        await wait_for(lambda: not relay.unacked(), what="every batch acked")
        assert relay.stats.received == 200
        assert 1 <= relay.stats.batches_sent <= windows
        assert relay.stats.batches_acked == relay.stats.batches_sent
        # at most one beat per agent per batch
        assert relay.stats.beats_sent <= 50 * relay.stats.batches_sent
        assert relay.stats.persisted_writes == 0  # connected: no disk write at all


async def test_hub_outage_keeps_the_latest_beat_per_agent_and_delivers_its_observed_at(
    tmp_path: Path, free_port: Callable[[], int], database: str
) -> None:
    config = hub_config(
        tmp_path / "hub", link_port=free_port(), http_port=free_port(), database=database
    )
    hub = Hub(config)
    await hub.start()
    try:
        async with agent_env(tmp_path, hub, agents=3) as env:
            relay = env.sidecar.relay
            await hub.stop()
            await wait_for(lambda: not env.sidecar.link.status.connected, what="link down")
            for round_ in range(10):  # 30 beats while the hub is away
                for agent in env.agents:
                    assert (await env.beat(agent, {"status": f"r{round_}"}))[0] == 202
            latest = {agent: beat.observed_at for agent, beat in relay.unacked().items()}
            assert {b.status for b in relay.unacked().values()} == {"r9"}
            await wait_for(
                lambda: persisted_beats(env.sidecar.config.state_db) == latest,
                what="latest beats persisted while the hub is away",
            )
            assert relay.stats.persisted_writes <= 3  # not one write per heartbeat

            restarted_at = time.time()
            hub = Hub(config)  # same database, same ports
            await hub.start()
            env.hub = hub
            await wait_for(
                lambda: seen_exactly(hub, latest),
                timeout_s=15,
                what="latest beats delivered with their original observed_at",
            )
            assert all(at < restarted_at for at in latest.values())
            await wait_for(lambda: not relay.unacked(), what="acked")
            await wait_for(
                lambda: persisted_beats(env.sidecar.config.state_db) == {},
                what="persisted beats dropped once acked",
            )
    finally:
        await hub.stop()


async def test_sidecar_restart_while_hub_is_down_delivers_persisted_beats(
    tmp_path: Path, free_port: Callable[[], int], database: str
) -> None:
    config = hub_config(
        tmp_path / "hub", link_port=free_port(), http_port=free_port(), database=database
    )
    hub = Hub(config)
    await hub.start()
    try:
        tokens = await provision(hub, tmp_path / "workspaces", 2)
        first = make_sidecar(tmp_path, hub, gateway_id=GATEWAY)
        await first.start()
        try:
            await wait_for(lambda: all_commands_acked(hub), what="credentials applied")
            await hub.stop()
            await wait_for(lambda: not first.link.status.connected, what="link down")
            async with aiohttp.ClientSession() as http:
                for agent, raw in tokens.items():
                    url = f"{first.agent_api.url}/api/v1/agent/heartbeat"
                    headers = {"X-Agent-Token": raw}
                    async with http.post(url, json={"status": "s"}, headers=headers) as response:
                        assert response.status == 202, agent
            latest = {a: b.observed_at for a, b in first.relay.unacked().items()}
            # On disk while still running: a crash now would not lose them either.
            await wait_for(
                lambda: persisted_beats(first.config.state_db) == latest, what="persisted"
            )
        finally:
            await first.stop()

        second = make_sidecar(tmp_path, hub, gateway_id=GATEWAY)  # same state directory
        await second.start()
        try:
            assert {a: b.observed_at for a, b in second.relay.unacked().items()} == latest
            hub = Hub(config)
            await hub.start()
            await wait_for(
                lambda: seen_exactly(hub, latest),
                timeout_s=15,
                what="beats from before the restart delivered with their observed_at",
            )
            await wait_for(lambda: persisted_beats(second.config.state_db) == {}, what="dropped")
        finally:
            await second.stop()
    finally:
        await hub.stop()


async def test_unacked_batch_is_resent_after_reconnect_unless_a_newer_beat_replaced_it(
    tmp_path: Path, free_port: Callable[[], int], database: str
) -> None:
    config = hub_config(
        tmp_path / "hub", link_port=free_port(), http_port=free_port(), database=database
    )
    hub = Hub(config)
    await hub.start()
    try:
        async with agent_env(tmp_path, hub, agents=2) as env:
            relay = env.sidecar.relay
            replaced, kept = env.agents
            for agent in env.agents:  # a first, acknowledged round paces the next batch
                await env.beat(agent, {"status": "first"})
            await wait_for(lambda: not relay.unacked(), what="first round acked")
            on_ack = env.sidecar.link.on_heartbeat_ack
            env.sidecar.link.on_heartbeat_ack = lambda batch_id: None  # acks get lost
            sent = relay.stats.batches_sent
            await env.beat(replaced, {"status": "old"})
            await env.beat(kept, {"status": "only"})
            await wait_for(lambda: relay.stats.batches_sent == sent + 1, what="batch in flight")
            await env.beat(replaced, {"status": "new"})
            newer = relay.unacked()[replaced].observed_at
            kept_at = relay.unacked()[kept].observed_at

            await hub.stop()  # the stream breaks with the batch unacknowledged
            # Only now: an ack of the old stream could otherwise still land in between.
            env.sidecar.link.on_heartbeat_ack = on_ack
            hub = Hub(config)
            await hub.start()
            await wait_for(lambda: not relay.unacked(), timeout_s=15, what="resent and acked")
            assert relay.stats.resent == 1  # `kept` went again; `replaced` had a newer beat
            assert await seen_exactly(hub, {replaced: newer, kept: kept_at})
    finally:
        await hub.stop()


# ---------------------------------------------------------------- the relay alone


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[pb.HeartbeatBatch] = []

    def send(self, message: pb.SidecarMessage) -> None:
        self.sent.append(message.heartbeats)


@pytest.fixture
def local_state(tmp_path: Path) -> LocalState:
    state = LocalState(tmp_path / "state.sqlite3")
    yield state  # type: ignore[misc]
    state.close()


async def test_relay_honours_the_flush_interval_from_the_welcome(local_state: LocalState) -> None:
    link = FakeLink()
    relay = HeartbeatRelay(link.send, local_state)
    relay.on_welcome(pb.Welcome(heartbeat_flush_ms=200))
    relay.on_link_status(LinkStatus(connected=True, since=time.time()))
    await relay.start()
    try:
        relay.record("mc-a")
        await wait_for(lambda: len(link.sent) == 1, what="first batch")
        relay.on_ack(link.sent[0].batch_id)
        relay.record("mc-a", "later")
        sent_first_at = time.monotonic()
        await wait_for(lambda: len(link.sent) == 2, what="second batch")
        assert time.monotonic() - sent_first_at >= 0.15  # not before the 200 ms interval
        assert link.sent[1].batch_id != link.sent[0].batch_id
        assert [b.status for b in link.sent[1].beats] == ["later"]
    finally:
        await relay.stop()


async def test_relay_sends_nothing_while_disconnected_and_requeues_on_disconnect(
    local_state: LocalState,
) -> None:
    link = FakeLink()
    relay = HeartbeatRelay(link.send, local_state, persist_interval_s=0.05)
    relay.on_link_status(LinkStatus(connected=True, since=time.time()))
    await relay.start()
    try:
        relay.record("mc-a", "in-flight")
        await wait_for(lambda: len(link.sent) == 1, what="batch sent")
        relay.on_link_status(LinkStatus(connected=False, since=time.time(), last_error="x"))
        assert relay.unacked()["mc-a"].status == "in-flight"  # back to pending
        relay.on_ack(link.sent[0].batch_id)  # a late ack for a batch given up on: ignored
        assert "mc-a" in relay.unacked()
        await wait_for(lambda: local_state.pending_beats(), what="persisted while away")
        assert len(link.sent) == 1
        relay.on_link_status(LinkStatus(connected=True, since=time.time()))
        await wait_for(lambda: len(link.sent) == 2, what="resent after reconnect")
        relay.on_ack(link.sent[1].batch_id)
        assert relay.unacked() == {}
        assert local_state.pending_beats() == []
    finally:
        await relay.stop()


async def test_relay_stop_writes_unacked_beats_and_start_loads_them(
    local_state: LocalState,
) -> None:
    relay = HeartbeatRelay(FakeLink().send, local_state)
    await relay.start()
    beat = relay.record("mc-a", "s", "t-1")
    await relay.stop()
    assert local_state.pending_beats() == [beat]
    again = HeartbeatRelay(FakeLink().send, local_state)
    await again.start()
    try:
        assert again.unacked() == {"mc-a": PendingBeat("mc-a", beat.observed_at, "s", "t-1")}
    finally:
        await again.stop()
