"""The link's report sink backed directly by the store."""

from __future__ import annotations

from hub.store import Store
from protos import link_pb2 as pb


class StoreReports:
    """Persist what sidecars report: acks, heartbeats, run outcomes, gateway state."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def command_results(self, gateway_id: str, results: list[pb.CommandResult]) -> None:
        await self.store.record_command_results(gateway_id, results)

    async def heartbeats(self, gateway_id: str, batch: pb.HeartbeatBatch) -> None:
        await self.store.record_heartbeats(gateway_id, batch.beats)

    async def run_observed(self, gateway_id: str, run: pb.RunObserved) -> None:
        await self.store.record_run_observed(gateway_id, run)

    async def gateway_state(self, gateway_id: str, state: pb.GatewayState) -> None:
        await self.store.record_gateway_state(gateway_id, state)
