"""Work done once although every hub on one PostgreSQL runs its loop: each stored webhook
payload wakes its agent once, each alert reaches its receiver once (an event another hub
commits late included), and each gateway of a rollout's wave is applied once, whichever
hubs were nudged to do it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from hub.app import Hub
from hub.fleet.driver import RolloutSpec
from hub.store.event_log import add_event
from tests.integration.multi_hub_setup import add_gateway_and_board, hubs
from tests.support import api, wait_for, webhook_receiver

ONCE_GATEWAY = "gw-once"
COPIES = 12
SECRET = "alert-secret-" + "s" * 20


async def queued_events(hub: Hub, kind: str) -> list[dict[str, Any]]:
    rows = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT gateway_id, detail FROM events WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
    )
    return [{**json.loads(r[1]), "gateway_id": r[0]} for r in rows]


async def apply_counts(hub: Hub) -> dict[str, int]:
    """How many ApplyAgent commands each gateway was sent."""
    rows = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT gateway_id, COUNT(*) FROM commands WHERE kind = 'apply_agent' "
            "GROUP BY gateway_id"
        ).fetchall()
    )
    return {r[0]: int(r[1]) for r in rows}


async def test_each_webhook_payload_is_delivered_once_by_one_of_three_hubs(
    tmp_path: Path,
    shared_database: str,
) -> None:
    async with hubs(tmp_path, shared_database, 3) as three:
        board_id = await add_gateway_and_board(three[0], ONCE_GATEWAY)
        status, lead = await api(
            three[0],
            "POST",
            "/api/v1/agents",
            {"name": "Lead", "board_id": board_id, "is_board_lead": True},
        )
        assert status == 201, lead
        status, webhook = await api(
            three[1],
            "POST",
            f"/api/v1/boards/{board_id}/webhooks",
            {"description": "Triage this alert."},
        )
        assert status == 201, webhook
        payload_ids: list[str] = []
        async with aiohttp.ClientSession() as session:
            for index in range(COPIES):
                hub = three[index % 3]
                assert hub.addresses is not None
                url = f"http://{hub.addresses.http}{webhook['endpoint_path']}"
                async with session.post(url, json={"n": index}) as response:
                    assert response.status == 202
                    payload_ids.append((await response.json())["payload_id"])
                for each in three:  # every hub's worker looks for due payloads at once
                    each.webhooks.worker.nudge()

        async def all_delivered() -> bool:
            rows = await three[2].db.read(
                lambda conn: conn.execute(
                    "SELECT COUNT(*) FROM webhook_payloads WHERE delivered_at IS NULL"
                ).fetchone()
            )
            return int(rows[0]) == 0

        await wait_for(all_delivered, what="every payload delivered")
        queued = await queued_events(three[0], "webhook.delivery.queued")
        assert Counter(e["payload_id"] for e in queued) == Counter(payload_ids)
        wakes = await three[0].db.read(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM commands WHERE gateway_id = ? AND kind = 'wake_agent'",
                (ONCE_GATEWAY,),
            ).fetchone()
        )
        assert int(wakes[0]) == COPIES


async def test_each_alert_reaches_its_receiver_once_from_one_of_three_hubs(
    tmp_path: Path,
    shared_database: str,
) -> None:
    async with webhook_receiver(SECRET) as receiver, hubs(tmp_path, shared_database, 3) as three:
        body = {"name": "page", "kind": "agent_offline", "url": receiver.url, "secret": SECRET}
        status, rule = await api(three[0], "POST", "/api/v1/alerts", body)
        assert status == 201, rule
        queued: list[str] = []
        for index in range(COPIES):
            status, delivery = await api(
                three[index % 3], "POST", f"/api/v1/alerts/{rule['id']}/test"
            )
            assert status == 202, delivery
            queued.append(delivery["id"])
            for each in three:  # every hub's sender looks for due deliveries at once
                each.alerts.sender.nudge()

        async def all_delivered() -> bool:
            status, page = await api(three[1], "GET", f"/api/v1/alerts/{rule['id']}/deliveries")
            assert status == 200, page
            return len(page["items"]) == COPIES and all(
                d["state"] == "delivered" for d in page["items"]
            )

        await wait_for(all_delivered, what="every alert delivered")
        assert sorted(r["alert_id"] for r in receiver.received) == sorted(queued)
        assert all(r["signed"] and r["attempt"] == "1" for r in receiver.received)


async def test_each_gateway_of_a_rollout_wave_is_applied_once_across_hubs(
    tmp_path: Path,
    shared_database: str,
) -> None:
    gateways = [f"gw-roll-{index}" for index in range(4)]
    async with hubs(tmp_path, shared_database, 3) as three:
        for gateway_id in gateways:
            board_id = await add_gateway_and_board(three[0], gateway_id)
            status, agent = await api(
                three[0],
                "POST",
                "/api/v1/agents",
                {"name": f"Main {gateway_id}", "board_id": board_id, "is_board_lead": True},
            )
            assert status == 201, agent
        before = await apply_counts(three[0])
        spec = RolloutSpec(
            name="souls",
            selector="",
            change={"kind": "templates", "soul_template": "# Soul\n\nVersion 2.\n"},
            agents="all",
            canary=0,
            percentages=(100,),  # one wave: all four
            gateway_ids=tuple(gateways),
        )
        created = await three[0].rollouts.create(spec)
        for _ in range(5):  # every hub's driver decides, again and again
            for each in three:
                each.rollouts.nudge()
            await asyncio.sleep(0)

        async def wave_applied() -> bool:
            applied = await queued_events(three[2], "rollout.gateway.applied")
            return len({e["gateway_id"] for e in applied}) == len(gateways)

        await wait_for(wave_applied, what="every gateway of the wave applied", timeout_s=30)
        for each in three:  # and once more: nothing is applied again
            each.rollouts.nudge()
        await asyncio.sleep(0.5)
        applied = await queued_events(three[0], "rollout.gateway.applied")
        assert Counter(e["gateway_id"] for e in applied) == Counter(gateways)
        assert all(e["rollout_id"] == created.id for e in applied)
        after = await apply_counts(three[1])
        assert {g: after[g] - before.get(g, 0) for g in gateways} == dict.fromkeys(gateways, 1)


async def test_an_event_committed_late_by_another_hub_is_still_alerted_on(
    tmp_path: Path,
    shared_database: str,
) -> None:
    """A writer that takes an event id and holds its commit back holds back the next
    event too (ids follow commit order: hub/store/postgres.py FEED_ORDER), so the alert
    cursor cannot pass over it; both are alerted on."""
    async with webhook_receiver(SECRET) as receiver, hubs(tmp_path, shared_database, 2) as two:
        body = {
            "name": "halts",
            "kind": "rollout_halted",
            "url": receiver.url,
            "secret": SECRET,
            "cooldown_s": 0,
        }
        status, rule = await api(two[0], "POST", "/api/v1/alerts", body)
        assert status == 201, rule
        # Another writer takes an event id and holds its commit back...
        async with await psycopg.AsyncConnection.connect(shared_database) as late:
            await late.execute(
                "INSERT INTO events (at, kind, detail) VALUES "
                "(extract(epoch from now()), 'rollout.halted', '{\"rollout_id\": \"late\"}')"
            )
            # ... while a hub logs an event: it waits for the earlier one's commit.
            early = asyncio.ensure_future(
                two[1].db.write(lambda conn: add_event(conn, "rollout.halted", rollout_id="early"))
            )
            await asyncio.sleep(1.5)  # a watcher pass runs meanwhile
            assert not early.done(), "an event took its id while an earlier one was open"
            await late.commit()
        await early
        for hub in two:
            hub.alerts._events_due.set()
        await wait_for(
            lambda: len(receiver.bodies()) == 2, what="the alert on the event committed late"
        )
        assert sorted(b["subject"] for b in receiver.bodies()) == [
            "rollout:early",
            "rollout:late",
        ]
