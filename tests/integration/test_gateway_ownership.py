"""Gateway ownership's epoch on each engine: who takes it, what an older epoch may still
write (nothing), and the adoption of gateways whose owner stopped."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hub.store.database import Connection, Database
from hub.store.gateways import GatewayStore
from hub.store.ownership import (
    OWNERSHIP,
    OwnerChange,
    Superseded,
    adopt_orphans_in,
    check_owner_in,
    hold_ownership_in,
    hub_alive_in,
    hub_started_in,
    hub_stopped_in,
    owned_in,
    take_ownership_in,
)
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos.contract import LINK_PROTOCOL
from tests.support import running_hub

OpenDatabase = Callable[..., Database]


def hello(gateway_id: str) -> pb.Hello:
    return pb.Hello(
        gateway_id=gateway_id,
        sidecar_version=VERSION,
        link_protocol=LINK_PROTOCOL,
        workspace_root="/srv/ws",
    )


async def test_each_hello_takes_the_gateway_with_the_next_epoch_and_says_so(
    open_database: OpenDatabase,
) -> None:
    db = open_database(commit_interval_s=0.01)
    heard: list[str] = []
    db.listen(OWNERSHIP, heard.append)
    a, b = GatewayStore(db), GatewayStore(db)  # two hub processes' stores
    try:
        first = await a.record_hello(hello("gw-1"), auto_register=True)
        second = await b.record_hello(hello("gw-1"), auto_register=True)
        third = await a.record_hello(hello("gw-1"), auto_register=True)
        assert (first.epoch, second.epoch, third.epoch) == (1, 2, 3)
        row = await a.get_gateway("gw-1")
        assert row is not None and (row.owner_hub, row.owner_epoch) == (a.hub_id, 3)
        assert [OwnerChange.parse(p) for p in heard] == [
            OwnerChange("gw-1", 1, a.hub_id),
            OwnerChange("gw-1", 2, b.hub_id),
            OwnerChange("gw-1", 3, a.hub_id),
        ]
    finally:
        await db.close()


async def test_a_session_of_an_older_epoch_can_neither_read_the_outbox_nor_record_its_end(
    open_database: OpenDatabase,
) -> None:
    db = open_database(commit_interval_s=0.01)
    a, b = GatewayStore(db), GatewayStore(db)
    try:
        old = await a.record_hello(hello("gw-1"), auto_register=True)
        await a.enqueue_command(
            "gw-1", pb.Command(set_heartbeat=pb.SetHeartbeat(agent_id="mc-x", generation=1))
        )
        assert [c.sequence for c in await a.commands_after("gw-1", 0, epoch=old.epoch)] == [1]
        new = await b.record_hello(hello("gw-1"), auto_register=True)
        with pytest.raises(Superseded, match="epoch 2"):
            await a.commands_after("gw-1", 0, epoch=old.epoch)
        assert [c.sequence for c in await b.commands_after("gw-1", 0, epoch=new.epoch)] == [1]
        # The old session's end is not recorded: the gateway is still connected (to b).
        recorded = await a.record_disconnect(
            "gw-1", "stream closed", connected_since=0.0, epoch=old.epoch
        )
        assert recorded is False
        row = await a.get_gateway("gw-1")
        assert row is not None and row.connected
        assert await b.record_disconnect(
            "gw-1", "stream closed", connected_since=time.time(), epoch=new.epoch
        )
        row = await b.get_gateway("gw-1")
        assert row is not None and not row.connected
    finally:
        await db.close()


async def test_the_owner_check_names_the_newer_owner_and_passes_the_current_one(
    open_database: OpenDatabase,
) -> None:
    db = open_database(commit_interval_s=0.01)
    store = GatewayStore(db)
    try:
        await store.record_hello(hello("gw-1"), auto_register=True)
        await store.record_hello(hello("gw-2"), auto_register=True)

        def checks(conn: Connection) -> set[str]:
            epoch = take_ownership_in(conn, "gw-1", "hub-b")
            check_owner_in(conn, "gw-1", "hub-b", epoch)
            with pytest.raises(Superseded, match="owned by hub-b"):
                check_owner_in(conn, "gw-1", store.hub_id, epoch - 1)
            with pytest.raises(Superseded):
                check_owner_in(conn, "gw-1", store.hub_id, epoch)  # right epoch, wrong hub
            hold_ownership_in(conn, "gw-1", "hub-b", epoch)  # a write's check: locks the row
            with pytest.raises(Superseded, match="owned by hub-b"):
                hold_ownership_in(conn, "gw-1", "hub-b", epoch - 1)
            return owned_in(conn, ["gw-1", "gw-2"], store.hub_id)

        assert await db.write(checks) == {"gw-2"}
    finally:
        await db.close()


async def test_the_gateways_of_a_stopped_or_silent_hub_are_adopted_once(
    open_database: OpenDatabase,
) -> None:
    db = open_database(commit_interval_s=0.01)
    store = GatewayStore(db)
    try:
        for gateway_id in ("gw-live", "gw-stopped", "gw-silent", "gw-never"):
            await store.create_gateway(gateway_id, gateway_id)
        now = time.time()

        def setup(conn: Connection) -> None:
            hub_started_in(conn, "hub-live", now)
            hub_started_in(conn, "hub-stopped", now)
            hub_stopped_in(conn, "hub-stopped", now)
            hub_started_in(conn, "hub-silent", now - 3600)
            take_ownership_in(conn, "gw-live", "hub-live")
            take_ownership_in(conn, "gw-stopped", "hub-stopped")
            take_ownership_in(conn, "gw-silent", "hub-silent")
            conn.execute("UPDATE gateways SET connected = 1 WHERE id = 'gw-silent'")

        await db.write(setup)

        def adopt(hub_id: str) -> Callable[[Connection], list[str]]:
            def op(conn: Connection) -> list[str]:
                hub_started_in(conn, hub_id, now)
                hub_alive_in(conn, hub_id, now)
                return sorted(adopt_orphans_in(conn, hub_id, now))

            return op

        assert await db.write(adopt("hub-c")) == ["gw-never", "gw-silent", "gw-stopped"]
        assert await db.write(adopt("hub-d")) == []  # hub-c is alive: nothing is orphaned
        silent = await store.get_gateway("gw-silent")
        assert silent is not None and silent.owner_hub == "hub-c" and not silent.connected
        assert silent.owner_epoch == 2 and silent.disconnected_at is not None
        live = await store.get_gateway("gw-live")
        assert live is not None and live.owner_hub == "hub-live"
    finally:
        await db.close()


async def test_acks_from_a_superseded_session_write_nothing(tmp_path: Path, database: str) -> None:
    """The reconciler's ack write checks the session's epoch under the row's lock: a
    result arriving on the old stream after a newer Hello records nothing."""
    async with running_hub(tmp_path / "hub", database) as hub:
        old = await hub.reconciler.record_hello(hello("gw-1"), auto_register=True)
        sequence = await hub.store.enqueue_command(
            "gw-1", pb.Command(set_heartbeat=pb.SetHeartbeat(agent_id="mc-x", generation=1))
        )
        await hub.reconciler.record_hello(hello("gw-1"), auto_register=True)  # a new stream
        result = pb.CommandResult(sequence=sequence, outcome=pb.CommandResult.APPLIED)
        with pytest.raises(Superseded):
            await hub.reconciler.command_results("gw-1", [result], epoch=old.epoch)
        status = await hub.store.command_status("gw-1", sequence)
        assert status is not None and status["acked_at"] is None
        await hub.reconciler.command_results("gw-1", [result], epoch=old.epoch + 1)
        status = await hub.store.command_status("gw-1", sequence)
        assert status is not None and status["outcome"] == "APPLIED"
