"""The whole chain against a real gateway: hub outbox -> link -> sidecar -> OpenClaw."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from hub.app import Hub
from hub.demo.scripted_model import Behaviour, ScriptedModel
from hub.store.gateways import GatewayRow
from protos import link_pb2 as pb
from sidecar.app import Sidecar
from tests.interop.conftest import RunningGateway, record_timing
from tests.support import api, fast_backoff, hub_config, sidecar_config, wait_for, webhook_receiver

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]


@pytest.fixture
async def chain(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[tuple[Hub, Sidecar]]:
    model.behaviour = Behaviour.REJECT_CREDENTIALS  # every wake run fails, with a reason
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
    sidecar = Sidecar(config, link_backoff=fast_backoff())
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


def _apply(agent_id: str, workspace: Path) -> pb.Command:
    """An ApplyAgent of a new agent with a token file, a heartbeat and a wake."""
    return pb.Command(
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
            heartbeat=pb.HeartbeatSettings(every_s=600, target="none", checklist="- check in\n"),
            wake_message="Your workspace is ready.",
        )
    )


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
    sequence = await hub.store.enqueue_command("gw-e2e", _apply(agent_id, workspace))
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
    # The model rejects the key: the wake run ends in an error the gateway explains.
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


def _roster_ids(sidecar: Sidecar) -> set[str]:
    """The agents of openclaw.json as the sidecar's config watcher last read it."""
    report = sidecar.watcher.last_report
    return {e.agent_id for e in (report.roster or ())} if report else set()


async def test_the_sidecars_own_create_and_removal_are_never_reported_as_drift(
    chain: tuple[Hub, Sidecar], gateway: RunningGateway
) -> None:
    # The config watcher can see the sidecar's own new entry before the apply's result is
    # in (and the removal before it is done): neither is a hand edit, for any agent.
    hub, sidecar = chain
    agent_id = f"mc-{uuid.uuid4()}"
    with structlog.testing.capture_logs() as logs:
        applied = await hub.store.enqueue_command(
            "gw-e2e", _apply(agent_id, gateway.workspace_root / f"workspace-{agent_id}")
        )
        await wait_for(lambda: _acked(hub, applied), timeout_s=120, what="apply acked")
        await wait_for(
            lambda: agent_id in _roster_ids(sidecar),
            timeout_s=30,
            what="the watcher saw the new entry",
        )
        removal = await hub.store.enqueue_command(
            "gw-e2e",
            pb.Command(
                remove_agent=pb.RemoveAgent(agent_id=agent_id, generation=1, delete_files=True)
            ),
        )
        await wait_for(lambda: _acked(hub, removal), timeout_s=60, what="remove acked")
        await wait_for(
            lambda: agent_id not in _roster_ids(sidecar),
            timeout_s=30,
            what="the watcher saw the entry gone",
        )
    drift = [e for e in logs if e["event"] == "gateway.config.drift" and e["agent_id"] == agent_id]
    assert drift == []
    assert agent_id not in gateway.roster()  # nothing restored it either


