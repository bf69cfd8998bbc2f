"""Serve's router for the engine deployment: power of two choices among replicas holding a request's
adapter set (Serve's multiplexing), and calls aimed at one replica — abort, stats, adapter changes —
sent to that replica (the `for_replica` keyword). Runs in the caller's process."""

from __future__ import annotations

from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from engine.ray.wire import REPLICA_KWARG


class ReplicaAwareRouter(PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> Any:
        target = pending_request.kwargs.get(REPLICA_KWARG) if pending_request is not None else None
        if target is not None:
            aimed = [r for r in candidate_replicas if r.replica_id.unique_id == target]
            if aimed:
                # if it cannot take the call now (its queue is full, or its queue length did not come in
                # time), Serve asks again: after a backoff, not in a loop that holds this thread
                pending_request.routing_context.should_backoff = True  # type: ignore[union-attr]
                return [aimed]
            # That replica is gone: route it anywhere, the replica answering refuses it (ReplicaGone) at
            # once. Returning nothing would keep a routing task retrying until the caller gives up.
        return await super().choose_replicas(candidate_replicas, pending_request)

    # A replica chosen for one request goes to that request, never to the oldest pending one (Serve's FIFO
    # mixin would hand a replica picked for an aimed call to another request, and the aimed call elsewhere).
    _fulfill_next_pending_request = RequestRouter._fulfill_next_pending_request
