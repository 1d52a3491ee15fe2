"""The relay keeps several batches in flight: a beat waits for the next flush, not for
the ack of the batch before it; the bound holds, acks may come in any order, and a
disconnect puts back the newest unacknowledged beat of each agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protos import link_pb2 as pb
from sidecar.link.client import LinkStatus
from sidecar.link.heartbeats import MAX_IN_FLIGHT, HeartbeatRelay
from sidecar.state import LocalState
from tests.support import wait_for

FLUSH_S = 0.02


class Sent(list[pb.HeartbeatBatch]):
    def __call__(self, message: pb.SidecarMessage) -> None:
        self.append(message.heartbeats)

    def agents(self, index: int) -> dict[str, float]:
        return {b.agent_id: b.observed_at.ToDatetime().timestamp() for b in self[index].beats}


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[tuple[HeartbeatRelay, Sent]]:
    sent = Sent()
    relay = HeartbeatRelay(sent, LocalState(tmp_path / "state.sqlite3"), flush_interval_s=FLUSH_S)
    await relay.start()
    relay.on_link_status(LinkStatus(connected=True, since=time.time()))
    try:
        yield relay, sent
    finally:
        await relay.stop()


async def test_a_beat_goes_out_while_the_batch_before_it_awaits_its_ack(
    relay: tuple[HeartbeatRelay, Sent],
) -> None:
    relay_, sent = relay
    relay_.record("a")
    await wait_for(lambda: len(sent) == 1, what="first batch")
    relay_.record("b")  # no ack for the first yet
    await wait_for(lambda: len(sent) == 2, what="second batch, the first still unacked")
    assert [b.agent_id for b in sent[1].beats] == ["b"]
    assert relay_.stats.batches_acked == 0


async def test_no_more_than_the_bound_await_their_acks_and_beats_coalesce_past_it(
    relay: tuple[HeartbeatRelay, Sent],
) -> None:
    relay_, sent = relay
    for i in range(MAX_IN_FLIGHT):
        relay_.record(f"agent-{i}")
        await wait_for(lambda i=i: len(sent) == i + 1, what=f"batch {i + 1}")
    for _ in range(3):
        relay_.record("late")
        relay_.record("later")
    await asyncio.sleep(FLUSH_S * 5)
    assert len(sent) == MAX_IN_FLIGHT  # the bound: nothing more until an ack
    relay_.on_ack(sent[3].batch_id)  # any of them
    await wait_for(lambda: len(sent) == MAX_IN_FLIGHT + 1, what="one more after an ack")
    assert sorted(b.agent_id for b in sent[-1].beats) == ["late", "later"]


async def test_acks_in_any_order_clear_their_batches(relay: tuple[HeartbeatRelay, Sent]) -> None:
    relay_, sent = relay
    for count, name in enumerate(("a", "b", "c"), start=1):
        relay_.record(name)
        await wait_for(lambda count=count: len(sent) == count, what=f"batch of {name}")
    relay_.on_ack(sent[2].batch_id)
    relay_.on_ack(sent[0].batch_id)
    assert set(relay_.unacked()) == {"b"}
    relay_.on_ack(sent[0].batch_id)  # a repeat is stale, and harmless
    relay_.on_ack(sent[1].batch_id)
    assert relay_.unacked() == {}
    assert relay_.stats.batches_acked == 3


async def test_a_disconnect_puts_back_each_agents_newest_unacked_beat(
    relay: tuple[HeartbeatRelay, Sent],
) -> None:
    relay_, sent = relay
    first = relay_.record("a")
    await wait_for(lambda: len(sent) == 1, what="a's first beat sent")
    second = relay_.record("a", status="newer")
    relay_.record("b")
    await wait_for(lambda: len(sent) == 2, what="a's newer beat and b's sent")
    assert second.observed_at >= first.observed_at
    relay_.on_link_status(LinkStatus(connected=False, since=time.time()))
    back = relay_.unacked()
    assert set(back) == {"a", "b"}
    assert back["a"].status == "newer"  # the later batch's beat, not the first
    relay_.on_link_status(LinkStatus(connected=True, since=time.time()))
    await wait_for(lambda: len(sent) == 3, what="sent again after the reconnect")
    assert sorted(b.agent_id for b in sent[2].beats) == ["a", "b"]
    assert [b.status for b in sent[2].beats if b.agent_id == "a"] == ["newer"]
