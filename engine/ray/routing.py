"""Serve's router for the engine deployment: power of two choices among replicas holding a request's
adapter set (Serve's multiplexing), and calls aimed at one replica — abort, stats, adapter changes —
sent to that replica only (by the `for_replica` keyword). Runs in the caller's process."""

from __future__ import annotations

from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RunningReplica

from engine.ray.wire import REPLICA_KWARG


class ReplicaAwareRouter(PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> Any:
        target = pending_request.kwargs.get(REPLICA_KWARG) if pending_request is not None else None
        if target is not None:
            # Nothing if that replica is gone: Serve retries, the caller's timeout ends the call.
            return [[r for r in candidate_replicas if r.replica_id.unique_id == target]]
        return await super().choose_replicas(candidate_replicas, pending_request)
