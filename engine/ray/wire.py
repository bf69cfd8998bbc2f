"""What a replica's generation stream sends back across the Ray hop, in lists (the deltas that piled up
while the previous list crossed travel together), in order:

Entered (the request was accepted) or Failed (refused as it was entered), then Status changes while no
text flows, TextDeltas, and Finished (with the replica's counters as of the end) or Failed. Every value
is an engine type: Ray pickles it as it is, errors included (EngineError keeps its one argument).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import EngineError, EngineFailure
from engine.info import EngineStats, RequestStatus
from engine.result import GenerationResult, TextDelta


@dataclass(frozen=True)
class Entered:
    replica: str  # which replica serves it: aborts are aimed there
    status: RequestStatus


@dataclass(frozen=True)
class Status:
    status: RequestStatus


@dataclass(frozen=True)
class Finished:
    result: GenerationResult
    stats: EngineStats


@dataclass(frozen=True)
class Failed:
    error: EngineError


Event = Entered | Status | TextDelta | Finished | Failed

# A keyword argument naming the replica a call is for (routing.py sends it there and nowhere else).
REPLICA_KWARG = "for_replica"


class ReplicaGone(EngineFailure):
    """The replica a call was for, or serving a request, died or is no longer running."""
