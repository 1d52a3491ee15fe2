"""Board webhooks: CRUD, sealed secrets, the public ingest checks, and retried delivery.

A real hub on loopback; delivery tests add an in-process sidecar whose gateway records
every wake message, so a delivered payload is seen where the agent would see it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.webhooks.rules import RetryPolicy
from sidecar.app import Sidecar
from tests.support import (
    ADMIN_TOKEN,
    RecordingGateway,
    api,
    fast_backoff,
    running_hub,
    sidecar_config,
    wait_for,
)

GATEWAY_ID = "gw-hooks"
SECRET = "s3cret-webhook-key"
FAST_RETRY = RetryPolicy(initial_s=0.05, factor=2.0, max_s=0.2, max_attempts=1000)


@dataclass
class MessageGateway(RecordingGateway):
    """Records the message of every wake, as the agent would receive it."""

    messages: list[tuple[str, str]] = field(default_factory=list)

    async def wake(self, agent_id: str, message: str, idempotency_key: str) -> str:
        run_id = await super().wake(agent_id, message, idempotency_key)
        self.messages.append((agent_id, message))
        return run_id

    def containing(self, needle: str) -> list[tuple[str, str]]:
        return [(agent, message) for agent, message in self.messages if needle in message]


@pytest.fixture
async def hub(tmp_path: Path, database: str) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path / "hub", database, webhook_retry=FAST_RETRY) as instance:
        yield instance


@pytest.fixture
async def board_id(hub: Hub) -> str:
    return await add_board(hub)


@pytest.fixture
async def connected(hub: Hub, tmp_path: Path) -> AsyncIterator[MessageGateway]:
    assert hub.addresses is not None
    gateway = MessageGateway()
    config = sidecar_config(
        tmp_path / "sc", hub.addresses.link, gateway_id=GATEWAY_ID, workspace_root=tmp_path / "ws"
    )
    sidecar = Sidecar(config, gateway=gateway, link_backoff=fast_backoff())
    await sidecar.start()
    await wait_for(lambda: _sidecar_ready(hub), what="sidecar connected")
    yield gateway
    await sidecar.stop()


async def _sidecar_ready(hub: Hub) -> bool:
    row = await hub.store.get_gateway(GATEWAY_ID)
    return bool(row and row.workspace_root and hub.registry.get(GATEWAY_ID))


async def add_board(hub: Hub, name: str = "Ops") -> str:
    """A board on GATEWAY_ID, written straight into the store (the gateway row too)."""
    board_id = str(uuid.uuid4())
    now = time.time()

    def op(conn: Any) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (GATEWAY_ID, GATEWAY_ID, now, now),
        )
        conn.execute(
            "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (board_id, GATEWAY_ID, name, name.lower(), now, now),
        )

    await hub.db.write(op)
    return board_id


async def create_agent(hub: Hub, board_id: str, *, lead: bool = False) -> dict[str, Any]:
    body = {"name": "Lead" if lead else "Worker", "board_id": board_id, "is_board_lead": lead}
    status, agent = await api(hub, "POST", "/api/v1/agents", body)
    assert status == 201, agent
    return agent


async def create_webhook(hub: Hub, board_id: str, **fields: Any) -> dict[str, Any]:
    body = {"description": "Triage this alert and open a task.", **fields}
    status, webhook = await api(hub, "POST", f"/api/v1/boards/{board_id}/webhooks", body)
    assert status == 201, webhook
    return webhook


async def post(
    hub: Hub, path: str, data: Any = b"{}", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    """An unauthenticated POST, as an outside sender makes it: (status, headers, JSON);
    header names in lower case."""
    assert hub.addresses is not None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(f"http://{hub.addresses.http}{path}", data=data, headers=headers) as r,
    ):
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def payload_state(hub: Hub, webhook: dict[str, Any], payload_id: str) -> dict[str, Any]:
    status, body = await api(hub, "GET", f"{webhook['endpoint_path']}/payloads/{payload_id}")
    assert status == 200, body
    return body


# ------------------------------------------------------------------------ CRUD


async def test_crud_round_trip_never_returns_the_secret(hub: Hub, board_id: str) -> None:
    base = f"/api/v1/boards/{board_id}/webhooks"
    created = await create_webhook(hub, board_id, secret=SECRET, signature_header="X-Signature")
    assert created["board_id"] == board_id and created["enabled"] is True
    assert created["has_secret"] is True and created["signature_header"] == "X-Signature"
    assert created["endpoint_path"] == f"{base}/{created['id']}"
    assert created["agent_id"] is None and created["created_at"].endswith("Z")
    answers = [created]

    status, listed = await api(hub, "GET", base)
    assert status == 200 and listed["total"] == 1 and listed["items"][0]["id"] == created["id"]
    status, got = await api(hub, "GET", created["endpoint_path"])
    assert status == 200 and got == created
    status, patched = await api(
        hub, "PATCH", created["endpoint_path"], {"description": "New", "enabled": False}
    )
    assert status == 200, patched
    assert patched["description"] == "New" and patched["enabled"] is False
    assert patched["has_secret"] is True  # untouched fields stay
    status, cleared = await api(
        hub, "PATCH", created["endpoint_path"], {"secret": None, "signature_header": None}
    )
    assert status == 200 and cleared["has_secret"] is False and cleared["signature_header"] is None
    answers += [listed, got, patched, cleared]
    for answer in answers:
        assert SECRET not in json.dumps(answer) and "secret_sealed" not in json.dumps(answer)

    status, deleted = await api(hub, "DELETE", created["endpoint_path"])
    assert status == 200 and deleted["ok"] is True
    status, _ = await api(hub, "GET", created["endpoint_path"])
    assert status == 404
    status, listed = await api(hub, "GET", base)
    assert listed["total"] == 0


async def test_secret_is_sealed_at_rest_and_bound_to_its_webhook(hub: Hub, board_id: str) -> None:
    first = await create_webhook(hub, board_id, secret=SECRET)
    second = await create_webhook(hub, board_id, secret=SECRET)
    rows = await hub.db.read(
        lambda conn: dict(conn.execute("SELECT id, secret_sealed FROM board_webhooks").fetchall())
    )
    sealed = rows[first["id"]]
    assert SECRET.encode() not in sealed and sealed != rows[second["id"]]  # fresh nonce each
    assert hub.webhooks is not None
    box = hub.webhooks.box
    assert box.open(sealed, context=first["id"].encode()) == SECRET.encode()
    with pytest.raises(ValueError, match="another row"):
        box.open(sealed, context=second["id"].encode())


async def test_create_and_update_refuse_what_cannot_be_used(
    hub: Hub, board_id: str, connected: MessageGateway
) -> None:
    base = f"/api/v1/boards/{board_id}/webhooks"
    other_board = await add_board(hub, "Other")
    stranger = await create_agent(hub, other_board)
    status, body = await api(hub, "POST", base, {"description": "x", "agent_id": stranger["id"]})
    assert status == 422 and "agent_id" in json.dumps(body["detail"])
    status, body = await api(hub, "POST", base, {"description": "x", "agent_id": "nobody"})
    assert status == 422
    for bad in ({"description": ""}, {"description": "x", "bogus": 1}, {"enabled": True}):
        status, body = await api(hub, "POST", base, bad)
        assert status == 422, bad
    status, body = await api(
        hub, "POST", base, {"description": "x", "signature_header": "Bad Header"}
    )
    assert status == 422 and "signature_header" in json.dumps(body["detail"])
    status, body = await api(hub, "POST", "/api/v1/boards/nope/webhooks", {"description": "x"})
    assert status == 404 and body["detail"] == "board not found"

    webhook = await create_webhook(hub, board_id)
    path = webhook["endpoint_path"]
    status, body = await api(hub, "PATCH", path, {"description": None})
    assert status == 422
    status, body = await api(hub, "PATCH", path, {"agent_id": stranger["id"]})
    assert status == 422
    own = await create_agent(hub, board_id)
    status, body = await api(hub, "PATCH", path, {"agent_id": own["id"]})
    assert status == 200 and body["agent_id"] == own["id"]
    # a webhook is only found under its own board
    status, _ = await api(hub, "GET", f"/api/v1/boards/{other_board}/webhooks/{webhook['id']}")
    assert status == 404
    status, _ = await api(hub, "DELETE", f"{base}/{uuid.uuid4()}")
    assert status == 404


# ---------------------------------------------------------------------- ingest


async def test_ingest_stores_the_payload_and_the_lead_is_woken_with_it(
    hub: Hub, board_id: str, connected: MessageGateway
) -> None:
    lead = await create_agent(hub, board_id, lead=True)
    webhook = await create_webhook(hub, board_id, description="Summarise the build failure.")
    body = json.dumps({"build": "failed", "marker": "payload-7f3a"}).encode()
    status, headers, answer = await post(
        hub,
        webhook["endpoint_path"],
        body,
        {
            "Content-Type": "application/json",
            "User-Agent": "CI/1.0",
            "X-Event": "build",
            "X-Api-Token": "do-not-keep",
            "Authorization": "Bearer do-not-keep",
        },
    )
    assert status == 202, answer
    assert answer == {
        "ok": True,
        "board_id": board_id,
        "webhook_id": webhook["id"],
        "payload_id": answer["payload_id"],
        "duplicate": False,
    }
    assert headers["x-request-id"]

    (agent, message), *_ = await wait_for(
        lambda: connected.containing("payload-7f3a"), what="the payload in a wake message"
    )
    assert agent == lead["gateway_agent_id"]
    assert message.index("Summarise the build failure.") < message.index("payload-7f3a")
    assert "untrusted" in message and f"<<<END WEBHOOK PAYLOAD {answer['payload_id']}>>>" in message

    stored = await wait_for(
        lambda: _delivered(hub, webhook, answer["payload_id"]), what="payload marked delivered"
    )
    assert stored["payload"] == {"build": "failed", "marker": "payload-7f3a"}
    assert stored["content_type"] == "application/json" and stored["size_bytes"] == len(body)
    assert stored["headers"] == {
        "content-type": "application/json",
        "user-agent": "CI/1.0",
        "x-event": "build",
    }
    assert stored["delivery_attempts"] == 1 and stored["last_error"] is None
    status, page = await api(hub, "GET", f"{webhook['endpoint_path']}/payloads")
    assert status == 200 and page["total"] == 1 and "payload" not in page["items"][0]
    status, _ = await api(hub, "GET", f"{webhook['endpoint_path']}/payloads/{uuid.uuid4()}")
    assert status == 404


async def test_a_webhook_with_its_own_agent_wakes_that_agent(
    hub: Hub, board_id: str, connected: MessageGateway
) -> None:
    await create_agent(hub, board_id, lead=True)
    worker = await create_agent(hub, board_id)
    webhook = await create_webhook(hub, board_id, agent_id=worker["id"])
    status, _, _ = await post(hub, webhook["endpoint_path"], b"plain text marker-42ab")
    assert status == 202
    (agent, _message), *_ = await wait_for(
        lambda: connected.containing("marker-42ab"), what="wake with the payload"
    )
    assert agent == worker["gateway_agent_id"]


async def _delivered(hub: Hub, webhook: dict[str, Any], payload_id: str) -> dict[str, Any] | None:
    state = await payload_state(hub, webhook, payload_id)
    return state if state["delivered_at"] else None


@pytest.mark.parametrize(
    ("header", "prefix", "upper"),
    [
        ("X-Hub-Signature-256", "sha256=", False),
        ("X-Hub-Signature-256", "", True),
        ("X-Webhook-Signature", "", False),
        ("X-Webhook-Signature", "SHA256=", True),
    ],
)
async def test_a_signed_payload_is_accepted_under_either_header(
    hub: Hub, board_id: str, header: str, prefix: str, upper: bool
) -> None:
    webhook = await create_webhook(hub, board_id, secret=SECRET)
    body = b'{"n": 1}'
    digest = sign(body).upper() if upper else sign(body)
    status, _, answer = await post(hub, webhook["endpoint_path"], body, {header: prefix + digest})
    assert status == 202, answer
    stored = await payload_state(hub, webhook, answer["payload_id"])
    assert header.lower() not in stored["headers"]  # signatures are not kept


async def test_a_missing_or_wrong_signature_is_refused(hub: Hub, board_id: str) -> None:
    webhook = await create_webhook(hub, board_id, secret=SECRET)
    path = webhook["endpoint_path"]
    body = b'{"n": 1}'
    cases: list[dict[str, str]] = [
        {},
        {"X-Hub-Signature-256": "sha256=" + sign(body, "another-secret")},
        {"X-Webhook-Signature": sign(body + b" ")},
        {"X-Hub-Signature-256": "sha256=nothex"},
        {"X-Other": sign(body)},
    ]
    for headers in cases:
        status, _, answer = await post(hub, path, body, headers)
        assert status == 403, (headers, answer)
        assert "signature" in answer["detail"]
    status, page = await api(hub, "GET", f"{path}/payloads")
    assert page["total"] == 0


async def test_a_configured_signature_header_is_the_only_one_read(hub: Hub, board_id: str) -> None:
    webhook = await create_webhook(hub, board_id, secret=SECRET, signature_header="X-Sig")
    body = b"{}"
    status, _, _ = await post(hub, webhook["endpoint_path"], body, {"x-sig": sign(body)})
    assert status == 202
    status, _, _ = await post(
        hub, webhook["endpoint_path"], b"[]", {"X-Hub-Signature-256": sign(b"[]")}
    )
    assert status == 403


async def test_a_replayed_signed_payload_is_not_stored_or_delivered_twice(
    hub: Hub, board_id: str
) -> None:
    webhook = await create_webhook(hub, board_id, secret=SECRET)
    body = b'{"delivery": "abc"}'
    headers = {"X-Hub-Signature-256": "sha256=" + sign(body)}
    status, _, first = await post(hub, webhook["endpoint_path"], body, headers)
    assert status == 202 and first["duplicate"] is False
    status, _, again = await post(hub, webhook["endpoint_path"], body, headers)
    assert status == 202 and again["duplicate"] is True
    assert again["payload_id"] == first["payload_id"]
    status, page = await api(hub, "GET", f"{webhook['endpoint_path']}/payloads")
    assert page["total"] == 1


async def test_a_replay_after_a_hub_restart_is_still_recognised(
    tmp_path: Path, database: str
) -> None:
    body = b'{"delivery": "after-restart"}'
    headers = {"X-Hub-Signature-256": "sha256=" + sign(body)}
    async with running_hub(tmp_path / "hub", webhook_retry=FAST_RETRY, database=database) as hub:
        webhook = await create_webhook(hub, await add_board(hub), secret=SECRET)
        status, _, first = await post(hub, webhook["endpoint_path"], body, headers)
        assert status == 202 and first["duplicate"] is False
    async with running_hub(tmp_path / "hub", webhook_retry=FAST_RETRY, database=database) as hub:
        status, _, again = await post(hub, webhook["endpoint_path"], body, headers)
        assert status == 202 and again["duplicate"] is True
        assert again["payload_id"] == first["payload_id"]
        status, page = await api(hub, "GET", f"{webhook['endpoint_path']}/payloads")
        assert page["total"] == 1


async def test_unknown_board_or_webhook_is_404_and_disabled_is_410(hub: Hub, board_id: str) -> None:
    webhook = await create_webhook(hub, board_id)
    other_board = await add_board(hub, "Other")
    for path in (
        f"/api/v1/boards/{uuid.uuid4()}/webhooks/{webhook['id']}",
        f"/api/v1/boards/{board_id}/webhooks/{uuid.uuid4()}",
        f"/api/v1/boards/{other_board}/webhooks/{webhook['id']}",
    ):
        status, _, answer = await post(hub, path)
        assert status == 404, path
        assert answer["request_id"]
    status, _ = await api(hub, "PATCH", webhook["endpoint_path"], {"enabled": False})
    assert status == 200
    status, _, answer = await post(hub, webhook["endpoint_path"])
    assert status == 410 and "disabled" in answer["detail"]


async def test_oversized_payloads_are_refused_with_or_without_content_length(
    hub: Hub, board_id: str
) -> None:
    webhook = await create_webhook(hub, board_id)
    big = b"x" * (1024 * 1024 + 1)
    status, _, answer = await post(hub, webhook["endpoint_path"], big)
    assert status == 413, answer

    async def chunks() -> AsyncIterator[bytes]:  # streamed: no Content-Length
        for _ in range(20):
            yield b"y" * (64 * 1024)

    status, _, answer = await post(hub, webhook["endpoint_path"], chunks())
    assert status == 413, answer
    exactly = b"z" * (1024 * 1024)
    status, _, answer = await post(hub, webhook["endpoint_path"], exactly)
    assert status == 202, answer


async def test_each_webhook_has_its_own_rate_limit(hub: Hub, board_id: str) -> None:
    noisy = await create_webhook(hub, board_id)
    quiet = await create_webhook(hub, board_id)
    answers = await asyncio.gather(
        *(post(hub, noisy["endpoint_path"], f'{{"n": {n}}}'.encode()) for n in range(90))
    )
    limited = [(headers, body) for status, headers, body in answers if status == 429]
    assert limited, "90 payloads at once must exceed the burst of 60"
    headers, body = limited[0]
    assert int(headers["retry-after"]) >= 1 and "rate limit" in body["detail"]
    assert {status for status, _, _ in answers} == {202, 429}
    status, _, _ = await post(hub, quiet["endpoint_path"])  # another webhook is unaffected
    assert status == 202


# -------------------------------------------------------------------- delivery


async def test_delivery_is_retried_until_the_board_has_a_lead(
    hub: Hub, board_id: str, connected: MessageGateway
) -> None:
    webhook = await create_webhook(hub, board_id)
    status, _, answer = await post(hub, webhook["endpoint_path"], b'{"marker": "late-lead-91c"}')
    assert status == 202

    async def retried() -> dict[str, Any] | None:
        state = await payload_state(hub, webhook, answer["payload_id"])
        return state if state["delivery_attempts"] >= 3 else None

    pending = await wait_for(retried, what="several failed delivery attempts")
    assert pending["delivered_at"] is None and pending["next_attempt_at"] is not None
    assert "no agent to deliver to" in pending["last_error"]
    assert not connected.containing("late-lead-91c")

    lead = await create_agent(hub, board_id, lead=True)
    delivered = await wait_for(
        lambda: _delivered(hub, webhook, answer["payload_id"]), what="delivery after the lead"
    )
    assert delivered["last_error"] is None and delivered["next_attempt_at"] is None
    (agent, _message), *_ = await wait_for(
        lambda: connected.containing("late-lead-91c"), what="the lead woken with the payload"
    )
    assert agent == lead["gateway_agent_id"]


async def test_delivery_gives_up_after_bounded_attempts_and_says_why(
    tmp_path: Path, database: str
) -> None:
    retry = RetryPolicy(initial_s=0.02, max_s=0.05, max_attempts=3)
    async with running_hub(tmp_path / "bounded", webhook_retry=retry, database=database) as hub:
        await _gives_up_after_bounded_attempts(hub, await add_board(hub))


async def _gives_up_after_bounded_attempts(hub: Hub, board_id: str) -> None:
    webhook = await create_webhook(hub, board_id)
    status, _, answer = await post(hub, webhook["endpoint_path"])
    assert status == 202

    async def given_up() -> dict[str, Any] | None:
        state = await payload_state(hub, webhook, answer["payload_id"])
        return state if state["next_attempt_at"] is None else None

    state = await wait_for(given_up, what="delivery given up")
    assert state["delivery_attempts"] == 3 and state["delivered_at"] is None
    assert state["last_error"].startswith("gave up after 3 attempts: no agent to deliver to")


async def test_deleting_a_webhook_deletes_its_payloads(hub: Hub, board_id: str) -> None:
    webhook = await create_webhook(hub, board_id)
    for n in range(3):
        status, _, _ = await post(hub, webhook["endpoint_path"], f"[{n}]".encode())
        assert status == 202
    status, deleted = await api(hub, "DELETE", webhook["endpoint_path"])
    assert status == 200 and deleted["payloads_deleted"] == 3
    left = await hub.db.read(
        lambda conn: conn.execute("SELECT COUNT(*) FROM webhook_payloads").fetchone()[0]
    )
    assert left == 0


async def test_admin_routes_need_the_admin_token(hub: Hub, board_id: str) -> None:
    assert hub.addresses is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{hub.addresses.http}/api/v1/boards/{board_id}/webhooks") as r,
    ):
        assert r.status == 401
    assert ADMIN_TOKEN  # the authorised path is exercised by every other test