async def test_live_status_sessions_and_session_reset_through_the_sidecar(
    chain: tuple[Hub, Sidecar], gateway: RunningGateway
) -> None:
    hub, _ = chain
    agent_id = f"mc-{uuid.uuid4()}"

    def apply(generation: int, **extra: object) -> pb.Command:
        return pb.Command(
            apply_agent=pb.ApplyAgent(
                agent_id=agent_id,
                generation=generation,
                display_name="Live Reads",
                workspace_path=str(gateway.workspace_root / f"workspace-{agent_id}"),
                files=[pb.WorkspaceFile(name="AGENTS.md", content=b"# Live\n")],
                heartbeat=pb.HeartbeatSettings(every_s=600, checklist="- check in\n"),
                **extra,  # type: ignore[arg-type]
            )
        )

    first = await hub.store.enqueue_command("gw-e2e", apply(1, wake_message="Check in."))
    row = await wait_for(lambda: _acked(hub, first), timeout_s=120, what="apply acked")
    assert row["outcome"] == "APPLIED", row

    async def main_session() -> dict | None:
        status, body = await api(hub, "GET", "/api/v1/gateway/sessions?gateway_id=gw-e2e")
        assert status == 200, body
        return next((s for s in body["sessions"] if s["gateway_agent_id"] == agent_id), None)

    await wait_for(
        lambda: hub.store.events("gw-e2e", "agent.run.observed"), timeout_s=120, what="run ended"
    )
    before = await wait_for(main_session, timeout_s=60, what="the woken agent's session listed")
    assert before["key"] == f"agent:{agent_id}:main" and before["is_main"]
    assert before["agent_id"] is None  # the hub has no agents row for it in this test

    started = time.perf_counter()
    status, read = await api(hub, "GET", "/api/v1/gateway/status?gateway_id=gw-e2e")
    record_timing("gateway status through the sidecar", time.perf_counter() - started)
    assert status == 200 and read["connected"] and read["live_read"] and read["error"] is None, read
    assert read["openclaw_version"] == gateway.version
    runtime = {a["gateway_agent_id"]: a for a in read["agents"]}
    assert runtime[agent_id]["heartbeat_enabled"] and runtime[agent_id]["heartbeat_every_s"] == 600
    assert "main" in runtime  # the gateway's own agent is shown too
    assert read["sessions_count"] >= 1
    assert agent_id in {s["gateway_agent_id"] for s in read["sessions"]}

    # The same gateway through a fleet query: its heartbeat jobs, and a file hashed on the host.
    for question, extra in (("heartbeats", {}), ("file", {"file": "AGENTS.md"})):
        status, fleet = await api(
            hub, "POST", "/api/v1/fleet/query", {"question": question, **extra}
        )
        assert status == 200, fleet
        [answer] = [a for a in fleet["answers"] if a["gateway_id"] == "gw-e2e"]
        assert answer["outcome"] == "answered", answer
        if question == "heartbeats":
            beats = {a["gateway_agent_id"]: a for a in answer["data"]["agents"]}
            assert beats[agent_id]["heartbeat_enabled"], beats
            assert beats[agent_id]["heartbeat_every_s"] == 600
        else:
            files = {f["gateway_agent_id"]: f for f in answer["data"]["files"]}
            assert files[agent_id]["sha256"] == hashlib.sha256(b"# Live\n").hexdigest()

    second = await hub.store.enqueue_command("gw-e2e", apply(2, reset_session=True))
    row = await wait_for(lambda: _acked(hub, second), timeout_s=120, what="reset acked")
    assert row["outcome"] == "APPLIED", row
    after = await main_session()
    assert after is not None and after["updated_at"] > before["updated_at"]
    if not gateway.generation_is_legacy:
        # The woken run failed (the model rejected the key): a reset session carries no
        # run status.
        assert before["status"] == "failed" and after["status"] is None


async def test_a_hand_removed_entry_pages_a_drift_alert(
    chain: tuple[Hub, Sidecar], gateway: RunningGateway
) -> None:
    if gateway.generation_is_legacy:
        # Open: on 2026.3.8, after the session's other tests on its shared gateway, the
        # hand removal below is never reported (it is when this module runs alone).
        pytest.skip("the hand removal is not reported on a shared 2026.3.8 gateway (open)")
    hub, _ = chain
    agent_id = f"mc-{uuid.uuid4()}"
    secret = "drift-alert-secret-" + "d" * 16
    async with webhook_receiver(secret) as receiver:
        status, rule = await api(
            hub,
            "POST",
            "/api/v1/alerts",
            {
                "name": "drift",
                "kind": "drift_found",
                "url": receiver.url,
                "secret": secret,
                "cooldown_s": 0,  # every report of this agent's drift is paged
            },
        )
        assert status == 201, rule
        sequence = await hub.store.enqueue_command(
            "gw-e2e",
            pb.Command(
                apply_agent=pb.ApplyAgent(
                    agent_id=agent_id,
                    generation=1,
                    display_name="Drifter",
                    workspace_path=str(gateway.workspace_root / f"workspace-{agent_id}"),
                    files=[pb.WorkspaceFile(name="AGENTS.md", content=b"# Drifter\n")],
                )
            ),
        )
        row = await wait_for(lambda: _acked(hub, sequence), timeout_s=120, what="apply acked")
        assert row["outcome"] == "APPLIED", row

        def remove(document: dict) -> None:  # by hand, as an operator's editor would
            agents = document["agents"]
            if "entries" in agents:
                del agents["entries"][agent_id]
            else:
                agents["list"] = [e for e in agents["list"] if e["id"] != agent_id]

        gateway.edit_config(remove)

        def removal_paged() -> dict | None:
            return next(
                (
                    b
                    for b in receiver.bodies("drift_found")
                    if b["agent_id"] == agent_id and b["detail"]["drift"] == "REMOVED"
                ),
                None,
            )

        payload = await wait_for(removal_paged, timeout_s=60, what="drift alert received")
    assert payload["gateway_id"] == "gw-e2e" and payload["rule"]["id"] == rule["id"]
    assert all(r["signed"] for r in receiver.received)
