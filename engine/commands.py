"""What the async side sends the worker thread, and what the worker sends back."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError
from engine.request import GenerateRequest
from engine.result import GenerationResult, TextDelta


@dataclass(frozen=True, slots=True)
class AddRequest:
    request_id: int
    request: GenerateRequest
    submitted_at: float


@dataclass(frozen=True, slots=True)
class AbortRequest:
    request_id: int


@dataclass(frozen=True, slots=True)
class CallOnWorker:
    """Run `fn(worker)` between two decode steps (adapter loads, inspections); result into `future`."""

    fn: Callable[[Any], Any]
    future: Future[Any]


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


Command = AddRequest | AbortRequest | CallOnWorker | Shutdown

# Per request: any number of TextDelta, then exactly one GenerationResult or EngineError.
Event = TextDelta | GenerationResult | EngineError
EventBatch = list[tuple[int, Event]]
