"""A fleet query's file question, answered on the host: the sidecar hashes one workspace
file of its managed agents, off its event loop, whatever an agent left in its place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protos import link_pb2 as pb
from sidecar.gateway.queries import GatewayQueries
from sidecar.reports import NOT_HASHABLE, Reports
from sidecar.state import AgentState, LocalState
from sidecar.workspace import WorkspaceWriter, sha256_hex
from tests.support import RecordingGateway, wait_for


@pytest.fixture
def host(tmp_path: Path) -> tuple[Reports, Path]:
    root = tmp_path / "workspaces"
    state = LocalState(tmp_path / "state.sqlite3")
    agents = [AgentState(f"mc-{n}", 1, str(root / f"workspace-mc-{n}")) for n in "abcde"]
    for agent in agents:
        Path(agent.workspace).mkdir(parents=True)
    state.record_applied(1, upsert=agents)
    reports = Reports(
        gateway_id="gw",
        workspace_root=root,
        state=state,
        writer=WorkspaceWriter(root),
        gateway=RecordingGateway(reachable=False),
        agent_api_url=lambda: "http://127.0.0.1:1",
    )
    return reports, root


async def ask(reports: Reports, **fields: object) -> pb.GatewayQueryResult:
    sent: list[pb.SidecarMessage] = []
    queries = GatewayQueries(reports.gateway, pb.GatewayState, sent.append, reports.file_digests)
    queries.submit(pb.GatewayQuery(query_id=7, kind=pb.GatewayQuery.FILE_HASH, **fields))  # type: ignore[arg-type]
    await wait_for(lambda: sent, what="the query answered")
    [message] = sent
    assert message.gateway_query_result.query_id == 7
    return message.gateway_query_result


async def test_each_managed_agent_is_answered_whatever_is_in_the_files_place(
    host: tuple[Reports, Path], tmp_path: Path
) -> None:
    reports, root = host
    (root / "workspace-mc-a" / "SOUL.md").write_text("soul a\n")
    os.mkfifo(root / "workspace-mc-b" / "SOUL.md")  # would block a plain open
    secret = tmp_path / "secret"
    secret.write_text("not the agent's")
    (root / "workspace-mc-c" / "SOUL.md").symlink_to(secret)  # never followed
    (root / "workspace-mc-d" / "SOUL.md").mkdir()
    # mc-e has no SOUL.md at all.
    result = await ask(reports, file="SOUL.md")  # the gateway is down: not needed here
    assert result.error_code == "", result.error
    by_agent = {d.agent_id: d for d in result.files}
    assert sorted(by_agent) == [f"mc-{n}" for n in "abcde"]
    assert by_agent["mc-a"].sha256 == sha256_hex(b"soul a\n") and not by_agent["mc-a"].problem
    for agent_id in ("mc-b", "mc-c", "mc-d", "mc-e"):
        assert (by_agent[agent_id].sha256, by_agent[agent_id].problem) == ("", NOT_HASHABLE)


async def test_one_agent_and_an_oversized_file(
    host: tuple[Reports, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reports, root = host
    monkeypatch.setattr("sidecar.workspace.MAX_HASHED_BYTES", 1024)
    (root / "workspace-mc-b" / "MEMORY.md").write_bytes(b"m" * 2048)
    result = await ask(reports, file="MEMORY.md", agent_id="mc-b")
    [digest] = result.files
    assert (digest.agent_id, digest.sha256, digest.problem) == ("mc-b", "", "oversized: 2048 bytes")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"file": ".mc-agent-token"}, "invalid_query"),  # a verifier of the secret: never
        ({"file": "../../../etc/passwd"}, "invalid_query"),
        ({"file": "SOUL.md/../../x"}, "invalid_query"),
        ({"file": ""}, "invalid_query"),
        ({"file": "SOUL.md", "agent_id": "mc-zzz"}, "unknown_agent"),
    ],
)
async def test_a_question_the_sidecar_will_not_answer_says_why(
    host: tuple[Reports, Path], fields: dict[str, str], code: str
) -> None:
    result = await ask(host[0], **fields)
    assert result.error_code == code and result.error
    assert not result.files
