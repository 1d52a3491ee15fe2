"""Both /metrics endpoints, scraped and parsed with prometheus-client's own parser."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from hub.app import Hub
from missioncontrol.netaddr import HostPort
from sidecar.app import Sidecar
from sidecar.gateway import RunEnded, RunKind, RunOutcome, RunState
from tests.integration.agent_setup import GATEWAY, all_commands_acked, provision
from tests.support import (
    ADMIN_TOKEN,
    RecordingGateway,
    fast_backoff,
    hub_config,
    running_hub,
    sidecar_config,
    wait_for,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(url: str, token: str | None = None) -> tuple[int, Samples, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body = await response.text()
        content_type = response.headers.get("Content-Type", "")
        if response.status != 200:
            return response.status, {}, content_type
        return response.status, parse(body), content_type


def metrics_url(hub: Hub) -> str:
    assert hub.addresses is not None
    return f"{hub.addresses.http_url}/metrics"


async def test_hub_and_sidecar_metrics_scrape_and_move(tmp_path: Path, database: str) -> None:
    async with running_hub(tmp_path / "hub", database=database) as hub:
        status, _, _ = await scrape(metrics_url(hub))
        assert status == 401  # the admin token is required by default
        status, before, content_type = await scrape(metrics_url(hub), ADMIN_TOKEN)
        assert status == 200 and content_type.startswith("text/plain")
        assert value(before, "mc_hub_link_streams") == 0

        tokens = await provision(hub, tmp_path / "workspaces", 2)
        config = dataclasses.replace(
            sidecar_config(tmp_path / "sc", hub.addresses.link, gateway_id=GATEWAY,  # type: ignore[union-attr]
                           workspace_root=tmp_path / "workspaces"),
            metrics_listen=HostPort("127.0.0.1", 0),
        )  # fmt: skip
        sidecar = Sidecar(config, gateway=RecordingGateway(), link_backoff=fast_backoff())
        await sidecar.start()
        try:
            await wait_for(lambda: all_commands_acked(hub), what="credentials applied")
            assert sidecar.metrics_server is not None and sidecar.metrics_server.address
            sidecar_url = f"http://{sidecar.metrics_server.address}/metrics"
            async with aiohttp.ClientSession() as http:
                for agent_id, token in tokens.items():
                    for _ in range(3):
                        async with http.post(
                            f"{sidecar.agent_api.url}/api/v1/agent/heartbeat",
                            headers={"X-Agent-Token": token},
                        ) as response:
                            assert response.status == 202
                    del agent_id
                async with http.post(
                    f"{sidecar.agent_api.url}/api/v1/agent/heartbeat",
                    headers={"X-Agent-Token": "nope.nope"},
                ) as response:
                    assert response.status == 401

            async def hub_ingested() -> bool:
                _, now, _ = await scrape(metrics_url(hub), ADMIN_TOKEN)
                return value(now, "mc_hub_heartbeats_ingested_total") >= 2

            await wait_for(hub_ingested, what="heartbeats ingested by the hub")
            _, side, _ = await scrape(sidecar_url)
            assert value(side, "mc_sidecar_heartbeats_accepted_total") == 6
            assert value(side, "mc_sidecar_heartbeats_refused_total", reason="unauthenticated") == 1
            assert value(side, "mc_sidecar_link_connected") == 1
            assert value(side, "mc_sidecar_gateway_reachable") == 1
            assert value(side, "mc_sidecar_runtime_checkins_total") == 0
            assert value(side, "mc_sidecar_agent_conditions") == 0
            gateway = sidecar.gateway
            assert isinstance(gateway, RecordingGateway)
            turn = RunOutcome("run", RunState.FINAL, "", model_turn=True)
            gateway.emit(RunEnded(next(iter(tokens)), RunKind.HEARTBEAT, turn))
            gateway.set_reachable(False)
            _, side, _ = await scrape(sidecar_url)
            assert value(side, "mc_sidecar_runtime_checkins_total") == 1
            assert value(side, "mc_sidecar_agent_conditions") == 1  # the gateway is gone
            gateway.set_reachable(True)
            assert value(side, "mc_sidecar_link_streams_opened_total") == 1
            assert (
                value(
                    side, "mc_sidecar_commands_applied_total", kind="apply_agent", result="applied"
                )
                == 2
            )
            assert value(side, "mc_sidecar_command_duration_seconds_count", kind="apply_agent") == 2

            _, after, _ = await scrape(metrics_url(hub), ADMIN_TOKEN)
            assert value(after, "mc_hub_link_streams") == 1
            assert value(after, "mc_hub_commands_queued_total") >= 2
            assert value(after, "mc_hub_commands_acked_total", outcome="applied") >= 2
            assert value(after, "mc_hub_commands_pending") == 0
            assert value(after, "mc_hub_db_group_commits_total") > value(
                before, "mc_hub_db_group_commits_total"
            )
            assert value(after, "mc_hub_db_group_commit_duration_seconds_count") > 0
            assert value(after, "mc_hub_db_size_bytes") > 0
            requests = value(
                after,
                "mc_hub_http_requests_total",
                route="/metrics",
                method="GET",
                status="200",
            )
            assert requests >= 2
            assert (
                value(
                    after,
                    "mc_hub_http_requests_total",
                    route="/metrics",
                    method="GET",
                    status="401",
                )
                == 1
            )
        finally:
            await sidecar.stop()


async def test_metrics_public_serves_without_the_token_and_hubs_in_one_process_count_apart(
    tmp_path: Path,
) -> None:
    public = Hub(dataclasses.replace(hub_config(tmp_path / "a"), metrics_public=True))
    await public.start()
    try:
        async with running_hub(tmp_path / "b") as other:
            await other.store.create_gateway("only-in-b", "b")
            for _ in range(3):
                status, _, _ = await scrape(metrics_url(other), ADMIN_TOKEN)
            status, samples, _ = await scrape(metrics_url(public))
            assert status == 200
            # The other hub's scrapes and writes are not in this hub's registry.
            assert (
                value(
                    samples,
                    "mc_hub_http_requests_total",
                    route="/metrics",
                    method="GET",
                    status="200",
                )
                == 0
            )
            assert value(samples, "mc_hub_build_info", version=_version()) == 1
    finally:
        await public.stop()


def _version() -> str:
    from missioncontrol.version import VERSION

    return VERSION
