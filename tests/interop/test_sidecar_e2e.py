"""The whole chain against a real gateway: hub outbox -> link -> sidecar -> OpenClaw."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.app import Hub
from hub.store import GatewayRow
from protos import link_pb2 as pb
from sidecar.app import Sidecar
from sidecar.backoff import Backoff
from tests.interop.conftest import RunningGateway
from tests.support import hub_config, sidecar_config, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]


@pytest.fixture
async def chain(gateway: RunningGateway, tmp_path: Path) -> AsyncIterator[tuple[Hub, Sidecar]]:
    hub = Hub(hub_config(tmp_path / "hub"))
    await hub.start()
    assert hub.addresses is not None
    config = sidecar_config(
        tmp_path / "sc",
        hub.addresses.link,
        gateway_id="gw-e2e",
        workspace_root=gateway.workspace_root,
    )
    config = type(config)(**{**config.__dict__, "openclaw_config": gateway.config_path})
    sidecar = Sidecar(config)
    sidecar.link.backoff = Backoff(initial_s=0.05, max_s=0.5)
    await sidecar.start()
    try:
        await wait_for(lambda: hub.registry.get("gw-e2e"), timeout_s=30, what="link up")
        await wait_for(lambda: sidecar.gateway.info.reachable, timeout_s=30, what="gateway up")
        yield hub, sidecar
    finally:
        await sidecar.stop()
        await hub.stop()


async def _version_recorded(hub: Hub) -> GatewayRow | None:
    row = await hub.store.get_gateway("gw-e2e")
    return row if row is not None and row.openclaw_version else None


async def _acked(hub: Hub, sequence: int) -> dict | None:
    row = await hub.store.command_status("gw-e2e", sequence)
    return row if row and row["acked_at"] else None


async def test_apply_agent_through_the_hub_reaches_the_real_gateway(
    chain: tuple[Hub, Sidecar], gateway: RunningGateway
) -> None:
    hub, _ = chain
    # The Hello may precede the sidecar's first gateway connection; the version then
    # reaches the hub in the GatewayState report that follows it.
    listed = await wait_for(
        lambda: _version_recorded(hub), timeout_s=30, what="gateway version recorded"
    )
    assert listed.openclaw_version == gateway.version
    agent_id = f"mc-{uuid.uuid4()}"
    workspace = gateway.workspace_root / f"workspace-{agent_id}"
    queued_at = time.perf_counter()
    sequence = await hub.store.enqueue_command(
        "gw-e2e",
        pb.Command(
            apply_agent=pb.ApplyAgent(
                agent_id=agent_id,
                generation=1,
                display_name="E2E Worker",
                workspace_path=str(workspace),
                files=[
                    pb.WorkspaceFile(name="AGENTS.md", content=b"# E2E agent\n"),
                    pb.WorkspaceFile(name="SOUL.md", content=b"# Soul\n"),
                    pb.WorkspaceFile(name=".mc-agent-token", content=b"t.s", secret=True),
                ],
                heartbeat=pb.HeartbeatSettings(
                    every_s=600, target="none", checklist="- check in\n"
                ),
                wake_message="Your workspace is ready.",
            )
        ),
    )
    row = await wait_for(lambda: _acked(hub, sequence), timeout_s=120, what="apply acked")
    applied_s = time.perf_counter() - queued_at
    print(f"queued -> entry, files, heartbeat and wake acked: {applied_s:.2f} s")
    assert row["outcome"] == "APPLIED", row
    assert row["run_id"]
    config = json.loads(gateway.config_path.read_text())
    entries = config["agents"].get("entries") or {a["id"]: a for a in config["agents"]["list"]}
    assert entries[agent_id]["workspace"] == str(workspace)
    assert (workspace / "AGENTS.md").read_text() == "# E2E agent\n"
    assert (workspace / ".mc-agent-token").stat().st_mode & 0o777 == 0o600
    # No model is configured: the wake run ends in an error the gateway explains.
    events = await wait_for(
        lambda: hub.store.events("gw-e2e", "agent.run.observed"), timeout_s=120, what="run outcome"
    )
    assert events[0]["detail"]["outcome"] == "ERROR"
    assert events[0]["detail"]["message"]

    removal = await hub.store.enqueue_command(
        "gw-e2e",
        pb.Command(
            remove_agent=pb.RemoveAgent(agent_id=agent_id, generation=1, delete_files=False)
        ),
    )
    row = await wait_for(lambda: _acked(hub, removal), timeout_s=60, what="remove acked")
    assert row["outcome"] == "APPLIED"
    config = json.loads(gateway.config_path.read_text())
    entries = config["agents"].get("entries") or {a["id"]: a for a in config["agents"]["list"]}
    assert agent_id not in entries
    assert (workspace / "AGENTS.md").exists()  # deleteFiles false: the workspace stays
