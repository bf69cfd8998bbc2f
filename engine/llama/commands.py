"""What crosses between the async side and the core's thread: typed commands in, event batches out.

Commands that expect an answer carry a command id and are answered on the event channel by a
CommandDone (with the command's own result type) or a CommandFailed; no closure crosses threads and no
thread blocks on a future per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.errors import EngineError
from engine.info import AdapterInfo, EngineStats, LoadedAdapter, RequestStatus
from engine.llama.adapters.loading import CheckedAdapterFile
from engine.llama.scheduling.prepared import PreparedRequest
from engine.result import GenerationResult, TextDelta

R = TypeVar("R")

# -- commands -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequest:
    prepared: PreparedRequest


@dataclass(frozen=True, slots=True)
class AbortRequest:
    request_id: int


@dataclass(frozen=True)
class AdapterCommand(Generic[R]):
    """A command answered by CommandDone(command_id, R) or CommandFailed(command_id, error)."""

    command_id: int


@dataclass(frozen=True)
class LoadAdapter(AdapterCommand[LoadedAdapter]):
    checked: CheckedAdapterFile  # read and validated off the decode thread
    pin: bool = False  # never evicted for the residency budget
    expect_sha256: str | None = None  # compare-and-swap: refused unless this version is the resident one


@dataclass(frozen=True)
class UnloadAdapter(AdapterCommand[AdapterInfo]):
    name: str


@dataclass(frozen=True)
class ListAdapters(AdapterCommand[list[AdapterInfo]]):
    pass


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


Command = AddRequest | AbortRequest | LoadAdapter | UnloadAdapter | ListAdapters | Shutdown

# -- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestOutput:
    request_id: int
    delta: TextDelta


@dataclass(frozen=True, slots=True)
class RequestStatusChanged:
    """Where a request stands before its text flows (queued, how many ahead; reading, how far), sent when
    that changes: the request's own stream holds it for keep-alive messages."""

    request_id: int
    status: RequestStatus


@dataclass(frozen=True, slots=True)
class RequestFinished:
    request_id: int
    result: GenerationResult


@dataclass(frozen=True, slots=True)
class RequestFailed:
    request_id: int
    error: EngineError


@dataclass(frozen=True, slots=True)
class CommandDone:
    command_id: int
    result: object


@dataclass(frozen=True, slots=True)
class CommandFailed:
    command_id: int
    error: EngineError


@dataclass(frozen=True, slots=True)
class EngineHalted:
    """The core's thread has ended; `failed` if by an internal error. Every open request and command fails."""

    failed: bool


Event = (
    RequestOutput | RequestStatusChanged | RequestFinished | RequestFailed | CommandDone | CommandFailed | EngineHalted
)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Everything one pass of the core's loop produced, and the counters after it."""

    events: list[Event]
    stats: EngineStats
