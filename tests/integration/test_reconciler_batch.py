"""The reconciler judges a due batch set-based (`Reconciler.judge_in`): what it writes is
what stepping each agent alone (`Transition.step`) writes, on each engine: the agents'
rows, the commands and their numbers, the event log, the notices, the deadlines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hub.lifecycle import decisions as lc
from hub.lifecycle.reconciler import Reconciler, Transition
from hub.provisioning.agents import AgentRow, load_agent
from hub.store.database import Connection, Database
from hub.store.event_log import ACTIVITY
from hub.store.gateways import GatewayStore
from hub.store.outbox import OUTBOX
from hub.store.ownership import take_ownership_in
from protos import link_pb2 as pb

NOW = 1_800_000_000.0
LINK_UP = NOW - 100.0
POLICY = lc.Policy(checkin_deadline_s=30.0, restart_grace_windows=0.0, hub_started_at=NOW - 3600)
FIRST_SEQUENCE = {"gw-a": 5, "gw-b": 1, "gw-c": 12}

# (agent, gateway, kind, status, phase, wake attempts, generation, applied generation)
AGENTS = [
    ("main-a", "gw-a", "main", "online", "idle", 0, 1, 1),
    *((f"ok{i}", "gw-a", "worker", "online", "idle", 0, 1, 1) for i in range(4)),  # fine
    ("a1", "gw-a", "worker", "provisioning", "awaiting_checkin", 1, 1, 1),  # woken again
    ("a2", "gw-a", "worker", "online", "awaiting_checkin", 2, 1, 1),  # woken again
    ("a3", "gw-a", "worker", "provisioning", "awaiting_checkin", 3, 1, 1),  # offline
    ("a4", "gw-a", "worker", "provisioning", "awaiting_checkin", 1, 3, 3),  # stale deadline
    *((f"b{i}", "gw-b", "worker", "online", "awaiting_checkin", 1, 1, 1) for i in range(4)),
    ("c1", "gw-c", "lead", "updating", "retry_apply", 0, 2, 1),  # its apply is resent
    ("c2", "gw-c", "worker", "provisioning", "awaiting_checkin", 1, 1, 1),  # woken again
]
DUE = ["a1", "gone", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "c1", "c2"]


def _seed(conn: Connection) -> None:
    for gateway_id, sequence in FIRST_SEQUENCE.items():
        conn.execute(
            """INSERT INTO gateways (id, name, created_at, updated_at, workspace_root,
                   agent_api_url, gateway_generation, next_sequence)
               VALUES (?, ?, 0, 0, '/srv/openclaw', 'http://127.0.0.1:18790', 2, ?)""",
            (gateway_id, gateway_id, sequence),
        )
        conn.execute(
            "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at) "
            "VALUES (?, ?, 'bench', 'bench', 0, 0)",
            (f"board-{gateway_id}", gateway_id),
        )
    for agent_id, gateway_id, kind, status, phase, attempts, generation, applied in AGENTS:
        deadline = NOW - 1 if phase != "idle" else None
        conn.execute(
            """INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name,
                   status, phase, wake_attempts, lifecycle_generation, applied_generation,
                   checkin_deadline_at, last_wake_sent_at, last_seen_at, heartbeat_interval_s,
                   created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 600, 0, 0)""",
            (
                agent_id,
                gateway_id,
                None if kind == "main" else f"board-{gateway_id}",
                kind,
                f"mc-{agent_id}",
                f"agent {agent_id}",
                status,
                phase,
                attempts,
                generation,
                applied,
                deadline,
                NOW - 40 if phase == "awaiting_checkin" else None,
                NOW - 50 if status == "online" else None,
            ),
        )
    # Profiles the wakes render from: a2's own identity, c1's and c2's role soul (only a
    # worker's is rendered).
    conn.execute(
        "UPDATE agents SET identity_profile = ? WHERE id = 'a2'",
        (json.dumps({"role": "Reviewer", "emoji": ":owl:"}),),
    )
    conn.execute("UPDATE agents SET role_soul = '# Soul\n\nBe kind.' WHERE id IN ('c1', 'c2')")
    # c1's stored apply (generation 2): what a resend sends again.
    apply = pb.Command(
        sequence=11,
        apply_agent=pb.ApplyAgent(agent_id="mc-c1", hub_agent_id="c1", generation=2),
    )
    conn.execute(
        """INSERT INTO commands (gateway_id, sequence, kind, agent_id, generation, payload,
               created_at) VALUES ('gw-c', 11, 'apply_agent', 'mc-c1', 2, ?, ?)""",
        (apply.SerializeToString(), NOW - 60),
    )


def _event(conn: Connection) -> Callable[[str, bool], lc.Event]:
    rows = conn.execute("SELECT id, checkin_deadline_at FROM agents").fetchall()
    deadline = {r[0]: r[1] for r in rows}

    def event(agent_id: str, suspect: bool) -> lc.Event:
        # a4's schedule entry is for an older generation than its row
        generation = 1 if agent_id == "a4" else (2 if agent_id == "c1" else 1)
        return lc.DeadlineDue(
            deadline_at=deadline[agent_id], generation=generation, gateway_suspect=suspect
        )

    return event


def _one_by_one(
    tx: Transition, agent_ids: list[str], event: Callable[[str, bool], lc.Event]
) -> None:
    """The reconciler's verdicts as they were made before batches: each agent loaded,
    its gateway judged on first sight, then `tx.step`."""
    suspects: dict[str, bool] = {}
    for agent_id in agent_ids:
        row = load_agent(tx.conn, agent_id)
        if row is None:
            continue
        if row.gateway_id not in suspects:
            peers = [
                AgentRow.from_row(r)
                for r in tx.conn.execute(
                    "SELECT * FROM agents WHERE gateway_id = ? AND status != 'deleting'",
                    (row.gateway_id,),
                ).fetchall()
            ]
            missed = sum(lc.is_missing(p.snapshot(LINK_UP), POLICY, tx.now) for p in peers)
            suspects[row.gateway_id] = lc.gateway_suspect(missed, len(peers), POLICY)
        tx.step(agent_id, event(agent_id, suspects[row.gateway_id]))


def _written(conn: Connection, tx: Transition, notices: list[Any]) -> dict[str, Any]:
    """What a run wrote and left, per agent in the order it happened (the order between
    agents may differ: an apply is resent after the batch's wakes)."""
    hub_id = {r[0]: r[1] for r in conn.execute("SELECT gateway_agent_id, id FROM agents")}
    commands: dict[str, list[Any]] = {}
    numbers: dict[str, list[int]] = {}
    by_sequence: dict[tuple[str, int], tuple[str, int]] = {}
    for row in conn.execute(
        "SELECT gateway_id, sequence, kind, agent_id, generation, payload FROM commands "
        "ORDER BY gateway_id, sequence"
    ).fetchall():
        command = pb.Command.FromString(bytes(row["payload"]))
        assert command.sequence == row["sequence"]
        command.ClearField("issued_at")
        command.ClearField("sequence")
        commands.setdefault(row["agent_id"], []).append(
            (row["kind"], row["generation"], command.SerializeToString())
        )
        numbers.setdefault(row["gateway_id"], []).append(row["sequence"])
        by_sequence[(row["gateway_id"], row["sequence"])] = (row["kind"], row["generation"])
    events: dict[str, list[Any]] = {}
    for row in conn.execute(
        "SELECT at, kind, gateway_id, agent_id, board_id, detail FROM events ORDER BY id"
    ).fetchall():
        detail = json.loads(row["detail"])
        if "sequence" in detail:  # named by what it numbers (the numbers are checked apart)
            detail["sequence"] = by_sequence[(row["gateway_id"], detail["sequence"])]
        at = None if row["kind"] == "command.queued" else row["at"]  # stamped by the clock
        agent = hub_id.get(row["agent_id"], row["agent_id"])
        events.setdefault(agent, []).append(
            (at, row["kind"], row["gateway_id"], row["board_id"], detail)
        )
    views = {k: v if isinstance(v, dict) else v() for k, v in tx.changed.items()}
    deadlines: dict[str, list[Any]] = {}
    for agent_id, at, generation in tx.deadlines:
        deadlines.setdefault(agent_id, []).append((at, generation))
    logs: dict[str, list[Any]] = {}
    for event, fields in tx.logs:
        logs.setdefault(fields["agent_id"], []).append((event, fields))
    return {
        "agents": [dict(r) for r in conn.execute("SELECT * FROM agents ORDER BY id")],
        "commands": commands,
        "numbers": numbers,
        "events": events,
        "views": views,
        "deadlines": deadlines,
        "logs": logs,
        "outbox": sorted({p for c, p in notices if c == OUTBOX}),
        "activity": len([p for c, p in notices if c == ACTIVITY]),
    }


async def test_a_batch_writes_what_stepping_each_agent_alone_writes(
    open_database: Callable[..., Database],
) -> None:
    db = open_database(commit_interval_s=0.01)
    clock = [LINK_UP]
    reconciler = Reconciler(db, GatewayStore(db), POLICY, clock=lambda: clock[0])
    try:
        await db.write(_seed)
        # This hub holds the gateways' streams: it owns them, and judges their agents.
        for gateway_id in FIRST_SEQUENCE:
            await db.write(lambda conn, g=gateway_id: take_ownership_in(conn, g, reconciler.hub_id))
        for gateway_id in FIRST_SEQUENCE:
            await reconciler.link_changed(gateway_id, True)
        clock[0] = NOW
        activity: list[dict[str, Any]] = []

        def both(conn: Connection) -> tuple[dict[str, Any], dict[str, Any]]:
            event = _event(conn)
            conn.execute("SAVEPOINT one_by_one")
            job_notices, conn.notices = conn.notices, []
            alone = Transition(reconciler, conn, NOW)
            _one_by_one(alone, DUE, event)
            expected = _written(conn, alone, conn.notices)
            conn.execute("ROLLBACK TO one_by_one")
            conn.execute("RELEASE one_by_one")
            conn.notices = job_notices
            batch = Transition(reconciler, conn, NOW)
            reconciler.judge_in(batch, DUE, event)
            activity.extend(p for c, p in conn.notices if c == ACTIVITY)
            return expected, _written(conn, batch, conn.notices)

        expected, got = await db.write(both)
        assert got == expected
        # The cases mean something: wakes, an offline verdict, a suspect gateway, a resend.
        assert [c[0] for c in got["commands"]["mc-a1"]] == ["wake_agent"]
        assert [c[:2] for c in got["commands"]["mc-c1"]] == [("apply_agent", 2)] * 2
        assert {a["id"]: a["status"] for a in got["agents"]}["a3"] == "offline"
        assert {a["id"]: a["status_reason"] for a in got["agents"]}["b0"] == "gateway_unreachable"
        assert "mc-b0" not in got["commands"]
        # Each gateway's numbers follow on from where they were, without a gap.
        for gateway_id, numbers in got["numbers"].items():
            first = FIRST_SEQUENCE[gateway_id] - (1 if gateway_id == "gw-c" else 0)
            assert numbers == list(range(first, first + len(numbers)))
        assert got["outbox"] == ["gw-a", "gw-c"]
        # Each activity notice is the row it announces, as add_event announces it.
        rows = await db.read(
            lambda conn: {r["id"]: dict(r) for r in conn.execute("SELECT * FROM events")}
        )
        assert len(activity) == got["activity"] > 0
        for notice in activity:
            row = rows[notice["id"]]
            assert (notice["kind"], notice["agent_id"], notice["board_id"]) == (
                row["kind"],
                row["agent_id"],
                row["board_id"],
            )
            assert notice["detail"] == json.loads(row["detail"])
            assert notice["at"] == row["at"]
    finally:
        await db.close()
