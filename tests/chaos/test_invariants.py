"""The chaos checks catch what they are for: each is shown a broken state and says so."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from protos import link_pb2 as pb
from sidecar.state import AgentState, LocalState
from sidecar.workspace import TEMP_SUFFIX, FileToWrite, WorkspaceWriter
from tests.chaos import invariants

TOKEN = b"tid.secret-part"


def _apply(workspace: Path, generation: int, agents_md: bytes) -> pb.ApplyAgent:
    return pb.ApplyAgent(
        agent_id="mc-a",
        generation=generation,
        workspace_path=str(workspace),
        files=[
            pb.WorkspaceFile(name="AGENTS.md", content=agents_md),
            pb.WorkspaceFile(name="MEMORY.md", content=b"seed", preserve_if_present=True),
            pb.WorkspaceFile(name=".mc-agent-token", content=b"sealed", secret=True),
        ],
        credentials=[pb.AgentCredential(token_id="tid", sha256=hashlib.sha256(TOKEN).digest())],
    )


def _written(tmp_path: Path, agents_md: bytes) -> tuple[Path, dict[str, dict]]:
    root = tmp_path / "ws"
    workspace = root / "workspace-mc-a"
    hashes = WorkspaceWriter(root).write(
        str(workspace),
        [
            FileToWrite("AGENTS.md", agents_md),
            FileToWrite("MEMORY.md", b"the agent's own notes"),
            FileToWrite(".mc-agent-token", TOKEN + b"\n", secret=True),
        ],
    )
    state = LocalState(tmp_path / "state" / "state.sqlite3")
    state.record_applied(1, upsert=[AgentState("mc-a", 2, str(workspace), hashes)])
    state.close()
    return workspace, invariants.sidecar_agents(tmp_path / "state" / "state.sqlite3")


def test_files_match_the_last_command_and_a_stale_file_is_found(tmp_path: Path) -> None:
    workspace, held = _written(tmp_path, b"# generation 2\n")
    assert (
        invariants.workspace_files({"mc-a": _apply(workspace, 2, b"# generation 2\n")}, held) == []
    )
    stale = invariants.workspace_files({"mc-a": _apply(workspace, 3, b"# generation 3\n")}, held)
    assert len(stale) == 1 and "AGENTS.md is not what generation 3 wrote" in stale[0]


def test_a_token_of_another_generation_and_a_file_changed_behind_the_record_are_found(
    tmp_path: Path,
) -> None:
    workspace, held = _written(tmp_path, b"# generation 2\n")
    (workspace / ".mc-agent-token").write_bytes(b"tid.other\n")
    (workspace / "AGENTS.md").write_bytes(b"# edited by hand\n")
    found = invariants.workspace_files({"mc-a": _apply(workspace, 2, b"# generation 2\n")}, held)
    assert any(".mc-agent-token holds no token of generation 2" in f for f in found)
    assert any("AGENTS.md differs from the sidecar's record" in f for f in found)
    assert invariants.workspace_files({}, held) == [
        "mc-a: the sidecar manages it, the hub never applied it"
    ]


def test_agreement_names_each_side_that_differs() -> None:
    hub = {
        "mc-a": {"status": "online", "lifecycle_generation": 2, "applied_generation": 2},
        "mc-b": {"status": "online", "lifecycle_generation": 1, "applied_generation": 1},
    }
    sidecar = {"mc-a": {"generation": 1}, "mc-c": {"generation": 1}}
    found = invariants.agreement(hub, sidecar, ["mc-a", "mc-c", "main"])
    assert found == [
        "mc-a: sidecar applied generation 1, hub is at 2 (applied 2)",
        "mc-b: in the hub (online), not in the sidecar's state",
        "mc-b: in the hub, missing from openclaw.json",
        "mc-c: on the gateway/sidecar, unknown to the hub",
    ]
    assert (
        invariants.agreement(
            hub, {"mc-a": {"generation": 2}, "mc-b": {"generation": 1}}, ["mc-a", "mc-b"]
        )
        == []
    )


def test_a_sequence_applied_twice_is_found_across_restarts_and_cut_lines(tmp_path: Path) -> None:
    log = tmp_path / "sidecar.log"
    lines = [
        {"event": "command.applied", "sequence": 4, "outcome": "APPLIED"},
        {"event": "command.applied", "sequence": 5, "outcome": "APPLIED"},
        {"event": "chaos.process.start", "start": 1},
        {"event": "command.applied", "sequence": 4, "outcome": "ALREADY_APPLIED"},
        {"event": "command.applied", "sequence": 5, "outcome": "APPLIED"},
    ]
    log.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"event": "command.appl')
    assert invariants.applied_twice(log) == ["command 5 applied 2 times"]


def test_temp_files_and_a_damaged_database_are_found(tmp_path: Path) -> None:
    (tmp_path / "ws" / "w").mkdir(parents=True)
    (tmp_path / "ws" / "w" / f".AGENTS.md.1{TEMP_SUFFIX}").write_bytes(b"x")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / ".hub-link.ab12.tmp").write_bytes(b"x")
    assert len(invariants.temp_files([tmp_path / "ws", tmp_path / "state"])) == 2

    db = tmp_path / "d.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    conn.execute("CREATE INDEX t_b ON t(b)")
    conn.executemany("INSERT INTO t (b) VALUES (?)", [(str(i) * 50,) for i in range(2000)])
    conn.commit()
    assert invariants.integrity(db) == []
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 't_b'").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with db.open("r+b") as handle:  # scribble over the index's root page
        handle.seek((root - 1) * page + 8)
        handle.write(b"\xff" * 64)
    assert invariants.integrity(db) != []


def test_settling_names_each_agent_board_and_command_still_on_its_way(tmp_path: Path) -> None:
    from hub.store.database import connect, migrate

    db = tmp_path / "hub.sqlite3"
    conn = connect(db)
    migrate(conn)
    conn.execute("INSERT INTO gateways (id, name, created_at, updated_at) VALUES ('g', 'g', 0, 0)")
    conn.execute(
        "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at, status) "
        "VALUES ('b', 'g', 'b', 'b', 0, 0, 'active')"
    )

    def agent(
        gateway_agent_id: str, status: str, phase: str, generation: int, applied: int
    ) -> None:
        conn.execute(
            "INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name, status, "
            "phase, lifecycle_generation, applied_generation, created_at, updated_at) "
            "VALUES (?, 'g', 'b', 'worker', ?, 'n', ?, ?, ?, ?, 0, 0)",
            (gateway_agent_id, gateway_agent_id, status, phase, generation, applied),
        )

    agent("mc-online", "online", "idle", 2, 2)
    agent("mc-offline", "offline", "idle", 1, 1)
    conn.commit()
    assert invariants.unsettled(db, "g") == []

    agent("mc-stuck", "provisioning", "waking", 1, 0)
    conn.execute(
        "INSERT INTO commands (gateway_id, sequence, kind, agent_id, generation, payload, "
        "created_at, acked_at, outcome) VALUES ('g', 1, 'apply_agent', 'mc-stuck', 1, x'', 0, 1, "
        "'CONFIRMED_BY_HELLO')"
    )
    conn.execute(
        "INSERT INTO commands (gateway_id, sequence, kind, agent_id, generation, payload, "
        "created_at) VALUES ('g', 2, 'wake_agent', 'mc-online', 2, x'', 0)"
    )
    conn.execute("UPDATE boards SET status = 'deleting'")
    conn.commit()
    conn.close()
    found = invariants.unsettled(db, "g")
    assert found == [
        "mc-stuck: provisioning/waking generation 1 applied 0 reason None (its command was "
        "confirmed by a Hello: the result was lost)",
        "board b: deleting",
        "command 2 (wake_agent mc-online): not acked",
    ]
