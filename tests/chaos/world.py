"""Churn through the admin REST API, and what the hub acknowledged.

Every write the hub answered 2xx is recorded as acknowledged: after any crash it must
still be visible. A write that got no answer (the hub was killed or paused mid-request)
may or may not have happened: the object it touched becomes `uncertain`, and only the
checks that hold either way (hub and sidecar agree, files, settling) cover it.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp

REQUEST_TIMEOUT_S = 8.0  # a paused hub answers nothing: the request ends here, unanswered
MAX_BOARDS = 3
MAX_AGENTS = 6


class NoAnswer(Exception):
    """The request got no HTTP answer (refused, reset, timed out)."""


@dataclass
class Known:
    """One board or agent as the acknowledged writes left it."""

    id: str
    fields: dict[str, Any]
    board_id: str | None = None
    deleted: bool = False
    uncertain: bool = False


@dataclass
class World:
    gateway_id: str
    http_port: int
    admin_token: str
    boards: dict[str, Known] = field(default_factory=dict)
    agents: dict[str, Known] = field(default_factory=dict)
    acked: int = 0
    unanswered: int = 0
    refused: int = 0  # 4xx: a clear refusal (a board being deleted, say), nothing lost
    errors: list[str] = field(default_factory=list)  # 5xx answers: defects

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            async with session.request(
                method,
                url,
                json=body,
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as response:
                text = await response.text()
                try:
                    data = await response.json(content_type=None) if text else None
                except ValueError:
                    data = text
                return response.status, data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NoAnswer(f"{method} {path}: {exc!r}") from None

    # ------------------------------------------------------------ churn

    def live_boards(self) -> list[Known]:
        return [b for b in self.boards.values() if not b.deleted]

    def live_agents(self) -> list[Known]:
        return [a for a in self.agents.values() if not a.deleted]

    def choose(self, rng: random.Random) -> str:
        """The next operation, weighted so the population stays small and keeps moving."""
        boards, agents = self.live_boards(), self.live_agents()
        options: list[tuple[str, int]] = []
        if len(boards) < MAX_BOARDS:
            options.append(("create_board", 3 if not boards else 1))
        if boards:
            options += [("patch_board", 1), ("delete_board", 1 if len(boards) > 1 else 0)]
            if len(agents) < MAX_AGENTS:
                options.append(("create_agent", 4))
        if agents:
            options += [("patch_agent", 4), ("delete_agent", 2)]
        names = [name for name, weight in options for _ in range(weight)]
        return rng.choice(names)

    async def operate(self, session: aiohttp.ClientSession, rng: random.Random) -> str:
        """One write; returns a line saying what it was and how it ended."""
        op = self.choose(rng)
        tag = secrets.token_hex(3)
        if op == "create_board":
            body = {"name": f"chaos board {tag}", "gateway_id": self.gateway_id}
            return await self._write(session, op, "POST", "/api/v1/boards", body, None)
        if op == "patch_board":
            board = rng.choice(self.live_boards())
            body = {"description": f"described {tag}"}
            return await self._write(
                session, op, "PATCH", f"/api/v1/boards/{board.id}", body, board
            )
        if op == "delete_board":
            board = rng.choice(self.live_boards())
            return await self._write(
                session, op, "DELETE", f"/api/v1/boards/{board.id}", None, board
            )
        if op == "create_agent":
            board = rng.choice(self.live_boards())
            body = {
                "name": f"chaos agent {tag}",
                "board_id": board.id,
                "heartbeat_config": {"every": "10m"},
            }
            return await self._write(session, op, "POST", "/api/v1/agents", body, board)
        if op == "patch_agent":
            agent = rng.choice(self.live_agents())
            body = {"name": f"chaos agent {tag}"}  # a new name: new files, a new generation
            return await self._write(
                session, op, "PATCH", f"/api/v1/agents/{agent.id}", body, agent
            )
        agent = rng.choice(self.live_agents())
        return await self._write(session, op, "DELETE", f"/api/v1/agents/{agent.id}", None, agent)

    async def _write(
        self,
        session: aiohttp.ClientSession,
        op: str,
        method: str,
        path: str,
        body: Any,
        target: Known | None,
    ) -> str:
        try:
            status, data = await self.call(session, method, path, body)
        except NoAnswer as exc:
            self.unanswered += 1
            self._unsure(op, target)
            return f"{op}: no answer ({exc})"
        if status >= 500:
            self.errors.append(f"{method} {path} -> {status}: {data}")
            self._unsure(op, target)
            return f"{op}: {status}"
        if status >= 400:
            self.refused += 1
            return f"{op}: refused {status}"
        self.acked += 1
        self._record(op, body, data, target)
        return f"{op}: {status}"

    def _unsure(self, op: str, target: Known | None) -> None:
        """An unanswered write: what it touched may or may not have changed."""
        if target is None or op == "create_agent":
            return  # a create's object is found by `resync`, if it was made
        target.uncertain = True
        if op == "delete_board":
            for agent in self.agents.values():
                if agent.board_id == target.id:
                    agent.uncertain = True

    def _record(self, op: str, body: Any, data: Any, target: Known | None) -> None:
        if op == "create_board":
            self.boards[data["id"]] = Known(data["id"], {"name": body["name"]})
        elif op == "create_agent":
            assert target is not None
            self.agents[data["id"]] = Known(data["id"], {"name": body["name"]}, target.id)
        elif op in ("patch_board", "patch_agent"):
            assert target is not None
            target.fields.update(body)
        elif op == "delete_agent":
            assert target is not None
            target.deleted = True
        elif op == "delete_board":
            assert target is not None
            target.deleted = True
            for agent in self.agents.values():  # a board's delete removes its agents
                if agent.board_id == target.id:
                    agent.deleted = True

    # ----------------------------------------------------------- checks

    async def lost_writes(self, session: aiohttp.ClientSession) -> list[str]:
        """Acknowledged writes the hub no longer shows (read back through the API)."""
        lost: list[str] = []
        for kind, known in [("boards", b) for b in self.boards.values()] + [
            ("agents", a) for a in self.agents.values()
        ]:
            if known.uncertain:
                continue
            status, data = await self.call(session, "GET", f"/api/v1/{kind}/{known.id}")
            if known.deleted:
                if status != 404:
                    lost.append(f"{kind} {known.id}: deleted (acknowledged) but reads {status}")
                continue
            if status != 200:
                lost.append(f"{kind} {known.id}: created (acknowledged) but reads {status}")
                continue
            for name, value in known.fields.items():
                if data.get(name) != value:
                    lost.append(
                        f"{kind} {known.id}: {name} acknowledged as {value!r}, "
                        f"reads {data.get(name)!r}"
                    )
        return lost

    async def resync(self, session: aiohttp.ClientSession) -> None:
        """After the checks: what unanswered writes did is now known, from the hub.

        Uncertain objects take the hub's state; objects an unanswered create made are
        added; checked deletes are forgotten (the model stays small).
        """
        listed: dict[str, dict[str, dict[str, Any]]] = {}
        for kind in ("boards", "agents"):
            status, page = await self.call(
                session, "GET", f"/api/v1/{kind}?gateway_id={self.gateway_id}"
            )
            if status != 200:
                raise NoAnswer(f"listing {kind} answered {status}: {page}")
            listed[kind] = {item["id"]: item for item in page["items"]}
        for kind, known_map in (("boards", self.boards), ("agents", self.agents)):
            rows = listed[kind]
            for known in list(known_map.values()):
                if known.deleted and not known.uncertain:
                    del known_map[known.id]
                elif known.uncertain:
                    row = rows.get(known.id)
                    if row is None:
                        del known_map[known.id]
                    else:
                        known.fields = {name: row.get(name) for name in known.fields}
                        known.uncertain = False
            for object_id, row in rows.items():
                if object_id not in known_map:
                    fields = {"name": row["name"]}
                    known_map[object_id] = Known(object_id, fields, row.get("board_id"))
