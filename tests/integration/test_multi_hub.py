"""Several hubs on one PostgreSQL behind one address: a sidecar that moves from hub A to
hub B is owned by B with a higher epoch, A's session closes, and every command (queued
through any hub) is applied once, across three hubs too; a superseded session whose
notice was lost delivers nothing; only the owner judges its gateway's agents, and a
stopped hub's gateways are adopted; live queries, reads and deletions reach the hub
that holds the stream.

The address in front is a small TCP relay the test steers: new connections go to the
hub it names, and a partition cuts the sidecar's side of the open connections while
the hub's side stays open and silent (the hub still believes in its stream)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.link.server import SidecarSession
from hub.store.ownership import OWNERSHIP, hub_stopped_in
from missioncontrol.netaddr import HostPort
from protos import link_pb2 as pb
from sidecar.app import Sidecar
from tests.integration.multi_hub_setup import hubs, record_applied
from tests.support import (
    JumpClock,
    RecordingGateway,
    api,
    fast_backoff,
    free_ports,
    sidecar_config,
    sidecar_connected,
    wait_for,
)

GW = "gw-moving"


class FrontAddress:
    """One address in front of the hubs (a TCP load balancer, for the test's purpose)."""

    def __init__(self, target: HostPort) -> None:
        self.target = target
        self._server: asyncio.Server | None = None
        self._open: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[Any]]] = []
        self._stranded: list[asyncio.StreamWriter] = []

    async def start(self) -> HostPort:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return HostPort("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        except OSError:  # nothing listens there: the sidecar's connection fails
            writer.transport.abort()
            return
        tasks = [
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        self._open.append((writer, up_writer, tasks))

    def partition(self) -> None:
        """Cut the sidecar's side of every open connection; leave the hub's open, silent."""
        for client, upstream, tasks in self._open:
            for task in tasks:
                task.cancel()
            client.transport.abort()
            self._stranded.append(upstream)
        self._open.clear()

    async def close(self) -> None:
        self.partition()
        for upstream in self._stranded:
            upstream.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.close()


def front_sidecar(tmp_path: Path, front: HostPort, gateway: RecordingGateway) -> Sidecar:
    config = sidecar_config(
        tmp_path / "sc", front, gateway_id=GW, workspace_root=tmp_path / "workspaces"
    )
    return Sidecar(config, gateway=gateway, link_backoff=fast_backoff())


async def queued_sequences(hub: Hub) -> list[int]:
    rows = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT sequence FROM commands WHERE gateway_id = ? ORDER BY sequence", (GW,)
        ).fetchall()
    )
    return [int(r[0]) for r in rows]


async def unacked(hub: Hub) -> int:
    row = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT COUNT(*) FROM commands WHERE gateway_id = ? AND acked_at IS NULL", (GW,)
        ).fetchone()
    )
    return int(row[0])


async def new_board(hub: Hub) -> str:
    status, board = await api(hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": GW})
    assert status == 201, board
    return str(board["id"])


async def new_agent(hub: Hub, board_id: str, name: str) -> dict[str, Any]:
    status, agent = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": name, "board_id": board_id, "identity_profile": {"role": "Researcher"}},
    )
    assert status == 201, agent
    return dict(agent)


async def owner(hub: Hub) -> tuple[str | None, int]:
    row = await hub.store.get_gateway(GW)
    assert row is not None
    return row.owner_hub, row.owner_epoch


