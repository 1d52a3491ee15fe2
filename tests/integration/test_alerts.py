"""Alerts for real: a hub on loopback, conditions provoked through the lifecycle, the link
and the CA, and a receiving aiohttp server on loopback that checks each signature."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.alerts.rules import AlertPolicy
from hub.app import Hub
from hub.doctor import HubDoctor, HubDoctorInput
from hub.store.event_log import add_event
from hub.webhooks.rules import RetryPolicy
from missioncontrol.doctor import Verdict as DoctorVerdict
from missioncontrol.netaddr import HostPort
from protos import link_pb2 as pb
from sidecar.link.enrollment import enroll
from tests.support import (
    JumpClock,
    WebhookReceiver,
    api,
    connected_sidecar,
    hub_config,
    running_hub,
    wait_for,
    webhook_receiver,
)

SECRET = "alert-secret-" + "s" * 20
FAST = AlertPolicy(
    check_interval_s=0.5,
    retry=RetryPolicy(initial_s=0.1, factor=2.0, max_s=0.5, max_attempts=5),
    attempt_timeout_s=5.0,
)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with webhook_receiver(SECRET) as found:
        yield found


def alert_hub(tmp_path: Path, *, clock: JumpClock | None = None, **overrides: Any) -> Hub:
    config = dataclasses.replace(hub_config(tmp_path / "hub"), **overrides)
    return Hub(config, clock=clock or JumpClock(), alert_policy=FAST)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    instance = alert_hub(tmp_path, checkin_deadline_s=1.0)
    await instance.start()
    yield instance
    await instance.stop()


async def new_rule(hub: Hub, receiver: WebhookReceiver, kind: str, **fields: Any) -> dict[str, Any]:
    body = {"name": f"{kind} page", "kind": kind, "url": receiver.url, "secret": SECRET, **fields}
    status, rule = await api(hub, "POST", "/api/v1/alerts", body)
    assert status == 201, rule
    assert "secret" not in rule and "secret_sealed" not in rule
    return rule


async def deliveries(hub: Hub, rule_id: str) -> list[dict[str, Any]]:
    status, page = await api(hub, "GET", f"/api/v1/alerts/{rule_id}/deliveries")
    assert status == 200, page
    return list(page["items"])


async def delivered(hub: Hub, rule_id: str, count: int = 1) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        items = await deliveries(hub, rule_id)
        done = [d for d in items if d["state"] == "delivered"]
        return items if len(done) >= count else None

    return list(await wait_for(check, timeout_s=30, what=f"{count} alert(s) delivered"))


async def delivery(hub: Hub, rule_id: str, delivery_id: str) -> dict[str, Any]:
    status, one = await api(hub, "GET", f"/api/v1/alerts/{rule_id}/deliveries/{delivery_id}")
    assert status == 200, one
    return dict(one)


async def log_event(hub: Hub, kind: str, **fields: Any) -> None:
    await hub.db.write(lambda conn: add_event(conn, kind, **fields))


# ------------------------------------------------------------------ each kind fires


async def test_agent_offline_through_the_lifecycle_arrives_signed(
    hub: Hub, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    rule = await new_rule(hub, receiver, "agent_offline", cooldown_s=0)
    async with connected_sidecar(hub, tmp_path, "gw-alerts") as (_, gateway):
        gateway.run_outcome = gateway.run_outcome.ERROR  # wakes never check it in
        status, board = await api(
            hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": "gw-alerts"}
        )
        assert status == 201, board
        status, agent = await api(
            hub, "POST", "/api/v1/agents", {"name": "Worker", "board_id": board["id"]}
        )
        assert status == 201, agent
        items = await delivered(hub, rule["id"])
    [sent] = receiver.received
    assert sent["signed"] is True
    payload = sent["body"]
    assert payload["kind"] == "agent_offline" and payload["rule"]["id"] == rule["id"]
    assert payload["agent_id"] == agent["id"] and payload["board_id"] == board["id"]
    assert payload["subject"] == f"agent:{agent['id']}"
    assert "no_checkin" in payload["summary"]
    assert sent["alert_id"] == payload["id"] == items[0]["id"]
    one = await delivery(hub, rule["id"], payload["id"])
    assert one["payload"] == payload
    assert [(a["attempt"], a["status"], a["error"]) for a in one["attempt_log"]] == [(1, 200, None)]
    assert one["attempt_log"][0]["response_excerpt"] == "answered 200"


async def test_gateway_disconnected_longer_than_its_threshold(
    hub: Hub, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    await hub.store.create_gateway("gw-other", "other")
    rule = await new_rule(hub, receiver, "gateway_disconnected", disconnected_for_s=1)
    other = await new_rule(
        hub, receiver, "gateway_disconnected", disconnected_for_s=1, gateway_id="gw-other"
    )
    async with connected_sidecar(hub, tmp_path, "gw-away"):
        pass  # connected, then the sidecar stops
    await delivered(hub, rule["id"])
    [payload] = receiver.bodies("gateway_disconnected")
    assert payload["gateway_id"] == "gw-away" and payload["subject"] == "gateway:gw-away"
    assert "disconnected for" in payload["summary"]
    assert await deliveries(hub, other["id"]) == []  # filtered to a gateway that never left
    # Still away at every later check: the same disconnect does not fire again.
    await asyncio.sleep(FAST.check_interval_s * 3)
    assert len(await deliveries(hub, rule["id"])) == 1


async def test_certificate_expiring_within_its_window(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    hub = alert_hub(tmp_path, insecure_dev=False, cert_lifetime_days=1.0)
    await hub.start()
    try:
        rule = await new_rule(hub, receiver, "certificate_expiring", expiring_within_days=2)
        far = await new_rule(hub, receiver, "certificate_expiring", expiring_within_days=0.5)
        status, created = await api(hub, "POST", "/api/v1/gateways", {"name": "host-1"})
        assert status == 201, created
        assert hub.addresses is not None and hub.addresses.enroll is not None
        await enroll(hub.addresses.enroll, created["join_token"], tmp_path / "sc")
        await delivered(hub, rule["id"])
        [payload] = receiver.bodies("certificate_expiring")
        assert payload["gateway_id"] == created["id"]
        assert "expires in" in payload["summary"] and payload["detail"]["not_after"]
        await asyncio.sleep(FAST.check_interval_s * 3)  # a few checks pass
        assert await deliveries(hub, far["id"]) == []  # a day left is not within half a day
    finally:
        await hub.stop()


async def test_drift_reported_by_a_sidecar(
    hub: Hub, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-drift") as (sidecar, _):
        rule = await new_rule(hub, receiver, "drift_found", gateway_id="gw-drift")
        drift = pb.Drift(agent_id="mc-a1", kind=pb.Drift.REMOVED, detail="entry removed by hand")
        state = pb.GatewayState(reachable=True, config_valid=True, drift=[drift])
        sidecar.link.send(pb.SidecarMessage(gateway_state=state))
        await delivered(hub, rule["id"])
    [payload] = receiver.bodies("drift_found")
    assert payload["gateway_id"] == "gw-drift" and payload["agent_id"] == "mc-a1"
    assert payload["detail"]["drift"] == "REMOVED"


async def test_rollout_halted_event_fires_and_filters_hold(
    hub: Hub, receiver: WebhookReceiver
) -> None:
    await hub.store.create_gateway("gw-r", "r")
    rule = await new_rule(hub, receiver, "rollout_halted")
    elsewhere = await new_rule(hub, receiver, "rollout_halted", gateway_id="gw-r")
    await log_event(hub, "rollout.halted", rollout_id="ro-1", reason="2 of 5 gateways failed")
    await delivered(hub, rule["id"])
    [payload] = receiver.bodies("rollout_halted")
    assert payload["subject"] == "rollout:ro-1"
    assert "2 of 5 gateways failed" in payload["summary"]
    assert await deliveries(hub, elsewhere["id"]) == []  # matched in the same pass


# ------------------------------------------------------------------ delivery


async def test_retried_with_backoff_until_the_receiver_recovers(
    hub: Hub, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [500, 503]
    rule = await new_rule(hub, receiver, "rollout_halted")
    await log_event(hub, "rollout.halted", rollout_id="ro-2")
    [item] = await delivered(hub, rule["id"])
    assert item["attempts"] == 3 and item["last_error"] is None
    assert [r["attempt"] for r in receiver.received] == ["1", "2", "3"]
    assert len({r["alert_id"] for r in receiver.received}) == 1
    assert all(r["signed"] for r in receiver.received)
    assert len({json.dumps(r["body"]) for r in receiver.received}) == 1  # the same body
    one = await delivery(hub, rule["id"], item["id"])
    assert [a["status"] for a in one["attempt_log"]] == [500, 503, 200]
    assert one["attempt_log"][0]["error"] == "the receiver answered 500"
    assert hub.metrics.alert_attempts.labels("retry")._value.get() == 2


async def test_redirects_are_not_followed(hub: Hub, receiver: WebhookReceiver) -> None:
    receiver.statuses = [302]
    rule = await new_rule(hub, receiver, "rollout_halted")
    await log_event(hub, "rollout.halted", rollout_id="ro-3")
    [item] = await delivered(hub, rule["id"])
    one = await delivery(hub, rule["id"], item["id"])
    assert one["attempt_log"][0]["status"] == 302
    assert "redirects are not followed" in one["attempt_log"][0]["error"]
    assert receiver.other_hits == 0


async def test_gives_up_after_the_last_attempt_and_the_doctor_says_so(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [500] * 10
    policy = dataclasses.replace(FAST, retry=RetryPolicy(initial_s=0.05, max_s=0.1, max_attempts=2))
    hub = Hub(hub_config(tmp_path / "hub"), alert_policy=policy)
    doctor = HubDoctorInput(
        data_dir=hub.config.data_dir,
        http_listen=HostPort("127.0.0.1", 0),
        link_listen=HostPort("127.0.0.1", 0),
        enroll_listen=HostPort("127.0.0.1", 0),
        insecure_dev=True,
        cors_origins=(),
        checkin_deadline_s=30.0,
        environ={},
    )
    await hub.start()
    try:
        rule = await new_rule(hub, receiver, "rollout_halted")
        report = await HubDoctor(doctor).run()
        assert report.verdict("alerts.delivery") is DoctorVerdict.OK
        await log_event(hub, "rollout.halted", rollout_id="ro-4")

        async def failed() -> list[dict[str, Any]]:
            return [d for d in await deliveries(hub, rule["id"]) if d["state"] == "failed"]

        [item] = await wait_for(failed, timeout_s=30, what="given up")
        assert item["attempts"] == 2 and item["next_attempt_at"] is None
        assert len(receiver.received) == 2
        report = await HubDoctor(doctor).run()
    finally:
        await hub.stop()
    assert report.verdict("alerts.delivery") is DoctorVerdict.WARN
    [finding] = report.by_check("alerts.delivery")
    assert rule["id"] in finding.summary and "1 alerts given up" in finding.summary
    assert "the receiver answered 500" in finding.cause
    assert f"/api/v1/alerts/{rule['id']}/test" in finding.fix


async def test_a_restart_mid_retry_still_delivers(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [500] * 1000
    policy = dataclasses.replace(FAST, retry=RetryPolicy(initial_s=0.3, max_s=0.3, max_attempts=50))
    first = Hub(hub_config(tmp_path / "hub"), alert_policy=policy)
    await first.start()
    try:
        rule = await new_rule(first, receiver, "rollout_halted")
        await log_event(first, "rollout.halted", rollout_id="ro-5")

        async def retrying() -> bool:
            items = await deliveries(first, rule["id"])
            return bool(items) and items[0]["state"] == "pending" and items[0]["attempts"] >= 1

        await wait_for(retrying, timeout_s=30, what="a failed first attempt")
    finally:
        await first.stop()
    receiver.statuses = []  # the receiver recovers while the hub is down
    second = Hub(hub_config(tmp_path / "hub"), alert_policy=policy)
    await second.start()
    try:
        [item] = await delivered(second, rule["id"])
        assert item["attempts"] >= 2
        assert len({r["alert_id"] for r in receiver.received}) == 1  # one alert, not two
        assert receiver.received[-1]["signed"] is True
    finally:
        await second.stop()


async def test_events_logged_while_no_hub_watched_are_alerted_at_the_next_start(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    from hub.store.database import Database

    async with running_hub(tmp_path / "hub", alert_policy=FAST) as first:
        rule = await new_rule(first, receiver, "rollout_halted")
        await log_event(first, "rollout.halted", rollout_id="seen-live")
        await delivered(first, rule["id"])
    # Written to the same database by another writer while no hub runs.
    db = Database(first.config.database_path)
    db.open()
    try:
        await db.write(lambda conn: add_event(conn, "rollout.halted", rollout_id="while-down"))
    finally:
        await db.close()
    async with running_hub(tmp_path / "hub", alert_policy=FAST) as second:
        await delivered(second, rule["id"], 2)
    assert [b["subject"] for b in receiver.bodies()] == ["rollout:seen-live", "rollout:while-down"]


async def test_cooldown_holds_back_repeats_per_subject(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    clock = JumpClock()
    hub = alert_hub(tmp_path, clock=clock)
    await hub.start()
    try:
        await hub.store.create_gateway("gw-flap", "flap")
        rule = await new_rule(hub, receiver, "drift_found", cooldown_s=600)

        async def drift(agent_id: str) -> None:
            state = pb.GatewayState(
                reachable=True,
                config_valid=True,
                drift=[pb.Drift(agent_id=agent_id, kind=pb.Drift.CHANGED, detail="edited")],
            )
            await hub.store.record_gateway_state("gw-flap", state)

        for _ in range(5):
            await drift("mc-flappy")
        await drift("mc-other")  # another subject: not held back by the first one's cooldown
        await delivered(hub, rule["id"], 2)
        subjects = sorted(d["subject"] for d in await deliveries(hub, rule["id"]))
        assert subjects == ["gateway:gw-flap/agent:mc-flappy", "gateway:gw-flap/agent:mc-other"]
        assert hub.metrics.alerts.labels("drift_found", "suppressed")._value.get() == 4
        clock.advance(601)  # the cooldown is over: the next one goes out, counting the held
        await drift("mc-flappy")
        await delivered(hub, rule["id"], 3)
        latest = receiver.bodies()[-1]
        assert latest["subject"] == "gateway:gw-flap/agent:mc-flappy"
        assert latest["suppressed_since_last"] == 4
    finally:
        await hub.stop()


async def test_a_flapping_gateway_pages_once_per_cooldown_and_again_if_still_away(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    clock = JumpClock()
    hub = alert_hub(tmp_path, clock=clock)
    await hub.start()
    try:
        rule = await new_rule(
            hub, receiver, "gateway_disconnected", disconnected_for_s=1, cooldown_s=600
        )
        held = hub.metrics.alerts.labels("gateway_disconnected", "suppressed")
        async with connected_sidecar(hub, tmp_path, "gw-flap"):
            pass
        await delivered(hub, rule["id"])
        async with connected_sidecar(hub, tmp_path, "gw-flap"):
            pass  # back, and away again within the cooldown
        await wait_for(lambda: held._value.get() == 1, timeout_s=30, what="held back")
        await asyncio.sleep(FAST.check_interval_s * 3)  # later checks do not count it again
        assert held._value.get() == 1 and len(receiver.received) == 1
        clock.advance(601)  # the cooldown ends with the gateway still away
        await delivered(hub, rule["id"], 2)
        latest = receiver.bodies()[-1]
        assert latest["subject"] == "gateway:gw-flap" and latest["suppressed_since_last"] == 1
    finally:
        await hub.stop()


async def test_a_disabled_rule_fires_nothing_and_the_log_is_not_replayed(
    hub: Hub, receiver: WebhookReceiver
) -> None:
    await log_event(hub, "rollout.halted", rollout_id="before-the-rule")
    rule = await new_rule(hub, receiver, "rollout_halted", enabled=False)
    await log_event(hub, "rollout.halted", rollout_id="while-disabled")
    status, _ = await api(hub, "PATCH", f"/api/v1/alerts/{rule['id']}", {"enabled": True})
    assert status == 200
    await log_event(hub, "rollout.halted", rollout_id="enabled")
    await delivered(hub, rule["id"])
    assert [b["subject"] for b in receiver.bodies()] == ["rollout:enabled"]


async def test_an_entry_that_cannot_be_read_is_skipped_and_later_ones_still_fire(
    hub: Hub, receiver: WebhookReceiver
) -> None:
    rule = await new_rule(hub, receiver, "rollout_halted")

    def write_bad(conn: Any) -> None:  # a row whose detail is not an object
        conn.execute(
            "INSERT INTO events (at, kind, detail) VALUES (strftime('%s'), 'rollout.halted', '[1]')"
        )

    await hub.db.write(write_bad)
    await log_event(hub, "rollout.halted", rollout_id="after-the-bad-one")
    await delivered(hub, rule["id"])
    assert [b["subject"] for b in receiver.bodies()] == ["rollout:after-the-bad-one"]


# ------------------------------------------------------------------ the API


async def test_a_test_alert_goes_out_now_past_the_cooldown(
    hub: Hub, receiver: WebhookReceiver
) -> None:
    rule = await new_rule(hub, receiver, "agent_offline", cooldown_s=3600)
    for _ in range(2):
        status, queued = await api(hub, "POST", f"/api/v1/alerts/{rule['id']}/test")
        assert status == 202 and queued["state"] == "pending" and queued["subject"] == "test"
    await delivered(hub, rule["id"], 2)
    assert all(r["signed"] for r in receiver.received)
    assert [b["detail"] for b in receiver.bodies()] == [{"test": True}] * 2
    assert "nothing is wrong" in receiver.bodies()[0]["summary"]
    status, missing = await api(hub, "POST", "/api/v1/alerts/no-such-rule/test")
    assert status == 404 and "not found" in missing["detail"]


async def test_rules_are_listed_read_updated_and_deleted(
    hub: Hub, receiver: WebhookReceiver
) -> None:
    a = await new_rule(hub, receiver, "rollout_halted")
    b = await new_rule(hub, receiver, "gateway_disconnected", disconnected_for_s=60)
    status, page = await api(hub, "GET", "/api/v1/alerts?limit=1")
    assert status == 200 and page["total"] == 2 and [r["id"] for r in page["items"]] == [a["id"]]
    status, page = await api(hub, "GET", "/api/v1/alerts?kind=gateway_disconnected")
    assert [r["id"] for r in page["items"]] == [b["id"]]
    status, changed = await api(
        hub, "PATCH", f"/api/v1/alerts/{b['id']}", {"disconnected_for_s": 120, "name": "away"}
    )
    assert status == 200 and changed["disconnected_for_s"] == 120 and changed["name"] == "away"
    status, gone = await api(hub, "DELETE", f"/api/v1/alerts/{a['id']}")
    assert status == 200 and gone == {"ok": True, "deliveries_deleted": 0}
    status, missing = await api(hub, "GET", f"/api/v1/alerts/{a['id']}")
    assert status == 404 and "not found" in missing["detail"]
    status, missing = await api(hub, "GET", f"/api/v1/alerts/{a['id']}/deliveries")
    assert status == 404
    status, doc = await api(hub, "GET", "/openapi.json")
    assert status == 200 and "/api/v1/alerts/{rule_id}/deliveries/{delivery_id}" in doc["paths"]


BAD_RULES = [
    ({"kind": "agent_exploded"}, "kind", "agent_offline"),
    ({"url": "ftp://example.com/x"}, "url", "http:// or https://"),
    ({"url": "file:///etc/passwd"}, "url", "http:// or https://"),
    ({"url": "javascript:alert(1)"}, "url", "http:// or https://"),
    ({"url": "not a url"}, "url", "scheme"),
    ({"url": "http://"}, "url", "names no host"),
    ({"url": "http://user:pw@127.0.0.1/x"}, "url", "credentials"),
    ({"url": "http://127.0.0.1:99999/x"}, "url", "not a URL"),
    ({"url": "http://127.0.0.1/" + "x" * 3000}, "url", "at most"),
    ({"name": "n" * 201}, "name", "at most 200"),
    ({"secret": "short"}, "secret", "at least 16"),
    ({"secret": "s" * 513}, "secret", "at most 512"),
    ({"cooldown_s": -1}, "cooldown_s", "greater than or equal"),
    ({"colour": "red"}, "colour", "this request takes"),
    ({"disconnected_for_s": 10}, "disconnected_for_s", "does not take disconnected_for_s"),
    ({"kind": "gateway_disconnected"}, "disconnected_for_s", "needs disconnected_for_s"),
    ({"kind": "certificate_expiring"}, "expiring_within_days", "needs expiring_within_days"),
    (
        {"kind": "certificate_expiring", "expiring_within_days": 3, "disconnected_for_s": 5},
        "disconnected_for_s",
        "it takes expiring_within_days",
    ),
    (
        {"kind": "gateway_disconnected", "disconnected_for_s": 5, "board_id": "b"},
        "board_id",
        "filter it with gateway_id",
    ),
    ({"board_id": "no-such-board"}, "board_id", "does not exist"),
    ({"expiring_within_days": 0}, "expiring_within_days", "greater than 0"),
    ({"gateway_id": "no-such-gateway"}, "gateway_id", "does not exist"),
]


@pytest.mark.parametrize(("change", "loc", "phrase"), BAD_RULES)
async def test_bad_rules_get_a_422_that_names_the_fix(
    hub: Hub, receiver: WebhookReceiver, change: dict[str, Any], loc: str | None, phrase: str
) -> None:
    body = {"name": "n", "kind": "agent_offline", "url": receiver.url, "secret": SECRET, **change}
    status, error = await api(hub, "POST", "/api/v1/alerts", body)
    assert status == 422, error
    assert "request_id" in error
    text = json.dumps(error["detail"])
    assert phrase in text, text
    if loc is not None:
        assert any(loc in d["loc"] for d in error["detail"]), error["detail"]
    status, page = await api(hub, "GET", "/api/v1/alerts")
    assert page["total"] == 0  # nothing was stored


async def test_bad_updates_get_a_422_and_change_nothing(
    hub: Hub, receiver: WebhookReceiver
) -> None:
    rule = await new_rule(hub, receiver, "rollout_halted")
    for change, phrase in [
        ({"url": "gopher://x"}, "http:// or https://"),
        ({"kind": "drift_found"}, "this request takes"),
        ({"expiring_within_days": 3}, "does not take expiring_within_days"),
        ({"name": None}, "cannot be null"),
    ]:
        status, error = await api(hub, "PATCH", f"/api/v1/alerts/{rule['id']}", change)
        assert status == 422 and phrase in json.dumps(error["detail"]), (change, error)
    status, same = await api(hub, "GET", f"/api/v1/alerts/{rule['id']}")
    assert same == rule
    status, error = await api(hub, "GET", f"/api/v1/alerts/{rule['id']}/deliveries?state=lost")
    assert status == 422
