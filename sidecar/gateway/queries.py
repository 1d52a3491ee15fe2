"""Live reads of the gateway asked by the hub (GatewayQuery), each answered once.

An admin's `GET /api/v1/gateway/status` or `/gateway/sessions`, or a fleet query,
arrives here as a GatewayQuery on the link. The answer always carries what the sidecar knows of its
gateway; the gateway's own reads (`status`, `sessions.list`) are added when it
answers within the budget, otherwise the error says why. Nothing is queued or
retried: the admin asked now, and asks again. Whatever goes wrong while answering
(an answer the link cannot carry, a bug), the hub gets an answer saying so rather than
waiting out its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from google.protobuf.timestamp_pb2 import Timestamp

from missioncontrol.log import get_logger
from missioncontrol.text import displayable
from missioncontrol.workspace_files import QUERYABLE_FILES
from protos import link_pb2 as pb
from protos.contract import GATEWAY_QUERY_TIMEOUT_S, MAX_QUERY_SESSIONS, timestamp
from sidecar.gateway import GatewayClient, GatewayError, GatewayRuntime, SessionInfo

log = get_logger("sidecar.gateway_queries")

MAX_IN_FLIGHT = 4
# Answer (with the reason) before the hub stops waiting.
BUDGET_SHARE = 0.8
CALL_BUDGET_S = GATEWAY_QUERY_TIMEOUT_S * BUDGET_SHARE
# FILE_HASH: the managed agents' digests of one file (None: that agent is not managed).
FileDigests = Callable[[str, str], Awaitable[list[pb.FileDigest] | None]]


class QueryRefused(Exception):
    """The query itself cannot be answered (a bad name, an agent not managed here)."""

    def __init__(self, message: str, code: str = "invalid_query") -> None:
        super().__init__(message)
        self.code = code


class GatewayQueries:
    def __init__(
        self,
        gateway: GatewayClient,
        state: Callable[[], pb.GatewayState],
        send: Callable[[pb.SidecarMessage], None],
        file_digests: FileDigests | None = None,
    ) -> None:
        self._gateway = gateway
        self._state = state
        self._send = send
        self._file_digests = file_digests
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, query: pb.GatewayQuery) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            result = self._result(query)
            result.error_code = "busy"
            result.error = f"{MAX_IN_FLIGHT} gateway queries are already running; ask again"
            self._send(pb.SidecarMessage(gateway_query_result=result))
            return
        task = asyncio.create_task(self._answer(query), name="gateway-query")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _result(self, query: pb.GatewayQuery) -> pb.GatewayQueryResult:
        return pb.GatewayQueryResult(query_id=query.query_id, state=self._state())

    async def _answer(self, query: pb.GatewayQuery) -> None:
        result = self._result(query)
        budget_s = _budget_s(query)
        try:
            async with asyncio.timeout(budget_s):
                if query.kind == pb.GatewayQuery.FILE_HASH:
                    await self._hash(query, result)
                else:
                    info = self._gateway.info
                    if not info.reachable:
                        raise GatewayError(info.unreachable_reason, code="gateway_unreachable")
                    await self._read(query, result)
        except TimeoutError:
            result.error_code = "gateway_timeout"
            result.error = f"the gateway did not answer within {budget_s:g} s"
        except (GatewayError, QueryRefused) as exc:
            result.error_code = exc.code
            result.error = displayable(str(exc), max_chars=4096)
        except Exception as exc:
            log.exception("gateway.query.crashed", kind=_kind_name(query.kind), error=repr(exc))
            result = self._result(query)  # what was read so far may be what failed
            result.error_code = "internal_error"
            result.error = (
                f"the sidecar failed answering this query ({displayable(repr(exc), max_chars=512)}"
                "); see its log (gateway.query.crashed)"
            )
        if result.error_code:
            log.info(
                "gateway.query.failed",
                kind=_kind_name(query.kind),
                error_code=result.error_code,
                error=result.error,
            )
        self._send(pb.SidecarMessage(gateway_query_result=result))

    async def _hash(self, query: pb.GatewayQuery, result: pb.GatewayQueryResult) -> None:
        if query.file not in QUERYABLE_FILES:
            raise QueryRefused(
                f"file {displayable(query.file, max_chars=80)!r} cannot be asked for; "
                f"ask for one of {', '.join(sorted(QUERYABLE_FILES))}"
            )
        if self._file_digests is None:
            raise QueryRefused("this sidecar reads no workspace files", code="unsupported")
        digests = await self._file_digests(query.agent_id, query.file)
        if digests is None:
            raise QueryRefused(
                f"agent {displayable(query.agent_id, max_chars=80)!r} is not managed by this "
                "sidecar",
                code="unknown_agent",
            )
        result.files.extend(digests)

    async def _read(self, query: pb.GatewayQuery, result: pb.GatewayQueryResult) -> None:
        limit = min(query.limit or MAX_QUERY_SESSIONS, MAX_QUERY_SESSIONS)
        if query.kind in (pb.GatewayQuery.STATUS, pb.GatewayQuery.HEARTBEATS):
            if query.kind == pb.GatewayQuery.HEARTBEATS:
                result.runtime.CopyFrom(_runtime(await self._gateway.runtime_status()))
                return
            runtime, page = await asyncio.gather(
                self._gateway.runtime_status(), self._gateway.list_sessions(limit=limit)
            )
            result.runtime.CopyFrom(_runtime(runtime))
            total = max(page.total, runtime.sessions_count)
        elif query.kind == pb.GatewayQuery.SESSIONS:
            page = await self._gateway.list_sessions(query.agent_id, limit)
            total = page.total
        else:
            raise GatewayError(
                f"query kind {query.kind} is not known to this sidecar; upgrade it",
                code="unsupported",
            )
        result.sessions.extend(_session(s) for s in page.sessions[:limit])
        result.sessions_total = _u32(total)


def _budget_s(query: pb.GatewayQuery) -> float:
    """Answer before the hub stops waiting: its deadline for this query, if it gave one."""
    if not query.budget_ms:
        return CALL_BUDGET_S
    return min(CALL_BUDGET_S, query.budget_ms / 1000 * BUDGET_SHARE)


def _runtime(runtime: GatewayRuntime) -> pb.GatewayRuntime:
    return pb.GatewayRuntime(
        pid=_u32(runtime.pid),
        rss_bytes=_u64(runtime.rss_bytes),
        agents=[
            pb.AgentRuntime(
                agent_id=a.agent_id,
                heartbeat_enabled=a.heartbeat_enabled,
                heartbeat_every_s=_u32(a.heartbeat_every_s),
            )
            for a in runtime.agents
        ],
    )


def _kind_name(kind: int) -> str:
    """The query kind's name; a newer hub's kind has none here."""
    try:
        return pb.GatewayQuery.Kind.Name(kind)
    except ValueError:
        return str(kind)


def _session(info: SessionInfo) -> pb.GatewaySession:
    return pb.GatewaySession(
        key=info.key,
        agent_id=info.agent_id,
        kind=info.kind,
        is_main=info.is_main,
        status=info.status,
        has_active_run=info.has_active_run,
        updated_at=_when(info.updated_at_ms),
        last_run_error=info.last_run_error,
        model=info.model,
        total_tokens=_u64(info.total_tokens),
    )


# The gateway's numbers, as the message's fields can hold them (a bad one is not a crash).
def _u32(value: int) -> int:
    return max(0, min(value, 2**32 - 1))


def _u64(value: int) -> int:
    return max(0, min(value, 2**64 - 1))


_LAST_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z, the last a Timestamp holds


def _when(ms: int) -> Timestamp | None:
    return timestamp(ms / 1000) if 0 < ms / 1000 <= _LAST_TIMESTAMP_S else None
