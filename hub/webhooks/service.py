"""Board webhooks as a service: admin CRUD, the public ingest, and the delivery worker.

An outside system POSTs to a webhook's ingest URL. The payload is stored first
(bytes, content type, a few captured headers) and answered 202; delivery is the
worker's job (hub/webhooks/delivery.py) and is retried.

Secrets are sealed at rest (hub/pki/secrets_box.py), bound to the webhook's id. For a
webhook with a secret, an identical signed body received again within a day is a
replay: it is answered with the first payload's id and not stored or delivered again.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from hub.pki.secrets_box import SecretBox, SecretBoxError
from hub.store.database import Connection, Database
from hub.webhooks.delivery import DeliveryWorker
from hub.webhooks.rules import (
    HEADER_TOKEN,
    REPLAY_WINDOW_S,
    RetryPolicy,
    capture_headers,
    signature_headers,
    signature_valid,
)
from hub.webhooks.store import (
    InvalidWebhook,
    NotFound,
    SecretUnreadable,
    WebhookRow,
    check_agent_in,
    delete_webhook_in,
    get_payload_in,
    insert_payload_in,
    insert_webhook_in,
    list_payloads_in,
    list_webhooks_in,
    replayed_payload_in,
    require_board_in,
    require_webhook_in,
    update_webhook_in,
)
from missioncontrol.log import get_logger

log = get_logger("hub.webhooks")

SECRET_BOX_PURPOSE = "webhook-secrets"
_UPDATABLE = ("description", "enabled", "agent_id", "secret", "signature_header")


class WebhookService:
    """Board webhooks: CRUD, ingest storage, and the delivery worker (start/stop)."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.box = box
        self.clock = clock
        self.worker = DeliveryWorker(db, retry or RetryPolicy(), clock=clock)

    @classmethod
    def from_hub_key(cls, db: Database, hub_key: bytes, **options: Any) -> WebhookService:
        return cls(db, SecretBox.from_hub_key(hub_key, SECRET_BOX_PURPOSE), **options)

    async def start(self) -> None:
        await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()

    # ----------------------------------------------------------------- CRUD

    async def list_webhooks(
        self, board_id: str, limit: int, offset: int
    ) -> tuple[list[WebhookRow], int]:
        return await self.db.read(lambda conn: list_webhooks_in(conn, board_id, limit, offset))

    async def get_webhook(self, board_id: str, webhook_id: str) -> WebhookRow:
        return await self.db.read(lambda conn: require_webhook_in(conn, board_id, webhook_id))

    async def create_webhook(
        self,
        board_id: str,
        *,
        description: str,
        enabled: bool = True,
        agent_id: str | None = None,
        secret: str | None = None,
        signature_header: str | None = None,
    ) -> WebhookRow:
        webhook_id = str(uuid.uuid4())
        _check_signature_header(signature_header)

        def check(conn: Connection) -> None:
            require_board_in(conn, board_id)
            check_agent_in(conn, board_id, agent_id)

        await self.db.read(check)  # refuse before sealing the secret
        sealed = self._seal(webhook_id, secret)
        row = await self.db.write(
            lambda conn: insert_webhook_in(
                conn,
                webhook_id,
                board_id,
                description=description,
                enabled=enabled,
                agent_id=agent_id,
                secret_sealed=sealed,
                signature_header=signature_header,
                now=self.clock(),
            )
        )
        log.info(
            "webhook.created",
            board_id=board_id,
            webhook_id=webhook_id,
            agent_id=agent_id,
            has_secret=row.has_secret,
        )
        return row

    async def update_webhook(
        self, board_id: str, webhook_id: str, changes: Mapping[str, Any]
    ) -> WebhookRow:
        """Apply the fields present in `changes` (description, enabled, agent_id, secret,
        signature_header); None clears the optional ones."""
        columns: dict[str, Any] = {
            name: changes[name]
            for name in ("description", "enabled", "agent_id", "signature_header")
            if name in changes
        }
        if "enabled" in columns:
            columns["enabled"] = int(bool(columns["enabled"]))
        if "signature_header" in columns:
            _check_signature_header(columns["signature_header"])
        if "secret" in changes:
            columns["secret_sealed"] = self._seal(webhook_id, changes["secret"])
        row = await self.db.write_checked(
            lambda conn: require_webhook_in(conn, board_id, webhook_id),
            lambda conn, _: update_webhook_in(conn, board_id, webhook_id, columns, self.clock()),
        )
        log.info(
            "webhook.updated",
            board_id=board_id,
            webhook_id=webhook_id,
            fields=sorted(name for name in changes if name in _UPDATABLE),
        )
        return row

    async def delete_webhook(self, board_id: str, webhook_id: str) -> int:
        """Delete the webhook and its stored payloads; return how many payloads went."""
        payloads = await self.db.write_checked(
            lambda conn: require_webhook_in(conn, board_id, webhook_id),
            lambda conn, _: delete_webhook_in(conn, board_id, webhook_id),
        )
        log.info("webhook.deleted", board_id=board_id, webhook_id=webhook_id, payloads=payloads)
        return payloads

    async def list_payloads(
        self, board_id: str, webhook_id: str, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        return await self.db.read(
            lambda conn: list_payloads_in(conn, board_id, webhook_id, limit, offset)
        )

    async def get_payload(self, board_id: str, webhook_id: str, payload_id: str) -> dict[str, Any]:
        return await self.db.read(
            lambda conn: get_payload_in(conn, board_id, webhook_id, payload_id)
        )

    # --------------------------------------------------------------- ingest

    def signature_ok(self, webhook: WebhookRow, body: bytes, headers: Mapping[str, str]) -> bool:
        """True without a secret; else the body must carry a valid signature."""
        if webhook.secret_sealed is None:
            return True
        try:
            secret = self.box.open(webhook.secret_sealed, context=webhook.id.encode())
        except SecretBoxError as exc:
            log.error("webhook.secret.unreadable", webhook_id=webhook.id, error=str(exc))
            raise SecretUnreadable(
                "this webhook's secret cannot be read by the hub; an admin must set it again"
            ) from None
        provided = next(
            (
                headers[name]
                for name in signature_headers(webhook.signature_header)
                if name in headers
            ),
            None,
        )
        return signature_valid(secret, body, provided)

    async def store_payload(
        self, webhook: WebhookRow, body: bytes, content_type: str, headers: Mapping[str, str]
    ) -> tuple[str, bool]:
        """Store an accepted payload, due for delivery now, and wake the worker; return its
        id and False. A signed body already received within the replay window (a replay,
        or the sender's own retry) is not stored again: return the first one's id and True.
        The check and the insert are one transaction, and the digest is kept with the
        payload, so this holds across a hub restart."""
        payload_id = str(uuid.uuid4())
        captured = capture_headers(headers, webhook.signature_header)
        digest = hashlib.sha256(body).digest() if webhook.has_secret else None

        def op(conn: Connection) -> tuple[str | None, bool]:
            now = self.clock()
            if digest is not None:
                first = replayed_payload_in(conn, webhook.id, digest, now - REPLAY_WINDOW_S)
                if first is not None:
                    return first, True
            stored = insert_payload_in(
                conn, webhook, payload_id, body, content_type, captured, now, body_sha256=digest
            )
            return (payload_id if stored else None), False

        stored_id, duplicate = await self.db.write(op, urgent=True)
        if stored_id is None:  # deleted since it was looked up
            raise NotFound(f"webhook {webhook.id} not found on board {webhook.board_id}")
        if duplicate:
            log.warning(
                "webhook.payload.replayed",
                board_id=webhook.board_id,
                webhook_id=webhook.id,
                payload_id=stored_id,
            )
            return stored_id, True
        log.info(
            "webhook.payload.received",
            board_id=webhook.board_id,
            webhook_id=webhook.id,
            payload_id=payload_id,
            size_bytes=len(body),
        )
        self.worker.nudge()
        return payload_id, False

    def _seal(self, webhook_id: str, secret: str | None) -> bytes | None:
        if secret is None:
            return None
        return self.box.seal(secret.encode(), context=webhook_id.encode())


def _check_signature_header(name: str | None) -> None:
    if name is not None and not HEADER_TOKEN.match(name):
        raise InvalidWebhook("field 'signature_header': not an HTTP header name (RFC 7230 token)")
