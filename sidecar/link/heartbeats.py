"""Relaying agent heartbeats to the hub: coalesced, batched, acknowledged, durable.

Agents may heartbeat as often as they like; the hub only needs the latest beat per
agent. The relay keeps exactly that (one entry per agent, so memory is bounded by
the number of agents), and sends it as one HeartbeatBatch at most once per flush
interval (the hub's Welcome says how often).

A batch stays "in flight" until the hub's HeartbeatAck for its id: the hub acks
only once the beats are committed. Up to MAX_IN_FLIGHT batches are in flight at once,
so a beat waits for the next flush, not for the ack of the batch before it (the hub
commits about once a second: with one batch in flight a beat could wait for two
commits). An agent has at most MAX_IN_FLIGHT + 1 entries. On a disconnect, or when an
ack is overdue, the in-flight beats go back to pending unless a newer beat replaced
them, and are sent again after the next Welcome.

While the hub is unreachable, pending beats are also written to local state, at
most once per `persist_interval_s` and never per heartbeat, so a sidecar restart
does not lose them; they are sent with their original observed_at. Stopping the
relay writes every unacknowledged beat, even if one of its loops had died.

Both loops survive one bad item: a beat the link cannot carry (text that is not valid
UTF-8 can only get here past the agent API's checks) is dropped with an error line,
never allowed to stop the beats of every other agent on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived
from missioncontrol.text import is_encodable
from protos import link_pb2 as pb
from protos.contract import HEARTBEAT_FLUSH_MS, timestamp
from sidecar.link.client import LinkStatus
from sidecar.state import LocalState, PendingBeat

log = get_logger("sidecar.heartbeats")

DEFAULT_FLUSH_INTERVAL_S = HEARTBEAT_FLUSH_MS / 1000
# A hub flushing faster than this would turn the relay into per-beat traffic.
MIN_FLUSH_INTERVAL_S = 0.05
PERSIST_INTERVAL_S = 1.0
# The hub acks after its group commit (<= about a second); far beyond that the batch
# (or its ack) was lost on a stream that still looks alive.
ACK_TIMEOUT_S = 15.0
# Batches awaiting their ack at once: a flush interval of 0.1 s and commits about once a
# second keep about ten in flight on a busy stream; past this bound beats coalesce.
MAX_IN_FLIGHT = 16


# The part of the link the relay needs: queue one report for the hub (LinkClient.send).
SendReport = Callable[[pb.SidecarMessage], None]


@dataclass
class RelayStats:
    received: int = 0
    runtime: int = 0  # runs the gateway finished, taken as check-ins
    batches_sent: int = 0
    beats_sent: int = 0
    batches_acked: int = 0
    resent: int = 0  # beats put back to pending after a disconnect or an overdue ack
    persisted_writes: int = 0


@dataclass
class _InFlight:
    batch_id: int
    beats: dict[str, PendingBeat]
    sent_at: float  # monotonic


class HeartbeatRelay:
    def __init__(
        self,
        send: SendReport,
        state: LocalState,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        persist_interval_s: float = PERSIST_INTERVAL_S,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.send = send
        self.state = state
        self.flush_interval_s = flush_interval_s
        self.persist_interval_s = persist_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.clock = clock
        self.stats = RelayStats()
        self._pending: dict[str, PendingBeat] = {}
        self._in_flight: dict[int, _InFlight] = {}  # by batch id, oldest first
        # What local state holds: agent_id -> observed_at of its persisted beat.
        self._persisted: dict[str, float] = {}
        self._connected = False
        self._unsaved = False
        self._next_batch_id = 1
        self._last_sent_at = -1e9  # monotonic
        self._last_persist_at = -1e9  # monotonic
        self._send_wakeup = asyncio.Event()
        self._persist_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --------------------------------------------------------------- intake

    def record(self, agent_id: str, status: str = "", current_task_id: str = "") -> PendingBeat:
        """Take one heartbeat, received now; it replaces any pending beat of the agent."""
        beat = PendingBeat(agent_id, self.clock(), status, current_task_id)
        self._pending[agent_id] = beat
        self.stats.received += 1
        self._unsaved = True
        self._send_wakeup.set()
        self._persist_wakeup.set()
        return beat

    def record_runtime(self, agent_id: str) -> PendingBeat:
        """Take a run the gateway finished for the agent, now, as its check-in. A beat of
        the agent's own that is still pending keeps its words (status, task) and its
        source; only its time moves."""
        pending = self._pending.get(agent_id)
        if pending is not None and not pending.runtime:
            beat = dataclasses.replace(pending, observed_at=max(pending.observed_at, self.clock()))
        else:
            beat = PendingBeat(agent_id, self.clock(), runtime=True)
        self._pending[agent_id] = beat
        self.stats.runtime += 1
        self._unsaved = True
        self._send_wakeup.set()
        self._persist_wakeup.set()
        return beat

    def unacked(self) -> dict[str, PendingBeat]:
        """Latest not-yet-acknowledged beat per agent (pending wins over in flight, a
        later batch over an earlier one)."""
        beats: dict[str, PendingBeat] = {}
        for flight in self._in_flight.values():
            beats.update(flight.beats)
        beats.update(self._pending)
        return beats

    # ---------------------------------------------------------- link events

    def on_welcome(self, welcome: pb.Welcome) -> None:
        if welcome.heartbeat_flush_ms:
            self.flush_interval_s = max(MIN_FLUSH_INTERVAL_S, welcome.heartbeat_flush_ms / 1000)

    def on_link_status(self, status: LinkStatus) -> None:
        self._connected = status.connected
        if not status.connected:
            self._requeue("disconnected")
        self._send_wakeup.set()
        self._persist_wakeup.set()

    def on_ack(self, batch_id: int) -> None:
        flight = self._in_flight.pop(batch_id, None)
        if flight is None:
            # An ack for a batch already given up on: its beats were requeued, and are
            # sent again; the hub keeps the newest observed_at, so a repeat is harmless.
            log.debug("heartbeat.ack.stale", batch_id=batch_id)
            return
        self.stats.batches_acked += 1
        acked = [
            b
            for b in flight.beats.values()
            if b.agent_id in self._persisted and self._persisted[b.agent_id] <= b.observed_at
        ]
        if acked:
            try:
                self.state.drop_pending_beats(acked)
            except sqlite3.Error as exc:
                # Harmless: the rows are re-sent after a restart and the hub keeps the newest.
                log.warning("heartbeat.pending.drop_failed", agents=len(acked), error=str(exc))
            else:
                for beat in acked:
                    del self._persisted[beat.agent_id]
        self._send_wakeup.set()

    # ---------------------------------------------------------------- tasks

    async def start(self) -> None:
        """Load beats a previous run could not deliver, then start relaying."""
        for beat in self.state.pending_beats():
            self._pending[beat.agent_id] = beat
            self._persisted[beat.agent_id] = beat.observed_at
        if self._pending:
            log.info("heartbeat.pending.loaded", agents=len(self._pending))
        self._tasks = [
            start_long_lived(self._send_loop(), name="sidecar-heartbeat-send", log=log),
            start_long_lived(self._persist_loop(), name="sidecar-heartbeat-persist", log=log),
        ]

    async def stop(self) -> None:
        """Stop relaying and write every unacknowledged beat to local state (whatever
        state the loops are in: a dead loop leaves its beats in memory, and they are
        written here)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._persist(self.unacked().values())

    async def _send_loop(self) -> None:
        while True:
            try:
                await self._wait_sendable()
                # Pace: at most one batch per flush interval, whatever the beat rate.
                delay = self._last_sent_at + self.flush_interval_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._sendable():
                    self._send_batch()
            except Exception as exc:
                # Whatever it was, the beats go back to pending and are sent again.
                log.exception("heartbeat.send.failed", error=repr(exc))
                self._requeue("send_failed")
                await asyncio.sleep(self.flush_interval_s)

    async def _wait_sendable(self) -> None:
        while not self._sendable():
            self._send_wakeup.clear()
            timeout = None
            if self._in_flight:
                oldest = next(iter(self._in_flight.values()))
                timeout = oldest.sent_at + self.ack_timeout_s - time.monotonic()
                if timeout <= 0:
                    self._requeue("ack_timeout")
                    continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the event being set, and stop() would then hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._send_wakeup.wait()

    def _sendable(self) -> bool:
        return self._connected and len(self._in_flight) < MAX_IN_FLIGHT and bool(self._pending)

    def _send_batch(self) -> None:
        beats, self._pending = self._pending, {}
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        self._last_sent_at = time.monotonic()
        batch = pb.HeartbeatBatch(batch_id=batch_id)
        for beat in list(beats.values()):
            try:
                item = pb.AgentHeartbeat(
                    agent_id=beat.agent_id,
                    observed_at=timestamp(beat.observed_at),
                    status=beat.status,
                    current_task_id=beat.current_task_id,
                    source=pb.BEAT_SOURCE_RUNTIME if beat.runtime else pb.BEAT_SOURCE_AGENT_API,
                )
            except (ValueError, TypeError) as exc:  # text the link cannot carry
                del beats[beat.agent_id]
                self._drop(beat, repr(exc))
                continue
            batch.beats.append(item)
        if not batch.beats:
            return
        self._in_flight[batch_id] = _InFlight(batch_id, beats, self._last_sent_at)
        self.send(pb.SidecarMessage(heartbeats=batch))
        self.stats.batches_sent += 1
        self.stats.beats_sent += len(beats)
        log.debug("heartbeat.batch.sent", batch_id=batch_id, beats=len(beats))

    def _requeue(self, why: str) -> None:
        flights, self._in_flight = self._in_flight, {}
        if not flights:
            return
        back: dict[str, PendingBeat] = {}
        for flight in flights.values():  # oldest first: a later batch's beat wins
            back.update(flight.beats)
        resent = 0
        for agent_id, beat in back.items():
            if agent_id not in self._pending:  # a newer beat replaced it: that one goes
                self._pending[agent_id] = beat
                resent += 1
        self.stats.resent += resent
        self._unsaved = True
        log.info(
            "heartbeat.batch.requeued",
            batch_ids=list(flights),
            beats=resent,
            reason=why,
        )

    async def _persist_loop(self) -> None:
        while True:
            while not (self._unsaved and not self._connected):
                self._persist_wakeup.clear()
                await self._persist_wakeup.wait()
            # Bounded disk work while the hub is away: one transaction per interval.
            delay = self._last_persist_at + self.persist_interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._unsaved and not self._connected:
                self._unsaved = False
                try:
                    self._persist(self.unacked().values())
                except Exception as exc:
                    # Keep relaying from memory; try again next interval.
                    self._unsaved = True
                    self._last_persist_at = time.monotonic()
                    log.error("heartbeat.pending.persist_failed", error=repr(exc))

    def _drop(self, beat: PendingBeat, why: str) -> None:
        """Forget a beat that can be neither sent nor stored (the agent's next one goes)."""
        self._pending.pop(beat.agent_id, None)
        for flight in self._in_flight.values():
            flight.beats.pop(beat.agent_id, None)
        log.error("heartbeat.beat.dropped", agent_id=beat.agent_id, error=why)

    def _persist(self, beats: Iterable[PendingBeat]) -> None:
        changed = []
        for beat in beats:
            if not (is_encodable(beat.status) and is_encodable(beat.current_task_id)):
                self._drop(beat, "text is not valid UTF-8")
            elif self._persisted.get(beat.agent_id) != beat.observed_at:
                changed.append(beat)
        self._last_persist_at = time.monotonic()
        if not changed:
            return
        self.state.save_pending_beats(changed)
        for beat in changed:
            self._persisted[beat.agent_id] = beat.observed_at
        self.stats.persisted_writes += 1
        log.info("heartbeat.pending.persisted", agents=len(changed), held=len(self._persisted))
