"""Token usage of managed agents' sessions, read from the gateway and relayed to the hub.

The gateway counts each session's tokens from its transcript (`sessions.usage`), per UTC
day. A pass reads `sessions.list` (cheap: the session store only), picks the managed
agents' sessions that changed since they were last read, asks `sessions.usage` for
those alone (each answer scans one transcript), and sends the figures that changed as
one UsageReport. Figures are a day's whole count so far, so a lost, repeated or resent
report costs nothing: the hub keeps the highest figure per session and day.

When: every `interval_s` (jittered), and soon after a run of a managed agent ends
(several ends in a row make one pass). A session changed less than `settle_s` before it
was read is read again at the next pass: 2026.9 answers `sessions.usage` from a cache
for up to 30 s, so the read just after a run may still be the figure from before it.
Around midnight a session is read for yesterday too, until one read after midnight
has finished yesterday's count.

Memory is bounded: figures are kept for today and yesterday, for the sessions the last
listing showed. Everything here runs in one long-lived task off the link's path; a pass
that fails, or one session whose read fails, is logged and the next goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived, wait_until
from missioncontrol.text import displayable
from protos import link_pb2 as pb
from protos.contract import MAX_QUERY_SESSIONS, MAX_USAGE_SESSIONS, timestamp
from sidecar.gateway import GatewayClient, GatewayError, SessionInfo, SessionTokens

log = get_logger("sidecar.usage")

DAY_S = 86_400.0
MAX_INT64 = 2**63 - 1
MAX_KEY_CHARS = 512


@dataclass(frozen=True)
class UsagePolicy:
    interval_s: float = 60.0  # how often sessions.list is read
    jitter: float = 0.2  # +- this fraction of the interval
    after_run_s: float = 2.0  # how soon after a run ends (ends within it make one pass)
    settle_s: float = 45.0  # read again a session that changed this shortly before its read
    first_pass_s: float = 5.0  # the first pass, after the gateway had time to connect


def utc_day(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%d")


@dataclass
class _Track:
    """What the relay knows of one session: when it was last read, and what it saw."""

    agent_id: str
    read_at: float = 0.0
    updated_at_ms: int = 0
    figures: dict[str, SessionTokens] = field(default_factory=dict)  # day -> figures


class UsageRelay:
    def __init__(
        self,
        gateway: GatewayClient,
        send: Callable[[pb.SidecarMessage], None],
        managed: Callable[[], set[str]],
        connected: Callable[[], bool],
        *,
        policy: UsagePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gateway = gateway
        self._send = send
        self._managed = managed
        self._connected = connected
        self.policy = policy or UsagePolicy()
        self._clock = clock
        self._tracks: dict[str, _Track] = {}  # session key -> track
        # (session key, day) -> (gateway agent id, figures) not sent yet
        self._unsent: dict[tuple[str, str], tuple[str, SessionTokens]] = {}
        self._wakeup = asyncio.Event()
        self._due_at = clock() + self.policy.first_pass_s
        self.reports_sent = 0

    def start(self) -> asyncio.Task[None]:
        return start_long_lived(self._run(), name="sidecar-usage", log=log)

    def run_ended(self) -> None:
        """A run of a managed agent ended: read its tokens soon."""
        self._due_at = min(self._due_at, self._clock() + self.policy.after_run_s)
        self._wakeup.set()

    def link_changed(self, connected: bool) -> None:
        """A new stream: send every figure held again (the hub keeps the highest; what
        was queued on the stream that ended may never have arrived)."""
        if not connected:
            return
        for key, track in self._tracks.items():
            for day, figures in track.figures.items():
                self._unsent[(key, day)] = (track.agent_id, figures)
        if self._unsent:
            self.run_ended()

    async def _run(self) -> None:
        while True:
            await wait_until(self._wakeup, self._due_at, self._clock)
            self._wakeup.clear()
            if self._clock() < self._due_at:
                continue
            policy = self.policy
            spread = 1.0 + random.uniform(-policy.jitter, policy.jitter)
            self._due_at = self._clock() + policy.interval_s * spread
            try:
                await self.read_once()
            except GatewayError as exc:  # down or busy: the next pass tries again
                log.info("usage.pass.skipped", error=str(exc), code=exc.code)
            except Exception as exc:  # one bad pass must not end the relay
                log.exception("usage.pass.failed", error=repr(exc))

    async def read_once(self) -> int:
        """One pass: read what changed, send what differs. Returns the figures sent."""
        if self._gateway.info.reachable:
            await self._read_changed()
        return self._flush()

    async def _read_changed(self) -> None:
        page = await self._gateway.list_sessions(limit=MAX_QUERY_SESSIONS)
        managed = self._managed()
        now = self._clock()
        today = utc_day(now)
        today_start = now - now % DAY_S
        yesterday = utc_day(today_start - DAY_S)
        listed: set[str] = set()
        for session in page.sessions:
            if session.agent_id not in managed:
                continue
            listed.add(session.key)
            track = self._tracks.setdefault(session.key, _Track(session.agent_id))
            if not self._due(track, session):
                continue
            days = [today]
            if (
                track.read_at < today_start
                and session.updated_at_ms >= (today_start - DAY_S) * 1000
            ):
                days.insert(0, yesterday)  # finish yesterday's count once
            try:
                for day in days:
                    self._note(track, await self._gateway.session_tokens(session.key, day))
            except Exception as exc:  # this session's read; the others go on
                log.warning("usage.session.failed", session_key=session.key, error=repr(exc))
                continue
            track.read_at = now
            track.updated_at_ms = session.updated_at_ms
            track.figures = {d: f for d, f in track.figures.items() if d in (today, yesterday)}
        for key in list(self._tracks):
            if key not in listed:  # gone from the listing: nothing more to read of it
                del self._tracks[key]
        for key, day in list(self._unsent):
            if day not in (today, yesterday):  # the hub has had its chance at older days
                del self._unsent[(key, day)]

    def _due(self, track: _Track, session: SessionInfo) -> bool:
        if not track.read_at or session.has_active_run or not session.updated_at_ms:
            return True
        if session.updated_at_ms != track.updated_at_ms:
            return True
        return track.read_at - session.updated_at_ms / 1000 < self.policy.settle_s

    def _note(self, track: _Track, figures: SessionTokens | None) -> None:
        if figures is None or figures.total <= 0:
            return
        if track.figures.get(figures.day) == figures:
            return
        track.figures[figures.day] = figures
        self._unsent[(figures.key, figures.day)] = (track.agent_id, figures)

    def _flush(self) -> int:
        if not self._unsent or not self._connected():
            return 0
        observed_at = timestamp()
        batch = list(self._unsent.items())[:MAX_USAGE_SESSIONS]
        report = pb.UsageReport()
        for (key, _day), (agent_id, figures) in batch:
            report.sessions.append(
                pb.SessionUsage(
                    agent_id=displayable(agent_id, max_chars=128),
                    session_key=displayable(key, max_chars=MAX_KEY_CHARS),
                    session_id=displayable(figures.session_id, max_chars=MAX_KEY_CHARS),
                    day=figures.day,
                    total_tokens=min(figures.total, MAX_INT64),
                    input_tokens=min(figures.input, MAX_INT64),
                    output_tokens=min(figures.output, MAX_INT64),
                    cache_read_tokens=min(figures.cache_read, MAX_INT64),
                    cache_write_tokens=min(figures.cache_write, MAX_INT64),
                    observed_at=observed_at,
                )
            )
        self._send(pb.SidecarMessage(usage=report))
        for item, _held in batch:
            del self._unsent[item]
        self.reports_sent += 1
        log.info("usage.report.sent", sessions=len(batch), left=len(self._unsent))
        if self._unsent:  # more than one report holds: the rest soon
            self.run_ended()
        return len(batch)
