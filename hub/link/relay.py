"""Live queries relayed to the hub that holds the gateway's stream (a shared database).

A live read (`GatewayQueries.ask`: /gateway/status, /gateway/sessions, fleet queries)
reaching a hub without the gateway's stream is asked of the gateway's owner instead
(hub/store/ownership.py): the asking hub leaves a RELAY_ASK notice naming the owner and
the query; the owner asks its sidecar as for a query of its own, keeps the answer in
`relayed_answers` and leaves a RELAY_ANSWER notice; the asker reads the row. Notices
stay small (PostgreSQL caps a payload at 8000 bytes), answers of any size travel as
rows. Like the query itself nothing is queued: a lost notice is a timeout, the same one
the caller would get from a sidecar that did not answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

from hub.link.queries import GatewayQueries, QueryFailed
from hub.store.database import Connection, Database
from missioncontrol.log import get_logger
from protos import link_pb2 as pb

log = get_logger("hub.link.relay")

# Notice channels (every hub). RELAY_ASK: JSON {"id", "from", "to", "gateway_id",
# "query": base64 GatewayQuery}; RELAY_ANSWER: JSON {"id", "to"}.
RELAY_ASK = "query_relay"
RELAY_ANSWER = "query_answer"
ANSWER_KEPT_S = 60.0  # an answer row is deleted by the next answer this much later
RELAY_MARGIN_S = 2.0  # the asker waits this much beyond the query's own budget


class QueryRelay:
    """This hub's end of relayed live queries, both as the asker and as the owner."""

    def __init__(self, db: Database, hub_id: str, queries: GatewayQueries) -> None:
        self.db = db
        self.hub_id = hub_id
        self.queries = queries
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._answering: set[asyncio.Task[None]] = set()

    async def ask(
        self, gateway_id: str, query: pb.GatewayQuery, timeout_s: float
    ) -> pb.GatewayQueryResult:
        """The answer of the gateway's sidecar, through the hub that holds its stream."""
        owner = await self.db.read(
            lambda conn: conn.execute(
                "SELECT owner_hub, connected FROM gateways WHERE id = ?", (gateway_id,)
            ).fetchone()
        )
        if owner is None or not owner[1] or owner[0] in (None, self.hub_id):
            raise QueryFailed("sidecar_disconnected", "the gateway's sidecar is not connected")
        relay_id = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[relay_id] = future
        notice = json.dumps(
            {
                "id": relay_id,
                "from": self.hub_id,
                "to": owner[0],
                "gateway_id": gateway_id,
                "query": base64.b64encode(query.SerializeToString()).decode(),
            }
        )
        try:
            await self.db.write(lambda conn: conn.notify(RELAY_ASK, notice), urgent=True)
            async with asyncio.timeout(timeout_s + RELAY_MARGIN_S):
                await future
        except TimeoutError:
            raise QueryFailed(
                "sidecar_timeout",
                f"hub {owner[0]}, which holds the gateway's stream, did not answer within "
                f"{timeout_s:g} s",
            ) from None
        finally:
            self._waiting.pop(relay_id, None)
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT answer, error_code, error FROM relayed_answers WHERE id = ?", (relay_id,)
            ).fetchone()
        )
        if row is None:
            raise QueryFailed("sidecar_timeout", "the relayed answer was not found")
        if row[1]:
            raise QueryFailed(row[1], row[2] or "")
        return pb.GatewayQueryResult.FromString(bytes(row[0]))

    def asked(self, payload: str) -> None:
        """A RELAY_ASK notice: this hub answers those addressed to it."""
        fields = json.loads(payload)
        if fields.get("to") != self.hub_id:
            return
        task = asyncio.create_task(self._answer(fields), name="query-relay-answer")
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    def answered(self, payload: str) -> None:
        """A RELAY_ANSWER notice: the answer this hub waits for is in its row."""
        fields = json.loads(payload)
        if fields.get("to") != self.hub_id:
            return
        future = self._waiting.get(str(fields.get("id")))
        if future is not None and not future.done():
            future.set_result(None)

    async def close(self) -> None:
        for task in self._answering:
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)

    async def _answer(self, fields: dict[str, str]) -> None:
        query = pb.GatewayQuery.FromString(base64.b64decode(fields["query"]))
        answer: bytes | None = None
        code = message = ""
        try:
            result = await self.queries.ask(
                fields["gateway_id"],
                query.kind,
                agent_id=query.agent_id,
                limit=query.limit,
                file=query.file,
                timeout_s=max(query.budget_ms, 1) / 1000,
                relayed=True,
            )
            answer = result.SerializeToString()
        except QueryFailed as exc:
            code, message = exc.code, str(exc)
        notice = json.dumps({"id": fields["id"], "to": fields["from"]})

        def op(conn: Connection) -> None:
            now = time.time()
            conn.execute("DELETE FROM relayed_answers WHERE created_at < ?", (now - ANSWER_KEPT_S,))
            conn.execute(
                "INSERT INTO relayed_answers (id, answer, error_code, error, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (fields["id"], answer, code or None, message or None, now),
            )
            conn.notify(RELAY_ANSWER, notice)

        try:
            await self.db.write(op, urgent=True)
        except Exception as exc:  # the asker times out; nothing else waits on it
            log.error("gateway.query.relay_failed", gateway_id=fields["gateway_id"], error=str(exc))