async def test_a_sidecar_moving_to_another_hub_is_owned_there_and_each_command_applied_once(
    tmp_path: Path, shared_database: str
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        front = FrontAddress(a.addresses.link)  # type: ignore[union-attr]
        gateway = RecordingGateway()
        sidecar = front_sidecar(tmp_path, await front.start(), gateway)
        applied = record_applied(sidecar)
        await sidecar.start()
        try:
            old = await wait_for(lambda: _session(a), what="the sidecar's stream on hub A")
            owner_a, epoch_a = await owner(a)
            assert owner_a == a.store.hub_id and old.epoch == epoch_a
            board = await new_board(a)
            await new_agent(a, board, "Before The Move")
            await wait_for(lambda: _all_applied(a, applied), what="A's commands applied")

            front.target = b.addresses.link  # type: ignore[union-attr]
            front.partition()
            # Queued on A while the sidecar is between hubs: A still holds its stream.
            await new_agent(a, board, "During The Move")
            await wait_for(lambda: _session(b), what="the sidecar's stream on hub B")
            assert await owner(b) == (b.store.hub_id, epoch_a + 1)
            await wait_for(lambda: a.registry.get(GW) is None, what="A's session closed")
            assert old.superseded and old.closed
            # Queued on A after the move: A tells B (NOTIFY), B sends it.
            await new_agent(a, board, "After The Move")
            await wait_for(lambda: _all_applied(a, applied), what="every command applied")
            await wait_for(lambda: _none_unacked(b), what="every command acknowledged")
            sequences = await queued_sequences(a)
            assert sorted(set(applied)) == sequences
            assert len(applied) == len(set(applied)), applied  # none applied twice
            assert gateway.count("ensure_agent") == 3
            row = await b.store.get_gateway(GW)
            assert row is not None and row.connected  # A's session's end is not recorded
        finally:
            await sidecar.stop()
            await front.close()


async def test_a_superseded_session_whose_notice_was_lost_delivers_nothing(
    tmp_path: Path, shared_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        front = FrontAddress(a.addresses.link)  # type: ignore[union-attr]
        gateway = RecordingGateway()
        sidecar = front_sidecar(tmp_path, await front.start(), gateway)
        applied = record_applied(sidecar)
        await sidecar.start()
        try:
            old = await wait_for(lambda: _session(a), what="the sidecar's stream on hub A")
            board = await new_board(a)
            await new_agent(a, board, "Before")
            await wait_for(lambda: _all_applied(a, applied), what="A's commands applied")
            before = max(await queued_sequences(a))
            sent_by_a: list[int] = []
            put = old.outgoing.put

            async def recording(item: object) -> None:
                if isinstance(item, pb.HubMessage) and item.HasField("command"):
                    sent_by_a.append(item.command.sequence)
                await put(item)

            old.outgoing.put = recording  # type: ignore[method-assign]
            # A is partitioned from B's news: the ownership notice never reaches it.
            monkeypatch.setitem(a.db._every_hub, OWNERSHIP, [])

            front.target = b.addresses.link  # type: ignore[union-attr]
            front.partition()
            await wait_for(lambda: _session(b), what="the sidecar's stream on hub B")
            assert a.registry.get(GW) is old and not old.closed  # A heard nothing
            # A command queued on A wakes A's pump, whose read finds A no longer owns.
            await new_agent(a, board, "After")
            await wait_for(lambda: a.registry.get(GW) is None, what="A's session closed")
            assert old.superseded
            assert [s for s in sent_by_a if s > before] == []
            await wait_for(lambda: _all_applied(a, applied), what="B delivered the rest")
            assert len(applied) == len(set(applied)), applied
        finally:
            await sidecar.stop()
            await front.close()


async def test_only_the_owner_judges_its_gateways_agents(
    tmp_path: Path, shared_database: str
) -> None:
    clocks = [JumpClock(), JumpClock()]
    async with hubs(tmp_path, shared_database, 2, clocks) as (a, b):
        gateway = RecordingGateway()
        gateway.runs_end = False  # the wake's run never answers: the deadline decides
        sidecar = front_sidecar(tmp_path, b.addresses.link, gateway)  # type: ignore[arg-type]
        await sidecar.start()
        try:
            await wait_for(lambda: _session(b), what="the sidecar's stream on hub B")
            agent = await new_agent(b, await new_board(b), "Waits For Check-in")
            row = await wait_for(
                lambda: _agent_row(b, agent["id"], "checkin_deadline_at"), what="wake delivered"
            )
            deadline, generation = row["checkin_deadline_at"], row["lifecycle_generation"]
            # Hub A holds no stream for the gateway: past the deadline it must not judge.
            clocks[0].advance(3600)
            a.reconciler.schedule.set(agent["id"], deadline, generation)
            assert await a.reconciler.reconcile_due() == 1
            after_a = await _agent_row(b, agent["id"], "checkin_deadline_at")
            assert after_a is not None and _verdict(after_a) == _verdict(row)
            # The owner, past the same deadline, does judge.
            clocks[1].advance(3600)
            assert await b.reconciler.reconcile_due() == 1
            after_b = await _agent_row(b, agent["id"], "id")
            assert after_b is not None and _verdict(after_b) != _verdict(row)
            assert after_b["checkin_deadline_at"] != deadline
        finally:
            await sidecar.stop()


async def _session(hub: Hub) -> SidecarSession | None:
    if await sidecar_connected(hub, GW):
        return hub.registry.get(GW)
    return None


async def _all_applied(hub: Hub, applied: list[int]) -> bool:
    sequences = await queued_sequences(hub)
    return bool(sequences) and set(sequences) <= set(applied)


async def _none_unacked(hub: Hub) -> bool:
    return await unacked(hub) == 0


async def _agent_row(hub: Hub, agent_id: str, needed: str) -> dict[str, Any] | None:
    row = await hub.db.read(
        lambda conn: conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
    )
    values = dict(row) if row else None
    return values if values and values[needed] is not None else None


def _verdict(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a deadline's verdict moves on an agent's row."""
    fields = ("status", "phase", "wake_attempts", "checkin_deadline_at", "lifecycle_generation")
    return tuple(row[f] for f in fields)


async def test_a_live_query_asked_of_a_hub_without_the_stream_is_answered_by_the_owner(
    tmp_path: Path, shared_database: str
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        gateway = RecordingGateway()
        sidecar = front_sidecar(tmp_path, b.addresses.link, gateway)  # type: ignore[arg-type]
        await sidecar.start()
        try:
            await wait_for(lambda: _session(b), what="the sidecar's stream on hub B")
            await new_agent(b, await new_board(b), "Answers Live")
            await wait_for(lambda: gateway.count("wake") == 1, what="the agent woken")
            assert a.registry.get(GW) is None
            status, listed = await api(a, "GET", f"/api/v1/gateways/{GW}")
            assert status == 200 and listed["connected"], listed  # connected to B
            status, read = await api(a, "GET", f"/api/v1/gateway/status?gateway_id={GW}")
            assert status == 200, read
            assert read["error"] is None and read["connected"] and read["live_read"]
            assert (read["pid"], read["sessions_count"]) == (4242, 1)
            status, sessions = await api(a, "GET", f"/api/v1/gateway/sessions?gateway_id={GW}")
            assert status == 200, sessions
            assert [s["key"] for s in sessions["sessions"]] == [s["key"] for s in read["sessions"]]
        finally:
            await sidecar.stop()
        await wait_for(lambda: b.registry.get(GW) is None, what="B's session closed")
        await wait_for(lambda: _disconnected(a), what="the disconnect recorded")
        status, read = await api(a, "GET", f"/api/v1/gateway/status?gateway_id={GW}")
        assert status == 200 and read["error_code"] == "sidecar_disconnected", read
        status, listed = await api(a, "GET", f"/api/v1/gateways/{GW}")
        assert status == 200 and not listed["connected"], listed


async def _disconnected(hub: Hub) -> bool:
    row = await hub.store.get_gateway(GW)
    return row is not None and not row.connected


async def test_the_gateways_of_a_stopped_hub_are_adopted_and_their_deadlines_judged(
    tmp_path: Path, shared_database: str
) -> None:
    clocks = [JumpClock(), JumpClock()]
    async with hubs(tmp_path, shared_database, 2, clocks) as (a, b):
        front = FrontAddress(b.addresses.link)  # type: ignore[union-attr]
        gateway = RecordingGateway()
        gateway.runs_end = False  # the wake's run never answers: the deadline decides
        sidecar = front_sidecar(tmp_path, await front.start(), gateway)
        await sidecar.start()
        try:
            old = await wait_for(lambda: _session(b), what="the sidecar's stream on hub B")
            agent = await new_agent(b, await new_board(b), "Outlives Its Hub")
            await wait_for(
                lambda: _agent_row(b, agent["id"], "checkin_deadline_at"), what="wake delivered"
            )
            # B is cut off with the stream it holds; the sidecar reaches no hub.
            front.target = HostPort("127.0.0.1", free_ports(1)[0])
            front.partition()
            _, epoch_b = await owner(a)
            await a.reconciler.keep_ownership()
            assert await owner(a) == (b.store.hub_id, epoch_b)  # B is alive: not adopted

            now = time.time()
            await a.db.write(lambda conn: hub_stopped_in(conn, b.store.hub_id, now))  # B "died"
            await a.reconciler.keep_ownership()
            assert await owner(a) == (a.store.hub_id, epoch_b + 1)
            await wait_for(lambda: old.closed, what="B's stale session superseded")
            assert old.superseded
            row = await _agent_row(a, agent["id"], "checkin_deadline_at")
            assert row is not None  # no disconnect was stepped by the superseded B
            # Past the deadline, the adopter finds it on the row (it never scheduled it).
            clocks[0].advance(3600)
            assert a.reconciler.schedule.get(agent["id"]) is None
            before = len(await a.store.events(GW))
            scheduled = a.reconciler.schedule.set
            taken_up: list[tuple[str, float | None]] = []

            def recording(agent_id: str, at: float | None, generation: int) -> None:
                taken_up.append((agent_id, at))
                scheduled(agent_id, at, generation)

            a.reconciler.schedule.set = recording  # type: ignore[method-assign]
            await a.reconciler.keep_ownership()
            assert (agent["id"], row["checkin_deadline_at"]) in taken_up

            async def judged() -> list[dict[str, Any]]:
                events = (await a.store.events(GW))[before:]
                return [e for e in events if e["agent_id"] == agent["id"]]

            verdicts = await wait_for(judged, what="the adopter's verdict on the deadline")
            assert verdicts[0]["kind"].startswith("lifecycle."), verdicts
        finally:
            await sidecar.stop()
            await front.close()


async def test_a_gateway_deleted_through_one_hub_loses_its_stream_on_another(
    tmp_path: Path, shared_database: str
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        sidecar = front_sidecar(tmp_path, b.addresses.link, RecordingGateway())  # type: ignore[arg-type]
        await sidecar.start()
        try:
            session = await wait_for(lambda: _session(b), what="the sidecar's stream on hub B")
            status, body = await api(a, "DELETE", f"/api/v1/gateways/{GW}")
            assert status in (200, 204), body
            await wait_for(lambda: session.closed, what="B's session for the deleted gateway")
            assert session.end_code.name == "UNAUTHENTICATED"
            assert await b.store.get_gateway(GW) is None
        finally:
            await sidecar.stop()


async def test_a_sidecar_moving_across_three_hubs_applies_every_command_once(
    tmp_path: Path, shared_database: str
) -> None:
    async with hubs(tmp_path, shared_database, 3) as three:
        front = FrontAddress(three[0].addresses.link)  # type: ignore[union-attr]
        gateway = RecordingGateway()
        sidecar = front_sidecar(tmp_path, await front.start(), gateway)
        applied = record_applied(sidecar)
        await sidecar.start()
        try:
            await wait_for(lambda: _session(three[0]), what="the sidecar's stream on hub 0")
            board = await new_board(three[0])
            epochs = [(await owner(three[0]))[1]]
            for move, (here, there) in enumerate([(0, 1), (1, 2), (2, 0)]):
                # Queued through every hub, the one losing the stream included.
                for index, hub in enumerate(three):
                    await new_agent(hub, board, f"Move {move} Hub {index}")
                old = three[here].registry.get(GW)
                front.target = three[there].addresses.link  # type: ignore[union-attr]
                front.partition()
                await wait_for(lambda t=three[there]: _session(t), what=f"the stream on {there}")
                hub_id, epoch = await owner(three[0])
                assert hub_id == three[there].store.hub_id and epoch > epochs[-1]
                epochs.append(epoch)
                await wait_for(lambda h=three[here]: h.registry.get(GW) is None, what="closed")
                assert old is not None and old.superseded
            await wait_for(lambda: _all_applied(three[0], applied), what="every command applied")
            assert len(applied) == len(set(applied)), applied
            await wait_for(lambda: _none_unacked(three[0]), what="every command acknowledged")
            assert gateway.count("ensure_agent") == 9
        finally:
            await sidecar.stop()
            await front.close()
