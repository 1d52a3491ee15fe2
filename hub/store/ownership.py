"""Which hub owns each gateway, when several hubs share one database.

The hub whose session holds a gateway's stream owns the gateway: it delivers its
commands and judges its agents. Ownership is (owner hub, epoch) on the gateway's row. A
Hello accepted by any hub takes it with the epoch raised by one, in the Hello's own
transaction (the row's lock orders two hubs taking it at once), and leaves an OWNERSHIP
notice every hub hears: one still holding a session of an older epoch closes it. A
notice can be lost (a partitioned hub hears nothing), so the epoch is checked again
where it counts: after each read of the outbox, before its page is sent, and in the
write of each ack, under the gateway row's lock; a superseded session finds there that
it no longer owns the gateway, and ends.

Each hub process has its own id, fresh at every start. On PostgreSQL each hub says it
is alive at each presence sweep, every few seconds (`hubs`); a gateway whose owner
stopped saying so (a hub that crashed or stopped) is adopted by one live hub, so its
agents are still judged. On SQLite the hub is the only one: it judges every gateway
(`Database.shared` is off), and a Hello still takes the epoch, so a stream replaced by
a newer one is fenced the same way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from hub.store.database import Connection
from hub.store.errors import Refusal, StoreError, UnknownGateway

# Notice channel (every hub): a gateway's ownership moved. Payload: JSON
# {"gateway_id", "epoch", "hub_id"} of the new owner.
OWNERSHIP = "gateway_owner"
HUB_DEAD_AFTER_S = 30.0  # silent this long: the hub's gateways are adopted by a live one
HUBS_KEPT_S = 86_400.0  # a hub's row is deleted once it has been silent this long


class Superseded(StoreError):
    """A session's gateway is owned by a newer epoch (its stream moved to another hub,
    or to a newer stream on this one): the session must end without writing."""

    refusal = Refusal.CONFLICT


def new_hub_id() -> str:
    """A hub process's id, unique among every hub that ever shared the database."""
    return f"hub-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class OwnerChange:
    """An OWNERSHIP notice: `hub_id` owns `gateway_id` from `epoch` on."""

    gateway_id: str
    epoch: int
    hub_id: str

    def payload(self) -> str:
        return json.dumps(
            {"gateway_id": self.gateway_id, "epoch": self.epoch, "hub_id": self.hub_id}
        )

    @classmethod
    def parse(cls, payload: str) -> OwnerChange:
        fields = json.loads(payload)
        return cls(str(fields["gateway_id"]), int(fields["epoch"]), str(fields["hub_id"]))


def take_ownership_in(conn: Connection, gateway_id: str, hub_id: str) -> int:
    """Make `hub_id` the gateway's owner with the next epoch (inside the caller's
    transaction); return that epoch. The other hubs hear of it after the commit."""
    # One UPDATE: the row's lock orders hubs taking it at once, each gets its own epoch.
    row = conn.execute(
        "UPDATE gateways SET owner_hub = ?, owner_epoch = owner_epoch + 1 WHERE id = ? "
        "RETURNING owner_epoch",
        (hub_id, gateway_id),
    ).fetchone()
    if row is None:
        raise UnknownGateway(f"gateway {gateway_id} does not exist")
    epoch = int(row[0])
    conn.notify(OWNERSHIP, OwnerChange(gateway_id, epoch, hub_id).payload())
    return epoch


def check_owner_in(conn: Connection, gateway_id: str, hub_id: str, epoch: int) -> None:
    """Raise Superseded unless `hub_id` still owns the gateway at `epoch`."""
    row = conn.execute(
        "SELECT owner_hub, owner_epoch FROM gateways WHERE id = ?", (gateway_id,)
    ).fetchone()
    if row is None:
        raise UnknownGateway(f"gateway {gateway_id} does not exist")
    if row[0] != hub_id or int(row[1]) != epoch:
        raise Superseded(
            f"gateway {gateway_id} is owned by {row[0]} at epoch {row[1]}, not by this "
            f"session's {hub_id} at epoch {epoch}: its sidecar connected again (here or to "
            "another hub); this session ends and the newer one carries on"
        )


def hold_ownership_in(conn: Connection, gateway_id: str, hub_id: str, epoch: int) -> None:
    """In a write: raise Superseded unless `hub_id` owns the gateway at `epoch`, and hold
    the row's lock to the commit, so a hub taking the gateway meanwhile waits for this
    write (or this write, waiting for its, then sees the new epoch and is refused)."""
    held = conn.execute(
        "UPDATE gateways SET owner_epoch = owner_epoch "
        "WHERE id = ? AND owner_hub = ? AND owner_epoch = ? RETURNING owner_epoch",
        (gateway_id, hub_id, epoch),
    ).fetchone()
    if held is None:
        check_owner_in(conn, gateway_id, hub_id, epoch)  # raises, naming the owner
        raise Superseded(f"gateway {gateway_id} changed owner during the write; retry")


def owned_in(conn: Connection, gateway_ids: Sequence[str], hub_id: str) -> set[str]:
    """Those of `gateway_ids` that `hub_id` owns."""
    if not gateway_ids:
        return set()
    marks = ", ".join("?" for _ in gateway_ids)
    rows = conn.execute(
        f"SELECT id FROM gateways WHERE owner_hub = ? AND id IN ({marks})",
        (hub_id, *gateway_ids),
    ).fetchall()
    return {row[0] for row in rows}


def hub_started_in(conn: Connection, hub_id: str, now: float) -> None:
    conn.execute("INSERT INTO hubs (id, started_at, alive_at) VALUES (?, ?, ?)", (hub_id, now, now))


def hub_alive_in(conn: Connection, hub_id: str, now: float) -> None:
    conn.execute("UPDATE hubs SET alive_at = ? WHERE id = ?", (now, hub_id))
    # Every start is a row: those silent for a day are history nobody reads.
    conn.execute("DELETE FROM hubs WHERE alive_at < ?", (now - HUBS_KEPT_S,))


def hub_stopped_in(conn: Connection, hub_id: str, now: float) -> None:
    """The hub stops: its gateways may be adopted at once (their sidecars reconnect to
    another hub anyway; these are the ones whose sidecar does not)."""
    conn.execute("UPDATE hubs SET stopped_at = ? WHERE id = ?", (now, hub_id))


def adopt_orphans_in(conn: Connection, hub_id: str, now: float) -> list[str]:
    """Take the gateways no live hub owns (never connected, or their owner crashed or
    stopped), marking any still recorded connected as disconnected (no stream survives
    its hub); return their ids. Hubs adopting at once: the row lock makes the second
    see the first as a live owner, so each orphan gets one owner."""
    rows = conn.execute(
        """UPDATE gateways SET owner_hub = ?, owner_epoch = owner_epoch + 1,
               disconnected_at = CASE WHEN connected = 1 THEN ? ELSE disconnected_at END,
               connected = 0
           WHERE owner_hub IS NULL OR owner_hub NOT IN
               (SELECT id FROM hubs WHERE alive_at >= ? AND stopped_at IS NULL)
           RETURNING id, owner_epoch""",
        (hub_id, now, now - HUB_DEAD_AFTER_S),
    ).fetchall()
    for gateway_id, epoch in rows:
        conn.notify(OWNERSHIP, OwnerChange(gateway_id, int(epoch), hub_id).payload())
    return [row[0] for row in rows]
