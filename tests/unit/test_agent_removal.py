"""Removing an agent: the sidecar takes the token first, and then whatever the gateway left.

The real gateway's behaviour (it answers ok yet moves nothing while the agent's run is
going on, trashes the workspace token and all otherwise, and leaves an empty state
directory) is tried in tests/interop/test_agent_e2e.py; here a stand-in that removes
nothing shows the sidecar's side of it, and that its removals stay where they belong.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from missioncontrol.agent_api import TOKEN_FILE_NAME
from protos import link_pb2 as pb
from sidecar.commands import CommandApplier
from sidecar.state import LocalState
from sidecar.workspace import WorkspaceWriter
from tests.support import RecordingGateway

AGENT = "mc-11111111-2222-3333-4444-555555555555"


@dataclass
class MovesNothing(RecordingGateway):
    """Answers agents.delete ok and leaves every file where it was (as mid-run)."""

    token_present_at_remove: list[bool] = field(default_factory=list)
    workspace: Path | None = None

    async def remove_agent(self, agent_id: str, *, delete_files: bool) -> None:
        assert self.workspace is not None
        self.token_present_at_remove.append((self.workspace / TOKEN_FILE_NAME).exists())
        await super().remove_agent(agent_id, delete_files=delete_files)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[CommandApplier, MovesNothing, Path, Path]]:
    root, gateway_state = tmp_path / "workspaces", tmp_path / "openclaw"
    state = LocalState(tmp_path / "sc" / "state.sqlite3")
    gateway = MovesNothing()
    applier = CommandApplier(
        state, WorkspaceWriter(root), gateway, lambda run: None, gateway_state_dir=gateway_state
    )
    yield applier, gateway, root, gateway_state
    state.close()


async def apply_then_remove(
    applier: CommandApplier, gateway: MovesNothing, root: Path, agent: str, *, delete_files: bool
) -> tuple[pb.CommandResult, Path]:
    workspace = root / f"workspace-{agent}"
    gateway.workspace = workspace
    applied = await applier.apply(
        pb.Command(
            sequence=1,
            apply_agent=pb.ApplyAgent(
                agent_id=agent,
                generation=1,
                workspace_path=str(workspace),
                files=[
                    pb.WorkspaceFile(name="AGENTS.md", content=b"# a\n"),
                    pb.WorkspaceFile(name=TOKEN_FILE_NAME, content=b"t.s", secret=True),
                ],
            ),
        )
    )
    assert applied.result.outcome == pb.CommandResult.APPLIED
    removed = await applier.apply(
        pb.Command(
            sequence=2,
            remove_agent=pb.RemoveAgent(agent_id=agent, generation=1, delete_files=delete_files),
        )
    )
    return removed.result, workspace


def gateway_agent_dir(gateway_state: Path, agent: str) -> Path:
    """What the gateway keeps per agent, as it leaves it when the purge failed."""
    agent_dir = gateway_state / "agents" / agent
    (agent_dir / "agent").mkdir(parents=True)
    (agent_dir / "agent" / "openclaw-agent.sqlite").write_bytes(b"db")
    (agent_dir / "sessions").mkdir()
    return agent_dir


async def test_the_token_goes_before_the_gateway_is_asked_and_the_rest_after(
    setup: tuple[CommandApplier, MovesNothing, Path, Path],
) -> None:
    applier, gateway, root, gateway_state = setup
    agent_dir = gateway_agent_dir(gateway_state, AGENT)
    result, workspace = await apply_then_remove(applier, gateway, root, AGENT, delete_files=True)
    assert result.outcome == pb.CommandResult.APPLIED
    assert gateway.token_present_at_remove == [False]  # nothing could carry it anywhere
    assert not workspace.exists() and not agent_dir.exists()
    assert (gateway_state / "agents").exists() and root.exists()  # only the agent's own


async def test_keeping_the_files_keeps_them_all(
    setup: tuple[CommandApplier, MovesNothing, Path, Path],
) -> None:
    applier, gateway, root, gateway_state = setup
    agent_dir = gateway_agent_dir(gateway_state, AGENT)
    _, workspace = await apply_then_remove(applier, gateway, root, AGENT, delete_files=False)
    assert gateway.token_present_at_remove == [True]
    assert (workspace / TOKEN_FILE_NAME).exists() and agent_dir.exists()


@pytest.mark.parametrize("agent", ["..", "../sentinel", "a/../../sentinel", "Sentinel", ""])
async def test_an_id_that_is_no_gateway_agent_id_removes_nothing_of_the_gateway(
    setup: tuple[CommandApplier, MovesNothing, Path, Path], agent: str
) -> None:
    applier, gateway, root, gateway_state = setup
    sentinel = gateway_state / "agents" / "sentinel"
    sentinel.mkdir(parents=True)
    (gateway_state / "agents" / "Sentinel").mkdir()
    gateway.workspace = root / "none"
    result = await applier.apply(
        pb.Command(
            sequence=1,
            remove_agent=pb.RemoveAgent(agent_id=agent, generation=1, delete_files=True),
        )
    )
    assert result.result.outcome == pb.CommandResult.APPLIED
    assert sentinel.exists() and (gateway_state / "agents" / "Sentinel").exists()
    assert (gateway_state / "agents").exists()
