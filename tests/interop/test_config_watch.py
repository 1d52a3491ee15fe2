"""ConfigWatcher against hand edits of a real gateway's openclaw.json."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sidecar.config_watch import ConfigReport, ConfigWatcher
from sidecar.gateway import AgentEntry
from sidecar.gateway.openclaw import OpenClawGatewayClient
from sidecar.openclaw_config import DriftKind
from tests.interop.conftest import RunningGateway, record_timing

# The first test's setup may install OpenClaw from npm (a minute or more on a cold cache).
pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

DRIFT_BOUND_S = 2.0  # a hand removal must be reported within this


class Reports:
    """Collects watcher reports; waits for one that matches."""

    def __init__(self) -> None:
        self.items: list[ConfigReport] = []
        self._arrived = asyncio.Event()

    def __call__(self, report: ConfigReport) -> None:
        self.items.append(report)
        self._arrived.set()

    async def wait_for(
        self, match: Callable[[ConfigReport], bool], timeout_s: float, what: str
    ) -> ConfigReport:
        start = len(self.items)
        deadline = time.monotonic() + timeout_s
        seen = start
        while True:
            for report in self.items[seen:]:
                if match(report):
                    return report
            seen = len(self.items)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no report within {timeout_s} s: {what}; got {self.items[start:]}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue


def kinds(report: ConfigReport, agent_id: str) -> set[DriftKind]:
    return {d.kind for d in report.drift if d.agent_id == agent_id}


def without_entry(gateway: RunningGateway, agent_id: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        agents = document["agents"]
        if "entries" in agents:
            del agents["entries"][agent_id]
        else:
            agents["list"] = [e for e in agents["list"] if e["id"] != agent_id]

    return mutate


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[OpenClawGatewayClient]:
    async with OpenClawGatewayClient(gateway.config_path) as gateway_client:
        await gateway_client.wait_ready(15)
        yield gateway_client


@pytest.fixture
async def agent(gateway: RunningGateway, client: OpenClawGatewayClient) -> AgentEntry:
    agent_id = f"mc-{uuid.uuid4()}"
    entry = AgentEntry(agent_id, agent_id, gateway.workspace_root / agent_id)
    await client.ensure_agent(entry)
    return entry


@pytest.fixture
async def reports(
    gateway: RunningGateway, client: OpenClawGatewayClient
) -> AsyncIterator[tuple[ConfigWatcher, Reports]]:
    collected = Reports()
    watcher = ConfigWatcher(
        gateway.config_path, collected, gateway_version=client.info.version, debounce_ms=150
    )
    first = await watcher.start()
    assert first.valid
    yield watcher, collected
    await watcher.stop()


async def wait_listed(client: OpenClawGatewayClient, agent_id: str, timeout_s: float) -> float:
    started = time.monotonic()
    while agent_id not in await client.list_agent_ids():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{agent_id} not listed by the gateway within {timeout_s} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_hand_removed_managed_entry_is_reported_restored_and_listed_again(
    gateway: RunningGateway,
    client: OpenClawGatewayClient,
    agent: AgentEntry,
    reports: tuple[ConfigWatcher, Reports],
) -> None:
    watcher, collected = reports
    watcher.set_managed({agent.agent_id})
    before = gateway.roster()[agent.agent_id]

    started = time.monotonic()
    gateway.edit_config(without_entry(gateway, agent.agent_id))
    report = await collected.wait_for(
        lambda r: DriftKind.REMOVED in kinds(r, agent.agent_id), DRIFT_BOUND_S, "REMOVED"
    )
    record_timing("hand removal to REMOVED report", time.monotonic() - started)

    assert DriftKind.RESTORED in kinds(report, agent.agent_id)
    assert report.valid and agent.agent_id in report.present
    assert gateway.roster()[agent.agent_id] == before
    assert gateway.config_path.stat().st_mode & 0o777 == 0o600
    # The gateway may apply the removal and then the restore; it ends up listed.
    await wait_listed(client, agent.agent_id, 15)
    record_timing("hand removal to listed again", time.monotonic() - started)


async def test_hand_removed_entry_the_sidecar_does_not_manage_is_left_removed(
    gateway: RunningGateway,
    agent: AgentEntry,
    reports: tuple[ConfigWatcher, Reports],
) -> None:
    watcher, collected = reports
    watcher.set_managed({"mc-some-other-agent"})
    gateway.edit_config(without_entry(gateway, agent.agent_id))
    report = await collected.wait_for(
        lambda r: agent.agent_id not in r.present, DRIFT_BOUND_S, "entry gone"
    )
    assert kinds(report, agent.agent_id) == set()
    assert agent.agent_id not in gateway.roster()


async def test_restore_policy_off_reports_removal_without_writing(
    gateway: RunningGateway,
    client: OpenClawGatewayClient,
    agent: AgentEntry,
) -> None:
    collected = Reports()
    watcher = ConfigWatcher(
        gateway.config_path, collected, restore_removed=False, gateway_version=client.info.version
    )
    await watcher.start()
    try:
        watcher.set_managed({agent.agent_id})
        gateway.edit_config(without_entry(gateway, agent.agent_id))
        report = await collected.wait_for(
            lambda r: bool(kinds(r, agent.agent_id)), DRIFT_BOUND_S, "drift"
        )
        assert kinds(report, agent.agent_id) == {DriftKind.REMOVED}
        assert agent.agent_id not in gateway.roster()
    finally:
        await watcher.stop()


async def test_invalid_file_is_reported_never_written_and_watching_goes_on(
    gateway: RunningGateway,
    agent: AgentEntry,
    reports: tuple[ConfigWatcher, Reports],
) -> None:
    watcher, collected = reports
    watcher.set_managed({agent.agent_id})
    good = gateway.config_path.read_text()
    broken = good[: len(good) // 2]  # a half-written file
    try:
        started = time.monotonic()
        gateway.write_text(broken)
        report = await collected.wait_for(lambda r: not r.valid, DRIFT_BOUND_S, "invalid")
        record_timing("invalid file to report", time.monotonic() - started)
        assert "syntax" in report.error
        assert report.drift == ()

        # Removing a managed entry while the file is broken must not trigger a write.
        unparsable_without_agent = broken.replace(agent.agent_id, "x")
        gateway.write_text(unparsable_without_agent)
        await watcher.check()
        assert gateway.config_path.read_text() == unparsable_without_agent
    finally:
        gateway.write_text(good)
    report = await collected.wait_for(lambda r: r.valid, DRIFT_BOUND_S, "valid again")
    assert report.drift == ()  # nothing changed against the last valid snapshot
    assert gateway.config_path.read_text() == good


async def test_newer_stamp_in_file_is_reported_and_never_written_by_a_restore(
    gateway: RunningGateway,
    client: OpenClawGatewayClient,
    agent: AgentEntry,
    reports: tuple[ConfigWatcher, Reports],
) -> None:
    watcher, collected = reports
    watcher.set_managed({agent.agent_id})
    original = gateway.read_config()

    def newer_stamp_and_removed(document: dict[str, Any]) -> None:
        document.setdefault("meta", {})["lastTouchedVersion"] = "2099.1.1"
        without_entry(gateway, agent.agent_id)(document)

    try:
        gateway.edit_config(newer_stamp_and_removed)
        report = await collected.wait_for(
            lambda r: DriftKind.RESTORED in kinds(r, agent.agent_id), DRIFT_BOUND_S, "restored"
        )
        assert report.stamp_changed
        # The restore lowered the stamp: a newer one would stop this gateway from starting.
        assert report.last_touched_version == client.info.version
        assert gateway.read_config()["meta"]["lastTouchedVersion"] == client.info.version
        assert not report.stamp_newer_than_gateway
    finally:
        gateway.write_config(original)
    await wait_listed(client, agent.agent_id, 15)
