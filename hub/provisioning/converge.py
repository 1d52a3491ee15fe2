"""Bringing a sidecar that is ahead of its hub back in line (after `mc-hub restore`).

A restored database has lost the commands queued after the backup, but the gateway's
sidecar applied some of them. The link rewinds the sidecar's sequence to the hub's
(protos: a sidecar whose last_applied_sequence is higher resets to the Welcome's), and
then the hub re-asserts its own view, agent by agent, from the sidecar's Hello
inventory, through the ordinary lifecycle:

- an agent the hub does not know (created after the backup) is removed from the
  gateway's config; its workspace stays on disk;
- an agent the sidecar applied at a generation the hub never issued (changed after the
  backup) is applied again at a newer generation, with a fresh token, because a rotation
  after the backup may have replaced its token file;
- an agent the hub has but the sidecar lost (deleted after the backup) is provisioned
  again with a fresh token, and woken;
- an agent the hub is deleting gets its RemoveAgent again, so its row can go.

`plan` decides (pure); `Convergence` carries it out in one lifecycle transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hub.lifecycle import decisions as lc
from hub.lifecycle.reconciler import Reconciler, Transition
from hub.provisioning.agent_tokens import TokenKeyring
from hub.provisioning.agents import RenderOptions, accepted_tokens, credentials_for, require_agent
from hub.provisioning.rendering import token_file
from hub.store.event_log import add_event
from hub.store.outbox import enqueue_command_in
from missioncontrol.log import get_logger
from protos import link_pb2 as pb

log = get_logger("hub.converge")


@dataclass(frozen=True)
class HubAgent:
    id: str
    gateway_agent_id: str
    status: str
    lifecycle_generation: int


@dataclass(frozen=True)
class Plan:
    remove: tuple[tuple[str, int], ...] = ()  # (gateway agent id, generation): hub has no row
    reapply: tuple[tuple[str, int], ...] = ()  # (agent id, new generation): sidecar is ahead
    reprovision: tuple[tuple[str, int], ...] = ()  # (agent id, new generation): sidecar lost it
    reremove: tuple[str, ...] = ()  # agent ids being deleted: send RemoveAgent again
    unchanged: tuple[str, ...] = field(default=(), compare=False)

    def __bool__(self) -> bool:
        return bool(self.remove or self.reapply or self.reprovision or self.reremove)


def plan(agents: Sequence[HubAgent], inventory: Mapping[str, int]) -> Plan:
    """What the hub queues for a sidecar ahead of it. `inventory`: the Hello's managed
    agents, gateway agent id -> the generation the sidecar applied."""
    known = {a.gateway_agent_id for a in agents}
    remove = tuple(
        (agent_id, generation)
        for agent_id, generation in sorted(inventory.items())
        if agent_id not in known
    )
    reapply, reprovision, reremove, unchanged = [], [], [], []
    for agent in agents:
        applied = inventory.get(agent.gateway_agent_id)
        if agent.status == lc.Status.DELETING:
            reremove.append(agent.id)
        elif applied is None:
            reprovision.append((agent.id, agent.lifecycle_generation + 1))
        elif applied > agent.lifecycle_generation:
            reapply.append((agent.id, applied + 1))
        else:
            unchanged.append(agent.id)
    return Plan(remove, tuple(reapply), tuple(reprovision), tuple(reremove), tuple(unchanged))


class Convergence:
    def __init__(self, reconciler: Reconciler, keyring: TokenKeyring) -> None:
        self.reconciler = reconciler
        self.keyring = keyring

    async def sidecar_ahead(self, gateway_id: str, hello: pb.Hello) -> Plan:
        """The link's hook: `hello` says the sidecar applied commands this hub never
        issued. Queue what brings the gateway back to the hub's view."""
        inventory = {a.agent_id: int(a.applied_generation) for a in hello.inventory}

        def op(tx: Transition) -> Plan:
            conn = tx.conn
            rows = conn.execute(
                "SELECT id, gateway_agent_id, status, lifecycle_generation FROM agents "
                "WHERE gateway_id = ?",
                (gateway_id,),
            ).fetchall()
            decided = plan([HubAgent(*row) for row in rows], inventory)
            for agent_id, generation in decided.remove:
                enqueue_command_in(
                    conn,
                    gateway_id,
                    pb.Command(
                        remove_agent=pb.RemoveAgent(
                            agent_id=agent_id, generation=generation, delete_files=False
                        )
                    ),
                )
            for agent_id, generation in decided.reapply:
                # The file first: the apply then carries the set that accepts it, so the
                # agent is never refused the token its file holds.
                raw = self._replace_tokens_in(tx, agent_id)
                self._token_file_in(tx, agent_id, raw)
                tx.step(agent_id, lc.ApplyRequested(generation=generation, wake=False))
            for agent_id, generation in decided.reprovision:
                raw = self._replace_tokens_in(tx, agent_id)
                tx.step(
                    agent_id,
                    lc.ApplyRequested(generation=generation, wake=True),
                    RenderOptions(token=raw),
                )
            for agent_id in decided.reremove:
                row = require_agent(conn, agent_id)
                previous = conn.execute(
                    "SELECT payload FROM commands WHERE gateway_id = ? AND agent_id = ? "
                    "AND kind = 'remove_agent' ORDER BY sequence DESC LIMIT 1",
                    (gateway_id, row.gateway_agent_id),
                ).fetchone()
                delete_files = (
                    pb.Command.FromString(previous[0]).remove_agent.delete_files
                    if previous
                    else False
                )
                enqueue_command_in(
                    conn,
                    gateway_id,
                    pb.Command(
                        remove_agent=pb.RemoveAgent(
                            agent_id=row.gateway_agent_id,
                            generation=row.lifecycle_generation,
                            delete_files=delete_files,
                        )
                    ),
                )
            if decided:
                add_event(
                    conn,
                    "gateway.converged",
                    gateway_id=gateway_id,
                    at=tx.now,
                    removed=len(decided.remove),
                    reapplied=len(decided.reapply),
                    reprovisioned=len(decided.reprovision),
                    reremoved=len(decided.reremove),
                )
            return decided

        decided = await self.reconciler.write(op)
        log.warning(
            "link.sidecar_ahead.converged",
            gateway_id=gateway_id,
            sidecar_sequence=hello.last_applied_sequence,
            removed=[a for a, _ in decided.remove],
            reapplied=[a for a, _ in decided.reapply],
            reprovisioned=[a for a, _ in decided.reprovision],
            reremoved=list(decided.reremove),
            detail="the hub's database is older than what the sidecar applied (a restored "
            "backup): the hub's view is queued again",
        )
        return decided

    def _replace_tokens_in(self, tx: Transition, agent_id: str) -> str:
        """Every token of the agent replaced by one fresh token; returns it raw."""
        minted = self.keyring.mint()
        tx.conn.execute("DELETE FROM agent_tokens WHERE agent_id = ?", (agent_id,))
        tx.conn.execute(
            "INSERT INTO agent_tokens (token_id, agent_id, digest, sidecar_sha256, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (minted.token_id, agent_id, minted.digest, minted.sidecar_sha256, tx.now),
        )
        return minted.raw

    def _token_file_in(self, tx: Transition, agent_id: str, raw: str) -> None:
        """The agent's token file rewritten with `raw`, and its accepted set sent with it."""
        row = require_agent(tx.conn, agent_id)
        secret = token_file(raw)
        enqueue_command_in(
            tx.conn,
            row.gateway_id,
            pb.Command(
                set_credentials=pb.SetAgentCredentials(
                    agent_id=row.gateway_agent_id,
                    credentials=credentials_for(accepted_tokens(tx.conn, agent_id, tx.now)),
                    token_file=pb.WorkspaceFile(
                        name=secret.name, content=secret.content, secret=True
                    ),
                )
            ),
        )
